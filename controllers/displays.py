"""Displays controller: parking guidance, warnings and fail-safe content for guidance signs.

Each step it decides what every display should show, in this order:
1. the most severe active warning whose area covers the display (until the warning ends);
2. else guidance: the car park the guidance plan (optimizer/displays.py) sends the
   display's approach to, with its free spaces and an arrow;
3. else the defined fallback (a blank display) — a number older than its freshness limit
   is never shown as current.
Content changes are rate-limited per display (no flicker of numbers), except when the
kind of content changes (a warning starts or ends, data goes stale). Brightness follows
the time of day. `DisplaySafety` is the dispatcher's policy: content a display cannot show
is refused before anything is sent.

Occupancy comes in as state: a car park's own counter as `Telemetry(car_park, ts, {"free",
"open"})` on the bus, bay sensors (LoRaWAN) from the state store. What the controller derives
goes out the same way: each car park's state (the `ParkingState` fields) as derived
`Telemetry`, and the guidance plan and active warnings as `PlanEvent("guidance")` and
`PlanEvent("warnings")`, each when it changes.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from controllers.lighting import NightPlanSource, lights_on
from devices.profiles.displays import (
    DEFAULT_LEVELS,
    DisplayProfile,
    check_content,
    parse_content,
)
from edge.dispatcher import make_command
from edge.errors import DeviceReplyError
from edge.events import Command, Outcome, PlanEvent, Priority, Severity, Telemetry, Value
from edge.geo import haversine_m
from edge.kernel import Kernel
from edge.policy import DispatcherView, Verdict
from edge.settings import DisplaysSettings
from optimizer.displays import Approach, CarPark, GuidanceInstance, GuidancePlan, TravelCost, solve

CONTENT = "content"
BRIGHTNESS = "brightness"
SEVERITY_RANK = {"info": 1, "warning": 2, "severe": 3, "extreme": 4}


@dataclass(frozen=True, slots=True)
class CarParkSpec:
    """A car park the signs may guide to."""

    id: str
    name: str
    capacity: int
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class ApproachSpec:
    """A road into the area, its expected demand (cars per interval) and the signs on it."""

    id: str
    lat: float
    lon: float
    demand: int
    signs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Occupancy:
    """The latest report of a car park (from its own counter or from bay sensors)."""

    free: int
    open: bool
    ts: float


@dataclass(frozen=True, slots=True)
class Warning:
    """A warning from the city or a utility for a set of displays and a time window."""

    id: str
    displays: frozenset[str]
    severity: str
    lines: tuple[str, ...]
    start: float
    end: float
    source: str = "operator"  # "operator:<who>", "rule:<id>", "helppoint:<incident>"
    public: bool = True  # a public warning also goes out as CAP; a help point's notice does not
    area: tuple[float, float, float] | None = None  # (lat, lon, radius_m); None: the whole site


@dataclass(slots=True)
class _Shown:
    kind: str = ""  # "warning:<id>", "guidance", "blank"
    lines: tuple[str, ...] = ()
    arrow: str = "none"
    at: float = -math.inf
    expires: float | None = None  # a warning's end: its content holds the display until then


@dataclass(slots=True)
class DisplayStats:
    updates: int = 0
    held_back: int = 0  # changes not sent yet because of the rate limit
    stale_fallbacks: int = 0
    warnings_shown: int = 0


class DisplaySafety:
    """Content a display cannot show (too long, unknown arrow, expired) never reaches it."""

    def __init__(self, profiles: Mapping[str, DisplayProfile]) -> None:
        self._profiles = dict(profiles)

    def check(self, cmd: Command, now: float, view: DispatcherView) -> Verdict:
        """What a display can show is in its profile: the view is not needed."""
        profile = self._profiles.get(cmd.device_id)
        if profile is None:
            return Verdict(Outcome.REFUSED, cmd.value, "unknown_device")
        if cmd.point == BRIGHTNESS:
            if not 0 <= cmd.value <= 100:
                return Verdict(
                    Outcome.REFUSED, cmd.value, f"out_of_range: brightness {cmd.value:g} not in 0..100"
                )
            return Verdict(Outcome.ACCEPTED, cmd.value)
        if cmd.point != CONTENT or not cmd.payload:
            return Verdict(Outcome.REFUSED, cmd.value, f"point_not_writable: {cmd.point}")
        try:
            content = parse_content(cmd.payload)
            check_content(profile, content, now)
        except DeviceReplyError as exc:  # content the sign cannot show (a PointValueError)
            return Verdict(Outcome.REFUSED, cmd.value, f"content_refused: {exc}")
        if content.message_id != int(cmd.value):
            return Verdict(
                Outcome.REFUSED, cmd.value, "content_refused: message id does not match the command"
            )
        return Verdict(Outcome.ACCEPTED, cmd.value)


def minutes_between(
    lat1: float, lon1: float, lat2: float, lon2: float, kmh: float = 25.0, detour: float = 1.3
) -> float:
    """Travel minutes from straight-line distance times a detour factor at a town speed."""
    km = haversine_m(lat1, lon1, lat2, lon2) / 1000
    return km * detour / kmh * 60


def bay_id(dev_eui: str) -> str:
    """The device id of a parking bay sensor."""
    return f"bay-{dev_eui.lower()}"


class DisplayController:
    """Decides and submits display content every `step_s` (`run`); `step(now)` is one turn.

    Built as `DisplayController(kernel, cfg, lighting=..., profiles=..., silent=...)`:
    `lighting` says when the lights are on (night brightness), `profiles` give each display's
    brightness levels, `silent(display)` says whether its driver has not heard from it for too long.
    """

    name = "displays"

    def __init__(
        self,
        kernel: Kernel,
        cfg: DisplaysSettings,
        *,
        lighting: NightPlanSource,
        profiles: Mapping[str, DisplayProfile] | None = None,
        silent: Callable[[str], bool] | None = None,
        raise_lamps: Callable[[str, float, tuple[float, float, float] | None], int] | None = None,
        release_lamps: Callable[[str], int] | None = None,
    ) -> None:
        """`raise_lamps(warning, end, area)`: the lighting domain's way to raise lamps for a warning;
        `release_lamps(warning)` lets them go when it is withdrawn before its end."""
        self.car_parks = {c.id: CarParkSpec(c.id, c.name, c.capacity, c.lat, c.lon) for c in cfg.car_parks}
        self.approaches = [ApproachSpec(a.id, a.lat, a.lon, a.demand, tuple(a.signs)) for a in cfg.approaches]
        self.displays = [d.id for d in cfg.displays]
        self._sensors = {c.id: list(c.sensors) for c in cfg.car_parks if c.sensors}
        self._positions = {d.id: (d.lat, d.lon) for d in cfg.displays}
        self._clock = kernel.clock
        self._bus = kernel.bus
        self._state = kernel.state
        self._dispatcher = kernel.dispatcher
        self._alarms = kernel.alarms
        self.freshness_s = cfg.freshness_s
        self._min_update = cfg.min_update_s
        self._step_s = cfg.step_s
        self._lighting = lighting
        self._silent = silent
        self._raise_lamps = raise_lamps
        self._release_lamps = release_lamps
        self.occupancy: dict[str, Occupancy] = {}
        self.warnings: dict[str, Warning] = {}
        self._shown: dict[str, _Shown] = {d: _Shown() for d in self.displays}
        self._ids = itertools.count(int(kernel.clock.now()) % 1_000_000 * 1000 + 1)
        # Night and day brightness per display, from its profile (default: 40 and 100 %).
        self._levels = {d: p.levels for d, p in (profiles or {}).items()}
        self._brightness: dict[str, tuple[int, float]] = {}  # last level submitted, and when
        self.plan: GuidancePlan | None = None
        self.stats = DisplayStats()
        self._sub = kernel.bus.subscribe("displays", Telemetry)
        self._published: dict[str, object] = {}
        self._replan = asyncio.Event()

    def request_replan(self) -> None:
        """Decide again now instead of at the next step."""
        self._replan.set()

    def views(self) -> Mapping[str, Any]:
        """The guidance plan (None before the first step) and the active warnings."""
        return {"guidance": self.plan, "warnings": dict(self.warnings)}

    async def run(self) -> None:
        """Counters from the bus, bay sensors from the state store, then what every display shows."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch_counters(), name="displays.counters")
            while True:
                now = self._clock.now()
                self.count_bays()
                self.step(now)
                self.publish_state(now)
                # Until every display has answered once, look again each second: a display
                # that comes online gets its content then, not a whole step later.
                wait = self._step_s if not self._unseen() else min(self._step_s, 1.0)
                try:
                    async with asyncio.timeout(wait):
                        await self._replan.wait()
                except TimeoutError:
                    pass
                self._replan.clear()

    async def _watch_counters(self) -> None:
        """A car park's own counter: `{"free": n, "open": bool}` on the car park (C-in)."""
        async for ev in self._sub:
            if not isinstance(ev, Telemetry) or ev.derived or ev.device_id not in self.car_parks:
                continue
            free = ev.values.get("free")
            if isinstance(free, int | float) and not isinstance(free, bool):
                self.report(ev.device_id, int(free), ev.values.get("open", True) is not False, ev.ts)

    def count_bays(self) -> None:
        """Occupancy of car parks with bay sensors, from their state: a bay not heard from counts
        as taken. A car park whose sensors have all been silent keeps its last report."""
        for cp, sensors in self._sensors.items():
            seen = [dev for e in sensors if (dev := self._state.get(bay_id(e))) and "occupied" in dev.values]
            if not seen:
                continue
            unknown = len(sensors) - len(seen)
            taken = sum(1 for dev in seen if dev.values["occupied"]) + unknown
            self.report(cp, self.car_parks[cp].capacity - taken, True, min(dev.updated_at for dev in seen))

    def parking_state(self, car_park: str, now: float) -> dict[str, Value]:
        """A car park's state with the field names of `ParkingState` (free, open and ts only once
        it reported: a value that is not known is left out)."""
        cp = self.car_parks[car_park]
        occ = self.occupancy.get(car_park)
        values: dict[str, Value] = {"car_park": cp.id, "name": cp.name, "capacity": cp.capacity}
        values["fresh"] = occ is not None and now - occ.ts <= self.freshness_s
        if occ is not None:
            values |= {"free": occ.free, "open": occ.open, "ts": occ.ts}
        return values

    def warning_list(self) -> list[dict[str, object]]:
        """The active warnings as the API publishes them."""
        return [
            {"id": w.id, "severity": w.severity, "lines": list(w.lines), "displays": sorted(w.displays),
             "start": w.start, "end": w.end, "source": w.source, "public": w.public,
             "area": None if w.area is None else list(w.area)}
            for w in self.warnings.values()
        ]  # fmt: skip

    def publish_state(self, now: float) -> int:
        """Car-park states (derived `Telemetry`), the guidance plan and the warnings (`PlanEvent`),
        each where it changed since it was last published. Returns how many were published."""
        n = 0
        for cp in self.car_parks:
            values = self.parking_state(cp, now)
            if self._published.get(cp) != values:
                self._published[cp] = values
                self._bus.publish(Telemetry(cp, now, values, derived=True))
                n += 1
        plans: list[tuple[str, dict[str, object]]] = [("warnings", {"warnings": self.warning_list()})]
        if self.plan is not None:
            plans.insert(0, ("guidance", self.plan.model_dump(mode="json")))
        for domain, body in plans:
            if self._published.get(f"plan:{domain}") != body:
                self._published[f"plan:{domain}"] = body
                self._bus.publish(PlanEvent(domain, now, body))
                n += 1
        return n

    # ----- inputs --------------------------------------------------------------------------------

    def report(self, car_park: str, free: int, open_: bool, ts: float) -> None:
        """A car park's free spaces (counter or bay sensors), as of `ts`."""
        cp = self.car_parks.get(car_park)
        if cp is not None:
            self.occupancy[car_park] = Occupancy(max(0, min(cp.capacity, free)), open_, ts)

    def displays_within(self, lat: float, lon: float, radius_m: float) -> set[str]:
        """Displays whose position lies within `radius_m` of a point (a warning's area)."""
        return {
            d
            for d, (dlat, dlon) in self._positions.items()
            if minutes_between(lat, lon, dlat, dlon, kmh=60.0, detour=1.0) * 1000 <= radius_m
        }

    def warn(
        self, warning: Warning, *, raise_lamps: bool = False, area: tuple[float, float, float] | None = None
    ) -> int:
        """Show a warning; with `raise_lamps` the lamps in `area` (lat, lon, radius_m; None: every
        lamp) go to full for it, through the lighting domain. Returns how many lamps were raised."""
        self.warnings[warning.id] = warning
        self._replan.set()
        if not raise_lamps or self._raise_lamps is None:
            return 0
        return self._raise_lamps(warning.id, warning.end, area)

    def clear_warning(self, warning_id: str) -> bool:
        """Withdraw a warning: its displays go back to guidance, its lamps to their plan."""
        w = self.warnings.pop(warning_id, None)
        self._replan.set()
        if w is None:
            return False
        for d in w.displays:  # its content held the displays until its end: let go now
            self._dispatcher.release(
                d, CONTENT, Priority.SAFETY, "warning withdrawn", only=f"displays:warning:{w.id}"
            )
        if self._release_lamps is not None:
            self._release_lamps(warning_id)
        return True

    def operator_message(
        self, display: str, lines: tuple[str, ...], arrow: str, duration_s: float, source: str
    ) -> Command:
        """An operator's message as a command: it outranks guidance and warnings for its duration."""
        now = self._clock.now()
        message_id = next(self._ids) % 4_000_000_000 + 1
        body = {
            "message_id": message_id,
            "lines": list(lines),
            "arrow": arrow,
            "expires_at": now + duration_s,
        }
        return make_command(
            display, CONTENT, float(message_id), Priority.OPERATOR, source, now=now, ttl_s=60.0 * self._clock.speed,
            hold_s=duration_s, reason="operator message", payload=orjson.dumps(body).decode(),
        )  # fmt: skip

    # ----- deciding --------------------------------------------------------------------------------

    def guidance(self, now: float) -> GuidancePlan:
        """The guidance plan for the car parks' current (fresh) occupancy."""
        parks = []
        for cp in self.car_parks.values():
            occ = self.occupancy.get(cp.id)
            fresh = occ is not None and now - occ.ts <= self.freshness_s
            parks.append(
                CarPark(
                    id=cp.id,
                    name=cp.name,
                    capacity=cp.capacity,
                    free=occ.free if occ else 0,
                    open=occ.open if occ else False,
                    fresh=fresh,
                )
            )
        costs = [
            TravelCost(
                approach=a.id, car_park=cp.id, minutes=round(minutes_between(a.lat, a.lon, cp.lat, cp.lon), 1)
            )
            for a in self.approaches
            for cp in self.car_parks.values()
        ]
        inst = GuidanceInstance(
            car_parks=parks,
            approaches=[Approach(id=a.id, sign_ids=list(a.signs), demand=a.demand) for a in self.approaches],
            costs=costs,
        )
        return solve(inst)

    def desired(
        self, display: str, now: float, plan: GuidancePlan
    ) -> tuple[str, tuple[str, ...], str, float | None]:
        """(kind, lines, arrow, expires_at) the display should show now."""
        active = [w for w in self.warnings.values() if display in w.displays and w.start <= now < w.end]
        if active:
            w = max(active, key=lambda x: (SEVERITY_RANK.get(x.severity, 0), x.start))
            return f"warning:{w.id}", w.lines, "none", w.end
        rec = next((r for r in plan.recommendations if r.sign_id == display), None)
        if rec is None or rec.car_park is None or rec.free is None:
            return "blank", (), "none", None
        name = self.car_parks[rec.car_park].name
        return "guidance", (name[:16], f"frei {rec.free}"), "right", None

    def step(self, now: float) -> int:
        """Decide and submit what changed; returns how many displays were updated."""
        for w in [w for w in self.warnings.values() if w.end <= now]:
            del self.warnings[w.id]
        plan = self.guidance(now)
        self.plan = plan
        stale = [
            cp
            for cp in self.car_parks
            if (o := self.occupancy.get(cp)) is None or now - o.ts > self.freshness_s
        ]
        for cp in self.car_parks:
            self._alarms.set(cp, "occupancy_stale", cp in stale and cp in self.occupancy, Severity.MINOR)
        updated = 0
        unseen = self._unseen()
        for d in self.displays:
            if d in unseen:
                continue  # never answered yet: a write now could only fail; sent once it is online
            kind, lines, arrow, expires = self.desired(d, now, plan)
            shown = self._shown[d]
            if (kind, lines, arrow, expires) == (shown.kind, shown.lines, shown.arrow, shown.expires):
                continue
            same_kind = kind == shown.kind
            # a warning whose end moved is sent again at once: its hold ended at the old end
            moved = same_kind and (kind, lines, arrow) == (shown.kind, shown.lines, shown.arrow)
            if same_kind and not moved and now - shown.at < self._min_update:
                self.stats.held_back += 1
                continue  # numbers change; the sign waits for its minimum interval
            if kind == "blank" and shown.kind == "guidance":
                self.stats.stale_fallbacks += 1
            if kind.startswith("warning") and not same_kind:
                self.stats.warnings_shown += 1
            self._submit(d, kind, lines, arrow, expires, now)
            updated += 1
        self._brightness_step(now)
        self._health_step()
        return updated

    def _submit(
        self, display: str, kind: str, lines: tuple[str, ...], arrow: str, expires: float | None, now: float
    ) -> None:
        message_id = next(self._ids) % 4_000_000_000 + 1
        body = {"message_id": message_id, "lines": list(lines), "arrow": arrow, "expires_at": expires}
        warning = kind.startswith("warning")
        # A warning holds its display until it ends; then the latest guidance surfaces again.
        prio = Priority.SAFETY if warning else Priority.PLAN
        hold = max(1.0, expires - now) if warning and expires is not None else None
        cmd = make_command(
            display, CONTENT, float(message_id), prio, f"displays:{kind}", now=now, ttl_s=120.0 * self._clock.speed,
            hold_s=hold, reason=kind, payload=orjson.dumps(body).decode(),
        )  # fmt: skip
        verdict = self._dispatcher.submit(cmd)
        if verdict.outcome is not Outcome.REFUSED:
            self._shown[display] = _Shown(kind, lines, arrow, now, expires)
            self.stats.updates += 1

    def _brightness_step(self, now: float) -> None:
        """The profile's night level while the lights are on, its day level otherwise.

        A level is sent again when the display reports another one a while after the last
        try (the command expired, the display restarted or was set by hand): a submit is not
        a delivery. The TTL is in clock seconds, like content's, so a fast clock does not
        expire the command before the dispatcher sends it.
        """
        dark = lights_on(self._lighting, now)
        retry_s = max(self._min_update, 60.0)
        unseen = self._unseen()
        for d in self.displays:
            if d in unseen:
                continue
            levels = self._levels.get(d, DEFAULT_LEVELS)
            level = levels.night if dark else levels.day
            last = self._brightness.get(d)
            if last is not None and last[0] == level:
                reported = self._state.value(d, BRIGHTNESS)
                if not isinstance(reported, int | float) or reported == level or now - last[1] < retry_s:
                    continue
            cmd = make_command(
                d, BRIGHTNESS, level, Priority.PLAN, "displays:brightness", now=now,
                ttl_s=120.0 * self._clock.speed,
            )  # fmt: skip
            if self._dispatcher.submit(cmd).outcome is not Outcome.REFUSED:
                self._brightness[d] = (level, now)

    def _unseen(self) -> set[str]:
        """Displays the driver has never reached (no online state yet)."""
        return {d for d in self.displays if (dev := self._state.get(d)) is None or dev.online is None}

    def _health_step(self) -> None:
        if self._silent is None:
            return
        for d in self.displays:
            silent = self._silent(d)
            faults = self._state.value(d, "pixel_faults")
            pixel_faults = int(faults) if isinstance(faults, int | float) else 0
            self._alarms.set(
                d, "display_offline", silent, Severity.MAJOR, "no answer for max(2 min, 10 polls)"
            )
            self._alarms.set(d, "pixel_faults", pixel_faults > 0, Severity.MINOR, f"{pixel_faults} pixels")
