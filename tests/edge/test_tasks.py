"""Time-sliced loops (`edge.tasks.TimeSlice`): a long loop lets the rest of the daemon run."""

from __future__ import annotations

import asyncio

from edge.tasks import TimeSlice


async def test_a_slice_yields_only_once_its_budget_is_spent() -> None:
    turns = 0

    async def other() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    before = turns
    long_slice = TimeSlice(budget_s=3600.0)
    for _ in range(100):
        await long_slice.tick()
    assert turns == before  # within its budget the loop keeps the event loop
    spent = TimeSlice(budget_s=0.0)
    for _ in range(100):
        await spent.tick()
    assert turns >= before + 99  # every tick past the budget gives the others a turn
    task.cancel()


async def test_a_background_slice_rests_so_timed_work_runs_between_its_stretches() -> None:
    """With `rest_s`, each stretch is followed by a rest in which work waiting on a timer (a
    reply's timeout, a poll, a flush) runs: here a 1 ms timer fires before each 2 ms rest ends."""
    fired = 0

    async def timed() -> None:
        nonlocal fired
        while True:
            await asyncio.sleep(0.001)
            fired += 1

    task = asyncio.create_task(timed())
    await asyncio.sleep(0)
    background = TimeSlice(budget_s=0.0, rest_s=0.002)
    for _ in range(50):
        await background.tick()
    assert fired >= 50
    task.cancel()
