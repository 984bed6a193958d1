"""The charge points' physics: cars, sessions, watchdogs and feeders, with no protocol.

Cars arrive, stay and ask for energy per the ElaadNL curves (seeded); single- and
three-phase cars; no charging under 6 A; charging tapers above 80 % state of charge; a
full car goes SuspendedEV; a watchdog falls back to the fail-safe current when neither a
setpoint nor a heartbeat arrives for `watchdog_s` (an OCPP charger's is configured, caps its
limit rather than setting it, and its car draws only once authorised). A feeder's lamps take
their share first; a feeder over its limit for `trip_after_s` trips its fuse.
`ChargingSimulator` serves what this computes, over OPC UA or OCPP; `GroundTruth` is what it
shows of it whatever the protocol.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import structlog

from devices.profiles.charging import MIN_CHARGE_CURRENT_A, ChargePointProfile
from edge.clock import Clock
from edge.events import Value
from simulators.elaad import SessionSampler

log = structlog.get_logger("simulators.charging")

METER_RESOLUTION_A = 0.1
"""A feeder counts as over its limit only beyond this (a meter's resolution). The interlock fills a
feeder to its limit exactly; two setpoints and the lamps' load summed as floats, or a lamp reading a
few milliamps above its rating, came to 25.0000x A on a 25 A feeder, and the fuse tripped on that
(a real gG fuse carries 1.25 times its rating for an hour)."""

VOLTAGE_V = 230.0
TAPER_SOC = 0.8  # charging current falls linearly from here to full
PREPARING_S = 30.0  # clock seconds from plug-in to the car drawing current
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
    protocol: str = "opcua"  # "opcua" (the site's OPC UA server) or "ocpp" (its own OCPP 1.6J link)


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
    powered: bool | None = None  # at the last step (None: not stepped yet)
    car: _Car | None = None
    preparing_until: float = 0.0
    finishing: bool = False
    session_kwh: float = 0.0
    amps: tuple[float, float, float] = (0.0, 0.0, 0.0)
    faults: set[str] = field(default_factory=set)
    served: dict[str, Value] = field(default_factory=dict)  # what the address space holds
    frozen_meter: tuple[float, float] | None = None
    sessions: int = 0
    # An OCPP charger configures its watchdog (None: the spec's), caps its limit at the fail-safe
    # when it fires instead of setting it there, and lets a car draw only once authorised.
    watchdog_s: float | None = None
    failsafe_caps: bool = False
    auth_required: bool = False
    authorized: bool = True

    @property
    def watchdog(self) -> float:
        """The watchdog in force, clock seconds (0: off)."""
        return self.spec.watchdog_s if self.watchdog_s is None else self.watchdog_s


@dataclass(slots=True)
class _Feeder:
    spec: SimFeeder
    lighting_a: float = 0.0
    live_override: bool | None = None
    over_since: float | None = None
    tripped: bool = False
    load_a: tuple[float, float, float] = (0.0, 0.0, 0.0)
    peak_a: float = 0.0


class ChargingPhysics:
    """Every charge point and feeder of one simulator, stepped on clock time.

    `noise_a` adds measurement noise to the phase currents of charging cars. The counters
    (`events`, `overloads`, `trips`, `watchdog_trips`) are ground truth for tests and demos.
    """

    def __init__(self, rng: random.Random, sampler: SessionSampler, noise_a: float) -> None:
        self._rng = rng
        self._sampler = sampler
        self.noise_a = noise_a
        self.cps: dict[str, _Cp] = {}
        self.feeders: dict[str, _Feeder] = {}
        self._session_seq = 0
        self.events: deque[FeederEvent] = deque(maxlen=10_000)
        self.overloads = 0
        self.trips = 0
        self.watchdog_trips = 0  # chargers that fell back to their fail-safe current

    def feeder_live(self, f: _Feeder, now: float) -> bool:
        if f.tripped:
            return False
        if f.live_override is not None:
            return f.live_override
        if not f.spec.night_only:
            return True
        hour = (now % 86_400) / 3600.0
        on, off = f.spec.on_hour_utc, f.spec.off_hour_utc
        return (hour >= on or hour < off) if on > off else on <= hour < off

    def feeder_view(self, f: _Feeder, now: float) -> dict[str, object]:
        """Load per phase (A), limit, lighting share, live and tripped state of a feeder."""
        return {
            "load_a": f.load_a,
            "limit_a": f.spec.limit_a,
            "lighting_a": f.lighting_a,
            "live": self.feeder_live(f, now),
            "tripped": f.tripped,
            "peak_a": f.peak_a,
        }

    def powered(self, cp: _Cp, now: float) -> bool:
        if cp.spec.feeder is None:
            return True
        return self.feeder_live(self.feeders[cp.spec.feeder], now)

    def new_car(self, cp: _Cp, now: float, need_kwh: float, departure_ts: float, phases: int) -> _Car:
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

    def force_car(
        self,
        cp: _Cp,
        now: float,
        energy_kwh: float,
        departure_ts: float,
        phases: int,
        reports: bool,
        capacity_kwh: float | None,
    ) -> _Car:
        """Plug a given car in now (a test's or demo's `arrive`), replacing any car there."""
        if phases not in (1, 3):
            raise ValueError("phases must be 1 or 3")
        if energy_kwh <= 0:
            raise ValueError("energy_kwh must be positive")
        car = self.new_car(cp, now, energy_kwh, departure_ts, phases)
        car.reports = reports
        if capacity_kwh is not None:
            if capacity_kwh < energy_kwh:
                raise ValueError("capacity_kwh must hold energy_kwh")
            car.capacity_kwh = capacity_kwh
            car.soc0 = 1.0 - energy_kwh / capacity_kwh
        car.max_a = max(car.max_a, cp.spec.max_current_a) if phases == 3 else car.max_a
        self.plug_in(cp, car, now)
        return car

    def plug_in(self, cp: _Cp, car: _Car, now: float) -> None:
        cp.car = car
        cp.authorized = not cp.auth_required
        cp.session_kwh = 0.0
        cp.preparing_until = now + PREPARING_S
        cp.finishing = False
        log.info(
            "sim_car_arrived", cp_id=cp.spec.cp_id, session_id=car.session_id, need_kwh=round(car.need_kwh, 2)
        )

    def step(self, cp: _Cp, now: float, dt_s: float, powered: bool) -> None:
        """Advance one charge point by `dt_s` clock seconds (0: re-evaluate after a write)."""
        spec = cp.spec
        if powered and cp.powered is False:
            # Power back (dusk on a night-only circuit, a fuse replaced): the charger boots with
            # its fail-safe current until its controller writes a setpoint, as the fail-safe is
            # what it keeps in non-volatile memory; the setpoint of last night is gone.
            cp.failsafe = True
            cp.limit_a = cp.failsafe_a
            log.info("sim_charger_booted", cp_id=spec.cp_id, limit_a=cp.limit_a)
        cp.powered = powered
        watchdog = cp.watchdog
        if watchdog > 0 and not cp.failsafe and now - cp.last_feed >= watchdog:
            cp.failsafe = True
            cp.limit_a = min(cp.limit_a, cp.failsafe_a) if cp.failsafe_caps else cp.failsafe_a
            self.watchdog_trips += 1
            log.info("sim_watchdog_tripped", cp_id=spec.cp_id, watchdog_s=watchdog, limit_a=cp.limit_a)
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
            self.plug_in(cp, self.new_car(cp, now, session.energy_kwh, session.departure_ts, phases), now)
            car = cp.car
        amps = 0.0
        if (
            car is not None
            and powered
            and "faulted" not in cp.faults
            and cp.authorized
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

    def status(self, cp: _Cp, now: float, powered: bool) -> str:
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

    def values(self, cp: _Cp, now: float) -> dict[str, Value]:
        """What the charge point's nodes hold at `now` (the frozen meter under meter_frozen)."""
        powered = self.powered(cp, now)
        car = cp.car
        l1, l2, l3 = cp.amps
        session, meter = cp.frozen_meter if cp.frozen_meter is not None else (cp.session_kwh, cp.meter_kwh)
        power = round(VOLTAGE_V * (l1 + l2 + l3) / 1000.0, 3)
        return {
            "status": self.status(cp, now, powered),
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
            "watchdog_s": float(cp.watchdog),
        }

    def feeders_step(self, now: float) -> None:
        """Sum each feeder's load, count overloads and trip a fuse over its limit too long."""
        for f in self.feeders.values():
            # lamps hang on L1 of a single-phase circuit, spread over the phases of a three-phase one
            load = [f.lighting_a, 0.0, 0.0] if f.spec.phases == 1 else [f.lighting_a / 3.0] * 3
            for cp in self.cps.values():
                if cp.spec.feeder == f.spec.feeder_id:
                    for i in range(3):
                        load[i] += cp.amps[i]
            if f.spec.phases == 1:  # a single-phase circuit carries every phase's current on one wire
                load = [sum(load), 0.0, 0.0]
            f.load_a = (load[0], load[1], load[2])
            peak = max(load)
            if self.feeder_live(f, now):
                f.peak_a = max(f.peak_a, peak)
            if peak > f.spec.limit_a + METER_RESOLUTION_A and not f.tripped:
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


class GroundTruth:
    """What a charging simulator shows of its physics and lets a test or demo set, whatever the
    protocol its charge points speak: the feeders' ground truth, the chargers' values, the grid."""

    _world: ChargingPhysics
    _cps: dict[str, _Cp]
    _feeders: dict[str, _Feeder]
    clock: Clock

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
        return MappingProxyType(self._world.feeder_view(self._feeders[feeder_id], self.clock.now()))

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


def check_spec(
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
    if spec.protocol not in ("opcua", "ocpp"):
        raise ValueError(f"{spec.cp_id}: protocol must be opcua or ocpp, got {spec.protocol!r}")


def demo_charge_points(
    count: int,
    *,
    feeders: int = 0,
    feeder_limit_a: float = 32.0,
    watchdog_s: float = 120.0,
    sessions_per_day: float = 1.0,
    protocol: str = "opcua",
) -> tuple[list[SimChargePoint], list[SimFeeder]]:
    """Charge points `cp-001`.. and, if `feeders`, that many feeders they share in turn.

    Every third feeder is a night-only single-phase lighting circuit; the others are
    24/7 three-phase low-voltage connections. Every fourth post is single-phase.
    `protocol`: "opcua", "ocpp", or "mixed" (every other post over OCPP).
    """
    if protocol not in ("opcua", "ocpp", "mixed"):
        raise ValueError(f"protocol must be opcua, ocpp or mixed, got {protocol!r}")
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
            protocol=("ocpp" if i % 2 else "opcua") if protocol == "mixed" else protocol,
        )
        for i in range(count)
    ]
    return cps, fs
