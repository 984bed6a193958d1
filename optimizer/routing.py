"""Vehicle routing: a prepared instance in, a checked plan out.

The instance is plain data (integer matrices, demands, windows), so the same
model serves waste collection and the public CVRP/VRPTW benchmark instances.
Nodes are indices into the matrices. A vehicle starts at its `start` node at
its shift start with `start_load`, ends at its `end` node; `reload` nodes (the
disposal site) empty the vehicle and may be visited any number of times.
Customers are `required` or optional with a `penalty` for leaving them out.

`check_plan()` is independent of any solver: a plan is only used if it finds nothing.

The OR-Tools model (`_OrModel`) owns every constraint: distance as arc cost (a registered
transit matrix, much faster than a Python callback), a time dimension (travel plus service,
waiting allowed, node windows, shift windows), one load dimension per demand dimension whose
value drops to zero at a reload (several optional copies of each reload node, a negative
transit there and slack to absorb it), the vehicle empty at its end when reloads exist,
committed (`fixed`) stops first, and a disjunction per customer: the penalty for optional ones,
a huge one for required ones so the solver always has something to return and we can name
what it had to drop.

`solve(strategy="auto")` runs PyVRP's iterated local search (same constraints, translated by
`pyvrp_model`) here for the whole limit and, on a second core, in helper processes with other
seeds (optimizer/routing_parallel.py); one helper polishes with OR-Tools' guided local search only
where that pays (tight windows, or routes that needed a repair). Every candidate is checked; the
best clean one is the plan. See docs/routing.md for strategies and measurements.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from optimizer.common import PlanStatus, Timer
from optimizer.routing_check import check_plan, make_plan
from optimizer.routing_greedy import fallback_plan, greedy_routes, repair, unservable
from optimizer.routing_model import (
    Route,
    RoutingInstance,
    RoutingPlan,
    Stop,
    Vehicle,
    make_route,
    must_end_empty,
    validate,
)
from optimizer.routing_parallel import Candidate, HelperJob, Helpers, default_workers
from optimizer.routing_pyvrp import PyvrpModel, finish_routes, pyvrp_model, pyvrp_search, pyvrp_solve

__all__ = [
    "STRATEGIES",
    "PlanStatus",
    "PyvrpModel",
    "Route",
    "RoutingInstance",
    "RoutingPlan",
    "Status",
    "Stop",
    "Vehicle",
    "check_plan",
    "fallback_plan",
    "greedy_routes",
    "make_plan",
    "make_route",
    "pyvrp_model",
    "repair",
    "solve",
    "unservable",
    "validate",
]

Status = PlanStatus  # the name routing used before the status was shared

STRATEGIES = ("auto", "ortools", "pyvrp", "fallback")
# Time for OR-Tools' guided local search after PyVRP in a helper of "auto". Measured
# (docs/routing.md): from PyVRP's routes GLS gains much within seconds on tight time windows, and
# little on capacity-dominated problems or once PyVRP has had a minute to converge by itself.
_POLISH_SHARE_WINDOWS = 0.4
_POLISH_MAX_WINDOWS_S = 4.0
_RESCUE_SHARE = 0.02  # kept for OR-Tools to re-insert what a repair of PyVRP's routes dropped
_POLISH_MAX_CUSTOMERS = 500  # above this, building the OR-Tools model alone takes seconds
_PARALLEL_MIN_CUSTOMERS = 20  # below this PyVRP converges within a second: a helper costs more than it wins
_PARALLEL_MIN_S = 1.0  # a helper needs about half a second to start (spawn, imports, the data)
_HELPER_EARLY_S = 0.1  # helpers stop searching this much before the caller, to answer in time
_TIGHT_WINDOW = 0.25  # a window shorter than this share of the planning horizon binds the search
_WINDOWED = 0.25  # share of customers with binding windows that makes an instance "time-windowed"
_BUILD_RESERVE_S = 0.03  # of the time limit kept for extracting and checking the plan


@dataclass(frozen=True, slots=True)
class _Budget:
    """One solve's clock, its time limit, when it started and where a search engine must stop."""

    timer: Timer
    limit_s: float
    t0: float

    def elapsed(self) -> float:
        return self.timer() - self.t0

    def left(self) -> float:
        """Seconds left for a search, less the reserve for extracting and checking the plan."""
        return max(0.01, self.limit_s - self.elapsed() - _BUILD_RESERVE_S)


def solve(instance: RoutingInstance, *, timer: Timer, strategy: str = "auto") -> RoutingPlan:
    """Route `instance` within about `timer.time_limit_s`; the plan is checked and never raises for valid input.

    strategy: "auto" (the default, see docs/routing.md), "ortools" (OR-Tools alone: parallel
    cheapest insertion then guided local search), "pyvrp" (PyVRP alone), "fallback" (the
    constructive heuristic only). `timer.seed` seeds PyVRP; `timer.solution_limit`, when set,
    also stops each engine after that many iterations (PyVRP) or solutions (OR-Tools), which makes
    a run the same on any machine when the time limit is generous.
    Status: OPTIMAL/FEASIBLE with no violations; FALLBACK when the solver gave nothing usable and
    the greedy plan is clean; INFEASIBLE when the best plan found still breaks something (most
    often a required customer it could not serve: the violations name it).
    """
    validate(instance)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown routing strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if timer.time_limit_s is None or timer.time_limit_s <= 0:
        raise ValueError("routing needs a time limit > 0 (timer.time_limit_s)")
    run = _Budget(timer, timer.time_limit_s, timer())
    if strategy == "fallback" or not instance.customers:
        return fallback_plan(instance, timer=timer)
    if strategy == "ortools":
        return _solve_ortools(instance, run)
    if strategy == "pyvrp":
        start, note = _pyvrp_start(instance, run)
        return _finish(instance, start, "PYVRP", note, run)
    return _solve_auto(instance, run)


def _pyvrp_start(instance: RoutingInstance, run: _Budget) -> tuple[dict[str, list[int]] | None, str]:
    """PyVRP's routes for all the time left, repaired if they break anything; None (and why) if
    PyVRP failed."""
    try:
        model = pyvrp_model(instance)
        start, ok = pyvrp_solve(
            instance, model, run.left(), run.timer.seed, iterations=run.timer.solution_limit
        )
        note = "pyvrp-ils"
        if not ok or make_plan(instance, start, PlanStatus.FEASIBLE, note, 0.0).violations:
            start, note = repair(instance, start), "pyvrp-ils-repaired"
    except Exception as exc:  # a second engine failing must never cost us the plan
        return None, f"pyvrp-error:{type(exc).__name__}"
    return start, note


def _solve_auto(instance: RoutingInstance, run: _Budget) -> RoutingPlan:
    """PyVRP here for the whole limit, the same search with other seeds in helper processes (one
    polishing with OR-Tools where that pays), the best clean plan of all; see docs/routing.md."""
    timer = run.timer
    try:
        model = pyvrp_model(instance)
    except Exception as exc:  # a second engine failing must never cost us the plan
        plan = _solve_ortools(instance, run)
        return replace(plan, solver=f"pyvrp-error:{type(exc).__name__}+{plan.solver}")
    small = len(instance.customers) <= _POLISH_MAX_CUSTOMERS
    tiny = len(instance.customers) < _PARALLEL_MIN_CUSTOMERS
    polish = small and _windowed(instance)
    left = run.left()
    polish_s = min(_POLISH_SHARE_WINDOWS * left, _POLISH_MAX_WINDOWS_S) if polish else _RESCUE_SHARE * left
    deadline = time.monotonic() + left
    jobs = [
        HelperJob(
            instance, timer.seed + k, deadline - _HELPER_EARLY_S, timer.solution_limit,
            polish_s=polish_s if k == 1 and small else 0.0, polish=polish,
        )
        for k in range(1, _helper_count(instance, run) + 1)
    ]  # fmt: skip
    found: list[Candidate] = []
    with Helpers(jobs) as helpers:
        # With helpers, PyVRP here has the whole limit (a helper polishes). Alone: a tiny instance
        # (PyVRP converges within a second) is polished here; otherwise OR-Tools' time is kept
        # only to re-insert what a repair drops.
        own = left
        if not helpers.helpers:
            own -= polish_s if tiny else (_RESCUE_SHARE * left if small else 0.0)
        try:
            body, ok = pyvrp_search(model, own, timer.seed, iterations=timer.solution_limit)
            found.append(Candidate(finish_routes(instance, model, body), ok, "pyvrp-ils"))
        except Exception as exc:  # the helpers' plans or OR-Tools still serve
            found.append(Candidate({}, False, f"pyvrp-error:{type(exc).__name__}"))
        found += helpers.collect(until=deadline + _HELPER_EARLY_S)
    plans = [_candidate_plan(instance, c, run) for c in found]
    if small and run.left() > 0.01 and ((tiny and not jobs) or all(p.violations for p in plans)):
        plans += _polished(instance, min(plans, key=_objective), run)
    if all(p.violations for p in plans):
        plans.append(fallback_plan(instance, wall_s=run.elapsed(), timer=timer))
    best = min(plans, key=_objective)
    return replace(best, wall_s=run.elapsed())


def _polished(instance: RoutingInstance, best: RoutingPlan, run: _Budget) -> list[RoutingPlan]:
    """OR-Tools' guided local search from `best`'s routes for the time left (re-inserting what a
    repair dropped, if anything): its plan, or nothing."""
    from optimizer.routing_ortools import FIRST, META, OrToolsModel  # the search process only

    start = {r.vehicle: [s.node for s in r.stops] for r in best.routes}
    routes, status = OrToolsModel(instance).search(
        run.left(), FIRST.AUTOMATIC, META.GUIDED_LOCAL_SEARCH, start=start,
        solution_limit=run.timer.solution_limit,
    )  # fmt: skip
    if routes is None:
        return []
    label = f"{best.solver}+ortools-gls:{status}"
    return [make_plan(instance, routes, PlanStatus.FEASIBLE, label, run.elapsed())]


def _helper_count(instance: RoutingInstance, run: _Budget) -> int:
    """Helper processes for this solve: none when there is one worker, the instance is small or
    the time short."""
    workers = run.timer.workers if run.timer.workers is not None else default_workers()
    if workers <= 1 or len(instance.customers) < _PARALLEL_MIN_CUSTOMERS or run.left() < _PARALLEL_MIN_S:
        return 0
    return workers - 1


def _candidate_plan(instance: RoutingInstance, c: Candidate, run: _Budget) -> RoutingPlan:
    """The checked plan of one engine's routes; repaired (what breaks them dropped) if needed."""
    plan = make_plan(instance, c.routes, PlanStatus.FEASIBLE, c.label, run.elapsed())
    if c.feasible and not plan.violations:
        return plan
    fixed = repair(instance, c.routes)
    return make_plan(instance, fixed, PlanStatus.FEASIBLE, f"{c.label}-repaired", run.elapsed())


def _windowed(instance: RoutingInstance) -> bool:
    """Whether enough customers have windows much shorter than the shifts to make time the hard part."""
    horizon = max(v.shift[1] for v in instance.vehicles) - min(v.shift[0] for v in instance.vehicles)
    tight = sum(
        1
        for c in instance.customers
        if instance.window[c][1] - instance.window[c][0] < _TIGHT_WINDOW * horizon
    )
    return tight >= _WINDOWED * max(1, len(instance.customers))


def _objective(plan: RoutingPlan) -> tuple[int, int]:
    return (len(plan.violations), plan.distance + plan.penalty)


def _needs_warm_start(instance: RoutingInstance) -> bool:
    """Whether an empty route is infeasible for some vehicle, which defeats OR-Tools' first-solution heuristics."""
    return any(v.fixed or (must_end_empty(instance, v) and any(v.start_load)) for v in instance.vehicles)


def _solve_ortools(instance: RoutingInstance, run: _Budget) -> RoutingPlan:
    """Parallel cheapest insertion then guided local search; from the greedy plan when that cannot
    start or the windows are tight."""
    from optimizer.routing_ortools import FIRST, META, OrToolsModel  # the search process only

    routes, status, label = None, "ROUTING_NOT_SOLVED", "ortools"
    limit = run.timer.solution_limit
    # Tight windows: parallel cheapest insertion leaves a required customer out on R1_2_1 (200
    # customers, 20 vehicles) and GLS never puts it back in 10 s; from the greedy plan it does.
    if not _needs_warm_start(instance) and not _windowed(instance):
        model = OrToolsModel(instance)
        routes, status = model.search(
            run.left(), FIRST.PARALLEL_CHEAPEST_INSERTION, META.GUIDED_LOCAL_SEARCH, solution_limit=limit
        )
        label = f"ortools:parallel-cheapest-insertion+gls:{status}"
    if routes is None:
        model = OrToolsModel(instance)
        routes, status = model.search(
            run.left(),
            FIRST.AUTOMATIC,
            META.GUIDED_LOCAL_SEARCH,
            start=greedy_routes(instance),
            solution_limit=limit,
        )
        label = f"ortools:greedy-warm-start+gls:{status}"
    return _finish(instance, routes, status, label, run)


def _finish(
    instance: RoutingInstance, routes: dict[str, list[int]] | None, status: str, label: str, run: _Budget
) -> RoutingPlan:
    """The solver's plan if it is clean; else the fallback if that is cleaner; else the solver's, flagged."""
    plan = None
    if routes is not None:
        st = PlanStatus.OPTIMAL if status == "ROUTING_OPTIMAL" else PlanStatus.FEASIBLE
        plan = make_plan(instance, routes, st, label, run.elapsed())
        if not plan.violations:
            return plan
    fb = fallback_plan(instance, wall_s=run.elapsed(), timer=run.timer)
    if plan is None or len(fb.violations) < len(plan.violations):
        return fb
    return plan
