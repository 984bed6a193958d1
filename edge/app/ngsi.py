"""The NGSI-LD exporter: the site's devices as FIWARE Smart Data Models entities, for the city's
data platform (`[ngsi]`, off by default; docs/ngsi-ld.md).

It follows the state store (`StateStore.watch`: a set of dirty devices, nothing else per change)
and, every `flush_interval_s` (real seconds), turns each dirty device into its entity
(`edge.app.ngsi_models`) from the store's newest state: many changes of a device between two
rounds are one entity, and an entity goes out at most every `min_interval_s`. Every device's
entity goes out once at start.

`mode = "http"`: batches of `batch_size` entities are upserted to the context broker,
`POST {url}/ngsi-ld/v1/entityOperations/upsert?options=update` (`application/ld+json`, the
`NGSILD-Tenant` header and a bearer token when configured), one connection per request and each
under `timeout_s` (`edge.http_client`). What the broker does not take for a reason of its own
(no connection, a timeout, 5xx, 401/403/404/408/429, an error for an entity in a 207 answer that is
not the entity's fault) goes into the retry queue in the daemon's database (`edge.app.ngsi_queue`:
one row per entity, the newest state replacing an older one, bounded, surviving a restart); the
queue is sent first, oldest first, after a capped, jittered backoff; while it holds anything, newer
states join it instead of overtaking it. What the broker refuses as bad data (400, 409, 413, 422
for a batch, split in halves until the entity stands alone; a 4xx for one entity in a 207 answer)
is logged with the entity's id and counted as `rejected`, never retried.

`mode = "mqtt"`: each batch is one JSON array of normalized entities, published at QoS 1 through
the persistent outbox on `topic` (default `{topic_prefix}/{site.id}/ngsi/entities`).

Counters (`counters()`): entities sent, rejected, failed (attempts that will be retried), queued,
superseded and dropped; the metrics endpoint exports them as `edge_ngsi_*`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from sqlalchemy.exc import SQLAlchemyError

from edge.app.domains import Site
from edge.app.ngsi_models import Catalog, entity_of, normalized
from edge.app.ngsi_queue import RetryQueue
from edge.app.north import Publisher
from edge.backoff import Backoff
from edge.errors import PayloadError, UpstreamError
from edge.http_client import Response, request
from edge.lifecycle import Service, ServiceState
from edge.redact import redact_text, redact_url
from edge.settings import Settings
from edge.settings_ngsi import NgsiSettings
from edge.state import DeviceState, StateStore
from edge.tasks import TimeSlice
from edge.topics import by_name

log = structlog.get_logger(__name__)

UPSERT_PATH = "/ngsi-ld/v1/entityOperations/upsert?options=update"
LD_JSON = "application/ld+json"
DATA_ERRORS = frozenset({400, 409, 413, 422})  # the batch holds an entity the broker will never take
TRANSIENT_4XX = frozenset({401, 403, 404, 405, 408, 429})  # the broker's (or our settings') problem
BAD_DATA_TYPES = ("BadRequestData", "InvalidRequest", "AlreadyExists", "OperationNotSupported")


@dataclass(frozen=True, slots=True)
class _Item:
    device_id: str
    entity_id: str
    body: bytes


@dataclass(slots=True)
class _Outcome:
    sent: int = 0
    rejected: int = 0
    retry: list[_Item] = field(default_factory=list)


@dataclass(slots=True)
class Counters:
    """What the exporter did since it started (entities, not requests)."""

    sent: int = 0
    rejected: int = 0
    failed: int = 0
    requests: int = 0


class NgsiExporter(Service):
    """Publishes the site's devices as NGSI-LD entities (see the module docstring)."""

    service_name = "ngsi"

    def __init__(
        self,
        cfg: NgsiSettings,
        state: StateStore,
        catalog: Catalog,
        *,
        queue_url: str = "",
        publisher: Publisher | None = None,
        topic: str = "",
    ) -> None:
        if cfg.mode == "http" and not queue_url:
            raise ValueError("the http mode needs a database for its retry queue")
        if cfg.mode == "mqtt" and (publisher is None or not topic):
            raise ValueError("the mqtt mode needs a publisher and a topic")
        super().__init__()
        self.cfg = cfg
        self.catalog = catalog
        self.topic = topic
        self.counts = Counters()
        self._store = state
        self._publisher = publisher
        self._queue = RetryQueue(queue_url, max_rows=cfg.queue_max_rows) if cfg.mode == "http" else None
        self._endpoint = cfg.url + UPSERT_PATH
        self._headers = {"Content-Type": LD_JSON, "Accept": "application/json"}
        if cfg.tenant:
            self._headers["NGSILD-Tenant"] = cfg.tenant
        if cfg.token is not None:
            self._headers["Authorization"] = f"Bearer {cfg.token.get_secret_value()}"
        # Controllers and cabinets are described by the inventory alone: exported even when no
        # domain registers them (a cabinet is a device of the charging domain's).
        self._ids = frozenset(
            d.device_id for d in state.devices() if catalog.exports(d.device_id)
        ) | frozenset((*catalog.controllers, *catalog.cabinets))
        self._dirty: dict[str, None] = {}
        self._last: dict[str, float] = {}  # monotonic time an entity last went out
        self._backoff = Backoff(base_s=min(1.0, cfg.backoff_max_s), max_s=cfg.backoff_max_s)
        self._retry_at = 0.0
        self._down_since: float | None = None
        self._round = asyncio.Lock()
        state.watch(self._on_change)

    @property
    def queue(self) -> RetryQueue | None:
        """The retry queue (http mode)."""
        return self._queue

    def counters(self) -> dict[str, float]:
        """Entities sent, rejected, failed (to be retried), queued, superseded and dropped."""
        q = self._queue
        return {
            "sent": self.counts.sent,
            "rejected": self.counts.rejected,
            "failed": self.counts.failed,
            "queued": q.rows if q is not None else 0,
            "superseded": q.superseded if q is not None else 0,
            "dropped": q.dropped if q is not None else 0,
        }

    def pending(self) -> int:
        """Devices whose newest state has not gone out yet (changed since, or waiting their turn)."""
        return len(self._dirty)

    # ----- lifecycle ------------------------------------------------------------------------

    async def _start(self) -> None:
        if self._queue is not None:
            await self._queue.__aenter__()
        self._dirty = dict.fromkeys(sorted(self._ids))
        self.spawn(self._run(), "flush")
        where = redact_url(self.cfg.url) if self.cfg.mode == "http" else self.topic
        log.info("ngsi_exporter_started", mode=self.cfg.mode, to=where, entities=len(self._ids))

    async def _stop(self) -> None:
        if self._queue is not None:
            await self._queue.__aexit__(None, None, None)

    def _on_change(self, device_id: str, _changed: Mapping[str, object]) -> None:
        if device_id in self._ids and self.state is ServiceState.OPENED:
            self._dirty[device_id] = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.flush_interval_s)
            try:
                await self.flush()
            except Exception:  # a round boundary: a database gone, or a bug, costs a round, not the daemon
                log.exception("ngsi_round_failed")

    # ----- one round ------------------------------------------------------------------------

    async def flush(self) -> None:
        """One round: the retry queue first (it is older), then what changed since the last round."""
        async with self._round:
            q = self._queue
            if q is not None and q.rows and time.monotonic() >= self._retry_at:
                await self._drain_queue(q)
            fresh = await self._take_dirty()
            if not fresh:
                return
            try:
                if q is None:
                    await self._publish(fresh)
                elif q.rows:  # the broker is failing: newer states wait behind the older ones
                    await q.put((i.entity_id, i.body) for i in fresh)
                else:
                    await self._send(fresh, q)
            except BaseException:  # neither sent nor queued (the database failed): the next round
                for item in fresh:
                    self._dirty[item.device_id] = None
                    self._last.pop(item.device_id, None)
                raise

    async def _take_dirty(self) -> list[_Item]:
        """Entities of the dirty devices whose turn it is (the others stay dirty)."""
        now = time.monotonic()
        limit = self.cfg.min_interval_s
        out: list[_Item] = []
        slice_ = TimeSlice()  # a city's first round builds 54,000 entities
        context = self.cfg.context
        for dev_id in list(self._dirty):
            if now - self._last.get(dev_id, -math.inf) < limit:
                continue
            await slice_.tick()
            self._dirty.pop(dev_id, None)
            entity = entity_of(self.catalog, self._store.get(dev_id) or DeviceState(dev_id, "inventory"))
            if entity is None:
                continue  # not known well enough yet: its next change makes it dirty again
            self._last[dev_id] = now
            out.append(_Item(dev_id, entity.id, orjson.dumps(normalized(entity, context))))
        return out

    async def _send(self, items: list[_Item], q: RetryQueue) -> None:
        for i in range(0, len(items), self.cfg.batch_size):
            out = await self._post(items[i : i + self.cfg.batch_size])
            if out.retry:
                rest = out.retry + items[i + self.cfg.batch_size :]
                self.counts.failed += len(rest)
                await q.put((x.entity_id, x.body) for x in rest)
                self._failed()
                return
        self._recovered()

    async def _drain_queue(self, q: RetryQueue) -> None:
        while q.rows:
            rows = await q.peek(self.cfg.batch_size)
            if not rows:
                break
            out = await self._post([_Item("", r.entity_id, r.body) for r in rows])
            again = {x.entity_id for x in out.retry}
            await q.ack([r.id for r in rows if r.entity_id not in again])
            if again:
                self.counts.failed += len(again)
                self._failed()
                return
        self._recovered()

    async def _publish(self, items: list[_Item]) -> None:
        assert self._publisher is not None
        for i in range(0, len(items), self.cfg.batch_size):
            batch = items[i : i + self.cfg.batch_size]
            try:
                await self._publisher.publish_reliable(self.topic, _array(batch), content_type=LD_JSON)
            except PayloadError as exc:  # no broker takes it (too large): say so, do not retry
                self.counts.rejected += len(batch)
                log.error("ngsi_batch_refused", topic=self.topic, entities=len(batch), reason=exc.reason)
            except (RuntimeError, OSError, SQLAlchemyError) as exc:  # the outbox is closing or gave up
                self.counts.failed += len(batch)
                for x in batch:
                    self._dirty[x.device_id] = None
                    self._last.pop(x.device_id, None)
                log.warning(
                    "ngsi_publish_failed", topic=self.topic, entities=len(batch), error=str(exc)[:200]
                )
            else:
                self.counts.sent += len(batch)

    # ----- one request ----------------------------------------------------------------------

    async def _post(self, batch: list[_Item]) -> _Outcome:
        """Upsert a batch; what was sent, what was refused for good, what must be tried again."""
        self.counts.requests += 1
        try:
            resp = await request("POST", self._endpoint, _array(batch), headers=self._headers,
                                 timeout_s=self.cfg.timeout_s)  # fmt: skip
        except UpstreamError as exc:
            self._note_down(str(exc))
            return _Outcome(retry=batch)
        status = resp.status
        if 200 <= status < 300 and status != 207:
            self.counts.sent += len(batch)
            return _Outcome(sent=len(batch))
        if status == 207:
            return self._multi_status(batch, resp)
        if status in DATA_ERRORS:
            if len(batch) == 1:
                self._reject(batch[0], status, _problem(resp))
                return _Outcome(rejected=1)
            return await self._split(batch)
        self._note_down(f"HTTP {status}: {_problem(resp)}")
        return _Outcome(retry=batch)

    async def _split(self, batch: list[_Item]) -> _Outcome:
        """A batch the broker refused whole: each half on its own, until the bad entity stands alone."""
        mid = len(batch) // 2
        first = await self._post(batch[:mid])
        if first.retry:  # the broker went away meanwhile: the second half waits too
            return _Outcome(first.sent, first.rejected, first.retry + batch[mid:])
        second = await self._post(batch[mid:])
        return _Outcome(first.sent + second.sent, first.rejected + second.rejected, second.retry)

    def _multi_status(self, batch: list[_Item], resp: Response) -> _Outcome:
        """207: per entity. An error that is the entity's (4xx, bad data) is final; the others retry."""
        try:
            body = resp.json()
            errors = body.get("errors", []) if isinstance(body, dict) else None
        except ValueError:
            errors = None
        if not isinstance(errors, list):  # cannot tell which went through: all again (upserts repeat)
            self._note_down("HTTP 207 without a readable list of errors")
            return _Outcome(retry=batch)
        by_id = {x.entity_id: x for x in batch}
        out = _Outcome()
        failed: set[str] = set()
        for err in errors:
            if not isinstance(err, dict) or err.get("entityId") not in by_id:
                continue
            item = by_id[err["entityId"]]
            failed.add(item.entity_id)
            raw = err.get("error")
            problem: dict[str, Any] = raw if isinstance(raw, dict) else {}
            if _bad_data(problem):
                self._reject(item, int(problem.get("status") or 400), _describe(problem))
                out.rejected += 1
            else:
                out.retry.append(item)
        out.sent = len(batch) - len(failed)
        self.counts.sent += out.sent
        if out.retry:
            self._note_down(f"HTTP 207: {len(out.retry)} entities not taken")
        return out

    def _reject(self, item: _Item, status: int, detail: str) -> None:
        self.counts.rejected += 1
        log.error(
            "ngsi_entity_rejected", entity=item.entity_id, status=status, detail=redact_text(detail)[:300]
        )

    def _note_down(self, why: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("ngsi_broker_unavailable", url=redact_url(self.cfg.url), error=redact_text(why)[:300])

    def _failed(self) -> None:
        self._retry_at = time.monotonic() + self._backoff.next_delay()

    def _recovered(self) -> None:
        self._backoff.reset()
        self._retry_at = 0.0
        if self._down_since is not None:
            down_s = time.monotonic() - self._down_since
            self._down_since = None
            log.info("ngsi_broker_available", url=redact_url(self.cfg.url), down_s=round(down_s, 1))


def build_exporter(settings: Settings, state: StateStore, site: Site, link: Publisher) -> NgsiExporter:
    """The daemon's exporter (not yet entered): its retry queue in the records database, its
    topic from the table (`ngsi/entities` under the site's base) unless `[ngsi] topic` says another."""
    cfg = settings.ngsi
    topic = cfg.topic or by_name("ngsi_entities").topic(f"{settings.mqtt.topic_prefix}/{settings.site.id}")
    catalog = Catalog.build(settings, site.inventory, site.bins)
    return NgsiExporter(cfg, state, catalog, queue_url=settings.storage.url, publisher=link, topic=topic)


def _array(batch: Sequence[_Item]) -> bytes:
    return b"[" + b",".join(x.body for x in batch) + b"]"


def _bad_data(problem: Mapping[str, Any]) -> bool:
    status = problem.get("status")
    if isinstance(status, int):
        return 400 <= status < 500 and status not in TRANSIENT_4XX
    kind = str(problem.get("type", ""))
    return any(kind.endswith(t) for t in BAD_DATA_TYPES)


def _describe(problem: Mapping[str, Any]) -> str:
    parts = [str(problem.get(k)) for k in ("type", "title", "detail") if problem.get(k)]
    return "; ".join(parts)


def _problem(resp: Response) -> str:
    """What an error answer says (its problem details, or the start of its body)."""
    try:
        body = resp.json()
    except ValueError:
        return resp.body[:200].decode("utf-8", "replace")
    return _describe(body) if isinstance(body, dict) else str(body)[:200]
