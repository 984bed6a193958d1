"""Street-lighting dimming: the instance, the plan, the rules' helpers and the solver-independent check.

Split from optimizer/lighting.py (which callers import) so that the model and its check read on
their own; see there for the rules."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Annotated

from pydantic import BaseModel, Field, field_validator, model_validator

from optimizer.common import PlanStatus

Level = Annotated[int, Field(ge=0, le=100)]
Minute = Annotated[int, Field(ge=0, le=1439)]

DEFAULT_LEVELS: tuple[int, ...] = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
STATUSES: frozenset[str] = frozenset(
    {PlanStatus.OPTIMAL.value, PlanStatus.FEASIBLE.value, PlanStatus.FALLBACK.value}
)  # what its plans may say
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
        energy = _check_group(inst, g, gp, out)
        if energy is None:
            energy_ok = False
            continue
        valid[g.id] = gp.levels
        energy_sum += energy
    _check_neighbours(inst, valid, out)
    if energy_ok and not _close(energy_sum, plan.energy_kwh):
        out.append(f"plan energy {plan.energy_kwh:.6f} kWh, groups sum to {energy_sum:.6f}")
    static, dortmund = _baselines(inst)
    if not _close(static, plan.baseline_static_kwh):
        out.append(f"static baseline {plan.baseline_static_kwh:.6f} kWh, expected {static:.6f}")
    if not _close(dortmund, plan.baseline_dortmund_kwh):
        out.append(f"Dortmund baseline {plan.baseline_dortmund_kwh:.6f} kWh, expected {dortmund:.6f}")
    return out


def _check_group(inst: DimmingInstance, g: LampGroup, gp: GroupPlan, out: list[str]) -> float | None:
    """Append what breaks one group's levels to `out`; their energy, or None when the levels are
    malformed (wrong count, a level not allowed) and the later rules cannot read them."""
    n = len(inst.slot_start_local_minute)
    mins = inst.slot_start_local_minute
    lv = gp.levels
    if len(lv) != n:
        out.append(f"group {g.id}: {len(lv)} levels for {n} slots")
        return None
    allowed = set(allowed_levels(inst, g))
    bad = [t for t, x in enumerate(lv) if x not in allowed]
    if bad:
        out.append(
            f"group {g.id}: slot {bad[0]} ({_hhmm(mins[bad[0]])}) level {lv[bad[0]]} not "
            f"allowed (levels {inst.levels}, d_min {g.d_min}) in {len(bad)} slot(s)"
        )
        return None
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
    if not _close(energy, gp.energy_kwh):
        out.append(f"group {g.id}: energy {gp.energy_kwh:.6f} kWh, levels give {energy:.6f}")
    return energy


def _check_neighbours(inst: DimmingInstance, valid: dict[str, list[int]], out: list[str]) -> None:
    """Append every neighbour pair (of well-formed groups) whose levels differ too much in a slot."""
    mins = inst.slot_start_local_minute
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


# --------------------------------------------------------------------------- prepared data
