"""The warning rule engine: hysteresis, rate of rise, agreement, hours, stale and implausible sensors.

The property tests replay random reading sequences against an independent recomputation of
which sensors were usable and what they measured at each evaluation, and check that the engine
fires and clears exactly when its promises say, never faster than the time hysteresis allows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from controllers.environment_rules import RuleEngine, metric_value
from edge.settings_environment import EnvironmentSettings, RuleSettings, SensorSettings

TZ = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=TZ).timestamp()


def sensor(i: int, group: str = "river", **kw: Any) -> dict[str, Any]:
    return {
        "id": f"s{i}",
        "dev_eui": f"{i:016x}",
        "profile": "water_level_ultrasonic",
        "group": group,
        "lat": 51.5 + i / 1000,
        "lon": 7.45,
        **kw,
    }


def rule(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "flood",
        "group": "river",
        "metric": "level_cm",
        "kind": "threshold",
        "on": 100.0,
        "off": 80.0,
        "min_hold_s": 0.0,
        "severity": "warning",
        "lines": ["FLOOD", "AVOID RIVERSIDE"],
    }
    return base | kw


def env(sensors: list[dict[str, Any]], rules: list[dict[str, Any]], **kw: Any) -> EnvironmentSettings:
    return EnvironmentSettings.model_validate({"sensors": sensors, "rules": rules, **kw})


def fired(transitions: list[Any]) -> list[tuple[str, bool]]:
    return [(t.rule_id, t.fired) for t in transitions]


# --- settings --------------------------------------------------------------------------------


def test_hours_parse_into_times_and_may_wrap_midnight() -> None:
    """An "HH:MM-HH:MM" window becomes two times; one across midnight is allowed."""
    r = RuleSettings.model_validate(rule(hours="22:30-06:00"))
    assert r.hours is not None
    assert (r.hours[0].hour, r.hours[0].minute, r.hours[1].hour) == (22, 30, 6)


@pytest.mark.parametrize(
    ("sensors", "rules", "match"),
    [
        ([sensor(1)], [rule(on=80.0, off=80.0)], r"off \(80.0\) must be below on"),
        ([sensor(1)], [rule(hours="25:00-06:00")], r"hours: '25:00' is not HH:MM"),
        ([sensor(1)], [rule(hours="06:00-06:00")], r"hours: .* is empty"),
        ([sensor(1)], [rule(lines=["x" * 41])], r"lines\.0"),
        ([sensor(1)], [rule(lines=[])], r"lines"),
        ([sensor(1)], [rule(agree=0)], r"agree"),
        ([sensor(1)], [rule(kind="median")], r"kind"),
        ([sensor(1), sensor(1)], [], r"duplicate sensor id: s1"),
        ([sensor(1), sensor(2, dev_eui="0000000000000001".upper())], [], r"duplicate sensor dev_eui"),
        ([sensor(1), sensor(2, dev_eui="00000000000000ab"), sensor(3, dev_eui="00000000000000AB")], [], "ab"),
        ([sensor(1)], [rule(agree=2)], r"rule 'flood': group 'river' has 1 sensor\(s\), fewer than agree=2"),
        ([sensor(1)], [rule(group="coast")], r"group 'coast' has 0 sensor"),
        ([sensor(1)], [rule(), rule()], r"duplicate rule id: flood"),
        ([sensor(1, dev_eui="xyz")], [], r"dev_eui"),
        ([sensor(1, max_step={"level_cm": 0})], [], r"max_step\.level_cm"),
        ([sensor(1)], [rule(on=math.inf)], r"rules\.0\.on"),
    ],
)
def test_settings_errors_name_what_is_wrong(
    sensors: list[dict[str, Any]], rules: list[dict[str, Any]], match: str
) -> None:
    """A bad environment table is refused with the field or the offending ids in the message."""
    with pytest.raises(ValidationError, match=match):
        env(sensors, rules)


def test_metric_value_derives_level_and_refuses_non_numbers() -> None:
    """level_cm comes from distance_mm and zero_mm; booleans, NaN and infinities are no values."""
    s = SensorSettings.model_validate(sensor(1, zero_mm=3000.0))
    assert metric_value(s, {"distance_mm": 2000}, "level_cm") == 100.0
    assert metric_value(s, {"level_cm": 42, "distance_mm": 2000}, "level_cm") == 42.0
    assert metric_value(s, {"rain_mm_h": True}, "rain_mm_h") is None
    assert metric_value(s, {"rain_mm_h": math.nan}, "rain_mm_h") is None
    assert metric_value(s, {"distance_mm": math.inf}, "level_cm") is None
    assert metric_value(s, {"rain_mm_h": "3"}, "rain_mm_h") is None
    bare = SensorSettings.model_validate(sensor(2))
    assert metric_value(bare, {"distance_mm": 2000}, "level_cm") is None


# --- examples --------------------------------------------------------------------------------


def test_threshold_fires_at_on_and_clears_only_at_off() -> None:
    """Between off and on a firing warning stays; it clears at off, it fires at on (hysteresis band)."""
    eng = RuleEngine(env([sensor(1, zero_mm=3000.0)], [rule()]), TZ)
    steps = [(2100, []), (2000, [("flood", True)]), (2150, []), (2190, []), (2200, [("flood", False)])]
    for k, (distance_mm, expected) in enumerate(steps):
        now = T0 + 60 * k
        eng.reading("s1", now, {"distance_mm": distance_mm})
        assert fired(eng.evaluate(now)) == expected, k
    assert eng.firing() == {}


def test_min_hold_keeps_a_warning_and_delays_the_next() -> None:
    """A fired rule stays min_hold_s even when the level drops, and after clearing waits min_hold_s again."""
    eng = RuleEngine(env([sensor(1)], [rule(min_hold_s=600.0)]), TZ)
    plan = [(0, 120, True), (60, 10, None), (599, 10, None), (600, 10, False), (900, 120, None)]
    plan += [(1199, 120, None), (1200, 120, True)]
    for dt, level, expect in plan:
        eng.reading("s1", T0 + dt, {"level_cm": level})
        got = eng.evaluate(T0 + dt)
        assert fired(got) == ([] if expect is None else [("flood", expect)]), dt
    assert eng.firing() == {"flood": T0 + 1200}


def test_rate_of_rise_fires_on_a_fast_rise_not_on_a_slow_one() -> None:
    """10 cm in 15 minutes fires a rate_of_rise rule; 3 cm in 15 minutes does not."""
    r = rule(kind="rate_of_rise", on=10.0, off=2.0, window_s=900.0)
    for per_min, expect in [(10 / 15, True), (3 / 15, False)]:
        eng = RuleEngine(env([sensor(1)], [r]), TZ)
        got = []
        for k in range(16):
            eng.reading("s1", T0 + 60 * k, {"level_cm": 50 + per_min * k})
            got += eng.evaluate(T0 + 60 * k)
        assert fired(got) == ([("flood", True)] if expect else []), per_min
        if expect:
            assert got[0].value == pytest.approx(10.0)
            assert got[0].at == T0 + 900


def test_rate_of_rise_needs_readings_over_half_the_window() -> None:
    """A jump between two readings a minute apart is no rate over a quarter hour."""
    eng = RuleEngine(env([sensor(1)], [rule(kind="rate_of_rise", on=10.0, off=2.0)]), TZ)
    eng.reading("s1", T0, {"level_cm": 50})
    eng.reading("s1", T0 + 60, {"level_cm": 80})
    assert eng.evaluate(T0 + 60) == []
    eng.reading("s1", T0 + 450, {"level_cm": 80})
    assert fired(eng.evaluate(T0 + 450)) == [("flood", True)]


def test_severe_needs_two_sensors_to_agree() -> None:
    """With agree=2 one gauge over `on` is not enough; the second one fires it, naming both."""
    cfg = env([sensor(1), sensor(2), sensor(3)], [rule(severity="severe", agree=2)])
    eng = RuleEngine(cfg, TZ)
    eng.reading("s1", T0, {"level_cm": 130})
    eng.reading("s2", T0, {"level_cm": 90})
    eng.reading("s3", T0, {"level_cm": 20})
    assert eng.evaluate(T0) == []
    eng.reading("s2", T0 + 60, {"level_cm": 101})
    (t,) = eng.evaluate(T0 + 60)
    assert (t.fired, t.sensors, t.value) == (True, ("s1", "s2"), 130.0)


@pytest.mark.parametrize(
    ("hours", "local", "fires"),
    [
        ("22:00-06:00", datetime(2026, 7, 15, 23, 30, tzinfo=TZ), True),  # 21:30 UTC: local time counts
        ("22:00-06:00", datetime(2026, 7, 16, 5, 59, tzinfo=TZ), True),
        ("22:00-06:00", datetime(2026, 7, 16, 6, 0, tzinfo=TZ), False),
        ("22:00-06:00", datetime(2026, 1, 15, 12, 0, tzinfo=TZ), False),
        ("08:00-18:00", datetime(2026, 1, 15, 12, 0, tzinfo=TZ), True),
        ("08:00-18:00", datetime(2026, 1, 15, 7, 59, tzinfo=TZ), False),
        ("08:00-18:00", datetime(2026, 1, 15, 18, 0, tzinfo=TZ), False),
    ],
)
def test_hours_gate_firing_in_local_time(hours: str, local: datetime, fires: bool) -> None:
    """A rule fires only inside its hours, read in the site's zone (Europe/Berlin), across midnight too."""
    eng = RuleEngine(env([sensor(1)], [rule(hours=hours)]), TZ)
    now = local.timestamp()
    eng.reading("s1", now, {"level_cm": 150})
    assert fired(eng.evaluate(now)) == ([("flood", True)] if fires else [])


def test_hours_do_not_hold_a_warning_past_its_clear() -> None:
    """Outside its hours a firing rule still clears when the water goes down."""
    eng = RuleEngine(env([sensor(1)], [rule(hours="22:00-06:00")]), TZ)
    night = datetime(2026, 7, 15, 23, 0, tzinfo=TZ).timestamp()
    eng.reading("s1", night, {"level_cm": 150})
    assert fired(eng.evaluate(night)) == [("flood", True)]
    day = night + 10 * 3600
    eng.reading("s1", day, {"level_cm": 50})
    assert fired(eng.evaluate(day)) == [("flood", False)]


def test_a_stale_gauge_never_clears_a_warning() -> None:
    """When the only gauge falls silent the warning stays, and its expected end stops moving."""
    cfg = env([sensor(1, stale_after_s=600.0)], [rule(duration_s=3600.0)])
    eng = RuleEngine(cfg, TZ)
    eng.reading("s1", T0, {"level_cm": 150})
    assert fired(eng.evaluate(T0)) == [("flood", True)]
    eng.reading("s1", T0 + 300, {"level_cm": 140})
    assert eng.evaluate(T0 + 300) == []
    assert eng.end_of("flood") == T0 + 300 + 3600
    for dt in (1000, 5000, 86_400):
        assert eng.evaluate(T0 + dt) == []
        assert eng.firing() == {"flood": T0}
        assert eng.end_of("flood") == T0 + 300 + 3600
    status = eng.sensors(T0 + 1000)["s1"]
    assert (status.fresh, status.last_ts, status.values["level_cm"]) == (False, T0 + 300, 140.0)
    late = T0 + 86_400 + 60
    eng.reading("s1", late, {"level_cm": 10})
    assert fired(eng.evaluate(late)) == [("flood", False)]
    assert eng.end_of("flood") is None


def test_a_stale_gauge_does_not_hold_back_the_clear_by_fresh_ones() -> None:
    """A silent gauge is left out: the fresh gauges at off clear the warning."""
    eng = RuleEngine(env([sensor(1), sensor(2)], [rule()]), TZ)
    eng.reading("s1", T0, {"level_cm": 150})
    eng.reading("s2", T0, {"level_cm": 150})
    assert fired(eng.evaluate(T0)) == [("flood", True)]
    eng.reading("s2", T0 + 3600, {"level_cm": 50})
    (t,) = eng.evaluate(T0 + 3600)
    assert (t.fired, t.sensors) == (False, ("s2",))


def test_an_implausible_jump_is_excluded_until_confirmed() -> None:
    """A jump over max_step neither fires nor clears; the next reading near it confirms it."""
    eng = RuleEngine(env([sensor(1, max_step={"level_cm": 20.0})], [rule()]), TZ)
    eng.reading("s1", T0, {"level_cm": 50})
    eng.reading("s1", T0 + 60, {"level_cm": 150})
    assert eng.evaluate(T0 + 60) == []
    status = eng.sensors(T0 + 60)["s1"]
    assert status.fresh
    assert status.implausible == "level_cm jumped +100 (max_step 20)"
    eng.reading("s1", T0 + 120, {"level_cm": 155})
    assert fired(eng.evaluate(T0 + 120)) == [("flood", True)]
    assert eng.sensors(T0 + 120)["s1"].implausible is None
    eng.reading("s1", T0 + 180, {"level_cm": 0})  # a glitch down does not clear either
    assert eng.evaluate(T0 + 180) == []
    assert eng.firing() == {"flood": T0 + 120}


def test_out_of_order_and_unknown_readings_are_ignored() -> None:
    """A late uplink older than the newest reading, or from an unknown sensor, changes nothing."""
    eng = RuleEngine(env([sensor(1)], [rule()]), TZ)
    eng.reading("s1", T0, {"level_cm": 50})
    eng.reading("s1", T0 - 10, {"level_cm": 150})
    eng.reading("s1", T0, {"level_cm": 150})  # same time: a duplicate delivery
    eng.reading("nobody", T0, {"level_cm": 150})
    assert eng.evaluate(T0) == []
    assert eng.sensors(T0)["s1"].values == {"level_cm": 50.0}
    assert set(eng.sensors(T0)) == {"s1"}


def test_a_reading_without_the_metric_makes_the_sensor_unusable() -> None:
    """A newest reading missing the metric (or NaN) neither fires nor clears."""
    eng = RuleEngine(env([sensor(1)], [rule()]), TZ)
    eng.reading("s1", T0, {"level_cm": 150})
    assert fired(eng.evaluate(T0)) == [("flood", True)]
    eng.reading("s1", T0 + 60, {"battery_v": 3.1})
    eng.reading("s1", T0 + 120, {"level_cm": math.nan})
    assert eng.evaluate(T0 + 120) == []
    assert eng.end_of("flood") == T0 + 3600


# --- properties --------------------------------------------------------------------------------

N_SENSORS = 3
MISSING = object()  # a reading without the metric


@dataclass
class Oracle:
    """Recomputes usability and measures from every reading kept, the plain way (no pruning)."""

    stale_after_s: float
    max_step: float | None
    readings: list[list[tuple[float, float | None]]] = field(
        default_factory=lambda: [[] for _ in range(N_SENSORS)]
    )

    def record(self, i: int, ts: float, value: float | None) -> None:
        if not self.readings[i] or ts > self.readings[i][-1][0]:
            self.readings[i].append((ts, value))

    def _entries(self, i: int) -> list[tuple[float, float, bool]]:
        out: list[tuple[float, float, bool]] = []
        for ts, v in self.readings[i]:
            if v is None:
                continue
            ok = not out or self.max_step is None or abs(v - out[-1][1]) <= self.max_step
            out.append((ts, v, ok))
        return out

    def measure(self, i: int, r: RuleSettings, now: float) -> float | None:
        if not self.readings[i]:
            return None
        ts, v = self.readings[i][-1]
        if v is None or now - ts > self.stale_after_s or not self._entries(i)[-1][2]:
            return None
        if r.kind == "threshold":
            return v
        inside = [(t, x) for t, x, ok in self._entries(i) if ok and t >= ts - r.window_s]
        if ts - min(t for t, _ in inside) < r.window_s / 2:
            return None
        return v - min(x for _, x in inside)


def rules_strategy() -> st.SearchStrategy[list[dict[str, Any]]]:
    def one(rid: str, kind: str, hi: int) -> st.SearchStrategy[dict[str, Any]]:
        return st.builds(
            lambda on, band, agree, hold, window: rule(
                id=rid,
                kind=kind,
                on=float(on),
                off=float(on - band),
                agree=agree,
                min_hold_s=float(hold),
                window_s=float(window),
                metric="x",
            ),
            st.integers(5, hi),
            st.integers(1, 30),
            st.sampled_from([1, 1, 2, 3]),
            st.sampled_from([0, 60, 300, 600, 900]),
            st.sampled_from([300, 600, 900, 1200]),
        )

    return st.tuples(one("level", "threshold", 100), one("rise", "rate_of_rise", 25)).map(list)


# A reading moves its sensor's level by a step (mostly small, sometimes a jump) or lacks the value.
delta_st = st.one_of(
    st.integers(-10, 15).map(float),
    st.sampled_from([-60.0, 60.0]),
    st.sampled_from([MISSING, math.nan, True]),
)
dt_st = st.sampled_from([0, 10, 30, 60, 60, 60, 120, 120, 180, 300] * 2 + [2000])  # minutes, a gap
# (sensor, seconds since the previous step, level change, arrives late, evaluate after it)
step_st = st.tuples(
    st.integers(0, N_SENSORS - 1), dt_st, delta_st, st.sampled_from([False] * 7 + [True]), st.booleans()
)


class Replay:
    """Feeds readings to the engine and the oracle, and checks every evaluation against the promises."""

    def __init__(self, cfg: EnvironmentSettings, oracle: Oracle) -> None:
        self.eng = RuleEngine(cfg, TZ)
        self.rules = cfg.rules
        self.oracle = oracle
        self.levels = [50.0] * N_SENSORS
        self.since: dict[str, float | None] = {r.id: None for r in cfg.rules}
        self.last: dict[str, tuple[bool, float] | None] = {r.id: None for r in cfg.rules}
        self.seen: dict[str, float] = {}

    def read(self, i: int, ts: float, delta: object) -> None:
        value = delta
        if isinstance(delta, float) and math.isfinite(delta):
            self.levels[i] += delta
            value = self.levels[i]
        self.eng.reading(f"s{i}", ts, {} if value is MISSING else {"x": value})
        usable = isinstance(value, float) and math.isfinite(value)
        self.oracle.record(i, ts, value if usable else None)  # type: ignore[arg-type]

    def evaluate(self, now: float) -> None:
        got = {t.rule_id: t for t in self.eng.evaluate(now)}
        for r in self.rules:
            measures = {
                f"s{k}": m for k in range(N_SENSORS) if (m := self.oracle.measure(k, r, now)) is not None
            }
            t = got.get(r.id)
            if self.since[r.id] is None:
                self._check_fire(r, now, measures, t)
            else:
                self._check_clear(r, now, measures, t)
            prev = self.last[r.id]
            if t is not None:
                if prev is not None:
                    assert prev[0] != t.fired, "(d) fire and clear alternate"
                    assert now - prev[1] >= r.min_hold_s, "(c) flapped faster than min_hold_s"
                self.last[r.id] = (t.fired, now)
            expected_end = None if self.since[r.id] is None else self.seen[r.id] + r.duration_s
            assert self.eng.end_of(r.id) == expected_end
        assert self.eng.firing() == {rid: s for rid, s in self.since.items() if s is not None}

    def _check_fire(self, r: RuleSettings, now: float, measures: dict[str, float], t: Any) -> None:
        """(a) a fire needs agree usable sensors at/over on, and (c) min_hold_s after the last clear."""
        over = {s for s, m in measures.items() if m >= r.on}
        prev = self.last[r.id]
        should = len(over) >= r.agree and (prev is None or now - prev[1] >= r.min_hold_s)
        assert (t is not None) == should, (r.id, now, measures)
        if t is not None:
            assert t.fired, "(d) a clear rule can only fire"
            assert set(t.sensors) <= over
            assert len(t.sensors) >= r.agree
            self.since[r.id] = self.seen[r.id] = now

    def _check_clear(self, r: RuleSettings, now: float, measures: dict[str, float], t: Any) -> None:
        """(b) a clear needs a usable sensor, all usable at/under off, and (c) min_hold_s of firing."""
        start = self.since[r.id]
        assert start is not None
        should = bool(measures) and all(m <= r.off for m in measures.values())
        should = should and now - start >= r.min_hold_s
        assert (t is not None) == should, (r.id, now, measures)
        if t is not None:
            assert not t.fired, "(d) a firing rule can only clear"
            assert set(t.sensors) == set(measures)
            self.since[r.id] = None
        elif any(m > r.off for m in measures.values()):
            self.seen[r.id] = now


@settings(max_examples=200, deadline=None)
@given(
    rules=rules_strategy(),
    stale_after_s=st.sampled_from([300.0, 900.0, 1800.0]),
    max_step=st.sampled_from([None, 12.0, 30.0]),
    steps=st.lists(step_st, min_size=10, max_size=120),
)
def test_transitions_follow_the_promises(
    rules: list[dict[str, Any]],
    stale_after_s: float,
    max_step: float | None,
    steps: list[tuple[int, int, object, bool, bool]],
) -> None:
    """Fires need `agree` usable sensors at/over on, clears need all usable at/under off, no flapping."""
    sensors = [sensor(i, max_step={"x": max_step} if max_step else {}) for i in range(N_SENSORS)]
    cfg = env(sensors, rules, stale_after_s=stale_after_s)
    replay = Replay(cfg, Oracle(stale_after_s, max_step))
    now = T0
    for i, dt, delta, late, evaluate in steps:
        now += dt
        replay.read(i, now - 200 if late else now, delta)  # a late uplink is older than the newest
        if evaluate:
            replay.evaluate(now)
