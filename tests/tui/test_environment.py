"""The Environment view: sensors with their trend and health, rules firing, warnings to decide on."""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.widgets import Sparkline, Static

from edge.payloads_safety import EnvWarning, RulesMessage, RuleStatus, SensorState
from tests.tui.test_app import BASE, SITE, T0, FakeRequester, ack, command_line, dump, make_app
from tests.tui.test_helppoints import feed
from tui.model import Change, SiteModel
from tui.screens import ConfirmDialog
from tui.views.environment import HISTORY, RESAMPLE_S, main_metric, sensor_row, trend
from tui.widgets import FilterTable


def sensor(
    sid: str,
    value: float,
    *,
    ts: float = T0,
    status: str = "ok",
    metric: str = "level_cm",
    group: str = "ruhr",
) -> tuple[str, bytes]:
    state = SensorState(
        device_id=sid, profile="lorawan_water_level", group=group, online=True, status=status,  # type: ignore[arg-type]
        values={metric: value, "battery": 88.0}, alarms=[], ts=ts,
    )  # fmt: skip
    return f"{BASE}/environment/sensors/{sid}/state", dump(state)


def warning(wid: str, status: str, *, severity: str = "severe") -> tuple[str, bytes]:
    w = EnvWarning(
        id=wid, rule="flood-ruhr", status=status, severity=severity, lines=["HOCHWASSER", "Ufer meiden"],  # type: ignore[arg-type]
        start=T0 - 300, end=T0 + 3600, area=[51.5, 7.46, 800.0], sensors=["wl-1", "wl-2"], value=212.0,
    )  # fmt: skip
    return f"{BASE}/environment/warnings/{wid}", dump(w)


RULES = RulesMessage(
    rules=[
        RuleStatus(
            id="flood-ruhr", group="ruhr", metric="level_cm", firing=True, since=T0 - 300, warning="w-1"
        ),
        RuleStatus(id="storm", group="wind", metric="wind_gust_ms", firing=False, since=None, warning=None),
    ],
    ts=T0,
)
SITE_ENV = [
    sensor("wl-1", 180.0),
    sensor("wl-2", 175.0, status="stale"),
    sensor("rain-1", 12.5, metric="rain_mm_h", group="city"),
    (f"{BASE}/environment/rules", dump(RULES)),
    warning("w-1", "proposed"),
    warning("w-2", "issued", severity="warning"),
]


def env_app(requester: FakeRequester | None = None):  # type: ignore[no-untyped-def]
    app = make_app(requester=requester)
    app.model.apply_all(SITE_ENV)
    return app


# ----- the model ---------------------------------------------------------------------------------


def test_model_folds_sensors_rules_warnings_and_cap() -> None:
    """Every environment topic lands in the model; an emptied or finished warning leaves it."""
    model = SiteModel(SITE)
    assert model.apply_all(SITE_ENV) == {Change.ENVIRONMENT}
    assert model.bad_total == 0
    assert sorted(model.env_sensors) == ["rain-1", "wl-1", "wl-2"]
    assert [r[0] for r in model.firing_rules()] == ["flood-ruhr"]
    assert [w.id for w in model.env_warnings_sorted()] == ["w-1", "w-2"]  # the proposed one first
    cap = b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><msgType>Alert</msgType></alert>'
    model.apply(f"{BASE}/alerts/cap/w-2", cap)
    assert model.cap_types == {"w-2": "Alert"}
    model.apply(*warning("w-2", "withdrawn"))
    model.apply(f"{BASE}/environment/warnings/w-1", b"")
    assert model.env_warnings == {}
    model.apply(f"{BASE}/environment/sensors/wl-1/state", b"")
    assert "wl-1" not in model.env_sensors
    assert "wl-1" not in model.env_history
    assert model.apply(f"{BASE}/environment/rules", b"[1]") is Change.BAD


def test_sparkline_history_grows_and_stays_bounded() -> None:
    """Each new reading adds a value; a republished unchanged state does not; at most HISTORY kept."""
    model = SiteModel(SITE)
    model.apply(*sensor("wl-1", 100.0))
    model.apply(*sensor("wl-1", 100.0, ts=T0 + 5))  # the daemon's republish: same reading
    assert list(model.env_history["wl-1"]) == [100.0]
    model.apply(*sensor("wl-1", 101.0, ts=T0 + 10))
    model.apply(*sensor("wl-1", 101.0, ts=T0 + 10 + RESAMPLE_S))  # unchanged, but a minute on
    assert list(model.env_history["wl-1"]) == [100.0, 101.0, 101.0]
    model.apply(*sensor("wl-1", 999.0, ts=T0 + 200, status="implausible"))
    assert len(model.env_history["wl-1"]) == 3  # the rules ignore it, so does the trend
    for i in range(2 * HISTORY):
        model.apply(*sensor("wl-1", 100.0 + i, ts=T0 + 300 + i))
    history = list(model.env_history["wl-1"])
    assert len(history) == HISTORY
    assert history[-1] == 100.0 + 2 * HISTORY - 1
    assert trend(model.env_history["wl-1"]).plain.endswith("█")
    assert trend(deque([5.0, 4.0])).plain.endswith("█▁")  # the lowest value still shows
    assert trend(None).plain == "·" * 16


def test_stale_and_implausible_sensors_are_marked_in_words() -> None:
    """Status in capitals (and colour) for what the rules do not use; the main metric with its unit."""
    model = SiteModel(SITE)
    model.apply_all([sensor("wl-1", 180.0), sensor("wl-2", 175.0, status="stale")])
    model.apply(*sensor("wl-3", 9000.0, status="implausible"))
    cells = {
        k: [
            c.plain if isinstance(c, Text) else c for c in sensor_row(s, model.env_history.get(k), None).cells
        ]
        for k, s in model.env_sensors.items()
    }
    assert cells["wl-1"][2:4] == ["ok", "180.0 cm  level_cm"]
    assert cells["wl-2"][2] == "STALE"
    assert cells["wl-3"][2] == "IMPLAUSIBLE"
    assert main_metric({"battery": 90.0, "pm2_5": 12.0, "flag": True}) == "pm2_5"
    assert main_metric({"zeta": 1.0, "alpha": 2.0}) == "alpha"


# ----- the app -----------------------------------------------------------------------------------


async def test_view_shows_warnings_rules_and_sensors_with_trend() -> None:
    """0 opens the Environment view: warnings, the rules firing, sensors (STALE marked), a sparkline."""
    app = env_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("0")
        assert app.view == "environment"
        warnings = app.query_one("#env-warning-table", FilterTable)
        assert warnings.shown_keys == ["w-1", "w-2"]
        assert app.focused is warnings.table
        assert str(warnings.table.get_cell("w-1", "0")) == "PROPOSED"
        rules = str(app.query_one("#env-rules", Static).render())
        assert "flood-ruhr (ruhr level_cm, since" in rules
        assert "→ w-1" in rules
        assert "storm" not in rules
        sensors = app.query_one("#sensor-table", FilterTable)
        assert sensors.shown_keys == ["rain-1", "wl-1", "wl-2"]
        assert str(sensors.table.get_cell("wl-2", "2")) == "STALE"
        sensors.select("wl-1")
        await pilot.pause()
        spark = app.query_one("#sensor-spark", Sparkline)
        assert list(spark.data or []) == [180.0]
        await feed(pilot, sensor("wl-1", 186.0, ts=T0 + 60), sensor("wl-1", 193.0, ts=T0 + 120))
        assert list(spark.data or []) == [180.0, 186.0, 193.0]
        assert "180.0..193.0, now 193.0" in str(app.query_one("#sensor-caption", Static).render())
        await feed(pilot, sensor("wl-2", 176.0, ts=T0 + 60, status="ok"))
        assert str(sensors.table.get_cell("wl-2", "2")) == "ok"


async def test_issue_reject_withdraw_send_the_warning_requests() -> None:
    """i issues the proposed warning, w withdraws the issued one; a command that does not fit says why."""
    fake = FakeRequester(ack("accepted"))
    app = env_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("0", "w")  # w-1 is proposed: nothing to withdraw
        assert "w-1 is proposed: issue (i) or reject (x) it" in command_line(app)
        await pilot.press("i")
        assert isinstance(app.screen, ConfirmDialog)
        what = str(app.screen.query_one("#what", Static).render())
        assert "Issue the proposed warning w-1" in what
        assert "SEVERE: HOCHWASSER / Ufer meiden" in what
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        comment = {"comment": "operator dashboard", "by": "dashboard"}
        assert fake.calls == [(f"{BASE}/cmd/environment/warnings/w-1", {"action": "confirm", **comment})]
        assert "confirm w-1:" in command_line(app)
        await pilot.press("x", "y")
        await app.workers.wait_for_complete()
        assert fake.calls[-1] == (f"{BASE}/cmd/environment/warnings/w-1", {"action": "reject", **comment})
        await pilot.press("down", "i")
        assert "w-2 is issued: withdraw it (w)" in command_line(app)
        await pilot.press("w", "y")
        await app.workers.wait_for_complete()
        assert fake.calls[-1] == (f"{BASE}/cmd/environment/warnings/w-2", {"action": "withdraw", **comment})
        # the warning ends: the daemon empties its topic and the row goes
        await feed(pilot, (f"{BASE}/environment/warnings/w-2", b""))
        assert app.query_one("#env-warning-table", FilterTable).shown_keys == ["w-1"]
