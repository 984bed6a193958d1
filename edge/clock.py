"""One clock for daemon and simulators, so a demo can run a night in minutes.

Everything that reasons about time of day (sun times, plans, watchdogs, energy
integration) asks a `Clock`; network timeouts stay in real seconds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Wall-clock time (epoch seconds) that may run faster than real time."""

    @property
    def speed(self) -> float:
        """Simulated seconds per real second."""
        ...

    def now(self) -> float:
        """Current time in epoch seconds (UTC)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep for `seconds` of clock time."""
        ...


class SystemClock:
    """Real time."""

    speed = 1.0

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class SimClock:
    """Clock time = start + real elapsed x speed; shared by the daemon and simulators in a demo."""

    def __init__(self, start: float, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("clock speed must be positive")
        self._start = start
        self._speed = speed
        self._mono0 = time.monotonic()

    @property
    def speed(self) -> float:
        return self._speed

    def now(self) -> float:
        return self._start + (time.monotonic() - self._mono0) * self._speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self._speed)


class ManualClock:
    """A clock that only moves when told to; for deterministic tests."""

    def __init__(self, start: float) -> None:
        self._now = start
        self._changed = asyncio.Event()

    speed = 1.0

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._changed.set()
        self._changed = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        until = self._now + seconds
        while self._now < until:
            await self._changed.wait()
