"""The MQTT device client: the one session the MQTT device drivers share the code of.

LED boards, trucks, LoRaWAN uplinks and field inputs (motion, car-park counters) each keep
a session on a site or fleet broker. They used to write their own connect, backoff, TLS
and receive loop; `MqttDeviceClient` is `edge.mqtt_session.MqttSession` with what a
driver needs on top: a synchronous `on_message(topic, payload, retained)` callback behind
the session's per-message boundary, an `on_down(reason)` callback when the connection is
lost, and `publish` that raises the driver errors the dispatcher understands
(`DeviceUnavailable` while disconnected or when the broker fails the publish).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import aiomqtt

from edge.backoff import Backoff
from edge.errors import ConfigError, DeviceUnavailable
from edge.lifecycle import Service
from edge.mqtt_session import BrokerAddress, MqttSession, TlsFiles, payload_bytes

__all__ = ["MqttDeviceClient", "MqttDriver", "OnDown", "OnMessage"]

#: (topic, payload, retained): called for every received message, in arrival order.
OnMessage = Callable[[str, bytes, bool], object]
#: (reason): called when a session ends (the devices behind it are out of reach).
OnDown = Callable[[str], None]


class MqttDeviceClient(MqttSession):
    """A driver's session on a device broker; an async context manager (`edge.lifecycle.Service`)."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        subscriptions: Sequence[tuple[str, int]],
        on_message: OnMessage,
        on_down: OnDown | None = None,
        tls: TlsFiles | None = None,
        settings_key: str = "mqtt.url",
        timeout_s: float = 5.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        pending_calls: int = 64,
    ) -> None:
        """Raises ConfigError naming `settings_key` for a URL that is not mqtt:// or mqtts://."""
        try:
            address = BrokerAddress.parse(url, tls=tls, key=settings_key)
        except ConfigError as exc:
            raise ConfigError(str(exc.args[0]), key=settings_key) from None
        super().__init__(
            address,
            name=name,
            subscriptions=subscriptions,
            connect_timeout_s=timeout_s,
            backoff=Backoff(backoff_base_s, max(backoff_base_s, backoff_max_s)),
            pending_calls=pending_calls,
        )
        self._on_message = on_message
        self._on_down = on_down
        self._timeout_s = timeout_s

    @property
    def is_connected(self) -> bool:
        """Whether a session is up now."""
        return self._connected.is_set()

    @property
    def where(self) -> str:
        """host:port of the broker, for logs (the URL may hold a password)."""
        return self.address.where

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool, endpoint: str) -> None:
        """Publish on the session that is up; DeviceUnavailable (naming `endpoint`) if none or it fails."""
        client = self._client
        if client is None:
            raise DeviceUnavailable(f"{self.service_name} broker not connected", endpoint=endpoint)
        try:
            await client.publish(topic, payload, qos=qos, retain=retain, timeout=self._timeout_s)
        except aiomqtt.MqttError as exc:
            raise DeviceUnavailable(f"{self.service_name} broker: {exc}", endpoint=endpoint) from exc

    async def _handle(self, message: aiomqtt.Message) -> None:
        self._on_message(message.topic.value, payload_bytes(message), bool(message.retain))

    def _set_connected(self, *, up: bool, reason: str = "") -> None:
        super()._set_connected(up=up, reason=reason)
        # Not on close: the devices are not down because the daemon stops.
        if not up and self._on_down is not None and not self._closing.is_set() and reason != "closing":
            self._on_down(reason)


class MqttDriver(Service):
    """Base of a driver whose devices sit behind one `MqttDeviceClient` (`self.link`, set in `__init__`).

    The session opens with the driver and closes after the driver's own tasks have ended.
    """

    link: MqttDeviceClient

    async def _start(self) -> None:
        await self.link.__aenter__()

    async def _stop(self) -> None:
        await self.link.__aexit__(None, None, None)

    async def wait_connected(self, timeout: float) -> None:  # noqa: ASYNC109 - a bounded wait is the API
        """Wait until the session is up and subscribed (tests and the demo)."""
        await self.link.wait_connected(timeout)
