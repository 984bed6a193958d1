"""Bin and truck alarms: which alarms a bin should have from its latest uplink, their severities.

`bin_alarms` is pure (a reading, the estimator and `now` in; code -> detail out); the
tracker raises and clears the differences through `edge.alarms.Alarms`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from devices.inventory import Bin
from edge.events import Severity

from .fill import HOUR, FillEstimator

FIRE_C = 70.0
OVERFLOW = 0.98
BATTERY_LOW_PCT = 15.0
STALE_INTERVALS = 3.0
SEVERITY: dict[str, Severity] = {
    "fire": Severity.CRITICAL,
    "overflow": Severity.MAJOR,
    "tilt": Severity.MAJOR,
    "lid_open": Severity.MINOR,
    "battery_low": Severity.MINOR,
    "stale": Severity.MINOR,
    "sensor_fault": Severity.MINOR,
    "truck_breakdown": Severity.MAJOR,
    "plan_failed": Severity.MAJOR,
    "bin_skipped": Severity.MAJOR,
}
BIN_ALARMS = ("fire", "overflow", "tilt", "lid_open", "battery_low", "stale", "sensor_fault")
STUCK_S = 86400.0  # a distance identical this long ...
STUCK_RISE = 0.10  # ... while the bin's pattern expects this much rise: a stuck sensor


@dataclass(frozen=True, slots=True)
class BinReading:
    """The values of a bin's latest uplink that the alarms look at."""

    ts: float
    fill: float | None  # None: no plausible distance in the frame
    distance_mm: float | None
    battery: float | None
    temperature: float | None
    lid_open: bool
    tilt: bool
    fire: bool


def plausible(b: Bin, distance_mm: float | None) -> bool:
    """A distance the sensor can have measured: not below the floor, and not deep inside the
    blind zone (0 mm is a blocked or iced transducer, not a bin 100 % full)."""
    return distance_mm is not None and b.blind_zone_mm / 4 <= distance_mm <= b.height_mm + 100


def bin_alarms(
    b: Bin,
    r: BinReading | None,
    est: FillEstimator,
    now: float,
    active: Collection[str] = (),
    same_since: float | None = None,
) -> dict[str, str]:
    """The alarms a bin should have right now, code -> detail.

    `active` are the alarms it has now: fire and overflow clear only well below where they
    were raised (60 degC, 90 %), so sensor noise at the limit does not raise them again and again.
    """
    out: dict[str, str] = {}
    if r is None:
        return out
    fire_c = FIRE_C - 10 if "fire" in active else FIRE_C
    if r.fire or (r.temperature is not None and r.temperature >= fire_c):
        out["fire"] = "fire flag" if r.fire else f"temperature {r.temperature:g} degC"
    overflow = OVERFLOW - 0.08 if "overflow" in active else OVERFLOW
    if r.fill is not None and r.fill >= overflow:
        out["overflow"] = f"fill {r.fill:.0%}"
    if r.tilt:
        out["tilt"] = "bin knocked over"
    if r.lid_open:
        out["lid_open"] = "lid open"
    if r.battery is not None and r.battery < BATTERY_LOW_PCT:
        out["battery_low"] = f"battery {r.battery:g} %"
    limit = STALE_INTERVALS * est.expected_interval_s()
    if now - r.ts > limit:
        out["stale"] = f"no uplink for {(now - r.ts) / 60:.0f} min"
    if r.tilt or r.lid_open:
        pass  # the distance measures nothing useful now; the tilt/lid alarm says why
    elif r.distance_mm is None:
        out["sensor_fault"] = "no plausible distance in the uplink"
    elif r.distance_mm > b.height_mm + 100:
        out["sensor_fault"] = f"distance {r.distance_mm:g} mm is below the bin's floor"
    elif r.distance_mm < b.blind_zone_mm / 4:
        out["sensor_fault"] = f"distance {r.distance_mm:g} mm is deep in the blind zone: transducer blocked?"
    elif est.fault_streak:
        out["sensor_fault"] = "implausible jump in the fill level"
    elif same_since is not None and r.ts - same_since > STUCK_S:
        # `same_since`: when the distance last changed. A bin its pattern says should have risen
        # meanwhile has a stuck sensor (frozen firmware, a transducer blocked at a fixed level).
        rise = est.pattern.integral(same_since, r.ts)
        if rise > STUCK_RISE:
            out["sensor_fault"] = (
                f"distance unchanged for {(r.ts - same_since) / HOUR:.0f} h while {rise:.0%} rise was expected"
            )
    return out
