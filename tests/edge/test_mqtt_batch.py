"""`publish_qos1_many`: a batch of QoS 1 messages, their PUBACKs awaited together, on real brokers."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import aiomqtt
from conftest_mqtt import PrivateBroker

from edge.mqtt import BrokerAddress
from edge.mqtt_queues import publish_qos1_many
from edge.mqtt_session import is_link_error, publish_properties

WAIT_S = 10.0


def _client(url: str) -> aiomqtt.Client:
    address = BrokerAddress.parse(url)
    return aiomqtt.Client(address.host, address.port, identifier=f"batch-{uuid.uuid4().hex[:8]}", timeout=5)


async def test_a_batch_arrives_whole_and_nothing_is_left_waiting(mqtt_url: str) -> None:
    base = f"edge-test/{uuid.uuid4().hex[:10]}"
    items = [(f"{base}/{i}", f'{{"n":{i}}}'.encode()) for i in range(300)]
    seen: dict[str, bytes] = {}
    async with _client(mqtt_url) as sub, _client(mqtt_url) as pub:
        await sub.subscribe(f"{base}/#", qos=1)
        results = await publish_qos1_many(pub, items, retain=False, properties=None, timeout_s=WAIT_S)
        assert results == [None] * len(items)
        assert pub._pending_publishes == {}  # every PUBACK came, nothing waits on
        async with asyncio.timeout(WAIT_S):
            async for msg in sub.messages:
                seen[str(msg.topic)] = bytes(msg.payload)  # type: ignore[arg-type]
                if len(seen) == len(items):
                    break
    assert seen == dict(items)


async def test_a_batch_to_a_broker_that_went_away_fails_as_a_link_error(
    private_broker: PrivateBroker,
) -> None:
    """What cannot be sent is a link error per message (the caller queues it again), never an
    exception out of the batch, and nothing stays in aiomqtt's table of pending publishes."""
    items = [(f"edge-test/gone/{i}", b"{}") for i in range(20)]
    client = _client(private_broker.url)
    await client.__aenter__()
    try:
        await private_broker.stop()
        results = await publish_qos1_many(client, items, retain=True, properties=None, timeout_s=1.0)
        assert len(results) == len(items)
        assert all(r is not None and is_link_error(r) for r in results)
        assert client._pending_publishes == {}
    finally:
        with contextlib.suppress(aiomqtt.MqttError, OSError):
            await client.__aexit__(None, None, None)
        await private_broker.start()


async def test_shared_properties_reach_the_subscriber_on_every_message(mqtt_url: str) -> None:
    """The content type that all retained states share is packed once and still arrives with
    each message (MQTT 5, both ends)."""
    props = publish_properties(None, None, "application/json")
    assert publish_properties(None, None, "application/json") is props
    own = publish_properties("r/1", None, "application/json")  # per message: not the shared one
    assert own is not props
    assert getattr(own, "ResponseTopic", None) == "r/1"
    base = f"edge-test/{uuid.uuid4().hex[:10]}"
    items = [(f"{base}/{i}", b"{}") for i in range(50)]
    types: dict[str, str | None] = {}
    v5 = aiomqtt.ProtocolVersion.V5
    address = BrokerAddress.parse(mqtt_url)
    sub_c = aiomqtt.Client(address.host, address.port, protocol=v5, identifier=f"s-{uuid.uuid4().hex[:8]}")
    pub_c = aiomqtt.Client(address.host, address.port, protocol=v5, identifier=f"p-{uuid.uuid4().hex[:8]}")
    async with sub_c as sub, pub_c as pub:
        await sub.subscribe(f"{base}/#", qos=1)
        assert (
            await publish_qos1_many(pub, items, retain=False, properties=props, timeout_s=WAIT_S)
            == [None] * 50
        )
        async with asyncio.timeout(WAIT_S):
            async for msg in sub.messages:
                types[str(msg.topic)] = getattr(msg.properties, "ContentType", None)
                if len(types) == len(items):
                    break
    assert set(types.values()) == {"application/json"}
