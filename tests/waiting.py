"""Waiting for conditions and recording driver events, shared by the test plugins."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from edge.events import Availability, Event, Telemetry, Value


async def wait_until(cond: Callable[[], bool], timeout_s: float = 5.0, what: str = "") -> None:
    """Poll `cond` every few ms until true; fail the test after `timeout_s` real seconds.

    Polling, not an Event: the conditions are on simulator state and driver counters,
    which have no event to wait on, and a test must not add one to the code under test.
    """
    try:
        async with asyncio.timeout(timeout_s):
            while not cond():  # noqa: ASYNC110 - see docstring
                await asyncio.sleep(0.005)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout_s} s waiting for {what or cond}")


@dataclass
class Recorder:
    """A driver's `publish`: keeps every event for the test to inspect."""

    events: list[Event] = field(default_factory=list)
    wait_s: float = 5.0

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def telemetry(self, device_id: str) -> list[Telemetry]:
        """Telemetry events of one device, oldest first."""
        return [e for e in self.events if isinstance(e, Telemetry) and e.device_id == device_id]

    def latest(self, device_id: str) -> Telemetry | None:
        """The newest telemetry of a device, if any."""
        for e in reversed(self.events):
            if isinstance(e, Telemetry) and e.device_id == device_id:
                return e
        return None

    def value(self, device_id: str, point: str) -> Value | None:
        """The newest value of a point the driver published, if any."""
        for e in reversed(self.events):
            if isinstance(e, Telemetry) and e.device_id == device_id and point in e.values:
                return e.values[point]
        return None

    def availability(self, endpoint: str) -> list[bool]:
        """Availability transitions of an endpoint, oldest first."""
        return [e.online for e in self.events if isinstance(e, Availability) and e.endpoint == endpoint]

    async def wait(self, cond: Callable[[], bool], what: str = "", timeout_s: float | None = None) -> None:
        """Wait for `cond` with a timeout (no fixed sleeps)."""
        await wait_until(cond, self.wait_s if timeout_s is None else timeout_s, what)
