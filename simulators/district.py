"""The demo district: Dortmund Kreuzviertel, about 500 lamps behind 10 lamp controllers.

Street geometry is schematic (straight lines inside the real bounding box), but the
mix is realistic: main roads in M3 with never-dim junctions and zebra crossings,
residential streets in P3/P4, a bike path with motion-following light, and a park
path kept lit as a fear space. `scripts/make_district.py` writes it as CSV.

Fail-safe currents (what a charger draws when the daemon is gone and its watchdog fires)
are split per feeder: the feeder's limit minus its lamps at full power is the budget, and
as many charge points as it holds get 6 A (the IEC 61851 minimum: a car keeps charging
slowly), spread along the feeder; the others get 0 A (pause until the daemon is back).
`edge check-config` checks the result against site.toml's limits.
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Street:
    name: str
    lighting_class: str
    start: tuple[float, float]  # lat, lon
    end: tuple[float, float]
    lamps: int
    p_max_w: float
    flags: str = ""
    never_dim_every: int = 0  # junction/crossing lamps


STREETS = (
    Street("hohe-strasse", "M3", (51.5050, 7.4625), (51.5150, 7.4620), 50, 70.0, never_dim_every=11),
    Street("sonnenstrasse", "M3", (51.5070, 7.4450), (51.5075, 7.4650), 50, 70.0, never_dim_every=11),
    Street("kreuzstrasse", "P3", (51.5090, 7.4460), (51.5095, 7.4610), 42, 38.0, never_dim_every=18),
    Street("arneckestrasse", "P4", (51.5110, 7.4460), (51.5112, 7.4610), 40, 38.0),
    Street("lindemannstrasse", "P4", (51.5125, 7.4460), (51.5127, 7.4610), 40, 38.0),
    Street("liebigstrasse", "P4", (51.5138, 7.4470), (51.5140, 7.4600), 36, 30.0),
    Street("grosse-heimstrasse", "P3", (51.5055, 7.4480), (51.5145, 7.4485), 46, 38.0, never_dim_every=20),
    Street("kleine-beurhausstrasse", "P4", (51.5060, 7.4520), (51.5140, 7.4522), 40, 30.0),
    Street("chemnitzer-strasse", "P4", (51.5060, 7.4560), (51.5140, 7.4562), 40, 30.0),
    Street("plauener-strasse", "P4", (51.5060, 7.4590), (51.5140, 7.4592), 40, 30.0),
    Street("radweg-tremoniapark", "P4", (51.5052, 7.4455), (51.5052, 7.4615), 44, 25.0, flags="bike_path"),
    Street("parkweg-westpark", "P5", (51.5145, 7.4455), (51.5148, 7.4530), 32, 25.0, flags="fear_space"),
)
LAMPS_PER_CONTROLLER = 50
COLUMNS = ("id", "kind", "lat", "lon", "segment", "order", "lighting_class", "cabinet", "feeder", "flags",
           "controller", "host", "port", "unit", "index", "p_max_w", "p_min_w",
           "post", "url", "max_current_a", "phases", "failsafe_current_a")  # fmt: skip
CHARGER_EVERY = 5  # a charge point in every seventh residential lamp post (NOX-Block style)
CHARGER_URL = "opc.tcp://127.0.0.1:4840/dos-edge/chargers"
LIGHTING_CIRCUITS = frozenset({"feeder-9", "feeder-10"})  # single-phase, live only at night (site.toml)
FEEDER_LIMIT_A = 40.0  # site.toml: the grid operator's limit on the 24/7 feeders
CIRCUIT_LIMIT_A = 25.0  # site.toml: the lighting circuits
FAILSAFE_A = 6.0
VOLTS = 230.0


def split_failsafe(rows: list[dict[str, object]]) -> None:
    """Give each charger row its fail-safe current: 6 A for as many as the feeder's budget
    (limit minus lamps at full power) holds, spread evenly along the feeder, 0 A for the rest."""
    lamps_w: dict[str, float] = {}
    on_feeder: dict[str, list[dict[str, object]]] = {}
    for r in rows:
        feeder = str(r["feeder"])
        if r["kind"] == "lamp":
            lamps_w[feeder] = lamps_w.get(feeder, 0.0) + float(str(r["p_max_w"]))
        else:
            on_feeder.setdefault(feeder, []).append(r)
    for feeder, chargers in on_feeder.items():
        limit = CIRCUIT_LIMIT_A if feeder in LIGHTING_CIRCUITS else FEEDER_LIMIT_A
        budget = limit - lamps_w.get(feeder, 0.0) / VOLTS
        k = max(0, min(len(chargers), int(budget // FAILSAFE_A)))
        chosen = {round(i * len(chargers) / k) for i in range(k)} if k else set()
        for i, r in enumerate(chargers):
            r["failsafe_current_a"] = FAILSAFE_A if i in chosen else 0.0


def district_rows(base_port: int = 15020, host: str = "127.0.0.1", seed: int = 7) -> list[dict[str, object]]:
    """Inventory rows of the demo district, deterministic for a seed."""
    rnd = random.Random(seed)
    rows: list[dict[str, object]] = []
    n = 0
    for street in STREETS:
        for i in range(street.lamps):
            f = i / max(1, street.lamps - 1)
            lat = street.start[0] + (street.end[0] - street.start[0]) * f + rnd.uniform(-2e-5, 2e-5)
            lon = street.start[1] + (street.end[1] - street.start[1]) * f + rnd.uniform(-2e-5, 2e-5)
            flags = street.flags
            if street.never_dim_every and i % street.never_dim_every == 0:
                flags = "never_dim"
            ctrl = n // LAMPS_PER_CONTROLLER
            rows.append(
                {
                    "id": f"L{n + 1:04d}",
                    "kind": "lamp",
                    "lat": round(lat, 6),
                    "lon": round(lon, 6),
                    "segment": street.name,
                    "order": i,
                    "lighting_class": street.lighting_class,
                    "cabinet": f"cab-{ctrl // 2 + 1}",
                    "feeder": f"feeder-{ctrl + 1}",
                    "flags": flags,
                    "controller": f"lc-{ctrl + 1:02d}",
                    "host": host,
                    "port": base_port + ctrl,
                    "unit": 1,
                    "index": n % LAMPS_PER_CONTROLLER,
                    "p_max_w": street.p_max_w,
                    "p_min_w": round(street.p_max_w * 0.1, 1),
                }
            )
            n += 1
    chargers = []
    residential = [r for r in rows if str(r["lighting_class"]).startswith("P") and not r["flags"]]
    for k, r in enumerate(residential[3::CHARGER_EVERY]):
        chargers.append(
            {
                "id": f"CP{k + 1:03d}",
                "kind": "charger",
                "lat": r["lat"],
                "lon": r["lon"],
                "segment": r["segment"],
                "cabinet": r["cabinet"],
                "feeder": r["feeder"],
                "post": r["id"],
                "controller": "chargers",
                "url": CHARGER_URL,
                "max_current_a": 16,
                # posts on the night-only lighting circuits are single-phase, like the circuit
                "phases": 1 if k % 4 == 3 or r["feeder"] in LIGHTING_CIRCUITS else 3,
            }
        )
    split_failsafe(rows + chargers)
    return rows + chargers


def district_csv(base_port: int = 15020, host: str = "127.0.0.1") -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(district_rows(base_port, host))
    return buf.getvalue()
