"""The dialect every optimizer module speaks (optimizer/common.py): solve(instance, *, timer),
check_plan(instance, plan), fallback_plan(instance), and the checked-plan rule behind solve."""

from __future__ import annotations

import inspect
from types import ModuleType

import pytest

from optimizer import charging, displays, lighting, routing, waste
from optimizer.common import WALL, PlanStatus, Timer, checked


@pytest.mark.parametrize("module", [lighting, charging, displays, waste, routing], ids=lambda m: m.__name__)
def test_every_optimizer_module_has_the_three_verbs(module: ModuleType) -> None:
    """A caller (or a fifth domain) finds the same three functions with the same shape everywhere."""
    solve = inspect.signature(module.solve)
    assert next(iter(solve.parameters.values())).kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert solve.parameters["timer"].kind is inspect.Parameter.KEYWORD_ONLY
    assert len(inspect.signature(module.check_plan).parameters) == 2
    fallback = inspect.signature(module.fallback_plan)
    required = [
        p
        for p in fallback.parameters.values()
        if p.default is inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD
    ]
    assert len(required) == 1  # the instance alone is enough


def test_timer_limit_overrides_the_instance_budget() -> None:
    """Without its own limit a timer keeps the instance's; with one, its own wins."""
    assert WALL.limit(7.0) == 7.0
    assert Timer(time_limit_s=2.5).limit(7.0) == 2.5
    ticks = iter([1.0, 4.0])
    fake = Timer(clock=lambda: next(ticks))
    assert (fake(), fake()) == (1.0, 4.0)


def _fallback(reason: str, seconds: float) -> str:
    return f"fallback: {reason} after {seconds}"


def test_checked_returns_a_clean_plan_without_reading_the_clock() -> None:
    """A plan the check accepts is returned as it is, and `elapsed` is not read."""

    def elapsed() -> float:
        raise AssertionError("read the clock on the good path")

    assert checked("inst", lambda: "plan", lambda i, p: [], _fallback, elapsed) == "plan"


def test_checked_falls_back_on_a_failed_check_and_on_an_error() -> None:
    """A plan with violations, or a solver that raises, gives the fallback with the reason."""
    got = checked("inst", lambda: "plan", lambda i, p: ["too bright", "too dark"], _fallback, lambda: 1.5)
    assert got == "fallback: solver plan failed check: too bright after 1.5"

    def broken() -> str:
        raise ZeroDivisionError("boom")

    got = checked("inst", broken, lambda i, p: [], _fallback, lambda: 2.0)
    assert got == "fallback: solver error: ZeroDivisionError: boom after 2.0"


def test_plan_status_values_are_the_strings_plans_carry() -> None:
    """Plans and the API carry these strings; the enum is only their one definition."""
    assert [s.value for s in PlanStatus] == ["optimal", "feasible", "fallback", "infeasible"]
    assert routing.Status is PlanStatus
