"""The bin inventory now lives in `devices.inventory` (one inventory module, one row validation).

Kept as a re-export so importers elsewhere in the tree keep working until they import
from `devices.inventory` directly; it holds no code.
"""

from __future__ import annotations

from devices.inventory import BIN_COLUMNS as COLUMNS
from devices.inventory import (
    BIN_KINDS,
    ROAD_CLASSES,
    Bin,
    BinKind,
    RoadClass,
    load_bins,
    parse_bins,
    write_bins,
)

__all__ = [
    "BIN_KINDS",
    "COLUMNS",
    "ROAD_CLASSES",
    "Bin",
    "BinKind",
    "RoadClass",
    "load_bins",
    "parse_bins",
    "write_bins",
]
