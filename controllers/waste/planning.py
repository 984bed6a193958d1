"""Planning: the optimizer's instance built from what is known, the plan made, taken into force, restored.

`Planner.inputs` turns bins (their estimators' forecasts at now, at the trucks' likely visit
and at the next run) and trucks (where they are, what they carry, where they head) into
the optimizer's frozen inputs; `plan_now` solves off the event loop (a spawned process:
OR-Tools holds the GIL); `apply` takes a usable plan into force, marks the bins, sends
each truck its route through the dispatcher (held until shortly before a later shift)
and publishes the plan as `PlanEvent("waste", ...)`; `restore` takes today's stored plan
back after a restart without sending routes again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Callable, Generator, Mapping
from datetime import date
from typing import Literal

import structlog

from devices.inventory import Bin
from devices.profiles.waste import route_number
from edge.dispatcher import make_command
from edge.events import Command, Outcome, PlanEvent, Priority
from edge.geo import haversine_m
from edge.policy import DispatcherView, Verdict
from edge.solvers import Solvers
from optimizer.waste import (
    BinInput,
    DistanceProvider,
    Place,
    PlanContext,
    Selection,
    TruckInput,
    TruckRoute,
    WastePlan,
)
from optimizer.waste import build as build_instance
from optimizer.waste import solve as solve_instance

from . import wire
from .alarms import SEVERITY
from .fill import FillEstimator
from .restore import plan_from_body
from .state import ActivePlan, PlanReason, TruckTrack, WasteState
from .views import PLANNER_ID, plan_message

log = structlog.get_logger(__name__)

RETURN_RESERVE_S = 2.0
"""Of a plan's time limit, kept for what follows the search: the helpers' answers, the candidates
checked, routes mapped back, the plan sent from the solver process and taken into force (at 2,000
bins: 0.9 s past the limit with 0.5 s kept, 0.07-0.23 s with 1.5 s)."""
RESERVE_SHARE = 0.2  # of a short limit, the reserve is this share instead
MIN_SEARCH_S = 1.0  # a plan whose inputs took the whole limit still searches this long (never past the limit)
INPUT_CHUNK = 200  # bins per event-loop turn when building the planner's inputs
RISK_Z = 1.5
"""How many spreads above its forecast a bin's fill at the next run is planned for (`fill_upper`):
about the 90th percentile, so a bin that could pass the threshold before the next chance to
collect it is collected now. On four simulated weeks of the demo district with three run days,
z = 1.5 gave fewer overflows than z = 1 (32 against 35; the fixed round 43) at the same
kilometres: a bin collected a run early costs little, one that overflows over a weekend a lot."""

Inputs = tuple[list[BinInput], list[TruckInput], PlanContext, date]


def planner_bin(
    b: Bin,
    est: FillEstimator,
    *,
    now: float,
    next_start: float,
    service_ts: float,
    alarms: frozenset[str] = frozenset(),
    forced: bool = False,
    excluded: bool = False,
    done: bool = False,
) -> BinInput:
    """The planner's view of one bin: fill now, at the truck's likely visit and at the next run.

    `next_start` is the start of the next run after this one: the next chance to collect the bin,
    so the bin is mandatory if it could reach the threshold by then (see optimizer/waste.py `select`).
    """
    return BinInput(
        id=b.id,
        lat=b.lat,
        lon=b.lon,
        road=b.road_class,
        zone=b.zone,
        volume_l=b.volume_l,
        density_kg_l=b.density_kg_l,
        fill=est.fill_at(now),
        fill_next=est.fill_at(next_start),
        fill_service=est.fill_at(service_ts),
        alarms=alarms,
        forced=forced,
        excluded=excluded,
        done=done,
        fill_next_hi=est.fill_upper(next_start, RISK_Z),
    )


SOLVE = "controllers.waste.planning:solve"  # run in the solver process (edge/solvers.py)


def solve(
    bins: list[BinInput],
    trucks: list[TruckInput],
    ctx: PlanContext,
    provider: DistanceProvider,
    deadline: float | None = None,
) -> WastePlan:
    """The one call into optimizer/waste.py (module level: it runs in the solver process).

    `deadline` (`time.monotonic()`, one clock for every process on the machine) is when the plan
    must be back: the search gets what is left of it once the instance is built, less
    `RETURN_RESERVE_S` (a fifth of a shorter limit), so the time limit holds from the request to
    the plan in force. It never searches longer than the limit.
    """
    instance = build_instance(bins, trucks, ctx, provider)
    if deadline is not None:
        reserve = min(RETURN_RESERVE_S, RESERVE_SHARE * ctx.solver_time_s)
        left = deadline - time.monotonic() - reserve
        limit = min(ctx.solver_time_s, max(min(MIN_SEARCH_S, ctx.solver_time_s), left))
        instance = dataclasses.replace(instance, ctx=dataclasses.replace(ctx, solver_time_s=limit))
    return solve_instance(instance)


class WasteSafety:
    """Dispatcher policy for trucks: only a well-formed route reaches a truck."""

    def check(self, cmd: Command, now: float, view: DispatcherView) -> Verdict:
        if cmd.point != wire.ROUTE_POINT or not cmd.payload:
            return Verdict(Outcome.REFUSED, cmd.value, f"point_not_writable: {cmd.point}")
        problem = wire.route_problem(cmd.payload, cmd.value)
        if problem is not None:
            return Verdict(Outcome.REFUSED, cmd.value, f"route_refused: {problem}")
        return Verdict(Outcome.ACCEPTED, cmd.value)


class Planner:
    """Makes plans, takes them into force and sends the routes; holds the solver process."""

    def __init__(
        self,
        st: WasteState,
        provider: DistanceProvider,
        submit: Callable[[Command], Verdict] | None,
        *,
        command_ttl_s: float,
        solvers: Solvers | None = None,
    ) -> None:
        self.st = st
        self.solvers = solvers  # the solver process (None: plans in a thread)
        if solvers is not None:
            solvers.warm(SOLVE)
        self.provider = provider
        self.submit = submit
        self.command_ttl_s = command_ttl_s
        self.route_lead_s = 1800.0  # routes go out at most this long before the truck's shift starts
        self.route_seq = itertools.count(1)
        self.held: dict[str, tuple[TruckRoute, str, float]] = {}  # truck -> (route, id, shift start)
        self.plans_made = 0
        self.routes_sent = 0
        self.last_scheduled: date | None = None

    # -- inputs -------------------------------------------------------------------------

    def inputs(self, now: float) -> Inputs:
        """The planner's view of bins and trucks now (pure data, safe to hand to a thread)."""
        gen = self._inputs(now)
        while True:
            try:
                next(gen)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]

    async def inputs_async(self, now: float) -> Inputs:
        """`inputs`, giving the event loop a turn every INPUT_CHUNK bins (~0.2 ms each: 2,000
        bins would otherwise hold every poll and command for half a second)."""
        gen = self._inputs(now)
        while True:
            try:
                next(gen)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            await asyncio.sleep(0)

    def _inputs(self, now: float) -> Generator[None, None, Inputs]:
        st, cal, cfg = self.st, self.st.calendar, self.st.cfg
        depot, disposal = cfg.depot, cfg.disposal
        assert depot is not None  # checked by WasteState
        assert disposal is not None
        day = cal.run_day(now)
        start = max(now, cal.run_start(day))
        next_start = cal.run_start(cal.next_run_day(day))
        mid = 0.5 * (start + max(cal.shift_of(t, day)[1] for t in st.trucks))
        same_day = day == st.day(now)
        bins = []
        for i, bt in enumerate(st.bins.values()):
            if i and i % INPUT_CHUNK == 0:
                yield
            b_in = planner_bin(
                bt.bin, bt.est, now=now, next_start=next_start, service_ts=mid, alarms=frozenset(bt.alarms),
                forced=bt.forced, excluded=bt.excluded, done=same_day and st.done_today(bt),
            )  # fmt: skip
            last = bt.est.last
            if "sensor_fault" in bt.alarms and last is not None:
                # A faulty sensor says nothing of the fill now: assume the bin went on filling as its
                # pattern says since the last good reading (or since the readings froze).
                since = min(last.ts, bt.same_since if bt.same_since is not None else last.ts)
                risk = min(1.0, last.fill + bt.est.pattern.integral(since, next_start))
                if b_in.fill_next_hi is None or b_in.fill_next_hi < risk:
                    b_in = dataclasses.replace(b_in, fill_next_hi=risk)
            bins.append(b_in)
        trucks = [self._truck_input(tt, now, day, same_day) for tt in st.trucks.values() if not tt.broken]
        ctx = PlanContext(
            now=now,
            next_run_ts=next_start,
            threshold=cfg.threshold,
            depot=Place("depot", depot.lat, depot.lon),
            disposal=Place("disposal", disposal.lat, disposal.lon),
            disposal_service_s=disposal.service_s,
            service_s=cfg.service_s,
            zones=cal.zone_windows(day),
            solver_time_s=cfg.solver_time_s,
            solver_workers=cfg.solver_workers,
        )
        return bins, trucks, ctx, day

    def _truck_input(self, tt: TruckTrack, now: float, day: date, same_day: bool) -> TruckInput:
        st = self.st
        depot = st.cfg.depot
        assert depot is not None
        heard = st.truck_online(tt, now)
        at_depot = not (same_day and heard) or haversine_m(tt.lat, tt.lon, depot.lat, depot.lon) < 50
        heading = ""
        a = st.active
        if a is not None and same_day and heard and not at_depot:
            r = a.plan.route_of(tt.id)
            if r is not None and tt.route_id == a.route_ids.get(tt.id) and tt.stop_index < len(r.stops):
                s = r.stops[tt.stop_index]
                if s.kind == "bin" and not st.done_today(st.bins[s.id]):
                    heading = s.id
        return TruckInput(
            id=tt.id,
            volume_l=tt.volume_l,
            weight_kg=tt.weight_kg,
            shift=st.calendar.shift_of(tt.id, day),
            lat=tt.lat if not at_depot else depot.lat,
            lon=tt.lon if not at_depot else depot.lon,
            load_l=tt.load_l if same_day and heard else 0.0,
            load_kg=tt.load_kg if same_day and heard else 0.0,
            at_depot=at_depot,
            heading_to=heading,
        )

    # -- solving ------------------------------------------------------------------------

    async def plan_now(self, reason: PlanReason) -> ActivePlan:
        """Make a plan (solver off the event loop), apply it and send the routes."""
        asked = time.monotonic()
        now = self.st.clock.now()
        bins, trucks, ctx, day = await self.inputs_async(now)
        deadline = asked + ctx.solver_time_s
        if self.solvers is not None:
            # OR-Tools' search holds the GIL (docs/routing.md): in a thread it would stall the
            # event loop, and with it every poll and command, for seconds.
            plan = await self.solvers.run(SOLVE, bins, trucks, ctx, self.provider, deadline)
        else:
            plan = await asyncio.to_thread(solve, bins, trucks, ctx, self.provider, deadline)
        return self.apply(plan, reason, day)

    # -- taking a plan into force -------------------------------------------------------

    def apply(self, plan: WastePlan, reason: PlanReason, day: date) -> ActivePlan:
        """Take a plan into force: bin plan marks, routes to the trucks, a PlanEvent."""
        st = self.st
        self.plans_made += 1
        prev = st.active
        plan_id = f"{day.isoformat()}-p{self.plans_made}"
        if not plan.usable:
            # Nothing is sent; the trucks keep following the routes they have (if any). Operators
            # see why: an alarm, and the plan message with the violations.
            log.error("waste_plan_unusable", violations=list(plan.violations)[:5], reason=reason)
            detail = "; ".join(plan.violations)[:300]
            st.alarms.set(PLANNER_ID, "plan_failed", True, SEVERITY["plan_failed"], detail)
            failed = ActivePlan(plan, plan_id, reason, day, {})
            if st.bus is not None:
                body = dict(plan_message(st, failed) or {})
                st.bus.publish(PlanEvent("waste", st.clock.now(), body))
            return prev if prev is not None else failed
        st.alarms.set(PLANNER_ID, "plan_failed", False, SEVERITY["plan_failed"])
        plan = self._without_emptied(plan)
        route_ids = {r.truck: f"{day.isoformat()}-{r.truck}-r{next(self.route_seq)}" for r in plan.routes}
        active = ActivePlan(plan, plan_id, reason, day, route_ids)
        st.active = active
        served = self._mark_bins(plan)
        for r in plan.routes:
            start = st.calendar.shift_of(r.truck, day)[0]
            self.held.pop(r.truck, None)
            if start - st.clock.now() > self.route_lead_s:
                # Another day's (or a later shift's) route: held, sent from `send_held` shortly
                # before the shift, so a truck does not start driving it now.
                self.held[r.truck] = (r, route_ids[r.truck], start)
                st.trucks[r.truck].sent_route = route_ids[r.truck]
            else:
                self.send_route(r, route_ids[r.truck], start)
        st.touch_plan()
        log.info(
            "waste_plan", reason=reason, status=plan.status, solver=plan.solver,
            routes=sum(1 for r in plan.routes if r.stops), bins=len(served),
            km=round(plan.distance_m / 1000, 1), missed=len(plan.missed_mandatory),
        )  # fmt: skip
        self.publish(active)
        return active

    def publish(self, active: ActivePlan) -> None:
        """The plan message as a PlanEvent; `day` and `selection` ride along for a restart
        (stored in the plans table; the API's WastePlanMessage leaves them out)."""
        st = self.st
        if st.bus is None:
            return
        body = dict(plan_message(st, active) or {})
        body["day"] = active.day.isoformat()
        body["selection"] = {
            b: s.kind for b, s in active.plan.selection.items() if s.kind in {"mandatory", "optional"}
        }
        st.bus.publish(PlanEvent("waste", st.clock.now(), body))

    def _mark_bins(self, plan: WastePlan) -> set[str]:
        served = {b for r in plan.routes for b in r.bins}
        for bid, bt in self.st.bins.items():
            s = plan.selection.get(bid)
            mark: Literal["mandatory", "optional", "none"] = "none"
            if s is not None and s.kind == "mandatory":
                mark = "mandatory"
            elif s is not None and s.kind == "optional" and bid in served:
                mark = "optional"
            if bt.plan != mark:
                bt.plan = mark
                self.st.touch_bin(bid)
        return served

    def _without_emptied(self, plan: WastePlan) -> WastePlan:
        """The plan without the bins emptied while the solver ran (they are done, not stops)."""

        def fresh(bid: str) -> bool:
            bt = self.st.bins[bid]
            return any(t is not None and t >= plan.made_ts for t in (bt.confirmed_ts, bt.reported_ts))

        gone = {b for r in plan.routes for b in r.bins if fresh(b)}
        if not gone:
            return plan
        routes = []
        for r in plan.routes:
            kept = [st for st in r.stops if not (st.kind == "bin" and st.id in gone)]
            routes.append(
                dataclasses.replace(
                    r, stops=tuple(dataclasses.replace(st, seq=i) for i, st in enumerate(kept))
                )
            )
        selection = {**plan.selection, **{b: Selection("done", "emptied while planning") for b in gone}}
        missed = tuple(b for b in plan.missed_mandatory if b not in gone)
        log.info("waste_plan_stale_stops_dropped", bins=sorted(gone))
        return dataclasses.replace(plan, routes=tuple(routes), selection=selection, missed_mandatory=missed)

    # -- routes -------------------------------------------------------------------------

    def send_held(self, now: float) -> None:
        for truck, (r, rid, start) in list(self.held.items()):
            if start - now <= self.route_lead_s:
                del self.held[truck]
                self.send_route(r, rid, start)

    def stop_truck(self, tt: TruckTrack) -> None:
        """A broken truck: tell it to stop (an empty route); its bins go to the others in the re-plan."""
        a = self.st.active
        if a is None:
            return
        rid = f"{a.day.isoformat()}-{tt.id}-r{next(self.route_seq)}"
        self.held.pop(tt.id, None)
        self.send_route(TruckRoute(tt.id, (), 0, self.st.clock.now()), rid)

    def send_route(self, r: TruckRoute, route_id: str, start_ts: float | None = None) -> None:
        st = self.st
        tt = st.trucks[r.truck]
        tt.sent_route = route_id
        tt.reported = set()
        st.touch_truck(r.truck)
        if self.submit is None:
            return
        now = st.clock.now()
        cmd = make_command(
            r.truck, wire.ROUTE_POINT, float(route_number(route_id)), Priority.PLAN, "waste.plan",
            now=now, ttl_s=self.command_ttl_s, reason=f"route {route_id}",
            payload=wire.route_payload(r, route_id, now, start_ts),
        )  # fmt: skip
        verdict = self.submit(cmd)
        self.routes_sent += 1
        if verdict.outcome is Outcome.REFUSED:
            log.warning("waste_route_refused", truck=r.truck, route_id=route_id, reason=verdict.reason)

    # -- restart ------------------------------------------------------------------------

    def restore(self, body: Mapping[str, object], now: float) -> bool:
        """Take today's stored plan back into force (without sending routes again)."""
        st = self.st
        got = plan_from_body(st, body)
        if got is None:
            return False
        if got.day != st.calendar.run_day(now) or got.day != st.day(now) or body.get("violations"):
            return False  # another day's plan, or one that was never in force
        st.active = got
        self.last_scheduled = got.day
        for truck, rid in got.route_ids.items():
            st.trucks[truck].sent_route = rid
        numbers = [route_number(x) for x in got.route_ids.values()]
        self.route_seq = itertools.count(max([0, *numbers]) + 1)
        self.plans_made = max(self.plans_made, 1)
        for bid, bt in st.bins.items():
            s = got.plan.selection.get(bid)
            bt.plan = "mandatory" if s is not None and s.kind == "mandatory" else "optional" if s else "none"
        st.touch_plan()
        log.info("waste_plan_restored", plan_id=got.plan_id, routes=len(got.plan.routes))
        return True
