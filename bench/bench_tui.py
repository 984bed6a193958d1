"""The dashboard at city scale: time from publish to visible on screen, and CPU, against a bare subscriber.

A site of 5,000 lamps, 680 charge points (on 100 feeders), 200 displays (and 20 car parks) and
2,000 bins (and 10 trucks) is published by a child process through a real broker: first the
retained state of every device, then live messages at the rates the daemon publishes them
(lamp telemetry every 60 s, charger state every 60 s, feeder state every 2 s, display state
every 60 s, car parks every 5 s, bin state every 15 min, trucks every 10 s, an alarm now and
then) and, halfway through, every lamp's state at once as at switch-on (one plan slot for the
whole site). Twice a second the first lamp's state changes to a marked segment name: the probe.

The dashboard runs in this process as it runs for an operator (`DashboardApp` with its MQTT
client), on the Lights view at 160x50 (the view with the most to draw: a table of all lamps),
with a Textual driver that renders every frame like a terminal driver and keeps what it would
write; a probe is visible when its marker is in a written frame. The reference in the same run is
a bare aiomqtt subscriber in this process that only parses every payload (orjson); for it a probe
is "visible" once parsed. CPU is this process's CPU time over the live phase (the broker and the
publisher run in other processes), as a percentage of one core.

The broker: `EDGE_TEST_MQTT_URL` if set, else a private `mosquitto` on a free port if installed,
else the embedded amqtt broker (in the publisher's process).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiomqtt
import orjson

from bench.common import Row

LAMPS = 5000
CHARGERS = 680
FEEDERS = 100
DISPLAYS = 200
CAR_PARKS = 20
BINS = 2000
TRUCKS = 10
PROBE = "L00000"
PROBE_EVERY_S = 0.5
TICK_S = 0.05
TARGET_S = 1.0  # an update visible within 1 s ...
TARGET_CPU = 50.0  # ... with under 50 % of one core
SIZE = (160, 50)
# Messages per second of each kind at the daemon's normal rates.
RATES = {
    "lamp_telemetry": LAMPS / 60.0,
    "charger": CHARGERS / 60.0,
    "feeder": FEEDERS / 2.0,
    "display": DISPLAYS / 60.0,
    "parking": CAR_PARKS / 5.0,
    "bin": BINS / 900.0,
    "truck": TRUCKS / 10.0,
    "alarm": 0.2,
}
MARK = re.compile(r"probe-(\d{6})")


# ----- the site's messages (built with the API's own models) ----------------------------------


def _lamp(base: str, i: int, level: float, segment: str = "", ts: float = 0.0) -> tuple[str, bytes]:
    from edge.payloads import LampState

    lamp_id = f"L{i:05d}"
    seg = segment or f"segment-{i // 50:03d}"
    msg = LampState(
        device_id=lamp_id, online=True, level_cmd=level, level_actual=level, power_w=round(7 + 0.63 * level, 1),
        failures=[], alarms=[], source="plan", segment=seg, group=f"{seg}:M4:std", ts=ts or time.time(),
    )  # fmt: skip
    return f"{base}/lights/{lamp_id}/state", orjson.dumps(msg.model_dump(mode="json"))


def _telemetry(base: str, i: int, level: float) -> tuple[str, bytes]:
    from edge.payloads import LampTelemetry

    lamp_id = f"L{i:05d}"
    msg = LampTelemetry(
        device_id=lamp_id, level_actual=level, power_w=round(7 + 0.63 * level, 1), energy_kwh=812.0 + i,
        hours=11000.0 + i, switch_count=3000 + i, ts=time.time(),
    )  # fmt: skip
    return f"{base}/lights/{lamp_id}/telemetry", orjson.dumps(msg.model_dump(mode="json"))


def _charger(base: str, i: int, k: int) -> tuple[str, bytes]:
    from edge.payloads import ChargerState

    cid = f"cp-{i:04d}"
    car = (i + k) % 3 != 0
    msg = ChargerState(
        device_id=cid, online=True, status="Charging" if car else "Available", car_connected=car,
        current_limit_a=16.0 if car else 0.0, power_kw=3.7 if car else 0.0, session_id=f"s-{i}-{k}" if car else None,
        session_energy_kwh=float(k % 20), energy_needed_kwh=12.0, departure_ts=time.time() + 3600,
        planned_a=16.0 if car else None, feeder=f"feeder-{i % FEEDERS:03d}", alarms=[], source="plan", ts=time.time(),
    )  # fmt: skip
    return f"{base}/chargers/{cid}/state", orjson.dumps(msg.model_dump(mode="json"))


def _feeder(base: str, i: int, k: int) -> tuple[str, bytes]:
    from edge.payloads import FeederState

    fid = f"feeder-{i:03d}"
    msg = FeederState(
        feeder=fid, limit_a=40.0, lighting_a=4.0, setpoints_a=30.0, measured_a=20.0 + k % 7,
        chargers=CHARGERS // FEEDERS, ts=time.time(),
    )  # fmt: skip
    return f"{base}/feeders/{fid}/state", orjson.dumps(msg.model_dump(mode="json"))


def _display(base: str, i: int, k: int) -> tuple[str, bytes]:
    from edge.payloads import DisplayState

    did = f"led-{i:03d}"
    msg = DisplayState(
        device_id=did, online=True, shown=f"P{i % CAR_PARKS} FREI {k % 200}\n<-", message_id=k,
        brightness=40.0, pixel_faults=0, alarms=[], ts=time.time(),
    )  # fmt: skip
    return f"{base}/displays/{did}/state", orjson.dumps(msg.model_dump(mode="json"))


def _parking(base: str, i: int, k: int) -> tuple[str, bytes]:
    from edge.payloads import ParkingState

    pid = f"p-{i:02d}"
    msg = ParkingState(
        car_park=pid,
        name=f"P {i}",
        capacity=300,
        free=(k * 7 + i) % 300,
        open=True,
        fresh=True,
        ts=time.time(),
    )
    return f"{base}/parking/{pid}/state", orjson.dumps(msg.model_dump(mode="json"))


def _bin(base: str, i: int, k: int) -> tuple[str, bytes]:
    """A bin's state as in the waste API contract (`waste/bins/{bin}/state`)."""
    now = time.time()
    fill = ((i * 37 + k) % 100) / 100
    body = {
        "id": f"B{i:04d}", "lat": 51.505 + (i % 50) * 2e-4, "lon": 7.445 + (i // 50) * 5e-4,
        "kind": ("residential", "shopping", "park")[i % 3], "zone": f"z{i % 8}", "fill": fill,
        "rate_per_h": 0.01, "full_ts": now + 3600 * (0.8 - fill) / 0.01 if fill < 0.8 else now,
        "battery": 90.0, "temperature": 12.0, "alarms": [], "status": "ok", "last_seen_ts": now,
        "last_emptied_ts": now - 86400, "plan": "mandatory" if fill >= 0.8 else "none", "forced": False,
        "excluded": False, "ts": now,
    }  # fmt: skip
    return f"{base}/waste/bins/B{i:04d}/state", orjson.dumps(body)


def _truck(base: str, i: int, k: int) -> tuple[str, bytes]:
    """A truck's state as in the waste API contract (`waste/trucks/{truck}/state`)."""
    now = time.time()
    body = {
        "id": f"T{i}", "online": True, "status": "collecting", "lat": 51.51, "lon": 7.45, "load_l": 100.0 * k,
        "load_kg": 20.0 * k, "load_pct": min(100.0, k / 2), "route_id": f"r-{i}", "stop_index": k % 40,
        "stops_total": 40, "bins_done": k % 40, "bins_total": 38, "odometer_km": k * 0.1, "last_seen_ts": now,
        "ts": now,
    }  # fmt: skip
    return f"{base}/waste/trucks/T{i}/state", orjson.dumps(body)


def _alarm(base: str, i: int, k: int) -> list[tuple[str, bytes]]:
    from edge.payloads import AlarmMessage

    lamp_id = f"L{(i * 97) % LAMPS:05d}"
    active = k % 2 == 0
    msg = AlarmMessage(device_id=lamp_id, code="power_high", severity="minor", active=active, ts=time.time())
    body = orjson.dumps(msg.model_dump(mode="json"))
    return [
        (f"{base}/alarms/events", body),
        (f"{base}/alarms/active/{lamp_id}/power_high", body if active else b""),
    ]


MAKERS: dict[str, tuple[int, Callable[[str, int, int], Any]]] = {
    "lamp_telemetry": (LAMPS, lambda base, i, k: _telemetry(base, i, 40.0 + k % 3 * 10)),
    "charger": (CHARGERS, _charger),
    "feeder": (FEEDERS, _feeder),
    "display": (DISPLAYS, _display),
    "parking": (CAR_PARKS, _parking),
    "bin": (BINS, _bin),
    "truck": (TRUCKS, _truck),
    "alarm": (LAMPS, _alarm),
}


def snapshot(base: str) -> list[tuple[str, bytes]]:
    """The retained state of the whole site, as a dashboard finds it on connecting."""
    msgs = [_lamp(base, i, 40.0) for i in range(LAMPS)]
    for kind in ("charger", "feeder", "display", "parking", "bin", "truck"):
        count, make = MAKERS[kind]
        msgs += [make(base, i, 0) for i in range(count)]
    return msgs


# ----- the publisher (child process) ----------------------------------------------------------


def _publisher(conn: Connection, url: str, base: str) -> None:
    """Publish the snapshot, then one live phase per request; report the probes' publish times."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    from edge.broker import EmbeddedBroker
    from tui.client import BrokerUrl

    async def main() -> None:
        broker = EmbeddedBroker(port=0) if not url else None
        if broker is not None:
            await broker.start()
        addr = BrokerUrl.parse(broker.url if broker is not None else url)
        try:
            async with aiomqtt.Client(
                addr.host, addr.port, identifier=f"bench-tui-pub-{uuid.uuid4().hex[:6]}",
                protocol=aiomqtt.ProtocolVersion.V311, timeout=30, max_queued_outgoing_messages=None,
            ) as client:  # fmt: skip
                client.pending_calls_threshold = 1_000_000
                retained = snapshot(base)
                for i in range(0, len(retained), 500):
                    await asyncio.gather(
                        *(client.publish(t, p, qos=1, retain=True) for t, p in retained[i : i + 500])
                    )
                conn.send(("ready", f"mqtt://{addr.host}:{addr.port}", len(retained)))
                while True:
                    request = await asyncio.to_thread(conn.recv)
                    if request is None:
                        break
                    probes, published = await _live(client, base, float(request))
                    conn.send(("done", probes, published))
                # Leave the broker as we found it (a shared one keeps retained messages).
                for i in range(0, len(retained), 500):
                    await asyncio.gather(
                        *(client.publish(t, b"", qos=1, retain=True) for t, _ in retained[i : i + 500])
                    )
        finally:
            if broker is not None:
                await broker.stop()

    asyncio.run(main())


async def _live(client: aiomqtt.Client, base: str, seconds: float) -> tuple[list[tuple[int, float]], int]:
    """One live phase: every kind at its rate, probes twice a second, the switch-on burst halfway."""
    due = dict.fromkeys(RATES, 0.0)
    cursor = dict.fromkeys(RATES, 0)
    probes: list[tuple[int, float]] = []
    published = 0
    seq = int(time.time()) % 1000 * 1000
    t0 = time.monotonic()
    next_probe = t0 + PROBE_EVERY_S
    burst_at = t0 + seconds / 2
    burst_done = False
    burst = [
        (*_lamp(base, i, 60.0), 1) for i in range(1, LAMPS)
    ]  # built before: the publisher must not stall
    while (now := time.monotonic()) < t0 + seconds:
        batch: list[tuple[str, bytes, int]] = []
        for kind, rate in RATES.items():
            due[kind] += rate * TICK_S
            count, make = MAKERS[kind]
            while due[kind] >= 1.0:
                due[kind] -= 1.0
                k = cursor[kind]
                cursor[kind] += 1
                made = make(base, k % count, k // count + 1)
                for topic, payload in made if isinstance(made, list) else [made]:
                    batch.append((topic, payload, 0 if kind == "lamp_telemetry" else 1))
        if not burst_done and now >= burst_at:
            burst_done = True
            batch += burst
        await asyncio.gather(*(client.publish(t, p, qos=q) for t, p, q in batch))
        published += len(batch)
        if now >= next_probe:
            next_probe = max(next_probe + PROBE_EVERY_S, now + PROBE_EVERY_S / 2)
            seq += 1
            topic, payload = _lamp(base, 0, 50.0, segment=f"probe-{seq:06d}")
            probes.append((seq, time.monotonic()))
            await client.publish(topic, payload, qos=1)
            published += 1
        await asyncio.sleep(max(0.0, TICK_S - (time.monotonic() - now)))
    return probes, published


# ----- the measured side ----------------------------------------------------------------------


@dataclass
class Phase:
    """What one subscriber did in one live phase."""

    seen: dict[int, float] = field(default_factory=dict)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    messages: int = 0
    probes: list[tuple[int, float]] = field(default_factory=list)

    def latencies(self) -> list[float]:
        """Per probe: the time until it, or a later probe, was visible (a newer state supersedes it)."""
        out = []
        first_at_or_after = float("inf")
        for s, t in reversed(self.probes):
            first_at_or_after = min(first_at_or_after, self.seen.get(s, float("inf")))
            out.append(first_at_or_after - t)
        return out[::-1]

    @property
    def cpu_pct(self) -> float:
        return 100 * self.cpu_s / self.wall_s if self.wall_s else 0.0


def _capture_driver(seen: dict[int, float]) -> type[Any]:
    """A driver that renders every frame as a terminal driver would and notes when each probe first shows."""
    from textual.drivers.headless_driver import HeadlessDriver

    class CaptureDriver(HeadlessDriver):
        @property
        def is_headless(self) -> bool:
            return False  # so the app renders its frames into escape sequences for write()

        def write(self, data: str) -> None:
            if "probe-" in data:
                now = time.monotonic()
                for m in MARK.finditer(data):
                    seen.setdefault(int(m.group(1)), now)

    return CaptureDriver


async def _run_phase(conn: Connection, seconds: float, phase: Phase) -> None:
    """Ask the publisher for a live phase and measure CPU and wall time over it."""
    c0, w0 = time.process_time(), time.monotonic()
    conn.send(seconds)
    while not conn.poll():  # noqa: ASYNC110 - the other process's pipe has nothing to await
        await asyncio.sleep(0.05)
    phase.cpu_s, phase.wall_s = time.process_time() - c0, time.monotonic() - w0
    _, phase.probes, phase.messages = conn.recv()
    await asyncio.sleep(1.5)  # the last probes may still be on their way: give them the target time


async def dashboard_phase(url: str, site: str, conn: Connection, seconds: float) -> tuple[Phase, float]:
    """The dashboard on the Lights view: initial load time, then one live phase."""
    from tui.app import DashboardApp
    from tui.client import DashboardClient

    phase = Phase()
    client = DashboardClient(url, site, request_timeout_s=10)
    app = DashboardApp(url, site, client=client)
    app.driver_class = _capture_driver(phase.seen)
    t0 = time.monotonic()
    async with app.run_test(headless=False, size=SIZE) as pilot:
        await pilot.press("2")
        lights = app.query_one("#lights")
        async with asyncio.timeout(120):
            while len(getattr(lights, "shown_keys", ())) < LAMPS:
                await pilot.pause(0.05)
        load_s = time.monotonic() - t0
        await _run_phase(conn, seconds, phase)
        await pilot.pause(0.5)
    return phase, load_s


async def bare_phase(url: str, site: str, conn: Connection, seconds: float) -> Phase:
    """The reference: a bare aiomqtt subscriber that parses every payload and nothing else."""
    from tui.client import BrokerUrl

    phase = Phase()
    addr = BrokerUrl.parse(url)
    probe_topic = f"dos/v1/{site}/lights/{PROBE}/state"
    async with aiomqtt.Client(
        addr.host, addr.port, identifier=f"bench-tui-bare-{uuid.uuid4().hex[:6]}", timeout=30
    ) as client:
        client.pending_calls_threshold = 1_000_000
        await client.subscribe(f"dos/v1/{site}/#", qos=0)  # as the dashboard

        async def read() -> None:
            async for message in client.messages:
                payload = message.payload
                if isinstance(payload, bytes) and payload:
                    obj = orjson.loads(payload)
                    if message.topic.value == probe_topic:
                        m = MARK.fullmatch(str(obj.get("segment", "")))
                        if m:
                            phase.seen.setdefault(int(m.group(1)), time.monotonic())

        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(read(), name="bench.tui.bare")
            await asyncio.sleep(1.0)  # the retained snapshot first, outside the measured phase
            await _run_phase(conn, seconds, phase)
            reader.cancel()
    return phase


@contextlib.contextmanager
def _broker() -> Any:
    """(url, name): EDGE_TEST_MQTT_URL, a private mosquitto, or '' for the embedded broker."""
    shared = os.environ.get("EDGE_TEST_MQTT_URL")
    if shared:
        yield shared, "broker from EDGE_TEST_MQTT_URL"
        return
    binary = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )
    if binary is None:
        yield "", "amqtt (embedded)"
        return
    from edge.net import free_port

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-tui-") as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        # As docs/mosquitto/mosquitto.conf, without accounts.
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
            "max_queued_messages 20000\nlog_dest none\n"
        )
        proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 10
            import socket

            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("mosquitto did not start") from None
                    time.sleep(0.05)
            yield f"mqtt://127.0.0.1:{port}", "mosquitto"
        finally:
            proc.terminate()
            proc.wait(5)


@contextlib.contextmanager
def _publisher_process(url: str, base: str) -> Any:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_publisher, args=(child, url, base), name="bench-tui-pub", daemon=True)
    proc.start()
    try:
        deadline = time.monotonic() + 120
        while not parent.poll(0.2):
            if not proc.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the publisher process did not start")
        _, real_url, retained = parent.recv()
        yield parent, real_url, retained
        parent.send(None)
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _ms(v: float) -> str:
    return "lost" if v == float("inf") else f"{v * 1000:.0f} ms"


def run(quick: bool) -> list[Row]:
    """The dashboard and a bare subscriber on the same live traffic; target: visible < 1 s, CPU < 50 %."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    seconds = 10.0 if quick else 40.0
    site = f"bench{uuid.uuid4().hex[:8]}"
    base = f"dos/v1/{site}"
    with _broker() as (url, broker_name), _publisher_process(url, base) as (conn, real_url, retained):
        bare = asyncio.run(bare_phase(real_url, site, conn, seconds))
        ours, load_s = asyncio.run(dashboard_phase(real_url, site, conn, seconds))
    name = f"tui {LAMPS} lamps, {CHARGERS} chargers, {DISPLAYS} displays, {BINS} bins, {broker_name}"
    lat, ref = ours.latencies(), bare.latencies()
    p95, worst = _pct(lat, 0.95), max(lat, default=float("inf"))
    rate = ours.messages / ours.wall_s if ours.wall_s else 0.0
    ok_lat = p95 <= TARGET_S and worst < float("inf")
    ok_cpu = ours.cpu_pct < TARGET_CPU
    return [
        Row(name, f"live messages/s (incl. a {LAMPS}-lamp burst)", f"{rate:.0f}",
            f"{bare.messages / bare.wall_s:.0f}" if bare.wall_s else ""),
        Row(name, "publish to visible p50", _ms(_pct(lat, 0.5)), _ms(_pct(ref, 0.5)),
            f"{_pct(lat, 0.5) / _pct(ref, 0.5):.1f}x" if _pct(ref, 0.5) > 0 else ""),
        Row(name, "publish to visible p95", _ms(p95), _ms(_pct(ref, 0.95)),
            f"{p95 / _pct(ref, 0.95):.1f}x" if _pct(ref, 0.95) > 0 else "", f"<= {TARGET_S:g} s",
            "yes" if ok_lat else "NO"),
        Row(name, "publish to visible max", _ms(worst), _ms(max(ref, default=float("inf"))), "",
            f"<= {TARGET_S:g} s", "yes" if worst <= TARGET_S else "NO"),
        Row(name, "CPU, % of one core", f"{ours.cpu_pct:.1f} %", f"{bare.cpu_pct:.1f} %",
            f"{ours.cpu_pct / bare.cpu_pct:.1f}x" if bare.cpu_pct else "", f"< {TARGET_CPU:g} %",
            "yes" if ok_cpu else "NO"),
        Row(name, f"initial load ({retained} retained) to all lamps shown", f"{load_s:.1f} s"),
        Row(name, "probes seen / sent", f"{sum(1 for v in lat if v < float('inf'))}/{len(lat)}",
            f"{sum(1 for v in ref if v < float('inf'))}/{len(ref)}"),
    ]  # fmt: skip


if __name__ == "__main__":
    from bench.common import print_table

    print_table(run(quick=True))
