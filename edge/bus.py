"""In-process event bus: drivers and controllers publish, subscribers consume from bounded queues.

Publishing never blocks the publisher (a driver's poll loop must not wait on a slow
consumer). A subscriber that falls behind loses its oldest telemetry first; alarms,
command results and plans are never dropped for a slow subscriber.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

import structlog

from edge.events import Event, Telemetry
from edge.tasks import TimeSlice

log = structlog.get_logger(__name__)


class Subscription:
    """One consumer's queue of events of the kinds it asked for."""

    def __init__(self, name: str, kinds: tuple[type, ...], maxsize: int) -> None:
        self.name = name
        self.kinds = kinds
        self.maxsize = maxsize
        self.dropped = 0
        self._items: deque[Event] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    def offer(self, event: Event) -> None:
        if len(self._items) >= self.maxsize and isinstance(event, Telemetry):
            # Drop the oldest telemetry (a newer reading supersedes it); keep everything else.
            for i, old in enumerate(self._items):
                if isinstance(old, Telemetry):
                    del self._items[i]
                    break
            self.dropped += 1
            if self.dropped in {1, 100, 10_000} or self.dropped % 100_000 == 0:
                log.warning("bus_subscriber_behind", subscriber=self.name, dropped=self.dropped)
        self._items.append(event)
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    def __len__(self) -> int:
        return len(self._items)

    def get_nowait(self) -> Event | None:
        """The next event, or None when the queue is empty."""
        if self._items:
            return self._items.popleft()
        self._ready.clear()
        return None

    async def get(self) -> Event:
        """Wait for the next event; raises EOFError once closed and drained."""
        while not self._items:
            if self._closed:
                raise EOFError(self.name)
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        # `get` returns at once while events are queued: without a yield every few milliseconds
        # a subscriber would fold a backlog of thousands (a city's poll burst, the lamps fading
        # to their first plan) in one stretch of the loop, and an operator's command waited for it
        # at each of its hops (a 240 ms round trip with the daemon a third busy).
        slice_ = TimeSlice()
        while True:
            try:
                event = await self.get()
            except EOFError:
                return
            yield event
            await slice_.tick()


class EventBus:
    """Fan-out of events to subscribers by event type."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self.published = 0

    def subscribe(self, name: str, *kinds: type, maxsize: int = 100_000) -> Subscription:
        """Subscribe to events of the given types (all events when none are given)."""
        sub = Subscription(name, kinds, maxsize)
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close()
        if sub in self._subs:
            self._subs.remove(sub)

    def publish(self, event: Event) -> None:
        """Deliver an event to every interested subscriber; never blocks."""
        self.published += 1
        for sub in self._subs:
            if not sub.kinds or isinstance(event, sub.kinds):
                sub.offer(event)

    def close(self) -> None:
        for sub in self._subs:
            sub.close()
