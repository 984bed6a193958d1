"""Tests for the parking-guidance optimizer: margins kept, demand conserved, signs switch, fallbacks safe."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ortools.linear_solver import pywraplp
from pydantic import ValidationError

from optimizer import displays as guidance
from optimizer.displays import (
    NO_PARKING_HINT,
    Approach,
    CarPark,
    GuidanceInstance,
    GuidancePlan,
    Recommendation,
    TravelCost,
    check_plan,
    fallback_plan,
    margin,
    solve,
    usable,
)


def park(pid: str, free: int, capacity: int = 100, **kw: Any) -> CarPark:
    return CarPark(id=pid, name=f"P {pid}", capacity=capacity, free=free, **kw)


def cost(a: str, p: str, minutes: float, hint: str = "") -> TravelCost:
    return TravelCost(approach=a, car_park=p, minutes=minutes, hint=hint)


def town(free_a: int = 50, free_b: int = 50, demand: int = 20, **kw: Any) -> GuidanceInstance:
    """One approach with two signs; car park A is 3 min away, B 8 min."""
    return GuidanceInstance(
        car_parks=[park("A", free_a), park("B", free_b)],
        approaches=[Approach(id="north", sign_ids=["s1", "s2"], demand=demand)],
        costs=[cost("north", "A", 3.0, hint="← A"), cost("north", "B", 8.0)],
        **kw,
    )


def shown(plan: GuidancePlan) -> dict[str, str | None]:
    return {r.sign_id: r.car_park for r in plan.recommendations}


def assigned(plan: GuidancePlan) -> dict[tuple[str, str], int]:
    return {(a.approach, a.car_park): a.cars for a in plan.assignments}


def test_all_cars_go_to_the_nearest_car_park_while_it_has_room() -> None:
    """With room at the nearest car park, every sign points there with its free spaces and hint."""
    inst = town()
    plan = solve(inst)
    assert plan.status == "optimal", plan.reason
    assert assigned(plan) == {("north", "A"): 20}
    assert plan.unplaced == 0
    assert plan.total_minutes == pytest.approx(60.0)
    assert [(r.sign_id, r.car_park, r.free, r.minutes, r.hint) for r in plan.recommendations] == [
        ("s1", "A", 50, 3.0, "← A"),
        ("s2", "A", 50, 3.0, "← A"),
    ]
    assert check_plan(inst, plan) == []


def test_signs_switch_when_the_nearest_car_park_fills() -> None:
    """As A fills, its overflow goes to B, and once most cars go to B the signs switch to it."""
    part = solve(town(free_a=25))  # usable 25 - 10 = 15 of 20
    assert assigned(part) == {("north", "A"): 15, ("north", "B"): 5}
    assert set(shown(part).values()) == {"A"}
    mostly_b = solve(town(free_a=15))  # usable 5: 15 cars to B
    assert assigned(mostly_b) == {("north", "A"): 5, ("north", "B"): 15}
    assert set(shown(mostly_b).values()) == {"B"}
    full = solve(town(free_a=10))  # exactly the margin: nothing to A
    assert assigned(full) == {("north", "B"): 20}
    rec = full.recommendations[0]
    assert (rec.car_park, rec.free, rec.minutes, rec.hint) == ("B", 50, 8.0, "P B ~8 min")


def test_equal_flow_ties_go_to_the_shorter_trip() -> None:
    """An approach split evenly between two car parks shows the nearer one."""
    plan = solve(town(free_a=20, demand=20))  # usable A 10, so 10 to A and 10 to B
    assert assigned(plan) == {("north", "A"): 10, ("north", "B"): 10}
    assert set(shown(plan).values()) == {"A"}


def test_margin_is_ten_percent_of_capacity_and_at_least_two() -> None:
    """Margin: ceil(10 % of capacity) without float noise, never below 2; usable never negative."""
    inst = town()
    assert margin(inst, park("x", 0, capacity=30)) == 3  # 0.1 * 30 = 3.0000000000000004
    assert margin(inst, park("x", 0, capacity=31)) == 4
    assert margin(inst, park("x", 0, capacity=5)) == 2
    assert usable(inst, park("x", 1, capacity=5)) == 0
    assert usable(inst, park("x", 50, capacity=100, open=False)) == 0
    assert usable(inst, park("x", 50, capacity=100, fresh=False)) == 0


def test_margin_is_respected_and_the_rest_unplaced() -> None:
    """Demand beyond free-minus-margin everywhere is unplaced, costed at the overflow price."""
    inst = town(free_a=14, free_b=12, demand=30)  # usable 4 + 2
    plan = solve(inst)
    assert assigned(plan) == {("north", "A"): 4, ("north", "B"): 2}
    assert plan.unplaced == 24
    assert plan.total_minutes == pytest.approx(4 * 3 + 2 * 8 + 24 * 60)
    assert check_plan(inst, plan) == []


def test_no_space_above_the_margin_shows_no_parking() -> None:
    """When every car park is at its margin, the signs show no car park and no numbers."""
    inst = town(free_a=10, free_b=10)
    for plan in (solve(inst), fallback_plan(inst, "test")):
        assert plan.assignments == []
        assert plan.unplaced == 20
        assert {(r.car_park, r.free, r.minutes, r.hint) for r in plan.recommendations} == {
            (None, None, None, NO_PARKING_HINT)
        }
        assert check_plan(inst, plan) == []


@pytest.mark.parametrize("flag", ["open", "fresh"])
def test_closed_or_stale_car_parks_are_never_recommended(flag: str) -> None:
    """A closed car park, or one whose numbers are stale, gets no cars and is never on a sign."""
    inst = GuidanceInstance(
        car_parks=[park("A", 90, **{flag: False}), park("B", 50)],
        approaches=[Approach(id="north", sign_ids=["s1"], demand=10)],
        costs=[cost("north", "A", 1.0), cost("north", "B", 9.0)],
    )
    for plan in (solve(inst), fallback_plan(inst, "test")):
        assert assigned(plan) == {("north", "B"): 10}
        assert shown(plan) == {"s1": "B"}


def test_detours_longer_than_the_overflow_cost_are_not_used() -> None:
    """A car park further than `overflow_cost` is left out: the car is better off searching."""
    inst = town(free_a=10, overflow_cost=5.0)  # A full, B 8 min > 5
    plan = solve(inst)
    assert plan.assignments == []
    assert plan.unplaced == 20
    assert shown(plan) == {"s1": None, "s2": None}


def test_flow_beats_greedy_where_order_matters() -> None:
    """Greedy lets the first approach take the only car park the second can reach; the flow does not."""
    inst = GuidanceInstance(
        car_parks=[park("A", 20), park("B", 50)],  # A usable 10
        approaches=[
            Approach(id="east", sign_ids=["e"], demand=10),
            Approach(id="west", sign_ids=["w"], demand=10),
        ],
        costs=[cost("east", "A", 2.0), cost("east", "B", 3.0), cost("west", "A", 2.0)],
    )
    plan = solve(inst)
    assert assigned(plan) == {("east", "B"): 10, ("west", "A"): 10}
    assert shown(plan) == {"e": "B", "w": "A"}
    assert plan.unplaced == 0
    greedy = fallback_plan(inst, "baseline")
    assert greedy.unplaced == 10
    assert plan.total_minutes < greedy.total_minutes
    assert shown(greedy) == {"e": "A", "w": "A"}  # nearest with room, as promised


def test_approach_without_demand_still_gets_a_car_park_with_room_left() -> None:
    """A sign whose approach brings no cars shows its nearest car park that still has room."""
    inst = GuidanceInstance(
        car_parks=[park("A", 20), park("B", 50)],
        approaches=[
            Approach(id="busy", sign_ids=["b"], demand=10),
            Approach(id="quiet", sign_ids=["q"], demand=0),
        ],
        costs=[cost("busy", "A", 1.0), cost("quiet", "A", 1.0), cost("quiet", "B", 4.0)],
    )
    plan = solve(inst)
    assert shown(plan) == {"b": "A", "q": "B"}  # A's 10 usable spaces all go to "busy"
    assert check_plan(inst, plan) == []


def test_empty_instance() -> None:
    """No car parks and no approaches: an empty optimal plan."""
    inst = GuidanceInstance(car_parks=[], approaches=[], costs=[])
    plan = solve(inst)
    assert plan.status == "optimal"
    assert (plan.assignments, plan.recommendations, plan.unplaced, plan.total_minutes) == ([], [], 0, 0.0)


class _FakeFlow:
    """A SimpleMinCostFlow that accepts the model and answers with a chosen status."""

    status: Any = None

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: []

    def solve(self) -> Any:
        return self.status


@pytest.mark.parametrize(
    "name",
    [
        "INFEASIBLE",
        "UNBALANCED",
        "BAD_RESULT",
        "BAD_COST_RANGE",
        "BAD_CAPACITY_RANGE",
        "NOT_SOLVED",
        "FEASIBLE",
    ],
)
def test_every_other_solver_status_falls_back_with_its_name(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any status but OPTIMAL gives the greedy fallback, which names the status and passes the check."""
    real = guidance.min_cost_flow.SimpleMinCostFlow

    class Fake(_FakeFlow):
        status = getattr(real, name)

    monkeypatch.setattr(guidance.min_cost_flow, "SimpleMinCostFlow", Fake)
    inst = town(free_a=25)
    plan = solve(inst)
    assert plan.status == "fallback"
    assert f"min-cost flow {name}" in plan.reason
    assert assigned(plan) == {("north", "A"): 15, ("north", "B"): 5}
    assert check_plan(inst, plan) == []


def test_a_solver_error_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception inside the solve gives the fallback, with the error in the reason."""

    def boom(*args: Any) -> None:
        raise RuntimeError("kaputt")

    monkeypatch.setattr(guidance._FlowModel, "add_capacity_arcs", boom)
    plan = solve(town())
    assert plan.status == "fallback"
    assert "RuntimeError: kaputt" in plan.reason
    assert shown(plan) == {"s1": "A", "s2": "A"}


def test_absurd_travel_costs_fall_back_instead_of_overflowing() -> None:
    """A cost too large for integer deci-minutes is a data error: fallback, not a crash or wrap-around."""
    inst = GuidanceInstance(
        car_parks=[park("A", 50)],
        approaches=[Approach(id="north", sign_ids=["s"], demand=5)],
        costs=[cost("north", "A", 1e299)],
        overflow_cost=1e300,
    )
    plan = solve(inst)
    assert plan.status == "fallback"
    assert "solver error" in plan.reason
    assert check_plan(inst, plan) == []


def test_a_plan_failing_its_check_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the flow ever broke a rule, the plan would be replaced by the fallback, saying why."""
    inst = town(free_a=12, demand=20)  # A usable 2
    # a flow that ignores A's margin
    monkeypatch.setattr(guidance._FlowModel, "flows", lambda self: {(0, 0): 12, (0, 1): 8})
    plan = solve(inst)
    assert plan.status == "fallback"
    assert "failed check" in plan.reason
    assert check_plan(inst, plan) == []


def test_check_plan_finds_broken_plans() -> None:
    """The checker names over-filled, closed, unreachable and unconserved assignments and bad signs."""
    inst = GuidanceInstance(
        car_parks=[park("A", 20), park("C", 50, open=False), park("S", 50, fresh=False)],
        approaches=[Approach(id="n", sign_ids=["s1", "s2"], demand=30)],
        costs=[cost("n", "A", 1.0), cost("n", "C", 1.0), cost("n", "S", 1.0)],
    )
    bad = GuidancePlan(
        status="great",
        assignments=[
            guidance.Assignment(approach="n", car_park="A", cars=11),
            guidance.Assignment(approach="n", car_park="C", cars=1),
            guidance.Assignment(approach="n", car_park="S", cars=1),
        ],
        recommendations=[
            Recommendation(sign_id="s1", approach="n", car_park="C", free=50, minutes=1.0, hint=""),
            Recommendation(sign_id="s1", approach="n", car_park="A", free=19, minutes=1.0, hint=""),
        ],
        unplaced=0,
        total_minutes=0.0,
        solve_seconds=0.0,
    )
    text = "\n".join(check_plan(inst, bad))
    for needle in (
        "status 'great'",
        "car park A: 11 cars > usable 10",
        "n -> C: car park is closed",
        "n -> S: car park is stale",
        "demand not conserved",
        "total_minutes",
        "recommends closed car park C",
        "recommended more than once",
        "shows 19 free",
        "sign s2 (n): no recommendation",
    ):
        assert needle in text


def test_instance_validation() -> None:
    """Unknown names, duplicates, shared signs and free > capacity are refused when the instance is built."""
    a = Approach(id="n", sign_ids=["s"], demand=1)
    with pytest.raises(ValidationError, match="unknown car park"):
        GuidanceInstance(car_parks=[], approaches=[a], costs=[cost("n", "X", 1.0)])
    with pytest.raises(ValidationError, match="two travel costs"):
        GuidanceInstance(car_parks=[park("A", 5)], approaches=[a], costs=[cost("n", "A", 1.0)] * 2)
    with pytest.raises(ValidationError, match="belongs to approaches"):
        GuidanceInstance(car_parks=[], approaches=[a, Approach(id="m", sign_ids=["s"], demand=1)], costs=[])
    with pytest.raises(ValidationError, match="free 6 > capacity 5"):
        park("A", 6, capacity=5)
    with pytest.raises(ValidationError):
        cost("n", "A", float("nan"))


# --------------------------------------------------------------------------- properties


@st.composite
def instances(draw: st.DrawFn) -> GuidanceInstance:
    n_p = draw(st.integers(0, 6))
    n_a = draw(st.integers(0, 6))
    parks = []
    for j in range(n_p):
        cap = draw(st.integers(0, 60))
        parks.append(
            CarPark(
                id=f"p{j}",
                name=f"P{j}",
                capacity=cap,
                free=draw(st.integers(0, cap)),
                open=draw(st.booleans()),
                fresh=draw(st.booleans()),
            )
        )
    approaches = [
        Approach(
            id=f"a{i}",
            sign_ids=[f"s{i}.{k}" for k in range(draw(st.integers(0, 2)))],
            demand=draw(st.integers(0, 40)),
        )
        for i in range(n_a)
    ]
    costs = [
        cost(f"a{i}", f"p{j}", draw(st.floats(0, 90, allow_nan=False)))
        for i in range(n_a)
        for j in range(n_p)
        if draw(st.booleans())
    ]
    return GuidanceInstance(
        car_parks=parks,
        approaches=approaches,
        costs=costs,
        safety_margin=draw(st.sampled_from([0.0, 0.1, 0.25])),
        overflow_cost=draw(st.sampled_from([10.0, 60.0])),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_random_instances_pass_the_check_and_beat_greedy(inst: GuidanceInstance) -> None:
    """Solve and fallback pass check_plan; the flow is optimal, so never worse than greedy (up to
    the 0.05 min rounding of deci-minute costs per car)."""
    plan = solve(inst)
    assert plan.status == "optimal", plan.reason
    assert check_plan(inst, plan) == []
    greedy = fallback_plan(inst, "baseline")
    assert greedy.status == "fallback"
    assert check_plan(inst, greedy) == []
    cars = sum(a.demand for a in inst.approaches)
    assert plan.total_minutes <= greedy.total_minutes + 0.05 * cars + 1e-6
    for r in plan.recommendations:  # a sign never points at a closed, stale or full car park
        if r.car_park is not None:
            p = next(p for p in inst.car_parks if p.id == r.car_park)
            assert usable(inst, p) > 0


def lp_optimum(inst: GuidanceInstance) -> float:
    """Total minutes of the optimal plan, from an independent LP (GLOP) over all usable pairs."""
    solver = pywraplp.Solver.CreateSolver("GLOP")
    parks = {p.id: p for p in inst.car_parks}
    x = {
        (c.approach, c.car_park): (solver.NumVar(0, solver.infinity(), ""), c.minutes)
        for c in inst.costs
        if usable(inst, parks[c.car_park]) > 0
    }
    over = {a.id: solver.NumVar(0, solver.infinity(), "") for a in inst.approaches}
    for a in inst.approaches:
        solver.Add(sum(v for (aid, _), (v, _) in x.items() if aid == a.id) + over[a.id] == a.demand)
    for p in inst.car_parks:
        solver.Add(sum(v for (_, pid), (v, _) in x.items() if pid == p.id) <= usable(inst, p))
    solver.Minimize(sum(v * m for v, m in x.values()) + sum(v * inst.overflow_cost for v in over.values()))
    assert solver.Solve() == pywraplp.Solver.OPTIMAL
    return float(solver.Objective().Value())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_flow_matches_an_independent_lp(inst: GuidanceInstance) -> None:
    """The flow's total minutes equal the LP optimum (up to the 0.05 min rounding per car)."""
    plan = solve(inst)
    cars = sum(a.demand for a in inst.approaches)
    assert plan.total_minutes == pytest.approx(lp_optimum(inst), abs=0.05 * cars + 1e-6)
