"""`edge run` as a process: starts on uvloop, serves the site, and shuts down cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiomqtt
import orjson
import pytest
from harness import NIGHT, write_site

from edge.clock import SimClock
from edge.demo import sim_controllers
from edge.inventory import load_inventory
from edge.settings import load_settings
from simulators.lighting import LightingSimulator

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


async def _status(client: aiomqtt.Client, topic: str, want: bool) -> dict[str, object]:
    async with asyncio.timeout(20):
        async for msg in client.messages:
            if str(msg.topic) == topic and msg.payload:
                st = orjson.loads(msg.payload)
                if st["online"] is want:
                    return dict(st)
    raise AssertionError("unreachable")


async def test_run_serves_and_stops_on_sigterm(tmp_path: Path, mqtt_url: str, database_url: str) -> None:
    """The daemon comes online on MQTT, and SIGTERM ends it with exit code 0, status offline, no traceback."""
    cfg = write_site(tmp_path, site_id="clirun" + os.urandom(3).hex(), mqtt_url=mqtt_url, db_url=database_url)
    settings = load_settings(cfg)
    inv = load_inventory(settings.inventory_path())
    host, port = mqtt_url.split("://")[1].split(":")
    topic = f"dos/v1/{settings.site.id}/status"
    env = {**os.environ, "EDGE_LOGGING__FORMAT": "json", "EDGE_LOGGING__LEVEL": "info"}
    async with (
        LightingSimulator(sim_controllers(inv), SimClock(NIGHT), seed=1),
        aiomqtt.Client(host, int(port), identifier=f"w-{settings.site.id}", timeout=10) as client,
    ):
        await client.subscribe(topic, qos=1)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge.cli", "run", "--config", str(cfg),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        try:
            online = await _status(client, topic, True)
            assert online["site"] == settings.site.id
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                _, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0
        text = err.decode()
        assert "Traceback" not in text
        assert '"event": "daemon_stopped"' in text
        offline = await _status(client, topic, False)
        assert offline["online"] is False


def test_bad_cli_arguments_exit_2() -> None:
    """Unknown commands and bad values are usage errors (exit 2) with a message, not a traceback."""
    import subprocess

    r = subprocess.run(
        [sys.executable, "-m", "edge.cli", "demo", "--speed", "-3"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2
    assert "must be greater than 0" in r.stderr
    r = subprocess.run([sys.executable, "-m", "edge.cli", "run"], capture_output=True, text=True, check=False)
    assert r.returncode == 2
    assert "--config" in r.stderr
