"""What a new user tripped over on the dashboard (issue 10, 13): the Waste screen and time zones.

Pilot tests on the recorded site of tests/tui/test_app.py, with the messages a user saw changed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

import orjson
import pytest
from textual.app import App
from textual.widgets import Label, Static

from edge.payloads import AlarmMessage, DaemonStatus, new_event_id
from tests.tui.test_app import BASE, SITE, T0, bin_state, recorded
from tui.app import DashboardApp
from tui.model import Change, SiteModel
from tui.views.charging import ChargerLimitForm, LimitDialog
from tui.widgets import FilterTable

BERLIN = ZoneInfo("Europe/Berlin")


def app_with(*changes: tuple[str, bytes], tz: ZoneInfo | None = BERLIN) -> DashboardApp:
    """The recorded site, then `changes` on top (as later messages)."""
    model = SiteModel(SITE)
    model.apply_all([*recorded(), *changes])
    return DashboardApp("mqtt://127.0.0.1:1", SITE, model=model, connect=False, tz=tz)


def truck(route_id: str, stop_index: int, stops_total: int) -> tuple[str, bytes]:
    body = {
        "id": "T1", "online": True, "status": "collecting", "lat": 51.507, "lon": 7.452, "route_id": route_id,
        "stop_index": stop_index, "stops_total": stops_total, "bins_done": stop_index, "bins_total": stops_total,
        "ts": T0,
    }  # fmt: skip
    return f"{BASE}/waste/trucks/T1/state", orjson.dumps(body)


def plan(made_ts: float) -> tuple[str, bytes]:
    """A re-plan: T1 now has route r-T1b of 4 stops, one done."""
    stops = [
        {"seq": i, "kind": k, "id": sid, "eta_ts": made_ts + 600 * i, "done": i == 0}
        for i, (k, sid) in enumerate(
            [("depot", "depot"), ("bin", "B0007"), ("bin", "B0005"), ("depot", "depot")]
        )
    ]
    body = {
        "plan_id": "p-2", "made_ts": made_ts, "reason": "replan", "status": "optimal", "solver": "pyvrp",
        "distance_km": 8.0, "mandatory": 2, "optional": 0, "dropped": [],
        "routes": [{"truck": "T1", "route_id": "r-T1b", "distance_km": 8.0, "stops": stops}],
        "violations": [], "ts": made_ts,
    }  # fmt: skip
    return f"{BASE}/waste/plan", orjson.dumps(body)


def summary_at(ts: float) -> tuple[str, bytes]:
    body = {"bins": 7, "reporting": 6, "trucks": 2, "ts": ts}
    return f"{BASE}/waste/summary", orjson.dumps(body)


def done_total(cell: object) -> tuple[int, int]:
    found = re.search(r"(\d+)/(\d+)", str(cell))
    assert found, cell
    return int(found.group(1)), int(found.group(2))


@pytest.mark.parametrize(
    ("reported", "expected"),
    [
        (truck("r-T1", 34, 21), (1, 4)),  # the truck still counts its old route: the plan's count
        (truck("r-T1b", 34, 4), (4, 4)),  # a count above the total is capped
        (truck("r-T1b", 2, 4), (2, 4)),  # the truck's own live count of the current route
    ],
)
async def test_stops_done_count_the_current_plan_and_never_exceed_the_total(
    reported: tuple[str, bytes], expected: tuple[int, int]
) -> None:
    """After a re-plan the routes table shows done/total of the current plan's stops (never 34/21)."""
    app = app_with(plan(T0 - 600), reported)
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.press("8")
        trucks = app.query_one("#truck-table", FilterTable)
        done, total = done_total(trucks.table.get_cell("T1", "3"))
        assert done <= total
        assert (done, total) == expected


async def test_full_at_shows_the_day_when_it_is_not_today() -> None:
    """ "Full at" is a bare time only for today (in the site's zone); days ahead carry the weekday."""
    # T0 is 2026-09-22 00:00 in Berlin: a bin full in 3 days and one full in two hours
    _, body = bin_state("B0003", "z2", "residential", 0.12)
    later = {**orjson.loads(body), "full_ts": T0 + 3 * 86400 + 3600}
    _, body2 = bin_state("B0002", "z1", "residential", 0.55)
    soon = {**orjson.loads(body2), "full_ts": T0 + 7200}
    app = app_with(
        (f"{BASE}/waste/bins/B0003/state", orjson.dumps(later)),
        (f"{BASE}/waste/bins/B0002/state", orjson.dumps(soon)),
        summary_at(T0),
    )
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.press("8")
        bins = app.query_one("#bin-table", FilterTable)
        far = datetime.fromtimestamp(T0 + 3 * 86400 + 3600, BERLIN)
        assert str(bins.table.get_cell("B0003", "5")) == far.strftime("%a %H:%M")
        assert str(bins.table.get_cell("B0002", "5")) == datetime.fromtimestamp(T0 + 7200, BERLIN).strftime(
            "%H:%M"
        )


async def test_yesterdays_plan_is_not_shown_as_todays() -> None:
    """After midnight (by the daemon's clock) yesterday's retained plan is labelled with its day."""
    app = app_with(plan(T0 - 86400), summary_at(T0))
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.press("8")
        text = str(app.query_one("#waste-summary", Static).render())
        made = datetime.fromtimestamp(T0 - 86400, BERLIN)
        assert "NOT TODAY'S" in text
        assert made.strftime("%d.%m.") in text
    app = app_with(plan(T0 + 60), summary_at(T0 + 3600))  # made just after midnight in Berlin
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.press("8")
        assert "NOT TODAY'S" not in str(app.query_one("#waste-summary", Static).render())


@pytest.fixture
def far_machine_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This machine in Los Angeles, far from the site."""
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("far_machine_zone")
@pytest.mark.parametrize("zone", ["Europe/Berlin", "Asia/Tokyo", None])
async def test_times_are_shown_in_the_sites_zone_not_the_machines(zone: str | None) -> None:
    """With the machine in Los Angeles, the overview shows the daemon's start in the site's zone
    (from its status; the sites' default, Europe/Berlin, before a status names one)."""
    status = DaemonStatus(online=True, site=SITE, version="0.1.0", ts=T0 - 7200, timezone=zone)
    app = app_with((f"{BASE}/status", orjson.dumps(status.model_dump())), tz=None)
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.pause()
        text = str(app.query_one("#overview .body", Static).render())
        site = datetime.fromtimestamp(T0 - 7200, ZoneInfo(zone or "Europe/Berlin")).strftime("%H:%M:%S")
        machine = datetime.fromtimestamp(T0 - 7200).strftime("%H:%M:%S")
        assert site != machine
        assert f"since {site}" in text
        assert f"since {machine}" not in text


def test_a_redelivered_alarm_event_is_shown_once() -> None:
    """The same alarm event twice (a QoS 1 redelivery, same event_id) is one line of history;
    a new transition of the same alarm is another."""
    model = SiteModel(SITE)
    raise_ = AlarmMessage(device_id="L0002", code="lamp_failure", severity="major", active=True, ts=T0)
    body = orjson.dumps(raise_.model_dump())
    model.apply(f"{BASE}/alarms/events", body)
    assert model.apply(f"{BASE}/alarms/events", body) is Change.IGNORED
    assert len(model.events) == 1
    clear = raise_.model_copy(update={"active": False, "ts": T0 + 60, "event_id": new_event_id()})
    model.apply(f"{BASE}/alarms/events", orjson.dumps(clear.model_dump()))
    assert [e.active for e in model.events] == [False, True]


async def test_a_form_shows_a_device_id_as_written_not_as_markup() -> None:
    """A form's title shows an id like `[b]CP-1` as typed; Enter on the last field sends the form."""
    got: list[ChargerLimitForm | None] = []

    class Host(App[None]):
        def on_mount(self) -> None:
            self.push_screen(LimitDialog("[b]CP-1"), got.append)

    app = Host()
    async with app.run_test() as pilot:
        title = str(app.screen.query(Label).first().render())
        assert title == "Limit charge point [b]CP-1 (Esc: cancel)"
        await pilot.press("1", "6", "enter", "enter")
        await pilot.pause()
    assert got == [ChargerLimitForm("[b]CP-1", 16.0, None)]
