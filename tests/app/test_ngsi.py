"""The NGSI-LD exporter against a context broker that fails, and over MQTT, and its settings.

The broker is a real asyncio HTTP server on 127.0.0.1 (`FakeBroker`) that takes batch upserts the
way Orion-LD, Scorpio and Stellio answer them (204, or 207 with per-entity errors) and can be told
to answer 503, to drop connections, or to refuse an entity (in a 207, or the whole batch with 400).
The exporter runs on a real state store and a real SQLite file; its rounds are driven by the test
(`flush`), and a retry after backoff is waited for as a condition, never with a fixed sleep.
The MQTT mode runs the whole daemon against the test broker and the lamp simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
from harness import NIGHT, WAIT_S, wait_for, write_site
from ngsi_schemas import errors

from devices.inventory import Inventory, load_inventory
from edge.app.daemon import running
from edge.app.demo import sim_controllers
from edge.app.ngsi import NgsiExporter
from edge.app.ngsi_models import Catalog
from edge.bus import EventBus
from edge.clock import SimClock
from edge.errors import ConfigError
from edge.events import Telemetry
from edge.http_client import request
from edge.settings import Settings, load_settings
from edge.settings_ngsi import NgsiSettings
from edge.state import StateStore
from simulators.lighting import LightingSimulator

UPSERT = "/ngsi-ld/v1/entityOperations/upsert?options=update"


@dataclass
class FakeBroker:
    """An NGSI-LD broker's batch upsert on 127.0.0.1: records what it takes, fails on request."""

    mode: str = "ok"  # "ok", "503" (answer Service Unavailable), "drop" (close without an answer)
    refuse: set[str] = field(default_factory=set)  # entity ids refused as bad data
    refuse_whole_batch: bool = False  # 400 for a batch holding one of them (else 207 per entity)
    entities: dict[str, dict[str, Any]] = field(default_factory=dict)  # the newest upsert per id
    requests: list[tuple[str, dict[str, str], list[str]]] = field(default_factory=list)  # path, headers, ids
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def attempts(self, entity_id: str) -> int:
        return sum(entity_id in ids for _, _, ids in self.requests)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            line, *rest = head.split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in rest if h)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            batch = orjson.loads(body)
            self.requests.append((line.split()[1], headers, [e["id"] for e in batch]))
            if self.mode == "drop":
                return
            if self.mode == "503":
                await _answer(writer, 503, {"type": "https://uri.etsi.org/ngsi-ld/errors/InternalError",
                                            "title": "Service Unavailable"})  # fmt: skip
                return
            bad = [e["id"] for e in batch if e["id"] in self.refuse]
            if bad and self.refuse_whole_batch:
                await _answer(writer, 400, {"type": "https://uri.etsi.org/ngsi-ld/errors/BadRequestData",
                                            "title": "Invalid entity", "detail": bad[0]})  # fmt: skip
                return
            for e in batch:
                if e["id"] not in bad:
                    self.entities[e["id"]] = e
            if not bad:
                await _answer(writer, 204, None)
                return
            errs = [{"entityId": i, "error": {"type": "https://uri.etsi.org/ngsi-ld/errors/BadRequestData",
                                              "title": "Bad attribute", "status": 400}} for i in bad]  # fmt: skip
            ok = [e["id"] for e in batch if e["id"] not in bad]
            await _answer(writer, 207, {"success": ok, "errors": errs})
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _answer(writer: asyncio.StreamWriter, status: int, body: Any) -> None:
    data = b"" if body is None else orjson.dumps(body)
    ctype = "Content-Type: application/json\r\n" if data else ""
    writer.write(f"HTTP/1.1 {status} X\r\n{ctype}Content-Length: {len(data)}\r\n\r\n".encode() + data)
    await writer.drain()


@contextlib.asynccontextmanager
async def fake_broker() -> AsyncIterator[FakeBroker]:
    broker = FakeBroker()
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


def small_site(tmp_path: Path, db_url: str) -> tuple[Settings, Inventory]:
    """The harness's site: 12 lamps behind 2 controllers (14 entities)."""
    cfg = write_site(tmp_path, site_id="ngsi", mqtt_url="mqtt://127.0.0.1:1", db_url=db_url)
    settings = load_settings(cfg)
    return settings, load_inventory(settings.inventory_path())


def exporter_for(
    settings: Settings, inv: Inventory, url: str, db_url: str, state: StateStore | None = None, **cfg: Any
) -> tuple[NgsiExporter, StateStore]:
    """An exporter whose rounds the test drives (`flush`), on a state store of the site's lamps."""
    if state is None:
        state = StateStore(
            EventBus(), dict.fromkeys(inv.lamps, "lamp") | dict.fromkeys(inv.controllers, "controller")
        )
    ngsi = NgsiSettings(enabled=True, url=url, flush_interval_s=3600, min_interval_s=0, backoff_max_s=0.05,
                        timeout_s=2, **cfg)  # fmt: skip
    return NgsiExporter(ngsi, state, Catalog.build(settings, inv, []), queue_url=db_url), state


def set_level(state: StateStore, lamp: str, level: float) -> None:
    state.apply(Telemetry(lamp, NIGHT, {"level_cmd": level, "level_actual": level, "power_w": level * 0.7}))


def urn(device: str, kind: str = "Streetlight") -> str:
    return f"urn:ngsi-ld:{kind}:ngsi:{device}"


async def flush_until(exporter: NgsiExporter, cond: Callable[[], bool], what: str) -> None:
    """Run rounds until `cond` holds (the backoff before a retry passes in real time)."""
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                await exporter.flush()
                if cond():
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


async def test_entities_go_out_in_batches_with_the_newest_state(tmp_path: Path, database_url: str) -> None:
    """14 entities with batch_size 5 are 3 upserts (ld+json, tenant, bearer token, options=update);
    five changes of a lamp between two rounds are one entity with the last level."""
    settings, inv = small_site(tmp_path, database_url)
    async with fake_broker() as broker:
        exporter, state = exporter_for(settings, inv, broker.url, database_url, batch_size=5, tenant="dortmund",
                                       token="s3cret-token")  # fmt: skip
        async with exporter:
            await exporter.flush()
            assert len(broker.requests) == math.ceil(14 / 5)
            assert len(broker.entities) == 14
            path, headers, _ = broker.requests[0]
            assert path == UPSERT
            assert headers["content-type"] == "application/ld+json"
            assert headers["ngsild-tenant"] == "dortmund"
            assert headers["authorization"] == "Bearer s3cret-token"
            assert all(errors(_key_values(e)) == [] for e in broker.entities.values())
            for level in (10, 20, 30, 40, 55):
                set_level(state, "A1", level)
            await exporter.flush()
            assert broker.requests[-1][2] == [urn("A1")]
            assert broker.entities[urn("A1")]["illuminanceLevel"]["value"] == 0.55
            await exporter.flush()  # nothing changed: nothing sent
            assert len(broker.requests) == 4
            assert exporter.counters()["sent"] == 15


async def test_a_broker_outage_loses_nothing_and_the_newest_state_wins(
    tmp_path: Path, database_url: str
) -> None:
    """While the broker answers 503 or drops the connection, every entity waits in the retry queue
    (a newer state replacing its older one); once it is back, all arrive, the newest states last."""
    settings, inv = small_site(tmp_path, database_url)
    async with fake_broker() as broker:
        broker.mode = "503"
        exporter, state = exporter_for(settings, inv, broker.url, database_url, batch_size=4)
        async with exporter:
            await exporter.flush()
            q = exporter.queue
            assert q is not None
            assert q.rows == 14
            assert broker.entities == {}
            broker.mode = "drop"
            set_level(state, "B2", 77)
            await flush_until(
                exporter, lambda: len(broker.requests) >= 3, "a retry against a dropping broker"
            )
            assert q.rows == 14
            assert q.superseded >= 1  # B2's older state was replaced, not kept beside the newer one
            broker.mode = "ok"
            await flush_until(exporter, lambda: q.rows == 0, "the queue drained")
            assert len(broker.entities) == 14
            assert broker.entities[urn("B2")]["illuminanceLevel"]["value"] == 0.77
            counts = exporter.counters()
            assert counts["dropped"] == 0
            assert counts["queued"] == 0
            assert counts["failed"] > 0


async def test_the_retry_queue_survives_a_restart(tmp_path: Path, database_url: str) -> None:
    """Entities queued while the broker was down are sent by the next exporter on the same
    database: the lamps from the queue alone (the new exporter's store has no devices)."""
    settings, inv = small_site(tmp_path, database_url)
    async with fake_broker() as broker:
        broker.mode = "503"
        first, _ = exporter_for(settings, inv, broker.url, database_url)
        async with first:
            await first.flush()
            assert first.queue is not None
            assert first.queue.rows == 14
        broker.mode = "ok"
        empty = StateStore(EventBus(), {})
        second, _ = exporter_for(settings, inv, broker.url, database_url, state=empty)
        async with second:
            assert second.queue is not None
            assert second.queue.rows == 14
            await flush_until(second, lambda: len(broker.entities) == 14, "the queued entities delivered")
            assert second.queue.rows == 0


@pytest.mark.parametrize("whole_batch", [False, True], ids=["207", "400"])
async def test_an_entity_the_broker_refuses_is_counted_and_not_retried(
    tmp_path: Path, database_url: str, whole_batch: bool
) -> None:
    """A 4xx for one entity (in a 207, or a 400 for its whole batch, which is then split until the
    entity stands alone) is counted as rejected; the others arrive, and it is not sent again."""
    settings, inv = small_site(tmp_path, database_url)
    async with fake_broker() as broker:
        broker.refuse = {urn("A3")}
        broker.refuse_whole_batch = whole_batch
        exporter, state = exporter_for(settings, inv, broker.url, database_url, batch_size=8)
        async with exporter:
            await exporter.flush()
            assert set(broker.entities) == {urn(x) for x in inv.lamps if x != "A3"} | {
                urn(c, "StreetlightControlCabinet") for c in inv.controllers
            }
            counts = exporter.counters()
            assert (counts["rejected"], counts["sent"], counts["queued"]) == (1, 13, 0)
            tries = broker.attempts(urn("A3"))
            assert tries == (4 if whole_batch else 1)  # halves of 8: 8, 4, 2, 1
            set_level(state, "A4", 20)
            await exporter.flush()
            assert broker.attempts(urn("A3")) == tries


async def test_mqtt_mode_publishes_the_entities_through_the_outbox(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    """With mode = "mqtt" the running daemon publishes batches of valid entities on
    `{prefix}/{site}/ngsi/entities` at QoS 1; every lamp arrives with its planned level."""
    site_id = "n" + uuid.uuid4().hex[:10]
    cfg = write_site(tmp_path, site_id=site_id, mqtt_url=mqtt_url, db_url=database_url)
    with cfg.open("a") as fh:
        fh.write('[ngsi]\nenabled = true\nmode = "mqtt"\nflush_interval_s = 0.2\n')
        fh.write("min_interval_s = 0\nbatch_size = 5\n")
    settings = load_settings(cfg)
    inv = load_inventory(settings.inventory_path())
    clock = SimClock(NIGHT)
    topic = f"dos/v1/{site_id}/ngsi/entities"
    received: dict[str, dict[str, Any]] = {}
    batches: list[int] = []
    host, port = mqtt_url.split("://", 1)[1].rsplit(":", 1)
    async with (
        aiomqtt.Client(host, int(port), identifier=f"ngsi-{site_id}", timeout=10) as client,
        LightingSimulator(sim_controllers(inv, watchdog_s=300), clock, seed=3) as sim,
        running(settings, inv, clock) as d,
    ):
        await client.subscribe(topic, qos=1)
        await d.link.wait_connected(WAIT_S)

        def planned() -> bool:
            for x in inv.lamps:
                level = d.lighting.planned_level(x)
                got = received.get(f"urn:ngsi-ld:Streetlight:{site_id}:{x}", {})
                if level is None or got.get("illuminanceLevel", {}).get("value") != level / 100:
                    return False
            return True

        async def collect() -> None:
            async for msg in client.messages:
                batch = orjson.loads(msg.payload)
                batches.append(len(batch))
                for e in batch:
                    received[e["id"]] = e

        reader = asyncio.create_task(collect(), name="test.ngsi_reader")
        try:
            await wait_for(planned, "every lamp's planned level over MQTT")
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        assert d.ngsi is not None
        assert max(batches) <= 5
        assert all(errors(_key_values(e)) == [] for e in received.values())
        assert d.ngsi.counters()["sent"] >= len(inv.lamps)
        assert sim.lamp("A1")["level_cmd"] == d.lighting.planned_level("A1")


async def test_the_daemon_upserts_to_the_broker_and_counts_it_in_the_metrics(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    """With [ngsi] enabled (http) the daemon upserts every lamp and controller, its retry queue in
    the migrated records database; the metrics endpoint counts them as edge_ngsi_entities."""
    async with fake_broker() as broker:
        site_id = "h" + uuid.uuid4().hex[:10]
        cfg = write_site(tmp_path, site_id=site_id, mqtt_url=mqtt_url, db_url=database_url)
        with cfg.open("a") as fh:
            fh.write(f'[ngsi]\nenabled = true\nurl = "{broker.url}"\nflush_interval_s = 0.1\n')
            fh.write("[metrics]\nenabled = true\nport = 0\n")
        settings = load_settings(cfg)
        inv = load_inventory(settings.inventory_path())
        clock = SimClock(NIGHT)
        async with (
            LightingSimulator(sim_controllers(inv, watchdog_s=300), clock, seed=3),
            running(settings, inv, clock) as d,
        ):
            await wait_for(lambda: len(broker.entities) == 14, "every entity upserted")
            assert d.metrics is not None
            assert "ngsi_queue" in await asyncio.to_thread(d.storage.table_names)
            resp = await request("GET", f"http://127.0.0.1:{d.metrics.port}/metrics", timeout_s=5)
            assert resp.status == 200
            text = resp.body.decode()
            assert 'edge_ngsi_entities_total{outcome="sent"}' in text
            assert "edge_ngsi_queued 0.0" in text
            sent = next(
                x for x in text.splitlines() if x.startswith('edge_ngsi_entities_total{outcome="sent"}')
            )
            assert float(sent.rsplit(" ", 1)[1]) >= 14


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('url = "ftp://broker:1026"', "ngsi.url"),
        ('url = "http://broker:99999"', "ngsi.url"),
        ("batch_size = 0", "ngsi.batch_size"),
        ('mode = "amqp"', "ngsi.mode"),
        ('topic = "dos/v1/+/ngsi"', "ngsi.topic"),
        ('tenant = "a b"', "ngsi.tenant"),
    ],
)
def test_a_bad_ngsi_setting_is_named(tmp_path: Path, table: str, key: str) -> None:
    """A bad URL, batch size, mode, topic or tenant is refused, naming the key and the file."""
    cfg = tmp_path / "site.toml"
    cfg.write_text(f"[ngsi]\nenabled = true\n{table}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert key in str(err.value)
    assert str(cfg) in str(err.value)


def test_the_ngsi_token_never_shows_in_a_settings_error(tmp_path: Path) -> None:
    """The bearer token is a secret: an error elsewhere in the table does not echo it."""
    cfg = tmp_path / "site.toml"
    cfg.write_text('[ngsi]\ntoken = "tok-9f8e7d6c5b"\nbatch_size = 0\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert "tok-9f8e7d6c5b" not in str(err.value)
    assert "tok-9f8e7d6c5b" not in repr(load_settings(None, ngsi__token="tok-9f8e7d6c5b").ngsi)


def _key_values(normalized: dict[str, Any]) -> dict[str, Any]:
    """A normalized entity back in key-values form (what the schemas describe)."""
    out: dict[str, Any] = {}
    for k, v in normalized.items():
        if k in {"id", "type"}:
            out[k] = v
        elif isinstance(v, dict) and v.get("type") == "Relationship":
            out[k] = v["object"]
        elif isinstance(v, dict) and v.get("type") in {"Property", "GeoProperty"}:
            out[k] = v["value"]
    return out
