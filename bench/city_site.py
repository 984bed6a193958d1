"""The city bench's knobs (environment variables) and the site files it writes for the daemon.

Every size and interval of `python -m bench city` is an environment variable (bench/__main__.py
passes only `quick` to `run`); `--quick` divides every count by 10 and shortens the window.
The site is written into the run's temp dir from the simulators' endpoints: lamps as
`simulators.lighting.demo_controllers` makes them (ids `lc-001-001`.., wattages by a fixed
rule), charge points in lamp posts spread over the city with the feeder layout of
bench/bench_charging.py (8 cabinets x 5 feeders, 63 A per phase, 160 A per cabinet), bins from
`scripts/make_bins.py`'s street generator on a grid of streets over Dortmund, LED boards and
VMS signs on the roads in, car parks with counters, and the trucks of the waste settings.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bench.common import RUNS

TZ = ZoneInfo("Europe/Berlin")
# A Thursday 05:00 in late November: lamps on and dimmed (sunrise ~08:05), and the waste
# plan's time, so the day's collection plan is made at start-up and the shift fits the day.
START = datetime(2026, 11, 26, 5, 0, tzinfo=TZ).timestamp()
CABINETS = 8
FEEDERS_PER_CABINET = 5
FEEDER_LIMIT_A = 63.0
CABINET_LIMIT_A = 160.0
LAT0, LAT1, LON0, LON1 = 51.46, 51.57, 7.36, 7.60  # Dortmund's bounding box, roughly
LAMP_CLASSES = ("M3", "M4", "M5", "C3", "P3", "P4")


@dataclass(frozen=True, slots=True)
class Knobs:
    """Sizes and intervals of one city run; `from_env` reads `BENCH_CITY_<FIELD>` (upper case)."""

    lamps: int = 53_800  # BENCH_CITY_LAMPS
    lamps_per_controller: int = 100  # BENCH_CITY_LAMPS_PER_CONTROLLER
    poll_s: float = 10.0  # BENCH_CITY_POLL_S: lighting poll interval
    chargers: int = 680  # BENCH_CITY_CHARGERS (one OPC UA server)
    boards: int = 64  # BENCH_CITY_BOARDS: LED boards and VMS signs together
    signs: int = 16  # BENCH_CITY_SIGNS: how many of those are Modbus VMS signs
    carparks: int = 24  # BENCH_CITY_CARPARKS (counters over MQTT)
    carpark_s: float = 60.0  # BENCH_CITY_CARPARK_S: counter report interval
    bins: int = 2_000  # BENCH_CITY_BINS
    uplink_min_s: float = 900.0  # BENCH_CITY_UPLINK_MIN_S
    uplink_max_s: float = 3_600.0  # BENCH_CITY_UPLINK_MAX_S
    trucks: int = 20  # BENCH_CITY_TRUCKS
    truck_s: float = 5.0  # BENCH_CITY_TRUCK_S: truck state interval
    waste_solver_s: float = 10.0  # BENCH_CITY_WASTE_SOLVER_S: the collection plan's time limit (site default)
    window_s: float = 600.0  # BENCH_CITY_WINDOW_S: steady-state window
    cmd_s: float = 3.0  # BENCH_CITY_CMD_S: one operator set_level every this many seconds
    utility_s: float = 60.0  # BENCH_CITY_UTILITY_S: one utility curtailment every this many seconds
    replan_s: float = 300.0  # BENCH_CITY_REPLAN_S: charging re-plan interval
    history_s: float = 300.0  # BENCH_CITY_HISTORY_S: state history snapshot interval
    # BENCH_CITY_TELEMETRY_S: every lamp's counters on MQTT (mqtt.telemetry_interval_s): 15 min,
    # the metering interval; the daemon's 60 s default is 900 QoS 0 messages/s at this size
    telemetry_s: float = 900.0
    lamp_sim_procs: int = 2  # BENCH_CITY_LAMP_SIM_PROCS: processes serving the lamp controllers
    sample_hz: float = 50.0  # BENCH_CITY_SAMPLE_HZ: stack samples per second for CPU by area (0: off)
    start_timeout_s: float = 300.0  # BENCH_CITY_START_TIMEOUT_S
    dashboard_s: float = (
        60.0  # BENCH_CITY_DASHBOARD_S: the dashboard probe's window after the steady one (0: off)
    )
    runs: int = RUNS  # BENCH_CITY_RUNS (default BENCH_RUNS, 3)

    @classmethod
    def from_env(cls, quick: bool, env: dict[str, str] | None = None) -> Knobs:
        """Defaults (1/10 of the counts, a 60 s window, 30 s intervals with `quick`), then the environment."""
        env = dict(os.environ) if env is None else env
        k = cls()
        if quick:
            k = replace(
                k,
                lamps=k.lamps // 10,
                chargers=k.chargers // 10,
                boards=k.boards // 10,
                signs=k.signs // 10,
                carparks=k.carparks // 10,
                bins=k.bins // 10,
                trucks=k.trucks // 10,
                waste_solver_s=5.0,
                window_s=60.0,
                utility_s=10.0,
                replan_s=30.0,
                history_s=30.0,
                lamp_sim_procs=1,
                start_timeout_s=120.0,
                dashboard_s=20.0,
            )
        updates: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"BENCH_CITY_{f.name.upper()}")
            if raw:
                updates[f.name] = int(raw) if isinstance(getattr(k, f.name), int) else float(raw)
        return replace(k, **updates)

    @property
    def controllers(self) -> int:
        return max(1, -(-self.lamps // self.lamps_per_controller))


def _grid(i: int, n: int) -> tuple[float, float]:
    """A point of an n-cell grid over the city, cell i (deterministic)."""
    side = max(1, round(n**0.5))
    r, c = divmod(i, side)
    rows = max(1, -(-n // side))
    return LAT0 + (LAT1 - LAT0) * (r + 0.5) / rows, LON0 + (LON1 - LON0) * (c + 0.5) / side


def lamp_rows(endpoints: Sequence[tuple[str, str, int, int, Any]], chargers: int) -> list[dict[str, object]]:
    """Lamps (and the charge points in some of their posts) as inventory rows."""
    rows: list[dict[str, object]] = []
    for c, (eid, host, port, unit, lamps) in enumerate(endpoints):
        lat, lon = _grid(c, len(endpoints))
        for index, lamp_id in lamps:
            rows.append({"id": lamp_id, "kind": "lamp", "lat": round(lat + index * 2e-5, 6),
                         "lon": round(lon + index * 3e-5, 6), "segment": f"road-{c:03d}", "order": index,
                         "lighting_class": LAMP_CLASSES[c % len(LAMP_CLASSES)], "cabinet": "",
                         "feeder": f"lf-{c:03d}", "flags": "", "controller": eid, "host": host,
                         "port": port, "unit": unit, "index": index,
                         "p_max_w": 30.0 + (7 * c + 3 * index) % 17})  # fmt: skip
    n_feeders = CABINETS * FEEDERS_PER_CABINET
    posts = [rows[round(i * len(rows) / chargers)] for i in range(chargers)] if chargers else []
    out = list(rows)
    for k, post in enumerate(posts):
        f = k % n_feeders
        feeder, cabinet = f"cf-{f + 1:02d}", f"cab-{f // FEEDERS_PER_CABINET + 1}"
        post["feeder"], post["cabinet"] = feeder, cabinet
        out.append({"id": f"CP{k + 1:04d}", "kind": "charger", "lat": post["lat"], "lon": post["lon"],
                    "segment": post["segment"], "cabinet": cabinet, "feeder": feeder, "post": post["id"],
                    "controller": "chargers", "url": "", "max_current_a": 16,
                    "phases": 1 if k % 3 == 2 else 3, "failsafe_current_a": 0})  # fmt: skip
    return out


def write_inventory(path: Path, rows: list[dict[str, object]], charger_url: str) -> None:
    cols = ("id", "kind", "lat", "lon", "segment", "order", "lighting_class", "cabinet", "feeder", "flags",
            "controller", "host", "port", "unit", "index", "p_max_w", "post", "url", "max_current_a",
            "phases", "failsafe_current_a")  # fmt: skip
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, restval="")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "url": charger_url} if r["kind"] == "charger" else r)


def write_bins(path: Path, n: int, seed: int = 11) -> int:
    """`n` bins along a grid of streets over the city (scripts/make_bins.py's generator)."""
    from devices.inventory import write_bins as write
    from scripts.make_bins import Street, _bins

    if n <= 0:
        return 0
    streets = []
    per = 20
    k = -(-n // per)
    for i in range(k):
        lat, lon = _grid(i, k)
        count = min(per, n - i * per)
        kind, road, zone = (
            ("shopping", "pedestrian", "") if i % 10 == 9 else ("residential", "residential", "")
        )
        streets.append(Street((lat, lon - 0.004), (lat, lon + 0.004), kind, road, count, zone))  # type: ignore[arg-type]
    bins = _bins(streets, random.Random(seed), "B", "70b3d57ed004")
    write(path, bins)
    return len(bins)


def _hhmm(ts: float) -> str:
    return f"{datetime.fromtimestamp(ts, TZ):%H:%M}"


def _displays(k: Knobs, sign_ports: Sequence[int]) -> tuple[list[str], list[str], list[str]]:
    """[displays] entries: displays (signs first), approaches of four displays each, car parks."""
    displays, approaches = [], []
    for i in range(k.boards):
        lat, lon = _grid(i, max(1, k.boards))
        is_sign = i < k.signs
        port = f", port = {sign_ports[i]}" if is_sign else ""
        kind = "sign" if is_sign else "board"
        displays.append(
            f'{{ id = "disp-{i + 1:03d}", kind = "{kind}", lat = {lat:.5f}, lon = {lon:.5f}{port} }}'
        )
    ids = [f"disp-{i + 1:03d}" for i in range(k.boards)]
    for a in range(0, len(ids), 4):
        lat, lon = _grid(a, max(1, k.boards))
        signs = ", ".join(f'"{x}"' for x in ids[a : a + 4])
        approaches.append(
            f'{{ id = "ap-{a // 4 + 1}", lat = {lat:.5f}, lon = {lon:.5f}, demand = 20, signs = [{signs}] }}'
        )
    parks = []
    for i in range(k.carparks):
        lat, lon = _grid(i, max(1, k.carparks))
        parks.append(
            f'{{ id = "p-{i + 1:02d}", name = "P {i + 1}", capacity = {150 + 50 * (i % 8)}, lat = {lat:.5f}, lon = {lon:.5f} }}'
        )
    return displays, approaches, parks


def write_site(
    tmp: Path, k: Knobs, site_id: str, mqtt_url: str, opc_port: int, sign_ports: Sequence[int]
) -> Path:
    """site.toml for the run (bins.csv and inventory.csv are written beside it by the caller)."""
    n_feeders = CABINETS * FEEDERS_PER_CABINET
    feeders = ",\n  ".join(
        f'{{ id = "cf-{f + 1:02d}", cabinet = "cab-{f // FEEDERS_PER_CABINET + 1}", limit_a = {FEEDER_LIMIT_A} }}'
        for f in range(n_feeders)
    )
    cabinets = ",\n  ".join(f'{{ id = "cab-{c + 1}", limit_a = {CABINET_LIMIT_A} }}' for c in range(CABINETS))
    displays, approaches, parks = _displays(k, sign_ports)
    trucks = ",\n  ".join(
        f'{{ id = "truck-{t + 1:02d}", volume_l = 60000, weight_kg = 9500, shift = "{_hhmm(START + 60)}-13:00" }}'
        for t in range(k.trucks)
    )
    waste = ""
    if k.bins > 0 and k.trucks > 0:
        waste = f"""
[waste]
bins = "bins.csv"
threshold = 0.9
plan_at = "{_hhmm(START)}"
run_days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
solver_time_s = {k.waste_solver_s}
depot = {{ lat = 51.5015, lon = 7.4435, service_s = 0 }}
disposal = {{ lat = 51.5205, lon = 7.4330, service_s = 900 }}
trucks = [
  {trucks},
]
"""
    sep = ",\n  "
    text = f"""
[site]
id = "{site_id}"
latitude = 51.51
longitude = 7.455
timezone = "Europe/Berlin"
[storage]
url = "sqlite:///{tmp / "edge.db"}"
history_interval_s = {k.history_s}
[mqtt]
url = "{mqtt_url}"
client_id = "edge-{site_id}"
telemetry_interval_s = {k.telemetry_s}
[lighting]
poll_interval_s = {k.poll_s}
[logging]
level = "{os.environ.get("BENCH_CITY_LOG_LEVEL", "warning")}"
[charging]
allow_no_security = true
replan_interval_s = {k.replan_s}
failsafe_current_a = 0
cabinets = [
  {cabinets},
]
feeders = [
  {feeders},
]
[displays]
displays = [
  {sep.join(displays)}
]
car_parks = [
  {sep.join(parks)}
]
approaches = [
  {sep.join(approaches)}
]
{waste}"""
    if not k.chargers:
        text = text.replace("[charging]", "[charging]\n# no charge points")
    (tmp / "site.toml").write_text(text, encoding="utf-8")
    return tmp / "site.toml"


def clock_at(t0_wall: float, wall: float) -> float:
    """The run's clock (speed 1, START at the parent's `t0_wall`) at wall time `wall`."""
    return START + (wall - t0_wall)


def seed_bin_history(db_url: str, bins_path: Path, start: float, seed: int = 5, days: float = 3.0) -> int:
    """The site's history before the run, as a restarted daemon finds it: every bin's fill every
    6 h over the last `days` (state samples, rising to the fill the waste simulator starts at),
    so the collection plan made at start-up has the whole city to plan. Returns rows written."""
    import asyncio

    from devices.inventory import load_bins
    from edge.records import StateSample
    from edge.storage import Storage
    from simulators.waste_bins import FillModel

    bins = load_bins(bins_path)
    if not bins:
        return 0
    model = FillModel(bins, start=start, seed=seed, timezone="Europe/Berlin")
    n = int(days * 4)
    rows = []
    for b in bins:
        f0, rate = model.fill(b.id), model.rate_lph(b.id) / b.volume_l
        for i in range(n, 0, -1):
            fill = max(0.02, f0 - rate * 6 * i)
            values = {"f_cnt": n - i, "distance_mm": round(b.distance_of(fill))}
            rows.append(StateSample(device_id=b.id, ts=start - 6 * 3600 * i, online=True, values=values))

    async def write() -> None:
        async with Storage(db_url) as storage:
            for r in rows:
                storage.add(r)

    asyncio.run(write())
    return len(rows)
