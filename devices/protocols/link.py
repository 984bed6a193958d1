"""What every field link shares, whatever its protocol: its timing and its availability.

Lamp controllers (Modbus), charge-point servers (OPC UA) and message signs (Modbus) each
used to carry their own copy of "timeout plus backoff" settings and of "publish
Availability and log it on transitions only". Both live here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from edge.backoff import Backoff
from edge.clock import Clock
from edge.events import Availability, Event

__all__ = ["EventSource", "LinkTiming", "Presence", "Publish", "poll_phases", "wait_for_event"]

Publish = Callable[[Event], None]  # where a driver hands its events (the bus)


async def wait_for_event(event: asyncio.Event, timeout: float) -> float:  # noqa: ASYNC109
    """Wait at most `timeout` real seconds for `event`; the time left (<= 0: it did not come)."""
    if event.is_set():
        return timeout
    loop = asyncio.get_running_loop()
    start = loop.time()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, timeout)):
            await event.wait()
    return timeout - (loop.time() - start)


@dataclass(frozen=True, slots=True)
class LinkTiming:
    """A link's request timeout and reconnect backoff, in real seconds."""

    timeout_s: float
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0

    def backoff(self) -> Backoff:
        """A fresh backoff; a base above the cap waits up to the cap (as the drivers always did)."""
        return Backoff(min(self.backoff_base_s, self.backoff_max_s), self.backoff_max_s)


def poll_phases(n: int, interval_s: float, rng: random.Random | None = None) -> list[float]:
    """Where in the poll interval each of `n` links polls: one per 1/n of it, jittered within it.

    Links that all poll at the start of the interval make a burst every interval (a city's 538
    controllers answering in the same few milliseconds) and a quiet rest; spread, the load is
    flat. The jitter keeps links of several daemons or drivers from lining up by their index.
    """
    rng = rng or random.Random()
    return [interval_s * (k + rng.random()) / n for k in range(n)]


class EventSource(Protocol):
    """A driver as its links see it: where events go and what time it is."""

    publish: Publish
    clock: Clock


class Presence:
    """Availability of one endpoint, published and logged on transitions only.

    `up` is set while the endpoint is online, so loops that need it (heartbeats) can wait.
    Log events are `{kind}_up` and `{kind}_down` (e.g. "modbus_endpoint_up").
    """

    def __init__(
        self, driver: EventSource, endpoint: str, device_ids: tuple[str, ...], kind: str, log: Any
    ) -> None:
        self.endpoint = endpoint
        self.device_ids = device_ids
        self.publish = driver.publish
        self.clock = driver.clock
        self.kind = kind
        self.log = log
        self.online: bool | None = None
        self.up = asyncio.Event()

    async def wait_up(self, timeout: float) -> float:  # noqa: ASYNC109 - a bounded wait is the API
        """Wait at most `timeout` real seconds for the endpoint to be online; the time left.

        A write to a link that is still connecting at start-up, or that dropped under load and
        is in its backoff, waits here instead of failing at once (both are usually over within a
        second or two). The caller checks `online` afterwards and fails the write if it is not.
        """
        return await wait_for_event(self.up, timeout)

    def set(self, online: bool, reason: str = "") -> None:
        """Record the verdict of the last attempt; publish only when it changed."""
        if online:
            self.up.set()
        else:
            self.up.clear()
        if self.online is online:
            return
        self.online = online
        self.publish(
            Availability(
                endpoint=self.endpoint,
                device_ids=self.device_ids,
                online=online,
                ts=self.clock.now(),
                reason=reason,
            )
        )
        if online:
            self.log.info(f"{self.kind}_up")
        else:
            self.log.warning(f"{self.kind}_down", reason=reason)
