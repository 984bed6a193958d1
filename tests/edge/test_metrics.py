"""The metrics and health endpoint against a running daemon: a scrape parses with the Prometheus
text parser and counts what the site has; health says why it is not ready when the broker goes.

Real parts: the daemon, the lamp simulator over Modbus TCP, the broker behind a TCP proxy (cut to
stop it), a database. The endpoint is read over HTTP on 127.0.0.1 like a Prometheus server does.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import orjson
from harness import NIGHT, WAIT_S, wait_for, write_site
from prometheus_client.parser import text_string_to_metric_families
from tcp_proxy import TcpProxy

from devices.inventory import load_inventory
from edge.app.cli import main
from edge.app.daemon import running
from edge.app.demo import sim_controllers
from edge.clock import SimClock
from edge.mqtt import BrokerAddress
from edge.settings import load_settings
from simulators.lighting import LightingSimulator


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    """One GET on 127.0.0.1 (status, body), as a scraper sends it."""
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_a_scrape_counts_the_site_and_health_names_a_lost_broker(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    broker = BrokerAddress.parse(mqtt_url)
    async with TcpProxy(broker.host, broker.port) as proxy:
        site_id = "m" + uuid.uuid4().hex[:10]
        cfg = write_site(
            tmp_path, site_id=site_id, mqtt_url=f"mqtt://127.0.0.1:{proxy.port}", db_url=database_url
        )
        with cfg.open("a") as fh:
            fh.write("[metrics]\nenabled = true\nport = 0\nready_online_share = 0.5\n")
        settings = load_settings(cfg)
        inv = load_inventory(settings.inventory_path())
        clock = SimClock(NIGHT)
        async with (
            LightingSimulator(sim_controllers(inv, watchdog_s=300), clock, seed=3) as sim,
            running(settings, inv, clock) as d,
        ):
            assert d.metrics is not None
            port = d.metrics.port
            await d.link.wait_connected(WAIT_S)
            await wait_for(lambda: all(sim.lamp(x)["level_cmd"] == d.lighting.planned_level(x) for x in inv.lamps),
                           "the plan applied")  # fmt: skip
            status, body = await http_get(port, "/metrics")
            assert status == 200
            got = samples(body.decode())
            assert got[("edge_devices", (("kind", "lamp"), ("state", "online")))] == len(inv.lamps)
            assert got[("edge_commands_total", (("outcome", "confirmed"),))] >= len(inv.lamps)
            assert got[("edge_mqtt_connected", ())] == 1.0
            latency = got[("edge_command_latency_seconds_count", (("kind", "lamp"),))]
            assert latency >= len(inv.lamps)
            assert got[("edge_plan_age_seconds", (("domain", "lighting"),))] >= 0
            # no device ids as labels: a city's lamps must not become 54,000 series
            assert not any(v for (_, labels) in got for k, v in labels if v in inv.lamps)
            status, body = await http_get(port, "/health")
            health: dict[str, Any] = orjson.loads(body)
            assert status == 200, health
            assert health["ready"] is True
            assert health["checks"]["broker_connected"] is True
            assert await asyncio.to_thread(main, ["health", "--url", f"http://127.0.0.1:{port}"]) == 0
            # The broker goes away: not ready, and the reason says so.
            await proxy.cut()
            await wait_for(lambda: not d.link.stats["connected"], "the link down", timeout_s=30)
            status, body = await http_get(port, "/health")
            health = orjson.loads(body)
            assert status == 503
            assert health["ready"] is False
            assert any(r.startswith("broker") for r in health["reasons"]), health
            assert await asyncio.to_thread(main, ["health", "--url", f"http://127.0.0.1:{port}"]) == 1
            status, _ = await http_get(port, "/nothing")
            assert status == 404
            await proxy.restore()


def test_edge_health_says_when_nothing_answers() -> None:
    from edge.net import free_port

    assert main(["health", "--url", f"http://127.0.0.1:{free_port()}"]) == 2
