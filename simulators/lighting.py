"""Modbus TCP lamp controllers with lamp physics, a watchdog and fault injection.

Real pymodbus servers serving the same profile and codec as the driver, so the two
cannot drift. Time comes from a `Clock`, so a demo can run a night in minutes.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import structlog
from pydantic import BaseModel, ConfigDict
from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from devices.lighting import ModbusEndpoint
from devices.profiles.lighting import LampControllerProfile, default_profile
from devices.protocols.registers import BlockDecoder, PointValueError, decode, encode_into, pack_bits
from edge.clock import Clock
from edge.events import Value
from edge.lifecycle import Service
from edge.net import free_port
from edge.tasks import TimeSlice
from simulators import fault_topic, parse_faults, sim_clock
from simulators.modbus import Action, SimServer, write_action
from simulators.mqtt import apply_fault_payload, run_fault_listener

log = structlog.get_logger(__name__)

LAMP_FAULTS = frozenset({"lamp_failure", "driver_failure", "power_high", "power_low", "comm_loss"})
CONTROLLER_FAULTS = frozenset({"comm_loss", "power_loss"})
FAULTS = LAMP_FAULTS | CONTROLLER_FAULTS
# Lamp physics: 500 lamps x 4 encoded points per tick cost a fifth of a core at 20 Hz. The
# daemon polls once a real second, so five ticks per poll show it every change; energy
# and hours integrate over dt, so the totals do not depend on the tick.
LAMP_REAL_TICK_S = 0.2
_TICK_SLICE_S = 0.002  # the longest stretch of a physics step between yields to the servers
_NOISE = 0.01  # relative standard deviation of measured power
_POWER_HIGH = 1.4  # factor a power-high fault puts on the draw (e.g. a failing driver)
_POWER_LOW = 0.6  # factor for power-low (e.g. LED strings open)
FAULT_TOPIC = fault_topic("lights")  # `edge simulate lights --mqtt URL`


@dataclass(frozen=True, slots=True)
class SimLamp:
    """One luminaire: P(d) = p_min + (p_max - p_min)(d - d_min)/(100 - d_min) + standby."""

    device_id: str
    index: int
    p_max_w: float = 38.0
    p_min_w: float = 4.0
    d_min: int = 1
    standby_w: float = 0.5


@dataclass(frozen=True, slots=True)
class SimController:
    """One lamp controller; controllers sharing host:port are one server with several units.

    Port 0 means "pick a free port"; `LightingSimulator.endpoints()` tells which.
    """

    endpoint_id: str
    host: str
    port: int
    unit: int
    lamps: tuple[SimLamp, ...]
    watchdog_s: float = 300.0
    failsafe_level: int = 100
    extra: tuple[
        tuple[int, int], ...
    ] = ()  # (address, count): read-only blocks of other devices in the posts


class FaultMessage(BaseModel):
    """MQTT fault-injection payload: {"target": "...", "fault": "...", "active": true}."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str
    fault: Literal["lamp_failure", "driver_failure", "power_high", "power_low", "comm_loss", "power_loss"]
    active: bool = True


@dataclass(slots=True)
class _Lamp:
    spec: SimLamp
    at: int  # index of the lamp block in the controller's register list
    energy_kwh: float
    hours: float
    switch_count: int
    level: int = 0
    stuck: int = 0
    faults: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Controller:
    spec: SimController
    port: int
    lamps: list[_Lamp]
    last_write: float
    regs: list[int] = field(default_factory=list)
    start: int = 0  # register address of regs[0]
    failsafe: bool = False
    faults: set[str] = field(default_factory=set)

    @property
    def silent(self) -> bool:
        """Whether the controller answers nothing (unreachable or unpowered)."""
        return bool(self.faults & CONTROLLER_FAULTS)


@dataclass(slots=True)
class _Server:
    endpoint: SimServer
    controllers: list[_Controller]


def _registers(p: LampControllerProfile, ctl: _Controller) -> list[SimData]:
    """The unit's register blocks: the controller's points, each lamp's block (its padding
    readable, as on real devices) and, if the profile has one, a level-table entry per lamp."""
    regs = DataType.REGISTERS
    data = [
        SimData(p.controller.base + pt.offset, values=[0] * pt.count, datatype=regs, readonly=not pt.writable)
        for pt in p.controller.points
    ]
    for lamp in sorted(ctl.lamps, key=lambda lp: lp.spec.index):
        base = p.lamp_base(lamp.spec.index)
        covered = 0
        for pt in sorted(p.lamp.points, key=lambda q: q.offset):
            data.append(
                SimData(base + pt.offset, values=[0] * pt.count, datatype=regs, readonly=not pt.writable)
            )
            covered = max(covered, pt.offset + pt.count)
        if covered < p.lamp_stride:
            data.append(
                SimData(base + covered, values=[0] * (p.lamp_stride - covered), datatype=regs, readonly=True)
            )
    if p.table is not None:  # gaps (lamps the controller does not have) stay invalid
        data += [SimData(p.table.base + lamp.spec.index, values=[0], datatype=regs) for lamp in ctl.lamps]
    data += [SimData(a, values=[0] * n, datatype=regs, readonly=True) for a, n in ctl.spec.extra]
    return data


class LightingSimulator(Service):
    """Serves every controller on its host:port until the context exits.

    Physics runs every `tick_s` clock seconds (at least MIN_REAL_TICK_S real seconds
    apart, so a 100x clock still works); energy and hours integrate over clock time.
    """

    service_name = "lighting_sim"

    def __init__(
        self,
        controllers: Sequence[SimController],
        clock: Clock,
        profile: LampControllerProfile | None = None,
        tick_s: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.profile = profile or default_profile()
        self.clock = clock
        self.tick_s = tick_s
        self._rng = random.Random(seed)
        self._lamp_decoder = BlockDecoder(self.profile.lamp)
        self._ctl_decoder = BlockDecoder(self.profile.controller)
        p = self.profile
        self._off = {pt.name: pt.offset for pt in p.lamp.points}
        self._lamp_points = {pt.name: pt for pt in p.lamp.points}  # looked up per lamp and tick
        self._ctl_off = {pt.name: pt.offset for pt in p.controller.points}
        self._controllers: dict[str, _Controller] = {}
        self._lamps: dict[str, tuple[_Controller, _Lamp]] = {}
        self._servers: dict[tuple[str, int], _Server] = {}
        now = clock.now()
        for spec in controllers:
            self._add(spec, now)
        self._reconcile = asyncio.Event()

    def _add(self, spec: SimController, now: float) -> None:
        if spec.endpoint_id in self._controllers or spec.endpoint_id in self._lamps:
            raise ValueError(f"duplicate id {spec.endpoint_id!r}")
        if not 0 <= spec.failsafe_level <= 100:
            raise ValueError(f"{spec.endpoint_id}: failsafe_level outside 0..100")
        port = spec.port
        while not port or (spec.port == 0 and (spec.host, port) in self._servers):
            port = free_port(spec.host)  # the OS may hand a just-released port out twice
        ctl = _Controller(spec, port, [], last_write=now)
        for lamp in spec.lamps:
            if lamp.device_id in self._lamps or lamp.device_id in self._controllers:
                raise ValueError(f"duplicate id {lamp.device_id!r}")
            if not 0 < lamp.d_min < 100:
                raise ValueError(f"{lamp.device_id}: d_min outside 1..99")
            self.profile.lamp_base(lamp.index)  # ValueError for an index the map cannot hold
            hours = self._rng.uniform(0.0, 20_000.0)  # lamps in the field have a past
            ctl.lamps.append(
                _Lamp(
                    lamp,
                    at=0,
                    energy_kwh=hours * lamp.p_max_w * 0.6 / 1000,
                    hours=hours,
                    switch_count=int(hours / 11),
                )
            )
            self._lamps[lamp.device_id] = (ctl, ctl.lamps[-1])
        self._controllers[spec.endpoint_id] = ctl
        key = (spec.host, port)
        srv = self._servers.setdefault(key, _Server(SimServer(spec.host, port), []))
        if any(c.spec.unit == spec.unit for c in srv.controllers):
            raise ValueError(f"{spec.endpoint_id}: unit {spec.unit} already served on {key}")
        srv.controllers.append(ctl)

    # -- registers ---------------------------------------------------------------

    def _device(self, ctl: _Controller) -> SimDevice:
        """Holding registers for one unit: writable where the profile says, gaps invalid."""
        return SimDevice(ctl.spec.unit, simdata=_registers(self.profile, ctl), action=self._action(ctl))

    def _bind(self, srv: _Server, core: SimCore) -> None:
        """Take the live register lists pymodbus built, to run physics on them in place."""
        runtimes = core.devices
        for ctl in srv.controllers:
            start, _, regs, _ = runtimes[ctl.spec.unit].block["x"]
            ctl.regs, ctl.start = regs, start
            for lamp in ctl.lamps:
                lamp.at = self.profile.lamp_base(lamp.spec.index) - start
            c = self._ctl_off
            cb = self.profile.controller.base - start
            regs[cb + c["watchdog_s"]] = round(ctl.spec.watchdog_s)
            regs[cb + c["failsafe_level"]] = ctl.spec.failsafe_level
            regs[cb + c["lamp_count"]] = len(ctl.lamps)
            for lamp in ctl.lamps:
                self._update_lamp(ctl, lamp, 0.0)

    def _action(self, ctl: _Controller) -> Action:
        """pymodbus's hook for one unit: refuse while silent, validate writes, feed the watchdog."""

        def before() -> ExcCodes | None:
            # a silent unit behind a shared gateway port
            return ExcCodes.GATEWAY_NO_RESPONSE if ctl.silent else None

        def after(address: int, n: int) -> None:
            touched = {loc[0] for addr in range(address, address + n) if (loc := self.profile.locate(addr))}
            self._sync_table(ctl, address, n)
            ctl.last_write = self.clock.now()
            if ctl.failsafe:
                ctl.failsafe = False
                log.info("sim_failsafe_cleared", endpoint=ctl.spec.endpoint_id)
            for lamp in ctl.lamps:  # a controller acts on a command at once, not at the next tick
                if lamp.spec.index in touched or None in touched:
                    self._update_lamp(ctl, lamp, 0.0)
            self._write_controller(ctl)

        return write_action(before=before, check=self._check_write, after=after)

    def _sync_table(self, ctl: _Controller, address: int, n: int) -> None:
        """A write to the level table sets the lamps' own registers, and a write to a lamp's
        register sets its table entry: one value at two addresses, as on a gateway."""
        p, regs, start = self.profile, ctl.regs, ctl.start
        if p.table is None:
            return
        off = self._off[p.table.point]
        for lamp in ctl.lamps:
            own = lamp.at + off
            entry = p.table.base + lamp.spec.index - start
            if address <= entry + start < address + n:
                regs[own] = regs[entry]
            elif address <= own + start < address + n:
                regs[entry] = regs[own]

    def _check_write(self, address: int, scratch: list[int], start: int, n: int) -> ExcCodes | None:
        """Every point a write touches must decode as it would be after the write."""
        for addr in range(address, address + n):
            loc = self.profile.locate(addr)
            if loc is None:
                return ExcCodes.ILLEGAL_ADDRESS
            index, pt = loc
            if index is not None and self.profile.table_index(addr) is not None:
                at = addr  # a table register holds the whole (one-register) point
            else:
                block = self.profile.controller.base if index is None else self.profile.lamp_base(index)
                at = block + pt.offset
            try:
                decode(pt, scratch, at - start)
            except PointValueError:
                return ExcCodes.ILLEGAL_VALUE
        return None

    def _write_controller(self, ctl: _Controller) -> None:
        cb = self.profile.controller.base - ctl.start
        ctl.regs[cb + self._ctl_off["failsafe_active"]] = int(ctl.failsafe)

    # -- physics -----------------------------------------------------------------

    def _update_lamp(self, ctl: _Controller, lamp: _Lamp, dt: float) -> None:
        """Advance one lamp by `dt` clock seconds and write its registers."""
        regs, at, off, spec = ctl.regs, lamp.at, self._off, lamp.spec
        cb = self.profile.controller.base - ctl.start
        faults = lamp.faults
        if "power_loss" in ctl.faults:
            level = 0
        elif "driver_failure" in faults:
            level = lamp.stuck  # the gear ignores commands
        elif "comm_loss" in faults:
            level = lamp.level  # the controller cannot reach the gear: level frozen
        elif ctl.failsafe:
            level = regs[cb + self._ctl_off["failsafe_level"]]
        else:
            level = regs[at + off["level_cmd"]]
        level = min(100, max(0, level))
        if 0 < level < spec.d_min:
            level = spec.d_min
        if level > 0 and lamp.level == 0:
            lamp.switch_count += 1
        lamp.level = level
        if "power_loss" in ctl.faults:
            power = 0.0
        elif level == 0 or "lamp_failure" in faults:
            power = spec.standby_w  # a failed light source draws about the gear's standby
        else:
            span = spec.p_max_w - spec.p_min_w
            power = spec.p_min_w + span * (level - spec.d_min) / (100 - spec.d_min)
            power *= 1.0 + self._rng.gauss(0.0, _NOISE)
            if "power_high" in faults:
                power *= _POWER_HIGH
            elif "power_low" in faults:
                power *= _POWER_LOW
            power = max(0.0, power) + spec.standby_w
        lamp.energy_kwh += power * dt / 3.6e6
        if level > 0 and "lamp_failure" not in faults and "power_loss" not in ctl.faults:
            lamp.hours += dt / 3600.0
        pt = self._lamp_points
        # lamp failure: the gear still reports the level it drives, the status bit tells
        regs[at + off["level_actual"]] = level
        encode_into(pt["power_w"], min(power, 2000.0), regs, at + off["power_w"])
        encode_into(pt["energy_kwh"], lamp.energy_kwh, regs, at + off["energy_kwh"])
        encode_into(pt["hours"], lamp.hours, regs, at + off["hours"])
        encode_into(pt["switch_count"], lamp.switch_count & 0xFFFFFFFF, regs, at + off["switch_count"])
        regs[at + off["status"]] = (
            pack_bits(pt["status"], {f: True for f in faults if f in LAMP_FAULTS}) if faults else 0
        )

    async def _tick(self, dt: float) -> None:
        """One physics step of every lamp, yielding to the servers every couple of
        milliseconds: a city's 54,000 lamps take most of a second (about 19 µs a lamp), during
        which no controller would answer otherwise. Yielding every ten controllers (20-35 ms)
        made a command's write and read-back, each waiting for a stretch, take up to 170 ms."""
        now = self.clock.now()
        cb = self.profile.controller.base
        slice_ = TimeSlice(_TICK_SLICE_S)
        for ctl in list(self._controllers.values()):
            await slice_.tick()
            if not ctl.regs:
                continue
            wd = ctl.regs[cb - ctl.start + self._ctl_off["watchdog_s"]]
            if wd and not ctl.failsafe and now - ctl.last_write >= wd:
                ctl.failsafe = True
                log.info("sim_watchdog_tripped", endpoint=ctl.spec.endpoint_id, watchdog_s=wd)
            self._write_controller(ctl)
            for lamp in ctl.lamps:
                self._update_lamp(ctl, lamp, dt)

    async def _physics(self) -> None:
        last = self.clock.now()
        while True:
            await self.clock.sleep(max(self.tick_s, LAMP_REAL_TICK_S * self.clock.speed))
            now = self.clock.now()
            await self._tick(max(0.0, now - last))
            last = now

    # -- servers -----------------------------------------------------------------

    async def _servers_loop(self) -> None:
        """Open or close listeners to match comm_loss / power_loss faults."""
        while True:
            await self._reconcile.wait()
            self._reconcile.clear()
            for srv in self._servers.values():
                want = not all(c.silent for c in srv.controllers)
                if want and not srv.endpoint.listening:
                    await self._listen(srv)

    async def _listen(self, srv: _Server) -> None:
        await srv.endpoint.listen(
            lambda: [self._device(c) for c in srv.controllers], lambda core: self._bind(srv, core)
        )

    def _silence(self, srv: _Server) -> None:
        srv.endpoint.silence()

    async def _start(self) -> None:
        for srv in self._servers.values():
            await self._listen(srv)
        self.spawn(self._physics(), "physics")
        self.spawn(self._servers_loop(), "servers")
        log.info(
            "sim_lighting_started",
            controllers=len(self._controllers),
            lamps=len(self._lamps),
            servers=len(self._servers),
        )

    async def _stop(self) -> None:
        for srv in self._servers.values():
            self._silence(srv)
        await asyncio.sleep(0)  # let pymodbus finish its pending request handlers

    # -- faults and views --------------------------------------------------------

    def inject(self, device_id_or_endpoint: str, fault: str) -> None:
        """Start a fault on a lamp, or on a controller (lamp faults then hit all its lamps)."""
        self._fault(device_id_or_endpoint, fault, active=True)

    def clear(self, device_id_or_endpoint: str, fault: str | None = None) -> None:
        """End one fault (or all of them) on a lamp or controller."""
        if fault is None:
            is_lamp = device_id_or_endpoint in self._lamps
            for f in sorted(LAMP_FAULTS if is_lamp else FAULTS):
                self._fault(device_id_or_endpoint, f, active=False)
            return
        self._fault(device_id_or_endpoint, fault, active=False)

    def _fault(self, target: str, fault: str, *, active: bool) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(sorted(FAULTS))}")
        if target in self._lamps:
            ctl, lamp = self._lamps[target]
            if fault not in LAMP_FAULTS:
                raise ValueError(f"{fault!r} is a controller fault; {target!r} is a lamp")
            self._lamp_fault(ctl, lamp, fault, active)
            return
        ctl_or_none = self._controllers.get(target)
        if ctl_or_none is None:
            raise ValueError(f"unknown lamp or controller {target!r}")
        ctl = ctl_or_none
        if fault in CONTROLLER_FAULTS:
            self._controller_fault(ctl, fault, active)
        else:
            for lamp in ctl.lamps:
                self._lamp_fault(ctl, lamp, fault, active)

    def _lamp_fault(self, ctl: _Controller, lamp: _Lamp, fault: str, active: bool) -> None:
        if active == (fault in lamp.faults):
            return
        if active and fault == "driver_failure":
            lamp.stuck = lamp.level
        if active:
            lamp.faults.add(fault)
        else:
            lamp.faults.discard(fault)
        if ctl.regs:
            self._update_lamp(ctl, lamp, 0.0)
        log.info("sim_fault", target=lamp.spec.device_id, fault=fault, active=active)

    def _controller_fault(self, ctl: _Controller, fault: str, active: bool) -> None:
        if active == (fault in ctl.faults):
            return
        was_powered = "power_loss" not in ctl.faults
        if active:
            ctl.faults.add(fault)
        else:
            ctl.faults.discard(fault)
        if fault == "power_loss" and not active and not was_powered:
            # back from a supply loss: lamps start at the power-on (fail-safe) level
            ctl.failsafe = True
            ctl.last_write = self.clock.now()
        if ctl.regs:
            self._write_controller(ctl)
            for lamp in ctl.lamps:
                self._update_lamp(ctl, lamp, 0.0)
        srv = self._servers[(ctl.spec.host, ctl.port)]
        if all(c.silent for c in srv.controllers):
            self._silence(srv)
        self._reconcile.set()
        log.info("sim_fault", target=ctl.spec.endpoint_id, fault=fault, active=active)

    def faults(self, device_id_or_endpoint: str) -> frozenset[str]:
        """Active faults of a lamp or controller."""
        if device_id_or_endpoint in self._lamps:
            return frozenset(self._lamps[device_id_or_endpoint][1].faults)
        return frozenset(self._controllers[device_id_or_endpoint].faults)

    def last_write(self, endpoint_id: str) -> float:
        """Clock time of the last write the controller accepted (what its watchdog watches)."""
        return self._controllers[endpoint_id].last_write

    def lamp(self, device_id: str) -> Mapping[str, Value]:
        """The lamp's values as its registers hold them now (read-only, for tests)."""
        ctl, lamp = self._lamps[device_id]
        return MappingProxyType(self._lamp_decoder.decode(ctl.regs, lamp.at))

    def controller(self, endpoint_id: str) -> Mapping[str, Value]:
        """The controller block's values as its registers hold them now."""
        ctl = self._controllers[endpoint_id]
        return MappingProxyType(self._ctl_decoder.decode(ctl.regs, self.profile.controller.base - ctl.start))

    def registers(self, endpoint_id: str) -> tuple[list[int], int, bool]:
        """The unit's live registers, the address of the first, and whether it is silent: how a
        co-located device (a help point's block, `SimController.extra`) shows its own values."""
        ctl = self._controllers[endpoint_id]
        return ctl.regs, ctl.start, ctl.silent

    def endpoints(self) -> list[ModbusEndpoint]:
        """Driver endpoints for the simulated controllers, with the ports actually used."""
        return [
            ModbusEndpoint(
                endpoint_id=c.spec.endpoint_id,
                host=c.spec.host,
                port=c.port,
                unit=c.spec.unit,
                lamps=tuple((lp.index, lp.device_id) for lp in c.spec.lamps),
            )
            for c in self._controllers.values()
        ]

    # -- MQTT fault injection ------------------------------------------------------

    def apply_fault_payload(self, payload: bytes | str) -> bool:
        """Apply one JSON fault message; a bad one is refused with a log line, never raised."""
        return apply_fault_payload(
            payload, FaultMessage, lambda m: self._fault(m.target, m.fault, active=m.active)
        )

    async def run_mqtt_faults(self, url: str, topic: str = FAULT_TOPIC) -> None:
        """Take fault injections from MQTT until cancelled; reconnects with jittered backoff."""
        await run_fault_listener(url, topic, self.apply_fault_payload, name="lights")


def demo_controllers(
    count: int,
    lamps_per_controller: int,
    base_port: int,
    *,
    host: str = "127.0.0.1",
    unit: int = 1,
    watchdog_s: float = 300.0,
) -> list[SimController]:
    """Controllers `lc-001`.. on consecutive ports, lamps `lc-001-001`.. (index from 0).

    Lamp wattages vary a little (30-46 W, around Dortmund's 38 W average) by a fixed rule,
    so the same call always builds the same city.
    """
    out: list[SimController] = []
    for c in range(count):
        eid = f"lc-{c + 1:03d}"
        lamps = tuple(
            SimLamp(device_id=f"{eid}-{i + 1:03d}", index=i, p_max_w=30.0 + (7 * c + 3 * i) % 17)
            for i in range(lamps_per_controller)
        )
        out.append(SimController(eid, host, base_port + c if base_port else 0, unit, lamps, watchdog_s))
    return out


async def serve_lights(
    controllers: int,
    lamps_per_controller: int,
    base_port: int,
    clock_speed: float = 1.0,
    faults: Sequence[str] = (),
    *,
    host: str = "127.0.0.1",
    unit: int = 1,
    watchdog_s: float = 300.0,
    start: float | None = None,
    mqtt_url: str | None = None,
    fault_topic: str = FAULT_TOPIC,
    seed: int = 0,
) -> None:
    """Run simulated lamp controllers until cancelled (the `edge simulate lights` command).

    `faults` are "target:fault" strings injected at start, e.g. "lc-001-004:lamp_failure"
    or "lc-002:comm_loss". `start` is the clock's epoch start (default: now), so a daemon
    given the same start and speed shares the simulated time.
    """
    parsed = parse_faults(faults, FAULTS)
    clock = sim_clock(clock_speed, start)
    specs = demo_controllers(
        controllers, lamps_per_controller, base_port, host=host, unit=unit, watchdog_s=watchdog_s
    )
    async with LightingSimulator(specs, clock, seed=seed) as sim:
        for target, fault in parsed:
            sim.inject(target, fault)
        for ep in sim.endpoints():
            log.info("sim_lighting_endpoint", endpoint=ep.endpoint_id, host=ep.host, port=ep.port)
        if mqtt_url:
            await sim.run_mqtt_faults(mqtt_url, fault_topic)
        else:
            await asyncio.Event().wait()  # until cancelled
