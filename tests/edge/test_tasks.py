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
