"""Feeder-safe EV charge-load optimizer: a current per car and 15-minute slot, never over a limit.

The problem. Cars hang on supply nodes (post -> feeder -> cabinet); each node caps, per phase and
slot, the sum of the currents of every car below it (limits arrive net of the lighting load).
A car draws 0 A or between `min_a` (6 A, IEC 61851) and `max_a`, only while connected, and never
more energy than it still needs. This 0-or-at-least-6 A rule makes the problem a MIP. A car that
needs less than one slot at `min_a` cannot be served without overfilling it, so it gets 0 (and
the LP bound counts it as 0 too; such a car is in practice full and goes SuspendedEV anyway).

Phases, simply and explicitly: a single-phase car loads L1 only; a three-phase car loads L1, L2
and L3 with the same current; a car below a single-phase node charges single-phase (on L1). So
L1 carries every car and L2/L3 only the three-phase ones: L1 is the binding phase, the model
needs one row per node and slot, and `check_plan` still checks all three phases.

Objective, lexicographic (each stage is an LP over the same rows, solved by GLOP with warm
starts, because only bounds and the objective change between stages):

0. **Bound**: the most energy the continuous relaxation can deliver (`lp_upper_bound`).
1. **Fairness**: maximise z, the minimum over cars of delivered / reachable energy, where a car's
   reachable energy is its need capped by what it could draw alone in its window. No car is
   starved to fill another (e.g. three-phase cars take three times the energy per ampere of L1,
   so pure energy maximisation would starve single-phase cars on a tight feeder).
2. **Energy**: with z held at its optimum, maximise total delivered energy.
3. **Cost**: with each car's stage-2 energy held, minimise sum(price[t] * energy[t]) plus a tiny
   preference for earlier slots (energy in the car early is robust to an early departure).

Rounding to 0-or-at-least-`min_a` (`_round`): slot by slot, each car asks for its LP current plus
the backlog it has not yet got (error diffusion over time); a request under `min_a` is raised to
`min_a` when at least half of it is due, else carried; requests are granted largest backlog
(relative to the car's reachable energy) first, each only up to the residual capacity of every
node on its path (so limits hold by construction), and a grant under `min_a` becomes 0. Requests
are granted in two passes (first `min_a` to
every asking car where it fits, then the rest), so a small LP current is not crowded out by a
neighbour at full power. A top-up pass fills what is still missing into spare capacity, cheapest
slots first, and a polish LP keeps the rounded on/off pattern (on: [min_a, ub], off: 0) and
re-optimises the amounts (most energy, each car keeping at least its rounded energy, then cost).

Measured on `python -m bench charging` (2 cores, one used; 480-663 cars on 680 posts, 96 slots,
8 cabinets / 40 feeders): 0.3-0.6 s of CPU a re-plan (medians of 3 runs), 99.1-99.5 % of the
LP bound, 3-6 % more energy than first come first served and 7-15 % more than equal share, and
no car left at 0 that could charge. On a machine at load 10 the 2 s wall budget ran out on one
re-plan of eight (it fell back to the safe plan: the bench counts it as a FAIL). Measured alternative: CP-SAT on integer amperes with a Boolean per car and slot (one
worker, 1.5 s, with or without our plan as hint) reached 4,434-4,436 kWh on the 663-car stress
re-plan against our 4,450 kWh in 0.42 s, and optimised energy only. So: LP and rounding.

The time budget is shared by the GLOP stages; building the model (~0.1 s), rounding, polishing
and checking (~0.15 s) take `_RESERVE_S` of it. The fallback itself costs ~0.15 s for 680 cars,
so budgets below that are overrun by about that much.

Status: "optimal" when every LP stage was optimal and rounding changed no current (the LP optimum
was already a valid plan), "feasible" for a rounded or time-limited plan, "fallback" when no LP
solution was available (see `fallback_plan`). `solve` never raises for a valid instance and its
plan always passes `check_plan`.

The module is pure: no I/O, no logging, no wall clock. `solve` reads a monotonic timer (which can
be injected) only to share and enforce its time budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ortools.linear_solver import pywraplp

from optimizer.charging_fallback import (
    _assemble,
    _reachable_a,
    _round,
    baseline_equal_share,
    baseline_fcfs,
    fallback_plan,
)
from optimizer.charging_model import (
    _EARLY_WEIGHT,
    _RESERVE_S,
    ENERGY_TOL_KWH,
    LIMIT_TOL_A,
    STATUSES,
    Amps,
    ChargingInstance,
    ChargingPlan,
    Session,
    SessionPlan,
    SupplyNode,
    _Prep,
    _prepare,
    check_plan,
    effective_phases,
    kwh_per_amp_slot,
)
from optimizer.common import WALL, Timer, checked

__all__ = [
    "ENERGY_TOL_KWH",
    "LIMIT_TOL_A",
    "STATUSES",
    "Amps",
    "ChargingInstance",
    "ChargingPlan",
    "Session",
    "SessionPlan",
    "SupplyNode",
    "baseline_equal_share",
    "baseline_fcfs",
    "check_plan",
    "effective_phases",
    "fallback_plan",
    "kwh_per_amp_slot",
    "lp_upper_bound",
    "solve",
]


# --------------------------------------------------------------------------- LP model


class _LpModel:
    """The continuous relaxation as one GLOP model; stages change only bounds and the objective.

    Variables: x[i, t] in [0, ub] amperes for car i and slot t of its window (ub = 0 where the
    car cannot reach `min_a`: the convex hull of {0} u [min_a, ub]), and z, the fair fraction.
    Rows: per node and slot, the sum of currents below it <= limit (only where the cars' bounds
    could exceed it); per car, energy <= need (its row bounds carry stage 3's floor); per car,
    energy - z * reachable >= 0 (fairness).
    """

    def __init__(self, prep: _Prep) -> None:
        self.prep = prep
        self.solver = pywraplp.Solver.CreateSolver("GLOP")
        if self.solver is None:
            raise RuntimeError("GLOP is not available")
        self.x: list[list[Any]] = []
        self.energy_rows: list[Any] = []
        self.reach = [_reachable_a(c) for c in prep.cars]
        self._build_variables()
        self._add_node_limits()
        self._add_energy_rows()
        self._add_fairness_rows()

    def _build_variables(self) -> None:
        solver = self.solver
        inf = solver.infinity()
        self.z = solver.NumVar(0.0, 1.0, "z")
        for c in self.prep.cars:
            self.x.append([solver.NumVar(0.0, u, "") if u > 0 else None for u in c.ub])
        del inf

    def _add_node_limits(self) -> None:
        prep = self.prep
        solver = self.solver
        for j, cars in enumerate(prep.below):
            if len(cars) < 2:  # a lone car's bound already includes this limit
                continue
            for t in range(prep.inst.n_slots):
                terms = []
                total = 0.0
                for i in cars:
                    c = prep.cars[i]
                    if c.start <= t < c.end:
                        v = self.x[i][t - c.start]
                        if v is not None:
                            terms.append(v)
                            total += c.ub[t - c.start]
                lim = prep.limits[j][t]
                if total <= lim:  # cannot bind
                    continue
                row = solver.Constraint(-solver.infinity(), lim, "")
                for v in terms:
                    row.SetCoefficient(v, 1.0)

    def _add_energy_rows(self) -> None:
        solver = self.solver
        for c, xs in zip(self.prep.cars, self.x, strict=True):
            row = solver.Constraint(0.0, self.reach[c.idx], "")
            for v in xs:
                if v is not None:
                    row.SetCoefficient(v, 1.0)
            self.energy_rows.append(row)

    def _add_fairness_rows(self) -> None:
        solver = self.solver
        for c, xs in zip(self.prep.cars, self.x, strict=True):
            if self.reach[c.idx] <= 1e-9:
                continue
            row = solver.Constraint(0.0, solver.infinity(), "")
            for v in xs:
                if v is not None:
                    row.SetCoefficient(v, 1.0)
            row.SetCoefficient(self.z, -self.reach[c.idx])

    # Stages: each sets the objective (and bounds), then `run`.

    def _set_energy_objective(self, maximize: bool = True) -> None:
        obj = self.solver.Objective()
        obj.Clear()
        for c, xs in zip(self.prep.cars, self.x, strict=True):
            for v in xs:
                if v is not None:
                    obj.SetCoefficient(v, c.kwh_per_a)
        obj.SetMaximization() if maximize else obj.SetMinimization()

    def stage_bound(self) -> None:
        """Stage 0: most energy, fairness off (z may be 0)."""
        self.z.SetBounds(0.0, 1.0)
        self._set_energy_objective()

    def stage_fair(self) -> None:
        """Stage 1: maximise the smallest fraction delivered / reachable."""
        obj = self.solver.Objective()
        obj.Clear()
        obj.SetCoefficient(self.z, 1.0)
        obj.SetMaximization()

    def stage_energy(self, z: float) -> None:
        """Stage 2: most energy with z held (a relative hair below its optimum, for float noise)."""
        self.z.SetBounds(max(z * (1 - 1e-9) - 1e-9, 0.0), 1.0)
        self._set_energy_objective()

    def stage_cost(self, amps: Sequence[float]) -> None:
        """Stage 3: each car keeps its stage-2 energy; cheapest (then earliest) slots preferred."""
        prep = self.prep
        n = prep.inst.n_slots
        price = prep.inst.price or [0.0] * n
        spread = max(price) - min(price)
        early = _EARLY_WEIGHT * (spread if spread > 0 else 1.0)
        for row, a, c in zip(self.energy_rows, amps, prep.cars, strict=True):
            row.SetLb(min(max(a * (1 - 1e-9) - 1e-9, 0.0), self.reach[c.idx]))
        obj = self.solver.Objective()
        obj.Clear()
        for c, xs in zip(prep.cars, self.x, strict=True):
            for tt, v in enumerate(xs):
                if v is not None:
                    t = c.start + tt
                    obj.SetCoefficient(v, c.kwh_per_a * (price[t] + early * t / n))
        obj.SetMinimization()

    def fix_pattern(self, currents: Sequence[Sequence[float]]) -> None:
        """Polish: keep the rounded on/off pattern (on: [min_a, ub], off: 0); no fairness floor;
        each car keeps at least its rounded energy, so the rounded plan stays feasible."""
        self.z.SetBounds(0.0, 1.0)
        for c, xs, cur in zip(self.prep.cars, self.x, currents, strict=True):
            for v, a, u in zip(xs, cur, c.ub, strict=True):
                if v is not None:
                    v.SetBounds(c.s.min_a, u) if a > 0 else v.SetBounds(0.0, 0.0)
        for row, cur, c in zip(self.energy_rows, currents, self.prep.cars, strict=True):
            row.SetLb(min(max(math.fsum(cur) * (1 - 1e-9) - 1e-9, 0.0), self.reach[c.idx]))
        self._set_energy_objective()

    def run(self, seconds: float) -> int:
        self.solver.SetTimeLimit(max(int(seconds * 1000), 1))
        return int(self.solver.Solve())

    def values(self) -> list[list[float]]:
        return [[v.solution_value() if v is not None else 0.0 for v in xs] for xs in self.x]

    def car_amps(self) -> list[float]:
        return [math.fsum(v.solution_value() for v in xs if v is not None) for xs in self.x]

    def objective(self) -> float:
        return float(self.solver.Objective().Value())


_STATUS_NAMES = {
    pywraplp.Solver.OPTIMAL: "OPTIMAL",
    pywraplp.Solver.FEASIBLE: "FEASIBLE",
    pywraplp.Solver.INFEASIBLE: "INFEASIBLE",
    pywraplp.Solver.UNBOUNDED: "UNBOUNDED",
    pywraplp.Solver.ABNORMAL: "ABNORMAL",
    pywraplp.Solver.NOT_SOLVED: "NOT_SOLVED",
    pywraplp.Solver.MODEL_INVALID: "MODEL_INVALID",
}


def lp_upper_bound(inst: ChargingInstance) -> float:
    """Most energy (kWh) the continuous relaxation can deliver: currents anywhere in [0, max_a]
    (0 where a car cannot reach `min_a`), every limit and need kept. No plan can deliver more.
    Returns nan if GLOP gives no optimum within the instance's time limit."""
    prep = _prepare(inst)
    if not prep.cars:
        return 0.0
    model = _LpModel(prep)
    model.stage_bound()
    status = model.run(max(inst.time_limit_s, 1.0))
    return model.objective() if status == pywraplp.Solver.OPTIMAL else math.nan


# --------------------------------------------------------------------------- solve


def solve(inst: ChargingInstance, *, timer: Timer = WALL) -> ChargingPlan:
    """A plan for every car that keeps every rule; never raises and always passes `check_plan`.

    Runs the LP stages of the module docstring within `time_limit_s` (or the timer's own limit;
    less a reserve for rounding and checking), rounds the last optimal stage, and falls back to
    `fallback_plan` when no stage gave an optimum (any other GLOP status, an error or no
    budget), saying why.
    """
    limit = timer.limit(inst.time_limit_s)
    if limit <= 0:
        return fallback_plan(inst, "no time budget (time_limit_s = 0)")
    t0 = timer()
    return checked(
        inst,
        lambda: _solve(inst, timer, t0, limit),
        check_plan,
        lambda reason, seconds: fallback_plan(inst, reason, solve_seconds=seconds),
        lambda: timer() - t0,
    )


def _polish(
    prep: _Prep, model: _LpModel, rounded: list[list[float]], run: Callable[[str], bool]
) -> list[list[float]]:
    """Re-optimise the amounts of the rounded plan's on/off pattern: most energy (each car keeping
    at least its rounded energy), then cheapest. Returns the rounded plan if anything fails."""
    model.fix_pattern(rounded)
    if not run("polish energy"):
        return rounded
    model.stage_cost(model.car_amps())
    if not run("polish cost"):
        return rounded
    polished = _clamp(prep, model.values(), rounded)
    probe = _assemble(prep, polished, status="feasible", reason="", solve_seconds=0.0, upper_bound_kwh=0.0)
    return polished if not check_plan(prep.inst, probe) else rounded


def _clamp(prep: _Prep, values: list[list[float]], pattern: list[list[float]]) -> list[list[float]]:
    """LP values on the pattern, clamped to their bounds (GLOP keeps them within ~1e-9)."""
    out = []
    for c, xs, pat in zip(prep.cars, values, pattern, strict=True):
        out.append(
            [min(max(x, c.s.min_a), u) if p > 0 else 0.0 for x, p, u in zip(xs, pat, c.ub, strict=True)]
        )
    return out


def _solve(inst: ChargingInstance, timer: Timer, t0: float, limit: float) -> ChargingPlan:
    prep = _prepare(inst)
    if not prep.cars:
        return _assemble(
            prep, [], status="optimal", reason="", solve_seconds=timer() - t0, upper_bound_kwh=0.0
        )
    deadline = t0 + limit * (1 - _RESERVE_S)
    model = _LpModel(prep)
    notes: list[str] = []

    def run(stage: str) -> bool:
        left = deadline - timer()
        if left <= 0:
            notes.append(f"{stage}: time budget spent")
            return False
        status = model.run(left)
        if status != pywraplp.Solver.OPTIMAL:
            notes.append(f"{stage}: GLOP {_STATUS_NAMES.get(status, str(status))}")
            return False
        return True

    model.stage_bound()
    if not run("LP bound"):
        return fallback_plan(inst, "; ".join(notes), solve_seconds=timer() - t0)
    bound = model.objective()
    target = model.values()
    model.stage_fair()
    if run("fairness"):
        z = model.objective()
        model.stage_energy(z)
        if run("energy"):
            target = model.values()
            model.stage_cost(model.car_amps())
            if run("cost"):
                target = model.values()
    order_key = [-c.kwh_per_a for c in prep.cars]
    currents = _round(prep, target, order_key)
    changed = any(
        abs(a - b) > 1e-6
        for xs, ys in zip(target, currents, strict=True)
        for a, b in zip(xs, ys, strict=True)
    )
    if changed and not notes:
        currents = _polish(prep, model, currents, run)
    if notes:
        status = "feasible"
    elif changed:
        status = "feasible"
        notes.append("LP rounded to 0 or >= min_a")
    else:
        status = "optimal"
    return _assemble(
        prep,
        currents,
        status=status,
        reason="; ".join(notes),
        solve_seconds=timer() - t0,
        upper_bound_kwh=bound,
    )
