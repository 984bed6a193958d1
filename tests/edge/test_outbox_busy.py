"""The outbox waits out a busy database instead of failing its publishers (a real SQLite file)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError

from edge.outbox import Outbox
from edge.records import outbox_url


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


def test_the_outbox_has_a_file_of_its_own_beside_a_sqlite_records_file(tmp_path: Path) -> None:
    assert outbox_url(f"sqlite:///{tmp_path}/edge.db") == f"sqlite:///{tmp_path}/edge.outbox.db"
    assert outbox_url("sqlite:///var/city") == "sqlite:///var/city.outbox.db"
    pg = "postgresql+psycopg://edge@db/edge"
    assert outbox_url(pg) == pg  # row locks: one database serves both
    assert outbox_url("sqlite:///:memory:") == "sqlite:///:memory:"


async def test_an_answer_is_not_held_behind_a_history_write(tmp_path: Path) -> None:
    """The records file's write lock is held (as a city's history snapshot holds it for
    seconds); an append to the outbox still commits, well inside SQLite's busy timeout."""
    records = f"sqlite:///{tmp_path / 'edge.db'}"
    async with Outbox(outbox_url(records), carry_from=records) as outbox:
        holder = sqlite3.connect(tmp_path / "edge.db", isolation_level=None)
        try:
            holder.execute("PRAGMA journal_mode=WAL")
            holder.execute("CREATE TABLE IF NOT EXISTS history (x INTEGER)")
            holder.execute("BEGIN IMMEDIATE")  # the one write lock of the records file
            holder.execute("INSERT INTO history VALUES (1)")
            async with asyncio.timeout(4.0):  # the same file would wait busy_timeout (5 s), then retry
                await outbox.append("site/replies/op", b'{"ok": true}', qos=1)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert outbox.write_retries == 0
        assert [m.topic for m in await outbox.peek(10)] == ["site/replies/op"]


async def test_rows_an_older_release_left_in_the_records_file_are_carried_over(tmp_path: Path) -> None:
    records = f"sqlite:///{tmp_path / 'edge.db'}"
    async with Outbox(records) as old:  # where releases before the split kept the outbox
        await old.append_many([(f"t/{i}", f"{i}".encode(), i % 2 == 0) for i in range(12_000)], qos=1)
    async with Outbox(outbox_url(records), carry_from=records) as outbox:
        assert outbox.backlog == 12_000
        got = await outbox.peek(12_000)
        assert [(m.topic, m.payload, m.retain) for m in got] == [
            (f"t/{i}", f"{i}".encode(), i % 2 == 0) for i in range(12_000)
        ]
    async with Outbox(records) as old:
        assert old.backlog == 0  # moved, not copied: a restart does not send them again
    async with Outbox(outbox_url(records), carry_from=records) as outbox:
        assert outbox.backlog == 12_000
