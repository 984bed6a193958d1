"""Street-lighting dimming optimizer: a night plan of dim levels per lamp group, minimum energy.

How a city-sized night is solved fast, and why (measured on 2 cores, see `bench/bench_plan.py`):

1. **Components.** Neighbour rules only link groups of one road segment, so the city splits into
   small independent components; each is solved on its own and the time budget is shared.
2. **Blocks.** Within a component, consecutive slots whose (rounded) requirements are equal for
   every group are merged into one block. This is exact: replacing a block's levels by those of
   its cheapest slot keeps every rule (requirements and neighbour rules hold slot-wise, and a
   group's changes can only drop), so some optimal plan is constant per block. A typical night
   has 3-6 blocks instead of ~56 slots (but see the limits below).
3. **Lift.** A group's level can never be below a neighbour's requirement minus `max_diff`, so
   requirements are raised to that before any search (exact; see `_prepare`).
4. **Relax and check.** Without neighbour rules each group is a tiny shortest-path problem
   (level per block, at most K changes) that a dynamic programme solves exactly in microseconds.
   If the per-group optima already keep every neighbour rule, they are optimal for the component
   (an optimal relaxation that is feasible is optimal). Their sum is always a lower bound.
5. **CP-SAT** (one model class, variables / constraints / objective built in separate methods)
   only for components whose relaxed optimum still breaks a neighbour rule (typically when
   change limits make neighbours step down in different slots). It gets a feasible hint and
   its share of the budget.
6. **Fallback** for any component whose solve gives no solution (any other CP-SAT status, an
   exception, or the budget spent): see `fallback_plan`.

Measured limits: the stepped nights the controllers produce (requirements change a few times a
night) solve to proven optimality for 54,000 lamps in ~3 s of CPU (`python -m bench plan`: 2.9-3.3 s
in 3 runs; on a machine at load 10 the wall time stretched to 15-22 s, and in 2 of 3 runs one of
568 components got no CP-SAT solution in its time share and fell back). If requirements jitter slot by slot
(e.g. traffic-adaptive classes), blocks do not merge, some components stay "feasible" at their
time share and the plan is within ~2 % of the lower bound; a larger `time_limit_s` narrows it.
Running CP-SAT with 2 workers per small component was measured worse than 1, so `workers` is
passed to CP-SAT as is and components run one after another.

The module is pure: no I/O, no logging, no wall clock. `solve` reads a monotonic timer (which
can be injected) only to share and enforce its time budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ortools.sat.python import cp_model

from optimizer.common import WALL, Timer, checked
from optimizer.lighting_fallback import (
    _assemble,
    _blocks,
    _component_fallback,
    _components,
    _DpKey,
    _Edge,
    _edges_by_component,
    _edges_ok,
    _expand,
    _Group,
    _Outcome,
    _prepare,
    _relax,
    _w_slots,
    fallback_plan,
)
from optimizer.lighting_model import (
    _MW_PER_W,
    DEFAULT_LEVELS,
    DORTMUND_DIM_FROM,
    DORTMUND_DIM_LEVEL,
    DORTMUND_DIM_UNTIL,
    STATUSES,
    DimmingInstance,
    DimmingPlan,
    GroupPlan,
    LampGroup,
    Level,
    Minute,
    Neighbour,
    allowed_levels,
    check_plan,
    effective_neighbours,
    group_energy_kwh,
    lamp_power_w,
    rounded_requirement,
)

__all__ = [
    "DEFAULT_LEVELS",
    "DORTMUND_DIM_FROM",
    "DORTMUND_DIM_LEVEL",
    "DORTMUND_DIM_UNTIL",
    "STATUSES",
    "DimmingInstance",
    "DimmingPlan",
    "GroupPlan",
    "LampGroup",
    "Level",
    "Minute",
    "Neighbour",
    "allowed_levels",
    "check_plan",
    "effective_neighbours",
    "fallback_plan",
    "group_energy_kwh",
    "lamp_power_w",
    "rounded_requirement",
    "solve",
]


# --------------------------------------------------------------------------- CP-SAT model


@dataclass(frozen=True, slots=True)
class _ModelResult:
    status_name: str
    block_levels: dict[int, list[int]] | None  # None: no solution
    bound_w_slots: float


class _ComponentModel:
    """CP-SAT model of one neighbour component on merged blocks.

    One Boolean per (group, block, level at or above the requirement): the requirement is then
    part of the domain, and energy (not linear in the level, because off costs only standby)
    becomes a linear objective. Changes use one Boolean per block boundary, which is forced on
    when any level's indicator switches on (x[b, l] - x[b-1, l] <= c[b]).
    """

    def __init__(
        self,
        groups: Sequence[_Group],
        comp: Sequence[int],
        edges: Sequence[_Edge],
        blocks: Sequence[tuple[int, int]],
    ) -> None:
        self.groups = groups
        self.comp = list(comp)
        self.edges = list(edges)
        self.blocks = list(blocks)
        self.model = cp_model.CpModel()
        self.x: dict[int, list[dict[int, Any]]] = {}
        self.c: dict[int, list[Any]] = {}
        self.level_expr: dict[int, list[Any]] = {}
        self._build_variables()
        self._add_one_level_per_block()
        self._add_change_limits()
        self._add_neighbour_rules()
        self._build_objective()

    def _build_variables(self) -> None:
        for i in self.comp:
            gr = self.groups[i]
            per_block: list[dict[int, Any]] = []
            for b, (s, _) in enumerate(self.blocks):
                per_block.append(
                    {
                        lv: self.model.new_bool_var(f"x[{gr.g.id},{b},{lv}]")
                        for lv in gr.allowed
                        if lv >= gr.req[s]
                    }
                )
            self.x[i] = per_block
            self.level_expr[i] = [sum(lv * var for lv, var in xs.items() if lv) for xs in per_block]

    def _add_one_level_per_block(self) -> None:
        for i in self.comp:
            for xs in self.x[i]:
                self.model.add_exactly_one(xs.values())

    def _add_change_limits(self) -> None:
        for i in self.comp:
            xb = self.x[i]
            changes = []
            for b in range(1, len(self.blocks)):
                c = self.model.new_bool_var(f"c[{self.groups[i].g.id},{b}]")
                for lv, var in xb[b].items():
                    prev = xb[b - 1].get(lv)
                    if prev is None:
                        self.model.add_implication(var, c)
                    else:
                        self.model.add(var - prev <= c)
                changes.append(c)
            self.c[i] = changes
            if len(changes) > self.groups[i].g.max_changes:
                self.model.add(sum(changes) <= self.groups[i].g.max_changes)

    def _add_neighbour_rules(self) -> None:
        for e in self.edges:
            for b in range(len(self.blocks)):
                diff = self.level_expr[e.a][b] - self.level_expr[e.b][b]
                self.model.add_linear_constraint(diff, -e.max_diff, e.max_diff)

    def _build_objective(self) -> None:
        variables: list[Any] = []
        coefs: list[int] = []
        for i in self.comp:
            gr = self.groups[i]
            mw = {lv: round(p * _MW_PER_W) for lv, p in zip(gr.allowed, gr.power, strict=True)}
            for (s, e), xs in zip(self.blocks, self.x[i], strict=True):
                weight = gr.g.lamp_count * (e - s)
                for lv, var in xs.items():
                    variables.append(var)
                    coefs.append(weight * mw[lv])
        self.model.minimize(cp_model.LinearExpr.weighted_sum(variables, coefs))

    def add_hint(self, block_levels: dict[int, list[int]]) -> None:
        """Hint a known feasible plan so the solver starts from a solution."""
        for i in self.comp:
            for xs, chosen in zip(self.x[i], block_levels[i], strict=True):
                for lv, var in xs.items():
                    self.model.add_hint(var, lv == chosen)
            chosen_levels = block_levels[i]
            for b, c in enumerate(self.c[i], start=1):
                self.model.add_hint(c, chosen_levels[b] != chosen_levels[b - 1])

    def solve(self, time_limit_s: float, workers: int) -> _ModelResult:
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = max(time_limit_s, 0.0)
        solver.parameters.num_workers = workers
        status = solver.solve(self.model)
        name = str(solver.status_name(status))
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return _ModelResult(name, None, 0.0)
        levels = {
            i: [next(lv for lv, var in xs.items() if solver.boolean_value(var)) for xs in self.x[i]]
            for i in self.comp
        }
        # The objective is in rounded milliwatts: lose at most 0.5 mW per lamp-slot in the bound.
        slack = sum(self.groups[i].g.lamp_count for i in self.comp) * self.blocks[-1][1] * 0.5
        bound = max(float(solver.best_objective_bound) - slack, 0.0) / _MW_PER_W
        return _ModelResult(name, levels, bound)


# --------------------------------------------------------------------------- solve


def solve(inst: DimmingInstance, *, timer: Timer = WALL) -> DimmingPlan:
    """Minimum-energy plan keeping every rule; never raises and always passes `check_plan`.

    Status "optimal" if every component was proven optimal, "feasible" if some CP-SAT solve hit
    its time share with a solution, "fallback" if any component (or all, e.g. a zero budget) had
    to use `fallback_plan`'s rule; `reason` says which and why. `timer` is the monotonic clock
    (injectable for tests) and may override the instance's `time_limit_s`.
    """
    limit = timer.limit(inst.time_limit_s)
    if limit <= 0:
        return fallback_plan(inst, "no time budget (time_limit_s = 0)")
    t0 = timer()
    return checked(
        inst,
        lambda: _solve(inst, timer, t0, t0 + limit, limit),
        check_plan,
        lambda reason, seconds: fallback_plan(inst, reason, solve_seconds=seconds),
        lambda: timer() - t0,
    )


def _solve(inst: DimmingInstance, timer: Timer, t0: float, deadline: float, limit: float) -> DimmingPlan:
    n = len(inst.slot_start_local_minute)
    groups, edges = _prepare(inst)
    comps = _components(len(groups), edges)
    comp_edges = _edges_by_component(comps, edges)
    cache: dict[_DpKey, tuple[float, list[int]]] = {}
    outcomes: list[_Outcome | None] = [None] * len(comps)
    hard: list[int] = []  # components whose relaxation breaks a neighbour rule

    for c, comp in enumerate(comps):
        if timer() >= deadline:
            break
        relaxed = {i: _relax(groups[i], n, cache) for i in comp}
        bound = sum(_w_slots(groups[i], relaxed[i]) for i in comp)
        if _edges_ok(relaxed, comp_edges[c]):
            outcomes[c] = _Outcome(relaxed, "dp_optimal", bound)
        else:
            outcomes[c] = _Outcome(relaxed, "pending", bound)
            hard.append(c)

    # Keep a reserve for assembling and checking the plan, and so that small overruns of
    # early solves do not starve the last components.
    cp_deadline = deadline - min(0.1 * limit, 2.0)
    weights = {c: _model_size(comps[c], groups, n) for c in hard}
    left = sum(weights.values())
    for c in hard:
        comp, out = comps[c], outcomes[c]
        assert out is not None
        start = timer()
        share = (cp_deadline - start) * weights[c] / left
        left -= weights[c]
        safe = _component_fallback(comp, groups, comp_edges[c])
        if share <= 0:
            outcomes[c] = _Outcome(safe, "fallback", out.bound_w_slots, "time budget spent")
            continue
        outcomes[c] = _solve_component(
            comp,
            groups=groups,
            edges=comp_edges[c],
            safe=safe,
            until=start + share,
            timer=timer,
            workers=inst.workers,
            relaxed=out,
        )

    stats = {"components": len(comps), "dp_optimal": 0, "cpsat_optimal": 0}
    stats |= {"cpsat_feasible": 0, "fallback": 0}
    levels: dict[int, list[int]] = {}
    bound = 0.0
    notes: dict[str, int] = {}
    for c, comp in enumerate(comps):
        done = outcomes[c]
        if done is None:  # budget ran out before its relaxation
            safe = _component_fallback(comp, groups, comp_edges[c])
            step = sum(_w_slots(groups[i], groups[i].req) for i in comp)
            done = _Outcome(safe, "fallback", step, "time budget spent")
        stats[done.kind] += 1
        levels.update(done.levels)
        bound += done.bound_w_slots
        if done.note:
            notes[done.note] = notes.get(done.note, 0) + 1

    if stats["fallback"]:
        status = "fallback"
    elif stats["cpsat_feasible"]:
        status = "feasible"
    else:
        status = "optimal"
    reason = "; ".join(f"{k}: {v} of {len(comps)} components" for k, v in sorted(notes.items()))
    return _assemble(
        inst,
        groups,
        levels,
        status=status,
        reason=reason,
        solve_seconds=timer() - t0,
        bound_w_slots=bound,
        stats=stats,
    )


def _model_size(comp: Sequence[int], groups: Sequence[_Group], n: int) -> int:
    """Rough CP-SAT size of a component (Booleans), to share the time budget fairly."""
    blocks = _blocks([groups[i].req for i in comp], n)
    return sum(len(groups[i].allowed) * len(blocks) for i in comp)


def _solve_component(
    comp: Sequence[int],
    *,
    groups: Sequence[_Group],
    edges: Sequence[_Edge],
    safe: dict[int, list[int]],
    until: float,
    timer: Callable[[], float],
    workers: int,
    relaxed: _Outcome,
) -> _Outcome:
    """CP-SAT on one component until `until` (model building included); any status without a
    solution keeps the safe plan."""
    n = len(groups[comp[0]].req)
    blocks = _blocks([groups[i].req for i in comp], n)
    model = _ComponentModel(groups, comp, edges, blocks)
    model.add_hint({i: [safe[i][s] for s, _ in blocks] for i in comp})
    try:
        res = model.solve(until - timer(), workers)
    except Exception as exc:  # keep the rest of the city optimal if one solve breaks
        return _Outcome(safe, "fallback", relaxed.bound_w_slots, f"CP-SAT error {exc!r}")
    if res.block_levels is None:
        note = {
            "UNKNOWN": "CP-SAT UNKNOWN (no solution in its time share)",
            "INFEASIBLE": "CP-SAT INFEASIBLE (unexpected: 100 % keeps every rule)",
            "MODEL_INVALID": "CP-SAT MODEL_INVALID (bug in the model)",
        }.get(res.status_name, f"CP-SAT {res.status_name}")
        return _Outcome(safe, "fallback", relaxed.bound_w_slots, note)
    levels = {i: _expand(res.block_levels[i], blocks) for i in comp}
    bound = max(relaxed.bound_w_slots, res.bound_w_slots)
    if res.status_name == "OPTIMAL":
        return _Outcome(levels, "cpsat_optimal", bound)
    return _Outcome(levels, "cpsat_feasible", bound, "CP-SAT FEASIBLE (time share reached)")
