"""EV charging without an LP: the greedy allocator that rounds LP targets, the FCFS and equal-share
baselines, and the safe fallback plan (see optimizer/charging.py, which callers import)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from optimizer.charging_model import (
    ChargingInstance,
    ChargingPlan,
    SessionPlan,
    _Car,
    _energy,
    _Prep,
    _prepare,
    check_plan,
)


def _reachable_a(car: _Car) -> float:
    """What the car could draw alone in its window, capped by its need (ampere-slots)."""
    return min(car.need_a, math.fsum(car.ub))


def _assemble(
    prep: _Prep,
    currents: Sequence[Sequence[float]],  # per car, per slot of its window
    *,
    status: str,
    reason: str,
    solve_seconds: float,
    upper_bound_kwh: float,
) -> ChargingPlan:
    inst = prep.inst
    n = inst.n_slots
    plans: list[SessionPlan] = []
    fair = 1.0
    cost = 0.0
    price = inst.price
    for car, cur in zip(prep.cars, currents, strict=True):
        full = [0.0] * n
        full[car.start : car.end] = cur
        energy = _energy(full, car.kwh_per_a)
        if price is not None:
            cost += car.kwh_per_a * math.fsum(c * price[t] for t, c in enumerate(full) if c)
        reach = _reachable_a(car)
        if reach > 1e-9:
            fair = min(fair, math.fsum(full) / reach)
        plans.append(
            SessionPlan(
                id=car.s.id,
                current_a=full,
                energy_kwh=energy,
                unmet_kwh=max(car.s.energy_kwh - energy, 0.0),
            )
        )
    return ChargingPlan(
        status=status,
        reason=reason,
        sessions=plans,
        delivered_kwh=math.fsum(p.energy_kwh for p in plans),
        requested_kwh=math.fsum(s.energy_kwh for s in inst.sessions),
        upper_bound_kwh=upper_bound_kwh,
        solve_seconds=solve_seconds,
        fair_fraction=min(fair, 1.0),
        cost=cost,
    )


# --------------------------------------------------------------------------- greedy allocator


class _Residual:
    """Residual capacity per node and slot (L1, the binding phase)."""

    def __init__(self, prep: _Prep) -> None:
        self.cap = [list(lim) for lim in prep.limits]

    def room(self, path: Sequence[int], t: int) -> float:
        return min(self.cap[j][t] for j in path)

    def take(self, path: Sequence[int], t: int, amps: float) -> None:
        for j in path:
            self.cap[j][t] -= amps


def _grant(car: _Car, t: int, want: float, res: _Residual) -> float:
    """Largest current <= want that fits every node on the car's path, or 0 if under min_a."""
    room = res.room(car.path, t)
    # Keep a hair of margin so float sums can never cross a limit.
    amps = min(want, car.ub[t - car.start], room - 1e-9)
    if amps < car.s.min_a or amps <= 0:
        return 0.0
    res.take(car.path, t, amps)
    return amps


def _round(prep: _Prep, target: Sequence[Sequence[float]], order_key: Sequence[float]) -> list[list[float]]:
    """Semi-continuous currents close to `target` (per car, per window slot), limits kept.

    Error diffusion over time: in each slot a car asks for its target plus its backlog; see the
    module docstring. `order_key` breaks ties between equal backlogs (lower first).
    """
    inst = prep.inst
    res = _Residual(prep)
    out = [[0.0] * (c.end - c.start) for c in prep.cars]
    backlog = [0.0] * len(prep.cars)
    left = [c.need_a for c in prep.cars]
    reach = [max(_reachable_a(c), 1e-9) for c in prep.cars]
    active: list[list[int]] = [[] for _ in range(inst.n_slots)]
    for c in prep.cars:
        for t in range(c.start, c.end):
            active[t].append(c.idx)
    for t in range(inst.n_slots):
        asks: list[tuple[float, float, int, float]] = []
        for i in active[t]:
            c = prep.cars[i]
            tt = t - c.start
            backlog[i] += target[i][tt]
            want = min(backlog[i], c.ub[tt], left[i])
            if want <= 1e-9 or c.ub[tt] <= 0:
                continue
            if want < c.s.min_a:
                if want < 0.5 * c.s.min_a and left[i] > c.s.min_a:
                    continue
                want = c.s.min_a
            elif left[i] - want < c.s.min_a:
                want = min(left[i], c.ub[tt])  # finish now rather than leave a sub-6 A remainder
            asks.append((-backlog[i] / reach[i], order_key[i], i, want))
        asks.sort()
        # Two passes: first every asking car gets min_a where it fits (so a small LP current is
        # not crowded out by a neighbour at full power), then the rest of what each asked for.
        granted: list[tuple[int, float]] = []
        for _, _, i, want in asks:
            c = prep.cars[i]
            if min(want, left[i]) < c.s.min_a:
                continue
            if _grant(c, t, c.s.min_a, res):
                granted.append((i, want))
        for i, want in granted:
            c = prep.cars[i]
            more = min(want, left[i]) - c.s.min_a
            room = min(more, res.room(c.path, t) - 1e-9)
            if room > 0:
                res.take(c.path, t, room)
            got = c.s.min_a + max(room, 0.0)
            out[i][t - c.start] = got
            backlog[i] -= got
            left[i] -= got
    _top_up(prep, out, res, left)
    return out


def _slot_order(prep: _Prep) -> list[int]:
    """Slots cheapest first (earliest first without a price)."""
    price = prep.inst.price
    if price is None:
        return list(range(prep.inst.n_slots))
    return sorted(range(prep.inst.n_slots), key=lambda t: (price[t], t))


def _top_up(prep: _Prep, out: list[list[float]], res: _Residual, left: list[float]) -> None:
    """Fill what cars still need into spare capacity, cheapest slots first, smallest need first."""
    rank = {t: r for r, t in enumerate(_slot_order(prep))}
    for i in sorted(range(len(prep.cars)), key=lambda i: left[i]):
        c = prep.cars[i]
        if left[i] <= 1e-9:
            continue
        for t in sorted(range(c.start, c.end), key=rank.__getitem__):
            if left[i] <= 1e-9:
                break
            tt = t - c.start
            have = out[i][tt]
            room = min(c.ub[tt] - have, res.room(c.path, t) - 1e-9, left[i])
            if have == 0 and (room < c.s.min_a or left[i] < c.s.min_a):
                continue
            if room <= 1e-9:
                continue
            res.take(c.path, t, room)
            out[i][tt] = have + room
            left[i] -= room


# --------------------------------------------------------------------------- baselines and fallback


def _greedy_plan(
    prep: _Prep, want: Callable[[_Car, int, float], float], rank: Sequence[int]
) -> list[list[float]]:
    """Slot by slot, cars in `rank` order get `want(car, t, left)` if it fits the residual."""
    res = _Residual(prep)
    out = [[0.0] * (c.end - c.start) for c in prep.cars]
    left = [c.need_a for c in prep.cars]
    pos = {i: r for r, i in enumerate(rank)}
    active: list[list[int]] = [[] for _ in range(prep.inst.n_slots)]
    for c in prep.cars:
        for t in range(c.start, c.end):
            active[t].append(c.idx)
    for t, ids in enumerate(active):
        for i in sorted(ids, key=pos.__getitem__):
            c = prep.cars[i]
            amps = min(want(c, t, left[i]), left[i])
            if amps >= c.s.min_a:
                got = _grant(c, t, amps, res)
                out[i][t - c.start] = got
                left[i] -= got
    return out


def baseline_fcfs(inst: ChargingInstance) -> ChargingPlan:
    """First come, first served at full power: earlier arrivals draw their maximum while the
    residual capacity of every node above them allows (a hard cap), later ones take the rest."""
    prep = _prepare(inst)
    rank = sorted(range(len(prep.cars)), key=lambda i: (prep.cars[i].s.arrival_slot, i))
    out = _greedy_plan(prep, lambda c, t, left: c.s.max_a, rank)
    return _assemble(
        prep,
        out,
        status="feasible",
        reason="baseline: first come first served",
        solve_seconds=0.0,
        upper_bound_kwh=0.0,
    )


def baseline_equal_share(inst: ChargingInstance) -> ChargingPlan:
    """Equal share: in each slot every node's limit is split equally among the cars below it
    that still need energy (water-filling down the tree); a share under `min_a` is 0 A."""
    prep = _prepare(inst)
    n = inst.n_slots
    out = [[0.0] * (c.end - c.start) for c in prep.cars]
    left = [c.need_a for c in prep.cars]
    children: list[list[int]] = [[] for _ in inst.nodes]
    roots: list[int] = []
    for j, p in enumerate(prep.parent):
        (roots if p < 0 else children[p]).append(j)
    here: list[list[int]] = [[] for _ in inst.nodes]
    for c in prep.cars:
        here[c.path[0]].append(c.idx)
    for t in range(n):
        wanting = {
            c.idx for c in prep.cars if c.start <= t < c.end and left[c.idx] > 1e-9 and c.ub[t - c.start] > 0
        }

        def demand(j: int, wanting: set[int] = wanting) -> int:
            return sum(1 for i in prep.below[j] if i in wanting)

        stack = [(j, prep.limits[j][t]) for j in roots]
        while stack:
            j, cap = stack.pop()
            cap = min(cap, prep.limits[j][t])
            total = demand(j)
            if total == 0:
                continue
            per_car = cap / total
            cars_here = [i for i in here[j] if i in wanting]
            used = 0.0
            for i in cars_here:
                c = prep.cars[i]
                amps = min(per_car, c.ub[t - c.start], left[i])
                amps = amps if amps >= c.s.min_a else 0.0
                out[i][t - c.start] = amps
                left[i] -= amps
                used += amps
            for k in children[j]:
                stack.append((k, per_car * demand(k)))
    # Each child gets at most its cars' share of the parent's cap, so every node stays within.
    return _assemble(
        prep, out, status="feasible", reason="baseline: equal share", solve_seconds=0.0, upper_bound_kwh=0.0
    )


def fallback_plan(
    inst: ChargingInstance, reason: str = "fallback requested", *, solve_seconds: float = 0.0
) -> ChargingPlan:
    """The minimum safe allocation without a solver, status "fallback"; it passes `check_plan`.

    Safe means within every limit, not "as little as possible": a car at 0 A waits, and a
    controller applies plans with a lease anyway. So cars get `min_a` (6 A), round-robin: in each
    slot the cars that have had the fewest slots so far go first, each only if every node on its
    path still has room for it. That is checked with `check_plan`; if it ever failed (it cannot
    by construction), every car gets 0 A, which keeps every rule.
    """
    try:
        prep = _prepare(inst)
        served = [0] * len(prep.cars)
        res = _Residual(prep)
        out = [[0.0] * (c.end - c.start) for c in prep.cars]
        left = [c.need_a for c in prep.cars]
        active: list[list[int]] = [[] for _ in range(inst.n_slots)]
        for c in prep.cars:
            for t in range(c.start, c.end):
                active[t].append(c.idx)
        for t, ids in enumerate(active):
            for i in sorted(ids, key=lambda i: (served[i], i)):
                c = prep.cars[i]
                if left[i] + 1e-9 < c.s.min_a:
                    continue
                got = _grant(c, t, c.s.min_a, res)
                if got:
                    out[i][t - c.start] = got
                    left[i] -= got
                    served[i] += 1
        plan = _assemble(
            prep, out, status="fallback", reason=reason, solve_seconds=solve_seconds, upper_bound_kwh=0.0
        )
        if not check_plan(inst, plan):
            return plan
        reason = f"{reason}; 6 A round-robin failed its check, all cars at 0 A"
    except Exception as exc:  # the safe plan must not depend on the code above being right
        reason = f"{reason}; round-robin error {type(exc).__name__}, all cars at 0 A"
    return _zero_plan(inst, reason, solve_seconds)


def _zero_plan(inst: ChargingInstance, reason: str, solve_seconds: float) -> ChargingPlan:
    zero = [0.0] * inst.n_slots
    return ChargingPlan(
        status="fallback",
        reason=reason,
        sessions=[
            SessionPlan(id=s.id, current_a=list(zero), energy_kwh=0.0, unmet_kwh=s.energy_kwh)
            for s in inst.sessions
        ],
        delivered_kwh=0.0,
        requested_kwh=math.fsum(s.energy_kwh for s in inst.sessions),
        solve_seconds=solve_seconds,
        fair_fraction=0.0 if any(s.energy_kwh > 0 for s in inst.sessions) else 1.0,
    )
