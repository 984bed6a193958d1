"""Views: what the API publishes about bins, trucks, the plan and the day, and how it goes north.

`bin_state`, `truck_state`, `plan_message` and `summary` build the payloads of
docs/mqtt-api.md (BinState, TruckState, WastePlanMessage, WasteSummary) from the
controller's state. `North` publishes the changed ones into the state store as
`Telemetry` (contract C-north: value keys are the payload's field names, a list goes as a
JSON string; the plan in force on device `waste`, the day's summary on `waste-planner`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import orjson

from edge.events import Telemetry, Value
from edge.tasks import TimeSlice

from .fill import HOUR
from .state import ON_ROUTE, ActivePlan, WasteState

SUMMARY_ID = "waste-planner"
"""The state-store device that carries the day's WasteSummary."""
PLANNER_ID = "waste"
"""The device of alarms about the plan as a whole (plan_failed), and of the plan in force
(WastePlanMessage) in the state store."""

StopState = Literal["pending", "reported", "done"]


def stop_state(st: WasteState, truck: str, seq: int) -> StopState:
    """A stop of the active plan: done (bin: its sensor confirmed), reported (truck said so) or pending."""
    a = st.active
    if a is None:
        return "pending"
    r = a.plan.route_of(truck)
    if r is None or seq >= len(r.stops):
        return "pending"
    s = r.stops[seq]
    tt = st.trucks[truck]
    if s.kind == "bin":
        bt = st.bins[s.id]
        if bt.confirmed_ts is not None and bt.confirmed_ts >= a.plan.made_ts - 4 * HOUR:
            return "done"
        return "reported" if s.id in tt.reported or bt.reported_ts is not None else "pending"
    if tt.route_id == a.route_ids.get(truck) and tt.stop_index > seq:
        return "done"
    return "pending"


def bin_state(st: WasteState, bin_id: str, now: float) -> dict[str, object]:
    """BinState (docs/mqtt-api.md) of one bin."""
    bt = st.bins[bin_id]
    b, est, r = bt.bin, bt.est, bt.reading
    fill = None if r is None or r.fill is None else round(r.fill, 3)
    full = None
    if est.last is not None:
        # The forecast changes only with a reading: computed once per reading (~0.4 ms each,
        # and the API asks for every bin), then only moved on to `now`.
        key = (est.last.ts, est.last.fill, est.emptyings, st.cfg.threshold)
        if bt.full_cache is None or bt.full_cache[0] != key:
            bt.full_cache = (key, est.time_to(st.cfg.threshold, est.last.ts))
        cached = bt.full_cache[1]
        full = None if cached is None else max(now, cached)
    status = "fault" if "sensor_fault" in bt.alarms else "stale" if "stale" in bt.alarms else "ok"
    return {
        "id": b.id,
        "lat": b.lat,
        "lon": b.lon,
        "kind": b.kind,
        "zone": b.zone,
        "fill": fill,
        "rate_per_h": round(est.rate_at(now), 5) if est.last is not None else None,
        "full_ts": None if full is None else round(full, 1),
        "battery": None if r is None else r.battery,
        "temperature": None if r is None else r.temperature,
        "alarms": sorted(bt.alarms),
        "status": status,
        "last_seen_ts": None if r is None else r.ts,
        "last_emptied_ts": est.last_emptied_ts,
        "plan": bt.plan,
        "forced": bt.forced,
        "excluded": bt.excluded,
        "ts": now,
    }


def truck_state(st: WasteState, truck: str, now: float) -> dict[str, object]:
    """TruckState (docs/mqtt-api.md) of one truck."""
    tt = st.trucks[truck]
    online = st.truck_online(tt, now)
    status = "broken" if tt.broken else tt.status if online else "offline"
    a = st.active
    route = a.plan.route_of(truck) if a is not None else None
    done = 0
    if route is not None:
        done = sum(1 for s in route.stops if s.kind == "bin" and stop_state(st, truck, s.seq) != "pending")
    pct = max(tt.load_l / tt.volume_l, tt.load_kg / tt.weight_kg) * 100
    return {
        "id": truck,
        "online": online,
        "status": status,
        "lat": tt.lat,
        "lon": tt.lon,
        "load_l": tt.load_l,
        "load_kg": tt.load_kg,
        "load_pct": round(min(100.0, max(0.0, pct)), 1),
        "route_id": tt.route_id or tt.sent_route,
        "stop_index": tt.stop_index,
        "stops_total": len(route.stops) if route is not None else 0,
        "bins_done": done,
        "bins_total": len(route.bins) if route is not None else 0,
        "odometer_km": tt.odometer_km,
        "last_seen_ts": tt.last_seen_ts,
        "ts": now,
    }


def plan_message(st: WasteState, a: ActivePlan | None) -> dict[str, object] | None:
    """WastePlanMessage (docs/mqtt-api.md) of `a` (the plan in force, or one refused)."""
    if a is None:
        return None
    p = a.plan
    served = {b for r in p.routes for b in r.bins}
    routes = []
    for r in p.routes:
        stops = [
            {
                "seq": s.seq,
                "kind": s.kind,
                "id": s.id,
                "eta_ts": round(s.eta_ts, 1),
                "done": stop_state(st, r.truck, s.seq) == "done",
            }
            for s in r.stops
        ]
        routes.append(
            {
                "truck": r.truck,
                "route_id": a.route_ids.get(r.truck, ""),
                "distance_km": round(r.distance_m / 1000, 3),
                "stops": stops,
            }
        )
    return {
        "plan_id": a.plan_id,
        "made_ts": p.made_ts,
        "reason": a.reason,
        "status": p.status,
        "solver": p.solver,
        "distance_km": round(p.distance_m / 1000, 3),
        "mandatory": sum(1 for s in p.selection.values() if s.kind == "mandatory"),
        "optional": sum(1 for b, s in p.selection.items() if s.kind == "optional" and b in served),
        "dropped": list(p.dropped),
        "routes": routes,
        "violations": list(p.violations),
        "ts": st.clock.now(),
    }


def summary(st: WasteState, now: float) -> dict[str, object]:
    """WasteSummary (docs/mqtt-api.md)."""
    st.roll_day()
    bins = st.bins.values()
    c = st.counters
    on_route = sum(
        1 for tt in st.trucks.values() if st.truck_online(tt, now) and not tt.broken and tt.status in ON_ROUTE
    )
    threshold = st.cfg.threshold
    return {
        "bins": len(st.bins),
        "reporting": sum(1 for bt in bins if bt.reading is not None and "stale" not in bt.alarms),
        "above_threshold": sum(
            1 for bt in bins if bt.reading is not None and (bt.reading.fill or 0.0) >= threshold
        ),
        "alarms": sum(len(bt.alarms) for bt in bins) + sum(tt.broken for tt in st.trucks.values()),
        "trucks": len(st.trucks),
        "trucks_on_route": on_route,
        "emptied_today": c.emptied,
        "overflows_today": c.overflows,
        "km_today": round(c.km, 2),
        "ts": now,
    }


def telemetry_values(payload: Mapping[str, object]) -> dict[str, Value]:
    """A payload as state-store values: scalars as they are, a list or dict as a JSON string."""
    out: dict[str, Value] = {}
    for k, v in payload.items():
        out[k] = orjson.dumps(v).decode() if isinstance(v, list | dict) else v  # type: ignore[assignment]
    return out


class North:
    """Publishes changed bins, trucks, the plan in force and the day's summary into the state
    store (C-north)."""

    def __init__(self, st: WasteState) -> None:
        self.st = st
        self._summary: dict[str, object] | None = None
        self._summary_at = -math.inf
        st.north.bins.update(st.bins)  # everything once at the start
        st.north.trucks.update(st.trucks)
        st.north.plan = True

    async def flush(self, now: float) -> None:
        """Publish what changed since the last flush (yielding to the loop by time)."""
        st = self.st
        bus = st.bus
        if bus is None:
            return
        bins, st.north.bins = st.north.bins, set()
        trucks, st.north.trucks = st.north.trucks, set()
        plan, st.north.plan = st.north.plan, False
        slice_ = TimeSlice()  # a forecast is ~0.4 ms the first time: 2,000 bins would hold the loop
        for b in sorted(bins):
            await slice_.tick()
            bus.publish(Telemetry(b, now, telemetry_values(bin_state(st, b, now)), derived=True))
        for t in sorted(trucks):
            bus.publish(Telemetry(t, now, telemetry_values(truck_state(st, t, now)), derived=True))
        # The plan in force with its stops' progress (the planner's PlanEvent is the stored record).
        if plan and (msg := plan_message(st, st.active)) is not None:
            bus.publish(Telemetry(PLANNER_ID, now, telemetry_values(msg), derived=True))
        s = summary(st, now)
        key = {k: v for k, v in s.items() if k != "ts"}
        if key != self._summary or st.clock.now() - self._summary_at >= 60 * st.clock.speed:
            self._summary, self._summary_at = key, st.clock.now()
            bus.publish(Telemetry(SUMMARY_ID, now, telemetry_values(s), derived=True))
