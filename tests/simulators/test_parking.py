"""The car park simulator: arrivals and departures through the day, reproducible, never over capacity."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from edge.clock import ManualClock
from simulators.parking import ParkingSimulator, SimCarPark

TZ = ZoneInfo("Europe/Berlin")
MORNING = datetime(2026, 11, 26, 4, tzinfo=TZ).timestamp()


def run_day(seed: int) -> list[tuple[int, int]]:
    clock = ManualClock(MORNING)
    sim = ParkingSimulator(
        [SimCarPark("big", 200), SimCarPark("bays", 6, tuple(f"{i:016x}" for i in range(6)))],
        clock,
        base_topic="dos/v1/t",
        seed=seed,
    )
    out = []
    for _ in range(24 * 12):  # a day in 5-minute steps
        clock.advance(300)
        sim.step(clock.now())
        out.append((sim.free("big"), sim.free("bays")))
    return out


def test_reproducible_and_within_capacity() -> None:
    a, b = run_day(3), run_day(3)
    assert a == b
    assert run_day(4) != a
    assert all(0 <= big <= 200 and 0 <= bays <= 6 for big, bays in a)


def test_busier_in_the_evening_than_at_night() -> None:
    """Free spaces at 19:00 are fewer than at 04:00 (the arrival rate follows the day)."""
    day = run_day(1)
    night_free = day[11][0]  # about 05:00
    evening_free = day[15 * 12][0]  # about 19:00
    assert evening_free < night_free
    assert night_free > 150
