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
import datetime as dt
import ipaddress
import random
import socket
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Self

import structlog
from asyncua import ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.common.utils import ServiceError
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devices.charging import OpcUaEndpoint, quiet_asyncua, string_node_id
from devices.profiles.charging import MIN_CHARGE_CURRENT_A, ChargePointProfile, default_profile
from edge.clock import Clock, SimClock, SystemClock
from edge.events import Value
from edge.net import free_port
from edge.tasks import cancel_and_wait
from simulators import MIN_REAL_TICK_S
from simulators.elaad import SessionSampler, load_curves

log = structlog.get_logger(__name__)

FAULTS = frozenset({"faulted", "meter_frozen", "comm_loss", "failsafe_ignored"})
VOLTAGE_V = 230.0
TAPER_SOC = 0.8  # charging current falls linearly from here to full
PREPARING_S = 30.0  # clock seconds from plug-in to the car drawing current
APPLICATION_URI = "urn:dos-edge:simulator:charging"
_BATTERIES_KWH = (40.0, 58.0, 77.0)
_SINGLE_PHASE_SHARE = 0.35  # many cars charge single-phase only, even on 11 kW posts
_REPORTS_SHARE = 0.5  # cars that tell their energy need and departure (ISO 15118)


@dataclass(frozen=True, slots=True)
class SimFeeder:
    """A supply the charge points hang on; `limit_a` per phase, lamps take their share first.

    `night_only`: a lighting circuit, live from `on_hour_utc` to `off_hour_utc` (a coarse
    stand-in for sunset/sunrise; `set_feeder_live` overrides it, e.g. from a lighting plan).
    """

    feeder_id: str
    limit_a: float
    phases: int = 3
    night_only: bool = False
    on_hour_utc: float = 16.0
    off_hour_utc: float = 7.0
    trip_after_s: float = 60.0


@dataclass(frozen=True, slots=True)
class SimChargePoint:
    """One lamp-post charge point (one Type 2 connector) and where its supply comes from.

    `sessions_per_day`: how many cars come on average (0: only cars forced by `arrive`).
    """

    cp_id: str
    max_current_a: float = 16.0
    phases: int = 3
    failsafe_current_a: float = 6.0
    watchdog_s: float = 120.0
    feeder: str | None = None
    sessions_per_day: float = 1.0


@dataclass(frozen=True, slots=True)
class ServerSecurity:
    """Server certificate and key (PEM or DER); `trusted_client_certs` empty: any client cert.

    With security the server offers Basic256Sha256 SignAndEncrypt and nothing else.
    """

    cert_path: Path
    key_path: Path
    trusted_client_certs: tuple[Path, ...] = ()


@dataclass(slots=True)
class _Car:
    session_id: str
    need_kwh: float
    capacity_kwh: float
    soc0: float
    phases: int
    max_a: float
    departure_ts: float
    reports: bool
    delivered_kwh: float = 0.0

    @property
    def full(self) -> bool:
        return self.delivered_kwh >= self.need_kwh - 1e-9

    def taper_a(self) -> float:
        """The current the car's battery management accepts at its present state of charge."""
        soc = self.soc0 + self.delivered_kwh / self.capacity_kwh
        if soc <= TAPER_SOC:
            return self.max_a
        return self.max_a * max(0.1, (1.0 - soc) / (1.0 - TAPER_SOC))


@dataclass(frozen=True, slots=True)
class FeederEvent:
    """One overload episode start ("overload") or fuse trip ("trip") on a feeder, in clock time."""

    feeder: str
    kind: str
    ts: float
    load_a: float
    limit_a: float


@dataclass(slots=True)
class _Cp:
    spec: SimChargePoint
    limit_a: float
    last_feed: float
    next_arrival: float
    meter_kwh: float
    failsafe_a: float = 0.0  # what the watchdog falls back to (the node's value)
    failsafe: bool = False
    car: _Car | None = None
    preparing_until: float = 0.0
    finishing: bool = False
    session_kwh: float = 0.0
    amps: tuple[float, float, float] = (0.0, 0.0, 0.0)
    faults: set[str] = field(default_factory=set)
    served: dict[str, Value] = field(default_factory=dict)  # what the address space holds
    frozen_meter: tuple[float, float] | None = None
    sessions: int = 0


@dataclass(slots=True)
class _Feeder:
    spec: SimFeeder
    lighting_a: float = 0.0
    live_override: bool | None = None
    over_since: float | None = None
    tripped: bool = False
    load_a: tuple[float, float, float] = (0.0, 0.0, 0.0)
    peak_a: float = 0.0


class _State(Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


class _Link:
    """The edge-to-site TCP link in front of the OPC UA server; `cut()` silences it."""

    def __init__(self, host: str, port: int, target_port: int) -> None:
        self.host, self.port, self.target_port = host, port, target_port
        self.up = True
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for src, dst, name in ((reader, up_writer, "up"), (up_reader, writer, "down")):
            task = asyncio.create_task(self._pump(src, dst), name=f"charging_sim.link[{self.port}].{name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                if self.up:  # a cut link swallows bytes: no answer, no reset
                    dst.write(data)
                    await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(dst)
            dst.transport.abort()

    async def cut(self) -> None:
        """Go silent: open connections carry nothing, new ones are refused."""
        self.up = False
        if self._server is not None:
            self._server.close()
            self._server = None

    async def restore(self) -> None:
        """Come back: reset the connections that went silent, accept again."""
        self.up = True
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        if self._server is None:
            await self.listen()

    async def close(self) -> None:
        self.up = False
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        await cancel_and_wait(list(self._tasks))


class ChargingSimulator:
    """Serves charge points over OPC UA on opc.tcp://host:port until the context exits.

    Physics runs every `tick_s` clock seconds (at least MIN_REAL_TICK_S real seconds
    apart, so a 300x clock still works). `noise_a` adds measurement noise to the phase
    currents of charging cars (benchmarks use it so every charger changes every second).
    """

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
        self.profile = profile or default_profile()
        self.clock = clock
        self.endpoint_id = endpoint_id
        self.host = host
        self.port = port
        self.security = security
        self.tick_s = tick_s
        self.noise_a = noise_a
        self._use_link = link
        self._rng = random.Random(seed)
        self._sampler = SessionSampler(load_curves("public"), seed=seed)
        self._feeders = {f.feeder_id: _Feeder(f) for f in feeders}
        if len(self._feeders) != len(feeders):
            raise ValueError("feeder ids must be unique")
        now = clock.now()
        self._cps: dict[str, _Cp] = {}
        for spec in charge_points:
            self.profile.check_cp_id(spec.cp_id)
            if spec.cp_id in self._cps:
                raise ValueError(f"duplicate charge point {spec.cp_id!r}")
            if spec.phases not in (1, 3):
                raise ValueError(f"{spec.cp_id}: phases must be 1 or 3")
            if not MIN_CHARGE_CURRENT_A <= spec.max_current_a <= 80:
                raise ValueError(f"{spec.cp_id}: max_current_a outside 6..80 A")
            if not 0 <= spec.failsafe_current_a <= spec.max_current_a:
                raise ValueError(f"{spec.cp_id}: failsafe_current_a outside 0..max_current_a")
            if spec.feeder is not None and spec.feeder not in self._feeders:
                raise ValueError(f"{spec.cp_id}: unknown feeder {spec.feeder!r}")
            self._cps[spec.cp_id] = _Cp(
                spec,
                limit_a=spec.max_current_a,
                last_feed=now,
                next_arrival=self._sampler.next_arrival(now, spec.sessions_per_day),
                meter_kwh=round(self._rng.uniform(0.0, 20_000.0), 3),  # posts in the field have a past
                failsafe_a=spec.failsafe_current_a,
            )
        self._state = _State.UNOPENED
        self._server: Server | None = None
        self._link: _Link | None = None
        self._ns = 0
        self._nodes: dict[str, dict[str, ua.NodeId]] = {}
        self._routes: dict[str, tuple[str, str]] = {}  # node id string -> (cp_id, point)
        self._tasks: list[asyncio.Task[None]] = []
        self._session_seq = 0
        self._server_faults: set[str] = set()
        self.events: deque[FeederEvent] = deque(maxlen=10_000)
        self.overloads = 0
        self.trips = 0
        self.watchdog_trips = 0  # chargers that fell back to their fail-safe current

    # -- address space -------------------------------------------------------------

    async def _build(self) -> Server:
        quiet_asyncua()
        server = Server()
        server.disable_clock()  # its 1 s CurrentTime loop would hold every stop() for up to a second
        await server.init()
        server.set_server_name("DOS Edge charging simulator")
        await server.set_application_uri(APPLICATION_URI)
        server.set_identity_tokens([ua.AnonymousIdentityToken])  # the channel authenticates, not users
        if self.security is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            await server.load_certificate(str(self.security.cert_path))
            await server.load_private_key(str(self.security.key_path))
            if self.security.trusted_client_certs:
                server.set_certificate_validator(self._trusted_validator(self.security.trusted_client_certs))
        self._ns = await server.register_namespace(self.profile.namespace)
        ns = self._ns
        folder = await server.nodes.objects.add_folder(
            string_node_id(self.profile.folder, ns), ua.QualifiedName(self.profile.folder, ns)
        )
        for cp_id, cp in self._cps.items():
            obj = await folder.add_object(string_node_id(cp_id, ns), ua.QualifiedName(cp_id, ns))
            nodes: dict[str, ua.NodeId] = {}
            initial = self._values(cp)
            for pt in self.profile.points:
                sid = self.profile.node_id(cp_id, pt.name)
                value = initial.get(pt.name, pt.type.default)
                var = await obj.add_variable(
                    string_node_id(sid, ns),
                    ua.QualifiedName(pt.name, ns),
                    ua.Variant(value, getattr(ua.VariantType, pt.type.value)),
                )
                if pt.writable:
                    await var.set_writable()
                nodes[pt.name] = var.nodeid
                self._routes[sid] = (cp_id, pt.name)
                cp.served[pt.name] = value
            self._nodes[cp_id] = nodes
        server.subscribe_server_callback(CallbackType.PreWrite, self._pre_write)
        server.subscribe_server_callback(CallbackType.PostWrite, self._post_write)
        return server

    @staticmethod
    def _trusted_validator(paths: tuple[Path, ...]) -> Any:
        trusted: set[bytes] = set()
        for p in paths:
            raw = p.read_bytes()
            cert = (
                x509.load_pem_x509_certificate(raw)
                if raw.startswith(b"-----")
                else x509.load_der_x509_certificate(raw)
            )
            trusted.add(cert.public_bytes(serialization.Encoding.DER))

        async def validate(cert: x509.Certificate, _app: ua.ApplicationDescription) -> None:
            if cert.public_bytes(serialization.Encoding.DER) not in trusted:
                raise ServiceError(StatusCodes.BadCertificateUntrusted)

        return validate

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
            self._step(cp, now, 0.0, self._powered(cp, now))
            await self._publish(cp)

    # -- physics -------------------------------------------------------------------

    def _feeder_live(self, f: _Feeder, now: float) -> bool:
        if f.tripped:
            return False
        if f.live_override is not None:
            return f.live_override
        if not f.spec.night_only:
            return True
        hour = (now % 86_400) / 3600.0
        on, off = f.spec.on_hour_utc, f.spec.off_hour_utc
        return (hour >= on or hour < off) if on > off else on <= hour < off

    def _powered(self, cp: _Cp, now: float) -> bool:
        if cp.spec.feeder is None:
            return True
        return self._feeder_live(self._feeders[cp.spec.feeder], now)

    def _new_car(self, cp: _Cp, now: float, need_kwh: float, departure_ts: float, phases: int) -> _Car:
        self._session_seq += 1
        cp.sessions += 1
        capacity = max(self._rng.choice(_BATTERIES_KWH), need_kwh / 0.95)
        car_max = 16.0 if phases == 3 else self._rng.choice((16.0, 32.0))
        return _Car(
            session_id=f"{cp.spec.cp_id}-{int(now)}-{self._session_seq}",
            need_kwh=need_kwh,
            capacity_kwh=capacity,
            soc0=1.0 - need_kwh / capacity,
            phases=phases,
            max_a=car_max,
            departure_ts=departure_ts,
            reports=self._rng.random() < _REPORTS_SHARE,
        )

    def _plug_in(self, cp: _Cp, car: _Car, now: float) -> None:
        cp.car = car
        cp.session_kwh = 0.0
        cp.preparing_until = now + PREPARING_S
        cp.finishing = False
        log.info(
            "sim_car_arrived", cp_id=cp.spec.cp_id, session_id=car.session_id, need_kwh=round(car.need_kwh, 2)
        )

    def _step(self, cp: _Cp, now: float, dt_s: float, powered: bool) -> None:
        """Advance one charge point by `dt_s` clock seconds (0: re-evaluate after a write)."""
        spec = cp.spec
        if spec.watchdog_s > 0 and not cp.failsafe and now - cp.last_feed >= spec.watchdog_s:
            cp.failsafe = True
            cp.limit_a = cp.failsafe_a
            self.watchdog_trips += 1
            log.info("sim_watchdog_tripped", cp_id=spec.cp_id, watchdog_s=spec.watchdog_s, limit_a=cp.limit_a)
        cp.finishing = False
        car = cp.car
        if car is not None and now >= car.departure_ts:
            log.info(
                "sim_car_left", cp_id=spec.cp_id, session_id=car.session_id, kwh=round(cp.session_kwh, 2)
            )
            cp.car = car = None
            cp.finishing = True
            cp.next_arrival = self._sampler.next_arrival(now, spec.sessions_per_day)
        if car is None and not cp.finishing and now >= cp.next_arrival:
            session = self._sampler.session_at(now)
            phases = 1 if spec.phases == 1 or self._rng.random() < _SINGLE_PHASE_SHARE else 3
            self._plug_in(cp, self._new_car(cp, now, session.energy_kwh, session.departure_ts, phases), now)
            car = cp.car
        amps = 0.0
        if (
            car is not None
            and powered
            and "faulted" not in cp.faults
            and now >= cp.preparing_until
            and not car.full
            and cp.limit_a >= MIN_CHARGE_CURRENT_A
        ):
            amps = min(cp.limit_a, spec.max_current_a, car.max_a, car.taper_a())
        n = min(car.phases, spec.phases) if car is not None else 0
        if amps > 0 and dt_s > 0:
            kwh = n * amps * VOLTAGE_V * dt_s / 3.6e6
            if car is not None:
                kwh = min(kwh, car.need_kwh - car.delivered_kwh)
                car.delivered_kwh += kwh
            cp.session_kwh += kwh
            cp.meter_kwh += kwh
            if car is not None and car.full:
                amps = 0.0  # the battery management stops drawing when it is full
        noisy = amps
        if amps > 0 and self.noise_a > 0:
            noisy = max(0.0, amps + self._rng.gauss(0.0, self.noise_a))
        cp.amps = (noisy, noisy if n == 3 else 0.0, noisy if n == 3 else 0.0)

    def _status(self, cp: _Cp, now: float, powered: bool) -> str:
        car = cp.car
        if not powered or "comm_loss" in cp.faults:
            return "Unavailable"
        if "faulted" in cp.faults:
            return "Faulted"
        if car is None:
            return "Finishing" if cp.finishing else "Available"
        if now < cp.preparing_until:
            return "Preparing"
        if car.full:
            return "SuspendedEV"
        if cp.limit_a < MIN_CHARGE_CURRENT_A:
            return "SuspendedEVSE"
        return "Charging"

    def _values(self, cp: _Cp) -> dict[str, Value]:
        now = self.clock.now()
        powered = self._powered(cp, now)
        car = cp.car
        l1, l2, l3 = cp.amps
        session, meter = cp.frozen_meter if cp.frozen_meter is not None else (cp.session_kwh, cp.meter_kwh)
        power = round(VOLTAGE_V * (l1 + l2 + l3) / 1000.0, 3)
        return {
            "status": self._status(cp, now, powered),
            "current_limit_a": round(cp.limit_a, 3),
            "current_l1_a": round(l1, 2),
            "current_l2_a": round(l2, 2),
            "current_l3_a": round(l3, 2),
            "power_kw": power,
            "session_energy_kwh": round(session, 3),
            "meter_energy_kwh": round(meter, 3),
            "phases_in_use": (1 if l2 == 0 else 3) if l1 > 0 else 0,
            "car_connected": car is not None,
            "session_id": car.session_id if car is not None else "",
            "energy_needed_kwh": (
                round(max(0.0, car.need_kwh - car.delivered_kwh), 3)
                if car is not None and car.reports
                else -1.0
            ),
            "departure_ts": float(round(car.departure_ts)) if car is not None and car.reports else 0.0,
            "failsafe_active": cp.failsafe,
            "max_current_a": float(cp.spec.max_current_a),
            "failsafe_current_a": float(cp.failsafe_a),
            "watchdog_s": float(cp.spec.watchdog_s),
        }

    async def _publish(self, cp: _Cp) -> None:
        """Write the values that changed into the address space (what subscriptions see)."""
        if "comm_loss" in cp.faults or self._server is None:
            return  # the gateway lost the charger: it serves the last values it had
        values = self._values(cp)
        nodes = self._nodes[cp.spec.cp_id]
        served = cp.served
        for name, value in values.items():
            if served.get(name) != value:
                served[name] = value
                pt = self.profile.by_name[name]
                variant = ua.Variant(value, getattr(ua.VariantType, pt.type.value))
                await self._server.write_attribute_value(nodes[name], ua.DataValue(variant))

    def _feeders_step(self, now: float) -> None:
        for f in self._feeders.values():
            # lamps hang on L1 of a single-phase circuit, spread over the phases of a three-phase one
            load = [f.lighting_a, 0.0, 0.0] if f.spec.phases == 1 else [f.lighting_a / 3.0] * 3
            for cp in self._cps.values():
                if cp.spec.feeder == f.spec.feeder_id:
                    for i in range(3):
                        load[i] += cp.amps[i]
            if f.spec.phases == 1:  # a single-phase circuit carries every phase's current on one wire
                load = [sum(load), 0.0, 0.0]
            f.load_a = (load[0], load[1], load[2])
            peak = max(load)
            if self._feeder_live(f, now):
                f.peak_a = max(f.peak_a, peak)
            if peak > f.spec.limit_a and not f.tripped:
                if f.over_since is None:
                    f.over_since = now
                    self.overloads += 1
                    self._record(f, "overload", now, peak)
                elif now - f.over_since >= f.spec.trip_after_s:
                    f.tripped = True
                    self.trips += 1
                    self._record(f, "trip", now, peak)
                    log.warning("sim_feeder_tripped", feeder=f.spec.feeder_id, load_a=round(peak, 1))
            else:
                f.over_since = None

    def _record(self, f: _Feeder, kind: str, now: float, load: float) -> None:
        self.events.append(FeederEvent(f.spec.feeder_id, kind, now, round(load, 2), f.spec.limit_a))
        log.warning("sim_feeder_event", feeder=f.spec.feeder_id, kind=kind, load_a=round(load, 1))

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
            self._step(cp, now, dt_s, self._powered(cp, now))
        self._feeders_step(now)
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

    async def __aenter__(self) -> Self:
        if self._state is not _State.UNOPENED:
            raise RuntimeError(f"simulator is {self._state.value}; it cannot be opened again")
        self._state = _State.OPENED
        server = await self._build()
        if self._use_link:
            server.socket_address = (self.host, 0)
            self._link = _Link(self.host, self.port, 0)
            await self._link.listen()  # bind the public port first so port 0 can be reported
            self.port = self._link.port
        elif self.port == 0:
            self.port = free_port(self.host)
        server.set_endpoint(f"opc.tcp://{self.host}:{self.port}/dos-edge/chargers")
        try:
            await server.start()
        except BaseException:
            if self._link is not None:
                await self._link.close()
            raise
        self._server = server
        if self._link is not None and server.bserver is not None:
            self._link.target_port = server.bserver.port
        now = self.clock.now()
        for cp in self._cps.values():
            self._step(cp, now, 0.0, self._powered(cp, now))
            await self._publish(cp)
        self._tasks.append(asyncio.create_task(self._physics(), name="charging_sim.physics"))
        log.info(
            "sim_charging_started",
            charge_points=len(self._cps),
            url=self.url,
            secure=self.security is not None,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = _State.CLOSED
        await cancel_and_wait(self._tasks)
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
                "live": self._feeder_live(f, self.clock.now()),
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
        if phases not in (1, 3):
            raise ValueError("phases must be 1 or 3")
        if energy_kwh <= 0:
            raise ValueError("energy_kwh must be positive")
        cp = self._cps[cp_id]
        now = self.clock.now()
        car = self._new_car(cp, now, energy_kwh, departure_ts, phases)
        car.reports = reports
        if capacity_kwh is not None:
            if capacity_kwh < energy_kwh:
                raise ValueError("capacity_kwh must hold energy_kwh")
            car.capacity_kwh = capacity_kwh
            car.soc0 = 1.0 - energy_kwh / capacity_kwh
        car.max_a = max(car.max_a, cp.spec.max_current_a) if phases == 3 else car.max_a
        self._plug_in(cp, car, now)
        cp.preparing_until = now + preparing_s
        self._step(cp, now, 0.0, self._powered(cp, now))
        await self._publish(cp)
        return car.session_id

    async def leave(self, cp_id: str) -> None:
        """Unplug the car now."""
        cp = self._cps[cp_id]
        if cp.car is not None:
            cp.car.departure_ts = self.clock.now()
            now = self.clock.now()
            self._step(cp, now, 0.0, self._powered(cp, now))
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
        self._step(cp, now, 0.0, self._powered(cp, now))
        await self._publish(cp)
        log.info("sim_fault", target=target, fault=fault, active=active)

    async def _write_status(self, cp: _Cp, status: str) -> None:
        if self._server is None:
            return
        cp.served["status"] = status
        await self._server.write_attribute_value(
            self._nodes[cp.spec.cp_id]["status"], ua.DataValue(ua.Variant(status, ua.VariantType.String))
        )


# -- certificates for tests and demos ---------------------------------------------------


def _self_signed(common_name: str, uri: str, key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(uri),
                    x509.DNSName("localhost"),
                    x509.DNSName(socket.gethostname()),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


def make_test_certificates(directory: Path) -> tuple[Path, Path, Path, Path]:
    """Self-signed server and client certificates (DER) and keys (PEM) in `directory`.

    Returns (server_cert, server_key, client_cert, client_key). The client certificate
    carries the driver's application URI (devices.charging.CLIENT_APPLICATION_URI).
    """
    from devices.charging import CLIENT_APPLICATION_URI

    directory.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    for stem, uri in (("server", APPLICATION_URI), ("client", CLIENT_APPLICATION_URI)):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = _self_signed(f"dos-edge {stem}", uri, key)
        cert_path, key_path = directory / f"{stem}_cert.der", directory / f"{stem}_key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        out += [cert_path, key_path]
    return out[0], out[1], out[2], out[3]


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
    parsed: list[tuple[str, str]] = []
    for item in faults:
        target, sep, fault = item.rpartition(":")
        if not sep or not target or fault not in FAULTS:
            raise ValueError(f"fault {item!r}: expected target:fault, fault one of {sorted(FAULTS)}")
        parsed.append((target, fault))
    clock: Clock = (
        SystemClock()
        if clock_speed == 1.0 and start is None
        else SimClock(start=start if start is not None else SystemClock().now(), speed=clock_speed)
    )
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
