"""The dispatcher's write queue: urgent first, plan writes capped, nothing lost or taken twice."""

from __future__ import annotations

import asyncio

from edge.write_queue import PLAN, URGENT, WriteQueue


def _queue(ranks: dict[str, int], slots: int) -> WriteQueue[str]:
    return WriteQueue(lambda key: ranks[key], slots)


async def test_plan_writes_take_at_most_their_slots_and_urgent_ones_go_first() -> None:
    ranks = {"p1": PLAN, "p2": PLAN, "p3": PLAN, "op": URGENT}
    q = _queue(ranks, 2)
    for key in ("p1", "p2", "p3", "op"):
        q.put(key)
    assert [await q.get(), await q.get(), await q.get()] == [("op", False), ("p1", True), ("p2", True)]
    waiter = asyncio.create_task(q.get())  # p3 waits for a slot
    await asyncio.sleep(0)
    assert not waiter.done()
    assert "p3" in q
    assert len(q) == 1
    q.plan_done()
    assert await waiter == ("p3", True)
    assert len(q) == 0


async def test_a_waiting_plan_write_that_turns_urgent_is_taken_at_once() -> None:
    ranks = {"p1": PLAN, "p2": PLAN}
    q = _queue(ranks, 1)
    q.put("p1")
    q.put("p2")
    assert await q.get() == ("p1", True)
    ranks["p2"] = URGENT  # an operator's command on p2
    q.put("p2")
    assert await q.get() == ("p2", False)
    q.put("p2")  # queued again later: taken once per put, never twice for one
    assert await q.get() == ("p2", False)
    assert len(q) == 0


async def test_a_cancelled_getter_passes_its_wake_on() -> None:
    q = _queue({"op": URGENT}, 1)
    first, second = asyncio.create_task(q.get()), asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.put("op")  # wakes the first getter ...
    first.cancel()  # ... which is cancelled before it runs
    assert await second == ("op", False)
    assert first.cancelled()
