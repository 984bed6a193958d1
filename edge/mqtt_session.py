"""The one MQTT session: where the broker is, how to connect, and how to stay connected.

The daemon used to hold three MQTT sessions, each with its own connect, backoff, TLS and
receive loop: the northbound link, the LED-board driver's and the fleet driver's. This is
that code once. `MqttSession` is an `edge.lifecycle.Service` whose supervisor task opens a
fresh `aiomqtt.Client` per connection (aiomqtt clients do not survive a lost one), bounds
the connect (CONNACK and the TCP connect aiomqtt runs in a thread), restores every
subscription, runs the session until the connection drops, then waits the capped,
jittered `edge.backoff.Backoff` and starts over. Each received message passes a
per-message boundary: a handler that raises is counted and logged once per topic
(`edge.decode.Refusals`), never ends the session.

Subclasses shape a session through hooks: `_new_client` (protocol, will), `_before_connect`
(a protocol probe), `_sub_option` (subscribe options), `_after_subscribe` (an online
message), `_run` (the tasks of one connection; the default only reads), `_handle` (one
message), `_connect_refused` (a CONNACK refusal) and `_set_connected` (what goes down with
the connection). `edge.mqtt.MqttLink` adds the outbox; `devices.protocols.mqtt` is the
client the MQTT device drivers share.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
import structlog
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.backoff import Backoff
from edge.decode import Refusals
from edge.errors import ConfigError
from edge.lifecycle import Service, ServiceState

__all__ = [
    "BrokerAddress",
    "MqttSession",
    "ReadOnlyEvent",
    "TlsFiles",
    "is_link_error",
    "publish_properties",
    "rc_int",
]

_CONTENT_PROPS: dict[str | None, Properties] = {}


def publish_properties(
    response_topic: str | None, correlation_data: bytes | None, content_type: str | None
) -> Properties:
    """MQTT 5 PUBLISH properties. Those with only a content type are built once and shared: paho
    builds a property table per instance (a quarter of the daemon's CPU when a city's retained
    states went out), and packing a message only reads them."""
    shared = response_topic is None and correlation_data is None
    if shared and content_type in _CONTENT_PROPS:
        return _CONTENT_PROPS[content_type]
    props = _Packed(PacketTypes.PUBLISH) if shared else Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation_data is not None:
        props.CorrelationData = correlation_data
    if content_type is not None:
        props.ContentType = content_type
    if shared:
        _CONTENT_PROPS[content_type] = props
    return props


class _Packed(Properties):
    """Properties shared by many messages and never changed once built: packed once. paho packs
    the table for every message, asking each of its 27 names whether it is set (a tenth of the
    publishing cost of a city's lamp states)."""

    def pack(self) -> bytes:
        packed: bytes | None = self.__dict__.get("_packed")
        if packed is None:
            packed = super().pack()  # type: ignore[no-untyped-call]
            object.__setattr__(self, "_packed", packed)
        return packed


log = structlog.get_logger(__name__)


class ReadOnlyEvent:
    """An `asyncio.Event` that callers may watch but not set."""

    __slots__ = ("_event",)

    def __init__(self, event: asyncio.Event) -> None:
        self._event = event

    def is_set(self) -> bool:
        """Whether the event is set now."""
        return self._event.is_set()

    async def wait(self) -> None:
        """Wait until the event is set."""
        await self._event.wait()


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """TLS material for one broker link: a private CA and a client certificate (mutual TLS).

    Empty `ca_file`: the system trust store. `key_file` empty: the key is in `cert_file`.
    `key` names the settings section, so a file that does not load is reported by its key.
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password: str | None = field(default=None, repr=False)
    key: str = "mqtt.tls"

    @property
    def configured(self) -> bool:
        """Whether any file is given (else the system trust store alone is used)."""
        return bool(self.ca_file or self.cert_file or self.key_file)

    def context(self) -> ssl.SSLContext:
        """A client SSL context (hostname checked); ConfigError names the file that fails."""
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ConfigError(f"no such file: {path}", key=f"{self.key}.{name}")
        if self.key_file is not None and self.cert_file is None:
            raise ConfigError("a key needs its certificate (cert_file)", key=f"{self.key}.cert_file")
        try:
            ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"not a PEM CA certificate: {exc}", key=f"{self.key}.ca_file") from None
        if self.cert_file is not None:
            password = self.key_password or ""
            try:
                # A callable, never None: OpenSSL would prompt on the terminal for the
                # password of an encrypted key, and a daemon would hang there.
                ctx.load_cert_chain(self.cert_file, self.key_file, password=password.encode)
            except (ssl.SSLError, OSError, ValueError) as exc:
                hint = "no key_password for an encrypted key" if not password else "wrong key_password"
                raise ConfigError(
                    f"cannot load the client certificate and key ({hint}, or a key that does not "
                    f"match the certificate): {exc}",
                    key=f"{self.key}.cert_file",
                ) from None
        return ctx


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where and how to connect, parsed from `mqtt://[user:pass@]host[:port]` (or `mqtts://`)."""

    host: str
    port: int
    username: str | None
    password: str | None = field(repr=False)
    tls: bool
    tls_files: TlsFiles | None = None

    @classmethod
    def parse(cls, url: str, *, tls: TlsFiles | None = None, key: str = "mqtt.url") -> BrokerAddress:
        """Parse an `mqtt://` or `mqtts://` URL; raise ConfigError naming the problem.

        TLS files apply to `mqtts://` only: given for a plain `mqtt://` URL they are an error
        (the operator meant TLS and would silently get none).
        """
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ConfigError("must start with mqtt:// or mqtts://", key=key)
        if not parts.hostname:
            raise ConfigError("has no host", key=key)
        secure = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if secure else 1883)
        except ValueError as exc:
            raise ConfigError(f"bad port: {exc}", key=key) from None
        if tls is not None and tls.configured and not secure:
            raise ConfigError(f"{tls.key} has TLS files but the URL is mqtt://: use mqtts://", key=key)
        return cls(
            host=parts.hostname,
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=secure,
            tls_files=tls if secure else None,
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for `mqtts://` (private CA and client certificate if configured)."""
        if not self.tls:
            return None
        return (self.tls_files or TlsFiles()).context()

    def client(
        self, name: str, *, timeout_s: float, pending: int, tls_context: ssl.SSLContext | None = None
    ) -> aiomqtt.Client:
        """A plain aiomqtt client for a device driver's own session (boards, trucks).

        `pending` raises aiomqtt's warning threshold for concurrent calls: drivers write to
        many devices at once by design. The identifier is unique so two daemons never kick
        each other off the broker.
        """
        client = self.aiomqtt_client(
            timeout_s=timeout_s,
            tls_context=tls_context or self.ssl_context(),
            identifier=f"{name}-{uuid.uuid4().hex[:12]}",
        )
        client.pending_calls_threshold = pending
        return client

    def aiomqtt_client(
        self, *, timeout_s: float, tls_context: ssl.SSLContext | None, **options: Any
    ) -> aiomqtt.Client:
        """The one place an aiomqtt client is made for this address; `options` go to aiomqtt as they are."""
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            timeout=timeout_s,
            tls_context=tls_context,
            **options,
        )
        greedy_reads(client)
        return client

    @property
    def where(self) -> str:
        """host:port, for logs (the URL may hold a password)."""
        return f"{self.host}:{self.port}"

    @property
    def safe_url(self) -> str:
        """The URL without credentials, for logs."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.where}"


class MqttSession(Service):
    """One broker connection kept up for good; see the module docstring.

    `subscriptions` are (topic filter, QoS) pairs, subscribed on every connection. Timeouts
    and backoff are real seconds.
    """

    service_name = "mqtt"

    def __init__(
        self,
        address: BrokerAddress,
        *,
        name: str,
        subscriptions: Sequence[tuple[str, int]] = (),
        connect_timeout_s: float = 5.0,
        backoff: Backoff | None = None,
        pending_calls: int = 64,
    ) -> None:
        super().__init__()
        self.service_name = name
        self.address = address
        # Built once: a CA or key that does not load fails here, at start, naming its key.
        self._tls_context = address.ssl_context()
        self._subscriptions = list(subscriptions)
        self._connect_timeout_s = connect_timeout_s
        self._backoff = backoff or Backoff(0.5, 30.0)
        self._pending_calls = pending_calls
        self._client: aiomqtt.Client | None = None
        self._closing = asyncio.Event()
        self._connected = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._disconnected.set()
        self._supervisor: asyncio.Task[Any] | None = None
        self._sessions = 0
        self._received = 0
        self._handler_errors = 0
        self._crashes = Refusals(name)

    # -- lifecycle -----------------------------------------------------------------------

    async def _start(self) -> None:
        self._supervisor = self.spawn(self._supervise(), "session")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop reconnecting, let the session end itself (`_close_session`), then close."""
        if self.state is ServiceState.OPENED:
            self._closing.set()
            await self._close_session()
        await super().__aexit__(exc_type, exc, tb)

    async def _close_session(self) -> None:
        """Before the tasks are cancelled: the default ends the session at once."""

    # -- state -------------------------------------------------------------------------

    @property
    def connected(self) -> ReadOnlyEvent:
        """Set while a session is up (subscriptions restored)."""
        return ReadOnlyEvent(self._connected)

    @property
    def client(self) -> aiomqtt.Client | None:
        """The client of the session that is up, None between sessions."""
        return self._client

    async def wait_connected(self, timeout: float) -> None:  # noqa: ASYNC109 - a bounded wait is the API
        """Wait until a session is up; TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    async def wait_disconnected(self, timeout: float) -> None:  # noqa: ASYNC109 - a bounded wait is the API
        """Wait until no session is up; TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            await self._disconnected.wait()

    def _set_connected(self, *, up: bool, reason: str = "") -> None:
        """Flip the connection events; subclasses extend it with what goes down with the link."""
        if up:
            self._disconnected.clear()
            self._connected.set()
        else:
            self._client = None
            self._connected.clear()
            self._disconnected.set()

    # -- supervisor ----------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Connect, run a session, back off, repeat until closing."""
        failing = False
        url = self.address.safe_url
        while not self._closing.is_set():
            started = self._sessions
            reason = "closing"
            try:
                await self._session()
            except MqttConnectError as exc:
                reason = str(exc)
                if self._connect_refused(exc):
                    continue
                if not failing:
                    log.warning("mqtt_connect_refused", session=self.service_name, url=url, reason=reason)
                failing = True
            except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
                if self._sessions > started:
                    log.warning("mqtt_disconnected", session=self.service_name, url=url, reason=reason)
                elif not failing:
                    log.warning("mqtt_connect_failed", session=self.service_name, url=url, reason=reason)
                failing = self._sessions == started
            except Exception:
                # A bug in a session must not end it for good: log it, reconnect.
                log.exception("mqtt_session_crashed", session=self.service_name, url=url)
                reason = "session crashed"
                failing = True
            finally:
                self._set_connected(up=False, reason=reason)
            if self._closing.is_set():
                return
            if self._sessions > started:
                self._backoff.reset()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._backoff.next_delay()):
                    await self._closing.wait()

    def _connect_refused(self, exc: MqttConnectError) -> bool:
        """A CONNACK refusal: True to reconnect at once (e.g. with another protocol)."""
        return False

    async def _before_connect(self) -> None:
        """Runs before each CONNECT (a protocol probe)."""

    def _new_client(self) -> aiomqtt.Client:
        """A fresh client per session (see `BrokerAddress.client`)."""
        return self.address.client(
            self.service_name,
            timeout_s=self._connect_timeout_s,
            pending=self._pending_calls,
            tls_context=self._tls_context,
        )

    async def _session(self) -> None:
        """One connection, from CONNECT to its end."""
        await self._before_connect()
        client = self._new_client()
        async with contextlib.AsyncExitStack() as stack:
            # aiomqtt bounds the CONNACK wait by `timeout`; this outer bound also covers
            # the TCP connect it runs in a thread.
            async with asyncio.timeout(self._connect_timeout_s * 2 + 1):
                await stack.enter_async_context(client)
            no_delay(client)
            await self._restore(client)
            self._sessions += 1
            self._client = client
            self._set_connected(up=True)
            self._log_connected()
            try:
                await self._run(client)
            finally:
                _retrieve_disconnect(client)

    def _log_connected(self) -> None:
        log.info("mqtt_connected", session=self.service_name, url=self.address.safe_url, n=self._sessions)

    def _sub_option(self, qos: int) -> Any:
        """What `subscribe` gets per topic: the QoS (MQTT 5 sessions may give options)."""
        return qos

    async def _restore(self, client: aiomqtt.Client) -> None:
        """Subscriptions first, then `_after_subscribe`: the world sees us only when ready."""
        if self._subscriptions:
            subs = [(topic, self._sub_option(qos)) for topic, qos in self._subscriptions]
            codes = await client.subscribe(subs, timeout=self._connect_timeout_s)
            for (topic, _), code in zip(self._subscriptions, codes, strict=False):
                if rc_int(code) >= 0x80:
                    log.error(
                        "mqtt_subscribe_refused", session=self.service_name, topic=topic, reason=str(code)
                    )
        await self._after_subscribe(client)

    async def _after_subscribe(self, client: aiomqtt.Client) -> None:
        """Runs once subscribed, before the session counts as up (an online message)."""

    async def _run(self, client: aiomqtt.Client) -> None:
        """The session's work until the connection drops; the default reads."""
        await self._read(client)

    async def _read(self, client: aiomqtt.Client) -> None:
        """Hand each message to `_handle` in arrival order: the per-message boundary."""
        async for message in received(client):
            await self._one(message)

    async def _one(self, message: aiomqtt.Message) -> None:
        self._received += 1
        try:
            await self._handle(message)
        except Exception as exc:  # the per-message boundary: logged once per topic, never ends the session
            self._handler_errors += 1
            self._crashes.crashed(message.topic.value, exc)

    async def _handle(self, message: aiomqtt.Message) -> None:
        """One received message; subclasses override."""


def payload_bytes(message: aiomqtt.Message) -> bytes:
    """A message's payload as bytes (aiomqtt types it loosely)."""
    payload = message.payload
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()


def is_link_error(exc: BaseException) -> bool:
    """Errors of the connection (retry later) as opposed to errors of one message."""
    return isinstance(exc, aiomqtt.MqttError | OSError | TimeoutError | asyncio.CancelledError)


def rc_int(code: object) -> int:
    """A paho reason code (or int) as an int, -1 if it is neither."""
    value = getattr(code, "value", code)
    return value if isinstance(value, int) else -1


def _retrieve_disconnect(client: aiomqtt.Client) -> None:
    """Mark aiomqtt's "unexpected disconnection" as seen: a session that ended in another task
    (a failed publish) never read it, and asyncio would log it at garbage collection."""
    fut = client._disconnected  # aiomqtt keeps it private
    if fut.done() and not fut.cancelled():
        fut.exception()


def no_delay(client: aiomqtt.Client) -> None:
    """Turn off Nagle's algorithm: small MQTT packets otherwise wait ~40 ms for a delayed ACK."""
    sock = client._client.socket()  # paho exposes the socket only here
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


READ_BURST = 256  # packets read per readable event, and queued messages handed on, at most


RECV_CHUNK = 65_536  # bytes asked of the socket at once


class _RecvBuffer:
    """paho's socket reads, from a buffer filled a socket-full at a time.

    paho reads a packet's header a byte at a time and then its body: four `recv` calls per
    message, each a system call and a few Python frames. A city's 57,000 retained messages on
    the dashboard's connect were 229,000 calls, a third of the load's CPU. The buffer belongs to
    one socket: a new socket (a reconnect of the same client) starts empty.
    """

    __slots__ = ("data", "pos", "read", "sock")

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self.read = read  # paho's own `_sock_recv`: its TLS and error handling stay
        self.data = b""
        self.pos = 0
        self.sock: object = None

    def pending(self, sock: object) -> bool:
        return sock is self.sock and self.pos < len(self.data)

    def recv(self, sock: object, n: int) -> bytes:
        if sock is not self.sock or self.pos >= len(self.data):
            self.sock, self.data, self.pos = sock, b"", 0
            data = self.read(RECV_CHUNK)  # BlockingIOError, OSError: raised to paho as before
            if len(data) <= n:
                return data  # b"" on EOF
            self.data = data
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out


def greedy_reads(client: aiomqtt.Client, burst: int = READ_BURST) -> None:
    """Read on while the socket has data (up to `burst` packets) on each readable event, from a
    buffer a socket-full at a time (`_RecvBuffer`).

    paho's `loop_read` reads one packet, plus one per message we have in flight, and aiomqtt
    calls it once per readable event, that is once per event-loop iteration. A connection that
    mostly receives (a board's echoes, the dashboard's retained states) was held to a message
    per iteration: at start-up at 53,800 lamps, with iterations of 100-300 ms, the LED boards'
    echoes came in at 3 a second and missed their 2 s (measured). What the buffer holds is
    always read to the end: the socket would not say readable for it again. Call before
    connecting (`BrokerAddress.aiomqtt_client` does, for every client it makes).
    """
    paho = client._client  # aiomqtt's paho client: the only way to its reading
    read_one = paho.loop_read
    buf = _RecvBuffer(paho._sock_recv)

    def sock_recv(n: int) -> bytes:
        return buf.recv(paho._sock, n)

    def loop_read(max_packets: int = 1) -> MQTTErrorCode:
        rc = read_one(max_packets)
        n = 1
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            sock = paho.socket()
            if sock is None:
                break
            if not buf.pending(sock) and (n >= burst or not select.select([sock], [], [], 0)[0]):
                break
            rc = read_one(max_packets)
            n += 1
        return rc

    paho._sock_recv = sock_recv  # type: ignore[method-assign,assignment]
    paho.loop_read = loop_read  # type: ignore[method-assign]


async def received(client: aiomqtt.Client) -> AsyncIterator[aiomqtt.Message]:
    """`client.messages`, with what is already queued handed on at once (up to READ_BURST).

    aiomqtt's iterator starts a task and waits for it for every message, so each message
    costs at least one event-loop iteration; on a busy loop that held a connection to a few
    messages a second. Use with `greedy_reads`, which fills the queue a socket-full at a time.
    """
    queued: asyncio.Queue[aiomqtt.Message] | None = getattr(client, "_queue", None)  # private
    async for message in client.messages:
        yield message
        for _ in range(READ_BURST):
            if queued is None or queued.empty():
                break
            yield queued.get_nowait()
