"""A whole daemon on real parts for integration tests: simulators over TCP, a broker, a database.

`Site` builds a small inventory on free ports (a main road with a never-dim junction lamp, a
bike path), starts the lighting simulator, then the daemon on the same clock, and gives the
test an MQTT client that speaks the daemon's protocol (MQTT 5, or 3.1.1 on the embedded broker).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiomqtt
import orjson
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devices.inventory import Inventory, load_inventory
from edge.app.daemon import Daemon, running
from edge.app.demo import sim_controllers
from edge.clock import SimClock
from edge.net import free_port
from edge.settings import Settings, load_settings
from simulators.lighting import LightingSimulator

TZ = ZoneInfo("Europe/Berlin")
NIGHT = datetime(2026, 11, 26, 23, 0, tzinfo=TZ).timestamp()  # lamps on, one class step down
WAIT_S = 10.0


async def wait_for(cond: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Wait until `cond()` holds; fail with `what` after the timeout (no fixed sleeps)."""
    try:
        async with asyncio.timeout(timeout_s):
            while not cond():  # noqa: ASYNC110 - conditions on simulator registers have no event
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def write_site(tmp: Path, *, site_id: str, mqtt_url: str, db_url: str) -> Path:
    """A site of 2 controllers x 6 lamps on free ports; returns the config path."""
    ports = [free_port(), free_port()]
    rows = []
    for i in range(6):
        rows.append(dict(id=f"A{i}", lat=51.51, lon=7.45 + i * 1e-4, segment="main", order=i, lighting_class="M3",
                         flags="never_dim" if i == 0 else "", controller="c1", port=ports[0], index=i, p_max_w=70))  # fmt: skip
        rows.append(dict(id=f"B{i}", lat=51.509, lon=7.45 + i * 1e-4, segment="bike", order=i, lighting_class="P4",
                         flags="bike_path", controller="c2", port=ports[1], index=i, p_max_w=25))  # fmt: skip
    with (tmp / "inventory.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (tmp / "site.toml").write_text(
        f"""
[site]
id = "{site_id}"
latitude = 51.51
longitude = 7.455
[storage]
url = "{db_url}"
flush_interval_s = 0.05
history_interval_s = 3600
[mqtt]
url = "{mqtt_url}"
client_id = "edge-{site_id}"
telemetry_interval_s = 3600
[lighting]
poll_interval_s = 0.05
report_every_s = 0.25
timeout_s = 0.5
backoff_max_s = 0.3
motion_hold_s = 600
motion_lamps_ahead = 2
plan_time_limit_s = 5
[dispatcher]
write_timeout_s = 1
command_ttl_s = 5
reconcile_interval_s = 0.5
[logging]
level = "warning"
""",
        encoding="utf-8",
    )
    return tmp / "site.toml"


def one_controller_site(
    tmp: Path,
    site: str,
    mqtt_url: str,
    db_url: str,
    lamps: list[tuple[str, float, float]],
    tables: str,
    *,
    segment: str = "s",
    lighting_class: str = "P4",
) -> Path:
    """A site of one lamp controller on a free port with `lamps` (id, lat, lon) in one segment,
    polled fast, and the domain `tables` (TOML) a test adds; returns the config path."""
    port = free_port()
    with (tmp / "inventory.csv").open("w", newline="") as fh:
        w = csv.DictWriter(
            fh, fieldnames=["id", "lat", "lon", "segment", "lighting_class", "controller", "port", "index"]
        )
        w.writeheader()
        for i, (lamp, lat, lon) in enumerate(lamps):
            w.writerow({"id": lamp, "lat": lat, "lon": lon, "segment": segment, "lighting_class": lighting_class,
                        "controller": "c1", "port": port, "index": i})  # fmt: skip
    head = f"""
[site]
id = "{site}"
[storage]
url = "{db_url}"
[mqtt]
url = "{mqtt_url}"
client_id = "edge-{site}"
[lighting]
poll_interval_s = 0.1
"""
    (tmp / "site.toml").write_text(head + tables, encoding="utf-8")
    return tmp / "site.toml"


@dataclass
class Site:
    """The running daemon, its simulator, and a test client on the broker."""

    daemon: Daemon
    sim: LightingSimulator
    client: aiomqtt.Client
    settings: Settings
    inventory: Inventory
    v5: bool

    @property
    def base(self) -> str:
        return self.daemon.api.base

    async def request(
        self, topic: str, payload: dict[str, Any] | bytes, timeout_s: float = WAIT_S
    ) -> dict[str, Any]:
        """Send a request and return its answer (MQTT 5 response topic or 3.1.1 JSON fields)."""
        corr = uuid.uuid4().hex
        reply = f"{self.base}/replies/test-{corr}"
        await self.client.subscribe(reply, qos=1)
        await self.client.subscribe(f"{self.base}/acks", qos=1)
        props = None
        if isinstance(payload, dict):
            if self.v5:
                props = Properties(PacketTypes.PUBLISH)
                props.ResponseTopic = reply
                props.CorrelationData = corr.encode()
                body = orjson.dumps(payload)
            else:
                body = orjson.dumps({**payload, "response_topic": reply, "correlation_id": corr})
        else:
            body = payload
        await self.client.publish(f"{self.base}/{topic}", body, qos=1, properties=props)
        async with asyncio.timeout(timeout_s):
            async for msg in self.client.messages:
                data = orjson.loads(msg.payload)
                if msg.topic.matches(reply):
                    got = (msg.properties.CorrelationData if self.v5 and msg.properties else None) or str(
                        data.get("correlation_id", "")
                    ).encode()
                    assert got == corr.encode(), "the answer must carry the request's correlation data"
                    return dict(data)
                if (
                    msg.topic.matches(f"{self.base}/acks")
                    and data.get("request_topic") == f"{self.base}/{topic}"
                ):
                    return dict(data)
        raise AssertionError("unreachable")

    async def flush_storage(self) -> None:
        await self.daemon.storage.flush()


def _host_port(url: str) -> tuple[str, int]:
    hostport = url.split("://", 1)[1].rsplit("@", 1)[-1]
    host, _, port = hostport.partition(":")
    return host, int(port or 1883)


@contextlib.asynccontextmanager
async def site(tmp_path: Path, mqtt_url: str, database_url: str, start: float = NIGHT) -> AsyncIterator[Site]:
    """Start simulator + daemon + a client; stop them in reverse order."""
    site_id = "t" + uuid.uuid4().hex[:10]
    cfg = write_site(tmp_path, site_id=site_id, mqtt_url=mqtt_url, db_url=database_url)
    settings = load_settings(cfg)
    inv = load_inventory(settings.inventory_path())
    clock = SimClock(start=start, speed=1.0)
    async with (
        LightingSimulator(sim_controllers(inv, watchdog_s=300), clock, seed=3) as sim,
        running(settings, inv, clock) as d,
    ):
        await d.link.wait_connected(WAIT_S)
        v5 = d.link.protocol == "5"
        host, port = _host_port(mqtt_url)
        proto = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
        async with aiomqtt.Client(
            host, port, identifier=f"test-{site_id}", protocol=proto, timeout=10
        ) as client:
            s = Site(d, sim, client, settings, inv, v5)
            # Ready when the plan has put every lamp at its planned level.
            await wait_for(
                lambda: all(
                    d.lighting.planned_level(x) is not None
                    and sim.lamp(x)["level_cmd"] == d.lighting.planned_level(x)
                    for x in inv.lamps
                ),
                "the plan applied to every lamp",
            )
            yield s
