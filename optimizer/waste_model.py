"""Waste collection: the planner's inputs, the bin selection and the prepared routing instance.

Split from optimizer/waste.py (which callers import): see there for the rules. Instance time is
integer seconds after `PlanContext.now`; distances are metres."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from edge.geo import EARTH_M
from optimizer.routing import RoutingInstance, Vehicle

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
        # Vectorised: 2,000 bins are four million pairs, 4 s in a Python loop, 0.1 s here.
        default = min(self.speeds_ms.values(), default=20 / 3.6)
        import numpy as np  # here, where the matrix is built (the solver process), not at import

        lat = np.radians(np.fromiter((p.lat for p in places), float, len(places)))
        lon = np.radians(np.fromiter((p.lon for p in places), float, len(places)))
        half = np.fromiter((0.5 / self.speeds_ms.get(p.road, default) for p in places), float, len(places))
        a = np.sin((lat[None, :] - lat[:, None]) / 2) ** 2
        a += np.outer(np.cos(lat), np.cos(lat)) * np.sin((lon[None, :] - lon[:, None]) / 2) ** 2
        dist = 2 * EARTH_M * np.arcsin(np.sqrt(np.minimum(a, 1.0))) * self.detour
        time = dist * (half[:, None] + half[None, :])
        np.fill_diagonal(dist, 0.0)
        np.fill_diagonal(time, 0.0)
        return np.rint(time).astype(np.int64).tolist(), np.rint(dist).astype(np.int64).tolist()


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
    solver_workers: int | None = None  # processes the router may use (Timer.workers); None: up to two
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
    places = [ctx.depot, ctx.disposal]
    nodes = [
        NodeInfo("depot", ctx.depot.id, ctx.depot),
        NodeInfo("disposal", ctx.disposal.id, ctx.disposal),
    ]
    active, start_node, back = _active_trucks(trucks, ctx, provider, places, nodes)
    horizon = max((max(math.floor(t.shift[1] - ctx.now), back.get(t.id, 0)) for t in active), default=0)
    horizon = max(horizon, 0)
    bin_nodes, open_nodes, unreachable = _bin_places(bins, sel, ctx, horizon, places, nodes)
    time, road = provider.matrices(places)
    n = len(places)
    first_bin = n - len(bin_nodes)
    # The objective charges each bin visit (a stop is time and wear, not only metres): a bin
    # a few percent full is not worth stopping for just because it stands on the way.
    visit = round(ctx.service_s * 20 / 3.6 if ctx.visit_m is None else ctx.visit_m)
    dist = [
        [d + visit if j >= first_bin and j != i else d for j, d in enumerate(row)]
        for i, row in enumerate(road)
    ]
    data = _NodeData.of(bin_nodes, sel, ctx, first_bin, horizon)
    # Trucks end at the depot; the router makes them unload at the disposal site first.
    node_of = {nodes[i].id: i for i in range(first_bin, n)}
    vehicles = [
        _vehicle(t, first, ctx, time, data, back.get(t.id, 0), node_of)
        for t, first in zip(active, start_node, strict=True)
    ]
    end = max((v.shift[1] for v in vehicles), default=horizon)
    if end > horizon:  # a truck's way home runs past every shift: the open windows grow with it
        for i in [*range(first_bin), *open_nodes]:
            data.window[i] = (0, end)
    inst = RoutingInstance(
        time=time,
        distance=dist,
        demand=data.demand,
        service=data.service,
        window=data.window,
        required=data.required,
        penalty=data.penalty,
        customers=list(range(first_bin, n)),
        reload=[1],
        vehicles=vehicles,
        names=[p.id for p in places],
    )
    return WasteInstance(ctx, inst, nodes, active, sel, unreachable, road)


def _active_trucks(
    trucks: Sequence[TruckInput],
    ctx: PlanContext,
    provider: DistanceProvider,
    places: list[Place],
    nodes: list[NodeInfo],
) -> tuple[list[TruckInput], list[int], dict[str, int]]:
    """The trucks with some shift left, their start nodes (a node of their own when on the road,
    appended to `places` and `nodes`) and, per truck on the road, its earliest return via the
    disposal site in seconds from now.

    A truck on the road must come home whatever its shift says: its shift end is no earlier
    than that return (facts of the past must not make the plan unusable).
    """
    on_road = [t for t in trucks if not t.at_depot]
    back: dict[str, int] = {}
    if on_road:
        pre = [ctx.depot, ctx.disposal, *(Place(f"{t.id}:here", t.lat, t.lon, "main") for t in on_road)]
        tm, _ = provider.matrices(pre)
        for i, t in enumerate(on_road, 2):
            back[t.id] = tm[i][1] + round(ctx.disposal_service_s) + tm[1][0]
    active: list[TruckInput] = []
    start_node: list[int] = []
    for t in trucks:
        if t.at_depot and t.shift[1] - max(ctx.now, t.shift[0]) <= 0:
            continue
        active.append(t)
        if t.at_depot:
            start_node.append(0)
        else:
            start_node.append(len(places))
            p = Place(f"{t.id}:here", t.lat, t.lon, "main")
            places.append(p)
            nodes.append(NodeInfo("start", t.id, p))
    return active, start_node, back


def _bin_places(
    bins: Sequence[BinInput],
    sel: Mapping[str, Selection],
    ctx: PlanContext,
    horizon: int,
    places: list[Place],
    nodes: list[NodeInfo],
) -> tuple[list[tuple[BinInput, tuple[int, int]]], list[int], list[str]]:
    """The selected bins whose window is still open, appended to `places` and `nodes`, with their
    windows; the nodes whose window is the whole horizon; the selected bins left out."""
    unreachable: list[str] = []
    bin_nodes: list[tuple[BinInput, tuple[int, int]]] = []
    open_nodes: list[int] = []
    for b in bins:
        if sel[b.id].kind not in {"mandatory", "optional"}:
            continue
        zone = ctx.zones.get(b.zone) if b.zone else None
        w = _window_rel(zone, ctx.now, horizon)
        if w is None:
            unreachable.append(b.id)
            continue
        bin_nodes.append((b, w))
        if zone is None:
            open_nodes.append(len(places))
        p = Place(b.id, b.lat, b.lon, b.road)
        places.append(p)
        nodes.append(NodeInfo("bin", b.id, p))
    return bin_nodes, open_nodes, unreachable


@dataclass(slots=True)
class _NodeData:
    """Per routing node: demand, service time, window, required, penalty (built, then frozen in)."""

    demand: list[tuple[int, ...]]
    service: list[int]
    window: list[tuple[int, int]]
    required: list[bool]
    penalty: list[int]

    @classmethod
    def of(
        cls,
        bin_nodes: Sequence[tuple[BinInput, tuple[int, int]]],
        sel: Mapping[str, Selection],
        ctx: PlanContext,
        first_bin: int,
        horizon: int,
    ) -> _NodeData:
        """Depot, disposal site and truck starts first (no demand, open), then the bins."""
        data = cls(
            [(0, 0)] * first_bin,
            [0] * first_bin,
            [(0, horizon)] * first_bin,
            [False] * first_bin,
            [0] * first_bin,
        )
        data.service[1] = round(ctx.disposal_service_s)
        for b, w in bin_nodes:
            f = b.fill_service if b.fill_service is not None else b.fill
            f = ctx.threshold if f is None else min(1.0, max(0.0, f))
            litres = b.volume_l * f / ctx.compaction
            data.demand.append((math.ceil(litres), math.ceil(b.volume_l * f * b.density_kg_l)))
            data.service.append(round(ctx.service_s))
            data.window.append(w)
            s = sel[b.id]
            data.required.append(s.kind == "mandatory")
            data.penalty.append(s.penalty)
        return data


def _vehicle(
    t: TruckInput,
    first: int,
    ctx: PlanContext,
    time: list[list[int]],
    data: _NodeData,
    back: int,
    node_of: Mapping[str, int],
) -> Vehicle:
    """The truck as a vehicle: its shift from now (stretched to its way home), its load, and the
    bin it is heading to as a committed first stop while that bin's window is still open."""
    t0 = max(0, math.ceil(t.shift[0] - ctx.now))
    t1 = max(t0, math.floor(t.shift[1] - ctx.now), back)
    load = (
        min(math.ceil(t.load_l), math.floor(t.volume_l)),
        min(math.ceil(t.load_kg), math.floor(t.weight_kg)),
    )
    fixed: tuple[int, ...] = ()
    if t.heading_to in node_of:
        k = node_of[t.heading_to]
        arrive = t0 + time[first][k]
        if arrive <= data.window[k][1]:  # a committed stop whose window has passed is dropped
            fixed = (k,)
            svc = data.service
            done = max(arrive, data.window[k][0]) + svc[k] + time[k][1] + svc[1] + time[1][0]
            t1 = max(t1, done)
    return Vehicle(
        id=t.id,
        start=first,
        end=0,
        capacity=(math.floor(t.volume_l), math.floor(t.weight_kg)),
        shift=(t0, t1),
        start_load=load,
        fixed=fixed,
    )
