"""Lamp positions from an inventory CSV (`id,kind,lat,lon,segment,order,...`) for the map.

The MQTT API carries no coordinates, so the dashboard reads them from the same inventory
file the daemon was configured with, if the operator has it. Rows without a usable
latitude/longitude are skipped and counted.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Position:
    """Where a lamp stands."""

    lat: float
    lon: float
    segment: str = ""
    order: int = 0


@dataclass(frozen=True, slots=True)
class Inventory:
    """Lamp positions by id, and how many rows had none."""

    positions: dict[str, Position]
    skipped: int = 0


def load_positions(path: Path) -> Inventory:
    """Read lamp positions; ValueError if the file has no `id`, `lat` and `lon` columns."""
    positions: dict[str, Position] = {}
    skipped = 0
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = set(reader.fieldnames or ())
        missing = {"id", "lat", "lon"} - fields
        if missing:
            raise ValueError(f"{path}: inventory has no column(s) {', '.join(sorted(missing))}")
        for row in reader:
            if row.get("kind", "lamp") not in ("lamp", ""):
                continue
            try:
                lat, lon = float(row["lat"]), float(row["lon"])
                order = int(row.get("order") or 0)
            except (TypeError, ValueError):
                skipped += 1
                continue
            if not (math.isfinite(lat) and math.isfinite(lon)) or not row["id"]:
                skipped += 1
                continue
            positions[row["id"]] = Position(lat, lon, row.get("segment") or "", order)
    return Inventory(positions, skipped)
