"""Parking guidance: spread the cars approaching each sign over free car-park spaces, short detours.

The problem. Each approach (a road into the guided area) brings `demand` cars per planning
interval past its signs; each car park can take `free - margin` more (the margin, 10 % of the
capacity and at least 2 spaces, stays free for cars that do not follow the signs); a car from
approach a to car park p costs `minutes[a, p]` of driving. Only open car parks with fresh data are
guided to: a number older than its freshness limit must never be shown as current (DOMAIN.md,
Displays), so a stale car park is treated as unknown.

The model is a min-cost flow (OR-Tools `SimpleMinCostFlow`), which is exact for this problem
(integral capacities give an integral optimum, no rounding step):

    approach a (supply demand_a) --[cap demand_a, cost minutes]--> car park p
    car park p --[cap usable_p, cost 0]--> sink (supply -total demand)
    approach a --[cap demand_a, cost overflow_cost]--> sink          (a car we cannot place)

Costs are integer deci-minutes (0.1 min, far below any travel-time estimate). The overflow arcs
keep every instance feasible and balanced, so OPTIMAL is the only status expected; every other
status (INFEASIBLE, UNBALANCED, BAD_RESULT, BAD_COST_RANGE, BAD_CAPACITY_RANGE, NOT_SOLVED,
FEASIBLE), an exception, or a flow that fails `check_plan` gives `fallback_plan` with the reason.
A pair longer than `overflow_cost` is never worth using (the car is better left to find a space
itself than sent on that detour), so it is left out of the flow, the signs and the fallback alike.

Signs. Each sign shows the car park that gets most of its approach's flow (ties: the shorter
trip, then the id), that car park's free spaces and a hint (the pair's arrow/route hint if the
caller gave one, else "<name> ~N min"). An approach that gets no flow (demand 0, or every car
unplaced) points to its nearest guidable car park with room left after the plan, else to none
("no free parking"): a sign never sends cars to a car park at or below its margin.

`total_minutes` is the objective in minutes: travel of the placed cars plus `overflow_cost` for
each unplaced car, so plans that place different numbers of cars compare fairly.

Time limit: `SimpleMinCostFlow` offers none, and none is needed: the solve is polynomial, and
`python -m bench guidance` (200 car parks, 1,000 approaches, 30,000 pairs, 2 cores) measures
0.15-0.20 s of CPU a solve (medians of 3 runs, normal and tight load, on a shared machine)
against its 1 s target, of which the flow itself is ~10 ms and the rest preparing, assembling
and checking the plan in Python (the greedy fallback alone takes 0.12-0.13 s).
The flow's total minutes are 8-16 % below the greedy fallback's (more below when car parks run
full, where greedy order strands cars).

The module is pure: no I/O, no logging, no wall clock. `solve` reads a monotonic timer (which can
be injected) only to report its solve time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ortools.graph.python import min_cost_flow

from optimizer.common import WALL, Timer, checked
from optimizer.displays_model import (
    _MAX_DECI,
    DECI,
    MINUTES_TOL,
    NO_PARKING_HINT,
    STATUSES,
    Approach,
    Assignment,
    CarPark,
    GuidanceInstance,
    GuidancePlan,
    Minutes,
    Recommendation,
    TravelCost,
    _deci,
    check_plan,
    margin,
    usable,
)

__all__ = [
    "DECI",
    "MINUTES_TOL",
    "NO_PARKING_HINT",
    "STATUSES",
    "Approach",
    "Assignment",
    "CarPark",
    "GuidanceInstance",
    "GuidancePlan",
    "Minutes",
    "Recommendation",
    "TravelCost",
    "check_plan",
    "fallback_plan",
    "margin",
    "solve",
    "usable",
]


class _Pair(NamedTuple):  # not a frozen dataclass: 30,000 are built per solve, 4x faster
    a: int  # approach index
    p: int  # car park index
    cost: TravelCost


@dataclass(frozen=True, slots=True)
class _Prep:
    inst: GuidanceInstance
    usable: tuple[int, ...]  # per car park
    pairs: tuple[_Pair, ...]  # guidable: usable > 0 and minutes <= overflow_cost
    by_approach: tuple[tuple[_Pair, ...], ...]  # the same, per approach, nearest first


def _prepare(inst: GuidanceInstance) -> _Prep:
    a_index = {a.id: i for i, a in enumerate(inst.approaches)}
    p_index = {p.id: j for j, p in enumerate(inst.car_parks)}
    cap = tuple(usable(inst, p) for p in inst.car_parks)
    pairs = tuple(
        _Pair(a_index[c.approach], p_index[c.car_park], c)
        for c in inst.costs
        if cap[p_index[c.car_park]] > 0 and c.minutes <= inst.overflow_cost
    )
    per: list[list[_Pair]] = [[] for _ in inst.approaches]
    for pr in pairs:
        per[pr.a].append(pr)
    for lst in per:
        lst.sort(key=lambda pr: (pr.cost.minutes, pr.cost.car_park))
    return _Prep(inst, cap, pairs, tuple(tuple(lst) for lst in per))


def _hint(park: CarPark, c: TravelCost) -> str:
    return c.hint or f"{park.name} ~{c.minutes:.0f} min"


def _recommend(prep: _Prep, choice: list[_Pair | None]) -> list[Recommendation]:
    """One recommendation per sign: its approach's chosen pair, or none."""
    inst = prep.inst
    out: list[Recommendation] = []
    for a, pr in zip(inst.approaches, choice, strict=True):
        for s in a.sign_ids:
            if pr is None:
                out.append(
                    Recommendation(
                        sign_id=s, approach=a.id, car_park=None, free=None, minutes=None, hint=NO_PARKING_HINT
                    )
                )
            else:
                park = inst.car_parks[pr.p]
                out.append(
                    Recommendation(
                        sign_id=s,
                        approach=a.id,
                        car_park=park.id,
                        free=park.free,
                        minutes=pr.cost.minutes,
                        hint=_hint(park, pr.cost),
                    )
                )
    return out


def _assemble(
    prep: _Prep,
    flow: dict[tuple[int, int], int],
    choice: list[_Pair | None],
    *,
    status: str,
    reason: str,
    solve_seconds: float,
) -> GuidancePlan:
    inst = prep.inst
    pair_of = {(pr.a, pr.p): pr for pr in prep.pairs}
    assignments: list[Assignment] = []
    travel = 0.0
    placed = 0
    for (a, p), cars in sorted(flow.items()):
        if cars <= 0:
            continue
        assignments.append(
            Assignment(approach=inst.approaches[a].id, car_park=inst.car_parks[p].id, cars=cars)
        )
        travel += cars * pair_of[a, p].cost.minutes
        placed += cars
    unplaced = sum(a.demand for a in inst.approaches) - placed
    return GuidancePlan(
        status=status,
        reason=reason,
        assignments=assignments,
        recommendations=_recommend(prep, choice),
        unplaced=unplaced,
        total_minutes=travel + unplaced * inst.overflow_cost,
        solve_seconds=solve_seconds,
    )


# --------------------------------------------------------------------------- fallback


def _greedy(inst: GuidanceInstance) -> tuple[dict[tuple[int, int], int], _Prep]:
    """Approaches in order, each pours its cars into its nearest car parks with room left.

    The assignment half of `fallback_plan` (the baseline of `bench/bench_guidance.py`).
    """
    prep = _prepare(inst)
    left = list(prep.usable)
    flow: dict[tuple[int, int], int] = {}
    for a, pairs in zip(inst.approaches, prep.by_approach, strict=True):
        need = a.demand
        for pr in pairs:
            if need == 0:
                break
            take = min(need, left[pr.p])
            if take > 0:
                flow[pr.a, pr.p] = take
                left[pr.p] -= take
                need -= take
    return flow, prep


def fallback_plan(
    inst: GuidanceInstance, reason: str = "fallback requested", *, solve_seconds: float = 0.0
) -> GuidancePlan:
    """A plan without a solver, status "fallback"; it passes `check_plan`.

    Each sign shows the nearest open, fresh car park of its approach with free spaces above the
    margin (within `overflow_cost`), or none; the assignments are `_greedy`'s. If that ever
    failed its check (it cannot by construction) or raised, every car is unplaced and every sign
    shows no parking.
    """
    try:
        flow, prep = _greedy(inst)
        choice = [pairs[0] if pairs else None for pairs in prep.by_approach]
        plan = _assemble(prep, flow, choice, status="fallback", reason=reason, solve_seconds=solve_seconds)
        problems = check_plan(inst, plan)
        if not problems:
            return plan
        reason = f"{reason}; greedy plan failed its check ({problems[0]}), no guidance"
    except Exception as exc:  # the safe plan must not depend on the code above being right
        reason = f"{reason}; greedy error {type(exc).__name__}, no guidance"
    return _blank_plan(inst, reason, solve_seconds)


def _blank_plan(inst: GuidanceInstance, reason: str, solve_seconds: float) -> GuidancePlan:
    unplaced = sum(a.demand for a in inst.approaches)
    return GuidancePlan(
        status="fallback",
        reason=reason,
        assignments=[],
        recommendations=[
            Recommendation(
                sign_id=s, approach=a.id, car_park=None, free=None, minutes=None, hint=NO_PARKING_HINT
            )
            for a in inst.approaches
            for s in a.sign_ids
        ],
        unplaced=unplaced,
        total_minutes=unplaced * inst.overflow_cost,
        solve_seconds=solve_seconds,
    )


# --------------------------------------------------------------------------- flow model


_STATUS_NAMES: dict[object, str] = {
    min_cost_flow.SimpleMinCostFlow.OPTIMAL: "OPTIMAL",
    min_cost_flow.SimpleMinCostFlow.FEASIBLE: "FEASIBLE",
    min_cost_flow.SimpleMinCostFlow.INFEASIBLE: "INFEASIBLE",
    min_cost_flow.SimpleMinCostFlow.UNBALANCED: "UNBALANCED",
    min_cost_flow.SimpleMinCostFlow.BAD_RESULT: "BAD_RESULT",
    min_cost_flow.SimpleMinCostFlow.BAD_COST_RANGE: "BAD_COST_RANGE",
    min_cost_flow.SimpleMinCostFlow.BAD_CAPACITY_RANGE: "BAD_CAPACITY_RANGE",
    min_cost_flow.SimpleMinCostFlow.NOT_SOLVED: "NOT_SOLVED",
}


_STATUS_NOTES: dict[str, str] = {
    "INFEASIBLE": "unexpected: overflow arcs make every instance feasible",
    "UNBALANCED": "unexpected: the sink absorbs the total demand",
    "BAD_COST_RANGE": "travel costs too large for int64 arithmetic",
    "BAD_CAPACITY_RANGE": "capacities too large for int64 arithmetic",
    "BAD_RESULT": "solver result failed its own check",
}


class _FlowModel:
    """The network of the module docstring: nodes approaches, then car parks, then the sink."""

    def __init__(self, prep: _Prep) -> None:
        self.prep = prep
        self.n_a = len(prep.inst.approaches)
        self.sink = self.n_a + len(prep.inst.car_parks)
        self.flow = min_cost_flow.SimpleMinCostFlow()
        self.pair_arcs: list[int] = []

    def _arcs(self, tails: list[int], heads: list[int], caps: list[int], costs: list[int]) -> list[int]:
        if not tails:
            return []
        for c in costs:
            if c > _MAX_DECI:
                raise ValueError(f"cost {c / DECI} min exceeds {_MAX_DECI / DECI} min")
        # One arc at a time: a city's guidance network has a few thousand arcs, and the
        # vectorized calls would bring numpy (16 MB of RSS) into the daemon for them.
        add = self.flow.add_arc_with_capacity_and_unit_cost
        return [add(t, h, cap, cost) for t, h, cap, cost in zip(tails, heads, caps, costs, strict=True)]

    def add_supplies(self) -> None:
        demand = [a.demand for a in self.prep.inst.approaches]
        for node, supply in zip([*range(self.n_a), self.sink], [*demand, -sum(demand)], strict=True):
            self.flow.set_node_supply(node, supply)

    def add_guidance_arcs(self) -> None:
        """Approach -> car park, costed by travel time in deci-minutes."""
        inst, prs = self.prep.inst, self.prep.pairs
        self.pair_arcs = self._arcs(
            [pr.a for pr in prs],
            [self.n_a + pr.p for pr in prs],
            [min(inst.approaches[pr.a].demand, self.prep.usable[pr.p]) for pr in prs],
            [_deci(pr.cost.minutes) for pr in prs],
        )

    def add_capacity_arcs(self) -> None:
        """Car park -> sink, at most free minus margin."""
        parks = [j for j, u in enumerate(self.prep.usable) if u > 0]
        self._arcs(
            [self.n_a + j for j in parks],
            [self.sink] * len(parks),
            [self.prep.usable[j] for j in parks],
            [0] * len(parks),
        )

    def add_overflow_arcs(self) -> None:
        """Approach -> sink at `overflow_cost`: keeps every instance feasible."""
        inst = self.prep.inst
        self._arcs(
            list(range(self.n_a)),
            [self.sink] * self.n_a,
            [a.demand for a in inst.approaches],
            [_deci(inst.overflow_cost)] * self.n_a,
        )

    def solve(self) -> str:
        return _STATUS_NAMES.get(self.flow.solve(), "UNKNOWN")

    def flows(self) -> dict[tuple[int, int], int]:
        if not self.pair_arcs:
            return {}
        values = [self.flow.flow(arc) for arc in self.pair_arcs]
        return {(pr.a, pr.p): int(v) for pr, v in zip(self.prep.pairs, values, strict=True) if v > 0}


def _choose(prep: _Prep, flow: dict[tuple[int, int], int]) -> list[_Pair | None]:
    """Per approach: the pair with most flow (ties: shorter, then id); with no flow, the nearest
    pair whose car park has room left after the plan; else none."""
    left = list(prep.usable)
    for (_, p), cars in flow.items():
        left[p] -= cars
    choice: list[_Pair | None] = []
    for pairs in prep.by_approach:  # nearest first, so max() keeps the shorter on equal flow
        used = [pr for pr in pairs if flow.get((pr.a, pr.p), 0) > 0]
        if used:
            choice.append(max(used, key=lambda pr: flow[pr.a, pr.p]))
        else:
            choice.append(next((pr for pr in pairs if left[pr.p] > 0), None))
    return choice


# --------------------------------------------------------------------------- solve


def solve(inst: GuidanceInstance, *, timer: Timer = WALL) -> GuidancePlan:
    """The min-cost guidance plan; never raises for a valid instance and always passes `check_plan`.

    Any solver status but OPTIMAL, an error, or a plan failing `check_plan` gives `fallback_plan`
    with the reason. Min-cost flow has no time limit: `timer` only measures.
    """
    t0 = timer()
    plan = checked(
        inst,
        lambda: _solve(inst, timer, t0),
        check_plan,
        lambda reason, seconds: fallback_plan(inst, reason, solve_seconds=seconds),
        lambda: timer() - t0,
    )
    if plan.status == "fallback":
        return plan
    return plan.model_copy(update={"solve_seconds": timer() - t0})


def _solve(inst: GuidanceInstance, timer: Timer, t0: float) -> GuidancePlan:
    prep = _prepare(inst)
    model = _FlowModel(prep)
    model.add_supplies()
    model.add_guidance_arcs()
    model.add_capacity_arcs()
    model.add_overflow_arcs()
    status = model.solve()
    if status != "OPTIMAL":
        note = _STATUS_NOTES.get(status)
        reason = f"min-cost flow {status}" + (f" ({note})" if note else "")
        return fallback_plan(inst, reason, solve_seconds=timer() - t0)
    flow = model.flows()
    return _assemble(prep, flow, _choose(prep, flow), status="optimal", reason="", solve_seconds=0.0)
