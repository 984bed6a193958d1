"""LoRaWAN ingest: uplinks/s through UplinkIngest against a bare aiomqtt subscriber that only counts.

A child process publishes simulated uplinks (1,000 sensors, ChirpStack and TTS alternating,
20 % duplicates, 2 % out of order) at QoS 0 faster than any subscriber takes them
(pre-built PUBLISH packets on a raw socket), through Mosquitto on
127.0.0.1:1883 if it answers, else an embedded amqtt broker in the child. The measured
process subscribes with aiomqtt under uvloop and either only counts the messages (bare)
or feeds each one to `UplinkIngest` (parse, dedupe, order, decode, Telemetry). Bare,
ingest, each on fresh frames, in `RUNS` back-to-back pairs of alternating order (ingest,
bare, bare, ingest, ...). The rate is messages over the time from the first to the last one
received. On a two-core machine the publisher, the broker and the subscriber share the
cores, so the bare subscriber is not always saturated and the rate ratio flatters the
ingest; the client CPU per message does not depend on that, and its ratio (bare CPU per
uplink / ingest CPU per uplink, from the medians) is the capacity ratio: the headline.
Lost uplinks, refused uplinks and failed phases are counted in the table.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from typing import TYPE_CHECKING

import aiomqtt
import uvloop

from bench.common import RUNS, Row, median, median_spread

if TYPE_CHECKING:
    from devices.protocols.lorawan import IngestStats

SENSORS = 1000
TARGET = 0.50
MOSQUITTO = ("127.0.0.1", 1883)
FIRST_MESSAGE_S = 30.0  # the publisher builds a phase's frames before sending them
IDLE_S = 1.5  # no message for this long: the phase is over (should QoS 0 drop some)
CHUNK = 128  # messages per write; the subscriber reports progress every CHUNK messages
WINDOW = 1000  # messages the publisher may be ahead of the subscriber
SEED = 11


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _varint(len(body)) + body


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def _publish_packets(messages: list[tuple[str, bytes]]) -> bytes:
    """MQTT 3.1.1 QoS 0 PUBLISH packets for (topic, payload), back to back."""
    return b"".join(_packet(0x30, _utf8(topic) + payload) for topic, payload in messages)


def _publisher(
    conn: Connection, progress: Synchronized[int], host: str, port: int, embedded: bool, app: str
) -> None:
    """Child process: (optionally) a broker, and a publisher that sends a phase per request.

    The simulator makes the frames; they go out as pre-built QoS 0 PUBLISH packets on a raw
    socket, at most `WINDOW` ahead of what the subscriber reports in `progress`: enough to
    keep it busy all the time, too few for the broker to drop any (Mosquitto drops QoS 0
    messages for a client with 1,000 queued).
    """
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    from edge.broker import EmbeddedBroker
    from edge.clock import SystemClock
    from simulators.lorawan import LorawanSimulator, demo_sensors, demo_values

    async def main() -> None:
        sim = LorawanSimulator(
            demo_sensors(SENSORS // 2, SENSORS - SENSORS // 2),
            demo_values(SEED),
            SystemClock(),
            seed=SEED,
            duplicate_p=0.2,
            out_of_order_p=0.02,
            record=False,
            app=app,
        )
        broker = EmbeddedBroker(host=host, port=0) if embedded else None
        if broker is not None:
            await broker.start()
        try:
            b_host, b_port = (host, broker.port) if broker is not None else (host, port)
            async with asyncio.timeout(10):
                reader, writer = await asyncio.open_connection(b_host, b_port)
                writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                connect = b"\x00\x04MQTT\x04\x02\x00\x3c" + _utf8(f"bench-lorawan-pub-{app}")
                writer.write(_packet(0x10, connect))
                connack = await reader.readexactly(4)
            if connack[:2] != b"\x20\x02" or connack[3] != 0:
                raise RuntimeError(f"broker refused the publisher: {connack.hex()}")
            conn.send(("ready", f"mqtt://{b_host}:{b_port}"))
            t = time.time()
            while True:
                request = await asyncio.to_thread(conn.recv)
                if request is None:
                    break
                messages: list[tuple[str, bytes]] = []
                while len(messages) < request:
                    t += 600.0
                    messages += sim.frames(t)
                del messages[request:]
                chunks = [_publish_packets(messages[i : i + CHUNK]) for i in range(0, len(messages), CHUNK)]
                t0 = time.perf_counter()
                for k, chunk in enumerate(chunks):
                    while k * CHUNK - progress.value > WINDOW:  # noqa: ASYNC110 - shared memory of another process: nothing to await
                        await asyncio.sleep(0.0005)
                    writer.write(chunk)
                    await writer.drain()
                conn.send(("done", len(messages), time.perf_counter() - t0))
            writer.write(b"\xe0\x00")  # DISCONNECT
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        finally:
            if broker is not None:
                await broker.stop()

    uvloop.run(main())


@dataclass(frozen=True, slots=True)
class _Phase:
    received: int
    seconds: float
    cpu_s: float
    published: int
    pub_rate: float

    @property
    def rate(self) -> float:
        return (self.received - 1) / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu_s / max(1, self.received)


def _phase(
    url: str,
    topics: tuple[str, ...],
    conn: Connection,
    progress: Synchronized[int],
    count: int,
    handle: Callable[[str, bytes], object] | None,
) -> _Phase:
    """Subscribe, ask the child for `count` messages, take them (count only, or `handle`)."""
    from edge.mqtt import BrokerAddress

    address = BrokerAddress.parse(url)

    async def main() -> _Phase:
        async with aiomqtt.Client(
            address.host,
            address.port,
            identifier=f"bench-lorawan-{uuid.uuid4().hex[:8]}",
            protocol=aiomqtt.ProtocolVersion.V311,
            timeout=10,
        ) as client:
            await client.subscribe([(t, 0) for t in topics])
            progress.value = 0
            conn.send(count)
            loop = asyncio.get_running_loop()
            received = 0
            t_first = t_last = c_first = 0.0
            try:
                async with asyncio.timeout(FIRST_MESSAGE_S) as deadline:
                    async for message in client.messages:
                        if handle is not None:
                            payload = message.payload
                            assert isinstance(payload, bytes)
                            handle(message.topic.value, payload)
                        received += 1
                        if not received % CHUNK:
                            progress.value = received
                        if received == 1:
                            t_first, c_first = time.perf_counter(), time.process_time()
                        if received == count:
                            break
                        deadline.reschedule(loop.time() + IDLE_S)
            except TimeoutError:
                pass
            t_last, c_last = time.perf_counter(), time.process_time()
            if received < count:  # waited IDLE_S for nothing at the end
                t_last -= IDLE_S
        status, published, pub_s = await asyncio.to_thread(conn.recv)
        if status != "done":
            raise RuntimeError(f"publisher said {status!r}")
        return _Phase(received, t_last - t_first, c_last - c_first, published, published / pub_s)

    return uvloop.run(main())


def run(quick: bool) -> list[Row]:
    """Bare aiomqtt subscriber vs UplinkIngest on the same broker, `RUNS` back-to-back pairs."""
    import logging

    import structlog

    from simulators.lorawan import TTS_TENANT

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    count = 30_000 if quick else 100_000
    app = f"bench-{uuid.uuid4().hex[:8]}"
    topics = (f"application/{app}/device/+/event/up", f"v3/{app}@{TTS_TENANT}/devices/+/up")
    embedded = not _reachable(*MOSQUITTO)
    broker_name = "amqtt (embedded)" if embedded else "mosquitto"
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    progress = ctx.Value("q", 0, lock=False)
    proc = ctx.Process(
        target=_publisher,
        args=(child, progress, *MOSQUITTO, embedded, app),
        name="bench-lorawan-pub",
        daemon=True,
    )
    proc.start()
    pairs: list[tuple[_Phase, _Phase]] = []  # (ingest, bare), back to back
    stats: list[IngestStats] = []
    error = ""
    try:
        deadline = time.monotonic() + 60
        while not parent.poll(0.2):
            if not proc.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("publisher process did not start")
        _, url = parent.recv()
        try:
            for i in range(RUNS):  # ingest, bare, bare, ingest, ...: drift cancels over the pairs
                ingest, st = _ingest()
                stats.append(st)
                order = [("ours", ingest), ("bare", None)]
                if i % 2:
                    order.reverse()
                got = {tag: _phase(url, topics, parent, progress, count, h) for tag, h in order}
                pairs.append((got["ours"], got["bare"]))
        except Exception as exc:  # counted in the table; the publisher may be out of step now
            error = f"{type(exc).__name__}: {exc}"[:200]
        parent.send(None)
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    return _rows(f"lorawan {SENSORS} sensors, {broker_name}", count, pairs, stats, error)


def _ingest() -> tuple[Callable[[str, bytes], object], IngestStats]:
    """A fresh UplinkIngest (its handle and its counters) for one phase."""
    from devices.profiles.lorawan import default_profiles
    from devices.protocols.lorawan import UplinkIngest
    from edge.clock import SystemClock
    from edge.events import Telemetry
    from simulators.lorawan import demo_sensors

    sensors = demo_sensors(SENSORS // 2, SENSORS - SENSORS // 2)
    devices = {s.dev_eui: (s.device_id, s.profile) for s in sensors}

    def publish(_event: Telemetry) -> None:
        pass

    # The publisher replays days of uplinks in seconds, so their stamps run ahead of the
    # wall clock: the skew check would refuse them all. It costs one comparison either way.
    ingest = UplinkIngest(default_profiles(), devices, publish, SystemClock(), max_clock_skew_s=math.inf)
    return ingest.handle, ingest.stats


def _rows(
    name: str, count: int, pairs: list[tuple[_Phase, _Phase]], stats: list[IngestStats], error: str
) -> list[Row]:
    ours, bare = [o for o, _ in pairs], [b for _, b in pairs]
    cap_o = [1e6 / p.cpu_us for p in ours if p.cpu_s > 0]
    cap_b = [1e6 / p.cpu_us for p in bare if p.cpu_s > 0]
    cap_ratio = median(cap_o) / median(cap_b) if cap_b else math.nan
    rate_ratio = median([p.rate for p in ours]) / median([p.rate for p in bare]) if bare else math.nan
    lost = sum(count - p.received for p in ours + bare)
    refused = sum(sum(s.refused.values()) + s.unknown_device for s in stats)
    phases = 2 * RUNS
    return [
        Row(name, "CPU-capacity ratio: uplinks/s by client CPU (headline)", median_spread(cap_o, "{:,.0f}"),
            f"{median_spread(cap_b, '{:,.0f}')} bare", f"{cap_ratio:.2f}", f">= {TARGET:.2f}",
            "ok" if cap_ratio >= TARGET else "MISS"),
        Row(name, "capacity ratio per back-to-back pair",
            median_spread([b.cpu_us / o.cpu_us for o, b in pairs if o.cpu_s > 0 and b.cpu_s > 0], "{:.2f}")),
        Row(name, "client CPU us/uplink", median_spread([p.cpu_us for p in ours], "{:.0f}"),
            f"{median_spread([p.cpu_us for p in bare], '{:.0f}')} bare"),
        # the publisher and the broker share the two cores: the bare subscriber is not always
        # saturated, so the wall-clock rate ratio flatters the ingest (no verdict on it)
        Row(name, "uplinks/s ingested (wall clock, flattered)", median_spread([p.rate for p in ours], "{:,.0f}"),
            f"{median_spread([p.rate for p in bare], '{:,.0f}')} bare", f"{rate_ratio:.2f}"),
        Row(name, "publisher msg/s (slowest phase)", f"{min((p.pub_rate for p in ours + bare), default=0):,.0f}"),
        Row(name, "lost uplinks (QoS 0) / refused by ingest", f"{lost:,} / {refused:,}",
            f"of {count:,} x {len(ours + bare)} phases", target="0 / 0",
            verdict="ok" if lost == 0 and refused == 0 else "FAIL"),
        Row(name, "failed phases", f"{phases - len(ours + bare)}", f"of {phases} {error}".rstrip(), "", "0",
            "ok" if not error and len(ours + bare) == phases else "FAIL"),
        Row(name, "telemetry / duplicates / late (all ingest phases)",
            f"{sum(s.published for s in stats):,} / {sum(s.duplicates for s in stats):,} / "
            f"{sum(s.late for s in stats):,}"),
    ]  # fmt: skip
