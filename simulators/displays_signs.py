"""The variable message signs of the display simulator: one pymodbus server per sign.

A sign serves the VMS profile's registers, validates every write as the device would
(whole points, printable text), acts on it at once, blanks an expired message and, with no
request for `failsafe_after_s`, blanks for fail-safe. A communication loss closes its
listener; the server loop opens it again once the fault ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from devices.profiles.displays import VmsProfile, crc16, decode_text
from devices.protocols.registers import PointValueError, decode, pack_bits
from edge.clock import Clock
from edge.net import free_port
from simulators.modbus import Action, SimServer, write_action

log = structlog.get_logger("simulators.displays")

SIGN_FAULTS = frozenset({"pixel_fault", "comm_loss", "power_loss", "door_open", "comm_fault"})


@dataclass(frozen=True, slots=True)
class SimSign:
    """One Modbus variable message sign; port 0 picks a free port (see `sign_endpoints`)."""

    display_id: str
    host: str = "127.0.0.1"
    port: int = 0
    unit: int = 1
    brightness: int = 80
    failsafe_after_s: int = 300  # blank after this long without a request; 0: never


@dataclass(slots=True)
class _Sign:
    spec: SimSign
    port: int
    endpoint: SimServer
    regs: list[int] = field(default_factory=list)
    start: int = 0
    pixel_faults: int = 0
    faults: set[str] = field(default_factory=set)
    last_request: float = 0.0  # clock time, for the comm-loss fail-safe


class SignBank:
    """The signs' registers and servers."""

    def __init__(self, clock: Clock, profile: VmsProfile, specs: Iterable[SimSign]) -> None:
        self.clock = clock
        self.vms_profile = profile
        self._signs: dict[str, _Sign] = {}
        specs = list(specs)
        # The signs' own ports first: a port picked for a sign without one must not be one that
        # a later sign names (the city bench's field simulator failed so, once in many runs).
        used: set[tuple[str, int]] = set()
        for s in specs:
            if s.port and (s.host, s.port) in used:
                raise ValueError(f"{s.display_id}: {s.host}:{s.port} already used by another sign")
            if s.port:
                used.add((s.host, s.port))
        for s in specs:
            port = s.port
            while not port or (s.port == 0 and (s.host, port) in used):
                port = free_port(s.host)
            used.add((s.host, port))
            self._signs[s.display_id] = _Sign(s, port, SimServer(s.host, port))
        self._reconcile = asyncio.Event()
        self._slot_points = {p.name: p for p in profile.slot.points}
        self._ctl = {p.name: profile.control.base + p.offset for p in profile.control.points}

    @property
    def signs(self) -> dict[str, _Sign]:
        """Display id -> sign."""
        return self._signs

    def reg(self, sign: _Sign, point: str, count: int = 1) -> int:
        """A control point's value (two registers for count=2); 0 before the server is built."""
        if not sign.regs:
            return 0
        i = self._ctl[point] - sign.start
        return sign.regs[i] if count == 1 else sign.regs[i] << 16 | sign.regs[i + 1]

    def shown(self, sign: _Sign) -> str:
        """The text the sign shows now ("" when blank or dark)."""
        slot = self.reg(sign, "active_slot")
        if not slot or "power_loss" in sign.faults or not sign.regs:
            return ""
        v = self.vms_profile
        return decode_text(v, sign.regs, v.slot_base(slot) + v.text_offset - sign.start)

    def arrow(self, sign: _Sign) -> str:
        """Arrow shown ("none" when blank)."""
        slot = self.reg(sign, "active_slot")
        if not slot or "power_loss" in sign.faults:
            return "none"
        code = sign.regs[self.vms_profile.slot_base(slot) + self._slot_points["arrow"].offset - sign.start]
        arrows = self.vms_profile.text.arrows
        return arrows[code] if code < len(arrows) else "none"

    def fault(self, sign: _Sign, fault: str, *, active: bool, pixels: int) -> None:
        """Apply a fault already recorded in `sign.faults`: pixels, listener, status registers."""
        if fault == "pixel_fault":
            sign.pixel_faults = pixels if active else 0
        if fault == "comm_loss":
            if active:
                self.silence(sign)
            self._reconcile.set()
        self.refresh(sign)

    def _device(self, sign: _Sign) -> SimDevice:
        v = self.vms_profile
        data = [
            SimData(
                v.control.base + pt.offset,
                values=[0] * pt.count,
                datatype=DataType.REGISTERS,
                readonly=not pt.writable,
            )
            for pt in v.control.points
        ]
        # slots are writable whole (points, text, padding): the action validates what is written
        data.append(
            SimData(
                v.slot.base,
                values=[0] * (v.slot_count * v.slot_stride),
                datatype=DataType.REGISTERS,
                readonly=False,
            )
        )
        return SimDevice(sign.spec.unit, simdata=data, action=self._action(sign))

    def _bind(self, sign: _Sign, core: SimCore) -> None:
        start, _, regs, _ = core.devices[sign.spec.unit].block["x"]
        sign.regs, sign.start = regs, start
        regs[self._ctl["brightness"] - start] = sign.spec.brightness
        if "failsafe_after_s" in self._ctl:
            regs[self._ctl["failsafe_after_s"] - start] = sign.spec.failsafe_after_s
        sign.last_request = self.clock.now()
        self.refresh(sign)

    def _valid_write(self, address: int, scratch: list[int], start: int, n: int) -> bool:
        """Whether the registers written at `address` hold values the sign accepts."""
        v = self.vms_profile
        for addr in range(address, address + n):
            if v.control.base <= addr < v.control.base + v.control.span:
                continue  # control points are checked as whole points below
            if not v.slot.base <= addr < v.register_end:
                return False
            off = (addr - v.slot.base) % v.slot_stride
            if v.text_offset <= off < v.slot_span:
                reg = scratch[addr - start]
                if any(b and not 0x20 <= b <= 0x7E for b in (reg >> 8, reg & 0xFF)):
                    return False
        for pt in v.control.points:
            a = v.control.base + pt.offset
            if a < address + n and address < a + pt.count:
                try:
                    decode(pt, scratch, a - start)
                except PointValueError:
                    return False
        return True

    def _action(self, sign: _Sign) -> Action:
        """pymodbus's hook for the sign: note the request, validate writes and act on them at once."""

        def before() -> ExcCodes | None:
            sign.last_request = self.clock.now()
            return None

        def check(address: int, scratch: list[int], start: int, n: int) -> ExcCodes | None:
            return None if self._valid_write(address, scratch, start, n) else ExcCodes.ILLEGAL_VALUE

        return write_action(before=before, check=check, after=lambda _a, _n: self.refresh(sign))

    def refresh(self, sign: _Sign) -> None:
        """Recompute what the sign shows (expiry, power) and its status registers."""
        if not sign.regs:
            return
        v, regs, s = self.vms_profile, sign.regs, sign.start
        active_at = self._ctl["active_slot"] - s
        slot = regs[active_at]
        if slot:
            base = v.slot_base(slot) - s
            expires_at = decode(
                self._slot_points["expires_at"], regs, base + self._slot_points["expires_at"].offset
            )
            now = self.clock.now()
            failsafe_at = self._ctl.get("failsafe_after_s")
            failsafe_after = 0 if failsafe_at is None else regs[failsafe_at - s]
            if expires_at and now >= expires_at:
                regs[active_at] = slot = 0
                log.info("sim_display_expired", display_id=sign.spec.display_id)
            elif failsafe_after and now - sign.last_request >= failsafe_after:
                regs[active_at] = slot = 0
                log.info("sim_display_failsafe", display_id=sign.spec.display_id, after_s=failsafe_after)
        dark = "power_loss" in sign.faults
        if slot and not dark:
            base = v.slot_base(slot) - s
            mp = self._slot_points["message_id"]
            message_id = regs[base + mp.offset] << 16 | regs[base + mp.offset + 1]
            text = decode_text(v, regs, base + v.text_offset)
        else:
            message_id, text = 0, ""
        shown = self._ctl["shown_message_id"] - s
        regs[shown : shown + 2] = [message_id >> 16, message_id & 0xFFFF]
        regs[self._ctl["shown_crc"] - s] = crc16(text)
        regs[self._ctl["pixel_faults"] - s] = sign.pixel_faults
        status = v.control.point("status")
        flags = {
            "pixel_fault": sign.pixel_faults > 0,
            "power_loss": dark,
            "door_open": "door_open" in sign.faults,
            "comm_fault": "comm_fault" in sign.faults,
        }
        regs[self._ctl["status"] - s] = pack_bits(status, flags)

    async def listen(self, sign: _Sign) -> None:
        """Serve the sign (again, after a communication loss)."""
        await sign.endpoint.listen(lambda: [self._device(sign)], lambda core: self._bind(sign, core))

    def silence(self, sign: _Sign) -> None:
        """Stop serving the sign and drop its connections."""
        sign.endpoint.silence()

    async def servers_loop(self) -> None:
        """Listen again once a sign's communication loss ends."""
        while True:
            await self._reconcile.wait()
            self._reconcile.clear()
            for sign in self._signs.values():
                if "comm_loss" not in sign.faults and not sign.endpoint.listening:
                    await self.listen(sign)
