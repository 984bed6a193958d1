"""An embedded MQTT broker (amqtt) so a demo or a test runs without Mosquitto.

What amqtt 0.12.1 can and cannot do, measured on this machine (see tests/test_mqtt_link.py):

- MQTT 3.1.1 only. A bare v5 CONNECT is answered with CONNACK "unacceptable protocol
  version" (`_MQTT_PROTOCOL_LEVEL_SUPPORTED = 4` in `amqtt/mqtt/protocol/broker_handler.py`);
  aiomqtt raises `MqttConnectError("Unsupported protocol version")`. But a v5 CONNECT
  carrying a client id *and* a will is misparsed and never answered (the client times
  out), so `edge.mqtt.MqttLink` first probes with a bare v5 CONNECT, then falls back
  to 3.1.1 and carries `response_topic` and `correlation_id` inside the JSON payload:
  no response topic, correlation data or user properties on the wire.
- QoS 1 with PUBACK, retained messages, and the last will (retained flag honoured) work.
- Persistent sessions do not queue QoS 1 messages for *anonymous* clients while they are
  offline (`Broker._broadcast_loop` skips `is_anonymous` sessions), so a subscriber that
  must not miss anything has to be connected (or authenticated) when messages go out.
- Throughput: ~2,000 QoS 1 msg/s and ~3,700 QoS 0 msg/s routed, publisher and
  subscriber in the same process: a demo broker, not a city's. Production uses Mosquitto.

The broker can be stopped and started again on the same port (a fresh amqtt `Broker` per
start), which the reconnect tests need.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from types import TracebackType
from typing import Any, Self

from amqtt.broker import Broker

from edge.net import free_port

# amqtt and its state machine library log every connection at INFO and a v5 probe at
# WARNING; the daemon logs link transitions itself.
_NOISY_LOGGERS = ("amqtt", "transitions")


class BrokerState(enum.Enum):
    """Lifecycle of an `EmbeddedBroker`; STOPPED may be started again."""

    UNOPENED = "unopened"
    RUNNING = "running"
    STOPPED = "stopped"


class EmbeddedBroker:
    """amqtt broker on `host:port`, anonymous, quiet; restartable on the same port.

    `port=0` picks a free port on the first start and keeps it for later restarts.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, *, log_level: int = logging.ERROR) -> None:
        self._host = host
        self._port = port
        self._log_level = log_level
        self._broker: Any = None
        self._state = BrokerState.UNOPENED

    @property
    def state(self) -> BrokerState:
        """Whether the broker is listening."""
        return self._state

    @property
    def host(self) -> str:
        """Listening address."""
        return self._host

    @property
    def port(self) -> int:
        """Listening port (the chosen one once started with port 0)."""
        return self._port

    @property
    def url(self) -> str:
        """`mqtt://host:port`, the form `MqttLink` takes."""
        return f"mqtt://{self._host}:{self._port}"

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self._host}:{self._port}"}},
            # No $SYS publisher and no packet logger: both cost CPU for nothing here.
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }

    async def start(self) -> None:
        """Listen; on the same port as before when restarted."""
        if self._state is BrokerState.RUNNING:
            raise RuntimeError("embedded broker already running")
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).setLevel(self._log_level)
        if self._port == 0:
            # Bind 0 via amqtt would work too, but the chosen port is only reachable
            # through amqtt's private `_servers`; a just-freed port is good enough here.
            self._port = free_port(self._host)
        broker = Broker(self._config())
        await broker.start()
        self._broker = broker
        self._state = BrokerState.RUNNING

    async def stop(self) -> None:
        """Close the listener and every client connection; retained messages are lost."""
        if self._state is not BrokerState.RUNNING:
            return
        broker, self._broker = self._broker, None
        self._state = BrokerState.STOPPED
        await broker.shutdown()
        # amqtt leaves its per-connection tasks to finish on their own; let them.
        await asyncio.sleep(0)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
