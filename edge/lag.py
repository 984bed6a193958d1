"""Event-loop lag: how late the loop runs, so safety policies can go conservative in time.

A daemon that is starved of CPU (or frozen by SIGSTOP, or blocked by a long computation)
cannot feed device watchdogs or react to limits. `LagMonitor` wakes every `interval_s`
real seconds and records how late it woke; `lagging()` is true while the last lag was
above the limit, for `hold_s` after it, and also while its own wake-up is overdue (so the
first code that runs after a freeze already sees it, whatever order the loop resumes in).
Real (monotonic) seconds throughout: lag is a property of the machine, not of the clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from edge.lifecycle import Service

log = structlog.get_logger(__name__)


class LagMonitor(Service):
    """Measures event-loop delay; an async context manager that owns its probe task."""

    service_name = "kernel.lag"

    def __init__(
        self,
        *,
        limit_s: float,
        hold_s: float,
        interval_s: float = 0.1,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit_s <= 0 or interval_s <= 0 or hold_s < 0:
            raise ValueError("limit_s and interval_s must be positive, hold_s not negative")
        super().__init__()
        self.limit_s = limit_s
        self.hold_s = hold_s
        self.interval_s = interval_s
        self._mono = monotonic
        self._expected = monotonic() + interval_s  # when the probe should wake next
        self._lagging_until = -1.0
        self.last_lag_s = 0.0
        self.max_lag_s = 0.0
        self.episodes = 0  # how often the loop went over the limit
        self._was = False

    async def _start(self) -> None:
        self._expected = self._mono() + self.interval_s
        self.spawn(self._probe(), "probe")

    def record(self, lag_s: float) -> None:
        """Note a measured delay (the probe does this; so can a late heartbeat)."""
        now = self._mono()
        self.last_lag_s = lag_s
        self.max_lag_s = max(self.max_lag_s, lag_s)
        if lag_s > self.limit_s:
            if now >= self._lagging_until:
                self.episodes += 1
            self._lagging_until = now + self.hold_s
        self._transition()

    def probed(self, lag_s: float) -> None:
        """The probe woke `lag_s` late: note it and expect the next wake-up one interval on."""
        self._expected = self._mono() + self.interval_s
        self.record(lag_s)

    def lagging(self) -> bool:
        """True while the loop is (or was, within `hold_s`) late by more than the limit."""
        now = self._mono()
        overdue = now - self._expected
        if overdue > self.limit_s:
            self.record(overdue)  # the probe itself has not run: the loop is late right now
        else:
            self._transition()
        return now < self._lagging_until

    def _transition(self) -> None:
        now_lagging = self._mono() < self._lagging_until
        if now_lagging != self._was:
            self._was = now_lagging
            if now_lagging:
                log.warning("event_loop_lagging", lag_s=round(self.last_lag_s, 3), limit_s=self.limit_s)
            else:
                log.info("event_loop_lag_over", max_lag_s=round(self.max_lag_s, 3))

    async def _probe(self) -> None:
        while True:
            self._expected = self._mono() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.probed(max(0.0, self._mono() - self._expected))
            self.lagging()  # ends the episode (and logs it) once hold_s has passed
