"""Every configured device is registered in the state store (issue 10, 13: `state_unknown_device`).

Feeders and car parks were missing from the store, so their alarms (`feeder_near_limit`,
`occupancy_stale`) were logged as unknown devices and never reached their state.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from devices.inventory import load_inventory
from edge.app.daemon import device_kinds, running, site_bins
from edge.app.demo import SITE_DIR, demo_waste, remap_ports, with_ocpp
from edge.clock import SimClock
from edge.events import Severity
from edge.settings import load_settings

WAIT_S = 10.0


async def test_demo_site_daemon_knows_every_configured_device(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    """A daemon on the demo site takes alarms on every configured device without
    `state_unknown_device`, and still logs it (once) for an id nobody configured."""
    clock = SimClock(start=time.time(), speed=1.0)
    settings = load_settings(
        SITE_DIR / "site.toml",
        storage__url=database_url,
        mqtt__url=mqtt_url,
        mqtt__protocol="3.1.1",
        charging__allow_no_security=True,
    )
    settings = settings.model_copy(update={"waste": demo_waste(settings, clock.now())})
    settings, _passwords = with_ocpp(settings, tmp_path, 1.0)
    inv = remap_ports(load_inventory(settings.inventory_path()), "opc.tcp://127.0.0.1:9/none")
    ch, dsp = settings.charging, settings.displays
    # what each domain's controller raises alarms on, read from the configuration itself
    configured: dict[str, list[str]] = {
        "feeder": [f.id for f in ch.feeders],
        "cabinet": sorted({f.cabinet for f in ch.feeders} | {c.id for c in ch.cabinets}),
        "car_park": [c.id for c in dsp.car_parks],
        "display": [d.id for d in dsp.displays],
        "charger": list(inv.chargers),
        "lamp": list(inv.lamps)[:5],
        "controller": list(inv.controllers),
        "bin": [b.id for b in site_bins(settings)][:5],
        "truck": [t.id for t in settings.waste.trucks],
    }
    assert all(configured.values()), "the demo site configures every kind"
    kinds = device_kinds(settings, inv, site_bins(settings))
    for kind, ids in configured.items():
        assert {kinds.get(i) for i in ids} == {kind}, kind
    every = [i for ids in configured.values() for i in ids]
    with capture_logs() as logs:
        async with running(settings, inv, clock, drain_s=0.5) as d:
            for dev in every:
                d.alarms.set(dev, "test_alarm", True, Severity.WARNING, "registration test")
            d.alarms.set("nobody-42", "test_alarm", True, Severity.WARNING)
            d.alarms.set("nobody-42", "test_alarm", False, Severity.WARNING)

            def arrived() -> bool:
                return all("test_alarm" in (s.alarms if (s := d.state.get(i)) else {}) for i in every)

            async with asyncio.timeout(WAIT_S):
                while not arrived():  # noqa: ASYNC110 - the store applies bus events; nothing to await
                    await asyncio.sleep(0.01)
            async with asyncio.timeout(WAIT_S):
                while d.state.unknown_devices < 2:  # noqa: ASYNC110 - as above
                    await asyncio.sleep(0.01)
            for feeder in configured["feeder"]:
                state = d.state.get(feeder)
                assert state is not None
                assert state.kind == "feeder"
    unknown: list[dict[str, Any]] = [e for e in logs if e["event"] == "state_unknown_device"]
    assert [e["device_id"] for e in unknown] == ["nobody-42"], unknown
