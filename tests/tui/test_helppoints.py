"""The Help points view: emergency calls interrupt the operator, and are acknowledged, noted, closed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import Input, Static

from edge.payloads_safety import Escalation, HelpPointState, IncidentMessage
from tests.tui.test_app import (
    BASE,
    INVENTORY_CSV,
    SITE,
    T0,
    FakeRequester,
    ack,
    command_line,
    dump,
    make_app,
    recorded_model,
)
from tui import render
from tui.app import DashboardApp, MqttEvent
from tui.client import Received
from tui.inventory import Inventory, load_positions
from tui.model import Change, SiteModel
from tui.screens import ConfirmDialog
from tui.views.helppoints import (
    HelpPointsView,
    IncidentDialog,
    fmt_age,
    helppoint_row,
    incident_row,
    parse_incident_comment,
)
from tui.views.pages import MapPage
from tui.widgets import FilterTable, LinesView


def incident(inc_id: str = "inc-0001", status: str = "open", **changes: object) -> IncidentMessage:
    fields: dict[str, object] = {
        "id": inc_id, "helppoint": "hp-07", "post": "L0042", "street": "Hohe Straße", "lat": 51.505,
        "lon": 7.46, "opened_at": T0 - 150, "status": status, "presses": 2, "caller_cancelled": False,
        "acked_by": None, "acked_at": None, "escalated_at": None, "closed_by": None, "closed_at": None,
        "close_comment": "", "notes": [], "lamps": 6, "displays": ["led-1"],
    }  # fmt: skip
    return IncidentMessage.model_validate({**fields, **changes})


def helppoint(hp_id: str, *, online: bool = True, **changes: object) -> tuple[str, bytes]:
    fields: dict[str, object] = {
        "device_id": hp_id, "online": online, "pressed": False, "tamper": False, "selftest_failed": False,
        "battery": 96.0, "post": "L0042", "street": "Hohe Straße", "alarms": [], "ts": T0,
    }  # fmt: skip
    return f"{BASE}/helppoints/{hp_id}/state", dump(HelpPointState.model_validate({**fields, **changes}))


def retained(inc: IncidentMessage) -> tuple[str, bytes]:
    return f"{BASE}/helppoints/incidents/{inc.id}", dump(inc)


def emptied(inc_id: str) -> tuple[str, bytes]:
    return f"{BASE}/helppoints/incidents/{inc_id}", b""


HELPPOINTS = [
    helppoint("hp-07", pressed=True, incident="inc-0001"),
    helppoint("hp-08", online=False, selftest_failed=True, battery=12.0, post="L0050", street="Sonnenstraße"),
]


async def feed(pilot: Pilot[int], *messages: tuple[str, bytes]) -> None:
    """Hand the app a batch as the MQTT worker would, and wait (bounded) for the coalesced redraw."""
    app = pilot.app
    assert isinstance(app, DashboardApp)
    app.post_message(MqttEvent(Received(tuple(messages))))
    await pilot.pause()
    async with asyncio.timeout(5):
        while app._refresh_timer is not None:
            await pilot.pause(0.02)


def hp_app(requester: FakeRequester | None = None) -> tuple[DashboardApp, list[int]]:
    """The recorded site with its help points; the bell counted, ages read at T0."""
    app = make_app(requester=requester)
    app.model.apply_all(HELPPOINTS)
    rings: list[int] = []
    app.bell = lambda: rings.append(1)  # type: ignore[method-assign]
    view = app.views["helppoints"]
    assert isinstance(view, HelpPointsView)
    view.clock = lambda: T0
    return app, rings


def alert_line(app: DashboardApp) -> str:
    alert = app.query_one("#alert", Static)
    content = alert.render()
    return (content.plain if isinstance(content, Text) else str(content)) if alert.display else ""


# ----- the model ---------------------------------------------------------------------------------


def test_model_folds_calls_help_points_and_escalations() -> None:
    """Calls, help points and escalations land in the model; a new open call raises one interrupt."""
    model = SiteModel(SITE)
    assert model.apply_all([*HELPPOINTS, retained(incident())]) == {Change.HELPPOINTS}
    assert model.bad_total == 0
    assert [i.id for i in model.unacked_incidents()] == ["inc-0001"]
    taken = model.take_interrupts()
    assert [(i.view, i.table, i.key) for i in taken] == [("helppoints", "#incident-table", "inc-0001")]
    assert "Hohe Straße, post L0042" in taken[0].text
    assert model.take_interrupts() == []
    # the same call again (a retained redelivery, its event, its ack): no new interrupt
    acked = incident(status="acknowledged", acked_by="alice", acked_at=T0 - 60)
    model.apply_all([retained(incident()), (f"{BASE}/helppoints/events", dump(acked)), retained(acked)])
    assert model.take_interrupts() == []
    assert model.unacked_incidents() == []
    # a call first seen acknowledged (the dashboard started late) does not interrupt either
    model.apply(*retained(incident("inc-0002", "acknowledged", acked_by="bob")))
    assert model.take_interrupts() == []
    esc = Escalation(target="control-room", incidents=[incident("inc-0003")], ts=T0)
    model.apply(f"{BASE}/helppoints/escalations/control-room", dump(esc))
    assert list(model.escalations) == ["control-room"]
    model.apply(f"{BASE}/helppoints/escalations/control-room", b"")
    assert model.escalations == {}
    assert model.apply(f"{BASE}/helppoints/incidents/inc-9", b"{not json") is Change.BAD
    assert model.bad_payloads["helppoints"] == 1


def test_emptied_or_closed_call_leaves_the_model() -> None:
    """The daemon empties a closed call's retained topic; its closed event removes it as well."""
    model = SiteModel(SITE)
    model.apply_all([retained(incident("inc-1")), retained(incident("inc-2"))])
    model.apply(*emptied("inc-1"))
    assert list(model.incidents) == ["inc-2"]
    closed = incident("inc-2", "closed", closed_by="alice", closed_at=T0, close_comment="false alarm")
    model.apply(f"{BASE}/helppoints/events", dump(closed))
    assert model.incidents == {}
    assert model.incident_log[0].close_comment == "false alarm"
    # a redelivered event is not logged twice
    assert model.apply(f"{BASE}/helppoints/events", dump(closed)) is Change.IGNORED
    assert len(model.incident_log) == 1


def test_rows_say_status_age_and_availability_in_words() -> None:
    """A call's row: OPEN, age, presses, escalation; a help point's: UNAVAILABLE, FAILED self-test."""
    row = incident_row(incident(escalated_at=T0 - 30), None, T0)
    cells = [c.plain if isinstance(c, Text) else c for c in row.cells]
    assert cells[:7] == ["OPEN", "inc-0001", "hp-07", "Hohe Straße (L0042)", "2 min", "2", "-"]
    assert cells[7] != "-"
    model = SiteModel(SITE)
    model.apply_all(HELPPOINTS)
    ok, down = (helppoint_row(h) for _, h in sorted(model.helppoints.items()))
    assert [c.plain if isinstance(c, Text) else c for c in ok.cells] == [
        "hp-07", "available", "ok", "96 %", "Hohe Straße (L0042)", "inc-0001 PRESSED",
    ]  # fmt: skip
    assert [c.plain if isinstance(c, Text) else c for c in down.cells][1:4] == [
        "UNAVAILABLE",
        "FAILED",
        "12 %",
    ]
    assert (fmt_age(45), fmt_age(3 * 3600 + 5 * 60)) == ("45 s", "3 h 05")


def test_comment_is_optional_for_an_ack_only() -> None:
    """An ack may go without a comment (speed first); a note and a close need one."""
    assert parse_incident_comment("ack", "  ") == ""
    assert parse_incident_comment("close", " false   alarm ") == "false alarm"
    for action in ("note", "close"):
        with pytest.raises(ValueError, match="comment"):
            parse_incident_comment(action, "")  # type: ignore[arg-type]


# ----- on the district map ----------------------------------------------------------------------

# The inventory's lamps are a 4 x 3 grid: L0001 the south-west corner, L0012 the north-east one.
L0001, L0012 = (51.5050, 7.4600), (51.5062, 7.4624)
ON_MAP = [
    helppoint("HP-L0001", post="L0001", street="parkweg-westpark", lat=L0001[0], lon=L0001[1]),
    # no position of its own: drawn at its post's, from the inventory
    helppoint("HP-L0006", online=False, post="L0006", street="parkweg-westpark"),
    helppoint(
        "HP-L0012", post="L0012", street="Hohe Straße", lat=L0012[0], lon=L0012[1], incident="inc-0001"
    ),
]
CALL_AT_L0012 = incident(helppoint="HP-L0012", post="L0012", lat=L0012[0], lon=L0012[1])


def inventory(tmp_path: Path) -> Inventory:
    path = tmp_path / "inv.csv"
    path.write_text(INVENTORY_CSV)
    return load_positions(path)


def style_at(line: Text, col: int) -> str:
    return " ".join(str(s.style) for s in line.spans if s.start <= col < s.end)


@pytest.mark.parametrize(("width", "height"), [(40, 12), (80, 24), (160, 50)])
def test_map_draws_help_points_over_their_lamps(tmp_path: Path, width: int, height: int) -> None:
    """Available +, unavailable !, a call H, each in the cell of the lamp post it is in (the lamps'
    own projection); the calls and the unavailable ones are named under the map."""
    inv = inventory(tmp_path)
    model = recorded_model()
    model.apply_all([*ON_MAP, retained(CALL_AT_L0012)])
    lines = render.map_page(model, inv)(width, height)
    assert len(lines) <= height
    heads = len(render.legend_lines(True, width))  # the help points' legend on a line of its own if need be
    assert heads == (1 if width >= 100 else 2)
    assert all(line.cell_len <= width for line in lines[1:])
    legend = " ".join(line.plain for line in lines[:heads])
    for words in ("+ help point", "! unavailable", "H call"):
        assert words in legend
    calls = next(i for i, line in enumerate(lines) if line.plain.startswith("emergency call: "))
    drawn = lines[heads:calls]
    # the same area without the help points: they replace exactly their lamps' symbols
    area = height - 2 - heads - render.HELPPOINT_ROWS
    lamps = render.district_lines(model.statuses(), inv.positions, width, area)
    changed = {
        (r, c): ch
        for r, (a, b) in enumerate(zip(lamps, drawn, strict=True))
        for c, (old, ch) in enumerate(zip(a.plain, b.plain, strict=True))
        if old != ch
    }
    bottom, top = len(drawn) - 1, 0
    east = len(drawn[0].plain) - 1
    middle = next((r, c) for (r, c), ch in changed.items() if ch == "!")
    assert changed == {(bottom, 0): "+", middle: "!", (top, east): "H"}
    assert lamps[middle[0]].plain[middle[1]] == render.SYMBOL[model.statuses()["L0006"]]  # L0006's cell
    assert 0 < middle[0] < bottom
    assert 0 < middle[1] < east
    assert "cyan" in style_at(drawn[bottom], 0)
    assert "red" in style_at(drawn[middle[0]], middle[1])
    assert "reverse" in style_at(drawn[top], east)
    notes = [line.plain.rstrip("…") for line in lines[calls:]]  # cut to the width
    assert "emergency call: HP-L0012 (Hohe Straße, post L0012; inc-0001 NOT ACKNOWLEDGED)".startswith(
        notes[0]
    )
    assert "help point unavailable: HP-L0006 (parkweg-westpark, post L0006)".startswith(notes[1])
    assert len(notes[1]) > 30
    if width >= 80:
        assert notes[1] == "help point unavailable: HP-L0006 (parkweg-westpark, post L0006)"
    assert not any("HP-L0001" in n for n in notes)  # an available one is only drawn


def test_map_without_help_points_is_unchanged(tmp_path: Path) -> None:
    """No help points: the legend, the area and the lines of the lamps alone."""
    inv = inventory(tmp_path)
    model = recorded_model()
    lines = render.map_page(model, inv)(80, 24)
    assert lines[0].plain == render.legend().plain
    assert "help point" not in "".join(line.plain for line in lines)
    lamps = render.district_lines(model.statuses(), inv.positions, 80, 21)
    assert [line.plain for line in lines[1:]] == [line.plain for line in lamps]


def test_map_notes_fit_the_width_and_say_what_is_not_drawn(tmp_path: Path) -> None:
    """Many unavailable help points: as many as fit, then how many more; one far away is not drawn
    (and said so), one with neither a position nor a known post neither."""
    model = recorded_model()
    down = [helppoint(f"HP-{i:03d}", online=False, post="L0006", street="parkweg-westpark") for i in range(9)]
    far = helppoint("HP-FAR", post="L9999", lat=52.0, lon=8.0)
    nowhere = helppoint("HP-NOWHERE", post="L9998")
    model.apply_all([*down, far, nowhere])
    lines = [line.plain for line in render.map_page(model, inventory(tmp_path))(80, 24)]
    note = next(line for line in lines if line.startswith("help point unavailable: HP-000 ("))
    assert len(note) <= 80
    assert note.endswith(" more")
    listed = note.count("(parkweg-westpark, post L0006)")
    assert f"+{9 - listed} more" in note
    assert "2 help point(s) not within the map are not drawn." in lines
    assert not any("emergency call" in line for line in lines)


def test_map_without_inventory_lists_help_points_above_the_segments() -> None:
    """No positions to draw at: the unavailable help points are still named, before the segments."""
    model = recorded_model()
    model.apply_all(ON_MAP[1:2])
    lines = [line.plain for line in render.map_page(model, None)(80, 24)]
    note = lines.index("help point unavailable: HP-L0006 (parkweg-westpark, post L0006)")
    assert lines[note - 1].startswith("No inventory")
    assert lines[note + 1].startswith("hohe-strasse (4)")  # the first segment


async def test_map_redraws_when_a_help_point_goes_unavailable(tmp_path: Path) -> None:
    """The Map shows help point changes: offline, the ! and its line; back online, a + again."""
    assert Change.HELPPOINTS in MapPage.shows
    path = tmp_path / "inv.csv"
    path.write_text(INVENTORY_CSV)
    app = make_app(inventory=path)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3")
        view = app.query_one("#map", LinesView)
        await until(pilot, lambda: view.plain.startswith("X FAILED"))
        assert "help point" not in view.plain
        await feed(pilot, ON_MAP[0], ON_MAP[1])
        await until(pilot, lambda: "help point unavailable: HP-L0006" in view.plain)
        drawn = map_cells(view)
        assert drawn.count("!") == 1
        assert drawn.count("+") == 1
        await feed(pilot, helppoint("HP-L0006", post="L0006", street="parkweg-westpark"))
        await until(pilot, lambda: "help point unavailable" not in view.plain)
        assert "!" not in map_cells(view)
        assert map_cells(view).count("+") == 2


def map_cells(view: LinesView) -> str:
    """The map's cells, without the legend (its symbols in words) and the lines under the map."""
    lines = view.plain.splitlines()
    return "\n".join(line for line in lines if not any(w in line for w in ("FAILED", "help point", ":")))


async def until(pilot: Pilot[int], cond: Callable[[], bool]) -> None:
    """Let the app run until `cond()` holds (the Map redraws at most once a second)."""
    async with asyncio.timeout(5):
        while not cond():
            await pilot.pause(0.05)


# ----- the app: a new call takes the operator ----------------------------------------------------


async def test_new_call_rings_shows_banner_and_selects_it() -> None:
    """A call not seen before: the bell, a banner with street and post, the Help points view on it."""
    app, rings = hp_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        assert alert_line(app) == ""
        await feed(pilot, retained(incident("inc-0001", opened_at=T0 - 600)), retained(incident("inc-0002")))
        assert rings == [1]
        line = alert_line(app)
        assert "EMERGENCY CALL at Hohe Straße, post L0042" in line
        assert "(+1 more)" in line
        assert app.view == "helppoints"
        calls = app.query_one("#incident-table", FilterTable)
        assert app.focused is calls.table
        assert calls.selected_key == "inc-0001"
        assert calls.shown_keys == ["inc-0001", "inc-0002"]
        assert str(calls.table.get_cell("inc-0001", "4")) == "10 min"
        # the same calls again (retained, on a reconnect) ring no more; the operator stays where they are
        await pilot.press("2")
        await feed(pilot, retained(incident("inc-0001", opened_at=T0 - 600)))
        assert rings == [1]
        assert app.view == "lights"
        # acknowledged calls leave the banner
        for inc_id in ("inc-0001", "inc-0002"):
            await feed(pilot, retained(incident(inc_id, "acknowledged", acked_by="alice")))
        assert alert_line(app) == ""


async def test_call_waits_for_an_open_form_then_takes_the_screen() -> None:
    """A call that arrives while a form is open rings at once but opens its view only when it closes."""
    app, rings = hp_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2", "down", "o")
        form = app.screen
        await feed(pilot, retained(incident()))
        assert rings == [1]
        assert app.screen is form
        assert "EMERGENCY CALL" in alert_line(app)
        await pilot.press("escape")
        async with asyncio.timeout(5):
            while app.view != "helppoints":
                await pilot.pause(0.05)
        assert app.query_one("#incident-table", FilterTable).selected_key == "inc-0001"


async def test_emptied_call_topic_removes_the_row() -> None:
    """When the daemon empties a closed call's retained topic its row goes."""
    app, _ = hp_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await feed(pilot, retained(incident("inc-1")), retained(incident("inc-2")))
        calls = app.query_one("#incident-table", FilterTable)
        assert calls.shown_keys == ["inc-1", "inc-2"]
        await feed(pilot, emptied("inc-1"))
        assert calls.shown_keys == ["inc-2"]
        helppoints = app.query_one("#helppoint-table", FilterTable)
        assert helppoints.shown_keys == ["hp-07", "hp-08"]
        assert str(helppoints.table.get_cell("hp-08", "1")) == "UNAVAILABLE"


# ----- the app: acknowledge, note, close ---------------------------------------------------------


async def test_ack_then_close_send_the_incident_requests() -> None:
    """a acknowledges (Enter: no comment needed), c closes with a comment; each is confirmed, then sent."""
    fake = FakeRequester(ack("accepted"))
    app, _ = hp_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await feed(pilot, retained(incident()))
        await pilot.press("a")
        assert isinstance(app.screen, IncidentDialog)
        await pilot.press("enter")
        assert isinstance(app.screen, ConfirmDialog)
        what = str(app.screen.query_one("#what", Static).render())
        assert "Acknowledge emergency call inc-0001 at Hohe Straße, post L0042 as dashboard" in what
        assert f"Request: {BASE}/cmd/helppoints/incidents/inc-0001" in what
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        topic = f"{BASE}/cmd/helppoints/incidents/inc-0001"
        assert fake.calls == [(topic, {"action": "ack", "comment": "", "by": "dashboard"})]
        assert "ack call inc-0001:" in command_line(app)
        assert "OK" in command_line(app)
        # once acknowledged, a is refused here (a note is what is left); c asks for a comment
        await feed(pilot, retained(incident(status="acknowledged", acked_by="dashboard")))
        await pilot.press("a")
        assert "already acknowledged" in command_line(app)
        await pilot.press("c", "enter")
        assert isinstance(app.screen, IncidentDialog)
        assert "say what happened" in str(app.screen.query_one("#error", Static).render())
        app.screen.query_one("#comment", Input).value = "person helped, ambulance left"
        await pilot.press("enter", "y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert fake.calls[-1] == (
            topic,
            {"action": "close", "comment": "person helped, ambulance left", "by": "dashboard"},
        )
        await pilot.press("n", *"police informed", "enter", "y")
        await app.workers.wait_for_complete()
        assert fake.calls[-1] == (topic, {"action": "note", "comment": "police informed", "by": "dashboard"})


async def test_refused_close_shows_the_reason_and_viewer_has_no_commands() -> None:
    """A refusal shows the daemon's reason and rings; a viewer is offered no call commands."""
    fake = FakeRequester(ack("refused", "unknown_incident: inc-0001"))
    app, rings = hp_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await feed(pilot, retained(incident()))
        await pilot.press("c", *"done", "enter", "y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert "REFUSED" in command_line(app)
        assert "unknown_incident" in command_line(app)
        assert rings == [1, 1]  # the call, then the refusal
    viewer = make_app("viewer")
    async with viewer.run_test(size=(120, 40)) as pilot:
        await pilot.press("9")
        shown = {b.binding.action for b in viewer.active_bindings.values() if b.enabled}
        assert not {"ack_incident", "note_incident", "close_incident"} & shown
