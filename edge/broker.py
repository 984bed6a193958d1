"""An embedded MQTT broker (amqtt) so a demo or a test runs without Mosquitto.

What amqtt 0.12.1 can and cannot do, measured on this machine (see tests/edge/test_mqtt.py):

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

amqtt 0.12 iterates its subscription dict across an `await` when a client connects
(`_handle_client_session` publishes retained messages per filter), so a subscribe from
another client in between raised "dictionary changed size during iteration" and dropped
the connecting client. `_Subscriptions` iterates over a snapshot of the keys instead.

`BrokerProcess` runs the same broker in a child process: a pure-Python broker routing a
demo's traffic costs most of a core, and in the daemon's process it competed with the
daemon for the event loop (a real site's broker is not in the daemon's process either).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import multiprocessing
import os
import signal
import socket
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Self

from amqtt.broker import Broker

from edge.lifecycle import Service
from edge.net import free_port

# amqtt and its state machine library log every connection at INFO and a v5 probe at
# WARNING; the daemon logs link transitions itself.
_NOISY_LOGGERS = ("amqtt", "transitions")


class _Subscriptions(dict[str, list[Any]]):
    """amqtt's filter -> subscribers map, iterated over a snapshot of its keys (see module doc)."""

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.keys()))


class _Broker(Broker):  # type: ignore[misc]  # amqtt ships no type information for Broker
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self._subscriptions = _Subscriptions()


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
        broker = _Broker(self._config())
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


# -- the broker in a child process -----------------------------------------------------------

_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 5.0


def _serve(host: str, port: int, log_level: int, ready: Any) -> None:
    """Child process: the embedded broker until SIGTERM, or until the parent is gone."""
    import uvloop

    from edge import logs

    logs.configure("warning", "json")
    parent = os.getppid()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, lambda: None)  # the parent decides when we stop
        async with EmbeddedBroker(host, port, log_level=log_level):
            ready.set()
            while not stop.is_set() and os.getppid() == parent:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

    try:
        uvloop.run(main())
    except Exception as exc:
        if _in_use(exc):
            raise SystemExit(_EXIT_IN_USE) from None  # the parent names the port; no traceback here
        raise


_EXIT_IN_USE = 98


def _check_free(host: str, port: int) -> None:
    """Raise OSError(EADDRINUSE) naming the port when something listens there already."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's servers do
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise OSError(errno.EADDRINUSE, f"embedded broker: port {port} on {host} is in use") from None
            raise


def _in_use(exc: BaseException | None) -> bool:
    """Whether `exc` or its cause is a bind that found the address in use."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
            return True
        if "address already in use" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class BrokerProcess(Service):
    """`EmbeddedBroker` in a child process (spawned), as an async context manager.

    The child exits on `__aexit__` (SIGTERM, then a kill after a few seconds) and by itself
    when its parent dies, so a killed demo leaves no broker behind.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, log_level: int = logging.ERROR) -> None:
        super().__init__()
        self._host = host
        self._port = port or free_port(host)
        self._log_level = log_level
        self._proc: multiprocessing.process.BaseProcess | None = None

    @property
    def url(self) -> str:
        """`mqtt://host:port`, the form `MqttLink` takes."""
        return f"mqtt://{self._host}:{self._port}"

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return None if self._proc is None else self._proc.pid

    service_name = "broker"

    async def _start(self) -> None:
        _check_free(self._host, self._port)
        ctx = multiprocessing.get_context("spawn")
        ready = ctx.Event()
        proc = ctx.Process(
            target=_serve,
            args=(self._host, self._port, self._log_level, ready),
            name="edge-broker",
            daemon=True,
        )
        proc.start()
        self._proc = proc
        # A readiness flag, not a probe connection: amqtt logs an error for a client
        # that connects and leaves without a CONNECT. Checked in short waits, so a child
        # that failed to start is seen at once, not after the whole timeout.
        async with asyncio.timeout(_START_TIMEOUT_S):
            while not await asyncio.to_thread(ready.wait, 0.2):
                if proc.exitcode == _EXIT_IN_USE:
                    raise OSError(
                        errno.EADDRINUSE, f"embedded broker: port {self._port} on {self._host} is in use"
                    )
                if proc.exitcode is not None:
                    raise RuntimeError(f"embedded broker exited with code {proc.exitcode} at start")

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.is_alive():
            proc.terminate()
        await asyncio.to_thread(proc.join, _STOP_TIMEOUT_S)
        if proc.is_alive():
            proc.kill()
            await asyncio.to_thread(proc.join, 2.0)
        if not proc.is_alive():
            proc.close()
