"""How many bulk commands may be in flight at once, found as it goes (AIMD, as TCP paces itself).

A city's first dimming plan is 54,000 writes. Submitted 2,000 at a time on a node whose event loop
is saturated by start-up, each write waited behind the others for more than its 2 s timeout
(Little's law: the wait is the number in flight over the rate the node confirms them), and
hundreds failed and were retried, adding more work. The window grows by one for every answer
that came back within `target_s` and halves when one comes back later or fails, at most once per
`target_s`: the rate stays what the node can confirm, and the wait stays a fraction of the
timeout. Operator commands never count against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(slots=True)
class Pace:
    """An additive-increase, multiplicative-decrease window of commands in flight."""

    start: int = 200
    low: int = 20
    high: int = 2000
    target_s: float = 0.5  # an answer later than this (a quarter of a write timeout) is congestion
    size: float = field(init=False)
    cuts: int = field(init=False, default=0)
    _cut_at: float = field(init=False, default=-math.inf)

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.start <= self.high:
            raise ValueError(f"pace needs 0 < low <= start <= high, got {self.low}/{self.start}/{self.high}")
        self.size = float(self.start)

    @property
    def window(self) -> int:
        return int(self.size)

    def answered(self, latency_s: float, now: float) -> None:
        """A command in flight was answered after `latency_s` (real seconds, at loop time `now`)."""
        if latency_s > self.target_s:
            self.congested(now)
        else:
            self.size = min(float(self.high), self.size + 1.0)

    def congested(self, now: float) -> None:
        """A late answer or a failure: halve, once per `target_s` (a burst of late answers is one
        congestion, not one halving each)."""
        if now - self._cut_at >= self.target_s:
            self._cut_at = now
            self.size = max(float(self.low), self.size / 2)
            self.cuts += 1
