"""The dashboard against the running demo district: real broker, real daemon, real simulators.

The demo's pieces are wired as `edge demo` wires them (edge/app/demo.py: the Kreuzviertel site and
inventory on free ports, the lamp controllers' Modbus simulator, the charge points' OPC UA
simulator, the displays, the bins and trucks) on the test's broker and database, with a clock at
night running at real speed. The dashboard is the real app with its real MQTT client, driven by
Textual's Pilot: it overrides a lamp and the simulator's register follows; it acknowledges an
alarm and the daemon stores who did it and why; it excludes a bin, is refused forcing it, and
forces another into today's plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

import pytest
from harness import wait_for
from textual.pilot import Pilot

from controllers.lighting import night_window
from devices.inventory import Bin, load_inventory
from edge.app.daemon import Daemon, running, site_bins
from edge.app.demo import (
    SITE_DIR,
    charging_simulator,
    demo_waste,
    remap_ports,
    sim_chargers,
    sim_controllers,
    with_ocpp,
)
from edge.clock import SimClock
from edge.net import free_port
from edge.settings import load_settings
from simulators.displays import DisplaySimulator, SimBoard, SimSign
from simulators.lighting import LightingSimulator
from simulators.waste import WasteSimulator
from tui.app import DashboardApp
from tui.client import DashboardClient
from tui.screens import ConfirmDialog
from tui.views.alarms import AckDialog
from tui.views.lighting import OverrideDialog
from tui.widgets import FilterTable

pytestmark = pytest.mark.slow

WAIT_S = 30.0  # 500 lamps' retained state through the broker on two loaded cores


@dataclass
class District:
    daemon: Daemon
    lamps: LightingSimulator
    bins: list[Bin]


@contextlib.asynccontextmanager
async def demo_district(mqtt_url: str, database_url: str) -> AsyncIterator[District]:
    """The demo district as `edge demo` starts it, on this test's broker and database, at night."""
    site_id = "demo" + uuid.uuid4().hex[:8]  # a broker shared with other tests: topics of our own
    settings = load_settings(SITE_DIR / "site.toml", storage__url=database_url)
    opc_port = free_port()
    inv = remap_ports(
        load_inventory(settings.inventory_path()), f"opc.tcp://127.0.0.1:{opc_port}/dos-edge/chargers"
    )
    signs = [
        x.model_copy(update={"port": free_port()}) if x.kind == "sign" else x
        for x in settings.displays.displays
    ]
    settings = settings.model_copy(
        update={
            "site": settings.site.model_copy(update={"id": site_id}),
            "mqtt": settings.mqtt.model_copy(update={"url": mqtt_url, "client_id": f"edge-{site_id}"}),
            "displays": settings.displays.model_copy(update={"displays": signs}),
            "logging": settings.logging.model_copy(update={"level": "warning"}),
        }
    )
    on, _ = night_window(settings.site, settings.lighting, 1_795_000_000.0)
    clock = SimClock(start=on + 2 * 3600, speed=1.0)
    settings = settings.model_copy(update={"waste": demo_waste(settings, clock.now())})
    settings, passwords = with_ocpp(settings, Path(tempfile.mkdtemp(prefix="dos-edge-tui-")), 1.0)
    bins = site_bins(settings)
    cps, feeders = sim_chargers(inv, settings)
    async with (
        LightingSimulator(sim_controllers(inv), clock, seed=1) as lamps,
        charging_simulator(settings, cps, feeders, clock, passwords, opc_port, 1),
        DisplaySimulator(
            clock,
            boards=[SimBoard(x.id) for x in signs if x.kind == "board"],
            signs=[SimSign(x.id, port=x.port) for x in signs if x.kind == "sign"],
            mqtt_url=mqtt_url,
        ),
        WasteSimulator(
            settings.waste, bins, clock, mqtt_url=mqtt_url, seed=1, timezone=settings.site.timezone
        ),
        running(settings, inv, clock) as daemon,
    ):
        await daemon.link.wait_connected(WAIT_S)
        yield District(daemon, lamps, bins)


async def until(pilot: Pilot[int], cond: object, what: str) -> None:
    """Let the app run until `cond()` holds (bounded)."""
    assert callable(cond)
    try:
        async with asyncio.timeout(WAIT_S):
            while not cond():
                await pilot.pause(0.05)
    except TimeoutError:
        pytest.fail(f"timed out after {WAIT_S} s waiting for {what}")


def command_line(app: DashboardApp) -> str:
    return str(app.query_one("#command").render())


async def test_dashboard_overrides_a_lamp_and_acks_an_alarm_on_the_demo(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    """From the dashboard: a lamp to 30 % (the simulator's register follows, the ack and the new level show), then an ack."""
    async with demo_district(mqtt_url, database_url) as district:
        d, sim, bins = district.daemon, district.lamps, district.bins
        inv = d.inventory
        lamp_id = next(x.id for x in inv.lamps.values() if not x.flags and x.segment == "sonnenstrasse")
        await wait_for(
            lambda: (
                d.lighting.planned_level(lamp_id) is not None
                and sim.lamp(lamp_id)["level_cmd"] == d.lighting.planned_level(lamp_id)
            ),
            "the plan applied",
            WAIT_S,
        )
        assert sim.lamp(lamp_id)["level_cmd"] != 30
        client = DashboardClient(
            mqtt_url, d.settings.site.id, request_timeout_s=WAIT_S, flush_interval_s=0.05
        )
        app = DashboardApp(mqtt_url, d.settings.site.id, client=client, tz=UTC)
        async with app.run_test(size=(160, 50)) as pilot:
            await until(pilot, lambda: app.connected and len(app.model.lamps) == len(inv.lamps), "every lamp")

            # Override one lamp: filter the table to it, o, level and minutes, confirm.
            await pilot.press("2", "slash", *lamp_id, "enter")
            lights = app.query_one("#lights", FilterTable)
            assert lights.shown_keys == [lamp_id]
            await pilot.press("o")
            assert isinstance(app.screen, OverrideDialog)
            await pilot.press(*"30", "enter", *"10", "enter")
            assert isinstance(app.screen, ConfirmDialog)
            await pilot.press("y")
            await until(pilot, lambda: app.last_ack is not None or app.last_error is not None, "the answer")
            assert app.last_error is None
            assert app.last_ack is not None
            assert (app.last_ack.ok, app.last_ack.status) == (True, "confirmed"), app.last_ack
            assert "OK" in command_line(app)
            assert sim.lamp(lamp_id)["level_cmd"] == 30  # the controller's register took it
            await wait_for(lambda: sim.lamp(lamp_id)["level_actual"] == 30, "the lamp to dim", WAIT_S)
            await until(
                pilot,
                lambda: lights.table.get_row(lamp_id)[4] == "30",
                "the dashboard to show the lamp's new level",
            )
            assert app.model.lamps[lamp_id].source.startswith("operator")

            # A lamp fails; the operator acknowledges it with a comment.
            failing = next(x.id for x in inv.lamps.values() if not x.flags and x.id != lamp_id)
            sim.inject(failing, "lamp_failure")
            await pilot.press("5")
            alarms = app.query_one("#alarm-table", FilterTable)
            key = f"{failing}/lamp_failure"
            await until(pilot, lambda: key in alarms.shown_keys, "the alarm on the dashboard")
            alarms.table.move_cursor(row=alarms.shown_keys.index(key))
            await pilot.press("a")
            assert isinstance(app.screen, AckDialog)
            await pilot.press(*"crew sent", "enter", "y")
            await until(
                pilot, lambda: app.model.active_alarms[(failing, "lamp_failure")].acked, "the acked alarm"
            )
            assert app.last_ack is not None
            assert (app.last_ack.ok, app.last_ack.status) == (True, "accepted")
            acked = app.model.active_alarms[(failing, "lamp_failure")]
            assert (acked.acked_by, acked.ack_comment) == (client.client_id, "crew sent")
            await d.storage.flush()
            rows = await asyncio.to_thread(d.storage.alarms, True)
            row = next(r for r in rows if (r.device_id, r.code) == (failing, "lamp_failure"))
            assert (row.acked_by, row.ack_comment) == (client.client_id, "crew sent")

            # Waste: exclude a bin; forcing it is refused with the daemon's reason; force another.
            await pilot.press("8")
            table = app.query_one("#bin-table", FilterTable)
            await until(pilot, lambda: len(table.shown_keys) == len(bins), "every bin on the Waste view")
            first, second = sorted(b.id for b in bins)[:2]

            async def on_bin(bin_id: str, key: str) -> None:
                assert table.select(bin_id)
                app.last_ack = None
                await pilot.press(key)
                assert isinstance(app.screen, ConfirmDialog)
                await pilot.press("y")
                await until(
                    pilot, lambda: app.last_ack is not None or app.last_error is not None, "the answer"
                )

            await on_bin(second, "x")
            assert app.last_ack is not None
            assert app.last_ack.ok, app.last_ack
            await until(pilot, lambda: app.model.bins[second].excluded, "the bin shown excluded")
            await on_bin(second, "f")
            assert app.last_ack is not None
            assert (app.last_ack.ok, app.last_ack.reason) == (False, "excluded: clear it first")
            assert "REFUSED" in command_line(app)
            await on_bin(first, "f")
            assert app.last_ack is not None
            assert app.last_ack.ok, app.last_ack
            # the model first, then the table at its next coalesced redraw
            await until(pilot, lambda: app.model.bins[first].forced, "the bin marked forced")
            await until(pilot, lambda: "FORCED" in str(table.table.get_cell(first, "6")), "FORCED on screen")
            assert d.waste is not None
            assert d.waste.flags() == {"forced": [first], "excluded": [second]}
