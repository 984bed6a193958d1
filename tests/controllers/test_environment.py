"""Environment controller: rule transitions become warnings an operator can see, confirm, reject
and withdraw; a silent gauge never lifts one; a warning's end moves on while its rule fires.

Real parts: the kernel's bus and alarm table (tests/kernel_kit.py) and the rule engine; the
displays domain is a recording `WarningSink`, so each test sees every issue and withdrawal.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from kernel_kit import make_kernel
from waiting import wait_until

from controllers.environment import EnvironmentController, EnvironmentError, EnvWarning
from edge.alarms import Alarms
from edge.bus import EventBus
from edge.clock import ManualClock
from edge.dispatcher import Dispatcher
from edge.events import PlanEvent, Severity, Telemetry
from edge.settings_environment import EnvironmentSettings
from edge.state import StateStore

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
STALE_S = 600.0
DURATION_S = 3600.0
ON, OFF = 100.0, 80.0


@dataclass
class Sink:
    """The displays domain as a `WarningSink`: records each issue (with its end then) and withdrawal."""

    issued: list[tuple[str, str, float]] = field(default_factory=list)  # (id, status, end)
    withdrawn: list[str] = field(default_factory=list)

    def issue(self, w: EnvWarning) -> int:
        self.issued.append((w.id, w.status, w.end))
        return 2

    def withdraw(self, warning_id: str) -> None:
        self.withdrawn.append(warning_id)


@dataclass
class Rig:
    ctl: EnvironmentController
    clock: ManualClock
    bus: EventBus
    alarms: Alarms
    sink: Sink

    def level(self, sensor: str, cm: float, at: float | None = None) -> None:
        """A gauge's reading at `at` (default: now), as the LoRaWAN ingest decodes it."""
        self.ctl.engine.reading(sensor, self.clock.now() if at is None else at, {"level_cm": cm})

    def step(self, at: float | None = None) -> None:
        if at is not None:
            self.clock.advance(at - self.clock.now())
        self.ctl.step(self.clock.now())

    def only(self) -> EnvWarning:
        (w,) = self.ctl.warnings.values()
        return w


def sensor(i: int, group: str, lat: float, lon: float = 7.45) -> dict[str, Any]:
    return {"id": f"g{i}", "dev_eui": f"{i:016x}", "profile": "water_level_ultrasonic", "group": group,
            "lat": lat, "lon": lon}  # fmt: skip


def settings(mode: str = "issue", **rule: Any) -> EnvironmentSettings:
    return EnvironmentSettings.model_validate(
        {
            "sensors": [sensor(1, "river", 51.500), sensor(2, "river", 51.501), sensor(3, "hills", 51.60)],
            "rules": [
                {"id": "flood", "group": "river", "metric": "level_cm", "kind": "threshold", "on": ON,
                 "off": OFF, "min_hold_s": 0, "severity": "severe", "mode": mode,
                 "lines": ["HOCHWASSER", "Ufer meiden"], "event": "Flood", "duration_s": DURATION_S} | rule,
            ],
            "stale_after_s": STALE_S,
        }
    )  # fmt: skip


def make_rig(cfg: EnvironmentSettings | None = None) -> Rig:
    clock = ManualClock(T0)
    bus = EventBus()
    state = StateStore(bus, {})
    disp = Dispatcher(bus=bus, clock=clock, state=state, drivers=[], policies={}, audit=lambda _r: None)
    alarms = Alarms(bus, clock)
    sink = Sink()
    ctl = EnvironmentController(
        make_kernel(clock, bus, state, disp, alarms=alarms), cfg or settings(), sink=sink
    )
    return Rig(ctl, clock, bus, alarms, sink)


def metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    dp, dl = p2 - p1, math.radians(b[1] - a[1])
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(math.sqrt(h))


def test_an_issue_mode_rule_issues_and_is_withdrawn_when_it_clears() -> None:
    """Over `on`: issued through the sink at once; back at `off`: withdrawn by the rule."""
    r = make_rig()
    r.level("g1", 90)
    r.step()
    assert r.ctl.warnings == {}
    assert r.sink.issued == []
    r.level("g1", 120, T0 + 60)
    r.step(T0 + 60)
    w = r.only()
    assert (w.rule, w.status, w.decided_by, w.issued_at) == ("flood", "issued", "rule", T0 + 60)
    assert (w.severity, w.lines, w.event, w.value, w.sensors) == (
        "severe", ["HOCHWASSER", "Ufer meiden"], "Flood", 120.0, ["g1"],
    )  # fmt: skip
    assert (w.start, w.end) == (T0 + 60, T0 + 60 + DURATION_S)
    assert r.sink.issued == [(w.id, "issued", T0 + 60 + DURATION_S)]
    assert not r.alarms.is_active("flood", "warning_proposed")
    r.level("g1", 85, T0 + 120)
    r.step(T0 + 120)
    assert r.only() is w
    assert r.sink.withdrawn == []
    r.level("g1", OFF, T0 + 180)
    r.step(T0 + 180)
    assert r.ctl.warnings == {}
    assert r.sink.withdrawn == [w.id]
    (done,) = r.ctl.finished
    assert (done.id, done.status, done.decided_by, done.finished_at) == (
        w.id,
        "withdrawn",
        "rule:flood",
        T0 + 180,
    )
    assert (r.ctl.stats.issued, r.ctl.stats.withdrawn) == (1, 1)


def test_a_propose_mode_rule_waits_for_an_operator_to_confirm() -> None:
    """Proposed: nothing shown, an alarm asks to confirm or reject; confirmed: issued through the sink."""
    r = make_rig(settings("propose"))
    r.level("g2", 130)
    r.step()
    w = r.only()
    assert w.status == "proposed"
    assert w.issued_at is None
    assert r.sink.issued == []
    assert r.alarms.is_active("flood", "warning_proposed")
    detail = next(a for a in r.alarms.active() if a.code == "warning_proposed")
    assert detail.severity is Severity.MAJOR
    assert w.id in detail.detail
    r.step(T0 + 300)
    assert r.sink.issued == []  # proposing never times out into an issue
    confirmed = r.ctl.decide(w.id, "confirm", "operator:anna")
    assert confirmed is w
    assert (confirmed.status, confirmed.decided_by, confirmed.issued_at) == (
        "issued",
        "operator:anna",
        T0 + 300,
    )
    assert r.sink.issued == [(w.id, "issued", w.end)]
    assert not r.alarms.is_active("flood", "warning_proposed")
    assert (r.ctl.stats.proposed, r.ctl.stats.issued) == (1, 1)


def test_reject_and_withdraw_finish_a_warning_and_refuse_what_cannot_apply() -> None:
    """Reject only a proposal, withdraw anything live; a finished or unknown warning is refused."""
    r = make_rig(settings("propose"))
    r.level("g1", 130)
    r.step()
    w = r.only()
    with pytest.raises(EnvironmentError) as info:
        r.ctl.decide("env-nothing-1", "confirm", "op")
    assert info.value.reason == "unknown_warning"
    r.ctl.decide(w.id, "confirm", "op")
    for action in ("confirm", "reject"):
        with pytest.raises(EnvironmentError) as info:
            r.ctl.decide(w.id, action, "op")
        assert info.value.reason == "not_proposed"
        assert "issued" in info.value.detail
    assert w.status == "issued"
    assert r.sink.withdrawn == []
    r.ctl.decide(w.id, "withdraw", "op")
    assert (w.status, w.decided_by) == ("withdrawn", "op")
    assert r.sink.withdrawn == [w.id]
    for action in ("confirm", "reject", "withdraw"):
        with pytest.raises(EnvironmentError) as info:
            r.ctl.decide(w.id, action, "op")
        assert info.value.reason == "warning_finished"
        assert "withdrawn" in info.value.detail
    assert r.sink.withdrawn == [w.id]  # once
    # the rule still fires: no second warning until it has cleared
    r.level("g1", 140, T0 + 60)
    r.step(T0 + 60)
    assert r.ctl.warnings == {}


def test_a_rejected_proposal_is_never_shown_and_the_next_firing_proposes_again() -> None:
    r = make_rig(settings("propose"))
    r.level("g1", 130)
    r.step()
    first = r.only()
    r.ctl.decide(first.id, "reject", "op")
    assert first.status == "rejected"
    assert r.ctl.stats.rejected == 1
    assert r.sink.issued == []
    assert r.sink.withdrawn == []
    assert not r.alarms.is_active("flood", "warning_proposed")
    r.level("g1", 50, T0 + 60)
    r.step(T0 + 60)  # the rule clears
    r.level("g1", 130, T0 + 120)
    r.step(T0 + 120)  # and fires again
    second = r.only()
    assert second.id != first.id
    assert second.status == "proposed"
    done = r.ctl.decide(second.id, "withdraw", "op")  # a proposal withdrawn: nothing was shown
    assert done.status == "withdrawn"
    assert r.sink.withdrawn == []


def test_a_stale_sensor_raises_an_alarm_and_the_warning_stays_until_its_end() -> None:
    """The gauges fall silent: a 'stale' alarm each, the warning stays in force and expires at its end."""
    r = make_rig()
    r.level("g1", 130)
    r.level("g2", 125)
    r.step()
    w = r.only()
    assert w.sensors == ["g1", "g2"]
    assert w.end == T0 + DURATION_S
    r.step(T0 + STALE_S)
    assert not r.alarms.is_active("g1", "stale")
    r.step(T0 + STALE_S + 1)
    assert r.alarms.is_active("g1", "stale")
    assert r.alarms.is_active("g2", "stale")
    # g3 never reported: silent since the start, so as stale as the others (dead at install)
    assert r.alarms.is_active("g3", "stale")
    assert r.only() is w
    assert w.status == "issued"
    assert r.sink.withdrawn == []
    r.step(T0 + DURATION_S - 1)
    assert w.end == T0 + DURATION_S  # no usable gauge: the end is not pushed on by quarters
    assert r.only() is w
    # The gauges were last usable over `off` at T0 + STALE_S: the rule's own end is an hour after
    # that, and the warning's end goes there (not further: nothing new was seen since).
    last_seen_end = T0 + STALE_S + DURATION_S
    r.step(T0 + DURATION_S)
    assert w.end == last_seen_end
    assert r.only() is w
    r.step(last_seen_end)
    assert r.ctl.warnings == {}
    assert (w.status, w.finished_at) == ("expired", last_seen_end)
    assert r.sink.withdrawn == [w.id]
    assert r.ctl.stats.expired == 1
    r.step(last_seen_end + 60)
    assert r.ctl.warnings == {}  # still silent: no new warning from a rule nobody can see
    r.level("g1", 60, last_seen_end + 70)  # a fresh reading clears the stale alarm
    r.step(last_seen_end + 70)
    assert not r.alarms.is_active("g1", "stale")


def test_the_end_moves_on_in_quarter_steps_while_the_rule_fires() -> None:
    """While a gauge stays over `off`, the end is pushed on by duration/4 at a time and re-issued."""
    r = make_rig()
    r.level("g1", 130)
    r.step()
    w = r.only()
    ends = [w.end]
    for k in range(1, 13):  # a reading and an evaluation every 5 minutes for an hour
        at = T0 + 300 * k
        r.level("g1", 120 if k % 2 else 95, at)  # in the band counts as still firing
        r.step(at)
        if w.end != ends[-1]:
            ends.append(w.end)
    quarter = DURATION_S / 4
    assert ends == [T0 + DURATION_S + n * quarter for n in range(5)]
    assert [end for _, _, end in r.sink.issued] == ends  # each move re-issued to the displays
    assert r.only() is w
    assert r.sink.withdrawn == []


def test_a_proposal_moves_its_end_without_being_shown() -> None:
    r = make_rig(settings("propose"))
    r.level("g1", 130)
    r.step()
    w = r.only()
    r.level("g1", 130, T0 + DURATION_S / 4)
    r.step(T0 + DURATION_S / 4)
    assert w.end == T0 + DURATION_S * 1.25
    assert r.sink.issued == []


def test_area_covers_the_groups_sensors() -> None:
    """The area is centred on the group's sensors and at least radius_m; wide enough for a spread group."""
    r = make_rig()
    rule = r.ctl.rules["flood"]
    lat, lon, radius = r.ctl.area(rule)
    assert (lat, lon) == (51.5005, 7.45)  # between g1 and g2; g3 is another group
    assert radius == rule.radius_m == 1500.0
    spread = EnvironmentSettings.model_validate(
        settings().model_dump()
        | {"sensors": [sensor(1, "river", 51.40, 7.40), sensor(2, "river", 51.50, 7.50), sensor(3, "river", 51.45, 7.60)]}
    )  # fmt: skip
    ctl = make_rig(spread).ctl
    lat, lon, radius = ctl.area(ctl.rules["flood"])
    assert radius > 1500.0
    for s in spread.sensors:
        assert metres((lat, lon), (s.lat, s.lon)) <= radius + 1.0  # within the circle (centre rounded)
    assert max(metres((lat, lon), (s.lat, s.lon)) for s in spread.sensors) == pytest.approx(radius, abs=1.0)
    r.level("g1", 130)
    r.step()
    assert r.only().area == r.ctl.area(rule)


async def test_run_takes_readings_from_the_bus_and_publishes_north() -> None:
    """The running controller: a gauge's telemetry issues the warning; the plan event lists it."""
    r = make_rig()
    plans = r.bus.subscribe("test", PlanEvent)
    task = asyncio.create_task(r.ctl.run(), name="test.environment")
    try:
        r.bus.publish(Telemetry("g1", T0, {"level_cm": 150}, derived=True))  # not a reading
        r.bus.publish(Telemetry("g1", T0, {"level_cm": 150}))
        await wait_until(lambda: len(r.sink.issued) == 1, 3.0, "the warning issued from a bus reading")
        assert r.ctl.stats.readings == 1
        w = r.only()
        bodies = [e.plan for e in iter(plans.get_nowait, None) if isinstance(e, PlanEvent)]
        assert bodies
        assert bodies[-1]["warnings"] == [w.as_dict()]
        rules = bodies[-1]["rules"]
        assert isinstance(rules, list)
        (rule,) = rules
        assert (rule["id"], rule["firing"], rule["warning"]) == ("flood", True, w.id)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_a_flood_still_there_when_the_silent_gauges_come_back_gets_a_new_warning() -> None:
    """The warning expired while every gauge was silent and its rule still fired; when the gauges
    report again over `on`, a new warning is issued (the rule itself never cleared)."""
    r = make_rig()
    r.level("g1", 130)
    r.level("g2", 125)
    r.step()
    first = r.only()
    end = T0 + STALE_S * 10 + DURATION_S
    r.step(end)  # silent all along: the first warning expired at its end
    assert first.status == "expired"
    assert r.ctl.warnings == {}
    r.level("g1", 135, end + 30)
    r.level("g2", 128, end + 30)
    r.step(end + 30)
    second = r.only()
    assert second.id != first.id
    assert second.status == "issued"
    assert second.sensors == ["g1", "g2"]
