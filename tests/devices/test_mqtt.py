"""The MQTT device client (devices/protocols/mqtt.py) every MQTT driver shares."""

from __future__ import annotations

import secrets

import pytest
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
