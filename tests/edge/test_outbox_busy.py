"""The outbox waits out a busy database instead of failing its publishers (a real SQLite file)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError

from edge.outbox import Outbox


async def test_a_locked_database_is_waited_out_and_nothing_is_lost(tmp_path: Path) -> None:
    """The first two inserts find the database locked (as under a long history write on a
    loaded node); the batch is written on the third try, every message once, in order."""
    async with Outbox(f"sqlite:///{tmp_path / 'outbox.db'}") as outbox:
        real = outbox._insert_sync
        calls = {"n": 0}

        def busy_twice(rows: Any) -> None:
            calls["n"] += 1
            if calls["n"] <= 2:
                raise OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
            real(rows)

        outbox._insert_sync = busy_twice  # type: ignore[method-assign]
        await outbox.append_many([(f"t/{i}", b"{}", False) for i in range(50)], qos=1)
        assert outbox.write_retries == 2
        assert outbox.backlog == 50
        peeked = await outbox.peek(100)
        assert [m.topic for m in peeked] == [f"t/{i}" for i in range(50)]
