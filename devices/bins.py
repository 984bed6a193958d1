"""Bin inventory: every waste bin with a fill sensor, as rows of one CSV file.

A row names the bin, the LoRaWAN sensor under its lid (DevEUI), its position, the
kind of place it stands in (which drives how fast it fills), its volume, the
sensor geometry that turns a distance into a fill level, the road class trucks
reach it by, and an optional restricted zone (pedestrian zone) whose time window
it may only be served in. Every bad row is listed with its line and column.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from devices.inventory import _ID, _Errors, _Row
from edge.errors import ConfigError

BinKind = Literal["residential", "shopping", "park"]
RoadClass = Literal["main", "residential", "pedestrian"]
BIN_KINDS: tuple[BinKind, ...] = ("residential", "shopping", "park")
ROAD_CLASSES: tuple[RoadClass, ...] = ("main", "residential", "pedestrian")
COLUMNS = (
    "id",
    "dev_eui",
    "lat",
    "lon",
    "kind",
    "volume_l",
    "height_mm",
    "blind_zone_mm",
    "density_kg_l",
    "road_class",
    "zone",
)


@dataclass(frozen=True, slots=True)
class Bin:
    """One waste bin and the sensor that measures it."""

    id: str
    dev_eui: str  # 16 lower-case hex digits
    lat: float
    lon: float
    kind: BinKind
    volume_l: float
    height_mm: float  # sensor to the bin's floor
    blind_zone_mm: float  # nearest distance the sensor can measure: "full" is this far away
    density_kg_l: float  # of the loose waste, for the truck's weight capacity
    road_class: RoadClass
    zone: str  # "" or the id of a [[waste.zones]] entry

    def fill_of(self, distance_mm: float) -> float:
        """Fill fraction 0..1 from the sensor's distance to the waste surface.

        The blind zone is the top of the usable height: a reading at or inside it
        means full (or overflowing), a reading at the floor means empty.
        """
        usable = self.height_mm - self.blind_zone_mm
        f = (self.height_mm - distance_mm) / usable
        return min(1.0, max(0.0, f))

    def distance_of(self, fill: float) -> float:
        """The distance a sensor reads at fill fraction `fill` (the inverse of fill_of)."""
        usable = self.height_mm - self.blind_zone_mm
        return self.height_mm - min(1.0, max(0.0, fill)) * usable


def _bin_from(row: Mapping[str, Any], where: str, errors: _Errors) -> Bin | None:
    r = _Row(row)
    try:
        bid = r.text("id")
        if not _ID.match(bid):
            raise ValueError(f"id: {bid!r} is not a valid id (letters, digits, _.:-)")
        eui = r.text("dev_eui").lower()
        if len(eui) != 16 or any(c not in "0123456789abcdef" for c in eui):
            raise ValueError(f"dev_eui: {eui!r} is not 16 hex digits")
        kind = r.text("kind", "residential")
        if kind not in BIN_KINDS:
            raise ValueError(f"kind: {kind!r} is not one of {', '.join(BIN_KINDS)}")
        road = r.text("road_class", "residential")
        if road not in ROAD_CLASSES:
            raise ValueError(f"road_class: {road!r} is not one of {', '.join(ROAD_CLASSES)}")
        height = r.num("height_mm", 200, 5000, 1200)
        blind = r.num("blind_zone_mm", 0, 1000, 250)
        if blind >= height - 100:
            raise ValueError(f"blind_zone_mm: {blind:g} leaves less than 100 mm of the {height:g} mm height")
        return Bin(
            id=bid,
            dev_eui=eui,
            lat=r.num("lat", -90, 90),
            lon=r.num("lon", -180, 180),
            kind=kind,
            volume_l=r.num("volume_l", 10, 10_000, 1100),
            height_mm=height,
            blind_zone_mm=blind,
            density_kg_l=r.num("density_kg_l", 0.01, 1.5, 0.12),
            road_class=road,
            zone=r.text("zone", ""),
        )
    except ValueError as exc:
        errors.add(where, str(exc))
        return None


def parse_bins(rows: Iterable[Mapping[str, Any]], file: str, zones: Iterable[str] = ()) -> list[Bin]:
    """Bins from CSV rows; raise one ConfigError listing every bad row (line and column)."""
    errors = _Errors(file)
    known_zones = set(zones)
    out: list[Bin] = []
    seen_id: dict[str, int] = {}
    seen_eui: dict[str, int] = {}
    for n, row in enumerate(rows, start=2):
        where = f"line {n}"
        b = _bin_from(row, where, errors)
        if b is None:
            continue
        if b.id in seen_id:
            errors.add(where, f"id: {b.id!r} already on line {seen_id[b.id]}")
            continue
        if b.dev_eui in seen_eui:
            errors.add(where, f"dev_eui: {b.dev_eui} already on line {seen_eui[b.dev_eui]}")
            continue
        if b.zone and b.zone not in known_zones:
            errors.add(where, f"zone: {b.zone!r} is not a configured waste zone")
            continue
        seen_id[b.id], seen_eui[b.dev_eui] = n, n
        out.append(b)
    errors.raise_if_any()
    return out


def load_bins(path: Path, zones: Iterable[str] = ()) -> list[Bin]:
    """Read the bin inventory CSV; errors name the file, line and column."""
    try:
        with path.open(encoding="utf-8", newline="") as f:
            return parse_bins(csv.DictReader(f), str(path), zones)
    except FileNotFoundError as exc:
        raise ConfigError("file not found", file=str(path)) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=str(path)) from exc


def write_bins(path: Path, bins: Iterable[Bin]) -> None:
    """Write a bin inventory CSV (for generated sites)."""
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for b in bins:
            w.writerow([getattr(b, c) for c in COLUMNS])
