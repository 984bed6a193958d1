"""LED guidance boards (aiomqtt clients) and variable message signs (pymodbus servers).

Each display renders what it shows as text (`DisplaySimulator.shown`), from the same
profiles and codecs as the driver, so the two cannot drift. Faults: pixel faults,
communication loss, power loss (and door open / comm fault bits on a sign). Expired
messages blank on the device side too, and so does a display that has lost its
communication for its fail-safe time (a sign: no request for `failsafe_after_s`; a board:
no broker for the profile's `failsafe_after_s`); it stays blank until new content arrives. Time comes from a `Clock`; the boards' status period is real seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import aiomqtt
import structlog
from pydantic import BaseModel, ConfigDict, Field
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from devices.displays import SignEndpoint
from devices.profiles.displays import (
    BoardStatus,
    DisplayContent,
    LedBoardProfile,
    VmsProfile,
    brightness_range,
    check_content,
    crc16,
    decode_text,
    default_led_board_profile,
    default_vms_profile,
    parse_content_payload,
    status_payload,
)
from devices.protocols.registers import PointValueError, decode, pack_bits
from edge.backoff import Backoff
from edge.clock import Clock
from edge.decode import Refusal, decode_json
from edge.lifecycle import Service, ServiceState
from edge.mqtt import BrokerAddress
from edge.net import free_port
from simulators import MIN_REAL_TICK_S, fault_topic
from simulators.mqtt import apply_fault_payload, run_fault_listener

log = structlog.get_logger(__name__)

BOARD_FAULTS = frozenset({"pixel_fault", "comm_loss", "power_loss"})
SIGN_FAULTS = BOARD_FAULTS | {"door_open", "comm_fault"}
FAULT_TOPIC = fault_topic("displays")  # `edge simulate displays` (on its broker)
_READY_TIMEOUT_S = 10.0
_MQTT_TIMEOUT_S = 5.0


class FaultMessage(BaseModel):
    """`dos/sim/displays/faults`: {"target": display id, "fault": ..., "active": true, "pixels": 12}."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str = Field(min_length=1, max_length=64)
    fault: Literal["pixel_fault", "comm_loss", "power_loss", "door_open", "comm_fault"]
    active: bool = True
    pixels: int = Field(default=12, ge=0, le=100_000)


@dataclass(frozen=True, slots=True)
class SimBoard:
    """One MQTT LED guidance board."""

    display_id: str
    brightness: int = 80


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
class _Board:
    spec: SimBoard
    brightness: int
    content: DisplayContent | None = None  # what it shows; None: blank
    pixel_faults: int = 0
    faults: set[str] = field(default_factory=set)
    reachable: asyncio.Event = field(default_factory=asyncio.Event)
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    sessions: int = 0
    lost_since: float | None = None  # clock time the broker connection was lost
    failsafe: bool = False  # blanked on comm loss: retained content is not new content


@dataclass(slots=True)
class _Sign:
    spec: SimSign
    port: int
    regs: list[int] = field(default_factory=list)
    start: int = 0
    pixel_faults: int = 0
    faults: set[str] = field(default_factory=set)
    server: ModbusTcpServer | None = None
    listening: bool = False
    last_request: float = 0.0  # clock time, for the comm-loss fail-safe


class DisplaySimulator(Service):
    """Runs boards (one aiomqtt client each, on `mqtt_url`) and signs until the context exits.

    `status_interval_s` overrides the board profile's status period (real seconds);
    expiry is checked every `tick_s` clock seconds (at least MIN_REAL_TICK_S real seconds apart).
    Entering waits until every board has subscribed and published its first status.
    """

    service_name = "display_sim"

    def __init__(
        self,
        clock: Clock,
        *,
        boards: Sequence[SimBoard] = (),
        signs: Sequence[SimSign] = (),
        mqtt_url: str | None = None,
        board_profile: LedBoardProfile | None = None,
        vms_profile: VmsProfile | None = None,
        status_interval_s: float | None = None,
        tick_s: float = 1.0,
    ) -> None:
        if boards and mqtt_url is None:
            raise ValueError("boards need an mqtt_url")
        super().__init__()
        self.clock = clock
        self.board_profile = board_profile or default_led_board_profile()
        self.vms_profile = vms_profile or default_vms_profile()
        self.status_interval_s = status_interval_s or self.board_profile.status_interval_s
        self.tick_s = tick_s
        self._address = BrokerAddress.parse(mqtt_url) if mqtt_url else None
        self._boards: dict[str, _Board] = {}
        self._signs: dict[str, _Sign] = {}
        for b in boards:
            self._check_new(b.display_id)
            self._boards[b.display_id] = _Board(b, b.brightness)
        used: set[tuple[str, int]] = set()
        for s in signs:
            self._check_new(s.display_id)
            port = s.port
            while not port or (s.port == 0 and (s.host, port) in used):
                port = free_port(s.host)
            if (s.host, port) in used:
                raise ValueError(f"{s.display_id}: {s.host}:{port} already used by another sign")
            used.add((s.host, port))
            self._signs[s.display_id] = _Sign(s, port)
        self._reconcile = asyncio.Event()
        self._token = uuid.uuid4().hex[:8]
        v = self.vms_profile
        self._slot_points = {p.name: p for p in v.slot.points}
        self._ctl = {p.name: v.control.base + p.offset for p in v.control.points}

    def _check_new(self, display_id: str) -> None:
        if display_id in self._boards or display_id in self._signs:
            raise ValueError(f"duplicate display id {display_id!r}")
        if not display_id or any(c in display_id for c in "/+#"):
            raise ValueError(f"display id {display_id!r} cannot be part of a topic")

    # -- views -------------------------------------------------------------------

    def shown(self, display_id: str) -> str:
        """The text the display shows now ("" when blank or dark)."""
        board = self._boards.get(display_id)
        if board is not None:
            return "" if board.content is None or "power_loss" in board.faults else board.content.text
        sign = self._sign(display_id)
        slot = self._reg(sign, "active_slot")
        if not slot or "power_loss" in sign.faults or not sign.regs:
            return ""
        v = self.vms_profile
        return decode_text(v, sign.regs, v.slot_base(slot) + v.text_offset - sign.start)

    def message_id(self, display_id: str) -> int:
        """Id of the message shown (0: blank)."""
        board = self._boards.get(display_id)
        if board is not None:
            return 0 if board.content is None or "power_loss" in board.faults else board.content.message_id
        sign = self._sign(display_id)
        return self._reg(sign, "shown_message_id", 2)

    def arrow(self, display_id: str) -> str:
        """Arrow shown ("none" when blank)."""
        board = self._boards.get(display_id)
        if board is not None:
            return "none" if board.content is None or not self.shown(display_id) else board.content.arrow
        sign = self._sign(display_id)
        slot = self._reg(sign, "active_slot")
        if not slot or "power_loss" in sign.faults:
            return "none"
        code = sign.regs[self.vms_profile.slot_base(slot) + self._slot_points["arrow"].offset - sign.start]
        arrows = self.vms_profile.text.arrows
        return arrows[code] if code < len(arrows) else "none"

    def brightness(self, display_id: str) -> int:
        """Brightness in % the display is set to."""
        board = self._boards.get(display_id)
        if board is not None:
            return board.brightness
        return self._reg(self._sign(display_id), "brightness")

    def faults(self, display_id: str) -> frozenset[str]:
        """Active faults of a display."""
        board = self._boards.get(display_id)
        return frozenset(board.faults if board is not None else self._sign(display_id).faults)

    def board_sessions(self, display_id: str) -> int:
        """How many MQTT sessions the board has opened (for reconnection tests)."""
        return self._boards[display_id].sessions

    def sign_endpoints(self) -> list[SignEndpoint]:
        """Driver endpoints of the signs, with the ports actually used."""
        return [
            SignEndpoint(s.spec.display_id, s.spec.host, s.port, s.spec.unit) for s in self._signs.values()
        ]

    def board_ids(self) -> list[str]:
        """Display ids of the boards."""
        return list(self._boards)

    def _sign(self, display_id: str) -> _Sign:
        try:
            return self._signs[display_id]
        except KeyError:
            raise KeyError(f"unknown display {display_id!r}") from None

    def _reg(self, sign: _Sign, point: str, count: int = 1) -> int:
        if not sign.regs:
            return 0
        i = self._ctl[point] - sign.start
        return sign.regs[i] if count == 1 else sign.regs[i] << 16 | sign.regs[i + 1]

    # -- faults ------------------------------------------------------------------

    def inject(self, display_id: str, fault: str, *, pixels: int = 12) -> None:
        """Start a fault: pixel_fault (`pixels` dead), comm_loss, power_loss; door_open/comm_fault on signs."""
        self._fault(display_id, fault, active=True, pixels=pixels)

    def clear(self, display_id: str, fault: str | None = None) -> None:
        """End one fault (or all of them)."""
        for f in sorted(self.faults(display_id)) if fault is None else [fault]:
            self._fault(display_id, f, active=False, pixels=0)

    def _fault(self, display_id: str, fault: str, *, active: bool, pixels: int) -> None:
        board = self._boards.get(display_id)
        known = BOARD_FAULTS if board is not None else SIGN_FAULTS
        if board is None and display_id not in self._signs:
            raise ValueError(f"unknown display {display_id!r}")
        if fault not in known:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(sorted(known))}")
        faults = board.faults if board is not None else self._signs[display_id].faults
        if active:
            faults.add(fault)
        else:
            faults.discard(fault)
        if board is not None:
            if fault == "pixel_fault":
                board.pixel_faults = pixels if active else 0
            if faults & {"comm_loss", "power_loss"}:
                if board.lost_since is None:
                    board.lost_since = self.clock.now()
                board.reachable.clear()
                board.lost.set()
            else:
                board.lost.clear()
                board.reachable.set()
            board.dirty.set()
        else:
            sign = self._signs[display_id]
            if fault == "pixel_fault":
                sign.pixel_faults = pixels if active else 0
            if fault == "comm_loss":
                if active:
                    self._silence(sign)
                self._reconcile.set()
            self._refresh_sign(sign)
        log.info("sim_display_fault", display_id=display_id, fault=fault, active=active)

    # -- MQTT fault injection ------------------------------------------------------

    def apply_fault_payload(self, payload: bytes | str) -> bool:
        """Apply one JSON fault message; a bad one is refused with a log line, never raised."""
        return apply_fault_payload(
            payload,
            FaultMessage,
            lambda m: self._fault(m.target, m.fault, active=m.active, pixels=m.pixels if m.active else 0),
        )

    async def run_mqtt_faults(self, url: str, topic: str = FAULT_TOPIC) -> None:
        """Take fault injections from MQTT until cancelled; reconnects with jittered backoff."""
        await run_fault_listener(url, topic, self.apply_fault_payload, name="displays")

    # -- boards ------------------------------------------------------------------

    def _status(self, board: _Board) -> BoardStatus:
        return BoardStatus(
            online=True,
            brightness=board.brightness,
            pixel_faults=board.pixel_faults,
            message_id=self.message_id(board.spec.display_id),
            text=self.shown(board.spec.display_id),
            arrow=self.arrow(board.spec.display_id),
            ts=self.clock.now(),
        )

    def _client(self, board: _Board) -> aiomqtt.Client:
        address = self._address
        if address is None:
            raise RuntimeError("boards need an mqtt_url")
        p = self.board_profile
        will = aiomqtt.Will(
            p.topic(p.status_topic, board.spec.display_id),
            status_payload(p, BoardStatus(online=False)),
            qos=p.qos,
            retain=p.retain,
        )
        return aiomqtt.Client(
            address.host,
            address.port,
            username=address.username,
            password=address.password,
            identifier=f"sim-display-{board.spec.display_id}-{self._token}",
            will=will,
            timeout=_MQTT_TIMEOUT_S,
            tls_context=address.ssl_context(),
        )

    async def _board_main(self, board: _Board) -> None:
        """Connect while reachable; reconnect after a broker outage with jittered backoff."""
        backoff = Backoff(base_s=0.1, max_s=5.0)
        while self.state is ServiceState.OPENED:
            await board.reachable.wait()
            try:
                await self._board_session(board)
                backoff.reset()
            except* (aiomqtt.MqttError, TimeoutError) as group:
                if board.lost_since is None:
                    board.lost_since = self.clock.now()
                if backoff.attempt == 0:
                    log.warning(
                        "sim_display_mqtt_down",
                        display_id=board.spec.display_id,
                        error=str(group.exceptions[0]),
                    )
                await backoff.wait()

    async def _board_session(self, board: _Board) -> None:
        p = self.board_profile
        did = board.spec.display_id
        async with self._client(board) as client:
            board.sessions += 1
            board.lost_since = None
            await client.subscribe(
                [(p.topic(p.content_topic, did), p.qos), (p.topic(p.brightness_topic, did), p.qos)],
                timeout=_MQTT_TIMEOUT_S,
            )
            await self._publish_status(client, board)
            board.ready.set()
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(self._board_read(client, board), name=f"display_sim[{did}].read")
                ticker = tg.create_task(self._board_status(client, board), name=f"display_sim[{did}].status")
                await board.lost.wait()
                reader.cancel()
                ticker.cancel()
        log.info("sim_display_board_offline", display_id=did)

    async def _publish_status(self, client: aiomqtt.Client, board: _Board) -> None:
        p = self.board_profile
        await client.publish(
            p.topic(p.status_topic, board.spec.display_id),
            status_payload(p, self._status(board)),
            qos=p.qos,
            retain=p.retain,
            timeout=_MQTT_TIMEOUT_S,
        )

    async def _board_status(self, client: aiomqtt.Client, board: _Board) -> None:
        """Publish status on every change and every status period.

        The loop tests the state because on 3.11 aiomqtt's `wait_for` can swallow the
        cancellation of a publish; the nested task group would then wait for ever.
        """
        while self.state is ServiceState.OPENED:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.status_interval_s):
                    await board.dirty.wait()
            board.dirty.clear()
            await self._publish_status(client, board)

    async def _board_read(self, client: aiomqtt.Client, board: _Board) -> None:
        p = self.board_profile
        did = board.spec.display_id
        content_topic = p.topic(p.content_topic, did)
        brightness_topic = p.topic(p.brightness_topic, did)
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | str):
                continue
            try:  # one bad message must not end the board's session
                if message.topic.matches(content_topic):
                    self._board_content(board, payload, retained=bool(message.retain))
                elif message.topic.matches(brightness_topic):
                    self._board_brightness(board, payload)
                else:
                    continue
            except Exception:
                log.exception("sim_display_message_failed", display_id=did)
                continue
            board.dirty.set()

    def _board_content(self, board: _Board, payload: bytes | str, *, retained: bool) -> None:
        if retained and board.failsafe:
            return  # blanked on comm loss: stays blank until the controller sends anew
        if not payload:  # a cleared retained message
            board.content = None
            return
        try:
            content = parse_content_payload(self.board_profile, payload)
            check_content(self.board_profile, content, self.clock.now())
        except PointValueError as exc:
            # a real board ignores what it cannot show; its status keeps the old message id
            log.warning("sim_display_content_refused", display_id=board.spec.display_id, error=str(exc))
            return
        board.content = content  # no lines: a blank message that still echoes its id
        board.failsafe = False
        if content.brightness is not None:
            board.brightness = content.brightness

    def _board_brightness(self, board: _Board, payload: bytes | str) -> None:
        lo, hi = brightness_range(self.board_profile)
        raw = decode_json(payload, max_bytes=1024, max_depth=2)
        try:
            value = None if isinstance(raw, Refusal) else raw[self.board_profile.content_keys["brightness"]]
        except (TypeError, KeyError):
            value = None
        if value is None:
            log.warning("sim_display_brightness_refused", display_id=board.spec.display_id)
            return
        if isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi:
            board.brightness = value

    # -- signs -------------------------------------------------------------------

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
        return SimDevice(sign.spec.unit, simdata=data, action=partial(self._action, sign))

    def _bind(self, sign: _Sign, server: ModbusTcpServer) -> None:
        core = server.context
        if not isinstance(core, SimCore):  # pymodbus 3.16 builds a SimCore from SimDevices
            raise TypeError(f"unexpected pymodbus datastore {type(core).__name__}")
        start, _, regs, _ = core.devices[sign.spec.unit].block["x"]
        sign.regs, sign.start = regs, start
        regs[self._ctl["brightness"] - start] = sign.spec.brightness
        if "failsafe_after_s" in self._ctl:
            regs[self._ctl["failsafe_after_s"] - start] = sign.spec.failsafe_after_s
        sign.last_request = self.clock.now()
        self._refresh_sign(sign)

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

    async def _action(
        self,
        sign: _Sign,
        func_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Called by pymodbus before each request: validate writes and act on them at once."""
        sign.last_request = self.clock.now()
        if set_values is None:
            return None
        values = [int(x) for x in set_values]
        scratch = list(registers)
        scratch[address - start_address : address - start_address + len(values)] = values
        if not self._valid_write(address, scratch, start_address, len(values)):
            return ExcCodes.ILLEGAL_VALUE
        registers[address - start_address : address - start_address + len(values)] = values
        self._refresh_sign(sign)
        return None

    def _refresh_sign(self, sign: _Sign) -> None:
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

    async def _listen(self, sign: _Sign) -> None:
        if sign.server is None:
            sign.server = ModbusTcpServer([self._device(sign)], address=(sign.spec.host, sign.port))
            self._bind(sign, sign.server)
        if not await sign.server.listen():
            raise OSError(f"cannot listen on {sign.spec.host}:{sign.port}")
        sign.listening = True

    def _silence(self, sign: _Sign) -> None:
        if sign.server is not None and sign.listening:
            sign.server.close()  # stops listening and drops the open connections
            sign.listening = False

    async def _servers_loop(self) -> None:
        """Listen again once a sign's communication loss ends."""
        while True:
            await self._reconcile.wait()
            self._reconcile.clear()
            for sign in self._signs.values():
                if "comm_loss" not in sign.faults and not sign.listening:
                    await self._listen(sign)

    # -- time --------------------------------------------------------------------

    async def _ticker(self) -> None:
        """Blank expired messages on the device side."""
        while True:
            await self.clock.sleep(max(self.tick_s, MIN_REAL_TICK_S * self.clock.speed))
            now = self.clock.now()
            for sign in self._signs.values():
                self._refresh_sign(sign)
            after = self.board_profile.failsafe_after_s
            for board in self._boards.values():
                c = board.content
                if c is not None and c.expires_at is not None and now >= c.expires_at:
                    board.content = None
                    board.dirty.set()
                    log.info("sim_display_expired", display_id=board.spec.display_id)
                lost = board.lost_since
                if board.content is not None and after and lost is not None and now - lost >= after:
                    board.content = None
                    board.failsafe = True
                    log.info("sim_display_failsafe", display_id=board.spec.display_id, after_s=after)

    # -- lifecycle ---------------------------------------------------------------

    async def _start(self) -> None:
        for sign in self._signs.values():
            await self._listen(sign)
        for board in self._boards.values():
            board.reachable.set()
            self.spawn(self._board_main(board), f"board[{board.spec.display_id}]")
        self.spawn(self._ticker(), "ticker")
        self.spawn(self._servers_loop(), "servers")
        async with asyncio.timeout(_READY_TIMEOUT_S):
            for board in self._boards.values():
                await board.ready.wait()
        log.info("sim_displays_started", boards=len(self._boards), signs=len(self._signs))

    async def _stop(self) -> None:
        for sign in self._signs.values():
            self._silence(sign)
        await asyncio.sleep(0)  # let pymodbus finish its pending request handlers
