"""Waste planner: selection rules, distances, and feasible plans on random small instances.

Every plan is checked twice: by optimizer/routing.py's solver-independent `check` (inside
`plan_collection`, reported as violations) and by this file's own walk over the stops
(capacity with unloading, zone windows, shifts, every mandatory bin once, nothing excluded).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.geo import haversine_m
from optimizer.common import Timer
from optimizer.waste import (
    BinInput,
    HaversineProvider,
    Place,
    PlanContext,
    TruckInput,
    WastePlan,
    build,
    check_plan,
    fallback_plan,
    plan_collection,
    select,
)
from optimizer.waste import solve as waste_solve

NOW = 1_795_670_000.0
SPEEDS = {"main": 30.0, "residential": 20.0, "pedestrian": 8.0}
PROVIDER = HaversineProvider(1.3, SPEEDS)
DEPOT = Place("depot", 51.500, 7.440)
DISPOSAL = Place("disposal", 51.520, 7.470)


# Quality never rests on a short wall-clock budget: the router stops after a fixed number of
# solutions or iterations (seeded: the same plan on any machine); the time is a safety net.
SOLVER_S = 20.0


def ctx(**kw: object) -> PlanContext:
    base: dict[str, object] = dict(
        now=NOW, next_run_ts=NOW + 86400, threshold=0.8, depot=DEPOT, disposal=DISPOSAL,
        disposal_service_s=600, service_s=60, solver_time_s=SOLVER_S, solution_limit=200,
    )  # fmt: skip
    base.update(kw)
    return PlanContext(**base)  # type: ignore[arg-type]


def bin_(i: int, fill: float | None, nxt: float | None = None, **kw: object) -> BinInput:
    base: dict[str, object] = dict(
        id=f"B{i}", lat=51.505 + 0.001 * (i % 10), lon=7.445 + 0.002 * (i // 10), road="residential",
        zone="", volume_l=1100.0, density_kg_l=0.12, fill=fill, fill_next=fill if nxt is None else nxt,
    )  # fmt: skip
    base.update(kw)
    return BinInput(**base)  # type: ignore[arg-type]


def truck(tid: str, hours: float = 8.0, **kw: object) -> TruckInput:
    base: dict[str, object] = dict(
        id=tid, volume_l=16_000.0, weight_kg=9_000.0, shift=(NOW + 600, NOW + 600 + hours * 3600),
        lat=DEPOT.lat, lon=DEPOT.lon,
    )  # fmt: skip
    base.update(kw)
    return TruckInput(**base)  # type: ignore[arg-type]


def test_haversine_provider() -> None:
    """Distances are the great circle times the detour; time uses both ends' road speeds."""
    a = Place("a", 51.5, 7.45, "main")
    b = Place("b", 51.51, 7.45, "main")
    c = Place("c", 51.51, 7.45, "pedestrian")
    time, dist = PROVIDER.matrices([a, b, c])
    straight = haversine_m(51.5, 7.45, 51.51, 7.45)
    assert straight == pytest.approx(1112, rel=0.01)  # 0.01 degree of latitude
    assert dist[0][1] == round(straight * 1.3)
    assert dist[1][0] == dist[0][1]
    assert dist[1][2] == 0
    assert time[0][1] == round(straight * 1.3 / (30 / 3.6))
    # a pedestrian-zone end: half the leg at 8 km/h
    assert time[0][2] == round(straight * 1.3 * (0.5 / (30 / 3.6) + 0.5 / (8 / 3.6)))
    assert time[0][2] > time[0][1]


def test_selection_rules() -> None:
    """Mandatory at or above the threshold now or by the next run, on fire/overflow, when forced;
    optional otherwise with a penalty convex in the predicted fill; excluded never, done only if
    nothing makes it mandatory."""
    bins = [
        bin_(0, 0.85),
        bin_(1, 0.6, 0.82),
        bin_(2, 0.2, alarms=frozenset({"fire"})),
        bin_(3, 0.99, alarms=frozenset({"overflow"})),
        bin_(4, 0.1, forced=True),
        bin_(5, 0.95, excluded=True),
        bin_(6, 0.9, done=True),
        bin_(7, 0.2, 0.2),
        bin_(8, 0.4, 0.4),
        bin_(9, 0.6, 0.6),
        bin_(10, None, None),
        bin_(11, 0.3, 0.3, alarms=frozenset({"tilt"})),
    ]
    sel = select(bins, ctx())
    kinds = {b: s.kind for b, s in sel.items()}
    assert kinds == {
        "B0": "mandatory", "B1": "mandatory", "B2": "mandatory", "B3": "mandatory", "B4": "mandatory",
        "B5": "excluded", "B6": "done", "B7": "optional", "B8": "optional", "B9": "optional",
        "B10": "optional", "B11": "optional",
    }  # fmt: skip
    p = [sel[f"B{i}"].penalty for i in (7, 8, 9)]
    assert 0 < p[0] < p[1] < p[2] < 2000
    # convex: the step from 40 to 60 % is worth more than the step from 20 to 40 %
    assert p[2] - p[1] > p[1] - p[0]
    assert "fire" in sel["B2"].reason


def walk(plan: WastePlan, bins: Sequence[BinInput], trucks: Sequence[TruckInput], c: PlanContext) -> None:
    """Our own feasibility walk over a plan's stops (independent of routing.check_plan), and the
    planner's own stop-based check."""
    assert plan.usable, plan.violations
    assert check_plan(build(bins, trucks, c, PROVIDER), plan) == []
    by_id = {b.id: b for b in bins}
    seen: list[str] = []
    for r in plan.routes:
        t = next(x for x in trucks if x.id == r.truck)
        load_l, load_kg = t.load_l, t.load_kg
        last_eta = -math.inf
        for s in r.stops:
            assert s.eta_ts >= last_eta - 1e-6, "stops out of time order"
            last_eta = s.eta_ts
            assert t.shift[0] - 1 <= s.eta_ts <= t.shift[1] + 1, f"{s.id} outside {t.id}'s shift"
            if s.kind == "disposal":
                load_l = load_kg = 0.0
            elif s.kind == "bin":
                b = by_id[s.id]
                f = b.fill_service if b.fill_service is not None else b.fill
                f = c.threshold if f is None else min(1.0, f)
                load_l += math.ceil(b.volume_l * f)
                load_kg += math.ceil(b.volume_l * f * b.density_kg_l)
                assert load_l <= t.volume_l + 1e-6, f"{t.id} over volume at {s.id}"
                assert load_kg <= t.weight_kg + 1e-6, f"{t.id} over weight at {s.id}"
                if b.zone:
                    a, e = c.zones[b.zone]
                    assert a - 1 <= s.eta_ts <= e + 1, f"{s.id} served outside its zone window"
                seen.append(s.id)
        if r.stops:
            assert r.stops[-1].kind == "depot"
            assert load_l == 0 or r.stops[-2].kind == "disposal" or not r.bins, "home with a load"
            assert r.end_ts <= t.shift[1] + 1
    assert len(seen) == len(set(seen)), "a bin visited twice"
    sel = plan.selection
    for bid in seen:
        assert sel[bid].kind in {"mandatory", "optional"}
    for bid, choice in sel.items():
        if choice.kind == "mandatory" and bid not in plan.missed_mandatory:
            assert bid in seen


@st.composite
def instances(draw: st.DrawFn) -> tuple[list[BinInput], list[TruckInput], PlanContext]:
    n = draw(st.integers(3, 14))
    zone_open = draw(st.integers(0, 4)) * 1800
    zones = {"fuzo": (NOW + 600 + zone_open, NOW + 600 + zone_open + 2 * 3600)}
    bins = []
    for i in range(n):
        fill = draw(st.floats(0.0, 1.0))
        nxt = min(1.0, fill + draw(st.floats(0.0, 0.5)))
        bins.append(
            BinInput(
                id=f"B{i}",
                lat=51.500 + draw(st.floats(0.0, 0.02)),
                lon=7.440 + draw(st.floats(0.0, 0.03)),
                road=draw(st.sampled_from(["main", "residential", "pedestrian"])),
                zone=draw(st.sampled_from(["", "", "fuzo"])),
                volume_l=draw(st.sampled_from([240.0, 660.0, 1100.0])),
                density_kg_l=draw(st.floats(0.05, 0.3)),
                fill=fill,
                fill_next=nxt,
                fill_service=min(1.0, fill + 0.05),
                alarms=frozenset(draw(st.sampled_from([(), (), ("fire",), ("overflow",)]))),
                forced=draw(st.booleans()) and draw(st.booleans()),
                excluded=draw(st.integers(0, 9)) == 0,
                done=draw(st.integers(0, 9)) == 0,
            )
        )
    k = draw(st.integers(1, 3))
    trucks = [
        truck(
            f"T{j}",
            hours=draw(st.sampled_from([4.0, 6.0, 8.0])),
            # small trucks force trips to the disposal site
            volume_l=draw(st.sampled_from([2500.0, 5000.0, 16_000.0])),
            weight_kg=draw(st.sampled_from([600.0, 9000.0])),
        )
        for j in range(k)
    ]
    return bins, trucks, ctx(zones=zones, solver_time_s=SOLVER_S)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_random_instances_feasible(inst: tuple[list[BinInput], list[TruckInput], PlanContext]) -> None:
    """Random small waste instances: every mandatory bin served, no capacity, window or shift broken."""
    bins, trucks, c = inst
    plan = plan_collection(bins, trucks, c, PROVIDER)
    # With several hours of shift and trips to the disposal site every bin here fits.
    assert plan.missed_mandatory == ()
    assert plan.status in {"optimal", "feasible", "fallback"}
    walk(plan, bins, trucks, c)
    for b in bins:
        must = b.forced or bool(b.alarms & {"fire", "overflow"})
        if b.excluded or (b.done and not must):
            assert all(b.id not in r.bins for r in plan.routes)


def test_reload_trips_when_full() -> None:
    """Twenty full 1100 l bins and a 5000 l truck: it unloads on the way (reload) and gets them all."""
    bins = [bin_(i, 0.9) for i in range(20)]
    trucks = [truck("T1", volume_l=5000.0)]
    c = ctx(solver_time_s=SOLVER_S)
    plan = plan_collection(bins, trucks, c, PROVIDER)
    walk(plan, bins, trucks, c)
    r = plan.routes[0]
    assert len(r.bins) == 20
    assert sum(1 for s in r.stops if s.kind == "disposal") >= 4  # 20 x 990 l in loads of <= 5000 l
    assert plan.distance_m == r.distance_m > 0


def test_infeasible_mandatory_reported() -> None:
    """More mandatory work than one short shift allows: the plan serves what it can, stays
    feasible for the trucks, and names the mandatory bins it misses."""
    bins = [bin_(i, 0.9, lat=51.40 + 0.01 * i, lon=7.30 + 0.01 * i) for i in range(12)]
    trucks = [truck("T1", hours=1.0)]
    c = ctx(solver_time_s=SOLVER_S)
    plan = plan_collection(bins, trucks, c, PROVIDER)
    assert plan.status == "infeasible"
    assert plan.missed_mandatory
    assert plan.usable
    walk(plan, bins, trucks, c)
    served = set(plan.routes[0].bins)
    assert served
    assert served | set(plan.missed_mandatory) == {b.id for b in bins}


def test_no_truck_time_left() -> None:
    """After every shift has ended nothing can be planned: all mandatory bins are missed."""
    bins = [bin_(0, 0.9), bin_(1, 0.1)]
    trucks = [truck("T1", shift=(NOW - 9 * 3600, NOW - 3600))]
    plan = plan_collection(bins, trucks, ctx(), PROVIDER)
    assert plan.routes == ()
    assert plan.missed_mandatory == ("B0",)
    assert plan.status == "infeasible"


def test_replan_from_the_road() -> None:
    """A re-plan: a truck on the road with a load starts where it is, drives first to the bin it
    was heading for, unloads before going home; bins already done stay out; a broken truck's bins
    (it is simply not among the trucks) go to the other truck."""
    bins = [bin_(i, 0.9) for i in range(8)] + [bin_(8, 0.9, done=True), bin_(9, 0.9, done=True)]
    here = (51.507, 7.447)
    trucks = [
        truck("T2", lat=here[0], lon=here[1], at_depot=False, load_l=3000.0, load_kg=300.0, heading_to="B5")
    ]
    c = ctx(solver_time_s=SOLVER_S)
    built = build(bins, trucks, c, PROVIDER)
    v = built.instance.vehicles[0]
    assert v.start != 0
    assert built.nodes[v.start].place.lat == here[0]
    assert v.start_load == (3000, 300)
    assert [built.nodes[f].id for f in v.fixed] == ["B5"]
    plan = plan_collection(bins, trucks, c, PROVIDER)
    walk(plan, bins, trucks, c)
    r = plan.routes[0]
    assert r.stops[0].id == "B5"
    assert set(r.bins) == {f"B{i}" for i in range(8)}
    assert "disposal" in [s.kind for s in r.stops]


def test_idle_truck_with_a_load_unloads() -> None:
    """A truck on the road with waste on board and nothing left to collect still unloads, then goes home."""
    trucks = [truck("T1", lat=51.51, lon=7.45, at_depot=False, load_l=2000.0, load_kg=200.0)]
    plan = plan_collection([bin_(0, 0.1, done=True)], trucks, ctx(), PROVIDER)
    kinds = [s.kind for s in plan.routes[0].stops]
    assert kinds == ["disposal", "depot"]
    walk(plan, [bin_(0, 0.1, done=True)], trucks, ctx())


def test_zone_window_past_is_dropped() -> None:
    """A bin whose pedestrian-zone window is over today cannot be planned: it is dropped, not forced."""
    c = ctx(zones={"fuzo": (NOW - 7200, NOW - 3600)})
    bins = [bin_(0, 0.5, zone="fuzo"), bin_(1, 0.9)]
    plan = plan_collection(bins, [truck("T1")], c, PROVIDER)
    assert "B0" in plan.dropped
    assert plan.routes[0].bins == ("B1",)


def test_selection_risk_margin_and_half_full_bins() -> None:
    """A bin whose forecast stays below the threshold but whose upper quantile reaches it is
    mandatory (it could overflow before the next chance to collect it); one whose upper
    quantile stays below is optional. With the default value, a half-full bin is worth less
    than the cost of stopping at it, so it is not lifted just because it stands on the way."""
    c = ctx()
    bins = [
        bin_(0, 0.5, 0.7, fill_next_hi=0.85),
        bin_(1, 0.5, 0.7, fill_next_hi=0.75),
        bin_(2, 0.3, 0.5),
        bin_(3, 0.7, c.threshold),
    ]
    sel = select(bins, c)
    assert sel["B0"].kind == "mandatory"
    assert "could be 85%" in sel["B0"].reason
    assert sel["B1"].kind == "optional"
    visit_m = c.service_s * 20 / 3.6  # the stop cost build() charges by default
    assert sel["B2"].penalty < 0.5 * visit_m
    assert sel["B3"].kind == "mandatory"
    assert select([bin_(4, 0.7, 0.79)], c)["B4"].penalty > sel["B2"].penalty


def test_replan_at_the_end_of_a_shift_stays_usable() -> None:
    """A truck on the road whose shift is (nearly) over still gets a usable route home via the
    disposal site, and a committed stop whose zone window has passed is dropped, not forced."""
    here = (51.515, 7.455)
    c = ctx(zones={"fuzo": (NOW - 7200, NOW + 30)})
    bins = [bin_(0, 0.9, zone="fuzo"), bin_(1, 0.9)]
    for end in (NOW + 60, NOW - 600):
        trucks = [
            truck(
                "T1", shift=(NOW - 8 * 3600, end), lat=here[0], lon=here[1], at_depot=False,
                load_l=3000.0, load_kg=300.0, heading_to="B0",
            )
        ]  # fmt: skip
        built = build(bins, trucks, c, PROVIDER)
        assert built.instance.vehicles[0].fixed == ()
        plan = plan_collection(bins, trucks, c, PROVIDER)
        assert plan.usable, plan.violations
        assert [s.kind for s in plan.routes[0].stops][-2:] == ["disposal", "depot"]


def test_selection_order_mandatory_before_done() -> None:
    """Excluded wins over everything; a forced, burning or overflowing bin is collected even if it
    was emptied earlier today; a done bin with no such reason stays out."""
    bins = [
        bin_(0, 0.1, forced=True, done=True),
        bin_(1, 0.1, alarms=frozenset({"fire"}), done=True),
        bin_(2, 0.99, alarms=frozenset({"overflow"}), done=True),
        bin_(3, 0.9, done=True),
        bin_(4, 0.9, forced=True, excluded=True, done=True),
    ]
    kinds = {b: s.kind for b, s in select(bins, ctx()).items()}
    assert kinds == {"B0": "mandatory", "B1": "mandatory", "B2": "mandatory", "B3": "done", "B4": "excluded"}


def test_an_infeasible_plan_stays_within_the_time_limit() -> None:
    """Mandatory bins that cannot all be served: the solver is given the time limit once in all,
    not again for a relaxed re-solve. A fake clock stands for a router that uses its whole budget."""
    from optimizer.routing import solve

    limits: list[float] = []
    now = [0.0]

    def counting(inst: object, *, timer: Timer) -> object:
        assert timer.time_limit_s is not None
        limits.append(timer.time_limit_s)
        plan = solve(inst, timer=replace(timer, clock=time.perf_counter, time_limit_s=SOLVER_S))  # type: ignore[arg-type]
        now[0] += timer.time_limit_s
        return plan

    bins = [bin_(i, 0.9, lat=51.40 + 0.01 * i, lon=7.30 + 0.01 * i) for i in range(12)]
    c = ctx(solver_time_s=0.5)
    built = build(bins, [truck("T1", hours=1.0)], c, PROVIDER)
    timer = Timer(clock=lambda: now[0], time_limit_s=0.5, solution_limit=200)
    plan = waste_solve(built, timer=timer, solver=counting)  # type: ignore[arg-type]
    assert plan.missed_mandatory
    assert plan.usable
    assert len(limits) == 2  # the relaxed re-solve ran
    assert limits[0] == c.solver_time_s
    assert sum(limits) <= c.solver_time_s + 0.1


def test_fallback_plan_and_check_plan_agree() -> None:
    """The solver-free plan passes the stop-based check; a plan with a stop moved earlier, a bin
    claimed twice or a wrong distance does not."""
    bins = [bin_(i, 0.9) for i in range(6)]
    trucks = [truck("T1")]
    c = ctx()
    built = build(bins, trucks, c, PROVIDER)
    plan = fallback_plan(built)
    assert plan.status == "fallback"
    walk(plan, bins, trucks, c)
    assert check_plan(built, plan) == []
    route = plan.routes[0]
    early = replace(route.stops[1], eta_ts=route.stops[0].eta_ts)
    moved = replace(plan, routes=(replace(route, stops=(route.stops[0], early, *route.stops[2:])),))
    assert any("before earliest" in v for v in check_plan(built, moved))
    twice = replace(plan, routes=(replace(route, stops=(route.stops[0], *route.stops)),))
    assert check_plan(built, twice)
    longer = replace(plan, routes=(replace(route, distance_m=route.distance_m + 1),))
    assert any("driven" in v for v in check_plan(built, longer))
    assert any("dropped" in v for v in check_plan(built, replace(plan, dropped=("B0",))))
