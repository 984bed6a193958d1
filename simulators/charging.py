"""Lamp-post charge points behind a real asyncua OPC UA server or over OCPP 1.6J, with car physics and faults.

The server serves the shared information model (devices/profiles/charge_point.toml), so
driver and simulator cannot drift. Cars, watchdogs and feeders are `charging_physics`; charge
points with `protocol="ocpp"` are each a client of a central system instead
(`charging_ocpp`), on the same cars and feeders, so one feeder can carry both kinds.

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
freezes its values and refuses writes to it (its own watchdog falls back to the fail-safe).
An OCPP charger's link is its own ("disconnect", "reboot": `charging_ocpp`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

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
from edge.lifecycle import Service, ServiceState
from edge.net import free_port
from simulators import MIN_REAL_TICK_S, parse_faults, sim_clock
from simulators.charging_ocpp import DEFAULT_ID_TAG, OcppChargePoints
from simulators.charging_ocpp import FAULTS as OCPP_FAULTS
from simulators.charging_physics import (
    ChargingPhysics,
    FeederEvent,
    GroundTruth,
    SimChargePoint,
    SimFeeder,
    _Cp,
    _Feeder,
    check_spec,
    demo_charge_points,
)
from simulators.charging_site import (
    ServerSecurity,
    SiteLink,
    build_server,
    make_test_certificates,
)
from simulators.elaad import SessionSampler, load_curves

log = structlog.get_logger(__name__)

OPCUA_FAULTS = frozenset({"faulted", "meter_frozen", "comm_loss", "failsafe_ignored"})
FAULTS = OPCUA_FAULTS | OCPP_FAULTS


class ChargingSimulator(GroundTruth, Service):
    """Serves charge points over OPC UA on opc.tcp://host:port until the context exits.

    Physics runs every `tick_s` clock seconds (at least MIN_REAL_TICK_S real seconds
    apart, so a 300x clock still works). `noise_a` adds measurement noise to the phase
    currents of charging cars (benchmarks use it so every charger changes every second).
    Charge points with `protocol="ocpp"` are no part of the OPC UA server: each connects to
    the central system at `ocpp_url` (simulators/charging_ocpp.py) with its password from
    `ocpp_passwords` (else `ocpp_password`), checking a wss:// server against `ocpp_ca_file`;
    cars that arrive on their own present one of `ocpp_id_tags`. Both kinds share the cars,
    the feeders and their ground truth.
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
        ocpp_url: str | None = None,
        ocpp_password: str | None = None,
        ocpp_passwords: Mapping[str, str] | None = None,
        ocpp_ca_file: Path | None = None,
        ocpp_id_tags: Sequence[str] = (DEFAULT_ID_TAG,),
    ) -> None:
        super().__init__()
        self.profile = profile or default_profile()
        self.clock, self.endpoint_id, self.host, self.port = clock, endpoint_id, host, port
        self.security, self.tick_s, self._use_link = security, tick_s, link
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
            check_spec(spec, self.profile, self._cps, self._feeders)
            ocpp = spec.protocol == "ocpp"
            self._cps[spec.cp_id] = _Cp(
                spec,
                limit_a=spec.failsafe_current_a if ocpp else spec.max_current_a,  # booted: no profile yet
                last_feed=now,
                next_arrival=self._sampler.next_arrival(now, spec.sessions_per_day),
                meter_kwh=round(self._rng.uniform(0.0, 20_000.0), 3),  # posts in the field have a past
                failsafe_a=spec.failsafe_current_a,
                failsafe=ocpp,
                failsafe_caps=ocpp,
                auth_required=ocpp,
            )
        self._opcua = {cp_id: cp for cp_id, cp in self._cps.items() if cp.spec.protocol == "opcua"}
        ocpp_cps = [cp for cp in self._cps.values() if cp.spec.protocol == "ocpp"]
        self._ocpp: OcppChargePoints | None = None
        if ocpp_cps:
            if not ocpp_url:
                raise ValueError("OCPP charge points need the central system's URL (ocpp_url)")
            self._ocpp = OcppChargePoints(
                self._world,
                ocpp_cps,
                clock,
                ocpp_url,
                self._ocpp_changed,
                password=ocpp_password,
                passwords=ocpp_passwords,
                ca_file=ocpp_ca_file,
                id_tags=ocpp_id_tags,
                seed=seed,
            )
        self._server: Server | None = None
        self._link: SiteLink | None = None
        self._ns = 0
        self._nodes: dict[str, dict[str, ua.NodeId]] = {}
        self._routes: dict[str, tuple[str, str]] = {}  # node id string -> (cp_id, point)
        self._server_faults: set[str] = set()

    @property
    def ocpp(self) -> OcppChargePoints | None:
        """The OCPP charge points' front end (None without any): their links and counters."""
        return self._ocpp

    # -- address space -------------------------------------------------------------

    async def _build(self) -> Server:
        initial = {cp_id: self._world.values(cp, self.clock.now()) for cp_id, cp in self._opcua.items()}
        server, self._ns, self._nodes, self._routes = await build_server(self.profile, self.security, initial)
        for cp_id, cp in self._opcua.items():
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
        """Write the values that changed into the address space (what subscriptions see); an OCPP
        charger reports for itself what changed."""
        if cp.spec.protocol == "ocpp":
            self._ocpp_changed(cp, step=False)
            return
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

    def _ocpp_changed(self, cp: _Cp, *, step: bool = True) -> None:
        """An OCPP charger's profile or fail-safe changed its limit (it acts at once), or its physics
        was stepped: what it reports follows."""
        now = self.clock.now()
        if step:
            self._world.step(cp, now, 0.0, self._world.powered(cp, now))
        cp.served.update(self._world.values(cp, now))
        if self._ocpp is not None:
            self._ocpp.poke(cp.spec.cp_id)

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
        if self._opcua:
            await self._serve_opcua()
        now = self.clock.now()
        for cp in self._cps.values():
            self._world.step(cp, now, 0.0, self._world.powered(cp, now))
            await self._publish(cp)
        self.spawn(self._physics(), "physics")
        if self._ocpp is not None:
            await self._ocpp.__aenter__()
        log.info(
            "sim_charging_started",
            charge_points=len(self._cps),
            url=self.url if self._opcua else None,
            ocpp=self._ocpp.url if self._ocpp is not None else None,
            secure=self.security is not None,
        )

    async def _serve_opcua(self) -> None:
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

    async def _stop(self) -> None:
        try:
            if self._ocpp is not None and self._ocpp.state is ServiceState.OPENED:
                await self._ocpp.__aexit__(None, None, None)
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
        """The driver endpoint for this server (its OPC UA charge points)."""
        return OpcUaEndpoint(self.endpoint_id, self.url, tuple(self._opcua))

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
        id_tag: str | None = None,
    ) -> str:
        """Plug a car in now (replacing any car there); returns its session id.

        `reports`: whether the car tells its need and departure. `preparing_s`: clock
        seconds before it draws current (tests skip the handshake by default).
        `capacity_kwh`: the battery (default: a common size); the car wants to be full,
        so a need close to the capacity means a nearly empty car that tapers late.
        `id_tag`: the tag the car presents at an OCPP charge point (default: one of `ocpp_id_tags`).
        """
        cp = self._cps[cp_id]
        if id_tag is not None:
            if self._ocpp is None or cp.spec.protocol != "ocpp":
                raise ValueError(f"{cp_id} is no OCPP charge point: its cars present no idTag")
            self._ocpp.set_id_tag(cp_id, id_tag)
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
        """Start a fault: on an OPC UA charge point ("faulted", "meter_frozen", "comm_loss",
        "failsafe_ignored"), on an OCPP one ("faulted", "meter_frozen", "disconnect", "reboot",
        "reject_profile"), or "comm_loss" on the endpoint (the whole server falls silent)."""
        await self._fault(target, fault, active=True)

    async def clear(self, target: str, fault: str | None = None) -> None:
        """End one fault (or all) on a charge point or the endpoint."""
        cp = self._cps.get(target)
        for f in sorted(FAULTS) if fault is None else [fault]:
            if target == self.endpoint_id and f != "comm_loss":
                continue
            if fault is None and cp is not None and f not in _kinds(cp):
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
        if fault not in _kinds(cp):
            raise ValueError(f"{fault!r} is no fault of {cp.spec.protocol} charge point {target!r}")
        if fault == "reboot":  # an event, not a state: nothing to clear
            if active and self._ocpp is not None:
                await self._ocpp.fault(target, fault, active=True)
                log.info("sim_fault", target=target, fault=fault, active=active)
            return
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
            await self._write_node(cp, "status", "Unavailable")
        now = self.clock.now()
        self._world.step(cp, now, 0.0, self._world.powered(cp, now))
        await self._publish(cp)
        if self._ocpp is not None and cp.spec.protocol == "ocpp":
            await self._ocpp.fault(target, fault, active=active)
        log.info("sim_fault", target=target, fault=fault, active=active)


def check_ocpp_args(protocol: str, url: str | None, ca_file: Path | None) -> None:
    """ValueError naming the `edge simulate chargers` option that does not fit the others."""
    ocpp = protocol != "opcua"
    if ocpp and not url:
        raise ValueError(f"--protocol {protocol} needs --central-system ws://HOST:PORT/PATH")
    if url and not ocpp:
        raise ValueError("--central-system is for --protocol ocpp or mixed")
    if ca_file is not None and not str(url).startswith("wss://"):
        raise ValueError("--ocpp-ca-file is for a wss:// central system")
    if ca_file is not None and not ca_file.is_file():
        raise ValueError(f"--ocpp-ca-file: no such file {ca_file}")


def _kinds(cp: _Cp) -> frozenset[str]:
    """The faults a charge point of its protocol can have."""
    return OCPP_FAULTS if cp.spec.protocol == "ocpp" else OPCUA_FAULTS


# -- CLI ----------------------------------------------------------------------------------


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
    protocol: str = "opcua",
    central_system: str | None = None,
    ocpp_password: str | None = None,
    ocpp_ca_file: Path | None = None,
) -> None:
    """Run simulated charge points until cancelled (the `edge simulate chargers` command).

    `faults` are "target:fault" strings injected at start, e.g. "cp-003:faulted" or
    "chargers:comm_loss". `start` is the clock's epoch start (default: now), so a daemon
    given the same start and speed shares the simulated time. `protocol` "ocpp" (or "mixed")
    connects the charge points to the central system at `central_system` (ws:// or wss://).
    """
    check_ocpp_args(protocol, central_system, ocpp_ca_file)
    parsed = parse_faults(faults, FAULTS)
    clock = sim_clock(clock_speed, start)
    cps, fs = demo_charge_points(
        count, feeders=feeders, watchdog_s=watchdog_s, sessions_per_day=sessions_per_day, protocol=protocol
    )
    async with ChargingSimulator(
        cps,
        clock,
        feeders=fs,
        host=host,
        port=port,
        security=security,
        seed=seed,
        endpoint_id=endpoint_id,
        ocpp_url=central_system,
        ocpp_password=ocpp_password,
        ocpp_ca_file=ocpp_ca_file,
    ) as sim:
        for target, fault in parsed:
            await sim.inject(target, fault)
        if protocol != "ocpp":
            log.info("sim_charging_endpoint", endpoint=sim.endpoint_id, url=sim.url)
        await asyncio.Event().wait()  # until cancelled


__all__ = [
    "FAULTS",
    "ChargingSimulator",
    "FeederEvent",
    "ServerSecurity",
    "SimChargePoint",
    "SimFeeder",
    "check_ocpp_args",
    "demo_charge_points",
    "make_test_certificates",
    "serve_chargers",
]
