"""Tracking: bin uplinks and the fleet's state and events folded into what the controller knows.

A bin's reading feeds its estimator and its alarms; an emptying counts only when the bin's
own sensor confirms it (a truck's report alone is "reported"). A truck's state moves it,
loads it and counts its kilometres; its events report emptyings, skips, breakdowns and
route answers. What needs a plan (a breakdown, a fire, a skipped mandatory bin) is asked
of the coordinator through `TrackerHooks`, never done here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import structlog

from edge.events import Telemetry, Value

from . import wire
from .alarms import BIN_ALARMS, SEVERITY, BinReading, bin_alarms, plausible
from .fill import HOUR
from .state import BinTrack, PlanReason, TruckTrack, WasteState

log = structlog.get_logger(__name__)

MAX_AHEAD_S = 86400.0  # a device ts further ahead of our clock than this is refused
CONFIRM_S = 4 * HOUR  # a truck's report and the sensor's drop this close are the same emptying


class TrackerHooks(Protocol):
    """What tracking asks of the coordinator."""

    def request_plan(self, reason: PlanReason) -> None: ...

    def limited_replan(self, now: float) -> None: ...

    def stop_truck(self, tt: TruckTrack) -> None: ...

    def publish_flags(self) -> None: ...


class Tracker:
    """Bins and trucks in: readings, estimates, alarms, counters and truck progress updated."""

    def __init__(self, st: WasteState, hooks: TrackerHooks) -> None:
        self.st = st
        self.hooks = hooks
        self.rejected = 0  # events refused for their ts

    # -- input --------------------------------------------------------------------------

    def handle(self, event: Telemetry) -> None:
        """One Telemetry event of a bin or a truck (anything else is ignored).

        A device's ts only orders its own messages: one not finite or more than a day ahead of our
        clock is refused, since held as "last seen" it would make every later message look old.
        The controller's own derived state (`views.py`, on the same device ids, marked
        `derived`) comes back on the bus and is ignored here.
        """
        st = self.st
        if event.device_id not in st.bins and event.device_id not in st.trucks:
            return
        if event.derived:
            return  # our own BinState/TruckState on its way to the state store
        if not math.isfinite(event.ts) or event.ts > st.clock.now() + MAX_AHEAD_S:
            self.rejected += 1
            log.warning("waste_event_ts_refused", device=event.device_id, ts=event.ts)
            return
        if event.device_id in st.bins:
            self.on_bin(event)
        elif wire.is_truck_event(event.values):
            self.on_truck_event(event.device_id, event.ts, event.values)
        else:
            self.on_truck_state(event.device_id, event.ts, event.values)

    def on_late(self, event: Telemetry) -> None:
        """A late (out-of-order) uplink: history only, never the current state."""
        bt = self.st.bins.get(event.device_id)
        if bt is not None:
            v = event.values
            d = wire.num(v.get("distance_mm"))
            if (
                d is not None
                and plausible(bt.bin, d)
                and v.get("tilt") is not True
                and v.get("lid_open") is not True
            ):
                bt.est.add(event.ts, bt.bin.fill_of(d))

    def on_bin(self, event: Telemetry) -> None:
        bt = self.st.bins[event.device_id]
        v = event.values
        if bt.reading is not None and event.ts <= bt.reading.ts:
            return  # an older frame than the one we hold
        dist = wire.num(v.get("distance_mm"))
        fill = None if not plausible(bt.bin, dist) or dist is None else bt.bin.fill_of(dist)
        if v.get("tilt") is True or v.get("lid_open") is True:
            fill = None  # the sensor looks at the sky or along the ground, not at the waste
        if dist is None or bt.reading is None or bt.reading.distance_mm != dist or bt.same_since is None:
            bt.same_since = event.ts
        bt.reading = BinReading(
            ts=event.ts,
            fill=fill,
            distance_mm=dist,
            battery=wire.num(v.get("battery")),
            temperature=wire.num(v.get("temperature")),
            lid_open=v.get("lid_open") is True,
            tilt=v.get("tilt") is True,
            fire=v.get("fire") is True,
        )
        hint = bt.reported_ts is not None and event.ts - bt.reported_ts < CONFIRM_S
        if fill is not None:
            emptyings = bt.est.emptyings
            undo, bt.undo = bt.undo, None
            result = bt.est.add(event.ts, fill, expect_empty=hint)
            if result == "emptied":
                self.emptied(bt, event.ts)
            elif result == "glitch" and bt.est.emptyings < emptyings and undo is not None:
                self.unemptied(bt, undo)
        self.update_alarms(bt, self.st.clock.now())
        self.st.touch_bin(bt.bin.id)

    def emptied(self, bt: BinTrack, ts: float) -> None:
        """The sensor saw a drop: the bin was emptied (confirming a truck's report if there is one)."""
        st = self.st
        st.roll_day()
        counted = st.day(ts) == st.counters.day
        bt.undo = (bt.confirmed_ts, bt.forced, counted)
        bt.confirmed_ts = ts
        if bt.reported_ts is not None:
            st.counters.reported = max(0, st.counters.reported - 1)
            bt.reported_ts = None
        if counted:
            st.counters.emptied += 1
        st.alarms.set(bt.bin.id, "bin_skipped", False, SEVERITY["bin_skipped"])
        if bt.forced:
            bt.forced = False  # a forced collection is done; stored, or a restart would force it again
            self.hooks.publish_flags()
        if st.active is not None:
            st.touch_plan()
        log.info("waste_bin_emptied", bin=bt.bin.id, fill=bt.est.last.fill if bt.est.last else None)

    def unemptied(self, bt: BinTrack, undo: tuple[float | None, bool, bool]) -> None:
        """The emptying the sensor saw came straight back (a glitch): it was not emptied after all."""
        st = self.st
        st.roll_day()
        confirmed, forced, counted = undo
        if bt.forced != forced:
            bt.forced = forced
            self.hooks.publish_flags()
        bt.confirmed_ts = confirmed
        if counted and st.counters.emptied > 0:
            st.counters.emptied -= 1
        st.touch_bin(bt.bin.id)
        if st.active is not None:
            st.touch_plan()
        log.info("waste_bin_emptying_undone", bin=bt.bin.id)

    # -- trucks -------------------------------------------------------------------------

    def on_truck_state(self, truck: str, ts: float, values: Mapping[str, Value]) -> None:
        st = self.st
        tt = st.trucks[truck]
        if tt.last_seen_ts is not None and ts < tt.last_seen_ts:
            return
        st.roll_day()
        v = wire.truck_state(values)
        tt.last_seen_ts = ts
        if v.lat is not None and v.lon is not None:
            tt.lat, tt.lon = v.lat, v.lon
        tt.load_l, tt.load_kg = v.load_l, v.load_kg
        if v.status is not None:
            self._status(tt, v.status, ts)
        tt.route_id = v.route_id
        if v.stop_index is not None:
            tt.stop_index = v.stop_index
        if v.odometer_km is not None:
            self._odometer(tt, v.odometer_km)
        st.touch_truck(truck)

    def _status(self, tt: TruckTrack, status: str, ts: float) -> None:
        if tt.broken and status != "broken":
            # MQTT does not order across topics: a state older than the breakdown repairs nothing.
            if tt.broken_ts is None or ts > tt.broken_ts:
                tt.broken, tt.broken_ts = False, None
                self.st.alarms.set(tt.id, "truck_breakdown", False, SEVERITY["truck_breakdown"])
                log.info("waste_truck_repaired", truck=tt.id)
                if self.st.active is not None and self.st.in_operation(self.st.clock.now()):
                    self.hooks.request_plan("replan")
                tt.status = status
        else:
            if status == "broken" and not tt.broken:
                self.breakdown(tt, "reported broken", ts)
            tt.status = status

    def _odometer(self, tt: TruckTrack, odo: float) -> None:
        c = self.st.counters
        last = c.km_last.get(tt.id)
        if last is None:
            # first heard since we started: a shift odometer (reset at the shift start) counts whole
            c.km_start.setdefault(tt.id, 0.0)
        elif odo < last - 0.5:  # the odometer was reset: a new baseline
            c.km_base[tt.id] = c.km_base.get(tt.id, 0.0) + last - c.km_start.get(tt.id, last)
            c.km_start[tt.id] = odo
        c.km_last[tt.id] = odo
        tt.odometer_km = odo

    def on_truck_event(self, truck: str, ts: float, values: Mapping[str, Value]) -> None:
        st = self.st
        tt = st.trucks[truck]
        ev = wire.truck_event(values)
        if ev.seq is not None:
            if ev.seq <= tt.last_seq and ts <= tt.last_event_ts:
                return  # a duplicate (QoS 1 delivers at least once)
            tt.last_seq, tt.last_event_ts = ev.seq, max(ts, tt.last_event_ts)
        st.roll_day()
        known = ev.bin is not None and ev.bin in st.bins
        if ev.kind == "emptied" and known and ev.bin is not None:
            self._reported_emptied(tt, st.bins[ev.bin], ts)
        elif ev.kind == "breakdown":
            self.breakdown(tt, "breakdown event", ts)
        elif ev.kind == "skipped" and known and ev.bin is not None:
            bt = st.bins[ev.bin]
            if bt.plan == "mandatory" or bt.forced:
                why = f"{truck} skipped it: {ev.reason}"[:200]
                st.alarms.set(ev.bin, "bin_skipped", True, SEVERITY["bin_skipped"], why)
                log.warning("waste_mandatory_bin_skipped", truck=truck, bin=ev.bin, reason=ev.reason)
                self.hooks.limited_replan(st.clock.now())
        elif ev.kind == "route_accepted":
            tt.route_id = ev.route_id if ev.route_id is not None else tt.route_id
            tt.reported = set()
        elif ev.kind == "route_rejected":
            log.warning("waste_route_rejected", truck=truck, route_id=ev.route_id, reason=ev.reason)
            if not tt.broken:  # a broken truck refusing (its empty route) changes nothing
                self.hooks.limited_replan(st.clock.now())
        elif ev.kind == "route_done":
            tt.status = "idle"
        st.touch_truck(truck)

    def _reported_emptied(self, tt: TruckTrack, bt: BinTrack, ts: float) -> None:
        st = self.st
        tt.reported.add(bt.bin.id)
        confirmed = bt.confirmed_ts is not None and abs(ts - bt.confirmed_ts) < CONFIRM_S
        last = bt.est.last
        if not confirmed and last is not None and abs(last.ts - ts) <= 900 and last.fill < 0.1:
            # The sensor already reads (nearly) empty around the lift: that is the confirmation
            # (a bin collected nearly empty drops too little to be seen as an emptying by itself).
            if bt.est.last_emptied_ts != last.ts:
                bt.est.mark_emptied()
            self.emptied(bt, last.ts)
            confirmed = True
        if not confirmed and bt.reported_ts is None:
            bt.reported_ts = ts
            st.counters.reported += 1
        st.touch_bin(bt.bin.id)
        if st.active is not None:
            st.touch_plan()

    def breakdown(self, tt: TruckTrack, why: str, ts: float) -> None:
        if tt.broken:
            tt.broken_ts = max(ts, tt.broken_ts or ts)
            return
        tt.broken, tt.broken_ts = True, ts
        tt.status = "broken"
        if tt.sent_route is not None and self.st.active is not None:
            self.hooks.stop_truck(tt)  # its route goes to the others in the re-plan
        self.st.alarms.set(tt.id, "truck_breakdown", True, SEVERITY["truck_breakdown"], why)
        log.warning("waste_truck_breakdown", truck=tt.id, why=why)
        if self.st.active is not None:
            self.hooks.request_plan("breakdown")

    # -- alarms and time ----------------------------------------------------------------

    def update_alarms(self, bt: BinTrack, now: float) -> None:
        st = self.st
        new = bin_alarms(bt.bin, bt.reading, bt.est, now, bt.alarms.keys(), bt.same_since)
        old = bt.alarms
        if new.keys() == old.keys():
            bt.alarms = new
            return
        for code in BIN_ALARMS:
            if (code in new) != (code in old):
                st.alarms.set(bt.bin.id, code, code in new, SEVERITY[code], new.get(code, ""))
        raised = new.keys() - old.keys()
        bt.alarms = new
        st.touch_bin(bt.bin.id)
        if "overflow" in raised:
            st.roll_day()
            st.counters.overflows += 1
        # A fire or overflow during the day's operation: re-plan (rate-limited by the hook).
        urgent = raised & {"fire", "overflow"} and not bt.excluded
        if urgent and st.in_operation(now) and not st.pending_in_plan(bt.bin.id):
            self.hooks.limited_replan(now)

    def tick(self, now: float) -> None:
        """Stale bins and offline trucks."""
        for bt in self.st.bins.values():
            if bt.reading is not None:
                self.update_alarms(bt, now)
        for tt in self.st.trucks.values():
            offline = tt.last_seen_ts is None or now - tt.last_seen_ts > self.st.truck_offline_s
            if offline and tt.status != "offline" and tt.last_seen_ts is not None and not tt.broken:
                tt.status = "offline"
                self.st.touch_truck(tt.id)

    # -- restart ------------------------------------------------------------------------

    def restore_history(self, bin_id: str, samples: Sequence[tuple[float, Mapping[str, object]]]) -> int:
        """Feed stored state samples (oldest first) into a bin's estimator; returns readings used.

        Samples repeat the latest uplink until a new one arrives: only a new frame counter counts.
        """
        st = self.st
        bt = st.bins.get(bin_id)
        if bt is None:
            return 0
        used, last_cnt = 0, None
        today = st.day(st.clock.now())
        for ts, values in samples:
            cnt = values.get("f_cnt")
            dist = values.get("distance_mm")
            if cnt == last_cnt or not isinstance(dist, int | float) or not plausible(bt.bin, float(dist)):
                continue
            last_cnt = cnt
            emptyings = bt.est.emptyings
            result = bt.est.add(ts, bt.bin.fill_of(float(dist)))
            if result == "emptied":  # emptied today: done (forced flags come from their own record)
                prev, bt.confirmed_ts = bt.confirmed_ts, ts
                bt.undo = (prev, bt.forced, False)
            elif result == "glitch" and bt.est.emptyings < emptyings and bt.undo is not None:
                bt.confirmed_ts = bt.undo[0]
            if result != "late":
                bt.undo = bt.undo if result == "emptied" else None
            used += 1
        bt.undo = None  # the live path takes back only emptyings it saw itself
        if bt.confirmed_ts is not None and st.day(bt.confirmed_ts) == today:
            st.counters.emptied += 1
        return used
