"""pytest plugin: a real lighting simulator over TCP, a driver on it.

Registered in tests/conftest.py (`pytest_plugins`; tests/ is on sys.path, see pyproject.toml).

Fixtures:
- `manual_clock`: a ManualClock shared by simulator and driver (time moves when told).
- `recorder`: collects published events and waits for conditions with a timeout.
- `lighting_sim`: 2 controllers x 4 lamps on free ports of 127.0.0.1 (ManualClock).
- `lighting_driver`: a ModbusLightingDriver polling `lighting_sim` every 20 ms.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from waiting import Recorder

from devices.lighting import ModbusLightingDriver
from edge.clock import ManualClock
from simulators.lighting import LightingSimulator, demo_controllers

CLOCK_START = 1_795_000_000.0  # a fixed epoch so runs are repeatable
WAIT_S = 3.0


@pytest.fixture
def manual_clock() -> ManualClock:
    """A clock that moves only when the test advances it."""
    return ManualClock(CLOCK_START)


@pytest.fixture
def recorder() -> Recorder:
    """Collects the driver's events."""
    return Recorder(wait_s=WAIT_S)


@pytest_asyncio.fixture
async def lighting_sim(manual_clock: ManualClock) -> AsyncIterator[LightingSimulator]:
    """Two controllers (lc-001, lc-002) with four lamps each, on free local ports."""
    async with LightingSimulator(demo_controllers(2, 4, 0), manual_clock, seed=1) as sim:
        yield sim


@pytest_asyncio.fixture
async def lighting_driver(
    lighting_sim: LightingSimulator, manual_clock: ManualClock, recorder: Recorder
) -> AsyncIterator[ModbusLightingDriver]:
    """A driver polling the simulator fast, with short timeouts and backoff; already online."""
    driver = ModbusLightingDriver(
        lighting_sim.endpoints(),
        None,
        recorder,
        manual_clock,
        poll_interval_s=0.02,
        timeout_s=0.5,
        backoff_max_s=0.1,
        backoff_base_s=0.02,
    )
    async with driver:
        await recorder.wait(
            lambda: all(driver.online(e.endpoint_id) for e in lighting_sim.endpoints()),
            "every endpoint online",
        )
        yield driver
