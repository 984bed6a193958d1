"""The whole daemon on 5,000 lamps: MQTT command round trip while polling, memory, CPU.

Three processes (all `spawn`), so each number belongs to one of them:

- a simulator child serves 50 controllers x 100 lamps (`LightingSimulator`, uvloop);
- a daemon child runs `edge.app.daemon.running` (uvloop, SQLite file in a temp dir, the
  production logging set-up at level warning, lighting poll interval 1 s) and nothing
  else, so its RSS and CPU (psutil, read from outside) are the daemon's alone;
- this process is the client: it sends `set_level` requests over MQTT 5 with a response
  topic and correlation data (JSON `response_topic`/`correlation_id` under 3.1.1) and
  times publish -> ack. The ack leaves the daemon only after the Modbus write was
  confirmed by read-back, so one round trip is MQTT in, write + read-back, MQTT out.

References measured in the same run, against the same simulators while the daemon keeps
polling them: a bare pymodbus client doing the same write + read-back, and a bare MQTT
request/response echo (a responder in this process answering at once). Memory is held
against a fresh process that only imported the modules the daemon process had loaded.
The broker is Mosquitto on 127.0.0.1:1883 when reachable, else an embedded amqtt broker
in its own child process. Retained topics the run leaves on Mosquitto are cleared.
"""

from __future__ import annotations

import contextlib
import csv
import math
import multiprocessing as mp
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bench.common import RUNS, Row, median, median_spread, py_spy, spy_stop

# Sizes and intervals (environment knobs; the defaults are the 5,000-lamp bench at 1 s polls).
# City size: BENCH_DAEMON_CONTROLLERS=538 BENCH_DAEMON_LAMPS=100 BENCH_DAEMON_POLL_S=10.
CONTROLLERS = int(os.environ.get("BENCH_DAEMON_CONTROLLERS", "50"))
LAMPS = int(os.environ.get("BENCH_DAEMON_LAMPS", "100"))
POLL_INTERVAL_S = float(os.environ.get("BENCH_DAEMON_POLL_S", "1.0"))
WINDOW_S = float(os.environ.get("BENCH_DAEMON_WINDOW_S", "0"))  # 0: max(10 s, 3 polls)
PROFILE_DIR = os.environ.get("BENCH_DAEMON_PROFILE", "")  # py-spy the daemon into this folder
TARGET_STARTUP_S = 30.0
TARGET_P99_MS = 100.0
TARGET_RSS_MB = 300.0
LEVELS = (37, 63)  # odd levels no plan step produces, alternating: every command changes the register
MOSQUITTO = ("127.0.0.1", 1883)
NIGHT = datetime(2026, 11, 26, 23, 0, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()  # lamps on, dimmed
REQUEST_TIMEOUT_S = 5.0
START_TIMEOUT_S = float(os.environ.get("BENCH_DAEMON_START_TIMEOUT_S", "600"))
# The metrics endpoint on this port (0: off), scraped every SCRAPE_S by this process during the
# steady windows, as a Prometheus server would (`python -m bench metrics` compares on with off).
METRICS_PORT = int(os.environ.get("BENCH_DAEMON_METRICS_PORT", "0"))
SCRAPE_S = float(os.environ.get("BENCH_DAEMON_SCRAPE_S", "15"))


# ----- child processes ------------------------------------------------------------------------


def _quiet() -> None:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def _serve_sims(conn: Connection, stop: MpEvent) -> None:
    """Simulator child: 50 x 100 lamps on free ports until `stop`; sends the endpoints back."""
    import asyncio

    import uvloop

    from edge.clock import SystemClock
    from simulators.lighting import LightingSimulator, demo_controllers

    _quiet()

    async def main() -> None:
        specs = demo_controllers(CONTROLLERS, LAMPS, 0)
        # physics once per poll: a tick of 54,000 lamps every second would load the simulator
        # process (and delay its answers) for nothing the daemon reads
        tick = max(1.0, POLL_INTERVAL_S)
        async with LightingSimulator(specs, SystemClock(), tick_s=tick, seed=7) as sim:
            conn.send([(e.endpoint_id, e.host, e.port, e.unit, e.lamps) for e in sim.endpoints()])
            await asyncio.to_thread(stop.wait)

    uvloop.run(main())


def _serve_broker(conn: Connection, stop: MpEvent) -> None:
    """Broker child (only when Mosquitto is not reachable): amqtt on a free port."""
    import asyncio

    import uvloop

    from edge.broker import EmbeddedBroker

    async def main() -> None:
        async with EmbeddedBroker(port=0) as broker:
            conn.send(broker.url)
            await asyncio.to_thread(stop.wait)

    uvloop.run(main())


def _run_daemon(conn: Connection, config: str) -> None:
    """Daemon child: start the daemon, report when settled, then answer 'stats' until 'stop'."""
    import asyncio

    import uvloop

    from devices.inventory import load_inventory
    from edge import logs
    from edge.app.daemon import running
    from edge.clock import SimClock
    from edge.settings import load_settings

    t0 = time.perf_counter()  # start-up counts loading the inventory too
    settings = load_settings(Path(config))
    logs.configure(settings.logging.level, "json")
    inv = load_inventory(settings.inventory_path())

    def stats(d: Any) -> dict[str, Any]:
        s = d.driver.stats
        return {
            "t": time.perf_counter(),
            "lamp_reads": s.lamp_reads,
            "reads": s.reads,
            "read_errors": s.read_errors,
            "writes": s.writes,
            "write_errors": s.write_errors,
            "connects": s.connects,
            "cmd_sent": d.dispatcher.stats.sent,
            "cmd_confirmed": d.dispatcher.stats.confirmed,
            "cmd_failed": d.dispatcher.stats.failed,
            "cmd_expired": d.dispatcher.stats.expired,
            "connect_errors": s.connect_errors,
            "pending": d.dispatcher.pending(),
            "plans": d.lighting.stats.plans,
            "api_requests": d.api.router.requests,
            "api_acks": d.api.router.acks,
            "api_nacks": d.api.router.nacks,
            "outbox_backlog": d.link.stats["outbox_backlog"],
            "published": d.link.stats["published"],
            "published_fast": d.link.stats["published_fast"],
            "reconnects": d.link.stats["reconnects"],
            "protocol": d.link.protocol,
            "online": sum(bool(d.driver.online(c)) for c in inv.controllers),
        }

    def unapplied(d: Any) -> int:
        """Lamps whose polled level_cmd is not the plan's level yet (read back from the device)."""
        plan = d.lighting.plan
        if plan is None:
            return len(inv.lamps)
        now, value, n = d.clock.now(), d.state.value, 0
        for gid, lamp_ids in inv.groups.items():
            level = plan.level_at(gid, now)
            n += sum(1 for lamp_id in lamp_ids if value(lamp_id, "level_cmd") != level)
        return n

    def progress(d: Any) -> str:
        s = d.dispatcher.stats
        return (
            f"t={time.perf_counter() - t0:.0f}s controllers online "
            f"{sum(bool(d.driver.online(c)) for c in inv.controllers)}/{len(inv.controllers)}, lamps online "
            f"{sum(dev.online is True for dev in d.state.devices('lamp'))}/{len(inv.lamps)}, plans "
            f"{d.lighting.stats.plans}, confirmed {s.confirmed}, failed {s.failed}, pending "
            f"{d.dispatcher.pending()}, outbox {d.link.stats['outbox_backlog']}"
        )

    async def settle(d: Any, marks: dict[str, float]) -> None:
        """Until every device is online, every first plan applied (read back), and nothing is
        published for a second; progress on stderr every 10 s."""
        n_ctl, n_lamps, shown = len(inv.controllers), len(inv.lamps), time.monotonic()
        while "applied_s" not in marks:
            if time.monotonic() - shown >= 10:
                print(f"  {progress(d)}", file=sys.stderr, flush=True)
                shown = time.monotonic()
            if "online_s" not in marks and (
                sum(bool(d.driver.online(c)) for c in inv.controllers) == n_ctl
                and sum(dev.online is True for dev in d.state.devices("lamp")) == n_lamps
            ):
                marks["online_s"] = time.perf_counter() - t0
            # Applied: every lamp's first plan command confirmed by the write's read-back, and
            # a poll since shows the planned level in the state store.
            if (
                "online_s" in marks
                and d.lighting.stats.plans >= 1
                and d.dispatcher.stats.confirmed >= n_lamps
                and not d.dispatcher.pending()
                and not unapplied(d)
            ):
                marks["applied_s"] = time.perf_counter() - t0
            await asyncio.sleep(0.5)
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < 1.0:
            now_pub = d.link.stats["published"]
            if now_pub != last or d.link.stats["outbox_backlog"] or d.dispatcher.pending():
                last, quiet_since = now_pub, time.monotonic()
            await asyncio.sleep(0.1)

    async def main() -> None:
        clock = SimClock(start=NIGHT, speed=1.0)
        marks: dict[str, float] = {}
        async with running(settings, inv, clock) as d:
            settled = True
            try:
                async with asyncio.timeout(START_TIMEOUT_S):
                    await d.link.wait_connected(START_TIMEOUT_S)
                    await settle(d, marks)
            except TimeoutError:
                settled = False  # measured anyway: the table says MISS with what did not finish
                print(f"  daemon not settled after {START_TIMEOUT_S} s: {progress(d)}", file=sys.stderr)
            mods = sorted(m for m in sys.modules if not m.startswith("__"))
            ready = {"startup_s": time.perf_counter() - t0, "settled": settled, **marks}
            conn.send(("ready", {**ready, "modules": mods, **stats(d)}))
            while True:
                try:
                    msg = await asyncio.to_thread(conn.recv)
                except EOFError:
                    return  # the parent is gone
                if msg == "stats":
                    conn.send(stats(d))
                else:
                    break
        conn.send(("stopped", None))

    uvloop.run(main())


def _import_only(conn: Connection, modules: list[str], stop: MpEvent) -> None:
    """Baseline child: import what the daemon process had loaded, then idle."""
    import importlib

    ok = 0
    for name in modules:
        try:
            importlib.import_module(name)
            ok += 1
        except Exception:
            continue
    conn.send(ok)
    stop.wait(60)


# ----- site files ----------------------------------------------------------------------------


def _write_site(
    tmp: Path, endpoints: list[tuple[str, str, int, int, Any]], site_id: str, mqtt_url: str
) -> Path:
    classes = ("M3", "M4", "M5", "C3", "P3")
    rows = []
    for c, (eid, host, port, unit, lamps) in enumerate(endpoints):
        for index, lamp_id in lamps:
            rows.append(
                {
                    "id": lamp_id,
                    "lat": 51.50 + c * 1e-3,
                    "lon": 7.40 + index * 1e-4,
                    "segment": f"road-{c:02d}",
                    "order": index,
                    "lighting_class": classes[c % len(classes)],
                    "flags": "",
                    "controller": eid,
                    "host": host,
                    "port": port,
                    "unit": unit,
                    "index": index,
                    "p_max_w": 30.0 + (7 * c + 3 * index) % 17,
                }
            )
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
url = "sqlite:///{tmp / "edge.db"}"
[mqtt]
url = "{mqtt_url}"
client_id = "edge-{site_id}"
[lighting]
poll_interval_s = {POLL_INTERVAL_S}
[logging]
level = "warning"
"""
        + (f"[metrics]\nenabled = true\nport = {METRICS_PORT}\n" if METRICS_PORT else ""),
        encoding="utf-8",
    )
    return tmp / "site.toml"


# ----- client side (this process) -------------------------------------------------------------


def _pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile of `xs` (seconds) in ms."""
    s = sorted(xs)
    return 1000 * s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.split("://", 1)[1].partition(":")
    return host, int(port or 1883)


def _nodelay(client: Any) -> None:
    """TCP_NODELAY on an aiomqtt client's socket (paho 2.2 leaves Nagle on)."""
    sock = client._client.socket()  # paho's socket: aiomqtt does not expose it
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _requests(
    url: str,
    v5: bool,
    n: int,
    make: Any,
    run_id: str,
    responder: str | None = None,
    *,
    reply: str = "",
    nodelay_requester: bool = True,
    nodelay_responder: bool = False,
) -> tuple[list[float], list[str], list[tuple[int, float, str]]]:
    """Send `n` sequential requests (`make(i) -> (topic, payload dict)`); time publish -> answer.

    With `responder` set, a second client in this process answers requests on that topic
    at once (the bare echo). Returns durations, failures, and (i, seconds, note) for each.
    """
    import asyncio

    import aiomqtt
    import orjson
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    host, port = _host_port(url)
    proto = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
    reply = reply or f"bench/{run_id}/reply"  # the daemon answers only under {base}/replies/
    waiting: dict[str, tuple[asyncio.Future[tuple[float, dict[str, Any]]], float]] = {}

    async def read(client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            t = time.perf_counter()
            if not isinstance(msg.payload, bytes):
                continue
            data = orjson.loads(msg.payload)
            corr = msg.properties.CorrelationData if v5 and msg.properties else None
            key = corr.decode() if corr else str(data.get("correlation_id", ""))
            entry = waiting.pop(key, None)
            if entry is not None and not entry[0].done():
                entry[0].set_result((t, data))

    async def answer(client: aiomqtt.Client) -> None:
        await client.subscribe(responder, qos=1)
        async for msg in client.messages:
            if not isinstance(msg.payload, bytes):
                continue
            if v5 and msg.properties is not None:
                props = Properties(PacketTypes.PUBLISH)
                props.CorrelationData = msg.properties.CorrelationData
                await client.publish(msg.properties.ResponseTopic, b'{"ok":true}', qos=1, properties=props)
            else:
                data = orjson.loads(msg.payload)
                body = orjson.dumps({"ok": True, "correlation_id": data["correlation_id"]})
                await client.publish(data["response_topic"], body, qos=1)

    durations: list[float] = []
    failures: list[str] = []
    trace: list[tuple[int, float, str]] = []
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            aiomqtt.Client(host, port, identifier=f"bench-{run_id}-req", protocol=proto, timeout=10)
        )
        if nodelay_requester:
            _nodelay(client)
        await client.subscribe(reply, qos=1)
        tg = await stack.enter_async_context(asyncio.TaskGroup())
        tasks = [tg.create_task(read(client))]
        if responder is not None:
            echo = await stack.enter_async_context(
                aiomqtt.Client(host, port, identifier=f"bench-{run_id}-echo", protocol=proto, timeout=10)
            )
            if nodelay_responder:
                _nodelay(echo)
            tasks.append(tg.create_task(answer(echo)))
            await asyncio.sleep(0.2)  # let the SUBACK land
        try:
            for i in range(n):
                topic, payload = make(i)
                corr = uuid.uuid4().hex
                fut: asyncio.Future[tuple[float, dict[str, Any]]] = asyncio.get_running_loop().create_future()
                props = None
                if v5:
                    props = Properties(PacketTypes.PUBLISH)
                    props.ResponseTopic = reply
                    props.CorrelationData = corr.encode()
                    body = orjson.dumps(payload)
                else:
                    body = orjson.dumps({**payload, "response_topic": reply, "correlation_id": corr})
                t0 = time.perf_counter()
                waiting[corr] = (fut, t0)
                await client.publish(topic, body, qos=1, properties=props)
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT_S):
                        t1, data = await fut
                except TimeoutError:
                    waiting.pop(corr, None)
                    failures.append(f"{topic}: no answer within {REQUEST_TIMEOUT_S} s")
                    trace.append((i, REQUEST_TIMEOUT_S, "timeout"))
                    continue
                if not data.get("ok"):
                    failures.append(f"{topic}: {data.get('status')} {data.get('reason')}")
                durations.append(t1 - t0)
                trace.append((i, t1 - t0, str(data.get("status", ""))))
        finally:
            for t in tasks:
                t.cancel()
    return durations, failures, trace


def _daemon_commands(
    url: str, v5: bool, base: str, targets: list[str], run_id: str
) -> tuple[list[float], list[str], list[tuple[int, float, str]]]:
    """One set_level per lamp in `targets` (each lamp once: no command repeats a lamp's level)."""
    import uvloop

    n = len(targets)

    def make(i: int) -> tuple[str, dict[str, Any]]:
        return f"{base}/cmd/lights/{targets[i]}", {"action": "set_level", "level": LEVELS[i % 2]}

    return uvloop.run(_requests(url, v5, n, make, run_id, reply=f"{base}/replies/bench-{run_id}"))


def _mqtt_echo(url: str, v5: bool, n: int, run_id: str, *, nodelay_responder: bool = False) -> list[float]:
    import uvloop

    topic = f"bench/{run_id}/echo"

    def make(i: int) -> tuple[str, dict[str, Any]]:
        return topic, {"action": "set_level", "level": LEVELS[i % 2]}

    durations, failures, _ = uvloop.run(
        _requests(url, v5, n, make, run_id, responder=topic, nodelay_responder=nodelay_responder)
    )
    if failures:
        raise RuntimeError(f"mqtt echo failed: {failures[:3]}")
    return durations


def _bare_modbus(endpoints: list[tuple[str, str, int, int, Any]], n: int, seed: int) -> list[float]:
    """write_register + read_holding_registers on random lamps; original levels restored."""
    import asyncio

    import uvloop
    from pymodbus.client import AsyncModbusTcpClient

    from devices.profiles.lighting import default_profile

    profile = default_profile()
    rnd = random.Random(seed)
    chosen = rnd.sample(endpoints, 10)

    async def main() -> list[float]:
        clients: list[tuple[AsyncModbusTcpClient, int, list[int]]] = []
        try:
            for _eid, host, port, unit, lamps in chosen:
                c = AsyncModbusTcpClient(host, port=port, reconnect_delay=0, timeout=5, retries=0)
                if not await c.connect():
                    raise RuntimeError(f"bare modbus: cannot connect to {host}:{port}")
                clients.append((c, unit, [index for index, _ in lamps]))
            originals: dict[tuple[int, int], int] = {}
            out: list[float] = []
            for i in range(n):
                ci = rnd.randrange(len(clients))
                client, unit, indexes = clients[ci]
                index = rnd.choice(indexes)
                addr = profile.lamp_address(index, "level_cmd")
                if (ci, index) not in originals:
                    rr = await client.read_holding_registers(addr, count=1, device_id=unit)
                    originals[(ci, index)] = rr.registers[0]
                level = LEVELS[i % 2]
                if originals[(ci, index)] == level:
                    level = LEVELS[(i + 1) % 2]
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    t0 = time.perf_counter()
                    wr = await client.write_register(addr, level, device_id=unit)
                    rr = await client.read_holding_registers(addr, count=1, device_id=unit)
                    out.append(time.perf_counter() - t0)
                if wr.isError() or rr.isError() or rr.registers[0] != level:
                    raise RuntimeError(f"bare modbus write/read-back failed: {wr} {rr}")
            for (ci, index), value in originals.items():  # leave the daemon's levels as they were
                client, unit, _ = clients[ci]
                await client.write_register(profile.lamp_address(index, "level_cmd"), value, device_id=unit)
            return out
        finally:
            for c, _, _ in clients:
                c.close()

    return uvloop.run(main())


def _clear_retained(url: str, site_prefix: str, run_id: str) -> int:
    """Delete the retained messages the daemon left under its (per-run) site prefix."""
    import asyncio

    import aiomqtt
    import uvloop

    host, port = _host_port(url)

    async def main() -> int:
        topics: set[str] = set()
        async with aiomqtt.Client(host, port, identifier=f"bench-{run_id}-clean", timeout=10) as client:
            await client.subscribe(f"{site_prefix}/#", qos=0)
            it = client.messages
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                try:
                    msg = await asyncio.wait_for(anext(it), 1.0)
                except TimeoutError:
                    break  # a second without a message: every retained one has arrived
                if msg.retain and msg.payload:
                    topics.add(str(msg.topic))
            await client.unsubscribe(f"{site_prefix}/#")
            for k, t in enumerate(sorted(topics)):
                await client.publish(t, b"", qos=0, retain=True)
                if k % 500 == 499:
                    await asyncio.sleep(0)
            await client.publish(f"bench/{run_id}/done", b"", qos=1)  # after every clear: flushed
        return len(topics)

    return uvloop.run(main())


# ----- orchestration -----------------------------------------------------------------------------


def _private_mosquitto(tmp: Path) -> tuple[subprocess.Popen[bytes], int] | None:
    """A Mosquitto of the bench's own, configured as docs/mosquitto/mosquitto.conf recommends
    (no Nagle; a queue per client above the site's retained topics), without accounts."""
    binary = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if binary is None:
        return None
    from edge.net import free_port

    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
        "max_queued_messages 120000\n",
        encoding="utf-8",
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None


def _mosquitto_up() -> bool:
    try:
        with socket.create_connection(MOSQUITTO, timeout=0.5):
            return True
    except OSError:
        return False


def _wait_recv(conn: Connection, proc: SpawnProcess, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not conn.poll(0.2):
        if not proc.is_alive():
            raise RuntimeError(f"{what}: process exited with code {proc.exitcode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: no answer within {timeout_s} s")
    return conn.recv()


def _stop(proc: SpawnProcess | None, timeout_s: float = 15.0) -> None:
    if proc is None:
        return
    proc.join(timeout_s)
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


def _cpu_s(p: Any) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


FAILURE_KEYS = ("write_errors", "read_errors", "connect_errors", "cmd_failed", "cmd_expired")


def _failures(a: dict[str, Any], b: dict[str, Any] | None = None) -> dict[str, int]:
    """Failure counters in `a` (or their growth from `b` to `a`)."""
    return {k: int(a[k]) - (int(b[k]) if b is not None else 0) for k in FAILURE_KEYS}


def _fail_str(f: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in f.items())


def _steady(window_s: float) -> int:
    """Wait out a steady window; with the metrics endpoint on, scrape it every SCRAPE_S (the
    scrape's cost is the daemon's). Returns how many scrapes answered."""
    if not METRICS_PORT:
        time.sleep(window_s)
        return 0
    import urllib.request

    end, n = time.perf_counter() + window_s, 0
    url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
    while end - time.perf_counter() > 0:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as r:
            n += bool(r.read())
        time.sleep(max(0.0, min(SCRAPE_S, end - time.perf_counter())))
    return n


@dataclass(slots=True)
class _Measured:
    """What one bench run measured, for the table."""

    ready: dict[str, Any] = field(default_factory=dict)
    cpu_pct: list[float] = field(default_factory=list)  # per steady window
    scrapes: int = 0  # metrics scrapes answered in the steady windows
    sim_cpu_pct: list[float] = field(default_factory=list)
    read_rate: list[float] = field(default_factory=list)
    us_per_read: list[float] = field(default_factory=list)
    steady_failures: dict[str, int] = field(default_factory=dict)
    rss_mb: list[float] = field(default_factory=list)
    cmd_p50: list[float] = field(default_factory=list)  # per command batch
    cmd_p99: list[float] = field(default_factory=list)
    cmd_cpu_pct: list[float] = field(default_factory=list)
    cmd_failures: list[str] = field(default_factory=list)
    n_cmd: int = 0
    bare: list[float] = field(default_factory=list)
    echo: list[float] = field(default_factory=list)
    echo_nd: list[float] = field(default_factory=list)
    rss_imports_mb: float = 0.0
    startup_cpu_s: float = 0.0
    load_start: float = 0.0  # the node's 1-min load average when the daemon had settled
    load_end: float = 0.0
    notes: list[str] = field(default_factory=list)


def run(quick: bool) -> list[Row]:
    """The daemon on CONTROLLERS x LAMPS lamps: start-up, failures, CPU, RSS, command p99.

    One daemon per run (at city size a start takes long enough); its steady window and its
    command batch are repeated `RUNS` times within the run, and the table gives their median
    and spread. Start-up is measured once per run (n=1): run the bench again for more.
    """
    m = _measure(quick)
    return _rows(m, quick)


def _measure(quick: bool) -> _Measured:
    import psutil

    m = _Measured()
    n_cmd = 40 if quick else 200
    n_cmd = min(n_cmd, CONTROLLERS * LAMPS // (RUNS + 1))
    m.n_cmd = n_cmd
    window_s = WINDOW_S or (3.0 if quick else max(10.0, 3 * POLL_INTERVAL_S))
    run_id = uuid.uuid4().hex[:8]
    site_id = f"bench-{run_id}"
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    procs: list[SpawnProcess] = []
    daemon_conn: Connection | None = None
    daemon: SpawnProcess | None = None
    spy: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp_s:
        tmp = Path(tmp_s)
        private = _private_mosquitto(tmp)
        try:
            if private is not None:
                url, broker_name = f"mqtt://127.0.0.1:{private[1]}", "mosquitto (own, set_tcp_nodelay)"
            elif _mosquitto_up():
                url, broker_name = f"mqtt://{MOSQUITTO[0]}:{MOSQUITTO[1]}", "mosquitto"
            else:
                bparent, bchild = ctx.Pipe()
                bproc = ctx.Process(target=_serve_broker, args=(bchild, stop), name="bench-daemon-broker")
                bproc.start()
                procs.append(bproc)
                url, broker_name = _wait_recv(bparent, bproc, 30, "embedded broker"), "amqtt"
            sparent, schild = ctx.Pipe()
            sim = ctx.Process(target=_serve_sims, args=(schild, stop), name="bench-daemon-sim")
            sim.start()
            procs.append(sim)
            endpoints = _wait_recv(sparent, sim, 600, "simulator")
            sp = psutil.Process(sim.pid)
            config = _write_site(tmp, endpoints, site_id, url)
            lamp_ids = [lamp_id for *_, lamps in endpoints for _, lamp_id in lamps]

            daemon_conn, dchild = ctx.Pipe()
            daemon = ctx.Process(target=_run_daemon, args=(dchild, str(config)), name="bench-daemon")
            daemon.start()
            assert daemon.pid is not None
            spy = py_spy(PROFILE_DIR, daemon.pid, "startup")
            kind, ready = _wait_recv(
                daemon_conn, daemon, START_TIMEOUT_S + 180, "daemon"
            )  # + imports, inventory
            spy_stop(spy)
            spy = None
            if kind != "ready":
                raise RuntimeError(str(ready))
            m.ready = ready
            v5 = ready["protocol"] == "5"
            base = f"dos/v1/{site_id}"
            dp = psutil.Process(daemon.pid)
            m.startup_cpu_s = _cpu_s(dp)  # from spawn until settled: imports, connects, first plan
            m.load_start = os.getloadavg()[0]

            def stats() -> dict[str, Any]:
                assert daemon_conn is not None
                assert daemon is not None
                daemon_conn.send("stats")
                s: dict[str, Any] = _wait_recv(daemon_conn, daemon, 30, "daemon stats")
                return s

            # 1. steady polling, RUNS windows: CPU, lamp reads, failures; then RSS
            first = stats()
            spy = py_spy(PROFILE_DIR, daemon.pid, "steady")
            for _ in range(RUNS):
                s0, c0, sc0, w0 = stats(), _cpu_s(dp), _cpu_s(sp), time.perf_counter()
                m.scrapes += _steady(window_s)
                s1, c1, sc1, w1 = stats(), _cpu_s(dp), _cpu_s(sp), time.perf_counter()
                reads = s1["lamp_reads"] - s0["lamp_reads"]
                m.cpu_pct.append(100 * (c1 - c0) / (w1 - w0))
                m.sim_cpu_pct.append(100 * (sc1 - sc0) / (w1 - w0))
                m.read_rate.append(reads / (s1["t"] - s0["t"]))
                m.us_per_read.append(1e6 * (c1 - c0) / reads if reads else math.nan)
                m.rss_mb.append(dp.memory_info().rss / 2**20)
            spy_stop(spy)
            spy = None
            m.steady_failures = _failures(stats(), first)
            m.load_end = os.getloadavg()[0]

            # 2. commands through the daemon, RUNS batches on distinct lamps
            rnd = random.Random(1)
            targets = rnd.sample(lamp_ids, n_cmd * RUNS)
            for k in range(RUNS):
                c2, w2 = _cpu_s(dp), time.perf_counter()
                batch = targets[k * n_cmd : (k + 1) * n_cmd]
                durations, failures, _ = _daemon_commands(url, v5, base, batch, f"{run_id}{k}")
                m.cmd_cpu_pct.append(100 * (_cpu_s(dp) - c2) / (time.perf_counter() - w2))
                m.cmd_failures += failures
                if durations:
                    m.cmd_p50.append(_pct(durations, 0.5))
                    m.cmd_p99.append(_pct(durations, 0.99))

            # 3. references, with the daemon still polling the same simulators
            m.bare = _bare_modbus(endpoints, n_cmd, seed=2)
            n_echo = n_cmd // 2 if quick else n_cmd
            m.echo = _mqtt_echo(url, v5, n_echo, run_id + "e")
            m.echo_nd = _mqtt_echo(url, v5, n_echo, run_id + "n", nodelay_responder=True)
            end = stats()
            print(f"  daemon counters at the end: {_brief(end)}", file=sys.stderr)

            daemon_conn.send("stop")
            with contextlib.suppress(RuntimeError):
                _wait_recv(daemon_conn, daemon, 30, "daemon stop")
            _stop(daemon)
            if daemon.exitcode not in (0, None):
                m.notes.append(f"daemon exit code {daemon.exitcode}")
            cleared = _clear_retained(url, base, run_id) if broker_name == "mosquitto" else 0

            # 4. memory baseline: a fresh process with the same modules imported
            mparent, mchild = ctx.Pipe()
            base_proc = ctx.Process(
                target=_import_only, args=(mchild, ready["modules"], stop), name="bench-daemon-imports"
            )
            base_proc.start()
            procs.append(base_proc)
            _wait_recv(mparent, base_proc, 60, "imports-only process")
            m.rss_imports_mb = psutil.Process(base_proc.pid).memory_info().rss / 2**20
        finally:
            spy_stop(spy)
            stop.set()
            if daemon is not None and daemon.is_alive() and daemon_conn is not None:
                with contextlib.suppress(OSError, ValueError):
                    daemon_conn.send("stop")
            _stop(daemon)
            for p in procs:
                _stop(p)
            if private is not None:
                private[0].terminate()
                private[0].wait(10)
    print(
        f"  daemon: start-up {ready['startup_s']:.1f} s (online {ready.get('online_s', math.nan):.1f} s, first "
        f"plan applied {ready.get('applied_s', math.nan):.1f} s), broker {broker_name} (MQTT {'5' if v5 else '3.1.1'}), "
        f"{cleared} retained topics cleared; windows of {window_s:.0f} s",
        file=sys.stderr,
    )
    if m.cmd_failures:
        print(f"  command failures: {len(m.cmd_failures)}: {m.cmd_failures[:5]}", file=sys.stderr)
    return m


def _rows(m: _Measured, quick: bool) -> list[Row]:
    name = f"daemon {CONTROLLERS}x{LAMPS} lamps, poll {POLL_INTERVAL_S:g} s"
    ready = m.ready
    start_fail = _failures(ready)
    n_start_fail = sum(start_fail.values())
    n_steady_fail = sum(m.steady_failures.values())
    rows = [
        Row(name, "start-up s (until online, first plan applied, settled; n=1)",
            f"{ready['startup_s']:.1f}" + ("" if ready["settled"] else " NOT SETTLED"),
            f"online {ready.get('online_s', math.nan):.1f}, applied {ready.get('applied_s', math.nan):.1f}", "",
            f"< {TARGET_STARTUP_S:.0f}", "ok" if ready["settled"] and ready["startup_s"] < TARGET_STARTUP_S else "MISS"),
        Row(name, "start-up daemon CPU s (spawn to settled; n=1)", f"{m.startup_cpu_s:.1f}",
            f"node load {m.load_start:.1f} on {os.cpu_count()} cores"),
        Row(name, "start-up failures", str(n_start_fail), _fail_str(start_fail), "", "0",
            "ok" if not n_start_fail else "MISS"),
        Row(name, f"steady failures ({RUNS} windows)", str(n_steady_fail), _fail_str(m.steady_failures),
            "", "0", "ok" if not n_steady_fail else "MISS"),
        Row(name, "daemon CPU % of a core, steady", median_spread(m.cpu_pct),
            f"sim {median_spread(m.sim_cpu_pct)}; node load {m.load_end:.1f}"),
        Row(name, "daemon CPU us per lamp read", median_spread(m.us_per_read)),
        Row(name, "lamp reads/s", median_spread(m.read_rate, "{:,.0f}"),
            f"{CONTROLLERS * LAMPS / POLL_INTERVAL_S:,.0f} nominal",
            f"{median(m.read_rate) * POLL_INTERVAL_S / (CONTROLLERS * LAMPS):.2f}"),
        Row(name, "daemon RSS MB, steady", median_spread(m.rss_mb, "{:.0f}"),
            f"{m.rss_imports_mb:.0f} imports only", f"{median(m.rss_mb) / m.rss_imports_mb:.1f}",
            f"< {TARGET_RSS_MB:.0f}", "ok" if median(m.rss_mb) < TARGET_RSS_MB else "MISS"),
    ]  # fmt: skip
    if m.cmd_p99:
        floor = m.echo_nd if _pct(m.echo_nd, 0.5) < _pct(m.echo, 0.5) else m.echo
        ref50 = _pct(m.bare, 0.5) + _pct(floor, 0.5)
        ref99 = _pct(m.bare, 0.99) + _pct(floor, 0.99)
        p50, p99 = median(m.cmd_p50), median(m.cmd_p99)
        rows += [
            Row(name, f"cmd round trip p50 ms ({len(m.cmd_p50)} batches of {m.n_cmd})",
                median_spread(m.cmd_p50), f"{ref50:.1f} modbus+echo", f"{p50 / ref50:.1f}" if ref50 else ""),
            Row(name, "cmd round trip p99 ms", median_spread(m.cmd_p99), f"{ref99:.1f} modbus+echo",
                f"{p99 / ref99:.1f}" if ref99 else "", f"< {TARGET_P99_MS:.0f}",
                "ok" if p99 < TARGET_P99_MS and not m.cmd_failures else "MISS"),
            Row(name, "daemon CPU % during commands", median_spread(m.cmd_cpu_pct)),
            *([Row(name, "metrics scrapes answered", str(m.scrapes))] if METRICS_PORT else []),
        ]  # fmt: skip
    n_total = m.n_cmd * RUNS
    rows += [
        Row(name, "cmd failures", f"{len(m.cmd_failures)}/{n_total}", target="0",
            verdict="ok" if not m.cmd_failures else "MISS"),
        Row(name, "ref: bare modbus write+read-back p50/p99 ms", f"{_pct(m.bare, 0.5):.2f}/{_pct(m.bare, 0.99):.2f}"),
        Row(name, "ref: bare mqtt echo p50/p99 ms", f"{_pct(m.echo, 0.5):.2f}/{_pct(m.echo, 0.99):.2f}"),
        Row(name, "ref: mqtt echo, responder TCP_NODELAY p50/p99 ms",
            f"{_pct(m.echo_nd, 0.5):.2f}/{_pct(m.echo_nd, 0.99):.2f}"),
    ]  # fmt: skip
    if m.notes:
        rows.append(Row(name, "notes", "; ".join(m.notes)))
    return rows


def _brief(s: dict[str, Any]) -> str:
    keys = ("lamp_reads", "writes", *FAILURE_KEYS, "pending", "outbox_backlog", "reconnects")
    return " ".join(f"{k}={s[k]}" for k in keys)
