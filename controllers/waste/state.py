"""What the waste controller knows: bins, trucks, the day's counters, the plan in force, the calendar.

One `WasteState` is shared by the tracker, the planner and the views (the coordinator owns
it). It holds what estimation and planning need (fill history in each bin's estimator,
truck progress, the active plan); what the API publishes is derived from it by
`views.py` and goes north through the state store, not from here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from devices.inventory import Bin
from edge.alarms import Alarms
from edge.bus import EventBus
from edge.clock import Clock
from edge.settings import WasteSettings, window_s
from optimizer.waste import WastePlan

from .alarms import BinReading
from .fill import FillEstimator

TruckStatus = Literal["idle", "driving", "collecting", "unloading", "returning", "broken", "offline"]
TRUCK_STATUSES = frozenset({"idle", "driving", "collecting", "unloading", "returning", "broken"})
ON_ROUTE = frozenset({"driving", "collecting", "unloading", "returning"})
PlanReason = Literal["scheduled", "replan", "breakdown", "alarm", "operator"]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(slots=True)
class BinTrack:
    """What the controller knows about one bin."""

    bin: Bin
    est: FillEstimator
    reading: BinReading | None = None
    alarms: dict[str, str] = field(default_factory=dict)
    forced: bool = False
    excluded: bool = False
    reported_ts: float | None = None  # a truck said it emptied the bin; not yet confirmed
    confirmed_ts: float | None = None  # the sensor confirmed the last emptying
    plan: Literal["mandatory", "optional", "none"] = "none"
    # What the last sensor-seen emptying changed (confirmed_ts, forced, counted today), to take
    # it back if the estimator finds it was a glitch.
    undo: tuple[float | None, bool, bool] | None = None
    same_since: float | None = None  # ts of the first reading of the distance it reads now
    full_cache: tuple[tuple[float, float, int, float], float | None] | None = None  # bin_state's full_ts


@dataclass(slots=True)
class TruckTrack:
    """What the controller knows about one truck (from fleet/{truck}/state and /event)."""

    id: str
    volume_l: float
    weight_kg: float
    shift: str
    lat: float
    lon: float
    status: str = "idle"
    load_l: float = 0.0
    load_kg: float = 0.0
    route_id: str | None = None  # the route the truck reports following
    stop_index: int = 0
    odometer_km: float = 0.0
    last_seen_ts: float | None = None
    last_seq: int = -1
    last_event_ts: float = -math.inf
    broken: bool = False
    broken_ts: float | None = None  # the truck's ts of the breakdown: only a later state repairs it
    sent_route: str | None = None  # the last route sent to it
    reported: set[str] = field(default_factory=set)  # bins it reported emptied on the current route


@dataclass(slots=True)
class DayCounters:
    """Today's numbers (local day), for the summary."""

    day: date
    emptied: int = 0
    reported: int = 0  # truck reports not (yet) confirmed by the bin's sensor
    overflows: int = 0
    km_base: dict[str, float] = field(default_factory=dict)  # km today before the odometer's last reset
    km_last: dict[str, float] = field(default_factory=dict)  # the last odometer reading
    km_start: dict[str, float] = field(default_factory=dict)  # the odometer at the day's (or reset's) start

    @property
    def km(self) -> float:
        """Only what was driven today: a truck reporting yesterday's odometer adds nothing."""
        run = sum(last - self.km_start.get(t, last) for t, last in self.km_last.items())
        return sum(self.km_base.values()) + run


@dataclass(slots=True)
class ActivePlan:
    """The plan in force, the reason it was made and the route id each truck got."""

    plan: WastePlan
    plan_id: str
    reason: PlanReason
    day: date
    route_ids: dict[str, str]


class Calendar:
    """Local days, run days and shifts: the site's time zone turned into Unix times."""

    def __init__(self, cfg: WasteSettings, tz: ZoneInfo) -> None:
        self.tz = tz
        self.run_days = {WEEKDAYS.index(d) for d in cfg.run_days}
        self.plan_at_s = window_s(f"{cfg.plan_at}-23:59")[0]
        self.zones = {z.id: z.window for z in cfg.zones}
        self.shifts = {t.id: t.shift for t in cfg.trucks}

    def day(self, ts: float) -> date:
        return datetime.fromtimestamp(ts, self.tz).date()

    def at(self, day: date, seconds: float) -> float:
        """Unix time of a local wall-clock time (seconds after midnight) on `day`."""
        midnight = datetime(day.year, day.month, day.day, tzinfo=self.tz)
        return (midnight + timedelta(seconds=seconds)).timestamp()

    def seconds_of_day(self, ts: float) -> int:
        local = datetime.fromtimestamp(ts, self.tz)
        return local.hour * 3600 + local.minute * 60 + local.second

    def shift_of(self, truck: str, day: date) -> tuple[float, float]:
        a, b = window_s(self.shifts[truck])
        return self.at(day, a), self.at(day, b)

    def run_day(self, now: float) -> date:
        """The day a plan made now is for: today while a shift is left on a run day, else the next run day."""
        today = self.day(now)
        if today.weekday() in self.run_days and any(self.shift_of(t, today)[1] > now for t in self.shifts):
            return today
        return self.next_run_day(today)

    def next_run_day(self, after: date) -> date:
        for i in range(1, 8):
            d = after + timedelta(days=i)
            if d.weekday() in self.run_days:
                return d
        return after + timedelta(days=7)

    def run_start(self, day: date) -> float:
        return min(self.shift_of(t, day)[0] for t in self.shifts)

    def zone_windows(self, day: date) -> dict[str, tuple[float, float]]:
        out = {}
        for zid, win in self.zones.items():
            a_s, b_s = window_s(win)
            out[zid] = (self.at(day, a_s), self.at(day, b_s))
        return out


@dataclass(slots=True)
class Marks:
    """What changed since it was last published: bins, trucks, the plan's progress."""

    bins: set[str] = field(default_factory=set)
    trucks: set[str] = field(default_factory=set)
    plan: bool = False


class WasteState:
    """Bins, trucks, counters and the active plan, with the questions every part asks of them."""

    def __init__(
        self,
        bins: Sequence[Bin],
        cfg: WasteSettings,
        tz: ZoneInfo,
        clock: Clock,
        alarms: Alarms,
        bus: EventBus | None,
    ) -> None:
        depot = cfg.depot
        if depot is None or cfg.disposal is None:
            raise ValueError("waste needs a depot and a disposal site")
        self.cfg = cfg
        self.tz = tz
        self.clock = clock
        self.alarms = alarms
        self.bus = bus
        self.calendar = Calendar(cfg, tz)
        self.bins = {b.id: BinTrack(b, FillEstimator(b.kind, tz)) for b in bins}
        self.trucks = {
            t.id: TruckTrack(t.id, t.volume_l, t.weight_kg, t.shift, depot.lat, depot.lon) for t in cfg.trucks
        }
        self.counters = DayCounters(self.calendar.day(clock.now()))
        self.active: ActivePlan | None = None
        self.truck_offline_s = 300.0
        self.north = Marks()  # what changed since `views.North` last put it into the state store

    def touch_bin(self, bin_id: str) -> None:
        self.north.bins.add(bin_id)

    def touch_truck(self, truck: str) -> None:
        self.north.trucks.add(truck)

    def touch_plan(self) -> None:
        self.north.plan = True

    def day(self, ts: float) -> date:
        return self.calendar.day(ts)

    def roll_day(self) -> None:
        """Start new day counters when our clock's day changes (never a device's ts: it may be wrong)."""
        day = self.day(self.clock.now())
        if day > self.counters.day:
            odo = dict(self.counters.km_last)  # today's km start where yesterday's odometer stood
            self.counters = DayCounters(day, km_last=dict(odo), km_start=odo)

    def done_today(self, bt: BinTrack) -> bool:
        day = self.counters.day
        return any(t is not None and self.day(t) == day for t in (bt.confirmed_ts, bt.reported_ts))

    def pending_in_plan(self, bin_id: str) -> bool:
        """The bin is a stop of the active plan and not emptied yet today."""
        a = self.active
        if a is None:
            return False
        in_route = any(bin_id in r.bins for r in a.plan.routes)
        return in_route and not self.done_today(self.bins[bin_id])

    def in_operation(self, now: float) -> bool:
        """Today is a run day, today's plan exists and a shift is still going."""
        a = self.active
        return a is not None and a.day == self.day(now) and self.calendar.run_day(now) == a.day

    def truck_online(self, tt: TruckTrack, now: float) -> bool:
        return tt.last_seen_ts is not None and now - tt.last_seen_ts <= self.truck_offline_s
