"""A collection truck's state machine: the trucks of `simulators.waste`.

`TruckSim` follows a route of stops at the speed of the roads it drives (straight line x
detour; half a leg at the speed of the road it leaves, half at the road it arrives on),
empties bins into the `FillModel`, unloads at the disposal site and returns to the depot.
It speaks no MQTT: `step(now)` returns the events that happened, and the wire format of
routes, states and events is `simulators.waste_wire`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from devices.profiles.waste import Route, RouteStop
from edge.geo import haversine_m
from edge.settings import PlaceSettings, TruckSettings, WasteSettings
from simulators.waste_bins import FillModel
from simulators.waste_wire import state_fields

TRUCK_FAULTS = ("breakdown", "repair")


def leg(
    a: tuple[float, float], b: tuple[float, float], road_a: str, road_b: str, settings: WasteSettings
) -> tuple[float, float]:
    """(road metres, seconds) from `a` to `b`: straight line x detour, half at each end's road speed."""
    d = haversine_m(a[0], a[1], b[0], b[1]) * settings.detour
    speeds = settings.speeds_kmh
    slowest = min(speeds.values(), default=20.0)
    va = speeds.get(road_a, slowest) / 3.6  # type: ignore[call-overload]
    vb = speeds.get(road_b, slowest) / 3.6  # type: ignore[call-overload]
    return d, d * (0.5 / va + 0.5 / vb)


class Status(enum.StrEnum):
    IDLE = "idle"
    DRIVING = "driving"
    COLLECTING = "collecting"
    UNLOADING = "unloading"
    RETURNING = "returning"
    BROKEN = "broken"


class _Phase(enum.Enum):
    IDLE = "idle"
    DRIVING = "driving"
    WAITING = "waiting"  # at a bin before its zone's window opens
    SERVING = "serving"
    BROKEN = "broken"


@dataclass(frozen=True, slots=True)
class TruckView:
    """A truck as tests and the demo see it."""

    id: str
    lat: float
    lon: float
    status: Status
    route_id: str | None
    stop_index: int
    load_l: float
    load_kg: float
    odometer_km: float
    km_total: float
    emptied: int


class TruckSim:
    """One truck following its route; `step(now)` moves it on, returning the events that happened.

    Events are (type, fields) pairs stamped with their own simulated time; the caller adds
    `seq` and publishes them. A route's bins are emptied in `model`.
    """

    def __init__(self, spec: TruckSettings, settings: WasteSettings, model: FillModel, now: float) -> None:
        if settings.depot is None or settings.disposal is None:
            raise ValueError("waste settings need a depot and a disposal site for trucks")
        self.spec = spec
        self._settings = settings
        self._depot: PlaceSettings = settings.depot
        self._disposal: PlaceSettings = settings.disposal
        self._model = model
        self._bins = model.bins
        self.lat, self.lon = self._depot.lat, self._depot.lon
        self.road = "main"
        self.status = Status.IDLE
        self.route_id: str | None = None
        self.stops: list[RouteStop] = []
        self.stop_index = 0
        self.load_l = 0.0
        self.load_kg = 0.0
        self.odometer_km = 0.0
        self.km_total = 0.0
        self.emptied = 0
        self.speed_kmh = 0.0
        self._odo_day = -1
        self._phase = _Phase.IDLE
        self._t = now
        self._leg_from = (self.lat, self.lon)
        self._leg_to = (self.lat, self.lon)
        self._leg_to_road = "main"
        self._leg_km = 0.0
        self._leg_s = 0.0
        self._leg_done_s = 0.0
        self._leg_km_done = 0.0
        self._target: RouteStop | None = None  # None while driving: the implicit way home
        self._busy_until = now
        self.changed = True  # status or stop index changed since the last state message

    def view(self) -> TruckView:
        return TruckView(self.spec.id, self.lat, self.lon, self.status, self.route_id, self.stop_index,
                         self.load_l, self.load_kg, self.odometer_km, self.km_total, self.emptied)  # fmt: skip

    def state(self, ts: float) -> dict[str, Any]:
        """The `fleet/{truck}/state` payload."""
        return state_fields(self, ts)

    def _set(self, status: Status) -> None:
        if status is not self.status:
            self.status = status
            self.changed = True

    # -- commands ----------------------------------------------------------------

    def take_route(self, route: Route, now: float) -> list[tuple[str, dict[str, Any]]]:
        """A new route replaces the old one; the truck goes on from where it is."""
        events = self.step(now)
        if self._phase is _Phase.BROKEN:
            return [
                *events,
                ("route_rejected", {"ts": now, "route_id": route.route_id, "reason": "broken_down"}),
            ]
        if route.route_id == self.route_id and route.stops == self.stops:
            return events  # the retained copy again after a reconnect: nothing new
        day = datetime.fromtimestamp(now, self._model.tz).toordinal()
        if day != self._odo_day and self.status is Status.IDLE:
            self._odo_day, self.odometer_km = day, 0.0  # a new shift
        self.route_id, self.stops, self.stop_index = route.route_id, list(route.stops), 0
        self.changed = True
        events.append(("route_accepted", {"ts": now, "route_id": route.route_id}))
        if self._phase is _Phase.IDLE and route.start_ts is not None and route.start_ts > now:
            # Before the shift: stand still until start_ts (served as a pause with no target).
            self._target, self._phase, self._busy_until = None, _Phase.SERVING, route.start_ts
            self._t = min(self._t, now)
        elif self._phase in (_Phase.IDLE, _Phase.DRIVING, _Phase.WAITING):
            events += self._next_leg(now)
        # serving: finish the lift or unload first, then follow the new stops
        return events

    def breakdown(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        events = self.step(now)
        if self._phase is _Phase.BROKEN:
            return events
        self._phase = _Phase.BROKEN
        self.speed_kmh = 0.0
        self._set(Status.BROKEN)
        events.append(("breakdown", {"ts": now, "route_id": self.route_id, "lat": self.lat, "lon": self.lon}))
        self.stops = self.stops[: self.stop_index]  # it cannot go on: the rest is for a re-plan
        return events

    def repair(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        events = self.step(now)
        if self._phase is _Phase.BROKEN:
            self._phase = _Phase.IDLE
            self._set(Status.IDLE)
        return events

    # -- moving ------------------------------------------------------------------

    def step(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        """Move on to `now`: drive, wait for a window, lift bins, unload; bounded per call."""
        events: list[tuple[str, dict[str, Any]]] = []
        t = self._t
        for _ in range(10_000):
            if t >= now or self._phase in (_Phase.IDLE, _Phase.BROKEN):
                break
            if self._phase is _Phase.DRIVING:
                dt = min(now - t, self._leg_s - self._leg_done_s)
                self._leg_done_s += dt
                t += dt
                frac = 1.0 if self._leg_s <= 0 else min(1.0, self._leg_done_s / self._leg_s)
                km = self._leg_km * frac
                before = self._leg_km_done
                self._leg_km_done = km
                self.odometer_km += km - before
                self.km_total += km - before
                a, b = self._leg_from, self._leg_to
                self.lat, self.lon = a[0] + (b[0] - a[0]) * frac, a[1] + (b[1] - a[1]) * frac
                if frac >= 1.0:
                    events += self._arrive(t)
            else:  # waiting or serving: busy until a time
                t = min(now, self._busy_until)
                if t >= self._busy_until:
                    events += self._finish(t)
        self._t = max(self._t, now)
        return events

    def _start_leg(self, to: tuple[float, float], road: str, now: float) -> None:
        metres, seconds = leg((self.lat, self.lon), to, self.road, road, self._settings)
        self._leg_from, self._leg_to, self._leg_to_road = (self.lat, self.lon), to, road
        self._leg_km, self._leg_s, self._leg_done_s, self._leg_km_done = metres / 1000, seconds, 0.0, 0.0
        self.speed_kmh = 0.0 if seconds <= 0 else metres / seconds * 3.6
        self._phase = _Phase.DRIVING
        self._t = min(self._t, now)

    def _next_leg(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        if self.stop_index < len(self.stops):
            stop = self.stops[self.stop_index]
            self._target = stop
            road = self._bins[stop.id].road_class if stop.kind == "bin" and stop.id in self._bins else "main"
            self._start_leg((stop.lat, stop.lon), road, now)
            self._set(Status.RETURNING if stop.kind == "depot" else Status.DRIVING)
            return []
        # out of stops without a depot stop: home by itself
        self._target = None
        depot = (self._depot.lat, self._depot.lon)
        if haversine_m(self.lat, self.lon, *depot) < 1.0:
            return self._done(now)
        self._start_leg(depot, "main", now)
        self._set(Status.RETURNING)
        return []

    def _done(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        self._phase = _Phase.IDLE
        self.speed_kmh = 0.0
        self._set(Status.IDLE)
        return [("route_done", {"ts": now, "route_id": self.route_id})]

    def _arrive(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        self.road = self._leg_to_road
        self.speed_kmh = 0.0
        stop = self._target
        if stop is None:
            return self._done(now)
        if stop.kind == "depot":
            self.stop_index += 1
            self.changed = True
            return self._done(now) if self.stop_index >= len(self.stops) else self._next_leg(now)
        if stop.kind == "disposal":
            self._phase = _Phase.SERVING
            self._busy_until = now + self._disposal.service_s
            self._set(Status.UNLOADING)
            return []
        if stop.id not in self._bins:
            return self._skip(stop, "not_found", now)
        self._set(Status.COLLECTING)
        if stop.window is not None and now < stop.window[0]:
            self._phase = _Phase.WAITING
            self._busy_until = stop.window[0]
            return []
        self._phase = _Phase.SERVING
        self._busy_until = now + self._settings.service_s
        return []

    def _skip(self, stop: RouteStop, reason: str, now: float) -> list[tuple[str, dict[str, Any]]]:
        events = [("skipped", {"ts": now, "route_id": self.route_id, "bin": stop.id, "reason": reason})]
        self.stop_index += 1
        self.changed = True
        return events + self._next_leg(now)

    def _finish(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        stop = self._target
        if self._phase is _Phase.WAITING:
            self._phase = _Phase.SERVING
            self._busy_until = now + self._settings.service_s
            return []
        if stop is None:  # a route replaced while serving, nothing targeted
            return self._next_leg(now)
        events: list[tuple[str, dict[str, Any]]] = []
        if stop.kind == "disposal":
            events.append(("unloaded", {"ts": now, "route_id": self.route_id,
                                        "load_l": round(self.load_l, 1), "load_kg": round(self.load_kg, 1)}))  # fmt: skip
            self.load_l = self.load_kg = 0.0
        else:
            b = self._bins[stop.id]
            litres = self._model.litres(b.id)
            if (
                self.load_l + litres > self.spec.volume_l
                or self.load_kg + litres * b.density_kg_l > self.spec.weight_kg
            ):
                return self._skip_current(stop, "truck_full", now)
            taken_l, taken_kg = self._model.empty(b.id, now)
            self.load_l += taken_l
            self.load_kg += taken_kg
            self.emptied += 1
            events.append(("emptied", {"ts": now, "route_id": self.route_id, "bin": b.id, "lat": b.lat, "lon": b.lon,
                                       "load_l": round(self.load_l, 1), "load_kg": round(self.load_kg, 1)}))  # fmt: skip
        if self._stop_current(stop):
            self.stop_index += 1
            self.changed = True
        return events + self._next_leg(now)

    def _stop_current(self, stop: RouteStop) -> bool:
        """Whether `stop` is still the route's next stop (a new route may have come meanwhile)."""
        return self.stop_index < len(self.stops) and self.stops[self.stop_index] is stop

    def _skip_current(self, stop: RouteStop, reason: str, now: float) -> list[tuple[str, dict[str, Any]]]:
        if self._stop_current(stop):
            return self._skip(stop, reason, now)
        return [("skipped", {"ts": now, "route_id": self.route_id, "bin": stop.id, "reason": reason})]
