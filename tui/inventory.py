"""Lamp positions from an inventory CSV (`id,kind,lat,lon,segment,order,...`) for the map.

The MQTT API carries no coordinates, so the dashboard reads them from the same inventory
file the daemon was configured with, if the operator has it, through the daemon's own row
reader (`devices.inventory.read_positions`). Rows without a usable latitude/longitude are
skipped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from devices.inventory import read_positions


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
    positions, skipped = read_positions(path)
    return Inventory({i: Position(*p) for i, p in positions.items()}, skipped)
