"""The dispatcher's queue of points waiting for a write, with room kept for what is not a plan.

Ranking alone (an operator's command first in the queue) is not enough: when every worker is busy
with a plan write, an operator's command waits for one to finish. A plan write to a controller
that is down waits for its link up to the write timeout, so a plan step over a district whose
cabinet lost power can hold every worker for seconds, and a safety shed or an override with them.
So plan writes take at most `plan_slots` workers at once; the rest wait parked until a plan write
ends, and the other workers take only operator, safety and reconcile writes.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

URGENT, PLAN = 0, 1  # ranks: lower goes first


class WriteQueue(Generic[K]):
    """Points (keys) waiting for a write: each queued once, urgent ones first, plan writes capped.

    `rank_of(key)` says at any time whether the point's winning command is a plan's own write
    (PLAN) or anything else (URGENT). It is asked on `put` and again when a worker takes the
    point, since the winning command may change while it waits. Each rank is a FIFO; a put of a
    point already queued at a worse rank moves it up.
    """

    def __init__(self, rank_of: Callable[[K], int], plan_slots: int) -> None:
        if plan_slots < 1:
            raise ValueError(f"plan_slots must be at least 1, not {plan_slots}")
        self._rank_of = rank_of
        self.plan_slots = plan_slots
        self._lines: tuple[deque[tuple[int, K]], deque[tuple[int, K]]] = (deque(), deque())
        self._seq = itertools.count()
        # key -> (rank, seq) of its live entry; an entry whose seq is not here is skipped
        self._queued: dict[K, tuple[int, int]] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.plan_busy = 0

    def __contains__(self, key: object) -> bool:
        return key in self._queued

    def __len__(self) -> int:
        return len(self._queued)

    def put(self, key: K) -> None:
        """Queue `key` for a write; one already queued moves up if its rank improved (an
        operator's command on a point whose plan write waits must not wait with it)."""
        rank = self._rank_of(key)
        old = self._queued.get(key)
        if old is not None and old[0] <= rank:
            return
        seq = next(self._seq)
        self._queued[key] = (rank, seq)
        self._lines[rank].append((seq, key))
        if rank == URGENT or self.plan_busy < self.plan_slots:
            self._wake_one()

    async def get(self) -> tuple[K, bool]:
        """The next point to write, and whether it holds a plan slot (give it back with
        `plan_done`). Waits while nothing is queued but plan writes with every slot taken."""
        while True:
            got = self._take()
            if got is not None:
                return got
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._wake_one()  # woken, then cancelled: the wake goes to another worker
                elif fut in self._waiters:
                    self._waiters.remove(fut)
                raise

    def plan_done(self) -> None:
        """A plan write ended: its slot is free for the next plan write."""
        self.plan_busy -= 1
        if self._lines[PLAN]:
            self._wake_one()

    def _take(self) -> tuple[K, bool] | None:
        urgent, plan_line = self._lines
        while urgent:
            seq, key = urgent.popleft()
            if self._queued.get(key, (0, -1))[1] != seq:
                continue  # moved or taken since
            if self._rank_of(key) == PLAN and self.plan_busy >= self.plan_slots:
                self._queued[key] = (PLAN, seq)  # a plan write now: it waits for a slot
                plan_line.appendleft((seq, key))
                continue
            return self._taken(key)
        while plan_line and self.plan_busy < self.plan_slots:
            seq, key = plan_line.popleft()
            if self._queued.get(key, (0, -1))[1] == seq:
                return self._taken(key)
        return None

    def _taken(self, key: K) -> tuple[K, bool]:
        del self._queued[key]
        plan = self._rank_of(key) == PLAN
        if plan:
            self.plan_busy += 1
        if self._waiters and (
            self._lines[URGENT] or (self._lines[PLAN] and self.plan_busy < self.plan_slots)
        ):
            self._wake_one()  # more to take: pass it on (one put may have woken one worker for many)
        return key, plan

    def _wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
