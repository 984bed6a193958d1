"""Task helpers: cancellation that survives Python 3.11's `asyncio.wait_for` race.

On 3.11, `wait_for` can swallow a cancellation that arrives just as its inner future
completes (pymodbus awaits replies with it). A loop whose one cancel was swallowed
runs forever and a shutdown hangs, so we cancel again until the task is really done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType


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
    """
    await cancel_and_wait(tasks)
    if tg is not None:
        await tg.__aexit__(exc_type, exc, tb)
