"""The dashboard's MQTT client: subscribes to one site, reconnects, asks and waits for acks.

`DashboardClient.run(sink)` is meant to run in a Textual worker: it connects, subscribes
to the topics the daemon publishes for the site (`subscriptions`, from `edge.topics`) and hands the messages to
`sink` in batches (one call per `flush_interval_s` at most, so a burst of retained state
costs one screen refresh), and reports `Connected` / `Disconnected` transitions. After a
lost connection it waits a capped, jittered exponential backoff and tries again, forever,
until cancelled.

paho reads one MQTT packet per readable event, and on the app's event loop each turn also
carries Textual's work, which caps the rate a busy dashboard reads at (measured: ~1,000
messages/s while 5,000 lamps change at once). `edge.mqtt_session.greedy_reads` makes each
readable event read on while the socket has data (bounded), and `received` hands on what is
queued without a loop iteration per message, so the reading keeps the broker's pace. (A thread of
its own was tried and is worse: paho's byte-wise reads release the GIL several times per
packet, and each time the UI thread may hold it for a switch interval.)

`request(topic, payload)` publishes a command and waits for its `Ack`. The client speaks
MQTT 3.1.1 unless asked for 5: paho builds a `Properties` object for every MQTT 5 message
received (~110 µs, measured: it tripled the dashboard's CPU per message at 5,000 lamps), and
the dashboard needs no MQTT 5 feature, since the response topic and correlation travel in the
JSON as well. With `protocol="5"`, a broker that refuses it (the embedded amqtt broker speaks
only 3.1.1) makes the client fall back to 3.1.1 for its lifetime. Under MQTT 5 the response topic and the
correlation data travel as properties; in every case they are *also* put into the JSON
(`response_topic`, `correlation_id`), so a daemon connected with 3.1.1 behind an MQTT 5
broker (which drops the properties) still answers to the right place. Answers are matched
by the correlation data property or by the `correlation_id` in the answer's JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import aiomqtt
import orjson
import structlog
from aiomqtt.exceptions import MqttCodeError, MqttConnectError
from paho.mqtt.client import MQTTMessage, topic_matches_sub
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from edge.backoff import Backoff
from edge.errors import ConfigError
from edge.mqtt import BrokerAddress, TlsFiles
from edge.mqtt_session import greedy_reads, received
from edge.payloads import Ack
from edge.redact import redact_url
from edge.topics import dashboard_subscriptions
from tui.views.base import PREFIX

log = structlog.get_logger(__name__)

ProtocolName = Literal["5", "3.1.1"]
# CONNACK "unsupported protocol version": 132 as an MQTT 5 reason code, 1 in 3.1.1.
_UNSUPPORTED_PROTOCOL = (132, 1)
BACKOFF_BASE_S = 0.5  # the first retry after a drop comes within half a second


class Requester(Protocol):
    """The seam the dashboard sends commands through (a fake in the Pilot tests)."""

    async def request(self, topic: str, payload: Mapping[str, object]) -> Ack:
        """Publish a request and return its answer; raise RequestError when there is none."""
        ...


class RequestError(Exception):
    """A request got no answer: `reason` is `disconnected`, `timeout` or `publish_failed`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Connected:
    """A session is up and subscribed."""

    protocol: ProtocolName


@dataclass(frozen=True, slots=True)
class Disconnected:
    """No session; the next attempt starts in `retry_in_s` seconds."""

    reason: str
    attempt: int
    retry_in_s: float


@dataclass(frozen=True, slots=True)
class Received:
    """Messages received since the last batch, in arrival order."""

    messages: tuple[tuple[str, bytes], ...]


ClientEvent = Connected | Disconnected | Received
Sink = Callable[[ClientEvent], None]


class BrokerUrl(BrokerAddress):
    """The kernel's broker address, as the dashboard takes it from its command line: a bad URL is
    a ValueError naming it (without its password), and `safe()` shows it without credentials."""

    __slots__ = ()

    @classmethod
    def parse(cls, url: str, *, tls: TlsFiles | None = None, key: str = "--broker") -> BrokerUrl:
        """Parse a broker URL; ValueError names what is wrong."""
        try:
            addr = BrokerAddress.parse(url, tls=tls, key=key)
        except ConfigError as exc:
            raise ValueError(f"broker URL {exc.args[0]}: {redact_url(url)!r}") from None
        return cls(addr.host, addr.port, addr.username, addr.password, addr.tls, addr.tls_files)

    def safe(self) -> str:
        """The URL without credentials, for display and logs."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def subscriptions(base: str) -> list[str]:
    """The topic filters the dashboard subscribes to under a site's base: every topic the daemon
    publishes, from the one topic table (`edge.topics`); the client adds its own reply topic."""
    return dashboard_subscriptions(base)


class DashboardClient:
    """One site's messages in, requests out; see the module docstring."""

    def __init__(
        self,
        url: str,
        site: str,
        *,
        client_id: str | None = None,
        protocol: ProtocolName = "3.1.1",
        connect_timeout_s: float = 5.0,
        request_timeout_s: float = 15.0,
        backoff_max_s: float = 30.0,
        flush_interval_s: float = 0.1,
        keepalive_s: int = 30,
        rng: random.Random | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        """`tls`: a private CA and a client certificate for an `mqtts://` broker (mutual TLS);
        loaded here, so a file that does not load fails at once (ConfigError naming it)."""
        self.url = BrokerUrl.parse(url)
        self._tls_context = (tls or TlsFiles(key="tui")).context() if self.url.tls else None
        self.site = site
        self.base = f"{PREFIX}/{site}"
        self.client_id = client_id or f"tui-{uuid.uuid4().hex[:12]}"
        self.reply_topic = f"{self.base}/replies/{self.client_id}"
        self._protocol: ProtocolName = protocol
        self._connect_timeout_s = connect_timeout_s
        self._request_timeout_s = request_timeout_s
        self._backoff = Backoff(BACKOFF_BASE_S, backoff_max_s, rng=rng or random.Random())
        self._flush_interval_s = flush_interval_s
        self._keepalive_s = keepalive_s
        self._client: aiomqtt.Client | None = None
        self._pending: dict[str, asyncio.Future[Ack]] = {}
        self._buffer: list[tuple[str, bytes]] = []
        self._wake = asyncio.Event()
        self.received = 0
        self.bad_replies = 0
        self.bad_topics = 0

    @property
    def protocol(self) -> ProtocolName:
        """The protocol in use (after any fallback)."""
        return self._protocol

    @property
    def connected(self) -> bool:
        return self._client is not None

    def filters(self) -> list[str]:
        """What a session subscribes to: the site's `subscriptions`, and this client's reply topic
        unless one of them already covers it."""
        filters = subscriptions(self.base)
        if not any(topic_matches_sub(f, self.reply_topic) for f in filters):
            filters.append(self.reply_topic)
        return filters

    # ----- the worker ------------------------------------------------------------------------

    async def run(self, sink: Sink) -> None:
        """Connect, receive, reconnect; until cancelled."""
        attempt = 0
        while True:
            try:
                await self._session(sink)
                reason = "session ended"
            except MqttConnectError as exc:
                if self._protocol == "5" and _rc(exc) in _UNSUPPORTED_PROTOCOL:
                    self._protocol = "3.1.1"
                    log.info("tui_mqtt_protocol_fallback", url=self.url.safe(), to="3.1.1")
                    continue
                reason = f"refused: {exc}"
            except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
            finally:
                was_up = self._client is not None
                self._client = None
                self._fail_pending()
            if was_up:
                self._backoff.reset()
            attempt = 1 if was_up else attempt + 1
            delay = self._backoff.next_delay()
            if attempt == 1:
                log.warning("tui_mqtt_disconnected", url=self.url.safe(), reason=reason)
            sink(Disconnected(reason=reason, attempt=attempt, retry_in_s=delay))
            await asyncio.sleep(delay)

    def _new_client(self) -> aiomqtt.Client:
        v5 = self._protocol == "5"
        return aiomqtt.Client(
            self.url.host,
            self.url.port,
            username=self.url.username,
            password=self.url.password,
            # No identifier and no will: amqtt answers such a bare v5 CONNECT with
            # "unsupported protocol version" (see edge.broker), so it doubles as the probe.
            identifier=None,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            timeout=self._connect_timeout_s,
            keepalive=self._keepalive_s,
            tls_context=self._tls_context,
        )

    async def _session(self, sink: Sink) -> None:
        client = self._new_client()
        # Thousands of retained messages arrive at once; aiomqtt warns past its threshold.
        client.pending_calls_threshold = 1_000_000
        greedy_reads(client)
        # Each message straight from paho into the batch: aiomqtt's own path (a Message object
        # and its queue per message, then our reader) was a fifth of a city's load (57,000
        # retained messages). aiomqtt's iterator still ends the session on a disconnect.
        client._client.on_message = self._on_paho_message  # private: aiomqtt 2.5, pinned
        async with contextlib.AsyncExitStack() as stack:
            async with asyncio.timeout(self._connect_timeout_s * 2 + 1):
                await stack.enter_async_context(client)
                # QoS 0: a live view gains nothing from QoS 1 on a clean session (the retained
                # state re-syncs it on every connect). Mosquitto keeps at most
                # max_queued_messages (default 1,000) packets waiting per client: at QoS 1 all
                # but 20 in flight wait, so a 5,000-lamp site lost 4,000 retained states; at
                # QoS 0 only what the socket cannot take waits, still too many for a city
                # (21,149 of 53,800 arrived): docs/mosquitto/mosquitto.conf sizes it.
                filters = [(f, 0) for f in self.filters()]
                await client.subscribe(filters, timeout=self._connect_timeout_s)
            self._client = client
            log.info("tui_mqtt_connected", url=self.url.safe(), protocol=self._protocol)
            sink(Connected(self._protocol))
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._read(client), name="tui.mqtt.read")
                    tg.create_task(self._flush(sink), name="tui.mqtt.flush")
            except BaseExceptionGroup as group:
                # The reader's link error ends the session: raise it as itself.
                raise _first_leaf(group) from group

    async def _read(self, client: aiomqtt.Client) -> None:
        """Until the session ends: messages come in through `_on_paho_message`, and aiomqtt's
        iterator raises when the connection is lost."""
        async for _ in received(client):
            pass
        raise aiomqtt.MqttError("message stream ended")

    def _on_paho_message(self, _client: object, _userdata: object, message: MQTTMessage) -> None:
        """(paho's callback, inside its read) One message into the batch, or a reply resolved."""
        self.received += 1
        try:
            topic, data = message.topic, bytes(message.payload)
        except UnicodeDecodeError:  # a broker passes only UTF-8 topics; nothing may raise into paho
            self.bad_topics += 1
            return
        if topic == self.reply_topic:
            self._resolve(data, getattr(message.properties, "CorrelationData", None))
            return
        self._buffer.append((topic, data))
        self._wake.set()

    async def _flush(self, sink: Sink) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._buffer = self._buffer, []
            if batch:
                sink(Received(tuple(batch)))
            await asyncio.sleep(self._flush_interval_s)  # rate limit: one batch per interval

    # ----- requests --------------------------------------------------------------------------

    async def request(self, topic: str, payload: Mapping[str, object]) -> Ack:
        """Publish `payload` to `topic` (QoS 1) and wait for the matching Ack."""
        client = self._client
        if client is None:
            raise RequestError("disconnected", self.url.safe())
        corr = uuid.uuid4().hex
        body = {**payload, "response_topic": self.reply_topic, "correlation_id": corr}
        properties = None
        if self._protocol == "5":
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.ResponseTopic = self.reply_topic
            properties.CorrelationData = corr.encode()
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._pending[corr] = future
        try:
            async with asyncio.timeout(self._request_timeout_s):
                try:
                    await client.publish(topic, orjson.dumps(body), qos=1, properties=properties)
                except aiomqtt.MqttError as exc:
                    raise RequestError("publish_failed", str(exc)) from exc
                return await future
        except TimeoutError:
            raise RequestError("timeout", f"no answer within {self._request_timeout_s:g} s") from None
        finally:
            self._pending.pop(corr, None)

    def _resolve(self, data: bytes, correlation: bytes | None) -> None:
        try:
            obj = orjson.loads(data)
            if not isinstance(obj, dict):
                raise TypeError("not an object")
            obj.pop("response_topic", None)
            ack = Ack.model_validate(obj)
        except (orjson.JSONDecodeError, TypeError, ValidationError):
            self.bad_replies += 1
            return
        key = correlation.decode("utf-8", "replace") if correlation else ack.correlation_id
        future = self._pending.get(key or "")
        if future is not None and not future.done():
            future.set_result(ack)

    def _fail_pending(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RequestError("disconnected", "connection lost before the answer"))


def _rc(exc: MqttCodeError) -> int:
    value = getattr(exc.rc, "value", exc.rc)
    return value if isinstance(value, int) else -1


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first
