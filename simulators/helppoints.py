"""Help points (emergency call buttons) in lamp posts, as their controllers show them.

A Modbus help point is a register block in its lamp controller's unit (the lamp simulator
serves it, `SimController.extra`; this simulator writes its values), on the same profile the
driver polls (`devices/profiles/helppoint_modbus.toml`). A press latches `pressed` and counts
in `press_count`, as a controller does so a press shorter than a poll is not lost; the bit
falls after `press_hold_s` clock seconds unless the button is stuck. A controller that is
silent (comm or power loss) takes its help points down with it.

A LoRaWAN help point (`SimButton`) sends an uplink at once on every change (a press, a cancel,
a fault) and a heartbeat every `heartbeat_s` clock seconds, through the LoRaWAN simulator on the
`helppoint_button` profile, in the network server's format (ChirpStack or TTS).

Faults and actions, by call or over MQTT (`dos/sim/helppoints/faults`,
`{"target": "HP-1", "fault": "press"}`): press, cancel, stuck (held down until cleared),
selftest_failed, tamper, on_battery, battery_low.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import structlog
from pydantic import BaseModel, ConfigDict

from devices.profiles.helppoints import HelpPointProfile, default_profile
from devices.protocols.registers import BlockDecoder, encode_into
from edge.clock import Clock
from edge.events import Value
from edge.lifecycle import Service
from simulators import fault_topic
from simulators.lighting import LightingSimulator
from simulators.lorawan import Format, LorawanSimulator, SimSensor
from simulators.mqtt import apply_fault_payload, run_fault_listener

log = structlog.get_logger(__name__)

ACTIONS = frozenset({"press", "cancel"})
FAULTS = frozenset({"stuck", "selftest_failed", "tamper", "on_battery", "battery_low"})
FAULT_TOPIC = fault_topic("helppoints")
BUTTON_PROFILE = "helppoint_button"
_TICK_S = 0.05  # real seconds between checks of held presses


@dataclass(frozen=True, slots=True)
class SimHelpPoint:
    """One help point: its id, the lamp controller (endpoint id) it sits in and its slot."""

    device_id: str
    controller: str
    slot: int = 0


@dataclass(frozen=True, slots=True)
class SimButton:
    """A LoRaWAN help point: its id, DevEUI and the network server's uplink format."""

    device_id: str
    dev_eui: str
    format: Format = "chirpstack"


class FaultMessage(BaseModel):
    """MQTT payload: {"target": "HP-1", "fault": "press" | "cancel" | a fault, "active": true}."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str
    fault: Literal["press", "cancel", "stuck", "selftest_failed", "tamper", "on_battery", "battery_low"]
    active: bool = True


@dataclass(slots=True)
class _Point:
    spec: SimHelpPoint | SimButton
    pressed: bool = False
    cancelled: bool = False
    press_count: int = 0
    released_at: float = 0.0  # clock time the latched press falls
    battery: int = 96
    selftest_age_h: int = 3
    faults: set[str] = field(default_factory=set)
    presses: list[float] = field(default_factory=list)  # clock time of every press (for benches)


def block_ranges(
    points: Sequence[SimHelpPoint], profile: HelpPointProfile | None = None
) -> dict[str, tuple[tuple[int, int], ...]]:
    """Per lamp controller, the (address, count) blocks its help points occupy:
    `SimController(extra=...)` for the lamp simulator that serves them."""
    p = profile or default_profile()
    out: dict[str, list[tuple[int, int]]] = {}
    for hp in points:
        out.setdefault(hp.controller, []).append((p.base(hp.slot), p.stride))
    return {ctl: tuple(sorted(blocks)) for ctl, blocks in out.items()}


class HelpPointSimulator(Service):
    """Help points in the lamp posts of a running `LightingSimulator`."""

    service_name = "helppoint_sim"

    def __init__(
        self,
        points: Sequence[SimHelpPoint],
        lighting: LightingSimulator | None,
        clock: Clock,
        *,
        profile: HelpPointProfile | None = None,
        press_hold_s: float = 5.0,
        buttons: Sequence[SimButton] = (),
        mqtt_url: str = "",
        heartbeat_s: float = 3600.0,
        seed: int = 0,
    ) -> None:
        """`points` sit in `lighting`'s controllers (Modbus); `buttons` send uplinks to `mqtt_url`."""
        super().__init__()
        self.profile = profile or default_profile()
        self._lighting = lighting
        self._clock = clock
        self._hold_s = press_hold_s
        self._heartbeat_s = heartbeat_s
        self._decoder = BlockDecoder(self.profile.block)
        self._points: dict[str, _Point] = {}
        if points and lighting is None:
            raise ValueError("Modbus help points need the lamp simulator that serves their controllers")
        specs: list[SimHelpPoint | SimButton] = [*points, *buttons]
        for spec in specs:
            if spec.device_id in self._points:
                raise ValueError(f"duplicate help point {spec.device_id!r}")
            if isinstance(spec, SimHelpPoint):
                self.profile.base(spec.slot)  # ValueError for a slot the block cannot hold
            self._points[spec.device_id] = _Point(spec)
        self._uplinks: LorawanSimulator | None = None
        if buttons:
            if not mqtt_url:
                raise ValueError("LoRaWAN help points need mqtt_url (the network server's broker)")
            sensors = [SimSensor(b.dev_eui, b.device_id, BUTTON_PROFILE, b.format) for b in buttons]
            self._uplinks = LorawanSimulator(sensors, self._button_values, clock, seed=seed, duplicate_p=0.1,
                                             out_of_order_p=0.0).connect_to(mqtt_url)  # fmt: skip
        self._due: asyncio.Queue[str] = asyncio.Queue()

    async def _start(self) -> None:
        if self._uplinks is not None:
            await self._uplinks.__aenter__()  # closed by `_stop`
            self.spawn(self._send_uplinks(), "uplinks")
        for p in self._points.values():
            self._write(p)
        self.spawn(self._tick(), "tick")

    async def _stop(self) -> None:
        if self._uplinks is not None:
            await self._uplinks.__aexit__(None, None, None)

    def _button_values(self, sensor: SimSensor, _frame: int, _ts: float) -> Mapping[str, Value]:
        p = self._points[sensor.device_id]
        f = p.faults
        return {"pressed": p.pressed, "cancelled": p.cancelled, "tamper": "tamper" in f,
                "selftest_failed": "selftest_failed" in f, "battery": 8 if "battery_low" in f else p.battery,
                "press_count": p.press_count}  # fmt: skip

    async def _send_uplinks(self) -> None:
        """An uplink per change at once, and every button's heartbeat."""
        assert self._uplinks is not None
        next_beat = self._clock.now()
        while True:
            wait = max(0.0, (next_beat - self._clock.now()) / self._clock.speed)
            try:
                async with asyncio.timeout(wait):
                    first = await self._due.get()
            except TimeoutError:
                await self._uplinks.publish(self._uplinks.frames())
                next_beat = self._clock.now() + self._heartbeat_s
                continue
            due = {first}
            while not self._due.empty():
                due.add(self._due.get_nowait())
            await self._uplinks.publish(self._uplinks.frames(only=due))

    async def _tick(self) -> None:
        """Let latched presses fall after their hold (unless stuck)."""
        while True:
            await asyncio.sleep(_TICK_S)
            now = self._clock.now()
            for p in self._points.values():
                if p.pressed and "stuck" not in p.faults and now >= p.released_at:
                    p.pressed = False
                    self._write(p)

    # -- actions and faults ------------------------------------------------------

    def press(self, device_id: str) -> float:
        """Press the button; returns the clock time of the press."""
        p = self._point(device_id)
        now = self._clock.now()
        p.pressed, p.cancelled = True, False
        p.press_count = (p.press_count + 1) & 0xFFFF
        p.released_at = now + self._hold_s
        p.presses.append(now)
        self._write(p)
        log.info("sim_helppoint_pressed", device=device_id, count=p.press_count)
        return now

    def cancel(self, device_id: str) -> None:
        """The caller cancels the call (a second button or the "cancel" key)."""
        p = self._point(device_id)
        p.cancelled, p.pressed = True, "stuck" in p.faults
        self._write(p)

    def inject(self, device_id: str, fault: str, active: bool = True) -> None:
        """Start (or end) a fault; `press`/`cancel` act once (`active` false: nothing)."""
        if fault in ACTIONS:
            if active:
                (self.press if fault == "press" else self.cancel)(device_id)
            return
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(sorted(FAULTS | ACTIONS))}")
        p = self._point(device_id)
        if active:
            p.faults.add(fault)
            if fault == "stuck":
                p.pressed = True
                p.press_count = (p.press_count + 1) & 0xFFFF
        else:
            p.faults.discard(fault)
        self._write(p)
        log.info("sim_fault", target=device_id, fault=fault, active=active)

    def clear(self, device_id: str, fault: str | None = None) -> None:
        """End one fault or all of them."""
        for f in [fault] if fault is not None else sorted(FAULTS):
            self.inject(device_id, f, active=False)

    def presses(self, device_id: str) -> list[float]:
        """Clock times of the help point's presses."""
        return list(self._point(device_id).presses)

    def values(self, device_id: str) -> Mapping[str, Value]:
        """What the help point reports now: its block as the controller serves it (Modbus), or
        the values of its next uplink (LoRaWAN)."""
        p = self._point(device_id)
        if not isinstance(p.spec, SimHelpPoint) or self._lighting is None:
            return self._button_values(SimSensor("", device_id, BUTTON_PROFILE, "chirpstack"), 0, 0.0)
        regs, start, _ = self._lighting.registers(p.spec.controller)
        return self._decoder.decode(regs, self.profile.base(p.spec.slot) - start)

    def _point(self, device_id: str) -> _Point:
        p = self._points.get(device_id)
        if p is None:
            raise ValueError(f"unknown help point {device_id!r}")
        return p

    def _write(self, p: _Point) -> None:
        if not isinstance(p.spec, SimHelpPoint) or self._lighting is None:
            self._due.put_nowait(p.spec.device_id)  # a button reports a change at once
            return
        regs, start, _ = self._lighting.registers(p.spec.controller)
        if not regs:
            return  # the controller's server is not built yet: `_start` writes again
        f = p.faults
        status = (
            int(p.pressed)
            | int(p.cancelled) << 1
            | int("tamper" in f) << 2
            | int("selftest_failed" in f) << 3
            | int("on_battery" in f) << 4
        )
        battery = 8 if "battery_low" in f else p.battery
        values = {"status": status, "battery": battery, "press_count": p.press_count,
                  "selftest_age_h": p.selftest_age_h if "selftest_failed" not in f else 0xFFFF}  # fmt: skip
        at = self.profile.base(p.spec.slot) - start
        for pt in self.profile.block.points:
            encode_into(pt, values[pt.name], regs, at + pt.offset)

    # -- MQTT fault injection ----------------------------------------------------

    def apply_fault_payload(self, payload: bytes | str) -> bool:
        """Apply one JSON fault message; a bad one is refused with a log line, never raised."""
        return apply_fault_payload(payload, FaultMessage, lambda m: self.inject(m.target, m.fault, m.active))

    async def run_mqtt_faults(self, url: str, topic: str = FAULT_TOPIC) -> None:
        """Take presses and faults from MQTT until cancelled; reconnects with jittered backoff."""
        await run_fault_listener(url, topic, self.apply_fault_payload, name="helppoints")
