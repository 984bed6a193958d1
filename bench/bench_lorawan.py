"""LoRaWAN ingest: uplinks/s through UplinkIngest against a bare aiomqtt subscriber that only counts.

A child process publishes simulated uplinks (1,000 sensors, ChirpStack and TTS alternating,
20 % duplicates, 2 % out of order) at QoS 0 faster than any subscriber takes them
(pre-built PUBLISH packets on a raw socket), through Mosquitto on
127.0.0.1:1883 if it answers, else an embedded amqtt broker in the child. The measured
process subscribes with aiomqtt under uvloop and either only counts the messages (bare)
or feeds each one to `UplinkIngest` (parse, dedupe, order, decode, Telemetry). Bare,
ingest, bare again, each on fresh frames; the mean of the two bare runs is the reference.
The rate is messages over the time from the first to the last one received. On a
two-core machine the publisher, the broker and the subscriber share the cores, so the
bare subscriber is not always saturated and the rate ratio flatters the ingest; the
client CPU per message does not depend on that, and its ratio is the capacity ratio.
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

import aiomqtt
import uvloop

from bench.common import Row

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
    """Bare aiomqtt subscriber vs UplinkIngest on the same broker; target: ingest >= 50 % of bare."""
    import logging

    import structlog

    from devices.profiles.lorawan import default_profiles
    from devices.protocols.lorawan import UplinkIngest
    from edge.clock import SystemClock
    from edge.events import Telemetry
    from simulators.lorawan import TTS_TENANT, demo_sensors

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
    try:
        deadline = time.monotonic() + 60
        while not parent.poll(0.2):
            if not proc.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("publisher process did not start")
        _, url = parent.recv()
        sensors = demo_sensors(SENSORS // 2, SENSORS - SENSORS // 2)
        devices = {s.dev_eui: (s.device_id, s.profile) for s in sensors}
        published: list[int] = [0]

        def publish(_event: Telemetry) -> None:
            published[0] += 1

        # The publisher replays days of uplinks in seconds, so their stamps run ahead of the
        # wall clock: the skew check would refuse them all. It costs one comparison either way.
        ingest = UplinkIngest(default_profiles(), devices, publish, SystemClock(), max_clock_skew_s=math.inf)
        bare1 = _phase(url, topics, parent, progress, count, None)
        ours = _phase(url, topics, parent, progress, count, ingest.handle)
        bare2 = _phase(url, topics, parent, progress, count, None)
        parent.send(None)
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    if ingest.stats.refused or ingest.stats.unknown_device:
        raise RuntimeError(f"ingest refused uplinks: {ingest.stats.as_dict()}")
    ref_rate = (bare1.rate + bare2.rate) / 2
    ref_cpu = (bare1.cpu_us + bare2.cpu_us) / 2
    ratio = ours.rate / ref_rate if ref_rate else 0.0
    cpu_ratio = ref_cpu / ours.cpu_us if ours.cpu_us else 0.0
    pub_rate = min(p.pub_rate for p in (bare1, ours, bare2))
    name = f"lorawan {SENSORS} sensors, {broker_name}"
    s = ingest.stats
    return [
        Row(
            name,
            "uplinks/s ingested",
            f"{ours.rate:,.0f}",
            f"{ref_rate:,.0f} bare",
            f"{ratio:.2f}",
            f">= {TARGET:.2f}",
            "ok" if ratio >= TARGET else "MISS",
        ),
        Row(
            name,
            "client CPU us/uplink",
            f"{ours.cpu_us:.0f}",
            f"{ref_cpu:.0f} bare",
            f"{ours.cpu_us / ref_cpu:.2f}" if ref_cpu else "",
        ),
        # what the subscriber could take if the publisher and broker never made it wait
        Row(
            name,
            "uplinks/s by client CPU",
            f"{1e6 / ours.cpu_us:,.0f}",
            f"{1e6 / ref_cpu:,.0f} bare",
            f"{cpu_ratio:.2f}",
            f">= {TARGET:.2f}",
            "ok" if cpu_ratio >= TARGET else "MISS",
        ),
        Row(
            name,
            "received / published",
            f"{ours.received:,}/{ours.published:,}",
            f"{bare1.received + bare2.received:,}/{bare1.published + bare2.published:,} bare",
        ),
        Row(name, "publisher msg/s (slowest phase)", f"{pub_rate:,.0f}"),
        Row(
            name,
            "telemetry / duplicates / late",
            f"{s.published:,} / {s.duplicates:,} / {s.late:,}",
        ),
    ]
