"""Tests for the charge-load optimizer: limits kept at every level, energy fair and cheap, fallbacks safe."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ortools.linear_solver import pywraplp
from pydantic import ValidationError

from optimizer import charging, charging_fallback
from optimizer.charging import (
    ChargingInstance,
    ChargingPlan,
    Session,
    SessionPlan,
    SupplyNode,
    baseline_equal_share,
    baseline_fcfs,
    check_plan,
    fallback_plan,
    lp_upper_bound,
    solve,
)
from optimizer.common import Timer

N = 32  # slots: 8 hours of 15 minutes keeps the tests fast


def node(nid: str, parent: str | None, limit: float | list[float], phases: int = 3, n: int = N) -> SupplyNode:
    limits = [float(limit)] * n if isinstance(limit, int | float) else limit
    return SupplyNode(id=nid, parent=parent, limit_a=limits, phases=phases)


def car(
    sid: str, post: str, kwh: float, *, phases: int = 3, start: int = 0, end: int = N, max_a: float = 16.0
) -> Session:
    return Session(
        id=sid,
        charger_id=f"cp-{sid}",
        node=post,
        phases=phases,
        max_a=max_a,
        energy_kwh=kwh,
        arrival_slot=start,
        departure_slot=end,
    )


def street(time_limit_s: float = 5.0, price: list[float] | None = None) -> ChargingInstance:
    """Two cabinets, three feeders (one single-phase lighting circuit, live at night only), 12 posts,
    mixed cars and windows: tight enough that every level of the tree binds somewhere."""
    nodes = [node("cab0", None, 50.0), node("cab1", None, 40.0)]
    nodes += [node("f0", "cab0", 32.0), node("f1", "cab0", 30.0)]
    nodes.append(node("f2", "cab1", [0.0] * 8 + [20.0] * (N - 8), phases=1))
    sessions = []
    for k in range(12):
        feeder = ("f0", "f1", "f2")[k % 3]
        nodes.append(node(f"p{k}", feeder, 16.0 if k % 4 else 10.0))
        sessions.append(
            car(
                f"s{k}",
                f"p{k}",
                kwh=4.0 + 3.0 * (k % 5),
                phases=1 if k % 3 == 1 else 3,
                start=(k * 3) % 10,
                end=N - (k * 5) % 12,
            )
        )
    return ChargingInstance(n_slots=N, nodes=nodes, sessions=sessions, price=price, time_limit_s=time_limit_s)


def by_id(plan: ChargingPlan) -> dict[str, SessionPlan]:
    return {sp.id: sp for sp in plan.sessions}


def node_loads(inst: ChargingInstance, plan: ChargingPlan) -> dict[str, list[float]]:
    """L1 load per node and slot, recomputed here from the tree (every car loads L1)."""
    parent = {nd.id: nd.parent for nd in inst.nodes}
    loads = {nd.id: [0.0] * inst.n_slots for nd in inst.nodes}
    currents = by_id(plan)
    for s in inst.sessions:
        up: str | None = s.node
        while up is not None:
            for t, c in enumerate(currents[s.id].current_a):
                loads[up][t] += c
            up = parent[up]
    return loads


# --------------------------------------------------------------------------- rules kept


@pytest.mark.parametrize("planner", [solve, baseline_fcfs, baseline_equal_share])
def test_limits_hold_at_every_level(planner: Any) -> None:
    """The plan and both baselines keep every cabinet, feeder and post limit in every slot."""
    inst = street()
    plan = planner(inst)
    assert check_plan(inst, plan) == []
    loads = node_loads(inst, plan)
    for nd in inst.nodes:
        assert all(load <= lim + 1e-6 for load, lim in zip(loads[nd.id], nd.limit_a, strict=True)), nd.id
    assert plan.delivered_kwh > 0


@pytest.mark.parametrize("planner", [solve, baseline_fcfs, baseline_equal_share])
def test_currents_zero_or_between_min_and_max_inside_window(planner: Any) -> None:
    """Every current is 0 or within [6 A, max_a], and 0 outside the car's window."""
    inst = street()
    plan = by_id(planner(inst))
    for s in inst.sessions:
        for t, c in enumerate(plan[s.id].current_a):
            assert c == 0 or s.min_a - 1e-6 <= c <= s.max_a + 1e-6
            if not s.arrival_slot <= t < s.departure_slot:
                assert c == 0


def test_energy_never_above_need() -> None:
    """No car gets more than it needs, even with spare capacity everywhere."""
    nodes = [node("cab", None, 500.0), node("f", "cab", 500.0), node("p", "f", 32.0)]
    inst = ChargingInstance(n_slots=N, nodes=nodes, sessions=[car("a", "p", 7.3)])
    plan = solve(inst)
    assert check_plan(inst, plan) == []
    assert plan.sessions[0].energy_kwh <= 7.3 + 1e-6
    assert plan.sessions[0].energy_kwh == pytest.approx(7.3, abs=1e-6)


def test_car_with_enough_time_gets_all_its_energy() -> None:
    """A car on a feeder shared with others, with hours to spare, leaves full."""
    nodes = [node("cab", None, 40.0), node("f", "cab", 24.0)]
    nodes += [node(f"p{k}", "f", 16.0) for k in range(3)]
    sessions = [car("a", "p0", 10.0), car("b", "p1", 30.0, start=4), car("c", "p2", 30.0, phases=1)]
    inst = ChargingInstance(n_slots=N, nodes=nodes, sessions=sessions)
    plan = solve(inst)
    assert check_plan(inst, plan) == []
    assert by_id(plan)["a"].unmet_kwh == pytest.approx(0.0, abs=1e-5)


def test_two_identical_cars_on_a_tight_feeder_share_fairly() -> None:
    """Two identical cars that cannot both be filled get about the same energy."""
    nodes = [node("cab", None, 100.0), node("f", "cab", 20.0, phases=1)]
    nodes += [node(f"p{k}", "f", 16.0) for k in range(2)]
    sessions = [car("a", "p0", 30.0, phases=1), car("b", "p1", 30.0, phases=1)]
    inst = ChargingInstance(n_slots=N, nodes=nodes, sessions=sessions)
    plan = solve(inst)
    assert check_plan(inst, plan) == []
    a, b = by_id(plan)["a"].energy_kwh, by_id(plan)["b"].energy_kwh
    assert a > 5
    assert b > 5
    assert abs(a - b) <= 0.1 * max(a, b)
    # 20 A single-phase for 8 hours is 36.8 kWh: nothing of the feeder is wasted.
    assert a + b == pytest.approx(20 * 230 * 8 / 1000, rel=0.02)


def test_single_phase_car_not_starved_by_three_phase_neighbour() -> None:
    """A three-phase car turns the same L1 amperes into 3x the energy; the single-phase car still
    gets its fair fraction instead of nothing."""
    nodes = [node("cab", None, 100.0), node("f", "cab", 16.0)]
    nodes += [node(f"p{k}", "f", 16.0) for k in range(2)]
    sessions = [car("one", "p0", 30.0, phases=1), car("three", "p1", 60.0)]
    inst = ChargingInstance(n_slots=N, nodes=nodes, sessions=sessions)
    plan = solve(inst)
    assert check_plan(inst, plan) == []
    assert by_id(plan)["one"].energy_kwh > 5.0
    assert plan.fair_fraction > 0.2


def test_price_moves_flexible_energy_to_cheap_slots_without_losing_energy() -> None:
    """With expensive first and cheap second half, a flexible car charges in the cheap half and
    gets as much energy as without a price."""
    nodes = [node("cab", None, 100.0), node("f", "cab", 40.0)]
    nodes += [node(f"p{k}", "f", 16.0) for k in range(2)]
    sessions = [car("a", "p0", 12.0), car("b", "p1", 4.0, phases=1)]
    price = [0.40] * (N // 2) + [0.10] * (N // 2)
    flat = ChargingInstance(n_slots=N, nodes=nodes, sessions=sessions)
    priced = ChargingInstance(n_slots=N, nodes=nodes, sessions=sessions, price=price)
    p0, p1 = solve(flat), solve(priced)
    assert check_plan(priced, p1) == []
    assert p1.delivered_kwh == pytest.approx(p0.delivered_kwh, abs=1e-6)
    for sp in p1.sessions:
        assert sum(sp.current_a[: N // 2]) == 0, sp.id
    # Without a price, energy goes in as early as possible (robust to an early departure).
    assert sum(by_id(p0)["a"].current_a[: N // 2]) > 0
    assert p1.cost == pytest.approx(0.10 * p1.delivered_kwh)


def test_three_phase_car_under_single_phase_circuit_charges_single_phase() -> None:
    """Below a single-phase lighting circuit a three-phase car draws on L1 only: 1 A is 230 W."""
    nodes = [node("cab", None, 100.0), node("f", "cab", 16.0, phases=1), node("p", "f", 16.0)]
    inst = ChargingInstance(
        n_slots=4,
        nodes=[n.model_copy(update={"limit_a": [n.limit_a[0]] * 4}) for n in nodes],
        sessions=[car("a", "p", 50.0, end=4)],
    )
    plan = solve(inst)
    assert check_plan(inst, plan) == []
    assert plan.delivered_kwh == pytest.approx(16 * 230 * 1.0 / 1000)


def test_delivery_close_to_lp_bound_on_the_street() -> None:
    """The rounded plan delivers within a few percent of the LP relaxation and never above it."""
    inst = street()
    plan = solve(inst)
    bound = lp_upper_bound(inst)
    assert plan.upper_bound_kwh == pytest.approx(bound, rel=1e-6)
    assert plan.delivered_kwh <= bound + 1e-6
    assert plan.delivered_kwh >= 0.95 * bound
    assert plan.delivered_kwh >= baseline_equal_share(inst).delivered_kwh - 1e-6


# --------------------------------------------------------------------------- fallback and statuses


def test_fallback_passes_check_and_is_6a_round_robin() -> None:
    """The fallback keeps every rule; where 6 A fits, cars get 6 A in turn."""
    inst = street()
    plan = fallback_plan(inst, "test")
    assert plan.status == "fallback"
    assert plan.reason == "test"
    assert check_plan(inst, plan) == []
    currents = {c for sp in plan.sessions for c in sp.current_a}
    assert currents <= {0.0, 6.0}
    assert plan.delivered_kwh > 0


def test_fallback_is_all_zero_when_round_robin_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the round-robin ever broke (a bug), every car gets 0 A, which keeps every limit."""

    def broken(*_: object) -> float:
        raise RuntimeError("bug")

    monkeypatch.setattr(charging_fallback, "_grant", broken)
    inst = street()
    plan = fallback_plan(inst, "why")
    assert check_plan(inst, plan) == []
    assert plan.delivered_kwh == 0
    assert plan.reason.startswith("why; ")


def test_no_time_budget_falls_back() -> None:
    """time_limit_s = 0 gives the fallback plan with a reason."""
    inst = street(time_limit_s=0.0)
    plan = solve(inst)
    assert plan.status == "fallback"
    assert "no time budget" in plan.reason
    assert check_plan(inst, plan) == []


@pytest.mark.parametrize(
    ("status", "word"),
    [
        (pywraplp.Solver.INFEASIBLE, "INFEASIBLE"),
        (pywraplp.Solver.NOT_SOLVED, "NOT_SOLVED"),
        (pywraplp.Solver.ABNORMAL, "ABNORMAL"),
        (pywraplp.Solver.FEASIBLE, "FEASIBLE"),
        (pywraplp.Solver.UNBOUNDED, "UNBOUNDED"),
        (pywraplp.Solver.MODEL_INVALID, "MODEL_INVALID"),
    ],
)
def test_every_solver_status_falls_back_with_reason(
    monkeypatch: pytest.MonkeyPatch, status: int, word: str
) -> None:
    """A GLOP status other than OPTIMAL on the first stage gives the fallback, saying which."""
    monkeypatch.setattr(charging._LpModel, "run", lambda self, seconds: status)
    inst = street()
    plan = solve(inst)
    assert plan.status == "fallback"
    assert word in plan.reason
    assert check_plan(inst, plan) == []


def test_later_stage_failure_keeps_an_earlier_solution(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the fairness stage fails, the bound stage's solution is rounded: feasible, not fallback."""
    real = charging._LpModel.run
    calls = {"n": 0}

    def run(self: charging._LpModel, seconds: float) -> int:
        calls["n"] += 1
        return real(self, seconds) if calls["n"] == 1 else pywraplp.Solver.NOT_SOLVED

    monkeypatch.setattr(charging._LpModel, "run", run)
    inst = street()
    plan = solve(inst)
    assert plan.status == "feasible"
    assert "fairness: GLOP NOT_SOLVED" in plan.reason
    assert check_plan(inst, plan) == []


def test_solver_error_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception inside the solver gives the fallback with the error in the reason."""

    def boom(*_: object) -> None:
        raise ValueError("boom")

    monkeypatch.setattr(charging._LpModel, "__init__", boom)
    inst = street()
    plan = solve(inst)
    assert plan.status == "fallback"
    assert "ValueError: boom" in plan.reason
    assert check_plan(inst, plan) == []


def test_time_limit_bounds_solve_time() -> None:
    """A tiny budget is respected (a fake clock that jumps past the deadline forces fallback)."""
    ticks = iter([0.0])
    inst = street(time_limit_s=1.0)
    plan = solve(inst, timer=Timer(clock=lambda: next(ticks, 10.0)))
    assert plan.status == "fallback"
    assert "time budget spent" in plan.reason
    assert check_plan(inst, plan) == []


def test_empty_instance_is_optimal() -> None:
    """No cars: an empty optimal plan."""
    inst = ChargingInstance(n_slots=N, nodes=[node("cab", None, 10.0)], sessions=[])
    plan = solve(inst)
    assert plan.status == "optimal"
    assert plan.sessions == []
    assert check_plan(inst, plan) == []


# --------------------------------------------------------------------------- checker


def broken(plan: ChargingPlan, sid: str, **update: Any) -> ChargingPlan:
    """`plan` with session `sid` changed (and plan totals kept consistent with the change)."""
    sessions = [sp.model_copy(update=update) if sp.id == sid else sp for sp in plan.sessions]
    return plan.model_copy(update={"sessions": sessions})


def test_check_plan_catches_each_broken_rule() -> None:
    """Each hand-broken rule is named by the checker."""
    nodes = [node("cab", None, 40.0), node("f", "cab", 20.0), node("p0", "f", 16.0), node("p1", "f", 16.0)]
    sessions = [car("a", "p0", 20.0, start=2, end=20), car("b", "p1", 20.0, phases=1, start=0, end=20)]
    inst = ChargingInstance(n_slots=N, nodes=nodes, sessions=sessions)
    plan = solve(inst)
    assert check_plan(inst, plan) == []

    def with_current(sid: str, slot: int, amps: float) -> ChargingPlan:
        sp = by_id(plan)[sid]
        cur = list(sp.current_a)
        cur[slot] = amps
        s = next(s for s in inst.sessions if s.id == sid)
        k = s.voltage * (3 if s.phases == 3 else 1) * 0.25 / 1000
        energy = math.fsum(cur) * k
        return broken(plan, sid, current_a=cur, energy_kwh=energy, unmet_kwh=max(s.energy_kwh - energy, 0))

    def problems(p: ChargingPlan) -> str:
        return " | ".join(check_plan(inst, p))

    # Feeder limit: both cars at 16 A in one slot is 32 A on L1 of a 20 A feeder.
    both = with_current("a", 5, 16.0)
    sp_b = by_id(both)["b"]
    cur_b = list(sp_b.current_a)
    cur_b[5] = 16.0
    e_b = math.fsum(cur_b) * 230 * 0.25 / 1000
    both = broken(both, "b", current_a=cur_b, energy_kwh=e_b, unmet_kwh=max(20.0 - e_b, 0))
    assert "node f: L1 slot 5" in problems(both)
    assert "node cab" not in problems(both)
    assert "over limit" in problems(with_current("a", 5, 40.0))  # also above max_a
    assert "neither 0 nor within" in problems(with_current("a", 6, 3.0))
    assert "neither 0 nor within" in problems(with_current("a", 6, 17.0))
    assert "outside its window" in problems(with_current("a", 0, 6.0))
    assert "outside its window" in problems(with_current("b", 25, 6.0))
    assert "not finite" in problems(with_current("a", 6, math.nan))
    full = [0.0] * 2 + [16.0] * 18 + [0.0] * (N - 20)
    over = broken(plan, "a", current_a=full, energy_kwh=16 * 18 * 0.1725, unmet_kwh=0.0)
    assert "needs only" in problems(over)
    assert "energy" in problems(broken(plan, "a", energy_kwh=123.0))
    assert "unmet" in problems(broken(plan, "a", unmet_kwh=123.0))
    assert "missing from the plan" in problems(plan.model_copy(update={"sessions": plan.sessions[:1]}))
    assert "more than once" in problems(
        plan.model_copy(update={"sessions": [*plan.sessions, plan.sessions[0]]})
    )
    assert "slots" in problems(broken(plan, "a", current_a=[0.0] * 3))
    assert "status" in problems(plan.model_copy(update={"status": "great"}))
    assert "delivered" in problems(plan.model_copy(update={"delivered_kwh": plan.delivered_kwh + 1}))
    assert "requested" in problems(plan.model_copy(update={"requested_kwh": 1.0}))


def test_check_plan_catches_l2_overload_of_three_phase_cars() -> None:
    """L2 and L3 carry only three-phase cars; a three-phase overload shows on all three phases."""
    nodes = [node("cab", None, 100.0), node("f", "cab", 10.0), node("p", "f", 16.0)]
    inst = ChargingInstance(n_slots=N, nodes=nodes, sessions=[car("a", "p", 50.0)])
    cur = [16.0] + [0.0] * (N - 1)
    e = 16 * 0.1725
    plan = ChargingPlan(
        status="feasible",
        sessions=[SessionPlan(id="a", current_a=cur, energy_kwh=e, unmet_kwh=50 - e)],
        delivered_kwh=e,
        requested_kwh=50.0,
        solve_seconds=0.0,
    )
    out = " | ".join(check_plan(inst, plan))
    assert "node f: L1" in out
    assert "node f: L2" in out
    assert "node f: L3" in out


def test_instance_validation_names_the_problem() -> None:
    """Unknown parents, cycles, wrong lengths and unknown posts are refused with a message."""
    with pytest.raises(ValidationError, match="unknown parent"):
        ChargingInstance(n_slots=N, nodes=[node("a", "x", 1.0)], sessions=[])
    with pytest.raises(ValidationError, match="cycle"):
        ChargingInstance(n_slots=N, nodes=[node("a", "b", 1.0), node("b", "a", 1.0)], sessions=[])
    with pytest.raises(ValidationError, match="limits for"):
        ChargingInstance(n_slots=N, nodes=[node("a", None, 1.0, n=3)], sessions=[])
    with pytest.raises(ValidationError, match="unknown node"):
        ChargingInstance(n_slots=N, nodes=[node("a", None, 1.0)], sessions=[car("s", "zz", 1.0)])
    with pytest.raises(ValidationError, match="phases"):
        car("s", "a", 1.0, phases=2)
    with pytest.raises(ValidationError, match="prices"):
        ChargingInstance(n_slots=N, nodes=[node("a", None, 1.0)], sessions=[], price=[1.0])


# --------------------------------------------------------------------------- property


@st.composite
def instances(draw: st.DrawFn) -> ChargingInstance:
    n = draw(st.integers(4, 12))
    limit = st.floats(0.0, 40.0, allow_nan=False)
    nodes = [SupplyNode(id="cab", parent=None, limit_a=draw(st.lists(limit, min_size=n, max_size=n)))]
    feeders = draw(st.integers(1, 3))
    for f in range(feeders):
        nodes.append(
            SupplyNode(
                id=f"f{f}",
                parent="cab",
                limit_a=draw(st.lists(limit, min_size=n, max_size=n)),
                phases=draw(st.sampled_from([1, 3])),
            )
        )
    posts = draw(st.integers(1, 6))
    sessions = []
    for p in range(posts):
        nodes.append(
            SupplyNode(id=f"p{p}", parent=f"f{draw(st.integers(0, feeders - 1))}", limit_a=[draw(limit)] * n)
        )
        if draw(st.booleans()):
            start = draw(st.integers(0, n))
            sessions.append(
                Session(
                    id=f"s{p}",
                    charger_id=f"c{p}",
                    node=f"p{p}",
                    phases=draw(st.sampled_from([1, 3])),
                    max_a=draw(st.floats(0.0, 32.0, allow_nan=False)),
                    min_a=draw(st.sampled_from([6.0, 6.0, 8.0])),
                    energy_kwh=draw(st.floats(0.0, 40.0, allow_nan=False)),
                    arrival_slot=start,
                    departure_slot=draw(st.integers(start, n + 2)),
                )
            )
    price = draw(st.none() | st.lists(st.floats(-0.2, 1.0, allow_nan=False), min_size=n, max_size=n))
    return ChargingInstance(n_slots=n, nodes=nodes, sessions=sessions, price=price, time_limit_s=5.0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_random_instances_give_valid_plans_within_the_lp_bound(inst: ChargingInstance) -> None:
    """Random small trees and cars: the plan and both baselines pass the checker, and nothing
    delivers more than the LP relaxation allows."""
    plan = solve(inst)
    assert check_plan(inst, plan) == []
    assert plan.status in {"optimal", "feasible"}
    bound = lp_upper_bound(inst)
    assert plan.delivered_kwh <= bound + 1e-6
    for base in (baseline_fcfs(inst), baseline_equal_share(inst)):
        assert check_plan(inst, base) == []
        assert base.delivered_kwh <= bound + 1e-6
