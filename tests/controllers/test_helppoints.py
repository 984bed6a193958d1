"""Help-point controller: a press becomes one incident that raises the lamps around the post, shows
a notice, escalates when nobody acknowledges it, and ends with the operator's close.

Real parts: the kernel's bus and alarm table (tests/kernel_kit.py); the lighting and displays
domains are recording callables, so each test sees exactly which lamps went up and came down.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from kernel_kit import make_kernel
from waiting import wait_until

from controllers.helppoints import (
    ALARM_CALL,
    ALARM_ESCALATED,
    HOLD_S,
    HelpPointController,
    HelpPointSite,
    Incident,
    IncidentError,
)
from edge.alarms import Alarms
from edge.bus import EventBus
from edge.clock import ManualClock
from edge.dispatcher import Dispatcher
from edge.events import Availability, PlanEvent, Severity, Telemetry, Value
from edge.settings import HelpPointsSettings
from edge.state import StateStore

START = 1_795_000_000.0
STEP = 0.0002  # about 22 m between posts along a street running north
LAMPS = {f"L{i + 1}": (51.51 + i * STEP, 7.45) for i in range(6)}
SITES = {
    "HP1": HelpPointSite("HP1", "L1", *LAMPS["L1"], "Kreuzstrasse"),
    "HP5": HelpPointSite("HP5", "L5", *LAMPS["L5"], "Kreuzstrasse"),
}
DISPLAYS = {"D-near": (51.5101, 7.4501), "D-far": (51.60, 7.45)}  # the far one is 10 km away
CFG = HelpPointsSettings(radius_m=30, ack_timeout_s=120, stuck_after_s=60, battery_low_pct=20)


def metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance (haversine, mean Earth radius): the test's own reckoning."""
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    dp, dl = p2 - p1, math.radians(b[1] - a[1])
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(math.sqrt(h))


@dataclass
class Rig:
    ctl: HelpPointController
    clock: ManualClock
    bus: EventBus
    alarms: Alarms
    raised: list[tuple[str, float, str]] = field(default_factory=list)
    released: list[tuple[str, str]] = field(default_factory=list)
    notices: list[tuple[str, frozenset[str], float, float]] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)

    def read(self, hp: str, **values: Value) -> None:
        """One reading of the help point at the current clock time (as the driver reports it)."""
        base: dict[str, Value] = {"pressed": False, "press_count": 0, "cancelled": False, "battery": 96}
        self.ctl.reading(hp, base | values, self.clock.now())

    def lamps_up(self, incident: str) -> list[str]:
        return sorted(lamp for lamp, _, inc in self.raised if inc == incident)

    def alarm(self, hp: str, code: str) -> bool:
        return self.alarms.is_active(hp, code)

    def severity(self, hp: str, code: str) -> Severity:
        return next(a.severity for a in self.alarms.active() if (a.device_id, a.code) == (hp, code))


def make_rig(
    clock: ManualClock | None = None,
    cfg: HelpPointsSettings = CFG,
    sites: Mapping[str, HelpPointSite] = SITES,
) -> Rig:
    clock = clock or ManualClock(START)
    bus = EventBus()
    state = StateStore(bus, {})
    disp = Dispatcher(bus=bus, clock=clock, state=state, drivers=[], policies={}, audit=lambda _r: None)
    alarms = Alarms(bus, clock)
    kernel = make_kernel(clock, bus, state, disp, alarms=alarms)
    r = Rig(None, clock, bus, alarms)  # type: ignore[arg-type]

    def release(lamp: str, inc: str) -> bool:
        r.released.append((lamp, inc))
        return True

    r.ctl = HelpPointController(
        kernel, cfg, sites=sites, lamps=LAMPS, displays=DISPLAYS,
        raise_lamp=lambda lamp, hold_s, inc: r.raised.append((lamp, hold_s, inc)),
        release_lamp=release,
        notice=lambda inc, displays, start, end: r.notices.append((inc, displays, start, end)),
        clear_notice=r.cleared.append,
    )  # fmt: skip
    return r


def pressed(r: Rig, hp: str = "HP1", count: int = 1) -> str:
    """A press (after an idle reading); returns the incident it opened or counted on."""
    r.read(hp, press_count=count - 1)
    r.read(hp, pressed=True, press_count=count)
    open_ = [i.id for i in r.ctl.incidents.values() if i.helppoint == hp]
    assert len(open_) == 1, f"{hp}: {len(open_)} open incidents"
    return open_[0]


@contextlib.asynccontextmanager
async def running(r: Rig) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(r.ctl.run(), name="test.helppoints")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_lamps_near_are_those_within_the_radius_and_the_own_post() -> None:
    """The lamps within radius_m by great-circle distance, and the post even when it is farther."""
    r = make_rig()
    for hp, site in SITES.items():
        expect = sorted(x for x, pos in LAMPS.items() if metres((site.lat, site.lon), pos) <= CFG.radius_m)
        assert r.ctl.lamps_near(hp) == expect
    assert r.ctl.lamps_near("HP1") == ["L1", "L2"]  # L2 is 22 m away, L3 44 m
    assert r.ctl.lamps_near("HP5") == ["L4", "L5", "L6"]
    # a help point placed 1 km from its post still raises the post's own lamp
    away = {"HPX": HelpPointSite("HPX", "L3", 51.52, 7.45, "Feldweg")}
    assert make_rig(sites=away).ctl.lamps_near("HPX") == ["L3"]
    wide = make_rig(cfg=CFG.model_copy(update={"radius_m": 1000}))
    assert wide.ctl.lamps_near("HP1") == sorted(LAMPS)


def test_a_press_opens_one_incident_and_raises_exactly_the_lamps_near_it() -> None:
    """Lamps near the post up until the close, a critical alarm with the place, a notice nearby."""
    r = make_rig()
    r.read("HP1")
    assert r.ctl.incidents == {}
    assert r.raised == []
    inc_id = pressed(r)
    (inc,) = r.ctl.incidents.values()
    assert inc.id == inc_id
    assert (inc.helppoint, inc.post, inc.street, inc.status, inc.presses) == (
        "HP1",
        "L1",
        "Kreuzstrasse",
        "open",
        1,
    )
    assert inc.opened_at == START
    assert r.raised == [("L1", HOLD_S, inc_id), ("L2", HOLD_S, inc_id)]
    assert inc.lamps == ["L1", "L2"]
    assert r.notices == [(inc_id, frozenset({"D-near"}), START, START + HOLD_S)]
    assert inc.displays == ["D-near"]
    assert r.alarm("HP1", ALARM_CALL)
    assert r.severity("HP1", ALARM_CALL) is Severity.CRITICAL
    detail = next(a.detail for a in r.alarms.active() if a.code == ALARM_CALL)
    assert inc_id in detail
    assert "Kreuzstrasse" in detail
    assert "post L1" in detail
    assert not r.alarm("HP5", ALARM_CALL)
    assert (r.ctl.stats.calls, r.ctl.stats.presses) == (1, 1)
    assert inc.as_dict()["lamps"] == 2  # published as a count


def test_a_second_press_counts_on_the_same_incident() -> None:
    """Pressing again while the incident is open, or a count rising, is the same call."""
    r = make_rig()
    inc_id = pressed(r)
    r.read("HP1", press_count=1)  # released
    r.read("HP1", pressed=True, press_count=2)  # pressed again
    r.read("HP1", pressed=False, press_count=3)  # a press shorter than a poll: only the count
    assert list(r.ctl.incidents) == [inc_id]
    assert r.ctl.incidents[inc_id].presses == 3
    assert r.raised == [("L1", HOLD_S, inc_id), ("L2", HOLD_S, inc_id)]  # raised once
    assert (r.ctl.stats.calls, r.ctl.stats.presses) == (1, 3)


def test_a_press_shorter_than_a_poll_opens_an_incident() -> None:
    """The pressed bit never seen: a higher press_count is a call."""
    r = make_rig()
    r.read("HP1", press_count=41)
    r.read("HP1", press_count=42)
    (inc,) = r.ctl.incidents.values()
    assert inc.helppoint == "HP1"
    assert r.lamps_up(inc.id) == ["L1", "L2"]
    r2 = make_rig()
    r2.read("HP5", press_count=0xFFFF)
    r2.read("HP5", press_count=0)  # the u16 counter wrapped
    assert [i.helppoint for i in r2.ctl.incidents.values()] == ["HP5"]


def test_a_first_reading_with_a_count_is_not_a_press() -> None:
    """After a restart the counter holds earlier presses: the first reading is only the baseline."""
    r = make_rig()
    r.read("HP1", press_count=17)
    r.read("HP1", press_count=17)
    assert r.ctl.incidents == {}
    assert r.ctl.stats.presses == 0


def test_a_button_held_past_stuck_after_s_is_a_maintenance_alarm() -> None:
    """Held down: one incident, and a button_stuck alarm once stuck_after_s passed; released: cleared."""
    r = make_rig()
    inc_id = pressed(r)
    for _ in range(3):
        r.clock.advance(20)
        r.read("HP1", pressed=True, press_count=1)
    r.ctl.check_timers(START + CFG.stuck_after_s - 1)
    assert not r.alarm("HP1", "button_stuck")
    r.ctl.check_timers(START + CFG.stuck_after_s)
    assert r.alarm("HP1", "button_stuck")
    assert r.severity("HP1", "button_stuck") is Severity.MAJOR
    assert list(r.ctl.incidents) == [inc_id]
    assert r.ctl.incidents[inc_id].presses == 1
    r.read("HP1", press_count=1)
    assert not r.alarm("HP1", "button_stuck")
    r.ctl.check_timers(START + 10 * CFG.stuck_after_s)
    assert not r.alarm("HP1", "button_stuck")  # the hold is over


def test_a_close_while_held_needs_a_release_before_a_new_incident() -> None:
    """A stuck button closed by the operator does not reopen at once; release, then a press does."""
    r = make_rig()
    first = pressed(r)
    r.ctl.close(first, "op", "nobody there: button jammed")
    r.read("HP1", pressed=True, press_count=1)
    r.read("HP1", pressed=True, press_count=2)  # still held (the count bounced): no new call
    assert r.ctl.incidents == {}
    r.read("HP1", press_count=2)  # released
    r.read("HP1", pressed=True, press_count=3)
    (second,) = r.ctl.incidents.values()
    assert second.id != first
    assert r.lamps_up(second.id) == ["L1", "L2"]


def test_an_unacknowledged_incident_escalates_after_ack_timeout_s() -> None:
    """No acknowledgement in ack_timeout_s: a second critical alarm, the incident on the target."""
    r = make_rig()
    inc_id = pressed(r)
    other = pressed(r, "HP5")
    r.clock.advance(10)
    r.ctl.acknowledge(other, "op")  # acknowledged in time: never escalates
    r.ctl.check_timers(START + CFG.ack_timeout_s - 0.1)
    assert not r.alarm("HP1", ALARM_ESCALATED)
    assert r.ctl.stats.escalated == 0
    r.ctl.check_timers(START + CFG.ack_timeout_s)
    assert r.alarm("HP1", ALARM_ESCALATED)
    assert r.severity("HP1", ALARM_ESCALATED) is Severity.CRITICAL
    assert not r.alarm("HP5", ALARM_ESCALATED)
    assert r.ctl.incidents[inc_id].escalated_at == START + CFG.ack_timeout_s
    r.ctl.check_timers(START + 3 * CFG.ack_timeout_s)  # escalates once
    assert r.ctl.stats.escalated == 1
    sub = r.bus.subscribe("test", PlanEvent)
    r.ctl.publish()
    ev = sub.get_nowait()
    assert isinstance(ev, PlanEvent)
    assert ev.domain == "helppoints"
    assert ev.plan["escalations"] == {CFG.escalation_target: [inc_id]}
    assert {i["id"] for i in ev.plan["incidents"]} == {inc_id, other}  # type: ignore[attr-defined]


def test_acknowledge_records_the_time_to_ack() -> None:
    """The first acknowledgement sets who and when; the mean time to ack follows."""
    r = make_rig()
    first = pressed(r)
    r.clock.advance(42)
    inc = r.ctl.acknowledge(first, "anna", "on my way")
    assert (inc.status, inc.acked_by, inc.acked_at) == ("acknowledged", "anna", START + 42)
    assert inc.notes == [{"ts": START + 42, "by": "anna", "text": "on my way"}]
    r.clock.advance(100)
    r.ctl.acknowledge(first, "ben")  # a second acknowledgement changes nothing
    assert (inc.acked_by, inc.acked_at) == ("anna", START + 42)
    second = pressed(r, "HP5")
    r.clock.advance(18)
    r.ctl.acknowledge(second, "ben")
    assert r.ctl.stats.acknowledged == 2
    assert r.ctl.stats.ack_total_s == 60.0
    assert r.ctl.stats.mean_time_to_ack_s == 30.0
    r.ctl.check_timers(START + 10 * CFG.ack_timeout_s)
    assert r.ctl.stats.escalated == 0


def test_close_releases_the_lamps_and_clears_notice_and_alarms() -> None:
    """The lights go back to their plan only on close; alarms and the notice go with it."""
    r = make_rig()
    inc_id = pressed(r)
    r.ctl.check_timers(START + CFG.ack_timeout_s)  # escalated too
    r.read("HP1", press_count=1)
    r.read("HP1", cancelled=True, press_count=1)
    assert r.ctl.incidents[inc_id].caller_cancelled is True  # noted, but the incident stays open
    assert r.released == []
    assert r.cleared == []
    r.clock.advance(300)
    inc = r.ctl.close(inc_id, "op", "false alarm, caller cancelled")
    assert (inc.status, inc.closed_by, inc.closed_at, inc.close_comment) == (
        "closed", "op", START + 300, "false alarm, caller cancelled",
    )  # fmt: skip
    assert r.released == [("L1", inc_id), ("L2", inc_id)]
    assert r.cleared == [inc_id]
    assert not r.alarm("HP1", ALARM_CALL)
    assert not r.alarm("HP1", ALARM_ESCALATED)
    assert r.ctl.incidents == {}
    assert list(r.ctl.closed) == [inc]
    assert r.ctl.stats.closed == 1
    assert any(n["by"] == "caller" for n in inc.notes)


def test_operator_requests_on_closed_or_unknown_incidents_are_refused() -> None:
    """A second close names the incident as closed; an id never seen is unknown."""
    r = make_rig()
    inc_id = pressed(r)
    r.ctl.close(inc_id, "op", "done")
    calls: list[Callable[[], Incident]] = [
        lambda: r.ctl.close(inc_id, "op", "again"),
        lambda: r.ctl.acknowledge(inc_id, "op"),
        lambda: r.ctl.note(inc_id, "op", "late"),
    ]
    for call in calls:
        with pytest.raises(IncidentError) as info:
            call()
        assert info.value.reason == "incident_closed"
        assert inc_id in str(info.value)
    with pytest.raises(IncidentError) as info:
        r.ctl.close("inc-0-0", "op", "?")
    assert info.value.reason == "unknown_incident"
    assert r.released == [("L1", inc_id), ("L2", inc_id)]  # released once


@pytest.mark.parametrize(
    ("values", "code", "severity"),
    [
        ({"selftest_failed": True}, "selftest_failed", Severity.MAJOR),
        ({"tamper": True}, "tamper", Severity.MAJOR),
        ({"on_battery": True}, "on_battery", Severity.MINOR),
        ({"battery": 8}, "battery_low", Severity.MINOR),
    ],
)
def test_status_alarms_follow_the_readings(values: dict[str, Value], code: str, severity: Severity) -> None:
    """Each status alarm rises with its reading and clears with the next good one; no incident."""
    r = make_rig()
    r.read("HP1", **values)
    assert r.alarm("HP1", code)
    assert r.severity("HP1", code) is severity
    assert not r.alarm("HP5", code)
    r.read("HP1", **values)
    assert sum(a.code == code for a in r.alarms.active()) == 1
    r.read("HP1", selftest_failed=False, tamper=False, on_battery=False)
    assert not r.alarm("HP1", code)
    assert r.ctl.incidents == {}


def test_battery_low_is_below_the_configured_percent() -> None:
    r = make_rig()
    r.read("HP1", battery=CFG.battery_low_pct)
    assert not r.alarm("HP1", "battery_low")
    r.read("HP1", battery=CFG.battery_low_pct - 1)
    detail = next(a.detail for a in r.alarms.active() if a.code == "battery_low")
    assert detail == "battery 19 %"


async def test_run_takes_readings_and_availability_from_the_bus() -> None:
    """The running controller: a press on the bus opens an incident, a silent link is an alarm,
    derived state of the help point is never taken as a reading."""
    r = make_rig()
    plans = r.bus.subscribe("test", PlanEvent)
    async with running(r):
        now = r.clock.now()
        r.bus.publish(Telemetry("HP1", now, {"pressed": False, "press_count": 4}))
        r.bus.publish(Telemetry("HP1", now, {"pressed": True, "press_count": 5}, derived=True))
        r.bus.publish(Telemetry("HP1", now, {"pressed": True, "press_count": 5}))
        await wait_until(lambda: len(r.ctl.incidents) == 1, 2.0, "an incident from the bus")
        assert r.lamps_up(next(iter(r.ctl.incidents))) == ["L1", "L2"]
        r.bus.publish(Availability("lc-1:helppoints", ("HP1", "HP5"), False, now, "connection refused"))
        await wait_until(lambda: r.alarm("HP5", "unavailable"), 2.0, "help point unavailable")
        assert r.alarm("HP1", "unavailable")
        r.bus.publish(Availability("lc-1:helppoints", ("HP1", "HP5"), True, now))
        await wait_until(lambda: not r.alarm("HP5", "unavailable"), 2.0, "help point available")

        def published() -> list[Any]:
            return [e.plan["incidents"] for e in iter(plans.get_nowait, None) if isinstance(e, PlanEvent)]

        seen: list[Any] = []

        def north() -> bool:
            seen.extend(published())
            return bool(seen and seen[-1])

        await wait_until(north, 2.0, "incident north")
        assert seen[-1][0]["helppoint"] == "HP1"


async def test_restored_incidents_raise_their_lamps_again_when_run_starts() -> None:
    """Open incidents published before a restart come back, with their lamps and notice re-raised."""
    before = make_rig()
    inc_id = pressed(before)
    other = pressed(before, "HP5")
    before.clock.advance(30)
    before.ctl.acknowledge(other, "op", "seen")
    sub = before.bus.subscribe("test", PlanEvent)
    before.ctl.publish()
    body = sub.get_nowait()
    assert isinstance(body, PlanEvent)

    after = make_rig(ManualClock(START + 600))
    junk = [{"id": "x", "helppoint": "HP-unknown"}, "not an incident"]
    plan = dict(body.plan) | {"incidents": [*body.plan["incidents"], *junk]}  # type: ignore[misc]
    assert after.ctl.restore(plan) == 2
    assert after.ctl.restore(plan) == 0  # already there
    assert after.raised == []  # not before run
    async with running(after):
        await wait_until(lambda: len(after.raised) == 5, 2.0, "the restored incidents' lamps")
    assert after.lamps_up(inc_id) == ["L1", "L2"]
    assert after.lamps_up(other) == ["L4", "L5", "L6"]
    assert {n[0] for n in after.notices} == {inc_id, other}
    restored = after.ctl.incidents[other]
    assert (restored.status, restored.acked_by, restored.opened_at) == ("acknowledged", "op", START)
    assert restored.notes == [{"ts": START + 30, "by": "op", "text": "seen"}]
    # a press on a restored post counts on its incident; the close releases what run raised
    after.read("HP1", press_count=1)
    after.read("HP1", pressed=True, press_count=2)
    assert after.ctl.incidents[inc_id].presses == 2
    after.ctl.close(inc_id, "op", "done")
    assert after.released == [("L1", inc_id), ("L2", inc_id)]
