"""The rule engine for storm, flood and air warnings: sensor readings in, warning transitions out.

Rules are data (`edge.settings_environment`); this module only interprets them. It is pure and
deterministic: no I/O, no clock, every call is given the time, so the same readings and
evaluation times always give the same warnings (and tests replay them exactly).

The safety promises it keeps:

- A sensor is *usable* for a metric when its newest reading is fresh (`now - ts <= stale_after_s`),
  carries the metric as a finite number, and is plausible: its step from the sensor's previous
  value of that metric is within `max_step`. A jump is taken as real only once the next reading
  confirms it (a small step from the new level). Stale or implausible sensors never fire or clear
  a rule: they are left out, as if the group had fewer sensors.
- A rule fires when at least `agree` usable sensors are at or over `on` (rate_of_rise: their rise
  over `window_s`), the local time is inside `hours` (if set), and `min_hold_s` has passed since
  it last cleared.
- A firing rule clears only when at least one sensor is usable, every usable sensor is at or
  under `off`, and it has fired for at least `min_hold_s`. So it never flaps faster than the
  hysteresis allows, and a warning is not lifted because its gauges fell silent.
- With no usable sensor a firing rule keeps firing, but its expected end (`end_of`) is no longer
  pushed on: the controller lets the warning expire then. While any usable sensor is over `off`,
  the expected end is the evaluation time plus `duration_s`.
- Readings not newer than a sensor's newest are ignored (late or duplicate uplinks, e.g. one
  uplink delivered by two network servers).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from zoneinfo import ZoneInfo

from edge.settings_environment import EnvironmentSettings, RuleSettings, SensorSettings

__all__ = ["MAX_HISTORY", "RuleEngine", "SensorStatus", "Transition", "metric_value"]

MAX_HISTORY = 2048  # readings kept per sensor and metric, whatever the window (a chatty sensor)


def _number(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def metric_value(sensor: SensorSettings, values: Mapping[str, object], metric: str) -> float | None:
    """The metric from a decoded reading, or None if it has none usable.

    A finite number under the metric's name; for `level_cm` without one, the level derived from
    `distance_mm` and the sensor's `zero_mm`. Booleans and non-finite numbers are no values.
    """
    v = _number(values.get(metric))
    if v is None and metric == "level_cm" and sensor.zero_mm is not None:
        d = _number(values.get("distance_mm"))
        if d is not None:
            level = (sensor.zero_mm - d) / 10.0
            return level if math.isfinite(level) else None
    return v


@dataclass(frozen=True, slots=True)
class SensorStatus:
    """What the engine knows of a sensor now (for the API and the operators' map)."""

    sensor_id: str
    last_ts: float | None
    fresh: bool
    implausible: str | None  # why the newest reading is not trusted, None if it is
    values: Mapping[str, float]  # the newest reading's numbers (level_cm derived)


@dataclass(frozen=True, slots=True)
class Transition:
    """A rule fired or cleared at `at`; `sensors` are the ones that decided it."""

    rule_id: str
    fired: bool
    at: float
    value: float  # fired: the highest value at/over `on`; cleared: the highest usable value
    sensors: tuple[str, ...]
    reason: str


class _Track:
    """One sensor's newest reading and, per metric its rules read, a short time-ordered history.

    History entries are (ts, value, plausible); entries older than the longest rate window of
    the metric are dropped, except the newest (the next step is measured from it).
    """

    __slots__ = ("history", "horizon", "jumps", "last_ts", "metrics", "sensor", "stale_after_s", "values")

    def __init__(
        self, sensor: SensorSettings, stale_after_s: float, metrics: set[str], horizon: dict[str, float]
    ) -> None:
        self.sensor = sensor
        self.stale_after_s = stale_after_s
        self.metrics = frozenset(metrics | set(sensor.max_step))
        self.horizon = horizon
        self.last_ts: float | None = None
        self.values: Mapping[str, float] = MappingProxyType({})
        self.history: dict[str, deque[tuple[float, float, bool]]] = {}
        self.jumps: dict[str, str] = {}

    def add(self, ts: float, values: Mapping[str, object]) -> None:
        if self.last_ts is not None and ts <= self.last_ts:
            return
        self.last_ts = ts
        numbers = {k: f for k, v in values.items() if (f := _number(v)) is not None}
        level = metric_value(self.sensor, values, "level_cm")
        if level is not None:
            numbers["level_cm"] = level
        self.values = MappingProxyType(numbers)
        self.jumps = {}
        for m in sorted(self.metrics):
            v = numbers.get(m)
            if v is None:
                continue
            h = self.history.setdefault(m, deque(maxlen=MAX_HISTORY))
            limit = self.sensor.max_step.get(m)
            ok = not h or limit is None or abs(v - h[-1][1]) <= limit
            if not ok:
                self.jumps[m] = f"{m} jumped {v - h[-1][1]:+g} (max_step {limit:g})"
            h.append((ts, v, ok))
            cutoff = ts - self.horizon.get(m, 0.0)
            while len(h) > 1 and h[0][0] < cutoff:
                h.popleft()

    def fresh(self, now: float) -> bool:
        return self.last_ts is not None and now - self.last_ts <= self.stale_after_s

    def _usable(self, metric: str, now: float) -> deque[tuple[float, float, bool]] | None:
        h = self.history.get(metric)
        if not self.fresh(now) or not h or h[-1][0] != self.last_ts or not h[-1][2]:
            return None
        return h

    def level(self, metric: str, now: float) -> float | None:
        """The newest value of `metric` if the sensor is usable for it now."""
        h = self._usable(metric, now)
        return None if h is None else h[-1][1]

    def rise(self, metric: str, window_s: float, now: float) -> float | None:
        """Newest value minus the lowest plausible one within `window_s` before it.

        None unless the sensor is usable and the plausible readings in the window span at least
        half of it: two readings a minute apart say nothing about a quarter of an hour.
        """
        h = self._usable(metric, now)
        if h is None:
            return None
        newest_ts, newest, _ = h[-1]
        inside = [(t, v) for t, v, ok in h if ok and t >= newest_ts - window_s]
        if newest_ts - inside[0][0] < window_s / 2:
            return None
        return newest - min(v for _, v in inside)


@dataclass(slots=True)
class _RuleState:
    since: float | None = None  # firing since; None while clear
    seen: float = 0.0  # last evaluation with a usable sensor over `off` while firing
    cleared: float | None = None  # when it last cleared


class RuleEngine:
    """Evaluates a site's warning rules on its sensors' readings (see the module docstring)."""

    def __init__(self, cfg: EnvironmentSettings, tz: ZoneInfo) -> None:
        self._tz = tz
        self._rules = {r.id: r for r in cfg.rules}
        metrics: dict[str, set[str]] = {}
        horizon: dict[str, dict[str, float]] = {}
        for r in cfg.rules:
            metrics.setdefault(r.group, set()).add(r.metric)
            if r.kind == "rate_of_rise":
                h = horizon.setdefault(r.group, {})
                h[r.metric] = max(h.get(r.metric, 0.0), r.window_s)
        self._tracks = {
            s.id: _Track(
                s,
                s.stale_after_s if s.stale_after_s is not None else cfg.stale_after_s,
                metrics.get(s.group, set()),
                horizon.get(s.group, {}),
            )
            for s in cfg.sensors
        }
        self._groups: dict[str, list[_Track]] = {}
        for t in self._tracks.values():
            self._groups.setdefault(t.sensor.group, []).append(t)
        self._state = {r.id: _RuleState() for r in cfg.rules}

    def reading(self, sensor_id: str, ts: float, values: Mapping[str, object]) -> None:
        """Record a decoded reading; unknown sensors, non-finite and out-of-order times are ignored."""
        track = self._tracks.get(sensor_id)
        if track is not None and math.isfinite(ts):
            track.add(ts, values)

    def evaluate(self, now: float) -> list[Transition]:
        """The rules that fire or clear at `now`, in configuration order."""
        out = []
        for rule in self._rules.values():
            t = self._step(rule, self._state[rule.id], now)
            if t is not None:
                out.append(t)
        return out

    def sensors(self, now: float) -> dict[str, SensorStatus]:
        """Every configured sensor's freshness, plausibility and newest values at `now`."""
        return {
            sid: SensorStatus(sid, t.last_ts, t.fresh(now), "; ".join(t.jumps.values()) or None, t.values)
            for sid, t in self._tracks.items()
        }

    def firing(self) -> dict[str, float]:
        """Rule id -> since when it fires, for every firing rule."""
        return {rid: st.since for rid, st in self._state.items() if st.since is not None}

    def end_of(self, rule_id: str) -> float | None:
        """The expected end of a firing rule (last seen over `off` + duration_s), None if not firing."""
        st = self._state.get(rule_id)
        if st is None or st.since is None:
            return None
        return st.seen + self._rules[rule_id].duration_s

    def _measures(self, rule: RuleSettings, now: float) -> dict[str, float]:
        """Sensor id -> the rule's measure (value or rise), for the group's usable sensors only."""
        out: dict[str, float] = {}
        for t in self._groups.get(rule.group, ()):
            if rule.kind == "threshold":
                v = t.level(rule.metric, now)
            else:
                v = t.rise(rule.metric, rule.window_s, now)
            if v is not None:
                out[t.sensor.id] = v
        return out

    def _in_hours(self, rule: RuleSettings, now: float) -> bool:
        if rule.hours is None:
            return True
        start, end = rule.hours
        local = datetime.fromtimestamp(now, self._tz).time()
        return start <= local < end if start < end else (local >= start or local < end)

    def _step(self, rule: RuleSettings, st: _RuleState, now: float) -> Transition | None:
        what = rule.metric if rule.kind == "threshold" else f"rise of {rule.metric} in {rule.window_s:g} s"
        measures = self._measures(rule, now)
        if st.since is None:
            over = {s: v for s, v in measures.items() if v >= rule.on}
            if len(over) < rule.agree or not self._in_hours(rule, now):
                return None
            if st.cleared is not None and now - st.cleared < rule.min_hold_s:
                return None
            st.since = st.seen = now
            reason = f"{len(over)} of {len(measures)} usable sensors: {what} at or over {rule.on:g}"
            return Transition(rule.id, True, now, max(over.values()), tuple(sorted(over)), reason)
        if any(v > rule.off for v in measures.values()):
            st.seen = now
            return None
        if not measures or now - st.since < rule.min_hold_s:
            return None
        st.since, st.cleared = None, now
        reason = f"all {len(measures)} usable sensors: {what} at or under {rule.off:g}"
        return Transition(rule.id, False, now, max(measures.values()), tuple(sorted(measures)), reason)
