"""Tests for the street-lighting dimming optimizer: rules kept, energy saved, fallbacks safe."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from optimizer import lighting
from optimizer.common import Timer
from optimizer.lighting import (
    DimmingInstance,
    DimmingPlan,
    GroupPlan,
    LampGroup,
    Neighbour,
    check_plan,
    effective_neighbours,
    fallback_plan,
    lamp_power_w,
    solve,
)

EVENING = 16 * 60 + 30


def night(slots: int = 56, start: int = EVENING, minutes: int = 15) -> list[int]:
    """Local start minute of each slot of a night beginning at `start`."""
    return [(start + minutes * i) % 1440 for i in range(slots)]


def typical(minute: int, low: int) -> int:
    """Full requirement in the evening and from 05:30, `low` from 22:00 to 05:30."""
    return low if minute >= 22 * 60 or minute < 5 * 60 + 30 else 100


def group(gid: str, segment: str, required: list[int], **kw: object) -> LampGroup:
    base: dict[str, object] = {"lamp_count": 10, "p_max_w": 40.0, "p_min_w": 4.0}
    base.update(kw)
    return LampGroup(id=gid, segment=segment, required=required, **base)


def street(time_limit_s: float = 10.0) -> DimmingInstance:
    """A typical night: three streets, one with a never-dimmed zebra crossing in the middle."""
    mins = night()
    groups = [
        group("a1", "a", [typical(m, 30) for m in mins]),
        group("a2", "a", [100] * len(mins), lamp_count=4, p_max_w=60.0),  # crossing
        group("a3", "a", [typical(m, 20) for m in mins], d_min=10),
        group("b1", "b", [typical(m, 50) for m in mins], max_changes=2),
        group("b2", "b", [typical(m, 40) for m in mins]),
        group("c1", "c", [typical(m, 0) for m in mins], standby_w=1.0),  # park path, off at night
    ]
    return DimmingInstance(slot_start_local_minute=mins, groups=groups, time_limit_s=time_limit_s)


def changes(levels: list[int]) -> int:
    return sum(1 for x, y in itertools.pairwise(levels) if x != y)


def test_plan_meets_every_rule_on_a_typical_night() -> None:
    """Each group is at least at its requirement, changes <= K, and neighbours stay within range."""
    inst = street()
    plan = solve(inst)
    assert plan.status == "optimal", plan.reason
    levels = {g.id: g.levels for g in plan.groups}
    for g in inst.groups:
        lv = levels[g.id]
        assert len(lv) == len(inst.slot_start_local_minute)
        assert all(x >= r for x, r in zip(lv, g.required, strict=True))
        assert all(x in inst.levels and (x == 0 or x >= g.d_min) for x in lv)
        assert changes(lv) <= g.max_changes
    for a, b in [("a1", "a2"), ("a2", "a3"), ("b1", "b2")]:
        assert all(abs(x - y) <= 40 for x, y in zip(levels[a], levels[b], strict=True))
    assert check_plan(inst, plan) == []


def test_crossing_pulls_its_neighbours_up() -> None:
    """Next to a never-dimmed crossing the street may dim only to 100 - max_diff, not to its need."""
    plan = solve(street())
    levels = {g.id: g.levels for g in plan.groups}
    assert min(levels["a1"]) == 60
    assert min(levels["a3"]) == 60
    assert min(levels["c1"]) == 0  # a park path on its own segment may go dark


def test_energy_beats_both_baselines_on_a_typical_night() -> None:
    """A requirement-driven plan uses less than 100 % all night and less than Dortmund's 50 %."""
    plan = solve(street())
    assert plan.energy_kwh < plan.baseline_dortmund_kwh < plan.baseline_static_kwh
    assert plan.lower_bound_kwh <= plan.energy_kwh + 1e-9


def test_energy_numbers_recomputed_by_hand() -> None:
    """For one lamp group over four slots the reported kWh match a hand computation."""
    mins = [21 * 60, 21 * 60 + 30, 22 * 60, 22 * 60 + 30]
    g = LampGroup(
        id="g",
        segment="s",
        lamp_count=3,
        p_max_w=50.0,
        p_min_w=5.0,
        d_min=10,
        standby_w=1.0,
        required=[100, 100, 40, 0],
        max_changes=4,
    )
    inst = DimmingInstance(slot_minutes=30, slot_start_local_minute=mins, groups=[g])
    plan = solve(inst)
    assert plan.groups[0].levels == [100, 100, 40, 0]
    # P(d) = 5 + 45 * (d - 10) / 90 + 1 standby; P(0) = 1 standby.
    watts = [51.0, 51.0, 5 + 45 * 30 / 90 + 1, 1.0]
    hours = 0.5
    assert plan.energy_kwh == pytest.approx(3 * sum(watts) * hours / 1000)
    assert plan.baseline_static_kwh == pytest.approx(3 * 51.0 * 4 * hours / 1000)
    # Dortmund: 100 % before 21:30, 50 % after but never below the requirement (21:30 needs 100).
    p50 = 5 + 45 * 40 / 90 + 1
    dortmund = 3 * (51.0 + 51.0 + p50 + p50) * hours / 1000
    assert plan.baseline_dortmund_kwh == pytest.approx(dortmund)
    assert lamp_power_w(0, g) == 1.0
    assert lamp_power_w(100, g) == 51.0
    with pytest.raises(ValueError, match="outside"):
        lamp_power_w(5, g)


def test_requirement_rounds_up_to_an_allowed_level() -> None:
    """A 35 % need on a 10 % grid becomes 40 %; a driver with d_min 30 cannot run 10 or 20 %."""
    mins = night(4)
    inst = DimmingInstance(
        slot_start_local_minute=mins,
        groups=[
            group("g", "s", [35, 35, 35, 35]),
            group("h", "t", [15, 15, 15, 15], d_min=30),
        ],
    )
    levels = {g.id: g.levels for g in solve(inst).groups}
    assert levels == {"g": [40] * 4, "h": [30] * 4}


def test_change_limit_flattens_a_noisy_requirement() -> None:
    """With K = 1 a zig-zag requirement is met by one step, at the cheapest place."""
    req = [100, 40, 100, 40, 40, 40, 40, 40]
    inst = DimmingInstance(
        slot_start_local_minute=night(len(req)),
        groups=[group("g", "s", req, max_changes=1)],
    )
    plan = solve(inst)
    assert plan.groups[0].levels == [100, 100, 100, 40, 40, 40, 40, 40]
    assert plan.status == "optimal"


def test_explicit_neighbours_replace_derived_ones() -> None:
    """Given neighbour rules, the optimizer uses them, not the segment order."""
    mins = night(6)
    groups = [group("x", "s", [100] * 6), group("y", "s", [0] * 6), group("z", "t", [0] * 6)]
    inst = DimmingInstance(
        slot_start_local_minute=mins,
        groups=groups,
        neighbours=[Neighbour(a="x", b="z", max_diff=30)],
    )
    assert [(n.a, n.b) for n in effective_neighbours(inst)] == [("x", "z")]
    levels = {g.id: g.levels for g in solve(inst).groups}
    assert levels["y"] == [0] * 6
    assert levels["z"] == [70] * 6


@pytest.mark.parametrize("limit", [0.0, 1e-9])
def test_no_time_budget_gives_a_safe_fallback(limit: float) -> None:
    """A zero or absurdly small budget still yields a plan that keeps every rule."""
    inst = street(time_limit_s=limit)
    plan = solve(inst)
    assert plan.status in {"fallback", "feasible", "optimal"}
    assert check_plan(inst, plan) == []
    if limit == 0:
        assert plan.status == "fallback"
        assert "time" in plan.reason


def test_fallback_is_stepwise_when_that_keeps_the_rules() -> None:
    """Without conflicts the fallback follows the rounded requirement slot by slot."""
    req = [100, 100, 50, 50]
    inst = DimmingInstance(slot_start_local_minute=night(4), groups=[group("g", "s", req)])
    plan = fallback_plan(inst, "test")
    assert plan.status == "fallback"
    assert plan.reason == "test"
    assert plan.groups[0].levels == req
    assert check_plan(inst, plan) == []


def test_fallback_lifts_flat_levels_when_stepwise_breaks_rules() -> None:
    """Too many steps or a neighbour conflict make the fallback flat and lifted, still valid."""
    req = [100, 20, 100, 20, 100, 20]
    inst = DimmingInstance(
        slot_start_local_minute=night(6),
        groups=[
            group("a", "s", req, max_changes=1),
            group("b", "s", [0] * 6),
            group("c", "s", [0] * 6),
        ],
        default_neighbour_diff=30,
    )
    plan = fallback_plan(inst, "test")
    levels = {g.id: g.levels for g in plan.groups}
    assert levels == {"a": [100] * 6, "b": [70] * 6, "c": [40] * 6}
    assert check_plan(inst, plan) == []


def _broken(plan: DimmingPlan, gid: str, levels: list[int]) -> DimmingPlan:
    groups = [
        GroupPlan(id=g.id, levels=levels, energy_kwh=g.energy_kwh) if g.id == gid else g for g in plan.groups
    ]
    return plan.model_copy(update={"groups": groups})


def _one_group(req: list[int], **kw: object) -> tuple[DimmingInstance, DimmingPlan]:
    inst = DimmingInstance(slot_start_local_minute=night(len(req)), groups=[group("g", "s", req, **kw)])
    return inst, solve(inst)


def test_check_catches_a_level_below_requirement() -> None:
    """Dimming below the requirement in one slot is reported with the slot and its time."""
    inst, plan = _one_group([100, 100, 50, 50])
    bad = check_plan(inst, _broken(plan, "g", [100, 100, 40, 50]))
    assert any("below required 50" in v and "slot 2 (17:00)" in v for v in bad)


def test_check_catches_too_many_changes() -> None:
    """A plan with more level changes than the controller stores is reported."""
    inst, plan = _one_group([0, 0, 0, 0, 0], max_changes=2)
    bad = check_plan(inst, _broken(plan, "g", [0, 50, 0, 50, 0]))
    assert any("4 level changes, at most 2" in v for v in bad)


def test_check_catches_neighbours_too_far_apart() -> None:
    """Two neighbouring groups more than max_diff apart are reported."""
    inst = DimmingInstance(
        slot_start_local_minute=night(3),
        groups=[group("a", "s", [100] * 3), group("b", "s", [0] * 3)],
    )
    plan = solve(inst)
    bad = check_plan(inst, _broken(plan, "b", [0, 60, 60]))
    assert any(v.startswith("neighbours a/b") and "differ by more than 40" in v for v in bad)


def test_check_catches_levels_the_driver_cannot_run() -> None:
    """Levels off the grid or below d_min, and wrong lengths, are reported."""
    inst, plan = _one_group([0, 0, 0], d_min=20)
    assert any("not allowed" in v for v in check_plan(inst, _broken(plan, "g", [10, 10, 10])))
    assert any("not allowed" in v for v in check_plan(inst, _broken(plan, "g", [55, 55, 55])))
    assert any("2 levels for 3 slots" in v for v in check_plan(inst, _broken(plan, "g", [0, 0])))


def test_check_catches_wrong_energy_and_missing_groups() -> None:
    """Misreported kWh, a missing group, an unknown group and a bad status are all reported."""
    inst, plan = _one_group([100, 50, 50])
    wrong = plan.model_copy(update={"energy_kwh": plan.energy_kwh * 0.5})
    assert any(v.startswith("plan energy") for v in check_plan(inst, wrong))
    g = plan.groups[0]
    lying = plan.model_copy(update={"groups": [GroupPlan(id="g", levels=g.levels, energy_kwh=0.0)]})
    assert any("energy 0.000000 kWh" in v for v in check_plan(inst, lying))
    stranger = GroupPlan(id="zz", levels=g.levels, energy_kwh=0.0)
    swapped = plan.model_copy(update={"groups": [stranger], "status": "great"})
    bad = check_plan(inst, swapped)
    assert any("missing from the plan" in v for v in bad)
    assert any("zz: not in the instance" in v for v in bad)
    assert any("status 'great'" in v for v in bad)
    baseline = plan.model_copy(update={"baseline_static_kwh": 0.0})
    assert any(v.startswith("static baseline") for v in check_plan(inst, baseline))


def test_invalid_instances_are_rejected_at_the_boundary() -> None:
    """Inconsistent instances fail validation, so solve() never sees them."""
    mins = night(2)
    with pytest.raises(ValidationError, match="2 slots"):
        DimmingInstance(slot_start_local_minute=mins, groups=[group("g", "s", [0])])
    with pytest.raises(ValidationError, match="must contain 100"):
        DimmingInstance(slot_start_local_minute=mins, levels=[0, 50], groups=[])
    with pytest.raises(ValidationError, match="unknown group"):
        DimmingInstance(
            slot_start_local_minute=mins,
            groups=[group("g", "s", [0, 0])],
            neighbours=[Neighbour(a="g", b="h", max_diff=10)],
        )
    with pytest.raises(ValidationError, match="duplicate"):
        DimmingInstance(
            slot_start_local_minute=mins,
            groups=[group("g", "s", [0, 0]), group("g", "t", [0, 0])],
        )
    with pytest.raises(ValidationError, match="p_min_w"):
        group("g", "s", [0], p_min_w=50.0, p_max_w=40.0)


# --------------------------------------------------------------------------- property test

LEVEL_GRIDS = [
    [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100],
    [0, 25, 50, 75, 100],
    [20, 60, 100],  # no "off": lamps may never go dark
]


@st.composite
def instances(draw: st.DrawFn) -> DimmingInstance:
    """Small random nights: 1-6 groups on 1-3 segments, 1-10 slots, random rules and grids."""
    n = draw(st.integers(1, 10))
    n_groups = draw(st.integers(1, 6))
    need = st.integers(0, 100) | st.sampled_from([0, 30, 50, 100])
    groups = []
    for i in range(n_groups):
        p_max = draw(st.floats(1.0, 150.0))
        groups.append(
            LampGroup(
                id=f"g{i}",
                segment=f"s{draw(st.integers(0, 2))}",
                lamp_count=draw(st.integers(1, 30)),
                p_max_w=p_max,
                p_min_w=draw(st.floats(0.0, p_max)),
                d_min=draw(st.sampled_from([1, 10, 25, 60, 100])),
                standby_w=draw(st.floats(0.0, 3.0)),
                required=draw(st.lists(need, min_size=n, max_size=n)),
                max_changes=draw(st.integers(0, 4)),
            )
        )
    ids = [g.id for g in groups]
    neighbours: list[Neighbour] = []
    if n_groups > 1 and draw(st.booleans()):
        pairs = st.tuples(st.sampled_from(ids), st.sampled_from(ids)).filter(lambda p: p[0] != p[1])
        for a, b in draw(st.lists(pairs, max_size=6)):
            neighbours.append(Neighbour(a=a, b=b, max_diff=draw(st.integers(0, 100))))
    return DimmingInstance(
        slot_minutes=draw(st.sampled_from([10, 15, 30])),
        slot_start_local_minute=night(n, start=draw(st.integers(0, 1439))),
        levels=draw(st.sampled_from(LEVEL_GRIDS)),
        groups=groups,
        neighbours=neighbours,
        default_neighbour_diff=draw(st.integers(0, 60)),
        time_limit_s=5.0,
    )


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inst=instances())
def test_solve_always_passes_the_check_and_never_beats_physics(inst: DimmingInstance) -> None:
    """Any small instance: solve() passes check_plan and uses no more than 100 % all night."""
    plan = solve(inst)
    assert check_plan(inst, plan) == []
    assert plan.status in {"optimal", "feasible"}, plan.reason
    assert plan.energy_kwh <= plan.baseline_static_kwh + 1e-9
    assert plan.lower_bound_kwh <= plan.energy_kwh + 1e-6
    safe = fallback_plan(inst, "property")
    assert check_plan(inst, safe) == []
    assert plan.energy_kwh <= safe.energy_kwh * (1 + 1e-6) + 1e-6


def _needs_cpsat() -> DimmingInstance:
    """Two locked-together groups whose per-group optima step in different slots."""
    return DimmingInstance(
        slot_start_local_minute=night(4),
        groups=[
            group("a", "s", [100, 0, 100, 0], max_changes=1),
            group("b", "s", [0, 0, 0, 0]),
        ],
        default_neighbour_diff=0,
    )


def test_cpsat_solves_a_component_the_dp_cannot() -> None:
    """When per-group optima clash, CP-SAT finds the joint optimum (both at 100 % then off)."""
    inst = _needs_cpsat()
    plan = solve(inst)
    assert plan.status == "optimal"
    assert plan.stats["cpsat_optimal"] == 1
    assert {g.id: g.levels for g in plan.groups} == {"a": [100, 100, 100, 0], "b": [100, 100, 100, 0]}


@pytest.mark.parametrize("status", ["UNKNOWN", "INFEASIBLE", "MODEL_INVALID", "error"])
def test_every_solver_failure_falls_back_with_a_reason(monkeypatch: pytest.MonkeyPatch, status: str) -> None:
    """Any CP-SAT status without a solution, or an exception, yields a valid fallback plan."""

    def fake_solve(self: lighting._ComponentModel, time_limit_s: float, workers: int) -> object:
        if status == "error":
            raise RuntimeError("boom")
        return lighting._ModelResult(status, None, 0.0)

    monkeypatch.setattr(lighting._ComponentModel, "solve", fake_solve)
    inst = _needs_cpsat()
    plan = solve(inst)
    assert plan.status == "fallback"
    assert ("boom" if status == "error" else status) in plan.reason
    assert check_plan(inst, plan) == []


def test_the_timer_can_override_the_instance_budget() -> None:
    """An injected timer's own limit wins over the instance's: zero gives the safe fallback."""
    inst = street(time_limit_s=10.0)
    plan = solve(inst, timer=Timer(time_limit_s=0.0))
    assert plan.status == "fallback"
    assert check_plan(inst, plan) == []
