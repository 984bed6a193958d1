"""Storage: migrations to the current head, batched writes, retention, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

from edge.storage import SCHEMA_HEAD, AlarmRow, CommandAudit, StateSample, Storage, make_engine, migrate


async def test_open_migrates_to_head_and_writes(database_url: str) -> None:
    """A fresh database gets every table and the current revision; queued rows are written on flush."""
    async with Storage(database_url) as st:
        assert st.revision == SCHEMA_HEAD
        tables = set(st.table_names())
        assert {
            "device",
            "state_sample",
            "command_audit",
            "alarm",
            "plan",
            "edge_outbox",
            "alembic_version",
        } <= tables
        st.add(
            CommandAudit(
                command_id="c1",
                device_id="L1",
                point="level_cmd",
                requested=50,
                priority="operator",
                source="operator:x",
                outcome="accepted",
                ts=1.0,
            )
        )
        st.add(AlarmRow(device_id="L1", code="lamp_failure", severity="major", raised_at=2.0))
        await st.flush()
        st.clear_alarm("L1", "lamp_failure", 3.0)
        await st.flush()
        assert [r.outcome for r in await asyncio.to_thread(st.audit, "c1")] == ["accepted"]
        alarms = await asyncio.to_thread(st.alarms)
        assert alarms[0].cleared_at == 3.0
        assert await asyncio.to_thread(st.alarms, True) == []


async def test_rows_queued_at_shutdown_are_written(database_url: str) -> None:
    """Closing storage flushes what was queued: nothing accepted is lost."""
    async with Storage(database_url, flush_interval_s=60) as st:
        for i in range(500):
            st.add(StateSample(device_id="L1", ts=float(i), values={"level": i}))
    async with Storage(database_url) as st2:
        assert len(await asyncio.to_thread(st2.history, "L1")) == 500


async def test_retention_deletes_old_history_only(database_url: str) -> None:
    async with Storage(database_url) as st:
        for ts in (10.0, 20.0, 30.0):
            st.add(StateSample(device_id="L2", ts=ts, values={}))
        await st.flush()
        deleted = await asyncio.to_thread(st.purge, 25.0)
        assert deleted == 2
        assert [s.ts for s in await asyncio.to_thread(st.history, "L2")] == [30.0]


def test_migration_down_and_up_again(database_url: str) -> None:
    """The schema can be taken back to empty and up to head again (the migration path works both ways)."""
    engine = make_engine(database_url)
    try:
        assert migrate(engine) == SCHEMA_HEAD
        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent.parent / "edge" / "migrations"))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "base")
        from sqlalchemy import inspect

        assert "command_audit" not in inspect(engine).get_table_names()
        assert migrate(engine) == SCHEMA_HEAD
        assert "command_audit" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        from sqlalchemy import text

        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    engine.dispose()


@pytest.mark.parametrize("url", ["mysql://x", "ftp://db"])
def test_unknown_database_scheme_is_a_config_error(url: str) -> None:
    from edge.errors import ConfigError
    from edge.settings import load_settings

    with pytest.raises(ConfigError, match=r"storage\.url"):
        load_settings(None, storage__url=url)
