"""One reconnect backoff: capped exponential with full jitter.

Every reconnecting loop (MQTT link, Modbus and OPC UA sessions, board and fleet links,
the simulators' fault listeners) waits with this, so a device that is down costs the
same everywhere and a fleet of clients that lost one broker does not come back in step.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(slots=True)
class Backoff:
    """Delay before attempt n+1: uniform(floor * cap, cap), cap = min(max_s, base_s * 2**n).

    `floor` 0 is full jitter (reconnects: spread clients out); 0.5 keeps at least half the
    cap (a database writer that should not hammer a server that is down). `reset` after a success.
    """

    base_s: float = 0.5
    max_s: float = 30.0
    floor: float = 0.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.max_s < self.base_s or not 0.0 <= self.floor <= 1.0:
            raise ValueError(
                f"backoff needs 0 < base_s <= max_s and 0 <= floor <= 1, got {self.base_s}, {self.max_s}, {self.floor}"
            )

    def cap(self) -> float:
        """The upper bound of the next delay."""
        return min(self.max_s, self.base_s * 2.0 ** min(self.attempt, 60))

    def next_delay(self) -> float:
        """The delay before the next attempt (and count this failure)."""
        cap = self.cap()
        delay = self.rng.uniform(self.floor * cap, cap)
        self.attempt += 1
        return delay

    async def wait(self) -> None:
        """Sleep the next delay."""
        await asyncio.sleep(self.next_delay())

    def reset(self) -> None:
        """A success: the next failure starts from `base_s` again."""
        self.attempt = 0
