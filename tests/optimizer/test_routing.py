"""Tests for the vehicle router: every plan it returns is feasible, the checker catches broken plans,
the benchmark parsers agree with the published best-known costs."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optimizer import vrplib
from optimizer.common import Timer
from optimizer.routing import (
    Route,
    RoutingInstance,
    RoutingPlan,
    Status,
    Stop,
    Vehicle,
    check_plan,
    fallback_plan,
    make_plan,
    repair,
    solve,
    unservable,
)

DATA = Path(__file__).resolve().parents[2] / "bench" / "data" / "vrp"
DEPOT, DUMP = 0, 1  # node 0 is the depot, node 1 the disposal site in the generated instances

# Quality never rests on a short wall-clock budget: each engine stops after a fixed number of
# solutions (OR-Tools) or iterations (PyVRP), seeded, which is the same run on any machine; the
# time limit is only a generous safety net.
LIMITS = Timer(time_limit_s=20.0, solution_limit=200, seed=0)


def build(
    points: list[tuple[int, int]],
    demand: list[tuple[int, int]],
    *,
    windows: list[tuple[int, int]] | None = None,
    required: list[bool] | None = None,
    penalty: list[int] | None = None,
    vehicles: list[Vehicle] | None = None,
    reload: bool = True,
    service: int = 5,
    horizon: int = 2000,
) -> RoutingInstance:
    """A waste-like instance: depot, disposal site, customers at `points[2:]` (time = distance)."""
    n = len(points)
    dist = [[round(math.dist(a, b)) for b in points] for a in points]
    customers = list(range(2, n))
    return RoutingInstance(
        time=dist,
        distance=dist,
        demand=[(0, 0), (0, 0), *demand],
        service=[0, 10] + [service] * len(customers),
        window=windows or [(0, horizon)] * n,
        required=required or [False, False] + [True] * len(customers),
        penalty=penalty or [0] * n,
        customers=customers,
        reload=[DUMP] if reload else [],
        vehicles=vehicles or [Vehicle("t1", DEPOT, DEPOT, (20, 30), (0, horizon))],
        names=["depot", "dump"] + [f"bin{i}" for i in customers],
    )


@st.composite
def instances(draw: st.DrawFn) -> RoutingInstance:
    n_cust = draw(st.integers(5, 15))
    n_veh = draw(st.integers(1, 3))
    coord = st.tuples(st.integers(0, 100), st.integers(0, 100))
    points = draw(st.lists(coord, min_size=n_cust + 2, max_size=n_cust + 2))
    reload = draw(st.booleans())
    horizon = draw(st.integers(600, 2000))
    caps = [(draw(st.integers(10, 40)), draw(st.integers(10, 40))) for _ in range(n_veh)]
    small = min(min(c) for c in caps)
    demand = [(draw(st.integers(0, small)), draw(st.integers(0, small))) for _ in range(n_cust)]
    windows = [(0, horizon), (0, horizon)]
    for _ in range(n_cust):
        if draw(st.booleans()):
            a = draw(st.integers(0, horizon - 50))
            windows.append((a, draw(st.integers(a + 20, horizon))))
        else:
            windows.append((0, horizon))
    required = [False, False, *draw(st.lists(st.booleans(), min_size=n_cust, max_size=n_cust))]
    penalty = [0, 0, *draw(st.lists(st.integers(0, 300), min_size=n_cust, max_size=n_cust))]
    customers = list(range(2, n_cust + 2))
    fixed_pool = draw(st.permutations(customers))
    vehicles = []
    for k, cap in enumerate(caps):
        load = (draw(st.integers(0, cap[0] // 3)), draw(st.integers(0, cap[1] // 3))) if reload else ()
        n_fixed = draw(st.integers(0, 2))
        fixed = tuple(fixed_pool[:n_fixed])
        fixed_pool = fixed_pool[n_fixed:]
        for c in fixed:  # committed stops were reachable when they were committed
            windows[c] = (0, horizon)
            demand[c - 2] = (min(demand[c - 2][0], cap[0] // 3), min(demand[c - 2][1], cap[1] // 3))
        start = draw(st.integers(0, horizon // 4))
        end = draw(st.sampled_from([DEPOT, DUMP])) if reload else DEPOT  # a truck may finish at the dump
        vehicles.append(Vehicle(f"t{k}", DEPOT, end, cap, (start, horizon), start_load=load, fixed=fixed))
    return build(
        points,
        demand,
        windows=windows,
        required=required,
        penalty=penalty,
        vehicles=vehicles,
        reload=reload,
        horizon=horizon,
    )


# Each example stops at 200 solutions or 20 s: beside two CPU hogs, 30 of them passed pytest's
# default 120 s (CI, one run). The bound is the examples' own: 30 x 20 s.
@pytest.mark.timeout(30 * LIMITS.time_limit_s)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_every_returned_plan_is_feasible(instance: RoutingInstance) -> None:
    """Random small instances: a plan not marked INFEASIBLE breaks nothing (checked independently)."""
    plan = solve(instance, timer=LIMITS)
    assert list(plan.violations) == check_plan(instance, plan)
    if plan.status is Status.INFEASIBLE:
        assert plan.violations
        return
    assert not plan.violations
    served = {s.node for r in plan.routes for s in r.stops}
    assert all(c in served for c in instance.customers if instance.required[c])
    by_id = {v.id: v for v in instance.vehicles}
    for r in plan.routes:
        v = by_id[r.vehicle]
        assert [s.node for s in r.stops][: len(v.fixed)] == list(v.fixed)
        for s in r.stops:
            assert instance.window[s.node][0] <= s.arrival <= instance.window[s.node][1]
            assert all(x <= c for x, c in zip(s.load, v.capacity, strict=True))
        assert r.end_time <= v.shift[1]


@pytest.mark.timeout(12 * LIMITS.time_limit_s)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_ortools_alone_returns_feasible_plans(instance: RoutingInstance) -> None:
    """The OR-Tools-only strategy (no second engine) holds to the same contract."""
    plan = solve(instance, timer=LIMITS, strategy="ortools")
    assert list(plan.violations) == check_plan(instance, plan)
    assert (plan.status is Status.INFEASIBLE) == bool(plan.violations)
    assert plan.solver.startswith(("ortools", "fallback"))


@settings(max_examples=10, deadline=None)
@given(instances())
def test_fallback_never_lies(instance: RoutingInstance) -> None:
    """The constructive fallback is FALLBACK only when the checker finds nothing wrong."""
    plan = fallback_plan(instance)
    assert (plan.status is Status.FALLBACK) == (not check_plan(instance, plan))


def _loose(seed: int, n_cust: int = 12) -> RoutingInstance:
    rng = random.Random(seed)
    points = [(rng.randint(0, 100), rng.randint(0, 100)) for _ in range(n_cust + 2)]
    demand = [(rng.randint(1, 8), rng.randint(1, 8)) for _ in range(n_cust)]
    starts = [rng.randint(0, 1200) if rng.random() < 0.3 else None for _ in range(n_cust)]
    windows = [(0, 3000)] * 2 + [(0, 3000) if a is None else (a, a + 400) for a in starts]
    vehicles = [
        Vehicle("t1", DEPOT, DEPOT, (20, 25), (0, 3000), start_load=(5, 5), fixed=(2,)),
        Vehicle("t2", DEPOT, DEPOT, (15, 30), (100, 3000)),
    ]
    return build(points, demand, windows=windows, vehicles=vehicles, horizon=3000)


@pytest.mark.parametrize("seed", range(6))
def test_loose_instances_are_solved(seed: int) -> None:
    """Instances with room to spare (long shifts, reloads) are always served completely and cleanly."""
    instance = _loose(seed)
    plan = solve(instance, timer=LIMITS)
    assert plan.status in (Status.FEASIBLE, Status.OPTIMAL), plan.violations
    assert plan.dropped == ()
    assert plan.routes[0].stops[0].node == 2
    # capacity 20/25 against 12 bins of up to 8: the trucks must have unloaded on the way
    assert any(s.node == DUMP for r in plan.routes for s in r.stops)
    assert all(not any(r.stops[-1].load) for r in plan.routes if r.stops)
    assert plan.distance <= fallback_plan(instance).distance


def test_optional_customers_are_dropped_when_not_worth_it() -> None:
    """A far optional bin with a small penalty is left out; with a large penalty it is collected."""
    points = [(0, 0), (0, 0), (1, 1), (2, 0), (90, 90)]
    cheap = build(points, [(1, 1)] * 3, required=[False, False, True, True, False], penalty=[0, 0, 0, 0, 10])
    plan = solve(cheap, timer=LIMITS)
    assert plan.dropped == (4,)
    assert plan.penalty == 10
    dear = replace(cheap, penalty=[0, 0, 0, 0, 10_000])
    assert solve(dear, timer=LIMITS).dropped == ()


def test_unreachable_required_customer_reports_infeasible() -> None:
    """A required bin whose window closes before any truck can get there is named, not a crash."""
    points = [(0, 0), (5, 5), (10, 0), (500, 500)]
    windows = [(0, 2000), (0, 2000), (0, 2000), (0, 50)]
    instance = build(points, [(1, 1), (1, 1)], windows=windows)
    plan = solve(instance, timer=LIMITS)
    assert plan.status is Status.INFEASIBLE
    assert plan.dropped == (3,)
    assert any("bin3" in v and "not served" in v for v in plan.violations)
    assert [s.node for r in plan.routes for s in r.stops if s.node != DUMP] == [2]
    assert unservable(instance) == [3]


def test_no_reload_and_overfull_demand_is_infeasible() -> None:
    """Without a disposal site, more waste than the truck holds cannot all be collected."""
    points = [(0, 0), (0, 0), (1, 0), (2, 0), (3, 0)]
    instance = build(points, [(10, 1)] * 3, reload=False)
    plan = solve(instance, timer=LIMITS)
    assert plan.status is Status.INFEASIBLE
    assert len(plan.dropped) == 1


@pytest.mark.parametrize("strategy", ["pyvrp", "ortools", "fallback"])
def test_every_strategy_serves_a_loose_instance(strategy: str) -> None:
    """Each engine on its own returns a clean plan with the committed stop first."""
    plan = solve(_loose(11), timer=LIMITS, strategy=strategy)
    assert plan.status in (Status.FEASIBLE, Status.OPTIMAL, Status.FALLBACK), plan.violations
    assert plan.routes[0].stops[0].node == 2
    assert plan.solver.startswith(strategy if strategy != "pyvrp" else "pyvrp-ils")


# --------------------------------------------------------------------------- the checker


def _good() -> tuple[RoutingInstance, RoutingPlan]:
    points = [(0, 0), (50, 0), (10, 0), (20, 0), (30, 0), (40, 0)]
    instance = build(points, [(8, 8)] * 4, vehicles=[Vehicle("t1", DEPOT, DEPOT, (16, 30), (0, 2000))])
    plan = make_plan(instance, {"t1": [2, 3, DUMP, 4, 5, DUMP]}, Status.FEASIBLE, "hand", 0.0)
    assert plan.violations == ()
    return instance, plan


def _with_stops(instance: RoutingInstance, nodes: list[int]) -> RoutingPlan:
    """A plan whose numbers are computed honestly for `nodes`, but without being checked."""
    plan = make_plan(instance, {"t1": nodes}, Status.FEASIBLE, "hand", 0.0)
    return replace(plan, violations=(), status=Status.FEASIBLE)


def test_checker_catches_capacity_overflow() -> None:
    """Three 8-litre bins on a 16-litre truck without unloading in between."""
    instance, _ = _good()
    errors = check_plan(instance, _with_stops(instance, [2, 3, 4, DUMP, 5, DUMP]))
    assert any("over capacity" in e and "bin4" in e for e in errors)


def test_checker_catches_window_miss() -> None:
    """A bin served after its window closed."""
    instance, plan = _good()
    window = list(instance.window)
    window[5] = (0, 30)
    tight = replace(instance, window=window)
    errors = check_plan(tight, plan)
    assert any("bin5" in e and "after its window" in e for e in errors)


def test_checker_catches_missing_required_and_duplicate() -> None:
    """A required bin not served at all, and another served twice."""
    instance, _ = _good()
    errors = check_plan(instance, _with_stops(instance, [2, 3, DUMP, 3, DUMP]))
    assert any("bin4" in e and "not served" in e for e in errors)
    assert any("bin3" in e and "visited 2 times" in e for e in errors)


def test_repair_drops_only_what_breaks_the_routes() -> None:
    """Overfull routes without unloads are repaired: unloads inserted, nothing infeasible kept."""
    instance, _ = _good()
    routes = repair(instance, {"t1": [2, 3, 4, 5]})
    plan = make_plan(instance, routes, Status.FEASIBLE, "repaired", 0.0)
    assert plan.violations == ()
    assert [n for n in routes["t1"] if n != DUMP] == [2, 3, 4, 5]
    window = list(instance.window)
    window[4] = (0, 5)  # nobody can be at bin4 by t=5
    tight = replace(instance, window=window)
    plan = make_plan(tight, repair(tight, {"t1": [2, 3, 4, 5]}), Status.FEASIBLE, "repaired", 0.0)
    assert plan.violations == ("required customer bin4 (node 4) not served",)


def test_checker_catches_tampered_numbers() -> None:
    """A stated distance, load, arrival or end that does not follow from the matrices is reported."""
    instance, plan = _good()
    route = plan.routes[0]
    early = Stop(route.stops[1].node, route.stops[1].arrival - 1, route.stops[1].load)
    wrong_load = Stop(route.stops[0].node, route.stops[0].arrival, (0, 0))
    for broken in (
        replace(plan, distance=plan.distance - 1),
        replace(plan, routes=(replace(route, distance=route.distance + 1),)),
        replace(plan, routes=(replace(route, stops=(route.stops[0], early, *route.stops[2:])),)),
        replace(plan, routes=(replace(route, stops=(wrong_load, *route.stops[1:])),)),
        replace(plan, routes=(replace(route, end_time=5000),)),
        replace(plan, routes=(route, Route("ghost", (), 0, 0))),
    ):
        assert check_plan(instance, broken)


def test_checker_requires_empty_truck_at_end_and_committed_prefix() -> None:
    """With a disposal site the truck must come home empty; committed stops come first."""
    instance, _ = _good()
    assert any("must unload" in e for e in check_plan(instance, _with_stops(instance, [2, 3, DUMP, 4, 5])))
    committed = replace(instance, vehicles=[replace(instance.vehicles[0], fixed=(4,))])
    _, plan = _good()
    assert any("committed" in e for e in check_plan(committed, plan))


def test_invalid_instance_is_a_clear_error() -> None:
    """Malformed input names what is wrong instead of reaching the solver."""
    instance, _ = _good()
    with pytest.raises(ValueError, match="demand"):
        solve(replace(instance, demand=instance.demand[:-1]), timer=LIMITS)
    with pytest.raises(ValueError, match="window of bin2"):
        solve(replace(instance, window=[(0, 9), (0, 9), (5, 1), *instance.window[3:]]), timer=LIMITS)
    with pytest.raises(ValueError, match="strategy"):
        solve(instance, timer=LIMITS, strategy="magic")


# --------------------------------------------------------------------------- benchmark files


@pytest.mark.parametrize(
    ("vrp", "sol"),
    [
        ("X-n101-k25.vrp", "X-n101-k25.sol"),
        ("RC208.100.4.vrptw", "RC208.100.4.7761.tour"),
        ("R1_2_1.200.20.vrptw", "R1_2_1.200.20.4784110.tour"),
        ("RC208.vrp", "RC208.sol"),
    ],
)
def test_parsers_reproduce_best_known_costs(vrp: str, sol: str) -> None:
    """The best-known routes, re-costed by our reader, give the published cost and pass the checker."""
    data = vrplib.read_vrp(DATA / vrp)
    if sol.endswith(".tour"):
        routes, best = vrplib.read_tour(DATA / sol, data.size)
        expected = float(best)
    else:
        routes, expected = vrplib.read_solution(DATA / sol)
        expected *= data.scale  # RC208.sol states 776.1 in one-decimal units
    instance = vrplib.to_instance(data)
    assert sorted(c for r in routes for c in r) == instance.customers
    plan = make_plan(instance, {f"v{i}": r for i, r in enumerate(routes)}, Status.FEASIBLE, "bks", 0.0)
    assert plan.violations == ()
    assert plan.distance == round(expected)
    assert vrplib.cost(data, routes) == round(expected)


@pytest.mark.parametrize("strategy", ["auto", "ortools", "pyvrp"])
def test_a_solution_limit_makes_the_run_repeatable(strategy: str) -> None:
    """With a solution/iteration limit and a seed, the same instance gives the same routes: what
    lets the quality tests above stand on any machine, however loaded."""
    instance = _loose(3)
    first = solve(instance, timer=LIMITS, strategy=strategy)
    again = solve(instance, timer=LIMITS, strategy=strategy)
    assert [[s.node for s in r.stops] for r in first.routes] == [
        [s.node for s in r.stops] for r in again.routes
    ]
    assert (first.distance, first.solver) == (again.distance, again.solver)


def test_routing_needs_a_time_limit() -> None:
    """Routing has no budget of its own: a timer without one is a clear error."""
    instance, _ = _good()
    with pytest.raises(ValueError, match="time limit"):
        solve(instance, timer=Timer(seed=0))
