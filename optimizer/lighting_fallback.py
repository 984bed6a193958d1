"""Street-lighting dimming without a solver: the prepared groups, the exact per-group DP, and the safe
fallback plan (see optimizer/lighting.py, which callers import, for the rules and the method)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from optimizer.lighting_model import (
    _INF,
    DimmingInstance,
    DimmingPlan,
    GroupPlan,
    LampGroup,
    _baselines,
    _count_changes,
    _round_up,
    allowed_levels,
    check_plan,
    effective_neighbours,
    group_energy_kwh,
    lamp_power_w,
)


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
