"""Distances on the earth's surface, for every domain that places devices on a map."""

from __future__ import annotations

import math

__all__ = ["EARTH_M", "haversine_m"]

EARTH_M = 6_371_000.0  # mean radius (IUGG), metres


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres between two WGS 84 points (degrees)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_M * math.asin(min(1.0, math.sqrt(a)))
