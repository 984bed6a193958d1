"""MqttLink and Outbox against real brokers (Mosquitto or the embedded amqtt) and databases."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt
import orjson
import pytest
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.broker import EmbeddedBroker
from edge.errors import PayloadError
from edge.mqtt import BrokerAddress, IncomingMessage, LinkOptions, MqttLink
from edge.net import free_port
from edge.outbox import DrainCursor, Outbox

if TYPE_CHECKING:
    # Only a type: the plugin module is loaded by pytest (as `conftest_mqtt`, tests/ is on
    # sys.path), and importing it again here under another name would load it twice.
    from conftest_mqtt import PrivateBroker


WAIT_S = 10.0
REPO = Path(__file__).resolve().parents[2]


class Collector:
    """An `on_message` handler that records messages and lets a test wait for a count."""

    def __init__(self) -> None:
        self.messages: list[IncomingMessage] = []
        self._changed = asyncio.Event()

    async def __call__(self, message: IncomingMessage) -> None:
        self.messages.append(message)
        self._changed.set()

    async def wait_for(self, count: int, within_s: float = WAIT_S) -> list[IncomingMessage]:
        async with asyncio.timeout(within_s):
            while len(self.messages) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.messages


def _prefix() -> str:
    return f"edge-test/{uuid.uuid4().hex[:10]}"


@contextlib.asynccontextmanager
async def observer(url: str, *topics: str) -> AsyncIterator[aiomqtt.Client]:
    """A plain aiomqtt client subscribed to `topics` (QoS 1): MQTT 5 if the broker has it."""
    address = BrokerAddress.parse(url)
    client_id = f"observer-{uuid.uuid4().hex[:8]}"
    for protocol in (aiomqtt.ProtocolVersion.V5, aiomqtt.ProtocolVersion.V311):
        client = aiomqtt.Client(address.host, address.port, identifier=client_id, protocol=protocol)
        try:
            await client.__aenter__()
        except MqttConnectError:
            continue
        try:
            if topics:
                await client.subscribe([(t, 1) for t in topics])
            yield client
        finally:
            await client.__aexit__(None, None, None)
        return
    raise AssertionError("broker accepts neither MQTT 5 nor 3.1.1")


async def next_message(client: aiomqtt.Client, within_s: float = WAIT_S) -> aiomqtt.Message:
    async with asyncio.timeout(within_s):
        return await anext(aiter(client.messages))


async def clear_retained(url: str, *topics: str) -> None:
    """Leave the shared broker as found: empty retained payloads delete retained messages."""
    async with observer(url) as client:
        for topic in topics:
            await client.publish(topic, b"", qos=1, retain=True)


def link(url: str, outbox: Outbox, **kwargs: object) -> MqttLink:
    """A link with test-friendly timings (short backoff) and a unique client id."""
    tuning: dict[str, Any] = {"backoff_max_s": 0.5, "connect_timeout_s": 3.0}
    names = {f.name for f in dataclasses.fields(LinkOptions)}
    tuning |= {k: v for k, v in kwargs.items() if k in names}
    rest = {k: v for k, v in kwargs.items() if k not in names}
    return MqttLink(url, f"edge-{uuid.uuid4().hex[:8]}", outbox, options=LinkOptions(**tuning), **rest)  # type: ignore[arg-type]


async def test_reliable_publish_arrives_with_qos1_and_metadata(mqtt_url: str, database_url: str) -> None:
    """A reliable message arrives at QoS 1 with its response metadata; the PUBACK empties the outbox."""
    topic = f"{_prefix()}/reply"
    async with (
        observer(mqtt_url, topic) as sub,
        Outbox(database_url) as outbox,
        link(mqtt_url, outbox) as mq,
    ):
        await mq.wait_connected(WAIT_S)
        await mq.publish_reliable(topic, b'{"ok": true}', response_topic="r/t", correlation_data=b"abc-1")
        message = await next_message(sub)
        await mq.wait_drained(WAIT_S)
        assert outbox.backlog == 0
        assert mq.stats["published"] == 1
    assert message.qos == 1
    if mq.protocol == "5":
        assert message.payload == b'{"ok": true}'
        assert message.properties is not None
        props = message.properties
        assert getattr(props, "ResponseTopic", None) == "r/t"
        assert getattr(props, "CorrelationData", None) == b"abc-1"
        assert getattr(props, "ContentType", None) == "application/json"
    else:
        assert isinstance(message.payload, bytes)
        body = orjson.loads(message.payload)
        assert body == {"ok": True, "response_topic": "r/t", "correlation_id": "abc-1"}


async def test_reliable_batch_arrives_in_order_and_a_bad_one_stores_none(
    mqtt_url: str, database_url: str
) -> None:
    """`publish_reliable_many` (North's retained states in one outbox commit): every message
    arrives at QoS 1, in order, and the outbox empties; a batch with one message no broker
    would take is refused whole, before anything is stored."""
    topic = f"{_prefix()}/many"
    async with (
        observer(mqtt_url, f"{topic}/#") as sub,
        Outbox(database_url) as outbox,
        link(mqtt_url, outbox) as mq,
    ):
        await mq.wait_connected(WAIT_S)
        batch = [(f"{topic}/{i}", orjson.dumps({"i": i}), False) for i in range(300)]
        await mq.publish_reliable_many(batch)
        got = [await next_message(sub) for _ in batch]
        await mq.wait_drained(WAIT_S)
        assert outbox.backlog == 0
        with pytest.raises(PayloadError):
            await mq.publish_reliable_many([(f"{topic}/ok", b"{}", False), (f"{topic}/+", b"{}", False)])
        assert outbox.backlog == 0
    assert [str(m.topic) for m in got] == [t for t, _, _ in batch]
    assert all(m.qos == 1 for m in got)


async def test_correlation_fills_a_null_correlation_id_under_3_1_1(mqtt_url: str, database_url: str) -> None:
    """An ack written before its request's body was read has `"correlation_id": null`; under MQTT
    3.1.1 the link puts the request's correlation there (it was kept, and the client got no way to
    match the nack to its request), under MQTT 5 it travels as the property."""
    topic = f"{_prefix()}/acks"
    async with (
        observer(mqtt_url, topic) as sub,
        Outbox(database_url) as outbox,
        link(mqtt_url, outbox) as mq,
    ):
        await mq.wait_connected(WAIT_S)
        mq.publish_reply(topic, b'{"ok": false, "correlation_id": null}', correlation_data=b"c-7")
        message = await next_message(sub)
    assert message.qos == 1
    assert isinstance(message.payload, bytes)
    body = orjson.loads(message.payload)
    if mq.protocol == "5":
        assert body == {"ok": False, "correlation_id": None}
        assert getattr(message.properties, "CorrelationData", None) == b"c-7"
    else:
        assert body == {"ok": False, "correlation_id": "c-7"}


@contextlib.asynccontextmanager
async def broker_down(
    private_broker: PrivateBroker, database_url: str, watch: str
) -> AsyncIterator[tuple[MqttLink, Outbox, Collector]]:
    """A link whose broker has just gone down. The link's own subscription to `watch` is the
    witness once the broker is back: it is restored on reconnect before anything is sent, so
    nothing can go out unobserved."""
    seen = Collector()
    async with (
        Outbox(database_url) as outbox,
        link(private_broker.url, outbox, subscriptions=[watch], on_message=seen) as mq,
    ):
        await mq.wait_connected(WAIT_S)
        await private_broker.stop()
        await mq.wait_disconnected(WAIT_S)
        yield mq, outbox, seen


async def test_alarms_published_while_broker_down_arrive_in_order(
    private_broker: PrivateBroker, database_url: str
) -> None:
    """50 alarms published while the broker is down arrive exactly once, in order, after it returns."""
    prefix = _prefix()
    async with broker_down(private_broker, database_url, f"{prefix}/alarm/#") as (mq, outbox, seen):
        for i in range(50):
            await mq.publish_reliable(f"{prefix}/alarm/lamp-{i % 5}", orjson.dumps({"seq": i}))
        assert outbox.backlog == 50
        await private_broker.start()
        messages = await seen.wait_for(50, within_s=20)
        await mq.wait_drained(WAIT_S)
        assert outbox.backlog == 0
        assert mq.stats["reconnects"] >= 1
    assert [orjson.loads(m.payload)["seq"] for m in messages] == list(range(50))


async def test_replies_go_out_first_after_an_outage_and_are_not_stored(
    private_broker: PrivateBroker, database_url: str
) -> None:
    """Answers queued while the broker is down are kept in memory, not in the outbox; once it is
    back they go out in order, at QoS 1, before the outbox's backlog of 100 events."""
    prefix = _prefix()
    async with broker_down(private_broker, database_url, f"{prefix}/#") as (mq, outbox, seen):
        for i in range(100):
            await mq.publish_reliable(f"{prefix}/events", orjson.dumps({"seq": i}))
        for i in range(3):
            mq.publish_reply(
                f"{prefix}/replies/tui-1", orjson.dumps({"n": i}), correlation_data=f"c-{i}".encode()
            )
        assert outbox.backlog == 100
        assert mq.stats["replies_pending"] == 3
        with pytest.raises(PayloadError):
            mq.publish_reply(f"{prefix}/replies/+", b"{}")
        await private_broker.start()
        messages = await seen.wait_for(103, within_s=20)
        await mq.wait_drained(WAIT_S)
        assert mq.stats["replies_published"] == 3
    assert [str(m.topic) for m in messages[:3]] == [f"{prefix}/replies/tui-1"] * 3
    assert [orjson.loads(m.payload)["n"] for m in messages[:3]] == [0, 1, 2]
    assert [m.correlation_data for m in messages[:3]] == [b"c-0", b"c-1", b"c-2"]  # property or JSON
    assert [orjson.loads(m.payload)["seq"] for m in messages[3:]] == list(range(100))


async def test_outbox_survives_link_restart(mqtt_url: str, database_url: str) -> None:
    """Messages appended while no broker is reachable are delivered by the next link on the same database."""
    prefix = _prefix()
    dead_url = f"mqtt://127.0.0.1:{free_port()}"
    async with Outbox(database_url) as outbox, link(dead_url, outbox) as mq:
        for i in range(5):
            await mq.publish_reliable(f"{prefix}/state", orjson.dumps({"seq": i}))
        assert not mq.connected.is_set()
    seen = Collector()
    async with Outbox(database_url) as outbox:
        assert outbox.backlog == 5
        async with link(mqtt_url, outbox, subscriptions=[f"{prefix}/#"], on_message=seen) as mq:
            messages = await seen.wait_for(5)
            await mq.wait_drained(WAIT_S)
        assert outbox.backlog == 0
    assert [orjson.loads(m.payload)["seq"] for m in messages] == list(range(5))


async def test_last_will_published_when_daemon_dies(mqtt_url: str, tmp_path: Path) -> None:
    """SIGKILL of a process holding a link makes the broker publish its retained offline will."""
    status = f"{_prefix()}/status"
    script = textwrap.dedent(
        f"""
        import asyncio
        from edge.mqtt import MqttLink
        from edge.outbox import Outbox

        async def main() -> None:
            async with Outbox("sqlite:///{tmp_path / "child.db"}") as outbox:
                async with MqttLink(
                    "{mqtt_url}", "edge-child-{uuid.uuid4().hex[:8]}", outbox,
                    will=("{status}", b"offline", True),
                    online_message=("{status}", b"online"),
                ):
                    await asyncio.Event().wait()

        asyncio.run(main())
        """
    )
    async with observer(mqtt_url, status) as sub:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=asyncio.subprocess.DEVNULL,
        )
        try:
            online = await next_message(sub, within_s=20)
            assert online.payload == b"online"
        finally:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGKILL)
            await child.wait()
        offline = await next_message(sub)
        assert offline.payload == b"offline"
    # The will is retained: a newcomer sees the daemon is offline.
    async with observer(mqtt_url, status) as late:
        retained = await next_message(late)
        assert (retained.payload, retained.retain) == (b"offline", True)
    await clear_retained(mqtt_url, status)


async def test_clean_close_publishes_offline(mqtt_url: str, database_url: str) -> None:
    """Closing the link says offline (retained) itself, since a clean DISCONNECT suppresses the will."""
    status = f"{_prefix()}/status"
    async with observer(mqtt_url, status) as sub, Outbox(database_url) as outbox:
        async with link(
            mqtt_url, outbox, will=(status, b"offline", True), online_message=(status, b"online")
        ) as mq:
            assert (await next_message(sub)).payload == b"online"
            # The online message is PUBACKed before the link marks itself connected: wait, not assert.
            await mq.wait_connected(WAIT_S)
        assert (await next_message(sub)).payload == b"offline"
    await clear_retained(mqtt_url, status)


async def test_oversized_message_counted_and_delivered(mqtt_url: str, database_url: str) -> None:
    """An incoming message above max_payload_bytes is counted and still reaches the handler, which
    owes its sender an answer (the API nacks it `payload_too_large`); dropping it left senders
    of 1 MB requests without any answer (issue 10, finding 6)."""
    prefix = _prefix()
    seen = Collector()
    async with (
        Outbox(database_url) as outbox,
        link(
            mqtt_url,
            outbox,
            subscriptions=[f"{prefix}/cmd/#"],
            on_message=seen,
            max_payload_bytes=1024,
        ) as mq,
        observer(mqtt_url) as pub,
    ):
        await mq.wait_connected(WAIT_S)
        await pub.publish(f"{prefix}/cmd/big", b"x" * 2048, qos=1)
        await pub.publish(f"{prefix}/cmd/small", b"{}", qos=1)
        messages = await seen.wait_for(2)
        assert [(m.topic, len(m.payload)) for m in messages] == [
            (f"{prefix}/cmd/big", 2048),
            (f"{prefix}/cmd/small", 2),
        ]
        assert mq.stats["refused_oversize"] == 1
        with pytest.raises(PayloadError, match="invalid_topic"):
            await mq.publish_reliable(f"{prefix}/out/#", b"{}")
        assert outbox.backlog == 0


async def test_failing_handler_does_not_stop_the_link(mqtt_url: str, database_url: str) -> None:
    """A handler that raises is logged and counted; the next message is still handled."""
    prefix = _prefix()
    seen = Collector()

    async def handler(message: IncomingMessage) -> None:
        if message.payload == b"boom":
            raise ValueError("handler bug")
        await seen(message)

    async with (
        Outbox(database_url) as outbox,
        link(mqtt_url, outbox, subscriptions=[f"{prefix}/cmd"], on_message=handler) as mq,
        observer(mqtt_url) as pub,
    ):
        await mq.wait_connected(WAIT_S)
        await pub.publish(f"{prefix}/cmd", b"boom", qos=1)
        await pub.publish(f"{prefix}/cmd", b"fine", qos=1)
        messages = await seen.wait_for(1)
        assert [m.payload for m in messages] == [b"fine"]
        assert mq.stats["handler_errors"] == 1
        assert mq.connected.is_set()


async def test_request_metadata_reaches_handler(mqtt_url: str, database_url: str) -> None:
    """Response topic and correlation data of a request arrive, as properties (v5) or in the JSON (3.1.1)."""
    prefix = _prefix()
    seen = Collector()
    async with (
        Outbox(database_url) as outbox,
        link(mqtt_url, outbox, subscriptions=[f"{prefix}/req"], on_message=seen) as mq,
        observer(mqtt_url) as pub,
    ):
        await mq.wait_connected(WAIT_S)
        expected: tuple[str, bytes, tuple[tuple[str, str], ...]]
        if mq.protocol == "5":
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = "client/1/reply"
            props.CorrelationData = b"\x00\x01"
            props.UserProperty = [("trace", "t-1")]
            await pub.publish(f"{prefix}/req", b"{}", qos=1, properties=props)
            expected = ("client/1/reply", b"\x00\x01", (("trace", "t-1"),))
        else:
            body = {"response_topic": "client/1/reply", "correlation_id": "c-1"}
            await pub.publish(f"{prefix}/req", orjson.dumps(body), qos=1)
            expected = ("client/1/reply", b"c-1", ())
        (message,) = await seen.wait_for(1)
    assert (message.response_topic, message.correlation_data, message.user_properties) == expected


async def test_falls_back_to_311_on_a_v3_only_broker(database_url: str) -> None:
    """Against amqtt (3.1.1 only) a v5 link falls back and carries request metadata in the JSON."""
    prefix = _prefix()
    seen = Collector()
    async with (
        EmbeddedBroker(port=0) as broker,
        Outbox(database_url) as outbox,
        link(broker.url, outbox, subscriptions=[f"{prefix}/req"], on_message=seen) as mq,
        observer(broker.url, f"{prefix}/reply") as client,
    ):
        await mq.wait_connected(WAIT_S)
        assert mq.protocol == "3.1.1"
        body = {"op": "ping", "response_topic": f"{prefix}/reply", "correlation_id": "42"}
        await client.publish(f"{prefix}/req", orjson.dumps(body), qos=1)
        (request,) = await seen.wait_for(1)
        assert request.response_topic == f"{prefix}/reply"
        assert request.correlation_data is not None
        await mq.publish_reliable(
            request.response_topic, b'{"pong": true}', correlation_data=request.correlation_data
        )
        reply = await next_message(client)
    assert isinstance(reply.payload, bytes)
    assert orjson.loads(reply.payload) == {"pong": True, "correlation_id": "42"}


async def test_publish_fast_drops_while_disconnected(mqtt_url: str, database_url: str) -> None:
    """QoS 0 telemetry is dropped and counted while down, and delivered while up."""
    topic = f"{_prefix()}/telemetry"
    dead_url = f"mqtt://127.0.0.1:{free_port()}"
    async with Outbox(database_url) as outbox:
        async with link(dead_url, outbox) as down:
            down.publish_fast(topic, b"lost")
            assert down.stats["dropped"] == 1
        async with observer(mqtt_url, topic) as sub, link(mqtt_url, outbox) as up:
            await up.wait_connected(WAIT_S)
            up.publish_fast(topic, b"1")
            up.publish_fast(topic, b"2")
            first = await next_message(sub)
            second = await next_message(sub)
            assert (first.payload, second.payload) == (b"1", b"2")
            assert up.stats["published_fast"] == 2


async def test_a_retained_qos0_message_waits_for_the_link(
    private_broker: PrivateBroker, database_url: str
) -> None:
    """A retained QoS 0 message (a car park's free spaces, the warnings in force) published while
    the broker is away is held, the newest per topic, and sent when the link is back: the broker
    would otherwise keep an older value until the next change. One that is not retained is
    dropped and counted, as at-most-once says."""
    prefix = _prefix()
    async with Outbox(database_url) as outbox, link(private_broker.url, outbox) as up:
        await up.wait_connected(WAIT_S)
        await private_broker.stop()
        await up.wait_disconnected(WAIT_S)
        up.publish_fast(f"{prefix}/parking", b"old", retain=True)
        up.publish_fast(f"{prefix}/parking", b"new", retain=True)
        up.publish_fast(f"{prefix}/counters", b"gone")
        assert (up.stats["dropped"], up.stats["held_fast"]) == (1, 1)
        await private_broker.start()
        await up.wait_connected(WAIT_S)
        async with observer(private_broker.url, f"{prefix}/#") as sub:
            msg = await next_message(sub)  # live or retained, depending on who was first
            assert (str(msg.topic), msg.payload) == (f"{prefix}/parking", b"new")
        async with observer(private_broker.url, f"{prefix}/#") as late:  # the broker kept it
            msg = await next_message(late)
            assert (str(msg.topic), msg.payload, msg.retain) == (f"{prefix}/parking", b"new", True)
        assert up.stats["held_fast"] == 0


async def test_a_bulk_sender_pacing_with_fast_room_loses_nothing(mqtt_url: str, database_url: str) -> None:
    """A round of lamp counters larger than the QoS 0 queue: sent all at once the overflow is
    dropped (and counted); sent in chunks that wait for `fast_room`, every message goes out."""
    topic = f"{_prefix()}/counters"
    n = 2_000
    async with (
        Outbox(database_url) as outbox,
        observer(mqtt_url, topic) as sub,
        link(mqtt_url, outbox, fast_queue_max=50) as up,
    ):
        await up.wait_connected(WAIT_S)
        for i in range(n):  # no pause: the queue holds 50
            up.publish_fast(topic, b"x%d" % i)
        assert up.stats["dropped"] == n - 50
        dropped = up.stats["dropped"]
        for i in range(n):
            if i % 10 == 0:
                await up.fast_room()
            up.publish_fast(topic, b"%d" % i)
        # Every message was handed to the broker (what reaches a slow subscriber at QoS 0 is the
        # broker's business), in order: the last one arrives.
        async with asyncio.timeout(4 * WAIT_S):
            async for msg in sub.messages:
                if msg.payload == b"%d" % (n - 1):
                    break
        assert up.stats["dropped"] == dropped
        assert up.stats["published_fast"] == 50 + n


async def test_replies_leave_before_a_backlog_of_states(database_url: str) -> None:
    """A reply committed behind 300 retained states is read first; the states keep their order."""
    async with Outbox(database_url) as outbox:
        await outbox.append_many([(f"s/{i}", b"{}", True) for i in range(300)])
        await outbox.append("reply/1", b"{}", response_topic="reply/1", correlation_data=b"c1")
        await outbox.append("s/300", b"{}", retain=True)
        cursor = DrainCursor()
        windows: list[list[str]] = []
        while rows := await cursor.next(outbox, 100):
            windows.append([r.topic for r in rows])
            await outbox.ack([r.id for r in rows if r.id is not None])
            if len(windows) == 2:  # a reply arriving while the backlog drains goes next
                await outbox.append("reply/2", b"{}", response_topic="reply/2")
        assert windows[0] == ["reply/1"]
        assert windows[2] == ["reply/2"]
        states = [t for w in windows for t in w if t.startswith("s/")]
        assert states == [f"s/{i}" for i in range(301)]
        assert outbox.backlog == 0


async def test_outbox_drops_oldest_beyond_max_rows(database_url: str) -> None:
    """A full outbox drops its oldest rows and counts them."""
    async with Outbox(database_url, max_rows=3) as outbox:
        for i in range(5):
            await outbox.append("t", str(i).encode())
        rows = await outbox.peek(10)
        assert [r.payload for r in rows] == [b"2", b"3", b"4"]
        assert (outbox.backlog, outbox.dropped) == (3, 2)
        assert await outbox.ack([r.id for r in rows if r.id is not None]) == 3
        assert outbox.backlog == 0


async def test_unsendable_outbox_row_is_dropped_not_retried(mqtt_url: str, database_url: str) -> None:
    """A stored row paho refuses (bad topic) is dropped and counted; the rows behind it still go out."""
    prefix = _prefix()
    seen = Collector()
    async with Outbox(database_url) as outbox:
        await outbox.append(f"{prefix}/bad/#", b"{}")
        await outbox.append(f"{prefix}/good", b'{"n": 1}')
        async with link(mqtt_url, outbox, subscriptions=[f"{prefix}/good"], on_message=seen) as mq:
            (message,) = await seen.wait_for(1)
            await mq.wait_drained(WAIT_S)
            assert mq.stats["outbox_poisoned"] == 1
            assert mq.stats["connected"]
        assert outbox.backlog == 0
    assert message.payload == b'{"n": 1}'


async def test_device_states_keep_the_newest_per_topic_off_disk(mqtt_url: str, database_url: str) -> None:
    """Retained states queued faster than they are sent: each topic goes out with its newest
    payload (older unsent ones are replaced, and counted), at QoS 1, retained, and none of them
    touches the outbox on disk."""
    prefix = _prefix()
    topics = [f"{prefix}/lights/L{i}/state" for i in range(10)]
    try:
        async with Outbox(database_url) as outbox, link(mqtt_url, outbox) as mq:
            for step in range(10):  # no await in between: nothing can be sent meanwhile
                for topic in topics:
                    mq.publish_state(topic, b'{"level": %d}' % step)
            assert outbox.backlog == 0
            await mq.wait_connected(WAIT_S)
            await mq.wait_drained(WAIT_S)
            assert mq.stats["states_coalesced"] == 90
            assert mq.stats["states_published"] == 10
            assert mq.stats["states_pending"] == 0
        async with observer(mqtt_url, f"{prefix}/#") as late:  # retained: a late subscriber sees them
            got = {}
            while len(got) < len(topics):
                msg = await next_message(late)
                assert msg.retain
                assert msg.qos == 1
                got[msg.topic.value] = msg.payload
        assert got == dict.fromkeys(topics, b'{"level": 9}')
    finally:
        await clear_retained(mqtt_url, *topics)
