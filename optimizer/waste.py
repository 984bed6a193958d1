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
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from edge.geo import haversine_m
from optimizer.common import PlanStatus, Timer
from optimizer.routing import Route, RoutingInstance, RoutingPlan, Stop, Vehicle, make_route
from optimizer.routing import check_plan as routing_check
from optimizer.routing import fallback_plan as routing_fallback
from optimizer.routing import solve as routing_solve

RoadClass = Literal["main", "residential", "pedestrian"]
SelectionKind = Literal["mandatory", "optional", "excluded", "done"]
StopKind = Literal["bin", "disposal", "depot"]

MANDATORY_ALARMS = frozenset({"fire", "overflow"})


@dataclass(frozen=True, slots=True)
class Place:
    """A point trucks drive to, with the class of road it is reached by."""

    id: str
    lat: float
    lon: float
    road: RoadClass = "main"


class DistanceProvider(Protocol):
    """Travel times and distances between places: the seam for a routing server (OSRM, Valhalla)."""

    def matrices(self, places: Sequence[Place]) -> tuple[list[list[int]], list[list[int]]]:
        """(time in s, distance in m) between every ordered pair of `places`."""
        ...


class HaversineProvider:
    """Straight line x detour factor; time at the speeds of the two ends' road classes.

    A leg is driven half at the speed of the road it leaves and half at the speed of the road
    it arrives on: a bin in a pedestrian zone is slow to reach whatever road leads there.
    """

    def __init__(self, detour: float, speeds_kmh: Mapping[str, float]) -> None:
        if detour < 1:
            raise ValueError(f"detour {detour} < 1")
        self.detour = detour
        self.speeds_ms = {k: v / 3.6 for k, v in speeds_kmh.items()}
        if any(v <= 0 for v in self.speeds_ms.values()):
            raise ValueError("speeds must be positive")

    def matrices(self, places: Sequence[Place]) -> tuple[list[list[int]], list[list[int]]]:
        n = len(places)
        default = min(self.speeds_ms.values(), default=20 / 3.6)
        inv = [0.5 / self.speeds_ms.get(p.road, default) for p in places]
        time = [[0] * n for _ in range(n)]
        dist = [[0] * n for _ in range(n)]
        for i, a in enumerate(places):
            for j in range(i + 1, n):
                b = places[j]
                d = haversine_m(a.lat, a.lon, b.lat, b.lon) * self.detour
                t = d * (inv[i] + inv[j])
                dist[i][j] = dist[j][i] = round(d)
                time[i][j] = time[j][i] = round(t)
        return time, dist


@dataclass(frozen=True, slots=True)
class BinInput:
    """One bin as the planner sees it: where, how big, how full now and at the next run."""

    id: str
    lat: float
    lon: float
    road: RoadClass
    zone: str
    volume_l: float
    density_kg_l: float
    fill: float | None  # now; None when never heard
    fill_next: float | None  # predicted at the start of the next run
    fill_service: float | None = None  # predicted when the truck would come (demand); fill if None
    alarms: frozenset[str] = frozenset()
    forced: bool = False
    excluded: bool = False
    done: bool = False  # emptied today: nothing left to do
    fill_next_hi: float | None = None  # an upper quantile of fill_next (risk); fill_next if None


@dataclass(frozen=True, slots=True)
class TruckInput:
    """A truck available for the plan: its capacity, shift, where it is and what it carries."""

    id: str
    volume_l: float
    weight_kg: float
    shift: tuple[float, float]  # Unix seconds: earliest departure, latest return to the depot
    lat: float
    lon: float
    load_l: float = 0.0
    load_kg: float = 0.0
    at_depot: bool = True
    heading_to: str = ""  # the bin it is driving to (kept first in a re-plan)


@dataclass(frozen=True, slots=True)
class PlanContext:
    """Everything else the plan depends on."""

    now: float
    next_run_ts: float  # start of the next run after this one: the horizon of "mandatory"
    threshold: float
    depot: Place
    disposal: Place
    disposal_service_s: float
    service_s: float
    zones: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # Unix window per zone
    solver_time_s: float = 10.0
    seed: int = 0
    solution_limit: int | None = None  # also stop the router after so many solutions (deterministic)
    # What collecting a bin at the threshold is worth, in metres of driving. Below the default
    # stop cost (60 s at 20 km/h = 333 m) on purpose: a bin that is not yet due is taken only
    # when it is nearly on the way and nearly full. A high value (2 km) made trucks lift every
    # half-full bin near a route: more stops and kilometres, bins emptied at 48 % on average.
    value_m: float = 300.0
    visit_m: float | None = None  # cost of one stop in metres (lifting, crew time); service_s at 20 km/h
    unknown_value: float = 0.3  # share of value_m for a bin never heard from
    compaction: float = 1.0  # bin litres per litre of truck volume (truck volumes are in bin litres)


@dataclass(frozen=True, slots=True)
class Selection:
    """Why a bin is (or is not) in the plan."""

    kind: SelectionKind
    reason: str
    penalty: int = 0  # metres: the cost of leaving an optional bin out


def select(bins: Sequence[BinInput], ctx: PlanContext) -> dict[str, Selection]:
    """Mandatory, optional (with a convex penalty) or excluded, per bin.

    Mandatory by forecast: "level + fill rate x time until the next run reaches the threshold",
    with the upper quantile standing in for the level so noise and uneven days are covered.
    """
    out: dict[str, Selection] = {}
    th = ctx.threshold
    for b in bins:
        # Order matters: an operator's exclusion wins; a force, fire or overflow is collected even
        # if the bin was emptied earlier today (it burns or overflows now); only then is done done.
        if b.excluded:
            out[b.id] = Selection("excluded", "excluded by an operator")
        elif b.forced:
            out[b.id] = Selection("mandatory", "forced by an operator")
        elif alarm := sorted(b.alarms & MANDATORY_ALARMS):
            out[b.id] = Selection("mandatory", f"alarm: {','.join(alarm)}")
        elif b.done:
            out[b.id] = Selection("done", "emptied today")
        elif b.fill is not None and b.fill >= th:
            out[b.id] = Selection("mandatory", f"fill {b.fill:.0%} at or above {th:.0%}")
        elif b.fill_next is not None and b.fill_next >= th:
            out[b.id] = Selection("mandatory", f"predicted {b.fill_next:.0%} by the next run")
        elif b.fill_next_hi is not None and b.fill_next_hi >= th:
            out[b.id] = Selection(
                "mandatory", f"predicted {b.fill_next:.0%} by the next run, could be {b.fill_next_hi:.0%}"
            )
        else:
            if b.fill_next is None:
                share, why = ctx.unknown_value, "never heard: unknown fill"
            else:
                share = min(1.0, max(0.0, b.fill_next) / th) ** 3
                why = f"predicted {b.fill_next:.0%} by the next run"
            out[b.id] = Selection("optional", why, round(ctx.value_m * share))
    return out


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What a routing node stands for."""

    kind: Literal["depot", "disposal", "start", "bin"]
    id: str
    place: Place


@dataclass(frozen=True, slots=True)
class WasteInstance:
    """The prepared instance of one plan: the routing instance, how to read it back, and the context.

    Made by `build` (selection and distance matrices included), so `solve`, `check_plan` and
    `fallback_plan` need nothing else.
    """

    ctx: PlanContext
    instance: RoutingInstance
    nodes: list[NodeInfo]
    trucks: list[TruckInput]  # the trucks that got a vehicle, in vehicle order
    selection: dict[str, Selection]
    unreachable: list[str]  # selected bins whose window is over (left out of the instance)
    road_m: list[list[int]]  # driven metres (the instance's distance adds the cost of each stop)


def _window_rel(win: tuple[float, float] | None, now: float, horizon: int) -> tuple[int, int] | None:
    if win is None:
        return 0, horizon
    a, b = math.ceil(win[0] - now), math.floor(win[1] - now)
    a, b = max(0, a), min(horizon, b)
    return (a, b) if a <= b else None


def build(
    bins: Sequence[BinInput],
    trucks: Sequence[TruckInput],
    ctx: PlanContext,
    provider: DistanceProvider,
    selection: Mapping[str, Selection] | None = None,
) -> WasteInstance:
    """The routing instance for the selected bins and the trucks with shift time left."""
    sel = dict(selection) if selection is not None else select(bins, ctx)
    now = ctx.now
    places = [ctx.depot, ctx.disposal]
    nodes = [
        NodeInfo("depot", ctx.depot.id, ctx.depot),
        NodeInfo("disposal", ctx.disposal.id, ctx.disposal),
    ]
    # Trucks: those with some shift left.
    active: list[TruckInput] = []
    start_node: list[int] = []
    # A truck on the road must come home whatever its shift says: its shift end is no earlier
    # than its earliest return via the disposal site (facts of the past must not make the plan unusable).
    on_road = [t for t in trucks if not t.at_depot]
    back: dict[str, int] = {}
    if on_road:
        pre = [ctx.depot, ctx.disposal, *(Place(f"{t.id}:here", t.lat, t.lon, "main") for t in on_road)]
        tm, _ = provider.matrices(pre)
        for i, t in enumerate(on_road, 2):
            back[t.id] = tm[i][1] + round(ctx.disposal_service_s) + tm[1][0]
    for t in trucks:
        if t.at_depot and t.shift[1] - max(now, t.shift[0]) <= 0:
            continue
        active.append(t)
        if t.at_depot:
            start_node.append(0)
        else:
            start_node.append(len(places))
            p = Place(f"{t.id}:here", t.lat, t.lon, "main")
            places.append(p)
            nodes.append(NodeInfo("start", t.id, p))
    horizon = max((max(math.floor(t.shift[1] - now), back.get(t.id, 0)) for t in active), default=0)
    horizon = max(horizon, 0)
    candidates = [b for b in bins if sel[b.id].kind in {"mandatory", "optional"}]
    unreachable: list[str] = []
    bin_nodes: list[tuple[BinInput, tuple[int, int]]] = []
    open_nodes: list[int] = []  # nodes whose window is the whole horizon
    for b in candidates:
        zone = ctx.zones.get(b.zone) if b.zone else None
        w = _window_rel(zone, now, horizon)
        if w is None:
            unreachable.append(b.id)
            continue
        bin_nodes.append((b, w))
        if zone is None:
            open_nodes.append(len(places))
        p = Place(b.id, b.lat, b.lon, b.road)
        places.append(p)
        nodes.append(NodeInfo("bin", b.id, p))
    time, road = provider.matrices(places)
    # The objective charges each bin visit (a stop is time and wear, not only metres): a bin
    # a few percent full is not worth stopping for just because it stands on the way.
    visit = round(ctx.service_s * 20 / 3.6 if ctx.visit_m is None else ctx.visit_m)
    n_places = len(places)
    first = n_places - len(bin_nodes)
    dist = [
        [d + visit if j >= first and j != i else d for j, d in enumerate(row)] for i, row in enumerate(road)
    ]

    n = len(places)
    first_bin = n - len(bin_nodes)
    demand: list[tuple[int, ...]] = [(0, 0)] * first_bin
    service = [0] * first_bin
    service[1] = round(ctx.disposal_service_s)
    window = [(0, horizon)] * first_bin
    required = [False] * first_bin
    penalty = [0] * first_bin
    for b, w in bin_nodes:
        f = b.fill_service if b.fill_service is not None else b.fill
        f = ctx.threshold if f is None else min(1.0, max(0.0, f))
        litres = b.volume_l * f / ctx.compaction
        demand.append((math.ceil(litres), math.ceil(b.volume_l * f * b.density_kg_l)))
        service.append(round(ctx.service_s))
        window.append(w)
        s = sel[b.id]
        required.append(s.kind == "mandatory")
        penalty.append(s.penalty)
    # Trucks end at the depot; the router makes them unload at the disposal site first.
    node_of = {nodes[i].id: i for i in range(first_bin, n)}
    vehicles = []
    for t, first in zip(active, start_node, strict=True):
        t0 = max(0, math.ceil(t.shift[0] - now))
        t1 = max(t0, math.floor(t.shift[1] - now), back.get(t.id, 0))
        load = (
            min(math.ceil(t.load_l), math.floor(t.volume_l)),
            min(math.ceil(t.load_kg), math.floor(t.weight_kg)),
        )
        fixed: tuple[int, ...] = ()
        if t.heading_to in node_of:
            k = node_of[t.heading_to]
            arrive = t0 + time[first][k]
            if arrive <= window[k][1]:  # a committed stop whose window has passed is dropped
                fixed = (k,)
                done = max(arrive, window[k][0]) + service[k] + time[k][1] + service[1] + time[1][0]
                t1 = max(t1, done)
        vehicles.append(
            Vehicle(
                id=t.id,
                start=first,
                end=0,
                capacity=(math.floor(t.volume_l), math.floor(t.weight_kg)),
                shift=(t0, t1),
                start_load=load,
                fixed=fixed,
            )
        )
    end = max((v.shift[1] for v in vehicles), default=horizon)
    if end > horizon:  # a truck's way home runs past every shift: the open windows grow with it
        for i in [*range(first_bin), *open_nodes]:
            window[i] = (0, end)
    inst = RoutingInstance(
        time=time,
        distance=dist,
        demand=demand,
        service=service,
        window=window,
        required=required,
        penalty=penalty,
        customers=list(range(first_bin, n)),
        reload=[1],
        vehicles=vehicles,
        names=[p.id for p in places],
    )
    return WasteInstance(ctx, inst, nodes, active, sel, unreachable, road)


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

    `timer` defaults to the wall clock with the context's `solver_time_s`, `solution_limit` and `seed`. When the
    mandatory bins cannot all be served (too little truck time or capacity), the instance is
    solved again with them optional at a very high penalty, so the trucks still collect as many
    of them as they can; the plan's status is then "infeasible" and the bins left out are listed
    in `missed_mandatory`. The time limit covers both solves.
    """
    built, ctx = instance, instance.ctx
    timer = timer or Timer(time_limit_s=ctx.solver_time_s, solution_limit=ctx.solution_limit, seed=ctx.seed)
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
