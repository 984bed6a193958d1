"""EV charging: the instance, the plan, the prepared cars and the solver-independent check.

Split from optimizer/charging.py (which callers import) so that the model and its check read on
their own; see there for the rules."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, Field, model_validator

from optimizer.common import PlanStatus

Amps = Annotated[float, Field(ge=0, allow_inf_nan=False)]

STATUSES: frozenset[str] = frozenset(
    {PlanStatus.OPTIMAL.value, PlanStatus.FEASIBLE.value, PlanStatus.FALLBACK.value}
)  # what its plans may say
LIMIT_TOL_A = 1e-6  # amperes: float noise only, far below any meter
ENERGY_TOL_KWH = 1e-6
_EARLY_WEIGHT = 1e-4  # per slot, relative to the price spread: earlier is better, price first
_RESERVE_S = 0.25  # of the time budget kept for rounding, assembling and checking


class SupplyNode(BaseModel, frozen=True):
    """A cabinet, feeder or post; it caps, per phase and slot, the current of every car below it.

    `limit_a` is the per-phase limit per slot in A, already net of the lighting load (clamp it at
    0 before building the instance if the lamps alone exceed it). `phases` is 1 for single-phase
    lighting circuits.
    """

    id: str = Field(min_length=1)
    parent: str | None = None
    limit_a: list[Amps]
    phases: int = Field(default=3)

    @model_validator(mode="after")
    def _phases(self) -> SupplyNode:
        if self.phases not in (1, 3):
            raise ValueError(f"node {self.id}: phases must be 1 or 3, not {self.phases}")
        return self


class Session(BaseModel, frozen=True):
    """A connected (or expected) car: where it hangs, what it may draw and what it still needs.

    `departure_slot` is exclusive; when the driver did not say, the caller puts in the expected
    departure from the statistics.
    """

    id: str = Field(min_length=1)
    charger_id: str
    node: str
    phases: int
    max_a: Amps
    min_a: Amps = 6.0
    energy_kwh: float = Field(ge=0, allow_inf_nan=False)
    arrival_slot: int = Field(default=0, ge=0)
    departure_slot: int = Field(ge=0)
    voltage: float = Field(default=230.0, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _phases(self) -> Session:
        if self.phases not in (1, 3):
            raise ValueError(f"session {self.id}: phases must be 1 or 3, not {self.phases}")
        return self


class ChargingInstance(BaseModel, frozen=True):
    """A fully prepared re-plan: slots, the supply tree, the cars and an optional price curve."""

    slot_minutes: int = Field(default=15, ge=1)
    n_slots: int = Field(default=96, ge=1)
    nodes: list[SupplyNode]
    sessions: list[Session]
    price: list[float] | None = None
    time_limit_s: float = Field(default=2.0, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _consistent(self) -> ChargingInstance:
        ids: dict[str, SupplyNode] = {}
        for nd in self.nodes:
            if nd.id in ids:
                raise ValueError(f"duplicate node id {nd.id}")
            ids[nd.id] = nd
            if len(nd.limit_a) != self.n_slots:
                raise ValueError(f"node {nd.id}: {len(nd.limit_a)} limits for {self.n_slots} slots")
        for nd in self.nodes:
            seen = {nd.id}
            up = nd.parent
            while up is not None:
                if up not in ids:
                    raise ValueError(f"node {nd.id}: unknown parent {up}")
                if up in seen:
                    raise ValueError(f"node {nd.id}: the supply tree has a cycle through {up}")
                seen.add(up)
                up = ids[up].parent
        sids: set[str] = set()
        for s in self.sessions:
            if s.id in sids:
                raise ValueError(f"duplicate session id {s.id}")
            sids.add(s.id)
            if s.node not in ids:
                raise ValueError(f"session {s.id}: unknown node {s.node}")
        if self.price is not None:
            if len(self.price) != self.n_slots:
                raise ValueError(f"{len(self.price)} prices for {self.n_slots} slots")
            if not all(math.isfinite(p) for p in self.price):
                raise ValueError("prices must be finite")
        return self


class SessionPlan(BaseModel, frozen=True):
    """The current of one car in every slot (0 outside its window) and its energy."""

    id: str
    current_a: list[float]
    energy_kwh: float
    unmet_kwh: float


class ChargingPlan(BaseModel, frozen=True):
    """A plan for every car, with delivered and requested energy and how it was found.

    `upper_bound_kwh` is the most energy the LP relaxation can deliver (0 if not computed), so
    `delivered_kwh / upper_bound_kwh` bounds what any other plan could add. `fair_fraction` is the
    smallest delivered / reachable energy over cars (1.0 when there are none).
    """

    status: str
    reason: str = ""
    sessions: list[SessionPlan]
    delivered_kwh: float
    requested_kwh: float
    upper_bound_kwh: float = 0.0
    solve_seconds: float
    fair_fraction: float = 1.0
    cost: float = 0.0


# --------------------------------------------------------------------------- prepared data


@dataclass(frozen=True, slots=True)
class _Car:
    """One session prepared for solving."""

    idx: int
    s: Session
    path: tuple[int, ...]  # node indices from its post up to the root
    phases: int  # effective: 1 if the car or any node above it is single-phase
    kwh_per_a: float  # energy of 1 A for one slot
    start: int  # window [start, end) clipped to the horizon
    end: int
    ub: tuple[float, ...]  # per slot in the window: max current (0 if under min_a)
    need_a: float  # need in ampere-slots


@dataclass(frozen=True, slots=True)
class _Prep:
    inst: ChargingInstance
    cars: tuple[_Car, ...]
    parent: tuple[int, ...]  # -1 for a root
    limits: tuple[tuple[float, ...], ...]
    below: tuple[tuple[int, ...], ...]  # per node: cars in its subtree


def _node_paths(inst: ChargingInstance) -> tuple[dict[str, int], list[int], list[tuple[int, ...]]]:
    index = {nd.id: j for j, nd in enumerate(inst.nodes)}
    parent = [-1 if nd.parent is None else index[nd.parent] for nd in inst.nodes]
    paths: list[tuple[int, ...]] = []
    for j in range(len(inst.nodes)):
        path = [j]
        while parent[path[-1]] >= 0:
            path.append(parent[path[-1]])
        paths.append(tuple(path))
    return index, parent, paths


def effective_phases(inst: ChargingInstance) -> dict[str, int]:
    """Phases each session charges on: 1 if the car or any node on its path is single-phase."""
    index, _, paths = _node_paths(inst)
    out: dict[str, int] = {}
    for s in inst.sessions:
        single = s.phases == 1 or any(inst.nodes[j].phases == 1 for j in paths[index[s.node]])
        out[s.id] = 1 if single else 3
    return out


def kwh_per_amp_slot(inst: ChargingInstance, s: Session, phases: int) -> float:
    """Energy one ampere per phase delivers to `s` in one slot, in kWh."""
    return s.voltage * phases * inst.slot_minutes / 60 / 1000


def _prepare(inst: ChargingInstance) -> _Prep:
    index, parent, paths = _node_paths(inst)
    phases = effective_phases(inst)
    limits = tuple(tuple(nd.limit_a) for nd in inst.nodes)
    below: list[list[int]] = [[] for _ in inst.nodes]
    cars: list[_Car] = []
    for i, s in enumerate(inst.sessions):
        path = paths[index[s.node]]
        start = min(s.arrival_slot, inst.n_slots)
        end = max(min(s.departure_slot, inst.n_slots), start)
        k = kwh_per_amp_slot(inst, s, phases[s.id])
        # A car needing less than one slot at min_a cannot be served without overfilling it.
        servable = s.energy_kwh / k >= s.min_a - 1e-9 and s.max_a >= s.min_a and s.max_a > 0
        ub: list[float] = []
        for t in range(start, end):
            u = min(s.max_a, *(limits[j][t] for j in path)) if servable else 0.0
            ub.append(u if u >= s.min_a and u > 0 else 0.0)
        cars.append(_Car(i, s, path, phases[s.id], k, start, end, tuple(ub), s.energy_kwh / k))
        for j in path:
            below[j].append(i)
    return _Prep(inst, tuple(cars), tuple(parent), limits, tuple(tuple(b) for b in below))


# --------------------------------------------------------------------------- checker


def _energy(current: Sequence[float], k: float) -> float:
    return math.fsum(current) * k


def check_plan(inst: ChargingInstance, plan: ChargingPlan) -> list[str]:
    """Check `plan` against `inst` without any solver; return human-readable violations.

    Rules: every session planned once with one current per slot; each current finite and 0 or
    within [min_a, max_a]; no current outside [arrival, departure); energy at most the need (+
    tolerance) and reported energies consistent; per node, slot and phase the sum of the currents
    below it at most the limit (L1 carries every car, L2 and L3 the three-phase ones, see the
    module docstring). One message per session or node and rule (first slot and count).
    """
    out: list[str] = []
    n = inst.n_slots
    if plan.status not in STATUSES:
        out.append(f"status {plan.status!r} not one of {sorted(STATUSES)}")
    by_id = {s.id: s for s in inst.sessions}
    planned: dict[str, SessionPlan] = {}
    for sp in plan.sessions:
        if sp.id not in by_id:
            out.append(f"session {sp.id}: not in the instance")
        elif sp.id in planned:
            out.append(f"session {sp.id}: planned more than once")
        else:
            planned[sp.id] = sp
    out.extend(f"session {s.id}: missing from the plan" for s in inst.sessions if s.id not in planned)

    index, _, paths = _node_paths(inst)
    phases = effective_phases(inst)
    load = [[[0.0] * n for _ in range(3)] for _ in inst.nodes]  # node, phase, slot
    delivered = 0.0
    for s in inst.sessions:
        got = planned.get(s.id)
        if got is None:
            continue
        ph = phases[s.id]
        energy = _check_session(inst, s, got, ph, out)
        if energy is None:
            continue
        delivered += energy
        cur = got.current_a
        loaded = (0,) if ph == 1 else (0, 1, 2)
        for j in paths[index[s.node]]:
            for p in loaded:
                row = load[j][p]
                for t, c in enumerate(cur):
                    if c:
                        row[t] += c

    for j, nd in enumerate(inst.nodes):
        for p in range(nd.phases):
            over = [t for t in range(n) if load[j][p][t] > nd.limit_a[t] + LIMIT_TOL_A]
            if over:
                t = over[0]
                out.append(
                    f"node {nd.id}: L{p + 1} slot {t} load {load[j][p][t]:.3f} A over limit "
                    f"{nd.limit_a[t]:.3f} A in {len(over)} slot(s)"
                )
    requested = math.fsum(s.energy_kwh for s in inst.sessions)
    if not math.isclose(requested, plan.requested_kwh, rel_tol=1e-6, abs_tol=ENERGY_TOL_KWH):
        out.append(f"requested {plan.requested_kwh:.6f} kWh, sessions need {requested:.6f}")
    if not out and not math.isclose(delivered, plan.delivered_kwh, rel_tol=1e-6, abs_tol=ENERGY_TOL_KWH):
        out.append(f"delivered {plan.delivered_kwh:.6f} kWh, sessions sum to {delivered:.6f}")
    return out


def _check_session(
    inst: ChargingInstance, s: Session, sp: SessionPlan, ph: int, out: list[str]
) -> float | None:
    """Append what breaks one session's plan to `out`; the energy its currents deliver, or None
    when the currents are unusable (wrong count, not finite) and add no load."""
    cur = sp.current_a
    n = inst.n_slots
    if len(cur) != n:
        out.append(f"session {s.id}: {len(cur)} currents for {n} slots")
        return None
    if not all(math.isfinite(c) for c in cur):
        out.append(f"session {s.id}: a current is not finite")
        return None
    bad = [
        t for t, c in enumerate(cur) if c != 0 and not (s.min_a - LIMIT_TOL_A <= c <= s.max_a + LIMIT_TOL_A)
    ]
    if bad:
        t = bad[0]
        out.append(
            f"session {s.id}: slot {t} current {cur[t]:.3f} A is neither 0 nor within "
            f"[{s.min_a}, {s.max_a}] A in {len(bad)} slot(s)"
        )
    outside = [t for t, c in enumerate(cur) if c != 0 and not s.arrival_slot <= t < s.departure_slot]
    if outside:
        t = outside[0]
        out.append(
            f"session {s.id}: slot {t} current {cur[t]:.3f} A outside its window "
            f"[{s.arrival_slot}, {s.departure_slot}) in {len(outside)} slot(s)"
        )
    energy = _energy(cur, kwh_per_amp_slot(inst, s, ph))
    if energy > s.energy_kwh * (1 + 1e-9) + ENERGY_TOL_KWH:
        out.append(f"session {s.id}: {energy:.6f} kWh delivered, needs only {s.energy_kwh:.6f}")
    if not math.isclose(energy, sp.energy_kwh, rel_tol=1e-6, abs_tol=ENERGY_TOL_KWH):
        out.append(f"session {s.id}: energy {sp.energy_kwh:.6f} kWh, currents give {energy:.6f}")
    unmet = max(s.energy_kwh - energy, 0.0)
    if not math.isclose(unmet, sp.unmet_kwh, rel_tol=1e-6, abs_tol=ENERGY_TOL_KWH):
        out.append(f"session {s.id}: unmet {sp.unmet_kwh:.6f} kWh, expected {unmet:.6f}")
    return energy


# --------------------------------------------------------------------------- assembling
