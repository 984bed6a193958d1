"""The NGSI-LD exporter's retry queue: entities a broker did not take, in the daemon's database.

One row per entity (`entity_id` is unique), holding the newest state that still has to go: when a
newer state of an entity is queued, it replaces the older row (counted as `superseded`: nothing is
lost, an upsert of the older state would only be overwritten). Rows go out oldest first and are
deleted by id once the broker took them (or refused them for good), so a row replaced while its
batch was in flight stays. The table (`ngsi_queue`) is in the records database (migration 0003;
created here too if missing), so it survives a restart of the daemon.

Bound: at most `max_rows` rows; beyond, the oldest are dropped, counted in `dropped` and logged
once per episode. With one row per entity the bound is only reached by a site with more entities
than rows, never by a long outage.

Every database call runs on one thread of its own (the event loop never waits on the disk); a
database that is busy (SQLite locked by the history writer) is waited out with backoff.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from sqlalchemy import BigInteger, Column, Engine, Float, Integer, LargeBinary, MetaData, String, Table, func
from sqlalchemy import delete as sa_delete
from sqlalchemy import insert as sa_insert
from sqlalchemy import select as sa_select
from sqlalchemy.exc import OperationalError

from edge.backoff import Backoff
from edge.lifecycle import Service, ServiceState
from edge.records import dispose_engine, make_engine

log = structlog.get_logger(__name__)

_T = TypeVar("_T")
WRITE_TRIES = 10  # a busy database is waited out this many tries (about 10 s with backoff)
CHUNK = 500  # ids per IN (...) clause

METADATA = MetaData()
QUEUE = Table(
    "ngsi_queue",
    METADATA,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("entity_id", String(300), nullable=False, unique=True),
    Column("body", LargeBinary(), nullable=False),
    Column("queued_at", Float(), nullable=False),
    sqlite_autoincrement=True,  # an id is never reused: an ack of a replaced row deletes nothing new
)


@dataclass(frozen=True, slots=True)
class Queued:
    """A queued entity: its row id, entity id and normalized JSON body."""

    id: int
    entity_id: str
    body: bytes


class RetryQueue(Service):
    """Entities waiting to be sent again (see the module docstring); an async context manager."""

    service_name = "ngsi.queue"

    def __init__(self, url: str, *, max_rows: int = 200_000) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be positive")
        super().__init__()
        self._url = url
        self._max_rows = max_rows
        self._engine: Engine | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._rows = 0
        self.superseded = 0
        self.dropped = 0
        self._dropping = False

    @property
    def rows(self) -> int:
        """Entities waiting."""
        return self._rows

    async def _start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ngsi-queue")
        self._engine = make_engine(self._url, durable=True)
        self._rows = await self._run(self._open_sync)
        if self._rows:
            log.info("ngsi_queue_opened", queued=self._rows)

    async def _stop(self) -> None:
        engine, self._engine = self._engine, None
        executor, self._executor = self._executor, None
        await dispose_engine(engine, executor)

    async def put(self, items: Iterable[tuple[str, bytes]]) -> None:
        """Queue (entity id, body) pairs, each replacing a row of the same entity."""
        newest = dict(items)  # the last state of an entity given twice wins
        if newest:
            await self._write(self._put_sync, list(newest.items()))

    async def peek(self, n: int) -> list[Queued]:
        """The `n` oldest rows, oldest first."""
        return await self._run(self._peek_sync, n)

    async def ack(self, ids: Sequence[int]) -> int:
        """Delete rows by id (sent, or refused for good); returns how many were deleted."""
        return await self._write(self._ack_sync, list(ids)) if ids else 0

    # ----- internals (the *_sync methods run on the queue's thread, one at a time) -------------

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self.state is not ServiceState.OPENED or self._executor is None:
            raise RuntimeError(f"the NGSI-LD retry queue is {self.state.value}")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _write(self, fn: Callable[..., _T], *args: Any) -> _T:
        backoff = Backoff(base_s=0.05, max_s=2.0, floor=0.5)
        while True:
            try:
                return await self._run(fn, *args)
            except OperationalError as exc:
                if backoff.attempt + 1 >= WRITE_TRIES:
                    raise
                log.warning("ngsi_queue_write_retry", attempt=backoff.attempt + 1, error=str(exc.orig)[:200])
                await backoff.wait()

    def _open_sync(self) -> int:
        assert self._engine is not None
        QUEUE.create(self._engine, checkfirst=True)
        with self._engine.connect() as conn:
            return int(conn.execute(sa_select(func.count()).select_from(QUEUE)).scalar_one())

    def _put_sync(self, items: list[tuple[str, bytes]]) -> None:
        assert self._engine is not None
        now = time.time()
        ids = [e for e, _ in items]
        with self._engine.begin() as conn:
            superseded = sum(
                conn.execute(sa_delete(QUEUE).where(QUEUE.c.entity_id.in_(ids[i : i + CHUNK]))).rowcount
                for i in range(0, len(ids), CHUNK)
            )
            conn.execute(sa_insert(QUEUE), [{"entity_id": e, "body": b, "queued_at": now} for e, b in items])
            rows = self._rows - superseded + len(items)
            dropped = 0
            if rows > self._max_rows:
                oldest = sa_select(QUEUE.c.id).order_by(QUEUE.c.id).limit(rows - self._max_rows)
                dropped = conn.execute(sa_delete(QUEUE).where(QUEUE.c.id.in_(oldest))).rowcount
        self._rows = rows - dropped
        self.superseded += superseded
        if dropped:
            self.dropped += dropped
            if not self._dropping:
                self._dropping = True
                log.error("ngsi_queue_full_dropping_oldest", max_rows=self._max_rows, dropped=dropped)
        elif self._dropping:
            self._dropping = False
            log.warning("ngsi_queue_below_limit", dropped_total=self.dropped)

    def _peek_sync(self, n: int) -> list[Queued]:
        assert self._engine is not None
        stmt = sa_select(QUEUE.c.id, QUEUE.c.entity_id, QUEUE.c.body).order_by(QUEUE.c.id).limit(n)
        with self._engine.connect() as conn:
            return [Queued(int(r.id), str(r.entity_id), bytes(r.body)) for r in conn.execute(stmt)]

    def _ack_sync(self, ids: list[int]) -> int:
        assert self._engine is not None
        with self._engine.begin() as conn:
            deleted = sum(
                conn.execute(sa_delete(QUEUE).where(QUEUE.c.id.in_(ids[i : i + CHUNK]))).rowcount
                for i in range(0, len(ids), CHUNK)
            )
        self._rows -= deleted
        return deleted
