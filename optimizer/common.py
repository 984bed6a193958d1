"""What every optimizer module shares: the timer/limits object, the plan status, the checked-plan rule.

Every `optimizer/{domain}.py` speaks one dialect: a frozen, fully prepared instance in, then
`solve(instance, *, timer)`, `check_plan(instance, plan) -> list[str]` (independent of any
solver: an empty list means the plan may be used) and `fallback_plan(instance)` (a safe plan
without a solver). `Timer` is passed in rather than read from the wall clock so that a test can
drive a solve with a fake clock, or stop a search after a number of solutions or iterations
(deterministic, whatever the machine's load) instead of after a fraction of a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

__all__ = ["WALL", "PlanStatus", "Timer", "checked"]


class PlanStatus(StrEnum):
    """How a plan came about; the string values are what plans and the API carry."""

    OPTIMAL = "optimal"  # proved optimal
    FEASIBLE = "feasible"  # a solution, a limit reached before proving it optimal
    FALLBACK = "fallback"  # the solver gave nothing usable: the safe constructive plan
    INFEASIBLE = "infeasible"  # no plan keeps every hard rule (the violations say which)


@dataclass(frozen=True, slots=True)
class Timer:
    """A monotonic clock and the limits of one solve.

    `clock` is seconds from any origin (injectable: tests pass a fake). `time_limit_s`
    overrides the instance's own budget when set (routing has none of its own and needs it).
    `solution_limit` stops a search engine after that many improving solutions (OR-Tools
    routing) or iterations (PyVRP): with `seed` such a run is the same on any machine. Engines
    without such a notion (LP, min-cost flow, CP-SAT on small components) ignore it.
    `workers` is how many processes one solve may keep busy (routing runs PyVRP with further
    seeds in helper processes); None: as many as the machine has, at most two. 1: this process only.
    """

    clock: Callable[[], float] = time.perf_counter
    time_limit_s: float | None = None
    solution_limit: int | None = None
    seed: int = 0
    workers: int | None = None

    def __call__(self) -> float:
        return self.clock()

    def limit(self, default_s: float) -> float:
        """The time budget in seconds: this timer's own, else the instance's `default_s`."""
        return default_s if self.time_limit_s is None else self.time_limit_s


WALL = Timer()  # the wall clock, no extra limits: what production code uses

InstanceT = TypeVar("InstanceT")
PlanT = TypeVar("PlanT")


def checked(
    inst: InstanceT,
    attempt: Callable[[], PlanT],
    check: Callable[[InstanceT, PlanT], list[str]],
    fallback: Callable[[str, float], PlanT],
    elapsed: Callable[[], float],
) -> PlanT:
    """The solver's plan only if `check` finds nothing in it, else `fallback(reason, seconds)`.

    A solver error is a fallback with its reason too: a city must get a safe plan even on a bug.
    `attempt` may itself return a fallback plan (a budget of zero, a solver status without a
    solution); that plan is checked like any other. `elapsed` gives the seconds spent so far,
    read only on the way to a fallback (a test's fake clock sees no extra reads).
    """
    try:
        plan = attempt()
    except Exception as exc:  # a bug in a solver never leaves devices without a plan
        return fallback(f"solver error: {type(exc).__name__}: {exc}", elapsed())
    problems = check(inst, plan)
    if problems:
        return fallback(f"solver plan failed check: {problems[0]}", elapsed())
    return plan
