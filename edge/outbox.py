"""Persistent outbox: reliable MQTT messages wait in the database until the broker's PUBACK.

`MqttLink.publish_reliable` appends here; the link's drainer peeks the oldest rows,
publishes them with QoS 1 and acks (deletes) them only once the broker has
acknowledged them. A daemon restart, a broker outage or a network cut therefore loses
nothing that `append` returned for (at-least-once: a message may be sent twice when a
connection drops between the broker's PUBACK and the delete).

Writes go through one writer task that batches every append waiting at that moment
into a single transaction (group commit), run on one dedicated database thread so the
event loop never waits on the disk and SQLite never sees two writers. SQLite runs in
WAL mode with `synchronous=FULL` (an appended alarm survives a power cut, not only a
crash); a commit costs one fsync, shared by the whole batch.

On SQLite the outbox has a file of its own (`records.outbox_url`): a commit here never waits
for SQLite's one write lock behind a history snapshot. Rows an older release left in the
records file (`carry_from`) are moved over when the outbox opens, oldest first, in batches; a
crash mid-move can send a carried message twice, never lose it (at least once, as above).

Bound: at most `max_rows` rows. When an append would exceed it, the oldest rows are
dropped, counted in `dropped` and logged once per episode. Telemetry never comes here
(it goes out at QoS 0 through `MqttLink.publish_fast`), so the bound is a disk safety
valve for a very long outage, not a routine path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, TypeVar

import structlog
from sqlalchemy import BigInteger, Column, Engine, Index, Integer, LargeBinary, func, inspect
from sqlalchemy import delete as sa_delete
from sqlalchemy import insert as sa_insert
from sqlalchemy import select as sa_select
from sqlalchemy.exc import OperationalError
from sqlmodel import Field, SQLModel

from edge.backoff import Backoff
from edge.lifecycle import Service, ServiceState
from edge.records import dispose_engine, make_engine, sqlite_path

log = structlog.get_logger(__name__)

_T = TypeVar("_T")
WRITE_TRIES = 12  # a busy database is waited out this many tries (about 15 s with backoff)
CARRY_BATCH = 5000  # rows moved per transaction from an older release's records file


class OutboxMessage(SQLModel, table=True):
    """One reliable message waiting for its PUBACK."""

    __tablename__: ClassVar[str] = "edge_outbox"
    # AUTOINCREMENT on SQLite: an id is never reused, so an ack for a dropped row can
    # never delete a newer message that got the same id.
    __table_args__: ClassVar[dict[str, Any]] = {"sqlite_autoincrement": True}

    id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    topic: str
    payload: bytes = Field(sa_column=Column(LargeBinary(), nullable=False))
    qos: int = 1
    retain: bool = False
    correlation_data: bytes | None = Field(default=None, sa_column=Column(LargeBinary(), nullable=True))
    response_topic: str | None = None
    content_type: str | None = None
    created_at: float


_TABLE = OutboxMessage.__table__  # type: ignore[attr-defined]
_IS_REPLY = _TABLE.c.response_topic.isnot(None)
# Replies are few and wanted first: found through their own (partial) index, not by scanning
# a backlog of a city's retained states.
_REPLIES = Index("ix_edge_outbox_replies", _TABLE.c.id, sqlite_where=_IS_REPLY, postgresql_where=_IS_REPLY)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """An outbox row as the drain reads it: plain values, no ORM object per message."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    correlation_data: bytes | None
    response_topic: str | None
    content_type: str | None
    created_at: float


@dataclass(slots=True)
class _Pending:
    row: dict[str, Any]
    done: asyncio.Future[None]


class Outbox(Service):
    """Reliable messages in a database table, oldest first, deleted on ack.

    Use as `async with Outbox(url) as outbox:`; the table is created if missing.
    """

    service_name = "outbox"

    def __init__(
        self, url: str, *, max_rows: int = 1_000_000, batch_max: int = 1000, carry_from: str = ""
    ) -> None:
        """`carry_from`: another database whose outbox rows move here on open (an older
        release kept them in the records file)."""
        if max_rows < 1:
            raise ValueError("max_rows must be positive")
        super().__init__()
        self._url = url
        self._carry_from = carry_from
        self._max_rows = max_rows
        self._batch_max = batch_max
        self._engine: Engine | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._rows = 0
        self._dropped = 0
        self._dropping = False
        self._appended = 0
        self._write_retries = 0  # batches written again after the database was busy

    # -- lifecycle -------------------------------------------------------------------

    async def _start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._engine = make_engine(self._url, durable=True)
        carried = await self._run(self._carry_sync)
        self._rows = await self._run(self._open_sync)
        self._writer = self.spawn(self._write_loop(), "writer")
        if carried:
            log.warning("outbox_carried_over", rows=carried, source=str(sqlite_path(self._carry_from)))
        if self._rows:
            log.info("outbox_opened", backlog=self._rows)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Let the writer commit what is queued, then close (a clean shutdown loses no append)."""
        writer, self._writer = self._writer, None
        if writer is not None and self.state is ServiceState.OPENED:
            self._queue.put_nowait(None)
            try:
                await writer
            except asyncio.CancelledError:
                writer.cancel()
                raise
        await super().__aexit__(exc_type, exc, tb)

    async def _stop(self) -> None:
        await self._dispose()

    async def _dispose(self) -> None:
        engine, self._engine = self._engine, None
        executor, self._executor = self._executor, None
        await dispose_engine(engine, executor)

    # -- public API --------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Rows committed and not yet acked."""
        return self._rows

    @property
    def write_retries(self) -> int:
        """Inserts tried again because the database was busy (locked)."""
        return self._write_retries

    @property
    def dropped(self) -> int:
        """Rows dropped because the outbox was full (since this process started)."""
        return self._dropped

    @property
    def appended(self) -> int:
        """Rows committed by `append` since this process started."""
        return self._appended

    async def append(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        content_type: str | None = None,
    ) -> None:
        """Store one message; returns once it is committed (batched with concurrent appends).

        If the caller is cancelled while waiting, the message may still be stored.
        """
        self._check_open()
        await self._queue_row(
            topic, payload, qos, retain, content_type, time.time(), response_topic, correlation_data
        )

    async def append_many(
        self, messages: Sequence[tuple[str, bytes, bool]], *, qos: int = 1, content_type: str | None = None
    ) -> None:
        """Store (topic, payload, retain) messages; returns once all are committed (in the same
        batches as `append`, without a task per message: a city's retained states at once)."""
        self._check_open()
        now = time.time()
        await asyncio.gather(*(self._queue_row(t, p, qos, r, content_type, now) for t, p, r in messages))

    def _queue_row(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        content_type: str | None,
        created_at: float,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> asyncio.Future[None]:
        """Queue one row for the writer; the future is done once its batch is committed."""
        row = {"topic": topic, "payload": payload, "qos": qos, "retain": retain, "response_topic": response_topic,
               "correlation_data": correlation_data, "content_type": content_type, "created_at": created_at}  # fmt: skip
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(row, done))
        return done

    async def peek(
        self, n: int, *, after_id: int | None = None, replies: bool | None = None
    ) -> list[StoredMessage]:
        """The `n` oldest rows (with id > `after_id` if given), oldest first, detached.

        `replies`: only answers to requests (rows with a response topic), or only the others.
        """
        self._check_open()
        return await self._run(self._peek_sync, n, after_id, replies)

    async def ack(self, ids: Iterable[int]) -> int:
        """Delete rows whose PUBACK arrived; returns how many were deleted."""
        self._check_open()
        id_list = list(ids)
        if not id_list:
            return 0
        return await self._run(self._ack_sync, id_list)

    # -- internals ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.state is not ServiceState.OPENED:
            raise RuntimeError(f"outbox is {self.state.value}")

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _write_loop(self) -> None:
        """Group commit: everything queued while the previous batch was written goes next."""
        stopping = False
        while not stopping:
            item = await self._queue.get()
            batch: list[_Pending] = []
            if item is None:
                stopping = True
            else:
                batch.append(item)
            while len(batch) < self._batch_max and not self._queue.empty():
                more = self._queue.get_nowait()
                if more is None:
                    stopping = True
                else:
                    batch.append(more)
            if not batch:
                continue
            try:
                await self._insert_retrying([p.row for p in batch])
            except asyncio.CancelledError:
                for p in batch:
                    if not p.done.done():
                        p.done.cancel()
                raise
            except Exception as exc:
                log.exception("outbox_write_failed", rows=len(batch))
                for p in batch:
                    if not p.done.done():
                        p.done.set_exception(exc)
                continue
            for p in batch:
                if not p.done.done():
                    p.done.set_result(None)

    async def _insert_retrying(self, rows: list[dict[str, Any]]) -> None:
        """Insert a batch; a busy database (SQLite locked by the history writer on a loaded
        node) is waited out with backoff, up to WRITE_TRIES, instead of failing the publishers."""
        backoff = Backoff(base_s=0.05, max_s=2.0, floor=0.5)
        while True:
            try:
                await self._run(self._insert_sync, rows)
            except OperationalError as exc:
                if backoff.attempt + 1 >= WRITE_TRIES:
                    raise
                self._write_retries += 1
                log.warning(
                    "outbox_write_retry", rows=len(rows), attempt=backoff.attempt + 1, error=str(exc.orig)
                )
                await backoff.wait()
            else:
                return

    # The *_sync methods run on the outbox thread only, one at a time.

    def _open_sync(self) -> int:
        assert self._engine is not None
        _TABLE.create(self._engine, checkfirst=True)
        _REPLIES.create(self._engine, checkfirst=True)
        with self._engine.connect() as conn:
            count = conn.execute(sa_select(func.count()).select_from(_TABLE)).scalar_one()
        return int(count)

    def _carry_sync(self) -> int:
        """Move the rows of `carry_from`'s outbox table here, oldest first; returns how many.

        Each batch is committed here before it is deleted there, so a crash between the two
        leaves a copy in both (sent twice), never in neither."""
        assert self._engine is not None
        _TABLE.create(self._engine, checkfirst=True)
        src = sqlite_path(self._carry_from)
        if src is None or not src.exists() or src.resolve() == _resolved(self._url):
            return 0
        old = make_engine(self._carry_from, durable=True)
        moved = 0
        try:
            if not inspect(old).has_table(_TABLE.name):
                return 0
            while True:
                with old.connect() as conn:
                    query = sa_select(_TABLE).order_by(_TABLE.c.id).limit(CARRY_BATCH)
                    rows = [dict(r) for r in conn.execute(query).mappings()]
                if not rows:
                    return moved
                ids = [r.pop("id") for r in rows]
                with self._engine.begin() as conn:
                    conn.execute(sa_insert(_TABLE), rows)
                with old.begin() as conn:
                    conn.execute(sa_delete(_TABLE).where(_TABLE.c.id.in_(ids)))
                moved += len(rows)
        finally:
            old.dispose()

    def _insert_sync(self, rows: Sequence[dict[str, Any]]) -> None:
        assert self._engine is not None
        overflow = self._rows + len(rows) - self._max_rows
        with self._engine.begin() as conn:
            conn.execute(sa_insert(_TABLE), list(rows))
            dropped = 0
            if overflow > 0:
                oldest = sa_select(_TABLE.c.id).order_by(_TABLE.c.id).limit(overflow)
                result = conn.execute(sa_delete(_TABLE).where(_TABLE.c.id.in_(oldest)))
                dropped = result.rowcount
        self._rows += len(rows) - dropped
        self._appended += len(rows)
        if dropped:
            self._dropped += dropped
            if not self._dropping:
                self._dropping = True
                log.warning("outbox_full_dropping_oldest", max_rows=self._max_rows)
        elif self._dropping and self._rows < self._max_rows:
            self._dropping = False
            log.warning("outbox_below_limit", dropped_total=self._dropped)

    def _peek_sync(self, n: int, after_id: int | None, replies: bool | None) -> list[StoredMessage]:
        assert self._engine is not None
        stmt = sa_select(_TABLE).order_by(_TABLE.c.id).limit(n)
        if after_id is not None:
            stmt = stmt.where(_TABLE.c.id > after_id)
        if replies is not None:
            stmt = stmt.where(_IS_REPLY if replies else _TABLE.c.response_topic.is_(None))
        with self._engine.connect() as conn:
            return [StoredMessage(**row._mapping) for row in conn.execute(stmt)]

    def _ack_sync(self, ids: list[int]) -> int:
        assert self._engine is not None
        with self._engine.begin() as conn:
            deleted = conn.execute(sa_delete(_TABLE).where(_TABLE.c.id.in_(ids))).rowcount
        self._rows -= deleted
        if self._dropping and self._rows < self._max_rows:
            self._dropping = False
            log.warning("outbox_below_limit", dropped_total=self._dropped)
        return deleted


class DrainCursor:
    """How far a drain has read the outbox: replies first, then everything else, each oldest
    first. An answer to a request must not wait behind a city's retained states (54,000 after
    a plan step); the retained states keep their order among themselves."""

    __slots__ = ("bulk", "reply")

    def __init__(self) -> None:
        self.reply: int | None = None
        self.bulk: int | None = None

    async def next(self, outbox: Outbox, n: int) -> list[StoredMessage]:
        """The next rows to send (at most `n`); [] when everything committed has been read."""
        rows = await outbox.peek(n, after_id=self.reply, replies=True)
        if rows:
            self.reply = rows[-1].id
            return rows
        rows = await outbox.peek(n, after_id=self.bulk, replies=False)
        if rows:
            self.bulk = rows[-1].id
        return rows


def _resolved(url: str) -> object:
    path = sqlite_path(url)
    return path.resolve() if path is not None else url
