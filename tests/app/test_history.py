"""The state history round waits for the database instead of queueing a city's snapshots at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edge.app.daemon import HISTORY_CHUNK, _storage_caught_up
from edge.storage import Storage


def _row(i: int) -> dict[str, object]:
    return {"device_id": f"L{i}", "ts": 1.0, "online": True, "values": {"level_actual": 50}}


async def test_a_round_waits_until_the_database_has_caught_up(tmp_path: Path) -> None:
    async with Storage(f"sqlite:///{tmp_path / 'h.db'}", flush_interval_s=0.05) as storage:
        for i in range(HISTORY_CHUNK + 500):
            storage.add_data("state_sample", _row(i))
        assert storage.backlog >= HISTORY_CHUNK
        loop = asyncio.get_running_loop()
        await _storage_caught_up(storage, HISTORY_CHUNK, loop.time() + 30)
        assert storage.backlog < HISTORY_CHUNK
        await storage.flush()
        assert storage.written == HISTORY_CHUNK + 500  # nothing lost on the way


async def test_a_database_that_does_not_write_holds_the_round_only_until_its_deadline(tmp_path: Path) -> None:
    storage = Storage(f"sqlite:///{tmp_path / 'h.db'}", flush_interval_s=0.05)  # not entered: no writer
    for i in range(HISTORY_CHUNK):
        storage.add_data("state_sample", _row(i))
    loop = asyncio.get_running_loop()
    until = loop.time() + 0.2
    await _storage_caught_up(storage, HISTORY_CHUNK, until)
    assert loop.time() >= until
    assert storage.backlog == HISTORY_CHUNK  # still queued, none dropped
