"""The lamps' load on a feeder, as the feeder interlock counts it.

Every charger check, every interlock pass (twice a second) and every feeder state needs the
lighting load of one or more feeders. Counted lamp by lamp that is a city's 54,000 lamps
several times a second: the profile of the city bench found it took most of the daemon's
CPU. So the load now is kept per feeder and computed again only when it may have risen:

- a lamp's winning command changed (the dispatcher says so in step, `Dispatcher.watch`);
- a lamp's measured power rose, or a lamp or its controller stopped answering (the state
  store says so in step, `StateStore.watch`);
- a lamp's reading is about to go stale (it would then count at full power);
- the plan moved to another slot, or another plan came;
- `MAX_AGE_S` passed: changes that can only lower the load (a lamp dimmed, a fresh reading)
  are picked up then, and until then the higher figure counts, which is the safe side.

Without `follow` nothing is kept, and every call counts every lamp again.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from controllers.lighting import NightPlan, NightPlanSource, expected_power, lights_on
from devices.inventory import Inventory, Lamp
from edge.clock import Clock
from edge.dispatcher import Dispatcher
from edge.events import Value
from edge.policy import DispatcherView
from edge.state import StateStore

VOLTS = 230.0
LAMP_POINT = "level_cmd"
MAX_AGE_S = 10.0  # a kept load is counted again after this, so decreases show up too


def as_number(v: object) -> float | None:
    """A reported value as a float; None for anything that is not a number (bools included)."""
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


class LightingLoad(Protocol):
    """The lamps' load on a feeder and whether its lighting circuit carries power."""

    def amps(self, feeder: str, t: float, view: DispatcherView) -> float:
        """Lighting load (A on L1) at time t, assuming the worst of what is known."""
        ...

    def live(self, feeder: str, t: float) -> bool:
        """Whether lighting circuits carry power at t (the plan's night window)."""
        ...


@dataclass(slots=True)
class _Kept:
    """A feeder's load now, and until when it holds unless something raises it."""

    plan: NightPlan | None
    slot: int
    amps: float
    until: float


class PlannedLighting:
    """The lighting load from the night plan, the winning lamp commands and fresh measurements.

    Now: the largest of the plan, the winning command (an override, motion) and the fresh
    measurement; a lamp we cannot see counts at full power, as its controller's fail-safe
    puts it there. The future is the plan. Without a plan every lamp counts at full power,
    and night-only circuits count as dead (nothing may charge on them).
    """

    def __init__(self, inv: Inventory, plans: NightPlanSource, clock: Clock, stale_s: float) -> None:
        self._plans = plans
        self._clock = clock
        self._stale_s = stale_s
        # The lamps of each feeder and their groups are fixed, and a lamp's planned watts depend
        # only on its group's level: the planned load is computed once per (feeder, slot).
        # Per feeder its lamps, and beside them the index of each one's group in `_groups`
        # (two sequences, not a pair per lamp: 5 MB less at 54,000 lamps).
        self._lamps_of: dict[str, list[Lamp]] = {}
        self._group_at: dict[str, array[int]] = {}
        self._groups: dict[str, list[str]] = {}
        self._inv = inv
        self._controller_feeders: dict[str, set[str]] = {}  # a controller's lamps may span feeders
        for lamp in inv.lamps.values():
            gs = self._groups.setdefault(lamp.feeder, [])
            if lamp.group not in gs:
                gs.append(lamp.group)
            self._lamps_of.setdefault(lamp.feeder, []).append(lamp)
            self._group_at.setdefault(lamp.feeder, array("I")).append(gs.index(lamp.group))
            self._controller_feeders.setdefault(lamp.controller, set()).add(lamp.feeder)
        self._planned_for: NightPlan | None = None
        self._planned: dict[tuple[str, int], tuple[list[float], float]] = {}
        self._following = False
        self._kept: dict[str, _Kept] = {}
        self._counted_w: dict[str, float] = {}  # what each lamp counted for in its feeder's kept load
        self.recounts = 0  # feeders counted lamp by lamp (for the benches)

    def follow(self, state: StateStore, dispatcher: Dispatcher) -> None:
        """Keep each feeder's load, told by the store and the dispatcher when it may rise."""
        state.watch(self._state_changed)
        dispatcher.watch(self._command_changed)
        self._following = True

    def _state_changed(self, device_id: str, changed: Mapping[str, Value | None]) -> None:
        # A lamp or controller that stopped answering counts at full power; a lamp drawing more
        # than it counted for raises the load. What lowers it waits for MAX_AGE_S (safe side).
        lost = changed.get("online", True) is not True
        power = as_number(changed.get("power_w"))
        if lost or (power is not None and power > self._counted_w.get(device_id, 0.0)):
            self._forget(device_id)

    def _command_changed(self, device_id: str, point: str) -> None:
        if point == LAMP_POINT:
            self._forget(device_id)

    def _forget(self, device_id: str) -> None:
        if (lamp := self._inv.lamps.get(device_id)) is not None:
            self._kept.pop(lamp.feeder, None)
        for feeder in self._controller_feeders.get(device_id, ()):
            self._kept.pop(feeder, None)

    def live(self, feeder: str, t: float) -> bool:
        return lights_on(self._plans, t)

    def _planned_watts(self, feeder: str, plan: NightPlan | None, slot: int) -> tuple[list[float], float]:
        if plan is not self._planned_for:
            self._planned_for, self._planned = plan, {}
        hit = self._planned.get((feeder, slot))
        if hit is None:
            lamps = self._lamps_of.get(feeder, [])
            if plan is None:
                per_lamp = [lamp.p_max_w for lamp in lamps]
            else:
                groups = self._groups.get(feeder, ())
                levels = [0 if slot < 0 else plan.levels[g][slot] for g in groups]
                per_lamp = [
                    expected_power(lamp, levels[gi])
                    for lamp, gi in zip(lamps, self._group_at[feeder], strict=True)
                ]
            hit = self._planned[(feeder, slot)] = (per_lamp, sum(per_lamp))
        return hit

    def amps(self, feeder: str, t: float, view: DispatcherView) -> float:
        now = self._clock.now()
        plan = self._plans.plan
        slot = -1 if plan is None else plan.slot(t)
        per_lamp, total = self._planned_watts(feeder, plan, slot)
        if abs(t - now) >= 60:  # the future is the plan
            return total / VOLTS
        kept = self._kept.get(feeder)
        if kept is not None and kept.plan is plan and kept.slot == slot and now < kept.until:
            return kept.amps
        amps, until = self._count(feeder, per_lamp, now, view)
        if self._following:
            self._kept[feeder] = _Kept(plan, slot, amps, min(until, now + MAX_AGE_S))
        return amps

    def _count(
        self, feeder: str, per_lamp: list[float], now: float, view: DispatcherView
    ) -> tuple[float, float]:
        """The feeder's load now, lamp by lamp, and when the first fresh reading goes stale."""
        self.recounts += 1
        watts, until = 0.0, now + MAX_AGE_S
        counted = self._counted_w
        for lamp, w_plan in zip(self._lamps_of.get(feeder, ()), per_lamp, strict=True):
            w = w_plan
            level = view.effective_value(lamp.id, LAMP_POINT)
            if level is not None:
                w = max(w, expected_power(lamp, level))
            # Its last reading counts even once stale: a lamp that drew more than its rating
            # still may, so it coming back never raises the load unannounced.
            if (measured := as_number(view.value(lamp.id, "power_w"))) is not None:
                w = max(w, measured)
            seen = view.updated_at(lamp.id)
            # A lamp counts by its measurement only while it and its controller answer: a motion
            # report about a lamp is not a reading of it.
            if (
                seen is None
                or view.online(lamp.id) is not True
                or view.online(lamp.controller) is False
                or now - seen >= self._stale_s
            ):
                w = max(w, lamp.p_max_w)
            else:
                until = min(until, seen + self._stale_s)
            counted[lamp.id] = w
            watts += w
        return watts / VOLTS, until
