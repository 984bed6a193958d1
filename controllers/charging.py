"""Charging controller: feeder-safe charge load for charge points in lamp posts.

`ChargingController` plans (optimizer/charging.py) when a car arrives or leaves, a limit
changes or a signal arrives, applies the plan as setpoints refreshed before the chargers'
watchdog runs out (a lease), enforces limits that drop under running setpoints, raises
alarms (`ChargingWatch`), and publishes the derived state the API shows: each feeder's
load against its limit and each charger's planned current, as `Telemetry` when it changes.

The interlock the dispatcher runs on every setpoint lives in `controllers/charging_safety.py`;
its names are re-exported here, so the domain has one import.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from controllers.charging_alarms import ChargingStats, ChargingWatch
from controllers.charging_lighting import LAMP_POINT, VOLTS, LightingLoad, PlannedLighting
from controllers.charging_safety import (
    MIN_A,
    POINT,
    SLOT_S,
    ChargingSafety,
    LimitWindow,
    drawn_a,
    failsafe_a,
    failsafe_problems,
    is_fresh,
    reported_failsafe,
    worst_lighting_a,
)
from controllers.lighting import NightPlanSource
from devices.inventory import Charger, Inventory
from edge.device_truth import FAILSAFE_POINT
from edge.dispatcher import make_command
from edge.events import Outcome, PlanEvent, Priority, StateChanged, Telemetry, Value
from edge.kernel import Kernel
from edge.policy import DispatcherView, Verdict
from edge.settings import ChargingSettings
from edge.state import StateStore
from edge.tasks import TimeSlice
from optimizer.charging_fallback import fallback_plan
from optimizer.charging_model import ChargingInstance, ChargingPlan, Session, SupplyNode, check_plan

SOLVE = "optimizer.charging:solve"  # run in the solver process (edge/solvers.py)

__all__ = [
    "LAMP_POINT",
    "MIN_A",
    "POINT",
    "SLOT_S",
    "VOLTS",
    "ChargingController",
    "ChargingSafety",
    "ChargingStats",
    "ChargingWatch",
    "LightingLoad",
    "LimitWindow",
    "NightPlanSource",
    "PlannedLighting",
    "build_instance",
    "drawn_a",
    "failsafe_a",
    "failsafe_problems",
    "is_fresh",
    "reported_failsafe",
    "worst_lighting_a",
]

log = structlog.get_logger(__name__)

N_SLOTS = 96


@dataclass(slots=True)
class _Pending:
    plan: ChargingPlan | None = None
    start: float = 0.0
    session_of: dict[str, str] = field(default_factory=dict)


# ----- the optimizer's instance -------------------------------------------------------------


def _supply_nodes(
    cfg: ChargingSettings, s: ChargingSafety, view: DispatcherView, now: float, times: list[float]
) -> list[SupplyNode]:
    """Cabinets and feeders with their limits net of lighting, per slot."""
    nodes: list[SupplyNode] = []
    for cab in sorted({f.cabinet for f in cfg.feeders}):
        lim = s.cabinet_limit(cab, now)
        cab_lim = lim if math.isfinite(lim) else 10_000.0
        lighting = [sum(s.lighting_a(f.id, t, view) for f in cfg.feeders if f.cabinet == cab) for t in times]
        nodes.append(
            SupplyNode(id=f"cab:{cab}", parent=None, limit_a=[max(0.0, cab_lim - x) for x in lighting])
        )
    for f in cfg.feeders:
        limit = [max(0.0, s.feeder_limit(f.id, t) - s.lighting_a(f.id, t, view)) for t in times]
        nodes.append(
            SupplyNode(id=f"feeder:{f.id}", parent=f"cab:{f.cabinet}", limit_a=limit, phases=f.phases)
        )
    return nodes


def _session(
    c: Charger, values: Mapping[str, Value], cfg: ChargingSettings, now: float, start: float
) -> Session:
    """The optimizer's session for a charger with a car connected."""
    need = _f(values.get("energy_needed_kwh"), -1.0)
    if need < 0:
        need = 16.0  # evening arrivals take 16-17 kWh (ElaadNL); unknown means "fill up"
    dep = _f(values.get("departure_ts"), 0.0)
    if dep <= now:
        dep = now + cfg.default_stay_h * 3600
    phases = int(_f(values.get("phases_in_use"), c.phases)) or c.phases
    return Session(
        id=str(values.get("session_id") or c.id),
        charger_id=c.id,
        node=f"post:{c.id}",
        phases=1 if phases == 1 else 3,
        max_a=c.max_current_a,
        energy_kwh=max(0.0, need),
        arrival_slot=0,
        departure_slot=max(1, min(N_SLOTS, math.ceil((dep - start) / SLOT_S))),
    )


def build_instance(
    inv: Inventory,
    cfg: ChargingSettings,
    s: ChargingSafety,
    state: StateStore,
    view: DispatcherView,
    now: float,
    price: list[float] | None,
) -> tuple[ChargingInstance, dict[str, str]]:
    """Supply tree (cabinet -> feeder -> post) with limits net of lighting per slot, and the sessions."""
    start = (now // SLOT_S) * SLOT_S
    times = [max(now, start + i * SLOT_S) for i in range(N_SLOTS)]
    nodes = _supply_nodes(cfg, s, view, now, times)
    sessions: list[Session] = []
    session_of: dict[str, str] = {}
    for c in inv.chargers.values():
        # a charger whose fail-safe did not read back gets no more than it: plan with that
        verified = s.failsafe_verified(c, view)
        cap = c.max_current_a if verified else min(c.max_current_a, s.failsafe_a(c))
        nodes.append(
            SupplyNode(
                id=f"post:{c.id}", parent=f"feeder:{c.feeder}", limit_a=[cap] * N_SLOTS, phases=c.phases
            )
        )
        dev = state.get(c.id)
        if dev is None or not dev.online or not dev.values.get("car_connected"):
            continue
        if str(dev.values.get("status", "")) in {"Faulted", "Unavailable"}:
            continue
        session = _session(c, dev.values, cfg, now, start)
        session_of[session.id] = c.id
        sessions.append(session)
    # A charger the plan gives nothing may still draw what it falls back to (normally 0 A: the
    # driver keeps fail-safes at or below the setpoint): leave room for it, as the interlock does.
    busy = set(session_of.values())
    idle: dict[str, float] = {}
    for c in inv.chargers.values():
        if c.id not in busy:
            idle[c.feeder] = idle.get(c.feeder, 0.0) + s.fallback_a(c, view)
    cab_of = {f.id: f.cabinet for f in cfg.feeders}
    for i, node in enumerate(nodes):
        kind, _, name = node.id.partition(":")
        held = idle.get(name, 0.0) if kind == "feeder" else 0.0
        if kind == "cab":
            held = sum(a for f, a in idle.items() if cab_of.get(f) == name)
        if held > 0:
            nodes[i] = node.model_copy(update={"limit_a": [max(0.0, x - held) for x in node.limit_a]})
    inst = ChargingInstance(
        n_slots=N_SLOTS, nodes=nodes, sessions=sessions, price=price, time_limit_s=cfg.plan_time_limit_s
    )
    return inst, session_of


# ----- controller ---------------------------------------------------------------------------


class ChargingController:
    """Plans and applies charge load; raises charging alarms. Start `run()` in a TaskGroup.

    Built as `ChargingController(kernel, cfg, inv=..., safety=...)`: `safety` is the interlock the
    domain registered with the dispatcher, so the plan and the checks count load alike.
    """

    name = "charging"

    def __init__(
        self, kernel: Kernel, cfg: ChargingSettings, *, inv: Inventory, safety: ChargingSafety
    ) -> None:
        self.inv = inv
        self._cfg = cfg
        self._bus = kernel.bus
        self._clock = kernel.clock
        self._state = kernel.state
        self._dispatcher = kernel.dispatcher
        self._view = kernel.dispatcher.view
        self.safety = safety
        self._solvers = kernel.solvers
        kernel.solvers.warm(SOLVE)
        self._replan = asyncio.Event()
        self._wake = asyncio.Event()  # a re-plan asked for, or a lamp raised outside its plan
        charged = {c.feeder for c in inv.chargers.values()}
        self._feeder_lamps = frozenset(x.id for x in inv.lamps.values() if x.feeder in charged)
        kernel.dispatcher.watch(self._lamp_command)
        self._sub = kernel.bus.subscribe("charging", StateChanged)
        self.plan = _Pending()
        self.price: tuple[float, int, list[float]] | None = None  # start, slot minutes, values
        self._last_lease = 0.0
        self._last_plan = 0.0
        self.stats = ChargingStats()
        self.watch = ChargingWatch(
            kernel, cfg, inv=inv, safety=safety, stats=self.stats, setpoint=self._setpoint
        )
        self._published: dict[str, dict[str, Value]] = {}
        self._published_at: dict[str, float] = {}  # clock time each was last published

    @property
    def tripped(self) -> dict[str, bool]:
        """Feeders seen losing supply (their fuse tripped), by id."""
        return self.watch.tripped

    def request_replan(self) -> None:
        self._replan.set()
        self._wake.set()

    def _lamp_command(self, device_id: str, point: str) -> None:
        """A lamp on a charging feeder raised above its plan (a warning, an emergency call, an
        operator) adds load the plan did not count: the interlock sheds now, not at its next
        half-second pass (at a demo's 300x that half second was minutes, and a fuse tripped)."""
        if point == "level_cmd" and device_id in self._feeder_lamps:
            eff = self._dispatcher.effective(device_id, point)
            if eff is not None and eff.priority > Priority.PLAN:
                self._wake.set()

    def views(self) -> Mapping[str, Any]:
        """The plan in force (None before the first) and the feeders seen tripped."""
        return {"plan": self.plan.plan, "tripped": dict(self.tripped)}

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
                    await self._apply(now)
                await self._turn(now)
                try:
                    async with asyncio.timeout(0.5):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                self._wake.clear()

    # ----- planning ----------------------------------------------------------------------------

    def _slot(self, now: float) -> int:
        return int(now // SLOT_S)

    def _applied_slot(self) -> int:
        return int(self._last_lease // SLOT_S)

    def build_instance(self, now: float) -> tuple[ChargingInstance, dict[str, str]]:
        """The optimizer's instance for now (see `build_instance`)."""
        start = self._slot(now) * SLOT_S
        return build_instance(
            self.inv, self._cfg, self.safety, self._state, self._view, now, self._price_slots(start, N_SLOTS)
        )

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
            # in the solver process: OR-Tools' linear solver stays out of the daemon (edge/solvers.py)
            plan = await self._solvers.run(SOLVE, inst)
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
        await self._apply(now)

    def planned_current(self, charger_id: str, now: float) -> float:
        p = self.plan
        if p.plan is None:
            return 0.0
        i = int((now - p.start) // SLOT_S)
        for sp in p.plan.sessions:
            if p.session_of.get(sp.id) == charger_id and 0 <= i < len(sp.current_a):
                return float(sp.current_a[i])
        return 0.0

    async def _apply(self, now: float) -> None:
        """Submit the plan's setpoints for this slot, and on every lease those the dispatcher no
        longer holds. A setpoint the plan asked for already stands (the dispatcher keeps it, its
        reconcile re-writes a charger that drifted, its re-check clamps it when a limit moves), so
        it is not sent again: a city's 680 unchanged setpoints every lease were 680 safety checks
        and audit rows in one burst, and an operator's command waited behind them. Each feeder
        check sums its cabinet (a millisecond at city size): the loop yields by time."""
        self._last_lease = now
        self.stats.lease_refreshes += 1
        slice_ = TimeSlice()
        for c in list(self.inv.chargers.values()):
            await slice_.tick()
            dev = self._state.get(c.id)
            if dev is None or not dev.online:
                continue
            amps = self.planned_current(c.id, now)
            eff = self._dispatcher.effective(c.id, POINT)
            if (
                eff is not None
                and not dev.values.get(FAILSAFE_POINT)  # it holds its fail-safe until written
                and eff.priority is Priority.PLAN
                and eff.source == "plan"
                and math.isclose(eff.value, amps, abs_tol=1e-9)
            ):
                self.stats.unchanged += 1
                continue
            self.submit(c.id, amps, Priority.PLAN, "plan", reason="charging plan")

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
        for _ in self._enforce_steps(now):
            pass

    def _enforce_steps(self, now: float) -> Iterator[None]:
        """`_enforce`, a feeder or a cabinet per step (each one's check whole within its step)."""
        s, view = self.safety, self._view
        for feeder in s.feeder_ids():
            room = max(0.0, s.feeder_limit(feeder, now) - s.lighting_a(feeder, now, view))
            self._shed(feeder, s.chargers_on(feeder), room, now)
            yield
        for cab in s.cabinet_ids():
            feeders = s.feeders_in(cab)
            room = max(0.0, s.cabinet_limit(cab, now) - sum(s.lighting_a(f, now, view) for f in feeders))
            self._shed(cab, [c for f in feeders for c in s.chargers_on(f)], room, now)
            yield

    async def _turn(self, now: float) -> None:
        """One turn of the loop: `_enforce`, `ChargingWatch.observe` and `publish_state`, a step
        at a time, with a yield to the event loop every few milliseconds: in one stretch, a
        city's 40 feeders and 680 charge points held the loop ~20 ms twice a second, and every
        operator's command that met it waited. A command that comes between two steps is
        checked by the same limits at the dispatcher."""
        tick = TimeSlice()
        steps = (
            self._enforce_steps(now),
            self.watch.observe_steps(now, self.plan.plan),
            self._publish_steps(now),
        )
        for _ in itertools.chain(*steps):
            await tick.tick()

    def _shed(self, where: str, chargers: list[Charger], room: float, now: float) -> None:
        """Lower the largest setpoints until the chargers fit in `room` (each stays 0 or >= 6 A)."""
        excess = sum(self._setpoint(c.id) for c in chargers) - room
        if excess <= 1e-6:
            return  # the usual case: nothing to shed, nothing to sort
        for c in sorted(chargers, key=lambda x: -self._setpoint(x.id)):
            if excess <= 1e-6:
                return
            cur = self._setpoint(c.id)
            if cur <= 0:
                continue
            new = cur - excess
            new = math.floor(new * 10) / 10 if new >= MIN_A else 0.0
            eff = self._dispatcher.effective(c.id, POINT)
            if eff is not None and eff.value <= new + 1e-9:
                excess -= cur - eff.value  # asked for already: its write is on the way, not again
                continue
            dev = self._state.get(c.id)
            if dev is None or dev.online is not True:
                continue  # unreachable: its watchdog's fail-safe holds, and the others give way
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

    def amps_for_kw(self, target: str, kw: float) -> float:
        """A utility's power limit on a feeder or cabinet in amps per phase (what `set_limit` takes)."""
        return self.safety.amps_for_kw(target, kw)

    def curtailment_a(self, target: str, limit_a: float | None, limit_kw: float | None) -> float:
        """A utility's curtailment in amps per phase: its own amps, else its kW converted."""
        return limit_a if limit_a is not None else self.amps_for_kw(target, limit_kw or 0.0)

    def set_limit(
        self, target: str, limit_a: float, start: float, end: float, source: str
    ) -> tuple[float, str]:
        """A utility or operator limit for a window; never below the §14a floor. Returns the limit used."""
        s, now = self.safety, self._clock.now()
        feeders = [target] if target in s.feeder_ids() else s.feeders_in(target)
        lights = sum(s.lighting_a(f, now, self._view) for f in feeders)
        cars = s.curtail_floor_a(target, self._view)
        floor = cars + lights if cars > 0 else 0.0  # the lamps keep their share; each car its §14a minimum
        used, note = limit_a, ""
        if limit_a < floor:
            used, note = (
                floor,
                f"raised to the §14a floor of {floor:.1f} A ({self._cfg.min_device_kw:g} kW per charging car)",
            )
        s.windows = [w for w in s.windows if w.end > now]
        s.windows.append(LimitWindow(target, used, start, end, source))
        self.stats.signals += 1
        self._enforce(now)
        self.request_replan()
        return used, note

    def set_price(self, start: float, slot_minutes: int, values: list[float]) -> None:
        self.price = (start, slot_minutes, values)
        self.stats.signals += 1
        self.request_replan()

    # ----- observing and publishing ------------------------------------------------------------

    async def _watch(self) -> None:
        async for ev in self._sub:
            if not isinstance(ev, StateChanged) or ev.device_id not in self.inv.chargers:
                continue
            if "car_connected" in ev.changed or (
                "status" in ev.changed and ev.changed["status"] in {"Faulted", "Available"}
            ):
                self.request_replan()
            if "status" in ev.changed:
                self.watch.status_changed(ev.device_id, ev.changed["status"])

    def measured_a(self, c: Charger) -> float:
        return self.watch.measured_a(c)

    def feeder_state(self, feeder: str, now: float) -> dict[str, Value]:
        """A feeder's load against its limit, with the field names of `FeederState` (rounded as shown)."""
        s = self.safety
        chargers = s.chargers_on(feeder)
        return {
            "limit_a": s.feeder_limit(feeder, now),
            "lighting_a": round(s.lighting_now_a(feeder, now, self._view), 2),
            "setpoints_a": round(s.setpoints_a(feeder, self._view), 2),
            "measured_a": round(sum(self.measured_a(c) for c in chargers), 2),
            "chargers": len(chargers),
            "tripped": self.tripped.get(feeder, False),
        }

    def publish_state(self, now: float) -> int:
        """Publish each feeder's state and each charger's planned current where they changed
        (derived `Telemetry`: the state store keeps it, the API publishes it). Returns how many.

        A feeder's measured currents move with every lamp reading: a move within the dead band
        (`FEEDER_BAND_A`, or `FEEDER_BAND_SHARE` of the limit) waits up to `FEEDER_REFRESH_S`;
        anything else (limit, trip, chargers, a larger move) goes at once. Published every turn,
        a city's 400 feeders were 800 retained messages a second."""
        return sum(self._publish_steps(now))

    def _publish_steps(self, now: float) -> Iterator[bool]:
        """`publish_state`, a device per step: whether it was published."""
        for f in self.safety.feeder_ids():
            yield self._publish_one(f, self.feeder_state(f, now), now)
        for c in self.inv.chargers:
            yield self._publish_one(c, {"planned_a": self.planned_current(c, now)}, now)

    def _publish_one(self, device_id: str, values: dict[str, Value], now: float) -> bool:
        """Publish one device's derived state if it changed enough; whether it was published."""
        old = self._published.get(device_id)
        if old == values:
            return False
        recent = now - self._published_at.get(device_id, now) < FEEDER_REFRESH_S
        if old is not None and "limit_a" in values and recent and _within_band(old, values):
            return False
        self._published[device_id] = values
        self._published_at[device_id] = now
        self._bus.publish(Telemetry(device_id, now, values, derived=True))
        return True


FEEDER_BAND_A = 0.5  # A: a feeder's measured currents closer than this to what was published wait
FEEDER_BAND_SHARE = 0.01  # or this share of its limit, if that is more
FEEDER_REFRESH_S = 30.0  # clock s: how long such a small move waits before it is published
_MEASURED = ("lighting_a", "setpoints_a", "measured_a")


def _within_band(old: Mapping[str, Value], new: Mapping[str, Value]) -> bool:
    """Whether a feeder's state differs from `old` only by small moves of its measured currents."""
    limit = _f(new.get("limit_a"), 0.0)
    band = max(FEEDER_BAND_A, FEEDER_BAND_SHARE * limit)
    for key, value in new.items():
        was = old.get(key)
        if key in _MEASURED:
            if abs(_f(value, 0.0) - _f(was, 0.0)) > band:
                return False
        elif value != was:
            return False
    return True


def _f(v: object, default: float) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else default
