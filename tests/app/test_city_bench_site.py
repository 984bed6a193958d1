"""The city bench's site (bench/city_site.py) is one the daemon accepts, at any size the knobs give.

Cheap: no process, no broker; the full bench is not part of the tests.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.city_site import START, Knobs, lamp_rows, seed_bin_history, write_bins, write_inventory, write_site
from controllers.charging_safety import failsafe_problems
from devices.inventory import load_inventory
from edge.app.daemon import device_kinds, site_bins
from edge.records import StateSample
from edge.settings import load_settings
from edge.storage import Storage


def test_knobs_come_from_the_environment_and_quick_is_a_tenth() -> None:
    full = Knobs.from_env(False, env={})
    assert (full.lamps, full.controllers, full.chargers, full.bins, full.trucks) == (
        53_800,
        538,
        680,
        2_000,
        20,
    )
    quick = Knobs.from_env(True, env={"BENCH_CITY_LAMPS": "5000", "BENCH_CITY_POLL_S": "2.5"})
    assert (quick.lamps, quick.poll_s, quick.chargers, quick.window_s) == (5000, 2.5, 68, 60.0)


def test_the_written_site_loads_with_every_kind_of_device(tmp_path: Path) -> None:
    k = Knobs.from_env(False, env={"BENCH_CITY_LAMPS": "30", "BENCH_CITY_LAMPS_PER_CONTROLLER": "10",
                                   "BENCH_CITY_CHARGERS": "5", "BENCH_CITY_BOARDS": "5", "BENCH_CITY_SIGNS": "2",
                                   "BENCH_CITY_CARPARKS": "2", "BENCH_CITY_BINS": "45", "BENCH_CITY_TRUCKS": "3"})  # fmt: skip
    endpoints = [
        (
            f"lc-{c + 1:03d}",
            "127.0.0.1",
            16000 + c,
            1,
            tuple((i, f"lc-{c + 1:03d}-{i + 1:03d}") for i in range(10)),
        )
        for c in range(k.controllers)
    ]
    rows = lamp_rows(endpoints, k.chargers)
    write_inventory(tmp_path / "inventory.csv", rows, "opc.tcp://127.0.0.1:4999/dos-edge/chargers")
    assert write_bins(tmp_path / "bins.csv", k.bins) == 45
    config = write_site(tmp_path, k, "city-test", "mqtt://127.0.0.1:1883", 4999, [17001, 17002])

    settings = load_settings(config)
    inv = load_inventory(settings.inventory_path())
    bins = site_bins(settings)
    kinds = list(device_kinds(settings, inv, bins).values())
    counts = {
        kind: kinds.count(kind)
        for kind in ("lamp", "controller", "charger", "display", "car_park", "bin", "truck")
    }
    assert counts == {
        "lamp": 30,
        "controller": 3,
        "charger": 5,
        "display": 5,
        "car_park": 2,
        "bin": 45,
        "truck": 3,
    }
    assert failsafe_problems(settings.charging, inv) == []
    assert sorted(d.kind for d in settings.displays.displays).count("sign") == 2

    written = seed_bin_history(settings.storage.url, tmp_path / "bins.csv", START)
    assert written == 45 * 12

    async def read() -> list[StateSample]:
        async with Storage(settings.storage.url) as storage:
            return list(storage.history(bins[0].id))

    history = asyncio.run(read())
    assert len(history) == 12
    assert all(s.ts < START for s in history)
