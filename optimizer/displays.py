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
`bench/bench_guidance.py` (200 car parks, 1,000 approaches, 30,000 pairs, 2 cores) measures
0.09-0.12 s a solve against its 1 s target, of which the flow itself is ~10 ms and the rest
preparing, assembling and checking the plan in Python (the greedy fallback alone takes ~0.08 s).
The flow's total minutes are 8-16 % below the greedy fallback's (more below when car parks run
full, where greedy order strands cars).

The module is pure: no I/O, no logging, no wall clock. `solve` reads a monotonic timer (which can
be injected) only to report its solve time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, NamedTuple

import numpy as np
from ortools.graph.python import min_cost_flow
from pydantic import BaseModel, Field, model_validator

from optimizer.common import WALL, Timer, checked

STATUSES: frozenset[str] = frozenset({"optimal", "fallback"})
NO_PARKING_HINT = "no free parking"
DECI = 10  # cost unit: 0.1 minute
MINUTES_TOL = 1e-6
_MAX_DECI = 10**12  # keeps costs x flow far inside int64; a larger cost is a data error

Minutes = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class CarPark(BaseModel, frozen=True):
    """A car park as last reported (DATEX II ParkingStatus: capacity, vacant spaces, open).

    `fresh` is False when its occupancy is older than its freshness limit: it is then unknown and
    never guided to.
    """

    id: str = Field(min_length=1)
    name: str
    capacity: int = Field(ge=0)
    free: int = Field(ge=0)
    open: bool = True
    fresh: bool = True

    @model_validator(mode="after")
    def _free_within_capacity(self) -> CarPark:
        if self.free > self.capacity:
            raise ValueError(f"car park {self.id}: free {self.free} > capacity {self.capacity}")
        return self


class Approach(BaseModel, frozen=True):
    """A road into the guided area, its signs, and the cars per planning interval on it."""

    id: str = Field(min_length=1)
    sign_ids: list[str]
    demand: int = Field(ge=0)


class TravelCost(BaseModel, frozen=True):
    """Driving time from an approach to a car park; a pair that is missing is not reachable.

    `hint` is what a sign on this approach shows to lead there (an arrow or a route, e.g. "←" or
    "B1 exit Mitte"), from the caller's road data; empty gives "<name> ~N min".
    """

    approach: str
    car_park: str
    minutes: Minutes
    hint: str = ""


class GuidanceInstance(BaseModel, frozen=True):
    """A fully prepared guidance interval: car parks, approaches with demand, travel times.

    `safety_margin` is the share of each car park's capacity kept free (at least `min_margin`
    spaces) for cars that do not follow the signs; `overflow_cost` is what an unplaced car costs
    in minutes.
    """

    car_parks: list[CarPark]
    approaches: list[Approach]
    costs: list[TravelCost]
    safety_margin: float = Field(default=0.1, ge=0, le=1, allow_inf_nan=False)
    min_margin: int = Field(default=2, ge=0)
    overflow_cost: float = Field(default=60.0, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _consistent(self) -> GuidanceInstance:
        parks = {p.id for p in self.car_parks}
        if len(parks) != len(self.car_parks):
            raise ValueError(f"duplicate car park id {_first_duplicate([p.id for p in self.car_parks])}")
        approaches = {a.id for a in self.approaches}
        if len(approaches) != len(self.approaches):
            raise ValueError(f"duplicate approach id {_first_duplicate([a.id for a in self.approaches])}")
        signs: dict[str, str] = {}
        for a in self.approaches:
            for s in a.sign_ids:
                if s in signs:
                    raise ValueError(f"sign {s} belongs to approaches {signs[s]} and {a.id}")
                signs[s] = a.id
        pairs: set[tuple[str, str]] = set()
        for c in self.costs:
            if c.approach not in approaches:
                raise ValueError(f"travel cost names unknown approach {c.approach}")
            if c.car_park not in parks:
                raise ValueError(f"travel cost names unknown car park {c.car_park}")
            if (c.approach, c.car_park) in pairs:
                raise ValueError(f"two travel costs for {c.approach} -> {c.car_park}")
            pairs.add((c.approach, c.car_park))
        return self


class Assignment(BaseModel, frozen=True):
    """Cars of one approach sent to one car park in this interval."""

    approach: str
    car_park: str
    cars: int


class Recommendation(BaseModel, frozen=True):
    """What one sign shows: a car park, its free spaces and a hint; car_park None: no parking."""

    sign_id: str
    approach: str
    car_park: str | None
    free: int | None
    minutes: float | None
    hint: str


class GuidancePlan(BaseModel, frozen=True):
    """Assignments, what every sign shows, and how it was found (see the module docstring)."""

    status: str
    reason: str = ""
    assignments: list[Assignment]
    recommendations: list[Recommendation]
    unplaced: int
    total_minutes: float
    solve_seconds: float


def _first_duplicate(ids: list[str]) -> str:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            return i
        seen.add(i)
    return ""


# --------------------------------------------------------------------------- capacity


def margin(inst: GuidanceInstance, park: CarPark) -> int:
    """Spaces of `park` kept free for cars not following the signs: the share, at least the minimum."""
    # round() first: 0.1 * 30 is 3.0000000000000004 in floats, which must not become 4.
    return max(inst.min_margin, math.ceil(round(inst.safety_margin * park.capacity, 9)))


def usable(inst: GuidanceInstance, park: CarPark) -> int:
    """Cars the signs may send to `park`: free minus margin, 0 if closed or stale."""
    if not (park.open and park.fresh):
        return 0
    return max(0, park.free - margin(inst, park))


def _deci(minutes: float) -> int:
    return round(minutes * DECI)


# --------------------------------------------------------------------------- checker


def check_plan(inst: GuidanceInstance, plan: GuidancePlan) -> list[str]:
    """Check `plan` against `inst` without any solver; return human-readable violations.

    Rules: assignments name known, reachable pairs to open and fresh car parks, once each, with a
    positive number of cars; no car park gets more than `usable` (free minus margin); no approach
    sends more than its demand, and assigned plus `unplaced` equals the total demand (together:
    demand conserved per approach); `total_minutes` matches; every sign of every approach has one
    recommendation, to an open, fresh, reachable car park with usable space (its free spaces and
    minutes as in the instance) or to none (free and minutes None).
    """
    out: list[str] = []
    if plan.status not in STATUSES:
        out.append(f"status {plan.status!r} not one of {sorted(STATUSES)}")
    parks = {p.id: p for p in inst.car_parks}
    approaches = {a.id: a for a in inst.approaches}
    cost = {(c.approach, c.car_park): c for c in inst.costs}
    into: dict[str, int] = {}
    sent: dict[str, int] = {}
    seen: set[tuple[str, str]] = set()
    travel = 0.0
    for asg in plan.assignments:
        key = (asg.approach, asg.car_park)
        where = f"assignment {asg.approach} -> {asg.car_park}"
        park = parks.get(asg.car_park)
        if asg.approach not in approaches or park is None:
            out.append(f"{where}: unknown approach or car park")
            continue
        if key in seen:
            out.append(f"{where}: listed more than once")
        seen.add(key)
        if asg.cars <= 0:
            out.append(f"{where}: {asg.cars} cars (must be positive)")
        if not park.open or not park.fresh:
            out.append(f"{where}: car park is {'closed' if not park.open else 'stale'}")
        if key not in cost:
            out.append(f"{where}: not reachable (no travel cost)")
        else:
            travel += asg.cars * cost[key].minutes
        into[asg.car_park] = into.get(asg.car_park, 0) + asg.cars
        sent[asg.approach] = sent.get(asg.approach, 0) + asg.cars
    for pid, cars in into.items():
        p = parks[pid]
        if cars > usable(inst, p):
            out.append(
                f"car park {pid}: {cars} cars > usable {usable(inst, p)} "
                f"(free {p.free}, margin {margin(inst, p)})"
            )
    for aid, cars in sent.items():
        if cars > approaches[aid].demand:
            out.append(f"approach {aid}: {cars} cars assigned > demand {approaches[aid].demand}")
    demand = sum(a.demand for a in inst.approaches)
    if plan.unplaced < 0 or sum(sent.values()) + plan.unplaced != demand:
        out.append(
            f"demand not conserved: {sum(sent.values())} assigned + {plan.unplaced} unplaced != {demand}"
        )
    expected = travel + plan.unplaced * inst.overflow_cost
    if not math.isclose(expected, plan.total_minutes, rel_tol=1e-9, abs_tol=MINUTES_TOL):
        out.append(f"total_minutes {plan.total_minutes:.4f}, assignments give {expected:.4f}")
    out.extend(_check_recommendations(inst, plan, parks, cost))
    return out


def _check_recommendations(
    inst: GuidanceInstance,
    plan: GuidancePlan,
    parks: dict[str, CarPark],
    cost: dict[tuple[str, str], TravelCost],
) -> list[str]:
    out: list[str] = []
    wanted = {(s, a.id) for a in inst.approaches for s in a.sign_ids}
    got: set[tuple[str, str]] = set()
    for r in plan.recommendations:
        key = (r.sign_id, r.approach)
        where = f"sign {r.sign_id} ({r.approach})"
        if key not in wanted:
            out.append(f"{where}: not a sign of that approach")
            continue
        if key in got:
            out.append(f"{where}: recommended more than once")
        got.add(key)
        if r.car_park is None:
            if r.free is not None or r.minutes is not None:
                out.append(f"{where}: no car park but free {r.free} / minutes {r.minutes}")
            continue
        p = parks.get(r.car_park)
        c = cost.get((r.approach, r.car_park))
        if p is None or c is None:
            out.append(f"{where}: car park {r.car_park} unknown or not reachable")
            continue
        if not p.open or not p.fresh:
            out.append(f"{where}: recommends {'closed' if not p.open else 'stale'} car park {p.id}")
        elif usable(inst, p) <= 0:
            out.append(f"{where}: recommends {p.id} with {p.free} free, not above margin {margin(inst, p)}")
        if r.free != p.free:
            out.append(f"{where}: shows {r.free} free, car park {p.id} reports {p.free}")
        if r.minutes is None or not math.isclose(r.minutes, c.minutes, abs_tol=MINUTES_TOL):
            out.append(f"{where}: shows {r.minutes} min, travel cost is {c.minutes}")
    out.extend(f"sign {s} ({a}): no recommendation" for s, a in sorted(wanted - got))
    return out


# --------------------------------------------------------------------------- prepared data


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
        arcs = self.flow.add_arcs_with_capacity_and_unit_cost(
            np.asarray(tails, dtype=np.int32),
            np.asarray(heads, dtype=np.int32),
            np.asarray(caps, dtype=np.int64),
            np.asarray(costs, dtype=np.int64),
        )
        return [int(x) for x in arcs]

    def add_supplies(self) -> None:
        demand = [a.demand for a in self.prep.inst.approaches]
        nodes = [*range(self.n_a), self.sink]
        self.flow.set_nodes_supplies(
            np.asarray(nodes, dtype=np.int32), np.asarray([*demand, -sum(demand)], dtype=np.int64)
        )

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
        values = self.flow.flows(np.asarray(self.pair_arcs, dtype=np.int32))
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
