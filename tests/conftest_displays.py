"""pytest plugin: display simulators and drivers against a real broker and real pymodbus servers.

Registered in tests/conftest.py (`pytest_plugins`; tests/ is on sys.path). Builds on
`mqtt_url` (conftest_mqtt) and `manual_clock` / `recorder` (conftest_modbus).

Fixtures:
- `display_ids`: ids unique to the test (the shared broker keeps retained messages):
  two boards and two signs.
- `display_sim`: a DisplaySimulator with those boards (status every 0.1 s) and signs
  on free ports of 127.0.0.1, on the ManualClock.
- `display_driver`: a DisplayDriver for all four, polling signs every 20 ms, with short
  timeouts and backoff; already online.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from conftest_modbus import Recorder

from devices.displays import DisplayDriver
from edge.clock import ManualClock
from simulators.displays import DisplaySimulator, SimBoard, SimSign

__all__ = ["DisplayIds", "display_driver", "display_ids", "display_sim"]

STATUS_INTERVAL_S = 0.1
POLL_INTERVAL_S = 0.02


@dataclass(frozen=True)
class DisplayIds:
    """Display ids of one test."""

    boards: tuple[str, ...]
    signs: tuple[str, ...]


@pytest.fixture
def display_ids() -> DisplayIds:
    """Two boards and two signs, named uniquely for this test."""
    token = uuid.uuid4().hex[:8]
    return DisplayIds(
        boards=(f"led-{token}-1", f"led-{token}-2"),
        signs=(f"vms-{token}-1", f"vms-{token}-2"),
    )


@pytest_asyncio.fixture
async def display_sim(
    mqtt_url: str, manual_clock: ManualClock, display_ids: DisplayIds
) -> AsyncIterator[DisplaySimulator]:
    """Boards on the broker and signs on free local ports, ready (boards subscribed)."""
    sim = DisplaySimulator(
        manual_clock,
        boards=[SimBoard(b) for b in display_ids.boards],
        signs=[SimSign(s) for s in display_ids.signs],
        mqtt_url=mqtt_url,
        status_interval_s=STATUS_INTERVAL_S,
    )
    async with sim:
        yield sim


@pytest_asyncio.fixture
async def display_driver(
    display_sim: DisplaySimulator,
    mqtt_url: str,
    manual_clock: ManualClock,
    recorder: Recorder,
    display_ids: DisplayIds,
) -> AsyncIterator[DisplayDriver]:
    """A driver for every simulated display, fast polls and backoff; every display online."""
    driver = DisplayDriver(
        recorder,
        manual_clock,
        boards=display_ids.boards,
        signs=display_sim.sign_endpoints(),
        mqtt_url=mqtt_url,
        poll_interval_s=POLL_INTERVAL_S,
        status_interval_s=STATUS_INTERVAL_S,
        timeout_s=1.0,
        backoff_base_s=0.02,
        backoff_max_s=0.1,
    )
    async with driver:
        ids = (*display_ids.boards, *display_ids.signs)
        await recorder.wait(lambda: all(driver.online(d) for d in ids), "every display online", 5.0)
        yield driver
