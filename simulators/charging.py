"""Lamp-post charge points behind a real asyncua OPC UA server, with car physics and faults.

The server serves the shared information model (devices/profiles/charge_point.toml), so
driver and simulator cannot drift. Cars arrive, stay and ask for energy per the ElaadNL
curves (seeded); single- and three-phase cars; no charging under 6 A; charging tapers
above 80 % state of charge; a full car goes SuspendedEV; a watchdog falls back to the
fail-safe current when neither a setpoint nor a heartbeat arrives for `watchdog_s`.

The fail-safe current is a writable node (`failsafe_current_a`): the watchdog falls back to
the value written last (the spec's value until then). `inject(cp_id, "failsafe_ignored")`
makes a charger accept such writes and keep its own value (what a read-back must catch).

Feeders: a charge point may hang on a feeder (a night-only lighting circuit or a 24/7
low-voltage connection) whose lamps take their share first; a feeder over its limit for
`trip_after_s` trips its fuse and every charger on it goes dark (Unavailable) until reset.
Every overload episode and every trip is recorded (`events`, `overloads`, `trips`): ground
truth for tests and the demo summary, not a sample.

Communication loss is modelled where it happens in the field: between the edge and the
site (`inject(endpoint_id, "comm_loss")`) the OPC UA server sits behind a TCP link that
goes silent (open connections stop carrying bytes, new ones are refused, like a dead
cellular modem; on recovery old connections are reset); between the site gateway and one
charger (`inject(cp_id, "comm_loss")`) the gateway reports the charger Unavailable,
freezes its values and refuses writes to it (the charger keeps running, so its own
watchdog falls back to the fail-safe current).
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import structlog
from asyncua import ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.common.utils import ServiceError
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes

from devices.charging import OpcUaEndpoint
from devices.profiles.charging import MIN_CHARGE_CURRENT_A, ChargePointProfile, default_profile
from edge.clock import Clock
from edge.events import Value
from edge.lifecycle import Service
from edge.net import free_port
from simulators import MIN_REAL_TICK_S, parse_faults, sim_clock
from simulators.charging_physics import ChargingPhysics, FeederEvent, SimChargePoint, SimFeeder, _Cp, _Feeder
from simulators.charging_site import (
    ServerSecurity,
    SiteLink,
    build_server,
    make_test_certificates,
)
from simulators.elaad import SessionSampler, load_curves

log = structlog.get_logger(__name__)

FAULTS = frozenset({"faulted", "meter_frozen", "comm_loss", "failsafe_ignored"})


class ChargingSimulator(Service):
    """Serves charge points over OPC UA on opc.tcp://host:port until the context exits.

    Physics runs every `tick_s` clock seconds (at least MIN_REAL_TICK_S real seconds
    apart, so a 300x clock still works). `noise_a` adds measurement noise to the phase
    currents of charging cars (benchmarks use it so every charger changes every second).
    """

    service_name = "charging_sim"

    def __init__(
        self,
        charge_points: Sequence[SimChargePoint],
        clock: Clock,
        *,
        feeders: Sequence[SimFeeder] = (),
        profile: ChargePointProfile | None = None,
        endpoint_id: str = "chargers",
        host: str = "127.0.0.1",
        port: int = 0,
        security: ServerSecurity | None = None,
        seed: int = 0,
        tick_s: float = 1.0,
        noise_a: float = 0.0,
        link: bool = True,
    ) -> None:
        super().__init__()
        self.profile = profile or default_profile()
        self.clock = clock
        self.endpoint_id = endpoint_id
        self.host = host
        self.port = port
        self.security = security
        self.tick_s = tick_s
        self._use_link = link
        self._rng = random.Random(seed)
        self._sampler = SessionSampler(load_curves("public"), seed=seed)
        self._world = ChargingPhysics(self._rng, self._sampler, noise_a)
        self._feeders = self._world.feeders
        self._feeders.update({f.feeder_id: _Feeder(f) for f in feeders})
        if len(self._feeders) != len(feeders):
            raise ValueError("feeder ids must be unique")
        now = clock.now()
        self._cps: dict[str, _Cp] = self._world.cps
        for spec in charge_points:
            _check_spec(spec, self.profile, self._cps, self._feeders)
            self._cps[spec.cp_id] = _Cp(
                spec,
                limit_a=spec.max_current_a,
                last_feed=now,
                next_arrival=self._sampler.next_arrival(now, spec.sessions_per_day),
                meter_kwh=round(self._rng.uniform(0.0, 20_000.0), 3),  # posts in the field have a past
                failsafe_a=spec.failsafe_current_a,
            )
        self._server: Server | None = None
        self._link: SiteLink | None = None
        self._ns = 0
        self._nodes: dict[str, dict[str, ua.NodeId]] = {}
        self._routes: dict[str, tuple[str, str]] = {}  # node id string -> (cp_id, point)
        self._server_faults: set[str] = set()

    @property
    def noise_a(self) -> float:
        """Measurement noise (A, standard deviation) on the phase currents of charging cars."""
        return self._world.noise_a

    @property
    def events(self) -> deque[FeederEvent]:
        """Every overload episode and fuse trip, in order."""
        return self._world.events

    @property
    def overloads(self) -> int:
        """Overload episodes started on any feeder."""
        return self._world.overloads

    @property
    def trips(self) -> int:
        """Fuses tripped."""
        return self._world.trips

    @property
    def watchdog_trips(self) -> int:
        """Chargers that fell back to their fail-safe current."""
        return self._world.watchdog_trips

    # -- address space -------------------------------------------------------------

    async def _build(self) -> Server:
        initial = {cp_id: self._world.values(cp, self.clock.now()) for cp_id, cp in self._cps.items()}
        server, self._ns, self._nodes, self._routes = await build_server(self.profile, self.security, initial)
        for cp_id, cp in self._cps.items():
            cp.served.update(initial[cp_id])
        server.subscribe_server_callback(CallbackType.PreWrite, self._pre_write)
        server.subscribe_server_callback(CallbackType.PostWrite, self._post_write)
        return server

    def _route(self, node_id: ua.NodeId) -> tuple[_Cp, str] | None:
        if node_id.NamespaceIndex != self._ns or not isinstance(node_id.Identifier, str):
            return None
        route = self._routes.get(node_id.Identifier)
        if route is None:
            return None
        return self._cps[route[0]], route[1]

    async def _pre_write(self, event: ServerItemCallback, _dispatcher: object) -> None:
        """Refuse what a real charger would: read-only points, implausible values, lost chargers."""
        if not event.is_external:
            return
        for wv in event.request_params.NodesToWrite:
            routed = self._route(wv.NodeId)
            if routed is None:
                continue
            cp, point = routed
            pt = self.profile.point(point)
            if wv.AttributeId != AttributeIds.Value or not pt.writable:
                raise ServiceError(StatusCodes.BadNotWritable)
            if "comm_loss" in cp.faults:
                raise ServiceError(StatusCodes.BadCommunicationError)
            value = wv.Value.Value.Value if wv.Value and wv.Value.Value else None
            try:
                v = pt.check(value)
            except (TypeError, ValueError):
                raise ServiceError(StatusCodes.BadOutOfRange) from None
            if point in ("current_limit_a", "failsafe_current_a") and isinstance(v, float):
                if v > cp.spec.max_current_a:
                    raise ServiceError(StatusCodes.BadOutOfRange)
                if point == "failsafe_current_a" and 0 < v < MIN_CHARGE_CURRENT_A:
                    raise ServiceError(StatusCodes.BadOutOfRange)  # IEC 61851: 0 or at least 6 A

    async def _post_write(self, event: ServerItemCallback, _dispatcher: object) -> None:
        """A setpoint or heartbeat feeds the watchdog; a setpoint acts at once."""
        if not event.is_external:
            return
        now = self.clock.now()
        touched: set[str] = set()
        for wv, status in zip(event.request_params.NodesToWrite, event.response_params, strict=False):
            routed = self._route(wv.NodeId)
            if routed is None or not status.is_good():
                continue
            cp, point = routed
            value = wv.Value.Value.Value
            cp.last_feed = now
            if point == "failsafe_current_a":
                if "failsafe_ignored" in cp.faults:  # took the write, keeps its own value
                    await self._write_node(cp, point, cp.failsafe_a)
                    continue
                cp.failsafe_a = float(value)
                if cp.failsafe:
                    cp.limit_a = cp.failsafe_a
                touched.add(cp.spec.cp_id)
            cp.served[point] = value
            if point == "current_limit_a":
                cp.limit_a = float(value)
                if cp.failsafe:
                    cp.failsafe = False
                    log.info("sim_failsafe_cleared", cp_id=cp.spec.cp_id)
                touched.add(cp.spec.cp_id)
        for cp_id in touched:
            cp = self._cps[cp_id]
            self._world.step(cp, now, 0.0, self._world.powered(cp, now))
            await self._publish(cp)

    async def _publish(self, cp: _Cp) -> None:
        """Write the values that changed into the address space (what subscriptions see)."""
        if "comm_loss" in cp.faults or self._server is None:
            return  # the gateway lost the charger: it serves the last values it had
        values = self._world.values(cp, self.clock.now())
        nodes = self._nodes[cp.spec.cp_id]
        served = cp.served
        for name, value in values.items():
            if served.get(name) != value:
                served[name] = value
                pt = self.profile.by_name[name]
                variant = ua.Variant(value, getattr(ua.VariantType, pt.type.value))
                await self._server.write_attribute_value(nodes[name], ua.DataValue(variant))

    async def _write_node(self, cp: _Cp, name: str, value: Value) -> None:
        if self._server is None:
            return
        cp.served[name] = value
        pt = self.profile.by_name[name]
        variant = ua.Variant(value, getattr(ua.VariantType, pt.type.value))
        await self._server.write_attribute_value(self._nodes[cp.spec.cp_id][name], ua.DataValue(variant))

    async def _tick(self, dt_s: float) -> None:
        now = self.clock.now()
        for cp in self._cps.values():
            self._world.step(cp, now, dt_s, self._world.powered(cp, now))
        self._world.feeders_step(now)
        for cp in self._cps.values():
            await self._publish(cp)

    async def _physics(self) -> None:
        last = self.clock.now()
        while True:
            await self.clock.sleep(max(self.tick_s, MIN_REAL_TICK_S * self.clock.speed))
            now = self.clock.now()
            await self._tick(max(0.0, now - last))
            last = now

    # -- lifecycle -----------------------------------------------------------------

    async def _start(self) -> None:
        server = await self._build()
        if self._use_link:
            server.socket_address = (self.host, 0)
            self._link = SiteLink(self.host, self.port, 0)
            await self._link.listen()  # bind the public port first so port 0 can be reported
            self.port = self._link.port
        elif self.port == 0:
            self.port = free_port(self.host)
        server.set_endpoint(f"opc.tcp://{self.host}:{self.port}/dos-edge/chargers")
        await server.start()
        self._server = server
        if self._link is not None and server.bserver is not None:
            self._link.target_port = server.bserver.port
        now = self.clock.now()
        for cp in self._cps.values():
            self._world.step(cp, now, 0.0, self._world.powered(cp, now))
            await self._publish(cp)
        self.spawn(self._physics(), "physics")
        log.info(
            "sim_charging_started",
            charge_points=len(self._cps),
            url=self.url,
            secure=self.security is not None,
        )

    async def _stop(self) -> None:
        try:
            if self._link is not None:
                await self._link.close()
        finally:
            if self._server is not None:
                await self._server.stop()
                # asyncua keeps sessions whose connection died (a client may resume them)
                # past stop(); a stopped simulator must not leave their tasks running
                sessions = getattr(self._server.iserver, "_external_sessions", {})
                for session in list(sessions.values()):
                    await session.close_session()

    # -- views and control -----------------------------------------------------------

    @property
    def url(self) -> str:
        """Where clients connect (the port actually bound)."""
        return f"opc.tcp://{self.host}:{self.port}/dos-edge/chargers"

    def endpoint(self) -> OpcUaEndpoint:
        """The driver endpoint for this server."""
        return OpcUaEndpoint(self.endpoint_id, self.url, tuple(self._cps))

    def cp(self, cp_id: str) -> Mapping[str, Value]:
        """The charge point's values as the server holds them now (read-only)."""
        return MappingProxyType(dict(self._cps[cp_id].served))

    def last_feed(self, cp_id: str) -> float:
        """Clock time of the last setpoint or heartbeat write (what the watchdog watches)."""
        return self._cps[cp_id].last_feed

    def sessions(self, cp_id: str) -> int:
        """How many cars have plugged in at the charge point since start."""
        return self._cps[cp_id].sessions

    def feeder(self, feeder_id: str) -> Mapping[str, object]:
        """Load per phase (A), limit, lighting share, live and tripped state of a feeder."""
        f = self._feeders[feeder_id]
        return MappingProxyType(
            {
                "load_a": f.load_a,
                "limit_a": f.spec.limit_a,
                "lighting_a": f.lighting_a,
                "live": self._world.feeder_live(f, self.clock.now()),
                "tripped": f.tripped,
                "peak_a": f.peak_a,
            }
        )

    def set_lighting_load(self, feeder_id: str, amps: float) -> None:
        """The lamps' own current on a feeder (from the lighting plan); it comes first."""
        self._feeders[feeder_id].lighting_a = max(0.0, amps)

    def set_feeder_live(self, feeder_id: str, live: bool | None) -> None:
        """Switch a feeder on or off (None: back to its own night-only rule)."""
        self._feeders[feeder_id].live_override = live

    def reset_feeder(self, feeder_id: str) -> None:
        """Replace the fuse of a tripped feeder."""
        f = self._feeders[feeder_id]
        f.tripped, f.over_since = False, None

    async def arrive(
        self,
        cp_id: str,
        energy_kwh: float,
        departure_ts: float,
        phases: int = 3,
        *,
        reports: bool = True,
        preparing_s: float = 0.0,
        capacity_kwh: float | None = None,
    ) -> str:
        """Plug a car in now (replacing any car there); returns its session id.

        `reports`: whether the car tells its need and departure. `preparing_s`: clock
        seconds before it draws current (tests skip the handshake by default).
        `capacity_kwh`: the battery (default: a common size); the car wants to be full,
        so a need close to the capacity means a nearly empty car that tapers late.
        """
        cp = self._cps[cp_id]
        now = self.clock.now()
        car = self._world.force_car(cp, now, energy_kwh, departure_ts, phases, reports, capacity_kwh)
        cp.preparing_until = now + preparing_s
        self._world.step(cp, now, 0.0, self._world.powered(cp, now))
        await self._publish(cp)
        return car.session_id

    async def leave(self, cp_id: str) -> None:
        """Unplug the car now."""
        cp = self._cps[cp_id]
        if cp.car is not None:
            cp.car.departure_ts = self.clock.now()
            now = self.clock.now()
            self._world.step(cp, now, 0.0, self._world.powered(cp, now))
            await self._publish(cp)

    async def inject(self, target: str, fault: str) -> None:
        """Start a fault: on a charge point ("faulted", "meter_frozen", "comm_loss"), or
        "comm_loss" on the endpoint (the whole server falls silent)."""
        await self._fault(target, fault, active=True)

    async def clear(self, target: str, fault: str | None = None) -> None:
        """End one fault (or all) on a charge point or the endpoint."""
        for f in sorted(FAULTS) if fault is None else [fault]:
            if target == self.endpoint_id and f != "comm_loss":
                continue
            await self._fault(target, f, active=False)

    def faults(self, target: str) -> frozenset[str]:
        """Active faults of a charge point or the endpoint."""
        if target == self.endpoint_id:
            return frozenset(self._server_faults)
        return frozenset(self._cps[target].faults)

    async def _fault(self, target: str, fault: str, *, active: bool) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(sorted(FAULTS))}")
        if target == self.endpoint_id:
            if fault != "comm_loss":
                raise ValueError(f"{fault!r} is a charge point fault; {target!r} is the endpoint")
            if self._link is None:
                raise ValueError("comm_loss on the endpoint needs the simulator's link (link=True)")
            if active == ("comm_loss" in self._server_faults):
                return
            if active:
                self._server_faults.add(fault)
                await self._link.cut()
            else:
                self._server_faults.discard(fault)
                await self._link.restore()
            log.info("sim_fault", target=target, fault=fault, active=active)
            return
        cp = self._cps.get(target)
        if cp is None:
            raise ValueError(f"unknown charge point or endpoint {target!r}")
        if active == (fault in cp.faults):
            return
        if active:
            if fault == "meter_frozen":
                cp.frozen_meter = (cp.session_kwh, cp.meter_kwh)
            cp.faults.add(fault)
        else:
            if fault == "meter_frozen":
                cp.frozen_meter = None
            cp.faults.discard(fault)
        if fault == "comm_loss" and active:
            # the gateway says so before it stops updating the charger's values
            await self._write_status(cp, "Unavailable")
        now = self.clock.now()
        self._world.step(cp, now, 0.0, self._world.powered(cp, now))
        await self._publish(cp)
        log.info("sim_fault", target=target, fault=fault, active=active)

    async def _write_status(self, cp: _Cp, status: str) -> None:
        if self._server is None:
            return
        cp.served["status"] = status
        await self._server.write_attribute_value(
            self._nodes[cp.spec.cp_id]["status"], ua.DataValue(ua.Variant(status, ua.VariantType.String))
        )


# -- CLI ----------------------------------------------------------------------------------


def demo_charge_points(
    count: int,
    *,
    feeders: int = 0,
    feeder_limit_a: float = 32.0,
    watchdog_s: float = 120.0,
    sessions_per_day: float = 1.0,
) -> tuple[list[SimChargePoint], list[SimFeeder]]:
    """Charge points `cp-001`.. and, if `feeders`, that many feeders they share in turn.

    Every third feeder is a night-only single-phase lighting circuit; the others are
    24/7 three-phase low-voltage connections. Every fourth post is single-phase.
    """
    fs = [
        SimFeeder(
            f"fd-{i + 1:02d}",
            limit_a=feeder_limit_a if i % 3 else min(feeder_limit_a, 25.0),
            phases=1 if i % 3 == 0 else 3,
            night_only=i % 3 == 0,
        )
        for i in range(feeders)
    ]
    cps = [
        SimChargePoint(
            f"cp-{i + 1:03d}",
            max_current_a=16.0,
            phases=1 if i % 4 == 3 else 3,
            watchdog_s=watchdog_s,
            feeder=fs[i % len(fs)].feeder_id if fs else None,
            sessions_per_day=sessions_per_day,
        )
        for i in range(count)
    ]
    return cps, fs


async def serve_chargers(
    count: int,
    port: int,
    clock_speed: float = 1.0,
    seed: int = 0,
    faults: Sequence[str] = (),
    *,
    host: str = "127.0.0.1",
    feeders: int = 0,
    watchdog_s: float = 120.0,
    sessions_per_day: float = 1.0,
    start: float | None = None,
    security: ServerSecurity | None = None,
    endpoint_id: str = "chargers",
) -> None:
    """Run simulated charge points until cancelled (the `edge simulate chargers` command).

    `faults` are "target:fault" strings injected at start, e.g. "cp-003:faulted" or
    "chargers:comm_loss". `start` is the clock's epoch start (default: now), so a daemon
    given the same start and speed shares the simulated time.
    """
    parsed = parse_faults(faults, FAULTS)
    clock = sim_clock(clock_speed, start)
    cps, fs = demo_charge_points(
        count, feeders=feeders, watchdog_s=watchdog_s, sessions_per_day=sessions_per_day
    )
    async with ChargingSimulator(
        cps, clock, feeders=fs, host=host, port=port, security=security, seed=seed, endpoint_id=endpoint_id
    ) as sim:
        for target, fault in parsed:
            await sim.inject(target, fault)
        log.info("sim_charging_endpoint", endpoint=sim.endpoint_id, url=sim.url)
        await asyncio.Event().wait()  # until cancelled


__all__ = [
    "FAULTS",
    "ChargingSimulator",
    "FeederEvent",
    "ServerSecurity",
    "SimChargePoint",
    "SimFeeder",
    "demo_charge_points",
    "make_test_certificates",
    "serve_chargers",
]


def _check_spec(
    spec: SimChargePoint,
    profile: ChargePointProfile,
    cps: Mapping[str, object],
    feeders: Mapping[str, object],
) -> None:
    """A charge point the simulator can serve, or ValueError naming what is wrong."""
    profile.check_cp_id(spec.cp_id)
    if spec.cp_id in cps:
        raise ValueError(f"duplicate charge point {spec.cp_id!r}")
    if spec.phases not in (1, 3):
        raise ValueError(f"{spec.cp_id}: phases must be 1 or 3")
    if not MIN_CHARGE_CURRENT_A <= spec.max_current_a <= 80:
        raise ValueError(f"{spec.cp_id}: max_current_a outside 6..80 A")
    if not 0 <= spec.failsafe_current_a <= spec.max_current_a:
        raise ValueError(f"{spec.cp_id}: failsafe_current_a outside 0..max_current_a")
    if spec.feeder is not None and spec.feeder not in feeders:
        raise ValueError(f"{spec.cp_id}: unknown feeder {spec.feeder!r}")
