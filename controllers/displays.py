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
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import orjson

from devices.profiles.displays import (
    DEFAULT_LEVELS,
    BrightnessLevels,
    DisplayProfile,
    check_content,
    parse_content,
)
from devices.protocols.registers import PointValueError
from edge.alarms import Alarms
from edge.clock import Clock
from edge.dispatcher import Dispatcher, Verdict, make_command
from edge.events import Command, Outcome, Priority, Severity
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


@dataclass(slots=True)
class _Shown:
    kind: str = ""  # "warning:<id>", "guidance", "blank"
    lines: tuple[str, ...] = ()
    arrow: str = "none"
    at: float = -math.inf


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

    def check(self, cmd: Command, now: float) -> Verdict:
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
        except PointValueError as exc:
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
    r = 6371.0
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    km = 2 * r * math.asin(math.sqrt(a))
    return km * detour / kmh * 60


class DisplayController:
    """Decides and submits display content; call `step(now)` periodically (see `run`)."""

    def __init__(
        self,
        *,
        car_parks: Sequence[CarParkSpec],
        approaches: Sequence[ApproachSpec],
        displays: Sequence[str],
        clock: Clock,
        positions: Mapping[str, tuple[float, float]] | None = None,
        dispatcher: Dispatcher,
        alarms: Alarms,
        freshness_s: float = 600.0,
        min_update_s: float = 60.0,
        is_dark: Callable[[float], bool] = lambda _t: False,
        health: Callable[[str], tuple[bool, int]] | None = None,
        levels: Mapping[str, BrightnessLevels] | None = None,
        brightness_of: Callable[[str], object] | None = None,
    ) -> None:
        self.car_parks = {c.id: c for c in car_parks}
        self.approaches = list(approaches)
        self.displays = list(displays)
        self._positions = dict(positions or {})
        self._clock = clock
        self._dispatcher = dispatcher
        self._alarms = alarms
        self.freshness_s = freshness_s
        self._min_update = min_update_s
        self._is_dark = is_dark
        self._health = health
        self.occupancy: dict[str, Occupancy] = {}
        self.warnings: dict[str, Warning] = {}
        self._shown: dict[str, _Shown] = {d: _Shown() for d in displays}
        self._ids = itertools.count(int(clock.now()) % 1_000_000 * 1000 + 1)
        # Night and day brightness per display, from its profile (default: 40 and 100 %).
        self._levels = dict(levels or {})
        self._brightness_of = brightness_of
        self._brightness: dict[str, tuple[int, float]] = {}  # last level submitted, and when
        self.plan: GuidancePlan | None = None
        self.stats = DisplayStats()

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

    def warn(self, warning: Warning) -> None:
        self.warnings[warning.id] = warning

    def clear_warning(self, warning_id: str) -> bool:
        return self.warnings.pop(warning_id, None) is not None

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
        for d in self.displays:
            kind, lines, arrow, expires = self.desired(d, now, plan)
            shown = self._shown[d]
            if (kind, lines, arrow) == (shown.kind, shown.lines, shown.arrow):
                continue
            same_kind = kind == shown.kind
            if same_kind and now - shown.at < self._min_update:
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
            self._shown[display] = _Shown(kind, lines, arrow, now)
            self.stats.updates += 1

    def _brightness_step(self, now: float) -> None:
        """The profile's night level while the lights are on, its day level otherwise.

        A level is sent again when the display reports another one a while after the last
        try (the command expired, the display restarted or was set by hand): a submit is not
        a delivery. The TTL is in clock seconds, like content's, so a fast clock does not
        expire the command before the dispatcher sends it.
        """
        dark = self._is_dark(now)
        retry_s = max(self._min_update, 60.0)
        for d in self.displays:
            levels = self._levels.get(d, DEFAULT_LEVELS)
            level = levels.night if dark else levels.day
            last = self._brightness.get(d)
            if last is not None and last[0] == level:
                reported = self._brightness_of(d) if self._brightness_of is not None else None
                if not isinstance(reported, int | float) or reported == level or now - last[1] < retry_s:
                    continue
            cmd = make_command(
                d, BRIGHTNESS, level, Priority.PLAN, "displays:brightness", now=now,
                ttl_s=120.0 * self._clock.speed,
            )  # fmt: skip
            if self._dispatcher.submit(cmd).outcome is not Outcome.REFUSED:
                self._brightness[d] = (level, now)

    def _health_step(self) -> None:
        if self._health is None:
            return
        for d in self.displays:
            silent, pixel_faults = self._health(d)
            self._alarms.set(
                d, "display_offline", silent, Severity.MAJOR, "no answer for max(2 min, 10 polls)"
            )
            self._alarms.set(d, "pixel_faults", pixel_faults > 0, Severity.MINOR, f"{pixel_faults} pixels")
