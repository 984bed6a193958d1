"""The waste controller: a thin coordinator of tracking, alarms, planning and views.

Bin uplinks and truck messages come from the bus (`run`) or `handle`; the `Tracker` folds
them into the shared `WasteState`; `step` ticks the alarms, the offline trucks, held routes
and rate-limited re-plans and asks for the day's scheduled plan at `plan_at`; the
`Planner` makes plans one at a time and sends the routes through the dispatcher; `North`
publishes what changed into the state store. Operators force, exclude and clear bins.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from devices.inventory import Bin
from edge.alarms import Alarms
from edge.bus import EventBus, Subscription
from edge.clock import Clock
from edge.events import Command, PlanEvent, Telemetry
from edge.kernel import Kernel
from edge.policy import Verdict
from edge.settings import WasteSettings
from edge.solvers import Solvers
from optimizer.waste import DistanceProvider, HaversineProvider

from . import views
from .planning import Planner
from .state import ActivePlan, BinTrack, DayCounters, PlanReason, TruckTrack, WasteState
from .tracking import Tracker

log = structlog.get_logger(__name__)

OPERATOR_DOMAIN = "waste.operator"
"""Plan events (and plans-table rows) that carry the operators' force/exclude flags."""


@dataclass(frozen=True, slots=True)
class WastePorts:
    """The kernel parts the controller uses: what a test hands it when it has no whole `Kernel`."""

    tz: ZoneInfo
    clock: Clock
    alarms: Alarms
    submit: Callable[[Command], Verdict] | None
    bus: EventBus | None = None
    solvers: Solvers | None = None  # None: plans in a thread

    @classmethod
    def of(cls, kernel: Kernel) -> WastePorts:
        tz = ZoneInfo(kernel.settings.site.timezone)
        return cls(tz, kernel.clock, kernel.alarms, kernel.dispatcher.submit, kernel.bus, kernel.solvers)


class WasteController:
    """Bins and trucks in, collection plans and truck routes out (satisfies `edge.kernel.Controller`).

    Each truck's route is a command with a JSON payload (point `route`, value = the route's
    number, confirmed when the truck accepts that route).
    """

    name = "waste"

    def __init__(
        self,
        kernel: Kernel | WastePorts,
        cfg: WasteSettings,
        *,
        bins: Sequence[Bin],
        provider: DistanceProvider | None = None,
        command_ttl_s: float = 900.0,
        truck_offline_s: float = 300.0,
        alarm_replan_s: float = 900.0,
        step_s: float = 1.0,
    ) -> None:
        ports = kernel if isinstance(kernel, WastePorts) else WastePorts.of(kernel)
        self.st = WasteState(bins, cfg, ports.tz, ports.clock, ports.alarms, ports.bus)
        self.st.truck_offline_s = truck_offline_s
        provider = provider or HaversineProvider(cfg.detour, {str(k): v for k, v in cfg.speeds_kmh.items()})
        self.planner = Planner(
            self.st, provider, ports.submit, command_ttl_s=command_ttl_s, solvers=ports.solvers
        )
        self.tracker = Tracker(self.st, self)
        self.north = views.North(self.st)
        self.alarm_replan_s = alarm_replan_s
        self.step_s = step_s
        self.failed = 0  # events whose handling raised
        self._pending: PlanReason | None = None
        self._wake = asyncio.Event()
        self._planning = False
        self._last_alarm_plan = -math.inf
        self._alarm_waiting = False  # an alarm re-plan held back by the rate limit
        # Subscribed now, not when `run` starts: no uplink is lost in between.
        self._sub = ports.bus.subscribe("waste", Telemetry) if ports.bus is not None else None

    # -- what the parts hold, by their old names (the API, the demo and tests read them) --

    @property
    def cfg(self) -> WasteSettings:
        return self.st.cfg

    @cfg.setter
    def cfg(self, cfg: WasteSettings) -> None:
        self.st.cfg = cfg

    @property
    def clock(self) -> Clock:
        return self.st.clock

    @property
    def bins(self) -> dict[str, BinTrack]:
        return self.st.bins

    @property
    def trucks(self) -> dict[str, TruckTrack]:
        return self.st.trucks

    @property
    def counters(self) -> DayCounters:
        return self.st.counters

    @property
    def active(self) -> ActivePlan | None:
        return self.st.active

    @property
    def plans_made(self) -> int:
        return self.planner.plans_made

    @property
    def routes_sent(self) -> int:
        return self.planner.routes_sent

    @property
    def rejected(self) -> int:
        return self.tracker.rejected

    def run_day(self, now: float) -> date:
        return self.st.calendar.run_day(now)

    # -- input --------------------------------------------------------------------------

    def handle(self, event: Telemetry) -> None:
        """One Telemetry event of a bin or a truck (anything else is ignored)."""
        self.tracker.handle(event)

    def on_late(self, event: Telemetry) -> None:
        """A late (out-of-order) uplink: history only, never the current state."""
        self.tracker.on_late(event)

    # -- operators ----------------------------------------------------------------------

    def operator(self, bin_id: str, action: str) -> tuple[bool, str]:
        """force / exclude / clear a bin; (ok, reason)."""
        bt = self.st.bins.get(bin_id)
        if bt is None:
            return False, "unknown_bin"
        if action == "force":
            if bt.excluded:
                return False, "excluded: clear it first"
            bt.forced = True
            self.request_plan("operator")
        elif action == "exclude":
            bt.excluded, bt.forced = True, False
            if self.st.pending_in_plan(bin_id):
                self.request_plan("operator")
        elif action == "clear":
            bt.excluded = bt.forced = False
        else:
            return False, f"unknown_action: {action}"
        self.st.touch_bin(bin_id)
        self.publish_flags()
        return True, ""

    def publish_flags(self) -> None:
        if self.st.bus is not None:  # stored like a plan, so a restart keeps the operators' intent
            self.st.bus.publish(PlanEvent(OPERATOR_DOMAIN, self.st.clock.now(), self.flags()))

    def flags(self) -> dict[str, object]:
        """The operators' standing decisions: forced and excluded bins."""
        return {
            "forced": sorted(b for b, t in self.st.bins.items() if t.forced),
            "excluded": sorted(b for b, t in self.st.bins.items() if t.excluded),
        }

    # -- restart ------------------------------------------------------------------------

    def restore_flags(self, body: Mapping[str, object]) -> None:
        """Forced and excluded bins as last stored."""
        for key in ("forced", "excluded"):
            ids = body.get(key)
            if isinstance(ids, list):
                for bid in ids:
                    if isinstance(bid, str) and bid in self.st.bins:
                        setattr(self.st.bins[bid], key, True)

    def restore_history(self, bin_id: str, samples: Sequence[tuple[float, Mapping[str, object]]]) -> int:
        """Feed stored state samples (oldest first) into a bin's estimator; returns readings used."""
        return self.tracker.restore_history(bin_id, samples)

    def restore_plan(self, body: Mapping[str, object], now: float) -> bool:
        """Take today's stored plan back into force (without sending routes again)."""
        return self.planner.restore(body, now)

    # -- re-plans -----------------------------------------------------------------------

    def request_plan(self, reason: PlanReason) -> None:
        """Ask for a (re-)plan; the planner task makes it as soon as it is free."""
        if self._pending is None or reason != "alarm":
            self._pending = reason
        self._wake.set()

    def request_replan(self) -> None:
        """`edge.kernel.Controller`: an operator asked for a new plan."""
        self.request_plan("operator")

    def limited_replan(self, now: float) -> None:
        """A re-plan during the day's operation, at most every `alarm_replan_s` (one that comes
        sooner waits for `step`)."""
        if not self.st.in_operation(now):
            return
        if now - self._last_alarm_plan >= self.alarm_replan_s:
            self._last_alarm_plan = now
            self._alarm_waiting = False
            self.request_plan("alarm")
        else:
            self._alarm_waiting = True

    def stop_truck(self, tt: TruckTrack) -> None:
        self.planner.stop_truck(tt)

    def step(self, now: float) -> None:
        """Stale bins, offline trucks, held-back alarm re-plans and routes, the day's scheduled plan."""
        st = self.st
        st.roll_day()
        self.planner.send_held(now)
        if self._alarm_waiting and now - self._last_alarm_plan >= self.alarm_replan_s:
            self._alarm_waiting = False
            if st.in_operation(now):
                self._last_alarm_plan = now
                self.request_plan("alarm")
        self.tracker.tick(now)
        today = st.day(now)
        cal = st.calendar
        if (
            today.weekday() in cal.run_days
            and cal.seconds_of_day(now) >= cal.plan_at_s
            and self.planner.last_scheduled != today
            and cal.run_day(now) == today
        ):
            self.planner.last_scheduled = today
            self.request_plan("scheduled")

    # -- planning -----------------------------------------------------------------------

    async def plan_pending(self) -> ActivePlan | None:
        """Make the plan asked for (if any); the planner task calls this whenever woken."""
        reason = self._pending
        self._pending = None
        self._wake.clear()
        if reason is None:
            return None
        self._planning = True
        try:
            return await self.planner.plan_now(reason)
        except Exception:  # a planner bug must not stop bins and trucks being tracked
            log.exception("waste_plan_failed", reason=reason)
            return None
        finally:
            self._planning = False

    @property
    def pending(self) -> PlanReason | None:
        """The reason of a plan asked for and not made yet."""
        return self._pending

    @property
    def planning(self) -> bool:
        return self._planning or self._pending is not None

    # -- views --------------------------------------------------------------------------

    def stop_state(self, truck: str, seq: int) -> views.StopState:
        return views.stop_state(self.st, truck, seq)

    def bin_state(self, bin_id: str, now: float) -> dict[str, object]:
        return views.bin_state(self.st, bin_id, now)

    def truck_state(self, truck: str, now: float) -> dict[str, object]:
        return views.truck_state(self.st, truck, now)

    def plan_message(self, plan: ActivePlan | None = None) -> dict[str, object] | None:
        return views.plan_message(self.st, self.st.active if plan is None else plan)

    def summary(self, now: float) -> dict[str, object]:
        return views.summary(self.st, now)

    def views(self) -> Mapping[str, Any]:
        """`edge.kernel.Controller`: the plan in force (WastePlanMessage) and the operators' flags."""
        return {"plan": self.plan_message(), "flags": self.flags()}

    # -- running ------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume bin and truck telemetry from the bus, tick, publish north, and plan when asked."""
        sub = self._sub
        if self.st.bus is None or sub is None:
            raise RuntimeError("WasteController.run needs a bus")
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._consume(sub), name="waste.events")
                tg.create_task(self._tick(), name="waste.tick")
                tg.create_task(self._planner(), name="waste.planner")
        finally:
            self.st.bus.unsubscribe(sub)

    async def _consume(self, sub: Subscription) -> None:
        async for ev in sub:
            if isinstance(ev, Telemetry):
                try:
                    self.handle(ev)
                except Exception:  # one bad message must not stop the tracking of every bin and truck
                    self.failed += 1
                    log.exception("waste_event_failed", device=ev.device_id)

    async def _tick(self) -> None:
        while True:
            now = self.st.clock.now()
            self.step(now)
            await self.north.flush(now)
            await asyncio.sleep(self.step_s)

    async def _planner(self) -> None:
        while True:
            await self._wake.wait()
            await self.plan_pending()
