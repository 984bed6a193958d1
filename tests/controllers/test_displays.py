"""Displays controller against the real display simulators (MQTT boards, Modbus signs).

Guidance follows occupancy, a full car park switches the signs after the rate limit,
stale numbers fall back to blank at once, and a warning takes over and expires.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest_asyncio
from conftest_displays import DisplayIds
from kernel_kit import make_kernel
from waiting import Recorder, wait_until

from controllers.displays import DisplayController, DisplaySafety, Warning
from controllers.lighting import NightPlan
from devices.displays import DisplayDriver
from devices.profiles.displays import default_led_board_profile, default_vms_profile
from edge.bus import EventBus
from edge.clock import ManualClock
from edge.dispatcher import Dispatcher, make_command
from edge.events import Outcome, PlanEvent, Priority, Telemetry
from edge.settings import ApproachSettings, CarParkSettings, DisplaySettings, DisplaysSettings
from edge.state import StateStore
from simulators.displays import DisplaySimulator

PARKS = [
    CarParkSettings(id="near", name="P Near", capacity=100, lat=51.510, lon=7.455),
    CarParkSettings(id="far", name="P Far", capacity=200, lat=51.520, lon=7.470),
]


class Daylight:
    """No lighting plan: the displays stay at their day brightness."""

    plan: NightPlan | None = None


@dataclass
class Rig:
    sim: DisplaySimulator
    ctl: DisplayController
    disp: Dispatcher
    clock: ManualClock
    board: str
    sign: str


@pytest_asyncio.fixture
async def rig(
    display_sim: DisplaySimulator,
    display_driver: DisplayDriver,
    display_ids: DisplayIds,
    manual_clock: ManualClock,
    recorder: Recorder,
) -> AsyncIterator[Rig]:
    board, sign = display_ids.boards[0], display_ids.signs[0]
    bus = EventBus()
    state = StateStore(bus, {board: "display", sign: "display"})
    for event in recorder.events:  # what the driver saw so far (the displays online), as in the daemon
        state.apply(event)
    safety = DisplaySafety({board: default_led_board_profile(), sign: default_vms_profile()})
    async with Dispatcher(
        bus=bus, clock=manual_clock, state=state, drivers=[display_driver], policies={"display": safety},
        audit=lambda _r: None, write_timeout_s=2.0,
    ) as disp:  # fmt: skip
        cfg = DisplaysSettings(
            displays=[DisplaySettings(id=board, kind="board"), DisplaySettings(id=sign, kind="sign")],
            car_parks=PARKS,
            approaches=[ApproachSettings(id="north", lat=51.509, lon=7.454, demand=20, signs=[board, sign])],
            freshness_s=200,  # below the signs' own 300 s comm-loss fail-safe
            min_update_s=60,
        )
        ctl = DisplayController(make_kernel(manual_clock, bus, state, disp), cfg, lighting=Daylight())
        yield Rig(display_sim, ctl, disp, manual_clock, board, sign)


async def shows(r: Rig, display: str, text: str) -> None:
    await wait_until(lambda: text in r.sim.shown(display), timeout_s=5, what=f"{display} to show {text!r}")


async def test_guidance_follows_occupancy_with_a_rate_limit(rig: Rig) -> None:
    """Signs guide to the near car park; when it fills they switch, but not faster than the limit."""
    now = rig.clock.now()
    rig.ctl.report("near", 50, True, now)
    rig.ctl.report("far", 150, True, now)
    assert rig.ctl.step(now) == 2
    await shows(rig, rig.board, "P Near")
    await shows(rig, rig.sign, "frei 50")
    rig.clock.advance(10)
    rig.ctl.report("near", 1, True, rig.clock.now())  # full (under the safety margin)
    assert rig.ctl.step(rig.clock.now()) == 0  # within 60 s of the last change: held back
    assert "P Near" in rig.sim.shown(rig.board)
    rig.clock.advance(60)
    rig.ctl.report("near", 1, True, rig.clock.now())
    rig.ctl.report("far", 150, True, rig.clock.now())
    assert rig.ctl.step(rig.clock.now()) == 2
    await shows(rig, rig.board, "P Far")
    assert rig.ctl.stats.held_back >= 1


async def test_stale_numbers_are_never_shown(rig: Rig) -> None:
    """When the data is older than its freshness limit the signs blank at once (no rate limit)."""
    now = rig.clock.now()
    rig.ctl.report("near", 40, True, now)
    rig.ctl.step(now)
    await shows(rig, rig.board, "frei 40")
    rig.clock.advance(201)
    rig.ctl.step(rig.clock.now())
    await wait_until(lambda: rig.sim.shown(rig.board) == "", timeout_s=5, what="blank board")
    assert rig.ctl.stats.stale_fallbacks >= 1


async def test_alert_takes_over_and_expires(rig: Rig) -> None:
    """A severe warning replaces guidance on its displays for its duration, then guidance returns."""
    now = rig.clock.now()
    rig.ctl.report("near", 30, True, now)
    rig.ctl.step(now)
    await shows(rig, rig.board, "P Near")
    rig.ctl.warn(
        Warning("storm", frozenset({rig.board}), "severe", ("STURM", "Parks meiden"), now, now + 150)
    )
    rig.ctl.step(now)
    await shows(rig, rig.board, "STURM")
    assert "P Near" in rig.sim.shown(rig.sign)  # outside the warning's area
    rig.clock.advance(151)
    rig.ctl.report("near", 30, True, rig.clock.now())
    rig.ctl.step(rig.clock.now())
    await shows(rig, rig.board, "P Near")


async def test_content_a_display_cannot_show_is_refused(rig: Rig) -> None:
    """Too many lines for the sign: refused by the policy, nothing sent."""
    now = rig.clock.now()
    body = '{"message_id": 7, "lines": ["a", "b", "c", "d", "e"], "arrow": "none"}'
    cmd = make_command(rig.sign, "content", 7, Priority.OPERATOR, "op", now=now, ttl_s=30, payload=body)
    res = await rig.disp.submit_and_wait(cmd, 3)
    assert res.outcome is Outcome.REFUSED
    assert res.reason.startswith("content_refused")


async def test_the_most_severe_warning_wins(rig: Rig) -> None:
    """Two warnings on one display: the extreme one shows; when it is withdrawn the other returns."""
    now = rig.clock.now()
    rig.ctl.warn(Warning("info", frozenset({rig.board}), "info", ("Stau B1",), now, now + 150))
    rig.ctl.step(now)
    await shows(rig, rig.board, "Stau B1")
    rig.ctl.warn(Warning("flood", frozenset({rig.board}), "extreme", ("HOCHWASSER",), now, now + 150))
    rig.ctl.step(now)
    await shows(rig, rig.board, "HOCHWASSER")
    assert rig.ctl.clear_warning("flood")
    rig.ctl.step(now)
    await shows(rig, rig.board, "Stau B1")


def test_displays_within_an_area() -> None:
    """A warning's circle selects the displays inside it."""
    from edge.clock import ManualClock as Clock

    clock, bus = Clock(0.0), EventBus()
    state = StateStore(bus, {})
    disp = Dispatcher(bus=bus, clock=clock, state=state, drivers=[], policies={}, audit=lambda _r: None)
    cfg = DisplaysSettings(
        displays=[
            DisplaySettings(id="a", kind="board", lat=51.5100, lon=7.4550),
            DisplaySettings(id="b", kind="board", lat=51.5200, lon=7.4700),
        ],
        car_parks=PARKS,
    )
    ctl = DisplayController(make_kernel(clock, bus, state, disp), cfg, lighting=Daylight())
    assert ctl.displays_within(51.5101, 7.4551, 300) == {"a"}
    assert ctl.displays_within(51.5150, 7.4625, 2000) == {"a", "b"}
    assert ctl.displays_within(51.6, 7.6, 500) == set()


async def test_counters_arrive_as_telemetry_and_state_goes_out_as_telemetry_and_plans(rig: Rig) -> None:
    """C-in/C-north: a car park's counter on the bus reaches the controller's run loop, which
    shows it and publishes the car park's state (derived telemetry) and the guidance plan."""
    bus = rig.ctl._bus
    seen = bus.subscribe("test", Telemetry, PlanEvent)
    now = rig.clock.now()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(rig.ctl.run(), name="displays.controller")
        bus.publish(Telemetry("near", now, {"free": 42, "open": True}))
        await shows(rig, rig.board, "frei 42")
        task.cancel()
    derived, plans = [], set()
    while (ev := seen.get_nowait()) is not None:
        if isinstance(ev, Telemetry) and ev.derived and ev.device_id == "near":
            derived.append(ev.values)
        elif isinstance(ev, PlanEvent):
            plans.add(ev.domain)
    assert {"car_park": "near", "name": "P Near", "capacity": 100, "fresh": True, "free": 42,
            "open": True, "ts": now} in derived  # fmt: skip
    assert plans == {"guidance", "warnings"}
    assert rig.ctl.views()["guidance"] is not None


async def test_a_display_never_seen_gets_its_content_once_it_answers(
    display_sim: DisplaySimulator,
    display_driver: DisplayDriver,
    display_ids: DisplayIds,
    manual_clock: ManualClock,
    recorder: Recorder,
) -> None:
    """Nothing is sent to a display before it has answered once (the write could only fail);
    it gets its content as soon as the driver reports it online."""
    board = display_ids.boards[0]
    bus = EventBus()
    state = StateStore(bus, {board: "display"})
    async with Dispatcher(
        bus=bus, clock=manual_clock, state=state, drivers=[display_driver],
        policies={"display": DisplaySafety({board: default_led_board_profile()})}, audit=lambda _r: None, write_timeout_s=2.0,
    ) as disp:  # fmt: skip
        cfg = DisplaysSettings(
            displays=[DisplaySettings(id=board, kind="board")], car_parks=PARKS,
            approaches=[ApproachSettings(id="north", lat=51.509, lon=7.454, demand=20, signs=[board])],
        )  # fmt: skip
        ctl = DisplayController(make_kernel(manual_clock, bus, state, disp), cfg, lighting=Daylight())
        now = manual_clock.now()
        ctl.report("near", 50, True, now)
        assert ctl.step(now) == 0
        assert disp.stats.sent == 0
        assert disp.pending() == 0
        for event in recorder.events:
            state.apply(event)
        assert ctl.step(now) == 1
        await wait_until(lambda: "P Near" in display_sim.shown(board), timeout_s=5, what="content")
