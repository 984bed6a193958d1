"""Charging controller: feeder-safe charge load for charge points in lamp posts.

`ChargingSafety` is the interlock the dispatcher runs on every setpoint, whoever asks:
the sum of setpoints on a feeder (and a cabinet) never exceeds its limit minus the
lighting load on it. A request that would break it is clamped (or refused) with the
reason. With stale measurements, or while the daemon lags (event-loop delay: it may not
feed the chargers' watchdogs in time), only moves towards less load pass. Lighting counts
at full power (DALI fail-safe, overrides, motion) while the lamps are on or come on within
a slot, so the lamps switching on cannot push a feeder over while setpoints are old. A
charger whose fail-safe current did not read back as configured gets no more than that.

`failsafe_problems` is the config rule behind all this: on every feeder and cabinet, the
chargers' fail-safe currents plus the lamps at full power fit the limit, so a daemon that
is gone (watchdogs fired everywhere) cannot overload anything.

`ChargingController` plans (optimizer/charging.py) when a car arrives or leaves, a limit
changes or a signal arrives, applies the plan as setpoints refreshed before the
chargers' watchdog runs out (a lease), enforces limits that drop under running
setpoints, and raises alarms.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from controllers.lighting import LightingController, NightPlan, expected_power
from devices.inventory import Charger, Inventory, Lamp
from edge.alarms import Alarms
from edge.bus import EventBus
from edge.clock import Clock
from edge.dispatcher import Dispatcher, Verdict, make_command
from edge.events import Command, Outcome, PlanEvent, Priority, Severity, StateChanged
from edge.settings import ChargingSettings
from edge.state import StateStore
from optimizer.charging import (
    ChargingInstance,
    ChargingPlan,
    Session,
    SupplyNode,
    check_plan,
    fallback_plan,
    solve,
)

log = structlog.get_logger(__name__)

POINT = "current_limit_a"
MIN_A = 6.0
VOLTS = 230.0
SLOT_S = 900


@dataclass(frozen=True, slots=True)
class LimitWindow:
    """A feeder or cabinet limit for a time window (utility curtailment or operator)."""

    target: str
    limit_a: float
    start: float
    end: float
    source: str


@dataclass(slots=True)
class ChargingStats:
    plans: int = 0
    fallbacks: int = 0
    clamped: int = 0
    delivered_kwh: float = 0.0
    requested_kwh: float = 0.0
    peak_ratio: float = 0.0
    peak_feeder: str = ""
    violations: int = 0
    signals: int = 0
    lease_refreshes: int = 0
    trips: int = 0  # feeders seen losing supply (every charge point on it Unavailable)


def failsafe_a(c: Charger, cfg: ChargingSettings) -> float:
    """The current a charger falls back to when its watchdog fires (inventory, else the site's)."""
    return cfg.failsafe_current_a if c.failsafe_current_a is None else c.failsafe_current_a


def worst_lighting_a(inv: Inventory, feeder: str) -> float:
    """Every lamp of a feeder at full power (DALI fail-safe), in A on one phase."""
    return sum(lamp.p_max_w for lamp in inv.lamps.values() if lamp.feeder == feeder) / VOLTS


def failsafe_problems(cfg: ChargingSettings, inv: Inventory) -> list[str]:
    """Feeders and cabinets where the chargers' fail-safe currents plus the lamps at full power
    exceed the limit (what they would carry with the daemon gone), and bad fail-safe values.

    Counted as the interlock counts: every current on the worst phase.
    """
    problems: list[str] = []
    feeders = {f.id: f for f in cfg.feeders}
    per_feeder: dict[str, float] = {}
    count: dict[str, int] = {}
    for c in inv.chargers.values():
        fs = failsafe_a(c, cfg)
        if 0 < fs < MIN_A:
            problems.append(
                f"charger {c.id}: fail-safe {fs:g} A is not 0 or at least {MIN_A:g} A (IEC 61851)"
            )
        if fs > c.max_current_a:
            problems.append(f"charger {c.id}: fail-safe {fs:g} A is above its maximum {c.max_current_a:g} A")
        if c.feeder not in feeders and fs > 0:
            problems.append(
                f"charger {c.id}: feeder {c.feeder!r} is not in [charging] feeders, "
                f"so its fail-safe must be 0 A, not {fs:g} A"
            )
        per_feeder[c.feeder] = per_feeder.get(c.feeder, 0.0) + fs
        count[c.feeder] = count.get(c.feeder, 0) + 1
    by_cabinet: dict[str, tuple[float, float, int]] = {}
    for f in cfg.feeders:
        fs, lights, n = per_feeder.get(f.id, 0.0), worst_lighting_a(inv, f.id), count.get(f.id, 0)
        if fs + lights > f.limit_a + 1e-9:
            problems.append(
                f"feeder {f.id}: fail-safe {fs:g} A ({n} charge points) + lamps at full power "
                f"{lights:.1f} A = {fs + lights:.1f} A exceeds its limit of {f.limit_a:g} A"
            )
        a, b, k = by_cabinet.get(f.cabinet, (0.0, 0.0, 0))
        by_cabinet[f.cabinet] = (a + fs, b + lights, k + n)
    for cab in cfg.cabinets:
        fs, lights, n = by_cabinet.get(cab.id, (0.0, 0.0, 0))
        if fs + lights > cab.limit_a + 1e-9:
            problems.append(
                f"cabinet {cab.id}: fail-safe {fs:g} A ({n} charge points) + lamps at full power "
                f"{lights:.1f} A = {fs + lights:.1f} A exceeds its limit of {cab.limit_a:g} A"
            )
    return problems


class ChargingSafety:
    """The feeder interlock; independent of the optimizer and of who asks.

    `lagging`: whether the daemon runs late (edge/lag.py); then only decreases pass.
    """

    def __init__(
        self,
        inv: Inventory,
        cfg: ChargingSettings,
        clock: Clock,
        lighting_a: Callable[[str, float], float],
        feeder_live: Callable[[str, float], bool],
        *,
        lagging: Callable[[], bool] = lambda: False,
    ) -> None:
        self._inv = inv
        self._cfg = cfg
        self._clock = clock
        self._lighting_a = lighting_a
        self._live = feeder_live
        self._lagging = lagging
        self._feeders = {f.id: f for f in cfg.feeders}
        self._cabinets = {c.id: c for c in cfg.cabinets}
        self._on_feeder: dict[str, list[Charger]] = {}
        for c in inv.chargers.values():
            self._on_feeder.setdefault(c.feeder, []).append(c)
        self._worst = {f: worst_lighting_a(inv, f) for f in {lamp.feeder for lamp in inv.lamps.values()}}
        self.windows: list[LimitWindow] = []
        self._setpoint_of: Callable[[str], float] = lambda _c: 0.0
        self._fresh: Callable[[str, float], bool] = lambda _c, _now: True
        self._reported_failsafe: Callable[[str], float | None] | None = None

    def bind(
        self,
        setpoint_of: Callable[[str], float],
        fresh: Callable[[str, float], bool],
        reported_failsafe: Callable[[str], float | None] | None = None,
    ) -> None:
        """Wire the views of current setpoints, measurement freshness and the fail-safe current
        each charger reports (after the dispatcher exists)."""
        self._setpoint_of = setpoint_of
        self._fresh = fresh
        self._reported_failsafe = reported_failsafe

    def failsafe_a(self, c: Charger) -> float:
        """The configured fail-safe current of a charger."""
        return failsafe_a(c, self._cfg)

    def fallback_a(self, c: Charger) -> float:
        """What the charger falls back to when its watchdog fires: its read-back fail-safe (the
        driver writes the configured one, never above the setpoint), else the configured one."""
        if self._reported_failsafe is not None:
            got = self._reported_failsafe(c.id)
            if got is not None:
                return got
        return self.failsafe_a(c)

    def failsafe_verified(self, c: Charger) -> bool:
        """Whether the charger's fail-safe reads back within the configured one."""
        if self._reported_failsafe is None:
            return True
        got = self._reported_failsafe(c.id)
        return got is not None and got <= self.failsafe_a(c) + 0.05

    def lagging(self) -> bool:
        return self._lagging()

    # ----- limits -------------------------------------------------------------------------

    def min_device_a(self, c: Charger) -> float:
        """The per-device floor under curtailment (§14a EnWG: 4.2 kW), in amps on its phases."""
        return max(MIN_A, self._cfg.min_device_kw * 1000 / (VOLTS * c.phases))

    def feeder_limit(self, feeder: str, now: float) -> float:
        """Per-phase amps the feeder may carry now, before the lighting load."""
        f = self._feeders.get(feeder)
        if f is None:
            return 0.0  # an unknown feeder carries nothing: fail safe
        if f.live == "night" and not self._live(feeder, now):
            return 0.0
        limit = f.limit_a
        for w in self.windows:
            if w.target == feeder and w.start <= now < w.end:
                limit = min(limit, w.limit_a)
        return limit

    def rating_a(self, target: str) -> float:
        """The configured limit (A per phase) of a feeder or cabinet, whatever windows apply (inf if unknown)."""
        f = self._feeders.get(target)
        if f is not None:
            return f.limit_a
        c = self._cabinets.get(target)
        return c.limit_a if c is not None else math.inf

    def cabinet_limit(self, cabinet: str, now: float) -> float:
        c = self._cabinets.get(cabinet)
        limit = c.limit_a if c is not None else math.inf
        for w in self.windows:
            if w.target == cabinet and w.start <= now < w.end:
                limit = min(limit, w.limit_a)
        return limit

    def lighting_a(self, feeder: str, now: float) -> float:
        """The lighting load the chargers must leave room for (A on L1) at `now`.

        While the lamps are on, or come on within a slot, every lamp counts at full power: an
        override, motion or the lamps' own fail-safe (DALI: 100 %) may raise them faster than
        setpoints can follow. By day the plan's (and the measured) load counts.
        """
        est = max(self._lighting_a(feeder, now), self._lighting_a(feeder, now + SLOT_S))
        if self._live(feeder, now) or self._live(feeder, now + SLOT_S):
            return max(est, self._worst.get(feeder, 0.0))
        return est

    def lighting_now_a(self, feeder: str, now: float) -> float:
        """The lamps' load as best known now (plan, commands, measurements), without reserve."""
        return self._lighting_a(feeder, now)

    def setpoints_a(self, feeder: str, exclude: str = "") -> float:
        """The sum of charger setpoints on a feeder (what the interlock counts)."""
        return sum(self._setpoint_of(c.id) for c in self._on_feeder.get(feeder, ()) if c.id != exclude)

    def committed_a(self, c: Charger) -> float:
        """What a charger may draw at any moment: its setpoint, or its fail-safe if its watchdog
        fires first (watchdogs do not fire together: a charger at 0 A that falls back to 6 A
        while the others hold their setpoints adds 6 A). The driver keeps the fail-safe at or
        below the setpoint, so this is the setpoint unless a charger did not take it."""
        return max(self._setpoint_of(c.id), self.fallback_a(c))

    def feeder_load(self, feeder: str, now: float, exclude: str = "") -> float:
        """Lighting load (with its reserve) plus what every other charger may draw (its setpoint or
        its fail-safe), all on the worst phase (L1)."""
        load = self.lighting_a(feeder, now)
        for c in self._on_feeder.get(feeder, ()):
            if c.id != exclude:
                load += self.committed_a(c)
        return load

    def headroom(self, c: Charger, now: float) -> tuple[float, str]:
        """Amps this charger may use now, and which limit binds."""
        room = self.feeder_limit(c.feeder, now) - self.feeder_load(c.feeder, now, exclude=c.id)
        why = f"feeder {c.feeder}"
        feeder = self._feeders.get(c.feeder)
        cabinet = feeder.cabinet if feeder is not None else c.cabinet  # the supply tree decides, not the row
        cab_limit = self.cabinet_limit(cabinet, now)
        if math.isfinite(cab_limit):
            cab_load = sum(self.feeder_load(f, now, exclude=c.id) for f in self.feeders_in(cabinet))
            if cab_limit - cab_load < room:
                room, why = cab_limit - cab_load, f"cabinet {cabinet}"
        return max(0.0, room), why

    def curtail_floor_a(self, target: str) -> float:
        """The lowest limit a utility may set on a feeder or cabinet: every charging car keeps its §14a minimum."""
        feeders = [target] if target in self._feeders else self.feeders_in(target)
        return sum(
            self.min_device_a(c)
            for f in feeders
            for c in self._on_feeder.get(f, ())
            if self._setpoint_of(c.id) > 0
        )

    def cabinet_ids(self) -> list[str]:
        return sorted({f.cabinet for f in self._feeders.values()})

    def feeders_in(self, cabinet: str) -> list[str]:
        return [f.id for f in self._feeders.values() if f.cabinet == cabinet]

    # ----- the check ----------------------------------------------------------------------

    def check(self, cmd: Command, now: float) -> Verdict:
        c = self._inv.chargers.get(cmd.device_id)
        if c is None:
            return Verdict(Outcome.REFUSED, cmd.value, "unknown_device")
        if cmd.point != POINT:
            return Verdict(Outcome.REFUSED, cmd.value, f"point_not_writable: {cmd.point}")
        if not 0 <= cmd.value <= c.max_current_a:
            return Verdict(
                Outcome.REFUSED, cmd.value, f"out_of_range: {cmd.value:g} A not in 0..{c.max_current_a:g}"
            )
        value, reasons = float(cmd.value), []
        if 0 < value < MIN_A:
            value, reasons = 0.0, ["below_6a_minimum: IEC 61851 allows 0 or at least 6 A"]
        current = self._setpoint_of(c.id)
        if value > current and not self._feeder_fresh(c.feeder, now):
            return Verdict(Outcome.REFUSED, cmd.value, "stale_measurements: only a lower setpoint is allowed")
        if value > current and self._lagging():
            return Verdict(
                Outcome.REFUSED,
                cmd.value,
                "daemon_lagging: only a lower setpoint is allowed until it keeps up",
            )
        if not self.failsafe_verified(c) and value > self.failsafe_a(c):
            cap = self.failsafe_a(c)
            reasons.append(f"failsafe_unverified: {c.id} did not confirm its fail-safe, at most {cap:g} A")
            value = cap
        room, binding = self.headroom(c, now)
        if value > room + 1e-9:
            allowed = math.floor(room * 10) / 10 if room >= MIN_A else 0.0
            reasons.append(f"feeder_limit: {binding} leaves {room:.1f} A, set {allowed:g} A")
            value = allowed
        if reasons:
            return Verdict(Outcome.CLAMPED, value, "; ".join(reasons))
        return Verdict(Outcome.ACCEPTED, value)

    def _feeder_fresh(self, feeder: str, now: float) -> bool:
        return all(self._fresh(c.id, now) for c in self._on_feeder.get(feeder, ()))

    def feeder_ids(self) -> list[str]:
        return list(self._feeders)

    def chargers_on(self, feeder: str) -> list[Charger]:
        return list(self._on_feeder.get(feeder, ()))


def lighting_amps(
    inv: Inventory,
    state: StateStore,
    lighting: LightingController | None,
    stale_s: float,
    clock: Clock,
    commanded: Callable[[str], float | None] = lambda _lamp: None,
) -> Callable[[str, float], float]:
    """Lighting load on a feeder (A on L1) at time t, assuming the worst of what we know.

    Now: the largest of the plan, the winning command (an override, motion) and the fresh
    measurement; a lamp we cannot see counts at full power, as its controller's fail-safe
    puts it there. The future is the plan. Without a plan every lamp counts at full power.
    """

    # Hot path (every charger check and 96 slots per plan): the lamps of each feeder and
    # their groups are fixed, and a lamp's planned watts depend only on its group's level,
    # so the planned load is computed once per (feeder, group levels) and reused. Exact.
    rows: dict[str, list[tuple[Lamp, int]]] = {}
    groups: dict[str, list[str]] = {}
    for lamp in inv.lamps.values():
        gs = groups.setdefault(lamp.feeder, [])
        g = lamp.group
        if g not in gs:
            gs.append(g)
        rows.setdefault(lamp.feeder, []).append((lamp, gs.index(g)))
    planned: dict[tuple[str, tuple[int, ...] | None], tuple[list[float], float]] = {}

    def planned_watts(feeder: str, plan: NightPlan | None, t: float) -> tuple[list[float], float]:
        levels = None if plan is None else tuple(plan.level_at(g, t) for g in groups.get(feeder, ()))
        hit = planned.get((feeder, levels))
        if hit is None:
            if len(planned) > 4096:
                planned.clear()  # bounded: plans change every night
            lamps = rows.get(feeder, ())
            per_lamp = [
                lamp.p_max_w if levels is None else expected_power(lamp, levels[gi]) for lamp, gi in lamps
            ]
            hit = planned[(feeder, levels)] = (per_lamp, sum(per_lamp))
        return hit

    def amps(feeder: str, t: float) -> float:
        plan = lighting.plan if lighting is not None else None
        now = clock.now()
        per_lamp, total = planned_watts(feeder, plan, t)
        if abs(t - now) >= 60:  # the future is the plan
            return total / VOLTS
        watts = 0.0
        for (lamp, _), w_plan in zip(rows.get(feeder, ()), per_lamp, strict=True):
            w = w_plan
            level = commanded(lamp.id)
            if level is not None:
                w = max(w, expected_power(lamp, level))
            dev = state.get(lamp.id)
            measured = dev.values.get("power_w") if dev is not None else None
            if dev is None or dev.online is not True or now - dev.updated_at >= stale_s:
                w = max(w, lamp.p_max_w)
            elif isinstance(measured, int | float):
                w = max(w, float(measured))
            watts += w
        return watts / VOLTS

    return amps


def lights_live(lighting: LightingController | None) -> Callable[[str, float], bool]:
    """Lighting circuits carry power only while the lights are on (the plan's night window)."""

    def live(_feeder: str, t: float) -> bool:
        plan = lighting.plan if lighting is not None else None
        return plan is not None and plan.on <= t < plan.off

    return live


# ----- controller ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Meter:
    last_kwh: float = -1.0
    since: float = 0.0


@dataclass(slots=True)
class _Pending:
    plan: ChargingPlan | None = None
    start: float = 0.0
    session_of: dict[str, str] = field(default_factory=dict)


class ChargingController:
    """Plans and applies charge load; raises charging alarms. Start `run()` in a TaskGroup."""

    def __init__(
        self,
        *,
        inv: Inventory,
        cfg: ChargingSettings,
        bus: EventBus,
        clock: Clock,
        state: StateStore,
        dispatcher: Dispatcher,
        alarms: Alarms,
        safety: ChargingSafety,
    ) -> None:
        self.inv = inv
        self._cfg = cfg
        self._bus = bus
        self._clock = clock
        self._state = state
        self._dispatcher = dispatcher
        self._alarms = alarms
        self.safety = safety
        self._replan = asyncio.Event()
        self._sub = bus.subscribe("charging", StateChanged)
        self.plan = _Pending()
        self.price: tuple[float, int, list[float]] | None = None  # start, slot minutes, values
        self._last_lease = 0.0
        self._last_plan = 0.0
        self._meters: dict[str, _Meter] = {}
        self._bad_since: dict[str, float] = {}
        self.tripped: dict[str, bool] = {}
        self.stats = ChargingStats()

    def request_replan(self) -> None:
        self._replan.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch(), name="charging.events")
            while True:
                now = self._clock.now()
                if self._replan.is_set() or now - self._last_plan >= self._cfg.replan_interval_s:
                    self._replan.clear()
                    await self._make_plan(now)
                if (
                    self._clock.now() - self._last_lease >= self._cfg.lease_s
                    or self._applied_slot() != self._slot(now)
                ):
                    self._apply(now)
                self._enforce(now)
                self._observe(now)
                try:
                    async with asyncio.timeout(0.5):
                        await self._replan.wait()
                except TimeoutError:
                    pass

    # ----- planning ----------------------------------------------------------------------------

    def _slot(self, now: float) -> int:
        return int(now // SLOT_S)

    def _applied_slot(self) -> int:
        return int(self._last_lease // SLOT_S)

    def build_instance(self, now: float) -> tuple[ChargingInstance, dict[str, str]]:
        """Supply tree (cabinet -> feeder -> post) with limits net of lighting per slot, and the sessions."""
        start = self._slot(now) * SLOT_S
        n = 96
        times = [max(now, start + i * SLOT_S) for i in range(n)]
        s = self.safety
        nodes: list[SupplyNode] = []
        cabinets = {f.cabinet for f in self._cfg.feeders}
        for cab in sorted(cabinets):
            lim = s.cabinet_limit(cab, now)
            cab_lim = lim if math.isfinite(lim) else 10_000.0
            lighting = [
                sum(s.lighting_a(f.id, t) for f in self._cfg.feeders if f.cabinet == cab) for t in times
            ]
            nodes.append(
                SupplyNode(id=f"cab:{cab}", parent=None, limit_a=[max(0.0, cab_lim - x) for x in lighting])
            )
        for f in self._cfg.feeders:
            limit = [
                max(
                    0.0,
                    s.feeder_limit(f.id, t) - s.lighting_a(f.id, t),
                )
                for t in times
            ]
            nodes.append(
                SupplyNode(id=f"feeder:{f.id}", parent=f"cab:{f.cabinet}", limit_a=limit, phases=f.phases)
            )
        sessions: list[Session] = []
        session_of: dict[str, str] = {}
        for c in self.inv.chargers.values():
            # a charger whose fail-safe did not read back gets no more than it: plan with that
            cap = c.max_current_a if s.failsafe_verified(c) else min(c.max_current_a, s.failsafe_a(c))
            nodes.append(
                SupplyNode(
                    id=f"post:{c.id}",
                    parent=f"feeder:{c.feeder}",
                    limit_a=[cap] * n,
                    phases=c.phases,
                )
            )
            dev = self._state.get(c.id)
            if dev is None or not dev.online or not dev.values.get("car_connected"):
                continue
            v = dev.values
            status = str(v.get("status", ""))
            if status in {"Faulted", "Unavailable"}:
                continue
            need = _f(v.get("energy_needed_kwh"), -1.0)
            if need < 0:
                need = 16.0  # evening arrivals take 16-17 kWh (ElaadNL); unknown means "fill up"
            dep = _f(v.get("departure_ts"), 0.0)
            if dep <= now:
                dep = now + self._cfg.default_stay_h * 3600
            phases = int(_f(v.get("phases_in_use"), c.phases)) or c.phases
            sid = str(v.get("session_id") or c.id)
            session_of[sid] = c.id
            sessions.append(
                Session(
                    id=sid,
                    charger_id=c.id,
                    node=f"post:{c.id}",
                    phases=1 if phases == 1 else 3,
                    max_a=c.max_current_a,
                    energy_kwh=max(0.0, need),
                    arrival_slot=0,
                    departure_slot=max(1, min(n, math.ceil((dep - start) / SLOT_S))),
                )
            )
        # A charger the plan gives nothing may still draw what it falls back to (normally 0 A: the
        # driver keeps fail-safes at or below the setpoint): leave room for it, as the interlock does.
        busy = set(session_of.values())
        idle: dict[str, float] = {}
        for c in self.inv.chargers.values():
            if c.id not in busy:
                idle[c.feeder] = idle.get(c.feeder, 0.0) + s.fallback_a(c)
        cab_of = {f.id: f.cabinet for f in self._cfg.feeders}
        for i, node in enumerate(nodes):
            kind, _, name = node.id.partition(":")
            held = idle.get(name, 0.0) if kind == "feeder" else 0.0
            if kind == "cab":
                held = sum(a for f, a in idle.items() if cab_of.get(f) == name)
            if held > 0:
                nodes[i] = node.model_copy(update={"limit_a": [max(0.0, x - held) for x in node.limit_a]})
        price = self._price_slots(start, n)
        inst = ChargingInstance(
            n_slots=n, nodes=nodes, sessions=sessions, price=price, time_limit_s=self._cfg.plan_time_limit_s
        )
        return inst, session_of

    def _price_slots(self, start: float, n: int) -> list[float] | None:
        if self.price is None:
            return None
        p0, minutes, values = self.price
        out = []
        for i in range(n):
            k = int((start + i * SLOT_S - p0) // (minutes * 60))
            out.append(values[k] if 0 <= k < len(values) else (sum(values) / len(values)))
        return out

    async def _make_plan(self, now: float) -> None:
        self._last_plan = now
        inst, session_of = self.build_instance(now)
        try:
            plan = await asyncio.to_thread(solve, inst)
        except Exception as exc:
            plan = fallback_plan(inst, f"solver error: {exc}")
        problems = check_plan(inst, plan)
        if problems:
            log.error("charging_plan_infeasible", problems=problems[:3])
            plan = fallback_plan(inst, f"plan failed the check: {problems[0]}")
        self.stats.plans += 1
        if plan.status == "fallback":
            self.stats.fallbacks += 1
        self.plan = _Pending(plan, self._slot(now) * SLOT_S, session_of)
        log.info(
            "charging_plan_ready",
            status=plan.status,
            sessions=len(plan.sessions),
            delivered_kwh=round(plan.delivered_kwh, 1),
            requested_kwh=round(plan.requested_kwh, 1),
            solve_s=round(plan.solve_seconds, 3),
        )
        body = plan.model_dump(mode="json")
        body.update(start=self.plan.start, slot_s=SLOT_S)
        self._bus.publish(PlanEvent("charging", now, body))
        self._apply(now)

    def planned_current(self, charger_id: str, now: float) -> float:
        p = self.plan
        if p.plan is None:
            return 0.0
        i = int((now - p.start) // SLOT_S)
        for sp in p.plan.sessions:
            if p.session_of.get(sp.id) == charger_id and 0 <= i < len(sp.current_a):
                return float(sp.current_a[i])
        return 0.0

    def _apply(self, now: float) -> None:
        """Submit the plan's setpoints for this slot; also refreshes every lease."""
        self._last_lease = now
        self.stats.lease_refreshes += 1
        for c in self.inv.chargers.values():
            dev = self._state.get(c.id)
            if dev is None or not dev.online:
                continue
            self.submit(c.id, self.planned_current(c.id, now), Priority.PLAN, "plan", reason="charging plan")

    def submit(
        self,
        charger_id: str,
        amps: float,
        priority: Priority,
        source: str,
        *,
        hold_s: float | None = None,
        reason: str = "",
    ) -> Verdict:
        now = self._clock.now()
        ttl = max(30.0, self._cfg.lease_s) * self._clock.speed
        cmd = make_command(
            charger_id, POINT, amps, priority, source, now=now, ttl_s=ttl, hold_s=hold_s, reason=reason
        )
        verdict = self._dispatcher.submit(cmd)
        if verdict.outcome is Outcome.CLAMPED:
            self.stats.clamped += 1
        return verdict

    # ----- limits that move under running setpoints --------------------------------------------

    def _enforce(self, now: float) -> None:
        """When a limit drops (curtailment, dusk on a lighting circuit), lower setpoints at once."""
        s = self.safety
        for feeder in s.feeder_ids():
            room = max(0.0, s.feeder_limit(feeder, now) - s.lighting_a(feeder, now))
            self._shed(feeder, s.chargers_on(feeder), room, now)
        for cab in s.cabinet_ids():
            feeders = s.feeders_in(cab)
            room = max(0.0, s.cabinet_limit(cab, now) - sum(s.lighting_a(f, now) for f in feeders))
            self._shed(cab, [c for f in feeders for c in s.chargers_on(f)], room, now)

    def _shed(self, where: str, chargers: list[Charger], room: float, now: float) -> None:
        """Lower the largest setpoints until the chargers fit in `room` (each stays 0 or >= 6 A)."""
        excess = sum(self._setpoint(c.id) for c in chargers) - room
        for c in sorted(chargers, key=lambda x: -self._setpoint(x.id)):
            if excess <= 1e-6:
                return
            cur = self._setpoint(c.id)
            if cur <= 0:
                continue
            new = cur - excess
            new = math.floor(new * 10) / 10 if new >= MIN_A else 0.0
            eff = self._dispatcher.effective(c.id, POINT)
            prio = eff.priority if eff is not None else Priority.SAFETY
            hold = None if eff is None or eff.hold_until is None else max(1.0, eff.hold_until - now)
            self.submit(c.id, new, prio, "safety:interlock", hold_s=hold, reason=f"limit on {where} dropped")
            excess -= cur - new

    def _setpoint(self, charger_id: str) -> float:
        eff = self._dispatcher.effective(charger_id, POINT)
        reported = self._state.value(charger_id, POINT)
        a = eff.value if eff is not None else 0.0
        b = float(reported) if isinstance(reported, int | float) else 0.0
        return max(a, b)

    def set_limit(
        self, target: str, limit_a: float, start: float, end: float, source: str
    ) -> tuple[float, str]:
        """A utility or operator limit for a window; never below the §14a floor. Returns the limit used."""
        s = self.safety
        feeders = [target] if target in s.feeder_ids() else s.feeders_in(target)
        lights = sum(s.lighting_a(f, self._clock.now()) for f in feeders)
        cars = s.curtail_floor_a(target)
        floor = cars + lights if cars > 0 else 0.0  # the lamps keep their share; each car its §14a minimum
        used, note = limit_a, ""
        if limit_a < floor:
            used, note = (
                floor,
                f"raised to the §14a floor of {floor:.1f} A ({self._cfg.min_device_kw:g} kW per charging car)",
            )
        self.safety.windows = [w for w in self.safety.windows if w.end > self._clock.now()]
        self.safety.windows.append(LimitWindow(target, used, start, end, source))
        self.stats.signals += 1
        self._enforce(self._clock.now())
        self.request_replan()
        return used, note

    def set_price(self, start: float, slot_minutes: int, values: list[float]) -> None:
        self.price = (start, slot_minutes, values)
        self.stats.signals += 1
        self.request_replan()

    # ----- observing ---------------------------------------------------------------------------

    async def _watch(self) -> None:
        async for ev in self._sub:
            if not isinstance(ev, StateChanged) or ev.device_id not in self.inv.chargers:
                continue
            if "car_connected" in ev.changed or (
                "status" in ev.changed and ev.changed["status"] in {"Faulted", "Available"}
            ):
                self.request_replan()
            if "status" in ev.changed:
                self._alarms.set(
                    ev.device_id, "charger_faulted", ev.changed["status"] == "Faulted", Severity.MAJOR
                )

    def _observe(self, now: float) -> None:
        """Peak load, violations, and the slow alarms (near limit, not charging, meter frozen)."""
        s = self.safety
        for feeder in s.feeder_ids():
            self._watch_supply(feeder, now)
            limit = s.feeder_limit(feeder, now)
            measured = s.lighting_now_a(feeder, now) + sum(self.measured_a(c) for c in s.chargers_on(feeder))
            if limit > 0:
                ratio = measured / limit
                if ratio > self.stats.peak_ratio:
                    self.stats.peak_ratio, self.stats.peak_feeder = ratio, feeder
                self._alarms.set(
                    feeder,
                    "feeder_near_limit",
                    ratio >= self._cfg.near_limit_ratio,
                    Severity.WARNING,
                    f"{measured:.1f} of {limit:.1f} A",
                )
            if measured > limit + 0.5 and limit >= 0:
                self.stats.violations += 1
        delivered = 0.0
        after = self._cfg.alarm_after_s
        for c in self.inv.chargers.values():
            dev = self._state.get(c.id)
            if dev is None:
                continue
            v = dev.values
            delivered += _f(v.get("session_energy_kwh"), 0.0)
            power = _f(v.get("power_kw"), 0.0) > 0.1
            should = (
                bool(v.get("car_connected"))
                and self._setpoint(c.id) >= MIN_A
                and v.get("status") not in {"SuspendedEV", "Finishing", "Faulted", "Unavailable"}
            )
            self._persisting(c.id, "not_charging", should and not power, now, after, Severity.MINOR,
                             "car connected, setpoint given, no power")  # fmt: skip
            m = self._meters.setdefault(c.id, _Meter())
            kwh = _f(v.get("meter_energy_kwh"), -1.0)
            if kwh != m.last_kwh:
                m.last_kwh, m.since = kwh, now
            frozen = power and now - m.since >= after
            self._alarms.set(
                c.id, "meter_frozen", frozen, Severity.MINOR, "power flows but the meter stands still"
            )
            if dev.online and "failsafe_current_a" in v:
                want = s.failsafe_a(c)
                self._alarms.set(
                    c.id,
                    "failsafe_mismatch",
                    not s.failsafe_verified(c),
                    Severity.MAJOR,
                    f"fail-safe reads {v.get('failsafe_current_a')!r} A, configured {want:g} A: "
                    f"held at {want:g} A",
                )
        self.stats.delivered_kwh = delivered
        if self.plan.plan is not None:
            self.stats.requested_kwh = self.plan.plan.requested_kwh

    def _watch_supply(self, feeder: str, now: float) -> None:
        """A live feeder whose charge points all report Unavailable while we reach them has lost
        its supply: its fuse tripped (a critical alarm until power returns). It must hold for a
        while (clock time, and a few real seconds): a lighting circuit switches on a moment
        after the plan says so."""
        s = self.safety
        chargers = s.chargers_on(feeder)
        seen = [self._state.get(c.id) for c in chargers]
        reachable = [d for d in seen if d is not None and d.online is True and "status" in d.values]
        dark = bool(reachable) and len(reachable) == len(chargers)
        dark = dark and all(d.values.get("status") == "Unavailable" for d in reachable)
        was = self.tripped.get(feeder, False)
        expected_live = s.feeder_limit(feeder, now) > 0  # night-only circuits are dead by day
        key = f"{feeder}/dark"
        if not dark or not (expected_live or was):
            self._bad_since.pop(key, None)
            now_tripped = False
        else:
            since = self._bad_since.setdefault(key, now)
            now_tripped = was or now - since >= max(60.0, 3.0 * self._clock.speed)
        if now_tripped and not was:
            self.stats.trips += 1
            log.error("feeder_tripped", feeder=feeder, chargers=len(chargers))
        elif was and not now_tripped:
            log.info("feeder_supply_back", feeder=feeder)
        self.tripped[feeder] = now_tripped
        self._alarms.set(
            feeder,
            "feeder_tripped",
            now_tripped,
            Severity.CRITICAL,
            f"all {len(chargers)} charge points lost power: fuse tripped or supply lost",
        )

    def _persisting(
        self, device: str, code: str, bad: bool, now: float, after: float, severity: Severity, detail: str
    ) -> None:
        """Raise an alarm once a condition has held for `after` clock seconds; clear it at once."""
        key = f"{device}/{code}"
        if not bad:
            self._bad_since.pop(key, None)
            self._alarms.set(device, code, False, severity)
            return
        since = self._bad_since.setdefault(key, now)
        if now - since >= after:
            self._alarms.set(device, code, True, severity, detail)

    def measured_a(self, c: Charger) -> float:
        dev = self._state.get(c.id)
        if dev is None:
            return 0.0
        v = dev.values
        return max(
            _f(v.get("current_l1_a"), 0.0), _f(v.get("current_l2_a"), 0.0), _f(v.get("current_l3_a"), 0.0)
        )


def _f(v: object, default: float) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else default
