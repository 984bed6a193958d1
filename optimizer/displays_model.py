"""Parking guidance: the instance, the plan and the solver-independent check.

Split from optimizer/displays.py (which callers import) so that the model and its check read on
their own; see there for the rules."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, Field, model_validator

from optimizer.common import PlanStatus

STATUSES: frozenset[str] = frozenset(
    {PlanStatus.OPTIMAL.value, PlanStatus.FALLBACK.value}
)  # what its plans may say
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
