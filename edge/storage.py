"""Storage (SQLModel): devices, downsampled state history, command audit, alarms, plans.

SQLite file by default (WAL, so readers never block the writer), PostgreSQL by URL.
Writes are queued from the event loop and flushed in batches by one writer task in
a thread, so a slow disk never stalls device polling. The schema is versioned with
Alembic (`edge/migrations`); `open` upgrades an older database to the current head.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Engine, event, inspect, text
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import JSON, Column, Field, Session, SQLModel, col, create_engine, delete, select

log = structlog.get_logger(__name__)

SCHEMA_HEAD = "0001"


class DeviceRow(SQLModel, table=True):
    """A device from the inventory (refreshed on every start)."""

    __tablename__ = "device"
    id: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=32, index=True)
    segment: str = Field(default="", max_length=128)
    group: str = Field(default="", max_length=200)
    controller: str = Field(default="", max_length=64)
    lat: float = 0.0
    lon: float = 0.0
    attrs: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


class StateSample(SQLModel, table=True):
    """A downsampled snapshot of one device's state."""

    __tablename__ = "state_sample"
    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(max_length=64, index=True)
    ts: float = Field(index=True)
    online: bool | None = None
    values: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


class CommandAudit(SQLModel, table=True):
    """Every verdict (accepted, clamped, refused) and every final result of a command."""

    __tablename__ = "command_audit"
    id: int | None = Field(default=None, primary_key=True)
    command_id: str = Field(max_length=64, index=True)
    device_id: str = Field(max_length=64, index=True)
    point: str = Field(max_length=64)
    requested: float
    applied: float | None = None
    priority: str = Field(max_length=16)
    source: str = Field(max_length=128)
    outcome: str = Field(max_length=16, index=True)
    reason: str = Field(default="", max_length=500)
    ts: float = Field(index=True)


class AlarmRow(SQLModel, table=True):
    """An alarm's life: raised, cleared, acknowledged."""

    __tablename__ = "alarm"
    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(max_length=64, index=True)
    code: str = Field(max_length=64)
    severity: str = Field(max_length=16)
    detail: str = Field(default="", max_length=500)
    raised_at: float = Field(index=True)
    cleared_at: float | None = None
    acked_by: str | None = Field(default=None, max_length=128)
    ack_comment: str | None = Field(default=None, max_length=500)


@dataclass(frozen=True, slots=True)
class AlarmUpdate:
    """A change to the open row of an alarm: cleared, or acknowledged (applied in queue order)."""

    device_id: str
    code: str
    cleared_at: float | None = None
    acked_by: str | None = None
    ack_comment: str | None = None


class PlanRow(SQLModel, table=True):
    """A plan the optimizer produced, as published."""

    __tablename__ = "plan"
    id: int | None = Field(default=None, primary_key=True)
    domain: str = Field(max_length=32, index=True)
    created_at: float = Field(index=True)
    status: str = Field(max_length=32)
    body: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


def make_engine(url: str) -> Engine:
    """An engine with SQLite tuned for one writer and many readers (WAL)."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine) -> str:
    """Bring the schema to the current head with Alembic; returns the revision."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    with engine.connect() as conn:
        rev = MigrationContext.configure(conn).get_current_revision()
    return rev or ""


class Storage:
    """Batched, non-blocking writes and simple queries; an async context manager."""

    def __init__(self, url: str, *, flush_interval_s: float = 0.5, retention_s: float = 30 * 86400) -> None:
        self.url = url
        self._flush_interval = flush_interval_s
        self._retention = retention_s
        self._pending: list[SQLModel] = []
        self._alarm_updates: list[AlarmUpdate] = []
        self._engine: Engine | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.written = 0
        self.write_errors = 0
        self.revision = ""

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("storage is not open")
        return self._engine

    async def __aenter__(self) -> Storage:
        self._engine = make_engine(self.url)
        self.revision = await asyncio.to_thread(migrate, self._engine)
        self._task = asyncio.create_task(self._writer(), name="storage.writer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Pending writes are flushed on shutdown: nothing accepted is lost.
        await self.flush()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def add(self, row: SQLModel) -> None:
        """Queue a row; written with the next batch."""
        self._pending.append(row)

    def clear_alarm(self, device_id: str, code: str, ts: float) -> None:
        self._alarm_updates.append(AlarmUpdate(device_id, code, cleared_at=ts))

    def ack_alarm(self, device_id: str, code: str, by: str, comment: str, ts: float) -> None:
        """Record who acknowledged the open alarm and why (written with the next batch)."""
        self._alarm_updates.append(AlarmUpdate(device_id, code, acked_by=by[:128], ack_comment=comment[:500]))

    async def flush(self) -> None:
        """Write everything queued so far."""
        rows, self._pending = self._pending, []
        updates, self._alarm_updates = self._alarm_updates, []
        if rows or updates:
            await asyncio.to_thread(self._write, rows, updates)

    def _write(self, rows: list[SQLModel], updates: list[AlarmUpdate]) -> None:
        try:
            with Session(self.engine) as s:
                s.add_all(rows)
                s.flush()
                for u in updates:
                    open_rows = s.exec(
                        select(AlarmRow).where(
                            AlarmRow.device_id == u.device_id,
                            AlarmRow.code == u.code,
                            col(AlarmRow.cleared_at).is_(None),
                        )
                    ).all()
                    for r in open_rows:
                        if u.cleared_at is not None:
                            r.cleared_at = u.cleared_at
                        if u.acked_by is not None:
                            r.acked_by, r.ack_comment = u.acked_by, u.ack_comment
                        s.add(r)
                s.commit()
            self.written += len(rows)
        except Exception as exc:  # a failed batch is kept, never dropped
            self.write_errors += 1
            log.error("storage_write_failed", error=str(exc), rows=len(rows))
            self._pending[:0] = rows
            self._alarm_updates[:0] = updates
            raise

    async def _writer(self) -> None:
        last_purge = 0.0
        while True:
            await asyncio.sleep(self._flush_interval)
            try:
                await self.flush()
            except Exception:
                await asyncio.sleep(min(5.0, self._flush_interval * 4))
            if time.monotonic() - last_purge > 600:
                last_purge = time.monotonic()
                await asyncio.to_thread(self.purge, time.time() - self._retention)

    def purge(self, before: float) -> int:
        """Delete state history older than `before` (retention)."""
        with Session(self.engine) as s:
            res = s.exec(delete(StateSample).where(col(StateSample.ts) < before))
            s.commit()
            return int(res.rowcount or 0)

    # ----- queries (sync; call with asyncio.to_thread from the loop) ---------------------

    def audit(self, command_id: str | None = None, device_id: str | None = None) -> Sequence[CommandAudit]:
        with Session(self.engine) as s:
            q = select(CommandAudit).order_by(col(CommandAudit.id))
            if command_id is not None:
                q = q.where(col(CommandAudit.command_id).startswith(command_id))
            if device_id is not None:
                q = q.where(CommandAudit.device_id == device_id)
            return s.exec(q).all()

    def alarms(self, open_only: bool = False) -> Sequence[AlarmRow]:
        with Session(self.engine) as s:
            q = select(AlarmRow).order_by(col(AlarmRow.id))
            if open_only:
                q = q.where(col(AlarmRow.cleared_at).is_(None))
            return s.exec(q).all()

    def history(self, device_id: str) -> Sequence[StateSample]:
        with Session(self.engine) as s:
            return s.exec(
                select(StateSample).where(StateSample.device_id == device_id).order_by(col(StateSample.ts))
            ).all()

    def plans(self, domain: str) -> Sequence[PlanRow]:
        with Session(self.engine) as s:
            return s.exec(select(PlanRow).where(PlanRow.domain == domain).order_by(col(PlanRow.id))).all()

    def upsert_devices(self, rows: Sequence[DeviceRow]) -> None:
        with Session(self.engine) as s:
            existing = set(s.exec(select(DeviceRow.id)).all())
            for r in rows:
                if r.id in existing:
                    s.merge(r)
                else:
                    s.add(r)
            s.commit()

    def table_names(self) -> list[str]:
        return sorted(inspect(self.engine).get_table_names())

    def execute_scalar(self, sql: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql)).scalar()


def dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str)
