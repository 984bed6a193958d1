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
night) solve to proven optimality for 54,000 lamps in ~2 s. If requirements jitter slot by slot
(e.g. traffic-adaptive classes), blocks do not merge, some components stay "feasible" at their
time share and the plan is within ~2 % of the lower bound; a larger `time_limit_s` narrows it.
Running CP-SAT with 2 workers per small component was measured worse than 1, so `workers` is
passed to CP-SAT as is and components run one after another.

The module is pure: no I/O, no logging, no wall clock. `solve` reads a monotonic timer (which
can be injected) only to share and enforce its time budget.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from ortools.sat.python import cp_model
from pydantic import BaseModel, Field, field_validator, model_validator

from optimizer.common import WALL, Timer, checked

Level = Annotated[int, Field(ge=0, le=100)]
Minute = Annotated[int, Field(ge=0, le=1439)]

DEFAULT_LEVELS: tuple[int, ...] = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
STATUSES: frozenset[str] = frozenset({"optimal", "feasible", "fallback"})
DORTMUND_DIM_LEVEL = 50
DORTMUND_DIM_FROM = 21 * 60 + 30  # local minute, inclusive
DORTMUND_DIM_UNTIL = 5 * 60 + 30  # local minute, exclusive
_MW_PER_W = 1000  # CP-SAT needs integer costs: milliwatts keep rounding far below metering
_REL_TOL = 1e-6
_INF = math.inf


class LampGroup(BaseModel, frozen=True):
    """Lamps dimmed together (same controller program), with their driver's power curve."""

    id: str = Field(min_length=1)
    segment: str
    lamp_count: int = Field(ge=1)
    p_max_w: float = Field(ge=0, allow_inf_nan=False)
    p_min_w: float = Field(ge=0, allow_inf_nan=False)
    d_min: int = Field(default=1, ge=1, le=100)
    standby_w: float = Field(default=0.5, ge=0, allow_inf_nan=False)
    required: list[Level]
    max_changes: int = Field(default=4, ge=0)

    @model_validator(mode="after")
    def _power_curve(self) -> LampGroup:
        if self.p_min_w > self.p_max_w:
            raise ValueError(f"group {self.id}: p_min_w {self.p_min_w} > p_max_w {self.p_max_w}")
        return self


class Neighbour(BaseModel, frozen=True):
    """Two groups whose levels may differ by at most `max_diff` points in every slot."""

    a: str
    b: str
    max_diff: int = Field(ge=0)

    @model_validator(mode="after")
    def _distinct(self) -> Neighbour:
        if self.a == self.b:
            raise ValueError(f"neighbour rule links group {self.a} to itself")
        return self


class DimmingInstance(BaseModel, frozen=True):
    """A fully prepared night: slots, allowed levels, groups and neighbour rules."""

    slot_minutes: int = Field(default=15, ge=1)
    slot_start_local_minute: list[Minute] = Field(min_length=1)
    levels: list[Level] = Field(default_factory=lambda: list(DEFAULT_LEVELS))
    groups: list[LampGroup]
    neighbours: list[Neighbour] = Field(default_factory=list)
    default_neighbour_diff: int = Field(default=40, ge=0)
    time_limit_s: float = Field(default=10.0, ge=0, allow_inf_nan=False)
    workers: int = Field(default=1, ge=1)

    @field_validator("levels")
    @classmethod
    def _levels_sorted_with_full(cls, v: list[int]) -> list[int]:
        if 100 not in v:
            raise ValueError("levels must contain 100 (full light is the fail-safe plan)")
        return sorted(set(v))

    @model_validator(mode="after")
    def _consistent(self) -> DimmingInstance:
        n = len(self.slot_start_local_minute)
        ids: set[str] = set()
        for g in self.groups:
            if g.id in ids:
                raise ValueError(f"duplicate group id {g.id}")
            ids.add(g.id)
            if len(g.required) != n:
                raise ValueError(f"group {g.id}: {len(g.required)} requirements for {n} slots")
        for nb in self.neighbours:
            for gid in (nb.a, nb.b):
                if gid not in ids:
                    raise ValueError(f"neighbour rule names unknown group {gid}")
        return self


class GroupPlan(BaseModel, frozen=True):
    """The level of one group in every slot, and its energy over the night."""

    id: str
    levels: list[int]
    energy_kwh: float


class DimmingPlan(BaseModel, frozen=True):
    """A night plan with its energy, two baselines and how it was found.

    `lower_bound_kwh` is a proven lower bound on the optimum (0 if none was computed), so
    `energy_kwh - lower_bound_kwh` bounds what a better solver could still save. `stats`
    counts components by how they were solved (keys: components, dp_optimal, cpsat_optimal,
    cpsat_feasible, fallback).
    """

    status: str
    reason: str = ""
    groups: list[GroupPlan]
    energy_kwh: float
    baseline_static_kwh: float
    baseline_dortmund_kwh: float
    solve_seconds: float
    lower_bound_kwh: float = 0.0
    stats: dict[str, int] = Field(default_factory=dict)


# --------------------------------------------------------------------------- power and energy


def lamp_power_w(level: int, g: LampGroup) -> float:
    """Electrical power of one lamp of `g` at `level` %, controller standby included.

    Level 0 is off (standby only); levels from `d_min` to 100 follow the driver's linear curve.
    Raises ValueError for a level the driver cannot run (1..d_min-1, or outside 0..100).
    """
    if level == 0:
        return g.standby_w
    if level < g.d_min or level > 100:
        raise ValueError(f"group {g.id}: level {level} outside 0 or {g.d_min}..100")
    if g.d_min == 100:
        return g.p_max_w + g.standby_w
    frac = (level - g.d_min) / (100 - g.d_min)
    return g.p_min_w + (g.p_max_w - g.p_min_w) * frac + g.standby_w


def group_energy_kwh(levels: Sequence[int], g: LampGroup, slot_minutes: int) -> float:
    """Energy of all lamps of `g` over the slots, in kWh."""
    watts = sum(lamp_power_w(lv, g) for lv in levels)
    return g.lamp_count * watts * slot_minutes / 60 / 1000


def allowed_levels(inst: DimmingInstance, g: LampGroup) -> tuple[int, ...]:
    """Levels `g` may use: the instance's levels minus those its driver cannot run."""
    return tuple(lv for lv in inst.levels if lv == 0 or lv >= g.d_min)


def _round_up(value: int, allowed: Sequence[int]) -> int:
    """Smallest allowed level >= value; 100 is always allowed, so it exists for value <= 100."""
    for lv in allowed:
        if lv >= value:
            return lv
    return 100


def rounded_requirement(inst: DimmingInstance, g: LampGroup) -> list[int]:
    """Per slot, the lowest level `g` may run: its requirement rounded up to an allowed level."""
    allowed = allowed_levels(inst, g)
    return [_round_up(r, allowed) for r in g.required]


def effective_neighbours(inst: DimmingInstance) -> list[Neighbour]:
    """The neighbour rules in force: the explicit ones, else consecutive groups of a segment."""
    if inst.neighbours:
        return list(inst.neighbours)
    last: dict[str, str] = {}
    derived: list[Neighbour] = []
    for g in inst.groups:
        prev = last.get(g.segment)
        if prev is not None:
            derived.append(Neighbour(a=prev, b=g.id, max_diff=inst.default_neighbour_diff))
        last[g.segment] = g.id
    return derived


def _in_dortmund_window(minute: int) -> bool:
    return minute >= DORTMUND_DIM_FROM or minute < DORTMUND_DIM_UNTIL


def _baselines(inst: DimmingInstance) -> tuple[float, float]:
    """Static (100 % all night) and Dortmund (50 % from 21:30 to 05:30) energy in kWh.

    Dortmund never dims main-road junctions and zebra crossings, so its baseline keeps a group at
    its requirement where that is above 50 %; otherwise the baseline would break requirements and
    flatter the optimizer.
    """
    n = len(inst.slot_start_local_minute)
    static = dortmund = 0.0
    for g in inst.groups:
        static += group_energy_kwh([100] * n, g, inst.slot_minutes)
        dim = _round_up(DORTMUND_DIM_LEVEL, allowed_levels(inst, g))
        req = rounded_requirement(inst, g)
        levels = [
            max(dim, r) if _in_dortmund_window(m) else 100
            for m, r in zip(inst.slot_start_local_minute, req, strict=True)
        ]
        dortmund += group_energy_kwh(levels, g, inst.slot_minutes)
    return static, dortmund


def _count_changes(levels: Sequence[int]) -> int:
    return sum(1 for x, y in itertools.pairwise(levels) if x != y)


# --------------------------------------------------------------------------- checker


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=1e-9)


def check_plan(inst: DimmingInstance, plan: DimmingPlan) -> list[str]:
    """Check `plan` against `inst` without any solver; return human-readable violations.

    Rules: every group planned once with one level per slot; levels allowed by the instance and
    the driver; level >= requirement in every slot; at most `max_changes` changes per group;
    neighbours within `max_diff` in every slot; reported energies match the levels. One message
    per group and rule (first slot and count), so a badly broken city plan stays readable.
    """
    out: list[str] = []
    n = len(inst.slot_start_local_minute)
    mins = inst.slot_start_local_minute
    if plan.status not in STATUSES:
        out.append(f"status {plan.status!r} not one of {sorted(STATUSES)}")
    by_id = {g.id: g for g in inst.groups}
    planned: dict[str, list[int]] = {}
    for gp in plan.groups:
        if gp.id not in by_id:
            out.append(f"group {gp.id}: not in the instance")
        elif gp.id in planned:
            out.append(f"group {gp.id}: planned more than once")
        else:
            planned[gp.id] = gp.levels
    out.extend(f"group {g.id}: missing from the plan" for g in inst.groups if g.id not in planned)

    valid: dict[str, list[int]] = {}  # groups whose levels are well-formed, for the later rules
    energy_sum = 0.0
    energy_ok = True
    for gp in plan.groups:
        g = by_id.get(gp.id)
        if g is None or planned.get(gp.id) is not gp.levels:
            energy_ok = False
            continue
        lv = gp.levels
        if len(lv) != n:
            out.append(f"group {g.id}: {len(lv)} levels for {n} slots")
            energy_ok = False
            continue
        allowed = set(allowed_levels(inst, g))
        bad = [t for t, x in enumerate(lv) if x not in allowed]
        if bad:
            out.append(
                f"group {g.id}: slot {bad[0]} ({_hhmm(mins[bad[0]])}) level {lv[bad[0]]} not "
                f"allowed (levels {inst.levels}, d_min {g.d_min}) in {len(bad)} slot(s)"
            )
            energy_ok = False
            continue
        valid[g.id] = lv
        low = [t for t, (x, r) in enumerate(zip(lv, g.required, strict=True)) if x < r]
        if low:
            t = low[0]
            out.append(
                f"group {g.id}: slot {t} ({_hhmm(mins[t])}) level {lv[t]} below required "
                f"{g.required[t]} in {len(low)} slot(s)"
            )
        changes = _count_changes(lv)
        if changes > g.max_changes:
            out.append(f"group {g.id}: {changes} level changes, at most {g.max_changes} allowed")
        energy = group_energy_kwh(lv, g, inst.slot_minutes)
        energy_sum += energy
        if not _close(energy, gp.energy_kwh):
            out.append(f"group {g.id}: energy {gp.energy_kwh:.6f} kWh, levels give {energy:.6f}")

    for nb in effective_neighbours(inst):
        la, lb = valid.get(nb.a), valid.get(nb.b)
        if la is None or lb is None:
            continue
        far = [t for t, (x, y) in enumerate(zip(la, lb, strict=True)) if abs(x - y) > nb.max_diff]
        if far:
            t = far[0]
            out.append(
                f"neighbours {nb.a}/{nb.b}: slot {t} ({_hhmm(mins[t])}) levels {la[t]} and "
                f"{lb[t]} differ by more than {nb.max_diff} in {len(far)} slot(s)"
            )

    if energy_ok and not _close(energy_sum, plan.energy_kwh):
        out.append(f"plan energy {plan.energy_kwh:.6f} kWh, groups sum to {energy_sum:.6f}")
    static, dortmund = _baselines(inst)
    if not _close(static, plan.baseline_static_kwh):
        out.append(f"static baseline {plan.baseline_static_kwh:.6f} kWh, expected {static:.6f}")
    if not _close(dortmund, plan.baseline_dortmund_kwh):
        out.append(f"Dortmund baseline {plan.baseline_dortmund_kwh:.6f} kWh, expected {dortmund:.6f}")
    return out


# --------------------------------------------------------------------------- prepared data


@dataclass(frozen=True, slots=True)
class _Group:
    """One group prepared for solving: allowed levels, per-lamp power and rounded requirement."""

    idx: int
    g: LampGroup
    allowed: tuple[int, ...]
    power: tuple[float, ...]  # per lamp, W, aligned with `allowed`
    req: tuple[int, ...]  # per slot: requirement rounded up and lifted by neighbours


@dataclass(frozen=True, slots=True)
class _Edge:
    a: int
    b: int
    max_diff: int


@dataclass(slots=True)
class _Outcome:
    """How one component was solved: levels per group (slot-wise) and a lower bound in W-slots."""

    levels: dict[int, list[int]]
    kind: str  # dp_optimal | cpsat_optimal | cpsat_feasible | fallback
    bound_w_slots: float
    note: str = ""


def _prepare(inst: DimmingInstance) -> tuple[list[_Group], list[_Edge]]:
    """Groups with allowed levels, power and *lifted* requirements, and the neighbour edges.

    Lifting is an exact presolve: in any valid plan a group's level is >= its neighbour's
    requirement minus `max_diff`, and must be an allowed level, so each requirement is raised
    to that (rounded up) until nothing changes. Levels only rise and are bounded by 100, so
    this stops; afterwards the lifted requirements themselves keep every neighbour rule. It turns
    "a crossing at 100 % next to a street at 30 %" into "the street at 60 %" before any search,
    so the per-group DP usually already solves such components and its bound is tighter.
    """
    index = {g.id: i for i, g in enumerate(inst.groups)}
    edges = [_Edge(index[nb.a], index[nb.b], nb.max_diff) for nb in effective_neighbours(inst)]
    allowed = [allowed_levels(inst, g) for g in inst.groups]
    req = [[_round_up(r, allowed[i]) for r in g.required] for i, g in enumerate(inst.groups)]
    changed = bool(edges)
    while changed:
        changed = False
        for e in edges:
            for lo, hi in ((e.a, e.b), (e.b, e.a)):
                r_lo, r_hi = req[lo], req[hi]
                for t, (x, y) in enumerate(zip(r_lo, r_hi, strict=True)):
                    if x < y - e.max_diff:
                        r_lo[t] = _round_up(y - e.max_diff, allowed[lo])
                        changed = True
    groups = [
        _Group(
            idx=i,
            g=g,
            allowed=allowed[i],
            power=tuple(lamp_power_w(lv, g) for lv in allowed[i]),
            req=tuple(req[i]),
        )
        for i, g in enumerate(inst.groups)
    ]
    return groups, edges


def _components(n_groups: int, edges: Sequence[_Edge]) -> list[list[int]]:
    """Connected components of the neighbour graph (union-find), groups in instance order."""
    parent = list(range(n_groups))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for e in edges:
        ra, rb = find(e.a), find(e.b)
        if ra != rb:
            parent[rb] = ra
    comps: dict[int, list[int]] = {}
    for i in range(n_groups):
        comps.setdefault(find(i), []).append(i)
    return list(comps.values())


def _blocks(reqs: Sequence[Sequence[int]], n: int) -> list[tuple[int, int]]:
    """Maximal runs [start, end) of slots over which every requirement in `reqs` is constant."""
    cuts = [0]
    for t in range(1, n):
        if any(r[t] != r[t - 1] for r in reqs):
            cuts.append(t)
    cuts.append(n)
    return [(cuts[i], cuts[i + 1]) for i in range(len(cuts) - 1)]


def _expand(block_levels: Sequence[int], blocks: Sequence[tuple[int, int]]) -> list[int]:
    out: list[int] = []
    for lv, (s, e) in zip(block_levels, blocks, strict=True):
        out.extend([lv] * (e - s))
    return out


def _w_slots(gr: _Group, levels: Sequence[int]) -> float:
    """Energy of a group in watt-slots (all lamps), the unit solvers compare in."""
    power = dict(zip(gr.allowed, gr.power, strict=True))
    return gr.g.lamp_count * sum(power[lv] for lv in levels)


def _edges_ok(levels: dict[int, list[int]], edges: Sequence[_Edge]) -> bool:
    for e in edges:
        if any(abs(x - y) > e.max_diff for x, y in zip(levels[e.a], levels[e.b], strict=True)):
            return False
    return True


# --------------------------------------------------------------------------- exact DP per group

_DpKey = tuple[tuple[int, ...], tuple[float, ...], tuple[tuple[int, int], ...], int]


def _dp_levels(
    allowed: Sequence[int],
    power: Sequence[float],
    blocks: Sequence[tuple[int, int]],
    max_changes: int,
) -> tuple[float, list[int]]:
    """Cheapest level per block with level >= requirement and at most `max_changes` changes.

    `blocks` are (length, requirement). A shortest path over (block, level, changes used):
    O(blocks * levels * K), because the best "change" predecessor is one minimum per (block, k).
    Returns per-lamp cost (W-slots) and the levels per block.
    """
    n_lv = len(allowed)
    k_max = min(max_changes, max(len(blocks) - 1, 0))
    length0, req0 = blocks[0]
    dp = [[_INF] * n_lv for _ in range(k_max + 1)]
    for j in range(n_lv):
        if allowed[j] >= req0:
            dp[0][j] = length0 * power[j]
    parents: list[list[list[tuple[int, int]]]] = []
    for length, req in blocks[1:]:
        best = [min(range(n_lv), key=row.__getitem__) for row in dp]
        new = [[_INF] * n_lv for _ in range(k_max + 1)]
        par = [[(-1, -1)] * n_lv for _ in range(k_max + 1)]
        for k in range(k_max + 1):
            for j in range(n_lv):
                if allowed[j] < req:
                    continue
                stay = dp[k][j]
                move = dp[k - 1][best[k - 1]] if k > 0 else _INF
                if stay <= move:
                    prev, pk, pj = stay, k, j
                else:
                    prev, pk, pj = move, k - 1, best[k - 1]
                if prev < _INF:
                    new[k][j] = prev + length * power[j]
                    par[k][j] = (pk, pj)
        dp = new
        parents.append(par)
    cost, k, j = min((dp[k][j], k, j) for k in range(k_max + 1) for j in range(n_lv))
    out = [allowed[j]]
    for par in reversed(parents):
        k, j = par[k][j]
        out.append(allowed[j])
    out.reverse()
    return cost, out


def _relax(gr: _Group, n: int, cache: dict[_DpKey, tuple[float, list[int]]]) -> list[int]:
    """Optimal slot levels of one group ignoring neighbours (cached: groups share classes)."""
    blocks = _blocks([gr.req], n)
    shape = tuple((e - s, gr.req[s]) for s, e in blocks)
    key: _DpKey = (gr.allowed, gr.power, shape, gr.g.max_changes)
    hit = cache.get(key)
    if hit is None:
        hit = _dp_levels(gr.allowed, gr.power, shape, gr.g.max_changes)
        cache[key] = hit
    return _expand(hit[1], blocks)


# --------------------------------------------------------------------------- fallback


def _component_fallback(
    comp: Sequence[int], groups: Sequence[_Group], edges: Sequence[_Edge]
) -> dict[int, list[int]]:
    """A plan for one component that keeps every rule, without a solver.

    First choice: each group at its requirement rounded up to an allowed level and lifted for
    its neighbours (see `_prepare`); that already keeps every neighbour rule, so only a change
    limit can break it. Then each group runs flat all night at its highest such level (zero
    changes), and the lower group of any neighbour pair that differs too much is lifted to the
    smallest allowed level within `max_diff` of the other. Lifting only raises levels, each
    lift strictly raises one group's level among finitely many, so it stops; at the fixed point
    every pair is within range; flat plans keep the change rule and raised levels keep the
    requirements. In the worst case this ends at 100 % everywhere, which keeps every rule.
    """
    stepwise = {i: list(groups[i].req) for i in comp}
    if all(_count_changes(stepwise[i]) <= groups[i].g.max_changes for i in comp) and _edges_ok(
        stepwise, edges
    ):
        return stepwise
    flat = {i: max(groups[i].req) for i in comp}
    changed = True
    while changed:
        changed = False
        for e in edges:
            for lo, hi in ((e.a, e.b), (e.b, e.a)):
                if flat[lo] < flat[hi] - e.max_diff:
                    flat[lo] = _round_up(flat[hi] - e.max_diff, groups[lo].allowed)
                    changed = True
    n = len(groups[comp[0]].req)
    return {i: [flat[i]] * n for i in comp}


def _assemble(
    inst: DimmingInstance,
    groups: Sequence[_Group],
    levels: dict[int, list[int]],
    *,
    status: str,
    reason: str,
    solve_seconds: float,
    bound_w_slots: float,
    stats: dict[str, int],
) -> DimmingPlan:
    plans = [
        GroupPlan(
            id=gr.g.id,
            levels=levels[gr.idx],
            energy_kwh=group_energy_kwh(levels[gr.idx], gr.g, inst.slot_minutes),
        )
        for gr in groups
    ]
    static, dortmund = _baselines(inst)
    kwh_per_w_slot = inst.slot_minutes / 60 / 1000
    return DimmingPlan(
        status=status,
        reason=reason,
        groups=plans,
        energy_kwh=sum(p.energy_kwh for p in plans),
        baseline_static_kwh=static,
        baseline_dortmund_kwh=dortmund,
        solve_seconds=solve_seconds,
        lower_bound_kwh=bound_w_slots * kwh_per_w_slot,
        stats=stats,
    )


def _full_light_plan(inst: DimmingInstance, reason: str, solve_seconds: float) -> DimmingPlan:
    groups, _ = _prepare(inst)
    n = len(inst.slot_start_local_minute)
    return _assemble(
        inst,
        groups,
        {gr.idx: [100] * n for gr in groups},
        status="fallback",
        reason=reason,
        solve_seconds=solve_seconds,
        bound_w_slots=0.0,
        stats={"components": 0, "fallback": len(groups)},
    )


def fallback_plan(
    inst: DimmingInstance, reason: str = "fallback requested", *, solve_seconds: float = 0.0
) -> DimmingPlan:
    """The safe plan without a solver, status "fallback"; it always passes `check_plan`.

    Per neighbour component: the rounded (and neighbour-lifted) requirement if that keeps every
    rule, else flat levels lifted until neighbours agree (see `_component_fallback`); 100 % all night is the
    last resort if even that failed the check (it cannot, but a city must never go dark on a
    bug).
    """
    groups, edges = _prepare(inst)
    comps = _components(len(groups), edges)
    comp_edges = _edges_by_component(comps, edges)
    levels: dict[int, list[int]] = {}
    for c, comp in enumerate(comps):
        levels.update(_component_fallback(comp, groups, comp_edges[c]))
    plan = _assemble(
        inst,
        groups,
        levels,
        status="fallback",
        reason=reason,
        solve_seconds=solve_seconds,
        bound_w_slots=0.0,
        stats={"components": len(comps), "fallback": len(comps)},
    )
    problems = check_plan(inst, plan)
    if problems:
        return _full_light_plan(inst, f"{reason}; fallback failed check: {problems[0]}", 0.0)
    return plan


def _edges_by_component(comps: Sequence[Sequence[int]], edges: Sequence[_Edge]) -> list[list[_Edge]]:
    where = {i: c for c, comp in enumerate(comps) for i in comp}
    out: list[list[_Edge]] = [[] for _ in comps]
    for e in edges:
        out[where[e.a]].append(e)
    return out


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
