"""Storage (SQLModel): devices, downsampled state history, command audit, alarms, plans.

SQLite file by default (WAL, so readers never block the writer), PostgreSQL by URL.
Writes are queued from the event loop and flushed in batches by one writer task in
a thread, so a slow disk never stalls device polling. The schema is versioned with
Alembic (`edge/migrations`); `open` upgrades an older database to the current head.

Durability rules of the writer (issue 10):
- **A bad row never blocks the others.** A batch that fails with a data error (integrity,
  length, type) is split in halves and retried until the bad rows stand alone; a row that
  fails alone goes to the `dead_letter` table with its table, data and error, and the
  writer goes on.
- **An unreachable database loses nothing, and nothing is written twice.** A connection
  error keeps every row queued and retries with a capped, jittered exponential backoff; no
  row is dead-lettered because the database is down. Each batch writes a commit mark in
  its transaction; when the connection drops during the commit, the retry looks the mark
  up and skips a batch that did commit.
- **The backlog is bounded** (`max_backlog` rows). When full, the oldest row of the least
  important kind goes first: state samples (the next sample supersedes them), then plans
  (the latest plan is republished), then command audit, and alarms last. Every shed row
  is counted per table and logged.
- **An alarm is open at most once per (device, code)**: a raise of an alarm that is
  already open keeps the open row (a partial unique index enforces it in the database).
- **Health is an alarm**: `storage_unreachable`, `storage_backlog` and
  `storage_dead_letter` are reported through `on_alarm` after every write round (the
  callback ignores repetitions, as `Alarms.set` does). The dead-letter alarm clears once
  no row has been dead-lettered for `dead_letter_hold_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, Table, and_, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy import insert as sa_insert
from sqlalchemy import select as sa_select
from sqlmodel import SQLModel

from edge.backoff import Backoff
from edge.events import Severity
from edge.lifecycle import Service
from edge.records import (
    DEAD_LETTER_DATA_CHARS,
    DEAD_LETTER_ERROR_CHARS,
    AlarmRow,
    AlarmUpdate,
    CommitMark,
    DeadLetter,
    RecordQueries,
    make_engine,
    migrate,
)

log = structlog.get_logger(__name__)


class StorageUnavailable(Exception):  # noqa: N818 - reads as a state, like TimeoutError
    """The database could not be reached; the rows stay queued."""


AlarmCallback = Callable[[str, bool, Severity, str], None]
"""(code, active, severity, detail): how Storage reports its own health as alarms."""

# Write order, most important first; rows are shed from the end of this order when full.
LANES: tuple[str, ...] = ("alarm", "audit", "plan", "state_sample")
_LANE_OF = {"alarm": "alarm", "command_audit": "audit", "plan": "plan", "state_sample": "state_sample"}
MAX_BATCH = 2000  # rows per transaction: bounds the rows in flight and the cost of a retry
_SUSPECT_TRIES = 3  # a row failing with a non-data error while the database answers


@dataclass(slots=True)
class _Op:
    """One queued write: an insert into `table`, or a change to an open alarm."""

    table: str
    data: SQLModel | dict[str, Any] | AlarmUpdate  # a row is turned into a dict in the writer thread
    tries: int = 0
    token: str | None = None  # the commit mark of an attempt whose commit may have gone through


@dataclass(slots=True)
class _Outcome:
    """What a write attempt did (built in the writer thread, read on the loop)."""

    written: int = 0
    dead: list[tuple[_Op, str]] = field(default_factory=list)
    retry: list[_Op] = field(default_factory=list)
    down: BaseException | None = None


class Storage(Service, RecordQueries):
    """Batched, non-blocking writes and simple queries; an async context manager."""

    service_name = "storage"

    def __init__(
        self,
        url: str,
        *,
        flush_interval_s: float = 0.5,
        retention_s: float = 30 * 86400,
        max_backlog: int = 100_000,
        retry_max_s: float = 10.0,
        dead_letter_hold_s: float = 600.0,
        close_timeout_s: float = 10.0,
        on_alarm: AlarmCallback | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        self._flush_interval = flush_interval_s
        self._retention = retention_s
        self._max_backlog = max(10, max_backlog)
        self._alarm_backlog = max(1, self._max_backlog // 10)
        self._retry_max = retry_max_s
        self._dead_hold = dead_letter_hold_s
        self._close_timeout = close_timeout_s
        self._on_alarm = on_alarm
        self._lanes: dict[str, deque[_Op]] = {name: deque() for name in LANES}
        self._in_flight = 0
        self._engine: Engine | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closing = False
        # consecutive failed attempts while the database is down; at least half the cap each
        self._backoff = Backoff(base_s=flush_interval_s, max_s=max(retry_max_s, flush_interval_s), floor=0.5)
        self._health: dict[str, bool] = {}
        self._last_dead = -1e18  # monotonic time of the last dead-lettered row
        self._dead_reported = 0  # dead-lettered rows the health report has seen
        self._shedding = False
        self.written = 0
        self.write_errors = 0
        self.dead_lettered = 0
        self.shed: Counter[str] = Counter()
        self.peak_backlog = 0
        self.unreachable_since: float | None = None
        self.revision = ""

    @property
    def engine(self) -> Engine:
        """The open engine (the writer's and the queries')."""
        if self._engine is None:
            raise RuntimeError("storage is not open")
        return self._engine

    @property
    def backlog(self) -> int:
        """Rows queued or being written."""
        return sum(len(q) for q in self._lanes.values()) + self._in_flight

    async def _start(self) -> None:
        self._engine = make_engine(self.url)
        self.revision = await asyncio.to_thread(migrate, self._engine)
        self._closing = False
        self._task = self.spawn(self._writer(), "writer")

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Write what is queued (bounded by `close_timeout_s`), then close the engine."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            done, _ = await asyncio.wait([self._task], timeout=self._close_timeout)
            if done and not self._task.cancelled() and (err := self._task.exception()) is not None:
                log.error("storage_writer_failed", error=str(err))
            self._task = None
        await super().__aexit__(exc_type, exc, tb)  # cancels a writer still running

    async def _stop(self) -> None:
        if self.backlog:
            log.error("storage_unwritten_at_exit", rows=self.backlog, by_table=self._counts())
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # ----- queueing (on the event loop) ----------------------------------------------------

    def add(self, row: SQLModel) -> None:
        """Queue a row; written with the next batch.

        Only the row's column values are kept (a plain dict: about 0.5 KB for a state sample,
        against 1.7 KB for the ORM object), copied in about 2 µs on the event loop."""
        self._enqueue(_Op(str(row.__tablename__), _row_data(row)))

    def add_data(self, table: str, data: dict[str, Any]) -> None:
        """Queue a row given as its column values (no ORM object is built: a city's history
        snapshot is 54,000 rows, and a model instance costs 10x the dict). Written with the next
        batch, in the same multi-row INSERT as the other rows of its table."""
        if table not in SQLModel.metadata.tables or table == "alarm":
            raise ValueError(f"add_data: {table!r} is not an insert-only table")
        self._enqueue(_Op(table, data))

    def clear_alarm(self, device_id: str, code: str, ts: float) -> None:
        """Close the open row of an alarm (written with the next batch, in order with raises)."""
        self._enqueue(_Op("alarm", AlarmUpdate(device_id, code, cleared_at=ts)))

    def ack_alarm(self, device_id: str, code: str, by: str, comment: str, ts: float) -> None:
        """Record who acknowledged the open alarm and why (written with the next batch)."""
        update_ = AlarmUpdate(device_id, code, acked_by=by[:128], ack_comment=comment[:500])
        self._enqueue(_Op("alarm", update_))

    def _enqueue(self, op: _Op) -> None:
        if self.backlog >= self._max_backlog:
            self._shed_one()
        self._lanes[_LANE_OF.get(op.table, "audit")].append(op)
        backlog = self.backlog
        self.peak_backlog = max(self.peak_backlog, backlog)

    def _shed_one(self) -> bool:
        """Drop the oldest row of the least important non-empty lane, counted and logged."""
        for name in reversed(LANES):
            lane = self._lanes[name]
            if lane:
                op = lane.popleft()
                self.shed[op.table] += 1
                if not self._shedding:
                    self._shedding = True
                    log.error("storage_backlog_full", max_backlog=self._max_backlog, shedding=op.table)
                return True
        return False

    def _counts(self) -> dict[str, int]:
        return {name: len(q) for name, q in self._lanes.items() if q}

    # ----- writing ------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write everything queued so far; raises StorageUnavailable if the database is down."""
        err = await self._drain()
        if err is not None:
            raise StorageUnavailable(str(err)) from err

    async def _drain(self) -> BaseException | None:
        """Write batches until the queue is empty; returns the error if the database is down."""
        async with self._lock:
            while True:
                batch = self._take()
                if not batch:
                    return None
                self._in_flight = len(batch)
                try:
                    out = await asyncio.to_thread(self._write_batch, batch)
                except BaseException:
                    self._requeue(batch)  # cancelled while the thread runs: keep the rows
                    raise
                finally:
                    self._in_flight = 0
                self._account(out)
                self._requeue(out.retry)
                if out.down is not None:
                    return out.down

    def _take(self) -> list[_Op]:
        batch: list[_Op] = []
        size = min(MAX_BATCH, self._max_backlog // 2)  # the rest stays sheddable while in flight
        for name in LANES:
            lane = self._lanes[name]
            while lane and len(batch) < size:
                batch.append(lane.popleft())
        return batch

    def _requeue(self, ops: Sequence[_Op]) -> None:
        """Put unwritten rows back at the front of their lanes, in their original order
        (rows added while they were in flight may have filled the backlog: shed to the bound)."""
        for op in reversed(ops):
            self._lanes[_LANE_OF.get(op.table, "audit")].appendleft(op)
        while self.backlog - self._in_flight > self._max_backlog and self._shed_one():
            pass

    def _account(self, out: _Outcome) -> None:
        self.written += out.written
        if out.dead:
            self.dead_lettered += len(out.dead)
            self._last_dead = time.monotonic()
            for op, error in out.dead:
                log.error("storage_row_dead_lettered", table=op.table, error=error[:300])
        if out.down is not None:
            self.write_errors += 1
            if self.unreachable_since is None:
                self.unreachable_since = time.monotonic()
                log.error("storage_unreachable", error=_error_text(out.down)[:300], backlog=self.backlog)
        elif self.unreachable_since is not None:
            log.info(
                "storage_reachable_again",
                down_s=round(time.monotonic() - self.unreachable_since, 1),
                backlog=self.backlog,
            )
            self.unreachable_since = None

    def _write_batch(self, ops: list[_Op]) -> _Outcome:
        """One transaction for the batch; on failure, isolate the bad rows (runs in a thread)."""
        out = _Outcome()
        for op in ops:
            if isinstance(op.data, SQLModel):  # serialized here, off the event loop
                op.data = _row_data(op.data)
        tokens = {op.token for op in ops if op.token is not None}
        if tokens:
            known = self._committed(tokens)
            if known is None:
                return _Outcome(retry=ops, down=StorageUnavailable("commit marks cannot be read"))
            out.written += sum(1 for op in ops if op.token in known)
            ops = [op for op in ops if op.token not in known]
            for op in ops:
                op.token = None
        self._write_part(ops, out)
        return out

    def _committed(self, tokens: set[str]) -> set[str] | None:
        """Which of these commit marks exist (None: the database cannot be asked)."""
        t = _table(CommitMark)
        try:
            with self.engine.connect() as conn:
                found: list[Any] = list(
                    conn.execute(sa_select(t.c.token).where(t.c.token.in_(tokens))).scalars()
                )
            return {str(x) for x in found}
        except Exception:
            return set() if self._ping() else None

    def _write_part(self, ops: list[_Op], out: _Outcome) -> None:
        """Write `ops` in one transaction; if the database refuses it, split it in halves until
        the bad rows stand alone (a poison row in 2,000 costs about 22 transactions, not 2,000).
        Once the database is found down, everything not yet written goes to `out.retry`."""
        if out.down is not None:
            out.retry.extend(ops)
            return
        token, sent = uuid.uuid4().hex, False
        try:
            with self.engine.connect() as conn, conn.begin():
                _apply(conn, ops)
                conn.execute(sa_insert(_table(CommitMark)).values(token=token, ts=time.time()))
                sent = True  # from here on only the commit can fail
        except Exception as exc:
            error = exc
        else:
            out.written += len(ops)
            return
        if sent:  # the commit failed on the wire: it may have been applied
            known = self._committed({token})
            if known is None:
                for op in ops:
                    op.token = token
                out.retry.extend(ops)
                out.down = error
                return
            if token in known:
                out.written += len(ops)
                return
        if not _data_error(error) and not self._ping():
            out.retry.extend(ops)
            out.down = error
            return
        if len(ops) > 1:
            mid = len(ops) // 2
            self._write_part(ops[:mid], out)
            self._write_part(ops[mid:], out)
            return
        op = ops[0]
        if not _data_error(error):
            op.tries += 1
            if op.tries < _SUSPECT_TRIES:
                out.retry.append(op)  # e.g. a lock timeout while the database answers: try again
                return
        try:
            self._dead_letter(op, error)
        except Exception as exc:  # the dead-letter table itself cannot be written
            out.retry.append(op)
            out.down = exc
            return
        out.dead.append((op, _error_text(error)))

    def _ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    def _dead_letter(self, op: _Op, error: BaseException) -> None:
        if isinstance(op.data, AlarmUpdate):
            payload = {"update": "AlarmUpdate", **_fields(op.data)}
        else:
            payload = op.data if isinstance(op.data, dict) else _row_data(op.data)
        data = dumps(payload)
        if len(data) > DEAD_LETTER_DATA_CHARS:
            data = data[: DEAD_LETTER_DATA_CHARS - 40] + f"...(truncated from {len(data)} chars)"
        with self.engine.begin() as conn:
            conn.execute(
                sa_insert(_table(DeadLetter)).values(
                    table_name=op.table[:64],
                    data=data,
                    error=_error_text(error)[:DEAD_LETTER_ERROR_CHARS],
                    ts=time.time(),
                )
            )

    async def _writer(self) -> None:
        """Flush every `flush_interval_s`; back off while the database is down; report health."""
        last_purge = time.monotonic()
        delay = self._flush_interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            try:
                err = await self._drain()
                self._report_health(err)
            except Exception as exc:  # a bug here must not end all writing: log, back off, go on
                log.exception("storage_writer_error")
                err = exc
            if self._closing:
                return
            if err is None:
                self._backoff.reset()
                delay = self._flush_interval
            else:
                self._backoff.attempt = max(1, self._backoff.attempt)  # the first retry waits 2x the interval
                delay = self._backoff.next_delay()
            if err is None and time.monotonic() - last_purge > 600:
                last_purge = time.monotonic()
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.purge, time.time() - self._retention)

    def _report_health(self, err: BaseException | None) -> None:
        """Raise and clear the storage alarms (`storage_unreachable`, `_backlog`, `_dead_letter`)."""
        backlog = self.backlog
        if backlog == 0:
            self._shedding = False
        was_backlogged = self._health.get("storage_backlog", False)
        backlogged = backlog > self._alarm_backlog or (was_backlogged and backlog > self._alarm_backlog // 2)
        shed = sum(self.shed.values())
        new_dead, self._dead_reported = self.dead_lettered > self._dead_reported, self.dead_lettered
        states = {
            "storage_unreachable": (
                err is not None,
                Severity.CRITICAL,
                f"database unreachable, {backlog} rows waiting: {_error_text(err)[:200]}"
                if err is not None
                else "",
            ),
            "storage_backlog": (
                backlogged,
                Severity.MAJOR,
                f"{backlog} rows waiting (bound {self._max_backlog}, {shed} shed so far)",
            ),
            "storage_dead_letter": (
                new_dead or time.monotonic() - self._last_dead < self._dead_hold,
                Severity.MAJOR,
                f"{self.dead_lettered} rows refused by the database, kept in dead_letter",
            ),
        }
        # Reported on every round, not only on changes: `on_alarm` (Alarms.set) ignores
        # repetitions, and an alarm restored as pending after a restart gets settled.
        for code, (active, severity, detail) in states.items():
            self._health[code] = active
            if self._on_alarm is not None:
                self._on_alarm(code, active, severity, detail)


def dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str)


def _table(model: type[SQLModel]) -> Table:
    return model.__table__  # type: ignore[attr-defined,no-any-return]


def _row_data(row: SQLModel) -> dict[str, Any]:
    """A table row's column values (SQLAlchemy keeps them in the instance dict; model_dump
    gives the same and costs 13 µs instead of 2)."""
    data = {k: v for k, v in vars(row).items() if not k.startswith("_")}
    if data.get("id") is None:
        data.pop("id", None)  # the database assigns it
    return data


def _apply(conn: Connection, ops: Sequence[_Op]) -> None:
    """Write ops in one transaction: inserts batched per table, alarm changes in queue order."""
    inserts: dict[str, list[dict[str, Any]]] = {}
    for op in ops:
        if isinstance(op.data, SQLModel):
            op.data = _row_data(op.data)
        if op.table == "alarm":
            _apply_alarm(conn, op.data)
        elif isinstance(op.data, dict):
            inserts.setdefault(op.table, []).append(op.data)
    for name, rows in inserts.items():
        conn.execute(sa_insert(SQLModel.metadata.tables[name]), rows)


def _apply_alarm(conn: Connection, data: dict[str, Any] | AlarmUpdate) -> None:
    """A raise keeps an alarm's open row if there is one; a clear or ack changes the open row."""
    t = _table(AlarmRow)
    if isinstance(data, AlarmUpdate):
        values: dict[str, Any] = {}
        if data.cleared_at is not None:
            values["cleared_at"] = data.cleared_at
        if data.acked_by is not None:
            values["acked_by"], values["ack_comment"] = data.acked_by, data.ack_comment
        if values:
            conn.execute(update(t).where(_open_alarm(t, data.device_id, data.code)).values(**values))
        return
    if data.get("cleared_at") is None:
        found = conn.execute(
            sa_select(t.c.id).where(_open_alarm(t, data["device_id"], data["code"])).limit(1)
        ).first()
        if found is not None:
            return  # already open (a restart, a repeated raise): the open row stands
    conn.execute(sa_insert(t).values(**data))


def _open_alarm(t: Table, device_id: str, code: str) -> Any:
    return and_(t.c.device_id == device_id, t.c.code == code, t.c.cleared_at.is_(None))


def _data_error(exc: BaseException) -> bool:
    """The row is at fault (integrity, length, type), not the connection."""
    if isinstance(exc, sa_exc.IntegrityError | sa_exc.DataError | sa_exc.ProgrammingError):
        return True
    if isinstance(exc, sa_exc.StatementError) and not isinstance(exc, sa_exc.DBAPIError):
        return True  # parameters that could not be bound or serialized
    return isinstance(exc, TypeError | ValueError | KeyError)


def _error_text(exc: BaseException) -> str:
    """The driver's message without the SQL and parameters (they may be huge)."""
    orig = getattr(exc, "orig", None)
    text_ = str(orig if orig is not None else exc).strip()
    return f"{type(orig if orig is not None else exc).__name__}: {text_}"


def _fields(update_: AlarmUpdate) -> dict[str, Any]:
    return {k: getattr(update_, k) for k in update_.__slots__}
