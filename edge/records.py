"""The stored records: the tables (SQLModel), the engine, the migrations and the queries.

The schema is versioned with Alembic (`edge/migrations`); `migrate` upgrades an older
database to the head. `RecordQueries` holds the read side (sync: call it with
`asyncio.to_thread` from the loop); `edge.storage.Storage` adds the batched writer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import Engine, Index, Text, bindparam, event, inspect, text
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import JSON, Column, Field, Session, SQLModel, col, create_engine, delete, select

SCHEMA_HEAD = "0003"


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
    """An alarm's life: raised, cleared, acknowledged. At most one open row per (device, code)."""

    __tablename__ = "alarm"
    __table_args__: ClassVar[tuple[Any, ...]] = (
        Index(
            "uq_alarm_open",
            "device_id",
            "code",
            unique=True,
            sqlite_where=text("cleared_at IS NULL"),
            postgresql_where=text("cleared_at IS NULL"),
        ),
    )
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


class CommitMark(SQLModel, table=True):
    """One row per written batch, in the batch's transaction: when a commit fails on the wire
    (the connection drops after the server committed), a retry looks its mark up instead of
    writing the batch a second time."""

    __tablename__ = "storage_commit"
    token: str = Field(primary_key=True, max_length=32)
    ts: float = Field(index=True)


COMMIT_MARK_KEEP_S = 86400.0


class DeadLetter(SQLModel, table=True):
    """A row the database refused on its own (data error), kept with the error instead of lost."""

    __tablename__ = "dead_letter"
    id: int | None = Field(default=None, primary_key=True)
    table_name: str = Field(max_length=64)
    data: str = Field(sa_column=Column(Text, nullable=False))
    error: str = Field(max_length=1000)
    ts: float = Field(index=True)


DEAD_LETTER_DATA_CHARS = 8000  # a sane cap: enough to diagnose, never a 10 MB blob
DEAD_LETTER_ERROR_CHARS = 1000


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///` URL; None for an in-memory database or another kind."""
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ""
    return Path(path) if path and path != ":memory:" else None


def outbox_url(records_url: str) -> str:
    """Where the outbox lives, given the records' URL.

    Beside a SQLite records file, in a file of its own (`edge.db` -> `edge.outbox.db`): SQLite
    has one write lock per file, and a history snapshot of a city (54,000 rows, about 2 s) held
    every answer to a request behind it. PostgreSQL locks rows, so there it is the same database.
    """
    path = sqlite_path(records_url)
    if path is None:
        return records_url
    return "sqlite:///" + str(path.with_name(f"{path.stem}.outbox{path.suffix or '.db'}"))


async def dispose_engine(engine: Engine | None, executor: ThreadPoolExecutor | None) -> None:
    """Close a component's engine on its own database thread, then let the thread go (the outbox
    and the NGSI-LD retry queue each keep one thread, so no two threads share a connection)."""
    if engine is not None and executor is not None:
        await asyncio.get_running_loop().run_in_executor(executor, engine.dispose)
    if executor is not None:
        executor.shutdown(wait=False)


def make_engine(url: str, *, durable: bool = False) -> Engine:
    """An engine for the records or the outbox: a SQLite file in WAL mode, or PostgreSQL by URL.

    `durable` (the outbox): SQLite syncs every commit (`synchronous=FULL`), so an acknowledged
    append survives a power cut, and PostgreSQL keeps a pool of one; the records use `NORMAL`
    (a lost last second of history is acceptable, a stalled event loop is not).
    """
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        synchronous = "FULL" if durable else "NORMAL"

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA busy_timeout=5000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    # A connect that hangs (a dead route) or a socket that stops answering must fail within
    # seconds, so the writer backs off and retries instead of waiting on TCP for minutes.
    pool: dict[str, int] = {"pool_size": 1, "max_overflow": 1} if durable else {}
    return create_engine(
        url, pool_pre_ping=True, connect_args={"connect_timeout": 5, "tcp_user_timeout": 15_000}, **pool
    )


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


class RecordQueries:
    """The read side of the records, on `engine` (given by the subclass)."""

    @property
    def engine(self) -> Engine:
        raise NotImplementedError

    def purge(self, before: float) -> int:
        """Delete state history older than `before` (retention)."""
        with Session(self.engine) as s:
            res = s.exec(delete(StateSample).where(col(StateSample.ts) < before))
            s.exec(delete(CommitMark).where(col(CommitMark.ts) < time.time() - COMMIT_MARK_KEEP_S))
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

    def dead_letters(self) -> Sequence[DeadLetter]:
        with Session(self.engine) as s:
            return s.exec(select(DeadLetter).order_by(col(DeadLetter.id))).all()

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

    def upsert_devices(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert new devices and update changed ones (DeviceRow's columns, as plain mappings);
        returns how many rows were written. Core statements in batches, not ORM objects: a city's
        54,000 lamps took 5 s of start-up CPU as merged objects, and a restart changes few."""
        table = DeviceRow.__table__  # type: ignore[attr-defined]
        names = [c.name for c in table.columns]
        with self.engine.begin() as conn:
            known = {r[0]: tuple(r[1:]) for r in conn.execute(select(*(table.c[n] for n in names)))}
            new: list[Mapping[str, Any]] = []
            changed: list[dict[str, Any]] = []
            for r in rows:
                have = known.get(r["id"])
                if have is None:
                    new.append(r)
                elif have != tuple(r.get(n) for n in names[1:]):
                    changed.append({"b_id": r["id"], **{n: r.get(n) for n in names[1:]}})
            if new:
                conn.execute(table.insert(), new)
            if changed:
                stmt = table.update().where(table.c.id == bindparam("b_id"))
                conn.execute(stmt.values({n: bindparam(n) for n in names[1:]}), changed)
        return len(new) + len(changed)

    def table_names(self) -> list[str]:
        return sorted(inspect(self.engine).get_table_names())

    def execute_scalar(self, sql: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
