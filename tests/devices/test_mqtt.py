"""The MQTT device client (devices/protocols/mqtt.py) every MQTT driver shares."""

from __future__ import annotations

import asyncio
import fcntl
import secrets
import struct
import termios
import time
from urllib.parse import urlsplit

import pytest
from paho.mqtt import publish as paho_publish
from waiting import wait_until

from devices.protocols.mqtt import MqttDeviceClient
from edge.errors import ConfigError, DeviceUnavailable
from edge.mqtt import BrokerAddress


def test_a_bad_url_names_its_settings_key() -> None:
    with pytest.raises(ConfigError) as err:
        MqttDeviceClient(
            "http://x", name="t", subscriptions=(), on_message=print, settings_key="waste.fleet_mqtt_url"
        )
    assert err.value.key == "waste.fleet_mqtt_url"


async def test_an_unreachable_broker_is_down_and_publish_says_unavailable() -> None:
    """No broker: `on_down` on every failed attempt (not on close), publish raises DeviceUnavailable."""
    downs: list[str] = []
    link = MqttDeviceClient(
        "mqtt://127.0.0.1:1",
        name="t-down",
        subscriptions=[("x/#", 0)],
        on_message=print,
        on_down=downs.append,
        timeout_s=1.0,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
    )
    async with link:
        await wait_until(lambda: len(downs) >= 2, what="two failed attempts")
        with pytest.raises(DeviceUnavailable):
            await link.publish("x/y", b"1", qos=1, retain=False, endpoint="dev-1")
        n = len(downs)
    assert len(downs) == n  # closing is not a device going down


async def test_a_failing_handler_does_not_end_the_session(mqtt_url: str) -> None:
    """The per-message boundary: a handler that raises is counted; the next message still arrives."""
    topic = f"t/{secrets.token_hex(4)}/in"
    got: list[bytes] = []

    def handle(_topic: str, payload: bytes, _retained: bool) -> None:
        if payload == b"boom":
            raise RuntimeError("a bug in one message's handling")
        got.append(payload)

    link = MqttDeviceClient(mqtt_url, name="t-boundary", subscriptions=[(topic, 1)], on_message=handle)
    async with link, BrokerAddress.parse(mqtt_url).client("t-pub", timeout_s=10, pending=10) as pub:
        await link.wait_connected(10)
        await pub.publish(topic, b"boom", qos=1)
        await pub.publish(topic, b"ok", qos=1)
        await wait_until(lambda: got == [b"ok"], what="the message after the failing one")
        assert link.is_connected
        assert link._handler_errors == 1
        await link.publish(topic, b"out", qos=1, retain=False, endpoint="dev-1")
        await wait_until(lambda: got == [b"ok", b"out"], what="our own publication")


async def test_a_busy_loop_still_reads_every_waiting_message_at_once(mqtt_url_elsewhere: str) -> None:
    """A connection that only receives (board echoes, truck acks) reads what waits on its socket
    in one wake-up, not one message per event-loop iteration: at start-up, with long iterations,
    LED-board echoes came in at 3 a second and missed their time-out."""
    mqtt_url = mqtt_url_elsewhere
    topic = f"t/{secrets.token_hex(4)}/burst"
    n = 300
    iteration = 0
    seen_at: list[int] = []
    link = MqttDeviceClient(
        mqtt_url,
        name="t-burst",
        subscriptions=[(topic, 0)],
        on_message=lambda _t, _p, _r: seen_at.append(iteration),
    )
    loop = asyncio.get_running_loop()
    busy = True
    url = urlsplit(mqtt_url)
    messages: paho_publish.MessagesList = [
        {"topic": topic, "payload": f"{i:04d}", "qos": 0} for i in range(n)
    ]
    # a QoS 0 PUBLISH: fixed header (2), topic length (2), topic, payload (MQTT 5 adds 1)
    all_bytes = n * (2 + 2 + len(topic) + 4)

    def publish_while_blocked() -> None:
        # The loop is held here until every message waits on our socket (or 10 s pass).
        paho_publish.multiple(messages, hostname=url.hostname or "127.0.0.1", port=url.port or 1883)
        client = link.client
        sock = client._client.socket() if client is not None else None
        deadline = time.monotonic() + 10
        while sock is not None and time.monotonic() < deadline:
            if struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0] >= all_bytes:
                break
            time.sleep(0.01)
        loop.call_soon(busy_iteration)

    def busy_iteration() -> None:
        # every loop iteration does 20 ms of other work, as the daemon's do at start-up
        nonlocal iteration
        iteration += 1
        time.sleep(0.02)
        if busy:
            loop.call_soon(busy_iteration)

    async with link:
        await link.wait_connected(10)
        loop.call_soon(publish_while_blocked)
        try:
            await wait_until(lambda: len(seen_at) == n, what=f"all {n} messages", timeout_s=20)
        finally:
            busy = False
    # one message per iteration would be n iterations; read at once, a few
    assert len(set(seen_at)) <= n // 5, f"{n} messages read over {len(set(seen_at))} loop iterations"


async def test_messages_larger_and_smaller_than_a_socket_read_arrive_whole(mqtt_url: str) -> None:
    """The clients read the socket 64 kB at a time and hand paho its bytes from there: a 200 kB
    message spans several reads, thousands of small ones share one; each arrives whole, in order.
    Then the broker drops the connection: the next one reads its own bytes, not the old socket's."""
    topic = f"t/{secrets.token_hex(4)}/sizes"
    got: list[bytes] = []
    link = MqttDeviceClient(
        mqtt_url, name="t-sizes", subscriptions=[(topic, 1)], on_message=lambda _t, p, _r: got.append(p),
        backoff_base_s=0.01, backoff_max_s=0.05,
    )  # fmt: skip
    big = bytes(range(256)) * 800  # 204,800 bytes
    small = [f"{i:05d}".encode() for i in range(2000)]
    async with link, BrokerAddress.parse(mqtt_url).client("t-sizes-pub", timeout_s=10, pending=5000) as pub:
        await link.wait_connected(10)
        await pub.publish(topic, big, qos=1)
        await asyncio.gather(*(pub.publish(topic, p, qos=1) for p in small))
        await pub.publish(topic, big[::-1], qos=1)
        await wait_until(lambda: len(got) == 2002, what="every message", timeout_s=20)
        assert got == [big, *small, big[::-1]]
        client = link.client
        assert client is not None
        sock = client._client.socket()
        assert sock is not None
        sock.shutdown(2)  # the connection dies under the client; it reconnects
        await wait_until(lambda: link.client is not None and link.client is not client, what="a new session")
        await link.wait_connected(10)
        await pub.publish(topic, b"after", qos=1)
        await wait_until(lambda: got[-1:] == [b"after"], what="a message on the new connection")
    assert len(got) == 2003
