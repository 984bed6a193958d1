"""The dashboard at Dortmund's size: 53,800 lamps through the model, the incremental table order
and the virtual table; coalesced batches lose no update (the last value wins for every lamp)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import orjson
import pytest
from textual.pilot import Pilot

from edge.payloads import LampState
from tui.app import DashboardApp, MqttEvent
from tui.client import Received
from tui.model import SiteModel
from tui.table_order import RowOrder
from tui.views.base import Stamps
from tui.views.lighting import LAMP_COLUMNS, lamp_row, lamp_status
from tui.widgets import FilterTable, LinesView

CITY = 53_800
SITE = "dortmund"
BASE = f"dos/v1/{SITE}"
WAIT_S = 120.0
STATUS_COL = [c.label for c in LAMP_COLUMNS].index("Status")
CMD_COL = [c.label for c in LAMP_COLUMNS].index("Cmd%")


def lamp(i: int, level: float, *, online: bool = True, failed: bool = False) -> tuple[str, bytes]:
    seg = f"seg-{i // 50:04d}"
    state = LampState(
        device_id=f"L{i:05d}", online=online, level_cmd=level, level_actual=level, power_w=7 + 0.6 * level,
        failures=["lamp_failure"] if failed else [], segment=seg, group=f"{seg}:M4:std", ts=1.7e9,
    )  # fmt: skip
    return f"{BASE}/lights/L{i:05d}/state", orjson.dumps(state.model_dump(mode="json"))


def city(n: int = CITY) -> list[tuple[str, bytes]]:
    return [lamp(i, 40.0 + (i % 3) * 30, online=i % 997 != 5, failed=i % 1009 == 7) for i in range(n)]


def ids(n: int = CITY) -> list[str]:
    return [f"L{i:05d}" for i in range(n)]


async def until(pilot: Pilot[int], cond: object, what: str) -> None:
    """Let the app run until `cond()` holds (bounded)."""
    assert callable(cond)
    try:
        async with asyncio.timeout(WAIT_S):
            while not cond():
                await pilot.pause(0.05)
    except TimeoutError:
        pytest.fail(f"timed out after {WAIT_S} s waiting for {what}")


def test_city_through_the_model_and_the_table_order() -> None:
    """53,800 lamps folded in batches (as they arrive) and ordered incrementally give the same rows
    as a full sort: by id, filtered by segment, by status, and after a few lamps moved."""
    model = SiteModel(SITE)
    order = RowOrder()
    seen = -1
    msgs = city()
    for start in range(0, len(msgs), 700):  # batches as the client hands them over
        model.apply_all(msgs[start : start + 700])
        changed, gone = model.lamps_since(seen)
        seen = model.version
        order.update([lamp_row(model.lamp_row(k)) for k in changed], gone)
    assert order.shown == ids()
    order.set_query("seg-0107")
    assert order.shown == [f"L{i:05d}" for i in range(107 * 50, 108 * 50)]
    order.set_query("seg-0107 failed")  # narrowing filters what is shown
    assert order.shown == [f"L{i:05d}" for i in range(107 * 50, 108 * 50) if i % 1009 == 7]
    order.set_query("")
    order.set_sort(STATUS_COL, reverse=False)
    # FAILED first, then offline, then the rest by status; ties by id.
    statuses = model.statuses()
    assert order.shown[0] == "L00007"
    assert statuses[order.shown[0]].value == "FAILED"

    order.set_sort(CMD_COL, reverse=True)
    rng = random.Random(12)
    moved = rng.sample(range(CITY), 40)
    model.apply_all([lamp(i, 5.0 + i % 90) for i in moved])
    model.apply_all([(f"{BASE}/lights/L{i:05d}/state", b"") for i in moved[:5]])  # five lamps went away
    changed, gone = model.lamps_since(seen)
    assert sorted(changed) == sorted(f"L{i:05d}" for i in moved[5:])
    assert len(gone) == 5
    order.update([lamp_row(model.lamp_row(k)) for k in changed], gone)
    full = RowOrder()
    full.update([lamp_row(model.lamp_row(k)) for k in model.lamps])
    full.set_sort(CMD_COL, reverse=True)
    assert order.shown == full.shown
    assert len(order.shown) == CITY - 5


def test_aggregates_follow_every_change() -> None:
    """The counts the Overview and the Map read are kept incrementally: equal to a recount after
    lamps changed status, power and segment, and went away."""
    model = SiteModel(SITE)
    model.apply_all(city(5000))
    rng = random.Random(3)
    for _ in range(3):
        batch = [
            lamp(i, rng.choice((0.0, 50.0, 100.0)), online=rng.random() > 0.1)
            for i in rng.sample(range(5000), 800)
        ]
        batch += [(f"{BASE}/lights/L{i:05d}/state", b"") for i in rng.sample(range(5000), 50)]
        model.apply_all(batch)
    assert model.lamp_counts() == Counter(lamp_status(s) for s in model.lamps.values())
    assert model.total_power_w() == pytest.approx(sum(s.power_w or 0.0 for s in model.lamps.values()))
    lamps = model.online_counts()["lamps"]
    assert (lamps.online, lamps.offline) == (
        sum(s.online is True for s in model.lamps.values()),
        sum(s.online is False for s in model.lamps.values()),
    )
    by_segment: dict[str, list[str]] = {}
    for k in sorted(model.lamps):
        by_segment.setdefault(model.lamps[k].segment, []).append(k)
    assert model.segments() == by_segment
    assert dict(model.statuses()) == {k: lamp_status(s) for k, s in model.lamps.items()}


def test_stamps_since_reads_only_the_newer_keys_in_order() -> None:
    stamps = Stamps()
    for v, key in enumerate(["a", "b", "c", "a", "d"], start=1):
        stamps.touch(key, v)
    stamps.drop("b", 6)
    assert stamps.since(0) == (["c", "a", "d"], ["b"])
    assert stamps.since(3) == (["a", "d"], ["b"])
    assert stamps.since(6) == ([], [])


async def test_city_table_pages_and_filters_and_keeps_the_last_value() -> None:
    """The Lights view with 53,800 lamps: each lamp updated twice in coalesced batches shows
    its last level; paging and filtering show the right ids; the Map draws every segment."""
    app = DashboardApp("mqtt://127.0.0.1:1", SITE, connect=False)
    rng = random.Random(5)
    last: dict[int, float] = {}
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.press("2")
        msgs = city()
        for round_ in range(2):  # every lamp twice, the second time shuffled; the last value wins
            order = list(range(CITY)) if round_ == 0 else rng.sample(range(CITY), CITY)
            levels = {i: float(rng.randrange(0, 101)) for i in order}
            batch = msgs if round_ == 0 else [lamp(i, levels[i]) for i in order]
            if round_:
                last.update(levels)
            for start in range(0, CITY, 5000):
                app.post_message(MqttEvent(Received(tuple(batch[start : start + 5000]))))
        lights = app.query_one("#lights", FilterTable)
        table = lights.table
        await until(pilot, lambda: app.model.messages == 2 * CITY, "every message folded")

        def level_shown(key: str) -> object:
            try:
                return table.get_cell(key, "3")
            except KeyError:  # not drawn yet: big batches redraw at most once a second
                return None

        await until(pilot, lambda: level_shown("L53799") == f"{last[CITY - 1]:.0f}", "the last batch shown")
        assert lights.shown_keys == ids()
        wrong = [i for i, level in last.items() if table.get_cell(f"L{i:05d}", "3") != f"{level:.0f}"]
        assert wrong == []

        for _ in range(3):
            await pilot.press("pagedown")
        top = table.scroll_offset.y
        assert top > 0
        on_screen = [table.key_at(top + y) for y in range(table.size.height - 1)]
        assert on_screen == ids()[top : top + table.size.height - 1]
        assert table.key_at(table.cursor_row) == f"L{table.cursor_row:05d}"

        await pilot.press("slash", *"seg-1000")
        await until(pilot, lambda: lights.shown_keys[:1] == ["L50000"], "the filtered rows")
        assert lights.shown_keys == [f"L{i:05d}" for i in range(50_000, 50_050)]
        await pilot.press(*["backspace"] * 8)
        await until(pilot, lambda: len(lights.shown_keys) == CITY, "every row again")

        await pilot.press("escape", "3")
        map_view = app.query_one("#map", LinesView)
        await until(pilot, lambda: "seg-1075 (50)" in map_view.plain, "the map's last segment")
        assert map_view.plain.count("(50)") == CITY // 50
