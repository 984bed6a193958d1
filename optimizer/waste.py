"""Waste collection planning (pure): which bins to collect, and the routes that collect them.

`select` decides per bin: mandatory when its fill at the start of the next run (the next
chance to collect it) could reach the threshold: the forecast or its upper quantile
(`BinInput.fill_next_hi`, from the estimator's learned forecast spread), so an uncertain bin
is collected a run early rather than overflow; also on an alarm such as fire or overflow, or
when an operator forced it. Otherwise optional with a penalty that grows convexly with the
fill and stays below the cost of a stop (a nearly full bin on the way is taken, a half-full
one is not), never when excluded or already done. Fewer run days a week are what saves
kilometres (each truck-day costs its depot and disposal legs); the risk rule is what makes
them safe.
`build` turns the selection, the trucks (at the depot, or on the road with a load for a
re-plan) and a `DistanceProvider` into a `RoutingInstance`: a depot, the disposal site as a
reload node, a final disposal stop before the trucks go home, bins with volume and weight,
service times and zone time windows. `solve` solves that prepared `WasteInstance` with optimizer/routing.py,
maps the result back to stops with ETAs (Unix seconds) and runs the solver-independent check;
`check_plan` checks a finished plan from its stops alone; `plan_collection` is build + solve.

Instance time is integer seconds after `PlanContext.now`; distances are metres.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from optimizer.common import PlanStatus, Timer
from optimizer.routing import Route, RoutingInstance, RoutingPlan, Stop, make_route
from optimizer.routing import check_plan as routing_check
from optimizer.routing import fallback_plan as routing_fallback
from optimizer.routing import solve as routing_solve
from optimizer.waste_model import (
    MANDATORY_ALARMS,
    BinInput,
    DistanceProvider,
    HaversineProvider,
    NodeInfo,
    Place,
    PlanContext,
    RoadClass,
    Selection,
    SelectionKind,
    StopKind,
    TruckInput,
    WasteInstance,
    build,
    select,
)

__all__ = [
    "MANDATORY_ALARMS",
    "BinInput",
    "DistanceProvider",
    "HaversineProvider",
    "NodeInfo",
    "Place",
    "PlanContext",
    "PlannedStop",
    "RoadClass",
    "Selection",
    "SelectionKind",
    "StopKind",
    "TruckInput",
    "TruckRoute",
    "WasteInstance",
    "WastePlan",
    "build",
    "check_plan",
    "fallback_plan",
    "plan_collection",
    "select",
    "solve",
]


@dataclass(frozen=True, slots=True)
class PlannedStop:
    """One stop of a truck's route, with when it is expected there."""

    seq: int
    kind: StopKind
    id: str
    lat: float
    lon: float
    eta_ts: float
    window: tuple[float, float] | None = None  # Unix seconds, for bins in a restricted zone
    load_l: float = 0.0  # on board after the stop
    load_kg: float = 0.0


@dataclass(frozen=True, slots=True)
class TruckRoute:
    truck: str
    stops: tuple[PlannedStop, ...]
    distance_m: int
    end_ts: float  # back at the depot

    @property
    def bins(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.stops if s.kind == "bin")


@dataclass(frozen=True, slots=True)
class WastePlan:
    """The collection plan: routes per truck, what was selected, what was left out and why."""

    made_ts: float
    routes: tuple[TruckRoute, ...]
    selection: Mapping[str, Selection]
    dropped: tuple[str, ...]  # selected bins not in any route (optional ones left out, or worse)
    missed_mandatory: tuple[str, ...]  # mandatory bins no route serves
    status: str  # a PlanStatus value: "optimal" | "feasible" | "fallback" | "infeasible"
    solver: str
    distance_m: int
    violations: tuple[str, ...] = ()
    wall_s: float = 0.0

    @property
    def usable(self) -> bool:
        """A plan trucks may follow: the independent check found nothing."""
        return not self.violations

    def route_of(self, truck: str) -> TruckRoute | None:
        return next((r for r in self.routes if r.truck == truck), None)


Solver = Callable[..., RoutingPlan]
Checker = Callable[[RoutingInstance, RoutingPlan], list[str]]


def _map_route(built: WasteInstance, route: Route, truck: TruckInput, ctx: PlanContext) -> TruckRoute:
    inst, nodes, now = built.instance, built.nodes, ctx.now
    stops: list[PlannedStop] = []
    start = next(v.start for v in inst.vehicles if v.id == truck.id)
    horizon = inst.window[0][1]
    for s in route.stops:
        info = nodes[s.node]
        kind: StopKind = "bin" if info.kind == "bin" else "disposal" if info.kind == "disposal" else "depot"
        w = None
        if kind == "bin":
            a, b = inst.window[s.node]
            if (a, b) != (0, horizon):
                w = (now + a, now + b)
        load = (*s.load, 0, 0)
        p = info.place
        stops.append(
            PlannedStop(
                len(stops), kind, info.id, p.lat, p.lon, now + s.arrival, w, float(load[0]), float(load[1])
            )
        )
    if not stops and start == 0:
        return TruckRoute(truck.id, (), 0, max(now, truck.shift[0]))  # nothing to do: stay home
    depot = ctx.depot
    stops.append(PlannedStop(len(stops), "depot", depot.id, depot.lat, depot.lon, now + route.end_time))
    driven = _driven(built, start, [s.node for s in route.stops])
    return TruckRoute(truck.id, tuple(stops), driven, now + route.end_time)


def _relaxed(inst: RoutingInstance, big: int) -> RoutingInstance:
    """The same instance with every mandatory bin optional at a very high penalty."""
    return replace(
        inst,
        required=[False] * inst.size,
        penalty=[big if r else p for r, p in zip(inst.required, inst.penalty, strict=True)],
    )


def plan_collection(
    bins: Sequence[BinInput],
    trucks: Sequence[TruckInput],
    ctx: PlanContext,
    provider: DistanceProvider,
    *,
    solver: Solver = routing_solve,
    checker: Checker = routing_check,
) -> WastePlan:
    """Select, build, solve, map back and check: the day's (or a re-plan's) collection plan."""
    return solve(build(bins, trucks, ctx, provider), solver=solver, checker=checker)


def solve(
    instance: WasteInstance,
    *,
    timer: Timer | None = None,
    solver: Solver = routing_solve,
    checker: Checker = routing_check,
) -> WastePlan:
    """Solve the prepared instance and map the routes back to stops with ETAs.

    `timer` defaults to the wall clock with the context's `solver_time_s`, `solution_limit`, `seed`
    and `solver_workers`. When the mandatory bins cannot all be served (too little truck time or
    capacity), the instance is solved again with them optional at a very high penalty, so the
    trucks still collect as many of them as they can; the plan's status is then "infeasible" and the bins left out are listed
    in `missed_mandatory`. The time limit covers both solves.
    """
    built, ctx = instance, instance.ctx
    timer = timer or Timer(
        time_limit_s=ctx.solver_time_s,
        solution_limit=ctx.solution_limit,
        seed=ctx.seed,
        workers=ctx.solver_workers,
    )
    inst = built.instance
    if not inst.vehicles:  # no truck with shift time left: nothing can be collected
        return _no_trucks(built)
    limit = timer.limit(ctx.solver_time_s)
    t0 = timer()
    plan = solver(inst, timer=replace(timer, time_limit_s=limit))
    used = inst
    violations = tuple(plan.violations)
    if plan.status is PlanStatus.INFEASIBLE and any(inst.required):
        # The router's infeasible plan already serves as many required bins as it could: if all
        # it breaks is the bins it left out, it is the plan. Otherwise solve the relaxed instance,
        # within what is left of the time limit (never twice the limit).
        big = 10 * (sum(max(row) for row in inst.distance) + 1)
        used = _relaxed(inst, big)
        violations = tuple(checker(used, plan))
        if violations:
            left = limit - (timer() - t0)
            plan = solver(used, timer=replace(timer, time_limit_s=max(0.1, left)))
            violations = tuple(plan.violations)
    violations = violations or tuple(checker(used, plan))
    return _waste_plan(built, plan, violations)


def _waste_plan(built: WasteInstance, plan: RoutingPlan, violations: tuple[str, ...]) -> WastePlan:
    """The routing plan read back as truck routes, with what was dropped or missed."""
    ctx, sel = built.ctx, built.selection
    mandatory = {b for b, s in sel.items() if s.kind == "mandatory"}
    by_truck = {r.vehicle: r for r in plan.routes}
    routes = tuple(_map_route(built, by_truck.get(t.id, Route(t.id, (), 0, 0)), t, ctx) for t in built.trucks)
    served = {s.id for r in routes for s in r.stops if s.kind == "bin"}
    chosen = {b for b, s in sel.items() if s.kind in {"mandatory", "optional"}}
    missed = tuple(sorted(mandatory - served))
    return WastePlan(
        made_ts=ctx.now,
        routes=routes,
        selection=sel,
        dropped=tuple(sorted(chosen - served)),
        missed_mandatory=missed,
        status=PlanStatus.INFEASIBLE.value if missed else str(plan.status),
        solver=plan.solver,
        distance_m=sum(r.distance_m for r in routes),
        violations=violations,
        wall_s=plan.wall_s,
    )


def _no_trucks(built: WasteInstance) -> WastePlan:
    """The plan when no truck has shift time left: nothing can be collected."""
    sel = built.selection
    listed = sorted(b for b, s in sel.items() if s.kind in {"mandatory", "optional"})
    missed = tuple(b for b in listed if sel[b].kind == "mandatory")
    return WastePlan(
        made_ts=built.ctx.now,
        routes=(),
        selection=sel,
        dropped=tuple(listed),
        missed_mandatory=missed,
        status=PlanStatus.INFEASIBLE.value if missed else PlanStatus.OPTIMAL.value,
        solver="none",
        distance_m=0,
    )


def fallback_plan(instance: WasteInstance) -> WastePlan:
    """The collection plan without a solver: the router's constructive plan, read back."""
    if not instance.instance.vehicles:
        return _no_trucks(instance)
    plan = routing_fallback(instance.instance)
    return _waste_plan(instance, plan, plan.violations)


def check_plan(instance: WasteInstance, plan: WastePlan) -> list[str]:
    """Every way `plan` breaks `instance`, from the plan's stops alone (no solver state).

    The truck routes are read back into routing nodes and checked by the router's own checker,
    with mandatory bins the plan lists as missed counted as optional (a plan that cannot serve
    them says so in `missed_mandatory`); then dropped, missed and driven metres are recomputed.
    """
    built, inst = instance, instance.instance
    node_of = {info.id: i for i, info in enumerate(built.nodes) if info.kind in {"bin", "disposal"}}
    vehicles = {v.id: v for v in inst.vehicles}
    out: list[str] = []
    routes: list[Route] = []
    for r in plan.routes:
        v = vehicles.get(r.truck)
        if v is None:
            out.append(f"route for unknown truck {r.truck!r}")
            continue
        visits = [s for s in r.stops if s.kind != "depot"]
        unknown = [s.id for s in visits if s.id not in node_of]
        if unknown:
            out.append(f"truck {r.truck} visits unknown stops {unknown}")
            continue
        nodes = [node_of[s.id] for s in visits]
        made = make_route(inst, v, nodes)
        stops = tuple(
            Stop(n, round(s.eta_ts - plan.made_ts), (round(s.load_l), round(s.load_kg)))
            for n, s in zip(nodes, visits, strict=True)
        )
        end = round(r.end_ts - plan.made_ts) if r.stops else made.end_time
        routes.append(Route(v.id, stops, end, made.distance))
        driven = _driven(built, v.start, nodes)
        if r.stops and driven != r.distance_m:
            out.append(f"truck {r.truck}: stated {r.distance_m} m driven != recomputed {driven} m")
    served = {n for r in routes for s in r.stops for n in [s.node] if n in inst.customers}
    missed_nodes = {node_of[b] for b in plan.missed_mandatory if b in node_of}
    used = replace(inst, required=[q and i not in missed_nodes for i, q in enumerate(inst.required)])
    dropped = tuple(c for c in inst.customers if c not in served)
    penalty = sum(used.penalty[c] for c in dropped if not used.required[c])
    rplan = RoutingPlan(
        tuple(routes), dropped, sum(r.distance for r in routes), penalty, PlanStatus.FEASIBLE, "", 0.0
    )
    out += routing_check(used, rplan)
    sel = built.selection
    names = {built.nodes[c].id for c in served}
    chosen = {b for b, s in sel.items() if s.kind in {"mandatory", "optional"}}
    if tuple(sorted(chosen - names)) != tuple(plan.dropped):
        out.append(f"stated dropped {list(plan.dropped)} != recomputed {sorted(chosen - names)}")
    missed = sorted(b for b in chosen - names if sel[b].kind == "mandatory")
    if tuple(missed) != tuple(plan.missed_mandatory):
        out.append(f"stated missed {list(plan.missed_mandatory)} != recomputed {missed}")
    return out


def _driven(built: WasteInstance, start: int, nodes: Sequence[int]) -> int:
    """Road metres of a route from `start` through `nodes` and home to the depot."""
    return sum(built.road_m[a][b] for a, b in itertools.pairwise([start, *nodes, 0]))
