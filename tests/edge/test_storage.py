"""Storage: migrations to the current head, batched writes, retention, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text

from edge.records import SCHEMA_HEAD, AlarmRow, CommandAudit, PlanRow, StateSample, make_engine, migrate
from edge.storage import Storage


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


async def test_device_rows_are_inserted_then_only_changes_written(database_url: str) -> None:
    """The inventory is refreshed on every start: new devices added, moved ones updated, the rest left."""

    def row(i: int, lat: float = 51.5) -> dict[str, object]:
        return {"id": f"L{i}", "kind": "lamp", "segment": "s1", "group": "g1", "controller": "c1",
                "lat": lat, "lon": 7.4, "attrs": {"class": "M3", "flags": [], "feeder": "F1"}}  # fmt: skip

    async with Storage(database_url) as st:
        assert await asyncio.to_thread(st.upsert_devices, [row(i) for i in range(3)]) == 3
        assert await asyncio.to_thread(st.upsert_devices, [row(i) for i in range(3)]) == 0
        again = [row(0), row(1, lat=51.6), row(2), row(3)]
        assert await asyncio.to_thread(st.upsert_devices, again) == 2
        with st.engine.connect() as conn:
            stored = {r[0]: r[1] for r in conn.execute(text("SELECT id, lat FROM device"))}
    assert set(stored) == {"L0", "L1", "L2", "L3"}
    assert stored["L1"] == 51.6
    assert stored["L0"] == 51.5


async def test_rows_queued_at_shutdown_are_written(database_url: str) -> None:
    """Closing storage flushes what was queued: nothing accepted is lost."""
    async with Storage(database_url, flush_interval_s=60) as st:
        for i in range(500):
            st.add(StateSample(device_id="L1", ts=float(i), values={"level": i}))
    async with Storage(database_url) as st2:
        assert len(await asyncio.to_thread(st2.history, "L1")) == 500


async def test_history_snapshot_given_as_column_values_lands_whole(database_url: str) -> None:
    """A city's history round (rows queued as column values, `add_data`) is written in batches,
    every row of it, with audit rows queued the same way beside it; no ORM row per device."""
    n = 5000  # more than one batch (MAX_BATCH)
    async with Storage(database_url, flush_interval_s=60) as st:
        for i in range(n):
            st.add_data(
                "state_sample",
                {"device_id": f"L{i % 50}", "ts": float(i), "online": True, "values": {"level": i}},
            )
        st.add_data(
            "command_audit",
            {"command_id": "c9", "device_id": "L1", "point": "level_cmd", "requested": 40.0,
             "applied": 40.0, "priority": "plan", "source": "plan", "outcome": "confirmed",
             "reason": "", "ts": 1.0},
        )  # fmt: skip
        with pytest.raises(ValueError, match="not an insert-only table"):
            st.add_data("alarm", {"device_id": "L1"})
        await st.flush()
        assert st.written == n + 1
        rows = await asyncio.to_thread(st.history, "L7")
        assert len(rows) == n // 50
        assert sorted(r.values["level"] for r in rows) == list(range(7, n, 50))
        assert [r.outcome for r in await asyncio.to_thread(st.audit, "c9")] == ["confirmed"]


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
        cfg.set_main_option("script_location", str(Path(__file__).parents[2] / "edge" / "migrations"))
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


# ----- finding 2: a poison row never jams the writer; the backlog is bounded --------------------


def _audit(device_id: str, command_id: str = "c", ts: float = 1.0) -> CommandAudit:
    return CommandAudit(
        command_id=command_id,
        device_id=device_id,
        point="level_cmd",
        requested=50,
        priority="operator",
        source="operator:x",
        outcome="accepted",
        ts=ts,
    )


def _poison_rows(database_url: str) -> list[CommandAudit]:
    """Rows the database refuses on their own: NULL in a NOT NULL column (both databases) and,
    on PostgreSQL, the 80-character id of issue 10 in a VARCHAR(64) (SQLite ignores lengths)."""
    null = _audit("L1", "null-outcome")
    null.outcome = None  # type: ignore[assignment]
    rows = [null]
    if database_url.startswith("postgresql"):
        rows.append(_audit("x" * 80, "too-long"))
    return rows


async def test_poison_row_goes_to_dead_letter_and_later_rows_are_written(database_url: str) -> None:
    """A poison audit row in a batch does not stop the rows around it or after it: audit, alarm,
    state and plan rows are all written, and the poison row is in dead_letter with its error."""
    alarms: list[tuple[str, bool]] = []
    async with Storage(
        database_url, flush_interval_s=60, on_alarm=lambda code, active, _s, _d: alarms.append((code, active))
    ) as st:
        poison = _poison_rows(database_url)
        st.add(_audit("L1", "before"))
        for row in poison:
            st.add(row)
        st.add(AlarmRow(device_id="L2", code="lamp_failure", severity="major", raised_at=2.0))
        st.add(StateSample(device_id="L3", ts=3.0, values={"level": 40}))
        st.add(PlanRow(domain="lighting", created_at=4.0, status="ok", body={"slots": [1, 2]}))
        await st.flush()
        st.add(_audit("L1", "after"))
        st.clear_alarm("L2", "lamp_failure", 5.0)
        await st.flush()

        assert [r.command_id for r in await asyncio.to_thread(st.audit)] == ["before", "after"]
        assert [(a.device_id, a.cleared_at) for a in await asyncio.to_thread(st.alarms)] == [("L2", 5.0)]
        assert len(await asyncio.to_thread(st.history, "L3")) == 1
        assert len(await asyncio.to_thread(st.plans, "lighting")) == 1
        dead = await asyncio.to_thread(st.dead_letters)
        assert [d.table_name for d in dead] == ["command_audit"] * len(poison)
        assert "null-outcome" in dead[0].data
        assert "null" in dead[0].error.lower()
        if len(dead) > 1:
            assert "x" * 80 in dead[1].data
            assert "too long" in dead[1].error.lower()
        assert st.dead_lettered == len(poison)
        # the health report runs in the writer task: wake it and wait for its alarm
        st._wake.set()
        async with asyncio.timeout(5):
            while ("storage_dead_letter", True) not in alarms:  # noqa: ASYNC110 - the writer runs on its own
                await asyncio.sleep(0.01)


async def test_huge_poison_row_is_stored_truncated(database_url: str) -> None:
    """A dead-lettered row keeps a sane prefix of its data, never a multi-megabyte blob."""
    async with Storage(database_url, flush_interval_s=60) as st:
        row = _audit("L1", "huge")
        row.outcome = None  # type: ignore[assignment]
        row.reason = "r" * 2_000_000
        st.add(row)
        await st.flush()
        (dead,) = await asyncio.to_thread(st.dead_letters)
        assert len(dead.data) <= 8000
        assert "truncated" in dead.data


async def test_backlog_is_bounded_and_sheds_samples_before_audit_and_alarms(database_url: str) -> None:
    """With the queue full, state samples are shed (and counted) first; audit and alarms are kept."""
    async with Storage(database_url, flush_interval_s=60, max_backlog=100) as st:
        for i in range(30):
            st.add(_audit("L1", f"a{i}", ts=float(i)))
            st.add(AlarmRow(device_id=f"L{i}", code="lamp_failure", severity="major", raised_at=float(i)))
        for i in range(500):
            st.add(StateSample(device_id="L1", ts=float(i), values={"level": i}))
            assert st.backlog <= 100
        assert st.peak_backlog == 100
        assert st.shed == {"state_sample": 460}
        await st.flush()
        assert len(await asyncio.to_thread(st.audit)) == 30
        assert len(await asyncio.to_thread(st.alarms)) == 30
        # the newest samples are the ones kept
        assert [s.ts for s in await asyncio.to_thread(st.history, "L1")] == [
            float(i) for i in range(460, 500)
        ]


async def test_raise_of_an_open_alarm_keeps_one_open_row(database_url: str) -> None:
    """Raising an alarm that is already open (e.g. after a restart) does not insert a second row,
    and the database itself refuses a second open row for the same (device, code)."""
    import sqlalchemy

    async with Storage(database_url, flush_interval_s=60) as st:
        for ts in (1.0, 2.0, 3.0):
            st.add(AlarmRow(device_id="L1", code="lamp_failure", severity="major", raised_at=ts))
        await st.flush()
        st.clear_alarm("L1", "lamp_failure", 4.0)
        st.add(AlarmRow(device_id="L1", code="lamp_failure", severity="major", raised_at=5.0))
        await st.flush()
        rows = await asyncio.to_thread(st.alarms)
        assert [(r.raised_at, r.cleared_at) for r in rows] == [(1.0, 4.0), (5.0, None)]
        with pytest.raises(sqlalchemy.exc.IntegrityError), st.engine.begin() as conn:
            conn.execute(
                sqlalchemy.text(
                    "INSERT INTO alarm (device_id, code, severity, detail, raised_at)"
                    " VALUES ('L1', 'lamp_failure', 'major', '', 6.0)"
                )
            )


def test_migration_closes_duplicate_open_alarms(database_url: str) -> None:
    """Upgrading a database with duplicate open alarm rows (left by restarts) keeps the newest
    open and closes the others, so the unique index can be built."""
    import sqlalchemy

    engine = make_engine(database_url)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parents[2] / "edge" / "migrations"))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0001")
        with engine.begin() as conn:
            for dev, ts in [("L1", 1.0), ("L1", 2.0), ("L1", 3.0), ("L2", 1.5)]:
                conn.execute(
                    sqlalchemy.text(
                        "INSERT INTO alarm (device_id, code, severity, detail, raised_at)"
                        " VALUES (:d, 'lamp_failure', 'major', '', :t)"
                    ),
                    {"d": dev, "t": ts},
                )
        assert migrate(engine) == SCHEMA_HEAD
        with engine.connect() as conn:
            rows = conn.execute(
                sqlalchemy.text("SELECT device_id, raised_at, cleared_at FROM alarm ORDER BY id")
            ).all()
        assert [tuple(r) for r in rows] == [
            ("L1", 1.0, 3.0),
            ("L1", 2.0, 3.0),
            ("L1", 3.0, None),
            ("L2", 1.5, None),
        ]
    finally:
        engine.dispose()


async def test_commit_lost_on_the_wire_is_not_written_twice(database_url: str) -> None:
    """The connection drops after the server committed (the client sees an error): the retry
    finds the batch's commit mark and does not write its rows a second time. (The lost answer
    is injected in the dialect's commit: a real cut cannot be timed to fall there.)"""
    import sqlalchemy

    async with Storage(database_url, flush_interval_s=60) as st:
        dialect = st.engine.dialect
        real_commit = dialect.do_commit
        lost = []

        def commit_then_lose_the_answer(dbapi_conn: object) -> None:
            real_commit(dbapi_conn)
            if not lost:
                lost.append(True)
                raise sqlalchemy.exc.OperationalError("COMMIT", {}, Exception("server closed the connection"))

        dialect.do_commit = commit_then_lose_the_answer  # type: ignore[method-assign]
        for i in range(10):
            st.add(_audit("L1", f"c{i}"))
        await st.flush()
        dialect.do_commit = real_commit  # type: ignore[method-assign]
        assert lost == [True]
        assert len(await asyncio.to_thread(st.audit)) == 10
        assert st.written == 10
