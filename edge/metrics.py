"""Metrics and health for operations: a Prometheus endpoint and a readiness check, off by default.

`GET /metrics` is the Prometheus text format (prometheus-client), `GET /health` a JSON object:
`{"ready": bool, "reasons": [...], "checks": {...}}` with HTTP 200 when ready, 503 when not.
Both are served by a small asyncio HTTP server on `[metrics] host:port` (127.0.0.1 by default),
one request per connection, each read and written under a timeout.

Most values are read from the kernel when scraped (devices online by kind, alarms by severity,
the dispatcher's counters, backlogs, loop lag), so the hot paths pay nothing. Two are observed on
the bus: command latency (a histogram by device kind) and each domain's newest plan (its age,
solve time and status). Label sets are bounded: device kinds, outcomes, severities, domains and
refusal reasons, never a device id (a city has 54,000 lamps).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edge.events import CommandResult, PlanEvent
from edge.kernel import Kernel
from edge.lifecycle import Service
from edge.settings_sections import MetricsSettings

log = structlog.get_logger(__name__)

IO_TIMEOUT_S = 5.0
MAX_REQUEST_BYTES = 8192
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class Sources:
    """What the metrics read beyond the kernel: the MQTT link's and the API's counters."""

    link: Callable[[], Mapping[str, Any]]
    refused: Callable[[], Mapping[str, int]]
    ngsi: Callable[[], Mapping[str, float]] | None = None  # the NGSI-LD exporter's counters, if it runs


@dataclass(slots=True)
class _Plan:
    ts: float
    status: str
    solve_s: float | None


class _Collector(Collector):
    """The values read at scrape time."""

    def __init__(self, owner: Metrics) -> None:
        self._o = owner

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        o = self._o
        k = o.kernel
        devices = GaugeMetricFamily("edge_devices", "Configured devices by kind and link state.",
                                    labels=["kind", "state"])  # fmt: skip
        for (kind, state), n in sorted(o.device_counts().items()):
            devices.add_metric([kind, state], n)
        yield devices
        alarms = GaugeMetricFamily("edge_alarms_active", "Active alarms by severity and device kind.",
                                   labels=["severity", "kind"])  # fmt: skip
        kinds = o.kinds()
        for (sev, kind), n in sorted(Counter((str(a.severity), kinds.get(a.device_id, "unknown"))
                                             for a in k.alarms.active()).items()):  # fmt: skip
            alarms.add_metric([sev, kind], n)
        yield alarms
        commands = CounterMetricFamily("edge_commands", "Commands by what the dispatcher did with them.",
                                       labels=["outcome"])  # fmt: skip
        st = k.dispatcher.stats
        for outcome in ("submitted", "accepted", "clamped", "refused", "sent", "confirmed", "failed", "expired",
                        "superseded"):  # fmt: skip
            commands.add_metric([outcome], getattr(st, outcome))
        yield commands
        yield GaugeMetricFamily(
            "edge_commands_pending", "Writes waiting or in flight.", value=k.dispatcher.pending()
        )
        link = o.sources.link()
        yield GaugeMetricFamily("edge_mqtt_connected", "1 while the site broker link is up.",
                                value=float(bool(link.get("connected"))))  # fmt: skip
        yield GaugeMetricFamily("edge_outbox_backlog", "Reliable MQTT messages not yet acknowledged by the broker.",
                                value=float(link.get("outbox_backlog", 0)))  # fmt: skip
        mqtt = CounterMetricFamily("edge_mqtt_messages", "MQTT messages by direction.", labels=["direction"])
        mqtt.add_metric(["out"], float(link.get("published", 0)) + float(link.get("published_fast", 0)))
        mqtt.add_metric(["in"], float(link.get("received", 0)))
        yield mqtt
        refused = CounterMetricFamily(
            "edge_mqtt_refused", "Inbound messages refused, by reason.", labels=["reason"]
        )
        for reason, n in sorted(o.sources.refused().items()):
            refused.add_metric([reason], n)
        yield refused
        if o.sources.ngsi is not None:
            yield from _ngsi(o.sources.ngsi())
        yield GaugeMetricFamily(
            "edge_storage_backlog", "Rows queued for the database.", value=k.storage.backlog
        )
        yield CounterMetricFamily("edge_storage_dead_letters", "Rows the database refused, kept in dead_letter.",
                                  value=k.storage.dead_lettered)  # fmt: skip
        yield GaugeMetricFamily("edge_loop_lag_seconds", "The event loop's last measured lag.",
                                value=k.lag.last_lag_s)  # fmt: skip
        yield GaugeMetricFamily("edge_loop_lag_max_seconds", "The event loop's largest lag since start.",
                                value=k.lag.max_lag_s)  # fmt: skip
        now = k.clock.now()
        age = GaugeMetricFamily("edge_plan_age_seconds", "Clock seconds since a domain's newest plan.",
                                labels=["domain"])  # fmt: skip
        solve = GaugeMetricFamily("edge_plan_solve_seconds", "How long the newest plan took to make.",
                                  labels=["domain"])  # fmt: skip
        status = GaugeMetricFamily(
            "edge_plan_status", "1 for the newest plan's status.", labels=["domain", "status"]
        )
        for domain, p in sorted(o.plans.items()):
            age.add_metric([domain], max(0.0, now - p.ts))
            if p.solve_s is not None:
                solve.add_metric([domain], p.solve_s)
            status.add_metric([domain, p.status], 1.0)
        yield age
        yield solve
        yield status


def _ngsi(counts: Mapping[str, float]) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """The NGSI-LD exporter's entities by outcome, and its retry queue."""
    entities = CounterMetricFamily(
        "edge_ngsi_entities",
        "NGSI-LD entities by outcome (failed: put back for a retry).",
        labels=["outcome"],
    )
    for outcome in ("sent", "rejected", "failed", "superseded", "dropped"):
        entities.add_metric([outcome], float(counts.get(outcome, 0)))
    yield entities
    yield GaugeMetricFamily(
        "edge_ngsi_queued",
        "NGSI-LD entities waiting in the retry queue.",
        value=float(counts.get("queued", 0)),
    )


class Metrics(Service):
    """The endpoint; an async context manager like every long-lived part (see the module doc)."""

    service_name = "metrics"

    def __init__(self, kernel: Kernel, cfg: MetricsSettings, sources: Sources) -> None:
        super().__init__()
        self.kernel = kernel
        self.cfg = cfg
        self.sources = sources
        self.plans: dict[str, _Plan] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.latency = Histogram("edge_command_latency_seconds", "From a command's creation to its final result.",
                                 ["kind"], buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.registry.register(_Collector(self))
        self._sub = kernel.bus.subscribe("metrics", CommandResult, PlanEvent)
        self._server: asyncio.Server | None = None
        self.port = cfg.port

    def kinds(self) -> dict[str, str]:
        return {d.device_id: d.kind for d in self.kernel.state.devices()}

    def device_counts(self) -> Counter[tuple[str, str]]:
        out: Counter[tuple[str, str]] = Counter()
        for d in self.kernel.state.devices():
            state = "unknown" if d.online is None else ("online" if d.online else "offline")
            out[(d.kind, state)] += 1
        return out

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.cfg.host, self.cfg.port)
        sock = next(iter(self._server.sockets), None)
        if sock is not None:
            self.port = int(sock.getsockname()[1])
        self.spawn(self._watch(), "watch")
        log.info("metrics_listening", host=self.cfg.host, port=self.port)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IO_TIMEOUT_S):
                    await self._server.wait_closed()

    async def _watch(self) -> None:
        kinds: dict[str, str] = {}
        async for ev in self._sub:
            try:
                if isinstance(ev, CommandResult):
                    dev = ev.command.device_id
                    kind = kinds.get(dev) or kinds.setdefault(dev, self._kind(dev))
                    self.latency.labels(kind).observe(max(0.0, ev.ts - ev.command.issued_at))
                elif isinstance(ev, PlanEvent):
                    solve = ev.plan.get("solve_s")
                    status = ev.plan.get("status")
                    self.plans[ev.domain] = _Plan(
                        ev.ts, str(status) if status else "made",
                        float(solve) if isinstance(solve, int | float) and math.isfinite(solve) else None,
                    )  # fmt: skip
            except Exception:  # one odd event must not end the watch (a per-message boundary)
                log.exception("metrics_event_failed", event=type(ev).__name__)

    def _kind(self, device_id: str) -> str:
        dev = self.kernel.state.get(device_id)
        return dev.kind if dev is not None else "unknown"

    # ----- health -------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Ready or not, and why: broker, storage, devices online, plans' age."""
        k, cfg = self.kernel, self.cfg
        reasons: list[str] = []
        link = self.sources.link()
        if not link.get("connected"):
            reasons.append("broker: the site broker link is down")
        backlog = k.storage.backlog
        storage_down = any(
            a.code == "storage_unreachable" and a.device_id == "edge" for a in k.alarms.active()
        )
        if storage_down:
            reasons.append("storage: the database cannot be written")
        counts = self.device_counts()
        polled = sum(n for (kind, _), n in counts.items() if kind not in {"daemon", "planner"})
        online = sum(
            n
            for (kind, state), n in counts.items()
            if state == "online" and kind not in {"daemon", "planner"}
        )
        share = online / polled if polled else 1.0
        if share < cfg.ready_online_share:
            reasons.append(f"devices: {share:.0%} online, below {cfg.ready_online_share:.0%}")
        now = k.clock.now()
        stale = sorted(d for d, p in self.plans.items() if now - p.ts > cfg.plan_max_age_s)
        if stale:
            reasons.append(f"plans: older than {cfg.plan_max_age_s:.0f} s: {', '.join(stale)}")
        return {
            "ready": not reasons,
            "reasons": reasons,
            "checks": {
                "broker_connected": bool(link.get("connected")),
                "outbox_backlog": link.get("outbox_backlog", 0),
                "storage_backlog": backlog,
                "devices_online_share": round(share, 4),
                "plans_age_s": {d: round(now - p.ts, 1) for d, p in sorted(self.plans.items())},
                "loop_lag_s": round(k.lag.last_lag_s, 4),
            },
        }

    # ----- HTTP ---------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(IO_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
                status, ctype, body = self._route(head)
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a slow, broken or oversized request: dropped, nothing else affected
        except Exception:
            log.exception("metrics_request_failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(IO_TIMEOUT_S):
                    await writer.wait_closed()

    def _route(self, head: bytes) -> tuple[str, str, bytes]:
        if len(head) > MAX_REQUEST_BYTES:
            return "431 Request Header Fields Too Large", "text/plain", b"too large\n"
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        if len(parts) != 3 or parts[0] != "GET":
            return "405 Method Not Allowed", "text/plain", b"GET /metrics or /health\n"
        path = parts[1].split("?", 1)[0]
        if path == "/metrics":
            return "200 OK", "text/plain; version=0.0.4; charset=utf-8", generate_latest(self.registry)
        if path == "/health":
            h = self.health()
            return (
                ("200 OK" if h["ready"] else "503 Service Unavailable"),
                "application/json",
                orjson.dumps(h),
            )
        return "404 Not Found", "text/plain", b"GET /metrics or /health\n"


async def fetch_health(host: str, port: int, timeout_s: float = IO_TIMEOUT_S) -> tuple[bool, dict[str, Any]]:
    """GET /health of a running daemon: (ready, the JSON body); OSError/TimeoutError if not reachable,
    ValueError/TypeError if what answers is not the daemon's endpoint."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            raw = await reader.read(1 << 20)
        finally:
            writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)
    if len(status) < 2 or not status[1].isdigit():
        raise ValueError("not an HTTP answer")
    data = orjson.loads(body)
    if not isinstance(data, dict):
        raise TypeError("not a health answer")
    return int(status[1]) == 200, data
