"""Task helpers: cancellation that survives Python 3.11's `asyncio.wait_for` race; time-sliced loops.

On 3.11, `wait_for` can swallow a cancellation that arrives just as its inner future
completes (pymodbus awaits replies with it). A loop whose one cancel was swallowed
runs forever and a shutdown hangs, so we cancel again until the task is really done.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from types import TracebackType
from typing import TypeVar

T = TypeVar("T")
PACE_BATCH = 64  # `paced`: items per step of its schedule
PACE_STRETCH_S = 0.002  # `paced`: the longest stretch of the caller's work between yields


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object]], *, retry_s: float = 0.05) -> None:
    """Cancel tasks and wait for them, re-cancelling any that swallowed the first cancel."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=retry_s)


async def close_task_group(
    tg: asyncio.TaskGroup | None,
    tasks: Iterable[asyncio.Task[object]],
    exc_type: type[BaseException] | None = None,
    exc: BaseException | None = None,
    tb: TracebackType | None = None,
) -> None:
    """Leave a component's TaskGroup: cancel its tasks until they are done, then exit the group.

    Every long-lived component (drivers, simulators, the dispatcher) closes this one way.
    An error of the body that the group only wrapped (no task failed) leaves unwrapped: a
    failure inside a daemon's ten nested components would otherwise reach its caller ten
    groups deep, which Python's traceback cuts off before the error itself.
    """
    await cancel_and_wait(tasks)
    if tg is None:
        return
    try:
        await tg.__aexit__(exc_type, exc, tb)
    except BaseExceptionGroup as group:
        if exc is None or not _only(group, exc):
            raise
    else:
        return
    raise exc


def _only(group: BaseExceptionGroup[BaseException], exc: BaseException) -> bool:
    """Whether every leaf of `group` is `exc` itself."""
    return all(e is exc or (isinstance(e, BaseExceptionGroup) and _only(e, exc)) for e in group.exceptions)


class TimeSlice:
    """Yields to the event loop once `budget_s` has passed since the last yield.

    For loops over a city's devices whose items cost very different amounts: a yield every
    n items bounds nothing when one item is a lamp (microseconds) and another a charger whose
    feeder check sums a cabinet (a millisecond); at 680 chargers, 200 of those between yields
    stopped the loop for 0.7 s. `await tick()` in the loop bounds each stretch by time.

    The default budget is 4 ms: an operator's command passes ten or so hops (receive, route,
    dispatch, driver, device, read-back, ack, outbox), and each may wait a stretch. With 10 ms,
    a command that met the dispatcher's 30-s re-check of a city's 54,000 points took 120 ms
    inside the daemon.
    """

    __slots__ = ("_since", "budget_s")

    def __init__(self, budget_s: float = 0.004) -> None:
        self.budget_s = budget_s
        self._since = time.monotonic()

    async def tick(self) -> None:
        now = time.monotonic()
        if now - self._since >= self.budget_s:
            await asyncio.sleep(0)
            self._since = time.monotonic()


async def paced(
    items: Sequence[T], span_s: float, *, batch: int = PACE_BATCH, stretch_s: float = PACE_STRETCH_S
) -> AsyncIterator[T]:
    """`items` spread evenly over `span_s` real seconds: `batch` at a time on a schedule, with at
    most `stretch_s` of the caller's work between yields. For periodic sweeps over a city's
    devices: done at once, even in 4 ms stretches, a sweep of 54,000 points (~0.6 s of work)
    delayed every command that met it at each of its hops (~100 ms round trips every 30 s)."""
    loop = asyncio.get_running_loop()
    start, n, slice_ = loop.time(), len(items), TimeSlice(stretch_s)
    for i, item in enumerate(items):
        if i % batch == 0 and (ahead := start + span_s * i / n - loop.time()) > 0:
            await asyncio.sleep(ahead)
        await slice_.tick()
        yield item


def cancel_swallowed() -> bool:
    """Whether this task has a cancel pending that a library call returned over.

    pymodbus and asyncua connect inside `asyncio.wait_for`, which on Python 3.11 returns the
    connect's result when a cancel lands just as it finishes, and drops the cancel: a link loop
    cancelled then (its device refusing connections in a tight backoff) went on forever, and
    whoever waited for it with it. Callers raise CancelledError on True.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
