"""The demo's own parts: the broker in a child process, and `edge demo --for` ending on time."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import aiomqtt
import pytest

from edge.broker import BrokerProcess


async def test_broker_process_routes_messages_and_leaves_no_child() -> None:
    """A message goes through the broker child; after the context the child is gone."""
    async with BrokerProcess() as broker:
        pid = broker.pid
        assert pid is not None
        host, port = broker.url.removeprefix("mqtt://").split(":")
        async with (
            aiomqtt.Client(host, int(port), identifier="t-sub", protocol=aiomqtt.ProtocolVersion.V311) as sub,
            aiomqtt.Client(host, int(port), identifier="t-pub", protocol=aiomqtt.ProtocolVersion.V311) as pub,
        ):
            await sub.subscribe("demo/t", qos=1)
            await pub.publish("demo/t", b"hello", qos=1)
            async with asyncio.timeout(10):
                message = await anext(aiter(sub.messages))
            assert message.payload == b"hello"
    assert broker.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.slow
def test_headless_demo_ends_on_time_with_every_section_and_no_errors() -> None:
    """`edge demo --headless --for 15` prints the summary and exits within a few seconds of 15,
    with lighting, charging, displays, waste, help-point and environment sections and no error-level
    log line."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "edge.app.cli", "demo", "--headless", "--for", "15"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["lamps"]["total"] == 500
    assert summary["charging"]["charge_points"] == 63
    assert summary["charging"]["limit_violations"] == 0  # overload episodes, from the simulator's record
    # OCPP and OPC UA charge points, both online, two feeders carrying both kinds
    by = summary["charging"]["by_protocol"]
    assert by["ocpp"]["charge_points"] == 6
    assert by["opcua"]["charge_points"] == by["opcua"]["online"] == 57
    # An OCPP charger without power has no link: those on the night-only feeder-9 come up once
    # the lighting plan puts the circuit live (beside three CPU hogs no plan came in 15 s).
    assert set(by["ocpp"]["offline"]) <= {"CP062", "CP063"}
    assert summary["charging"]["mixed_feeders"] == ["feeder-3", "feeder-9"]
    assert summary["displays"]["displays"] == 4
    assert summary["waste"]["bins"] == 150
    assert summary["waste"]["reporting"] > 0
    # the safety services: a call handled by the scripted control room, the storm's warnings
    calls = summary["help_points"]
    assert calls["help_points"] == 7
    assert calls["calls"] >= 1
    env = summary["environment"]
    assert env["sensors_reporting"] == env["sensors"] == 7
    assert env["warnings_issued"] >= 1  # from the gauges (or the gusts), not typed by anyone
    assert env["warnings_withdrawn"] >= 1  # as the water falls
    assert env["cap_messages"] >= 2
    errors = [line for line in proc.stderr.splitlines() if '"level": "error"' in line or "Traceback" in line]
    # the grid's ground truth (no fuse trip), and no trip reported either (no false alarm)
    assert summary["charging"]["feeder_trips"] == 0
    assert summary["charging"]["trips_alarmed"] == 0
    assert errors == []
    assert elapsed < 15 + 20, f"took {elapsed:.1f} s"


def test_a_scrape_during_the_demo_parses_and_counts_its_devices() -> None:
    """`edge demo --metrics-port P`: while the demo runs, /metrics parses with the Prometheus text
    parser and counts the district's lamps, and /health answers."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from edge.net import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.app.cli", "demo", "--headless", "--for", "25", "--metrics-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        lamps = None
        deadline = time.monotonic() + 60
        while lamps is None or lamps < 500:
            assert time.monotonic() < deadline, "no full scrape within 60 s"
            assert proc.poll() is None, "the demo ended before a scrape"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                time.sleep(0.5)  # not listening yet: the demo is starting
                continue
            families = {f.name: f for f in text_string_to_metric_families(text)}
            lamps = sum(s.value for s in families["edge_devices"].samples
                        if s.labels["kind"] == "lamp" and s.labels["state"] == "online")  # fmt: skip
            if lamps < 500:
                time.sleep(0.5)
        assert "edge_command_latency_seconds" in families
        assert "edge_mqtt_connected" in families
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                health = json.loads(r.read())
        except urllib.error.HTTPError as err:  # 503 while not ready: the body still says why
            health = json.loads(err.read())
        assert set(health) == {"ready", "reasons", "checks"}
        assert health["checks"]["devices_online_share"] > 0
    finally:
        out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0
    assert json.loads(out)["lamps"]["total"] == 500
