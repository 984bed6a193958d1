"""Lighting rules without I/O: sun window, adaptive classes, floors, and the safety policy."""

from __future__ import annotations

from datetime import datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from controllers.lighting import (
    LightingSafety,
    build_instance,
    class_level,
    class_steps,
    expected_power,
    night_window,
)
from devices.inventory import load_inventory
from edge.bus import EventBus
from edge.clock import ManualClock
from edge.dispatcher import Dispatcher
from edge.events import Command, Outcome, Priority
from edge.policy import DispatcherView
from edge.settings import LightingSettings, SiteSettings, TrafficStep, load_settings
from edge.state import StateStore
from optimizer.lighting import check_plan, solve

SITE = Path(__file__).parents[2] / "edge" / "app" / "sites" / "kreuzviertel" / "site.toml"
TZ = ZoneInfo("Europe/Berlin")


def ts(y: int, mo: int, d: int, h: int, mi: int = 0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=TZ).timestamp()


def test_class_steps_follow_en13201_values() -> None:
    """One step down from M3 (1.0) is M4 (0.75): 75 %; P4 (5 lx) two steps is P6 (2 lx): 40 %."""
    assert class_level("M3", 0) == 100
    assert class_level("M3", 1) == 75
    assert class_level("M3", 2) == 50
    assert class_level("P4", 2) == 40
    assert class_level("C3", 1) == 67
    assert class_level("P6", 3) == 100  # nothing below P6


def test_traffic_profile_runs_across_midnight() -> None:
    profile = [TrafficStep(start=time(22), steps=1), TrafficStep(start=time(0), steps=2),
               TrafficStep(start=time(5), steps=1), TrafficStep(start=time(6), steps=0)]  # fmt: skip
    assert class_steps(time(18), profile) == 0
    assert class_steps(time(23), profile) == 1
    assert class_steps(time(2), profile) == 2
    assert class_steps(time(5, 30), profile) == 1
    assert class_steps(time(7), profile) == 0


def test_night_window_is_sunset_to_sunrise_in_dortmund() -> None:
    """In late November Dortmund's lights are on from about 16:30 to about 08:05."""
    site = SiteSettings(latitude=51.51, longitude=7.455)
    on, off = night_window(site, LightingSettings(), ts(2026, 11, 26, 20))
    on_l, off_l = datetime.fromtimestamp(on, TZ), datetime.fromtimestamp(off, TZ)
    assert (on_l.day, on_l.hour) == (26, 16)
    assert (off_l.day, off_l.hour) == (27, 8)
    # Offsets move the switching times.
    on2, off2 = night_window(
        site, LightingSettings(on_offset_min=15, off_offset_min=10), ts(2026, 11, 26, 20)
    )
    assert on2 - on == pytest.approx(900)
    assert off - off2 == pytest.approx(600)
    # Early morning belongs to the night that started the evening before.
    on3, _ = night_window(site, LightingSettings(), ts(2026, 11, 27, 3))
    assert on3 == on


def test_power_model_is_linear_with_standby() -> None:
    inv = load_inventory(SITE.parent / "inventory.csv")
    lamp = next(x for x in inv.lamps.values() if x.p_max_w == 38.0)
    assert expected_power(lamp, 100) == pytest.approx(38.5)
    assert expected_power(lamp, 0) == pytest.approx(0.5)
    mid = expected_power(lamp, 50)
    assert lamp.p_min_w < mid < lamp.p_max_w


def test_demo_night_plan_respects_floors_and_saves_energy() -> None:
    """Never-dim and fear-space groups stay at 100 %; the plan beats both baselines."""
    s = load_settings(SITE)
    inv = load_inventory(s.inventory_path())
    on, off = night_window(s.site, s.lighting, ts(2026, 11, 26, 20))
    inst, starts = build_instance(inv, s.site, s.lighting, on, off)
    assert len(starts) == len(inst.slot_start_local_minute)
    plan = solve(inst)
    assert check_plan(inst, plan) == []
    levels = {g.id: g.levels for g in plan.groups}
    for gid, lv in levels.items():
        if gid.endswith(":nd") or gid.startswith("parkweg-westpark"):
            assert set(lv) == {100}, gid
    assert plan.energy_kwh < plan.baseline_dortmund_kwh < plan.baseline_static_kwh


@pytest.fixture
def safety() -> LightingSafety:
    s = load_settings(SITE)
    return LightingSafety(load_inventory(s.inventory_path()), s.site, s.lighting)


@pytest.fixture
def view() -> DispatcherView:
    """A dispatcher's view of nothing: the floors do not look at other devices."""
    bus = EventBus()
    return Dispatcher(
        bus=bus,
        clock=ManualClock(0.0),
        state=StateStore(bus, {}),
        drivers=[],
        policies={},
        audit=lambda _r: None,
    ).view


def cmd(device: str, value: float, prio: Priority, now: float) -> Command:
    return Command("c1", device, "level_cmd", value, prio, "test", now, now + 30)


@pytest.mark.parametrize(
    ("device", "value", "prio", "outcome", "reason"),
    [
        ("L0001", 20, Priority.OPERATOR, Outcome.REFUSED, "under_lighting_floor"),  # never-dim junction
        ("L0001", 20, Priority.PLAN, Outcome.CLAMPED, "under_lighting_floor"),
        ("L0002", 20, Priority.OPERATOR, Outcome.ACCEPTED, ""),
        ("L0002", 150, Priority.OPERATOR, Outcome.REFUSED, "out_of_range"),
        ("L0002", -1, Priority.PLAN, Outcome.REFUSED, "out_of_range"),
        ("NOPE", 50, Priority.OPERATOR, Outcome.REFUSED, "unknown_device"),
    ],
)
def test_safety_policy_at_night(
    safety: LightingSafety,
    view: DispatcherView,
    device: str,
    value: float,
    prio: Priority,
    outcome: Outcome,
    reason: str,
) -> None:
    """Floors hold whoever asks: an operator is refused, the plan is clamped to the floor."""
    v = safety.check(cmd(device, value, prio, ts(2026, 11, 26, 23)), ts(2026, 11, 26, 23), view)
    assert v.outcome is outcome
    assert v.reason.startswith(reason)
    assert v.limit == ("lighting_floor" if reason == "under_lighting_floor" else "")
    if outcome is Outcome.CLAMPED:
        assert v.value == 100


def test_fear_space_floor_and_daytime(safety: LightingSafety, view: DispatcherView) -> None:
    """A fear-space lamp may not be dimmed at night; by day the lamps may be off."""
    inv = load_inventory(SITE.parent / "inventory.csv")
    fear = next(x.id for x in inv.lamps.values() if "fear_space" in x.flags)
    night = ts(2026, 11, 26, 23)
    assert safety.check(cmd(fear, 50, Priority.OPERATOR, night), night, view).outcome is Outcome.REFUSED
    noon = ts(2026, 11, 27, 12)
    assert safety.check(cmd(fear, 0, Priority.PLAN, noon), noon, view).outcome is Outcome.ACCEPTED


class _Accepting:
    """Device stand-in: handles every lamp (nothing is written: the dispatcher is not started)."""

    def handles(self, device_id: str) -> bool:
        return True

    async def write(self, device_id: str, point: str, value: float, timeout: float) -> float:  # noqa: ASYNC109 - the Driver seam
        return value


def test_a_warning_raises_the_lamps_in_its_area_through_the_dispatcher() -> None:
    """Domain policy behind the controller, not in the API: lamps within the warning's circle go
    to full as safety commands held until the warning ends; the others are left alone."""
    from kernel_kit import make_kernel

    from controllers.lighting import LightingController
    from devices.inventory import Inventory, Lamp

    def lamp(lid: str, lat: float) -> Lamp:
        return Lamp(
            id=lid, lat=lat, lon=7.45, segment="s", order=0, lighting_class="P4", cabinet="", feeder="",
            flags=frozenset(), controller="c1", host="127.0.0.1", port=1502, unit=1, index=0, p_max_w=60, p_min_w=2,
        )  # fmt: skip

    inv = Inventory.build([lamp("A", 51.5100), lamp("B", 51.5105), lamp("C", 51.5300)])
    clock, bus = ManualClock(ts(2026, 11, 26, 23)), EventBus()
    state = StateStore(bus, dict.fromkeys(inv.lamps, "lamp"))
    disp = Dispatcher(
        bus=bus, clock=clock, state=state, drivers=[_Accepting()],
        policies={"lamp": LightingSafety(inv, SiteSettings(), LightingSettings())}, audit=lambda _r: None,
    )  # fmt: skip
    ctl = LightingController(make_kernel(clock, bus, state, disp), LightingSettings(), inv=inv)
    end = clock.now() + 600
    assert ctl.raise_for_warning("w1", end, (51.5102, 7.45, 200.0)) == 2
    for lid in ("A", "B"):
        eff = disp.effective(lid, "level_cmd")
        assert eff is not None
        assert (eff.value, eff.priority, eff.source, eff.hold_until) == (
            100,
            Priority.SAFETY,
            "warning:w1",
            end,
        )
    assert disp.effective("C", "level_cmd") is None
    assert ctl.raise_for_warning("w2", end) == 3  # no area: every lamp
