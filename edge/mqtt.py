"""The daemon's one connection to the northbound broker: reconnects, restores, never loses an alarm.

`MqttLink` is the one MQTT session (`edge.mqtt_session.MqttSession`: a fresh client per connection,
subscriptions restored, `edge.backoff.Backoff` between attempts, the per-message boundary) shaped for the
northbound broker: it probes for MQTT 5, publishes the retained online message once subscribed, then runs
four tasks until the connection drops: a reader that hands messages to `on_message`, a drainer that sends
the persistent outbox oldest-first at QoS 1, a sender for QoS 0 telemetry and one for devices' retained
states (`edge.mqtt_queues`). Its tuning is
`LinkOptions`. `BrokerAddress` and `TlsFiles` live in `edge.mqtt_session` and are re-exported here.

Delivery guarantees:
- `publish_reliable`: at least once, in order. The message is committed to the outbox before the call
  returns; a row is deleted only after the broker's PUBACK (a connection lost mid-drain may resend up to
  two windows: duplicates, possibly after later messages). The v5 probe and the amqtt findings are in
  `edge.broker`. aiomqtt 2.5 `Client.publish(qos=1)` returns when paho's `on_publish` fires, which for QoS
  1 is on PUBACK (`_handle_pubackcomp`); a message paho could not send raises `MqttCodeError`. aiomqtt
  ignores the PUBACK reason code, so an MQTT 5 broker's negative PUBACK (e.g. "not authorized") counts as
  delivered and is not retried forever.
- `publish_reply`: an answer to a request, at least once while the daemon runs, ahead of
  everything else: kept in memory (not on disk) until PUBACKed (`edge.mqtt_queues.Replies`).
- `publish_state`: a device's retained state, at least once unless replaced: the newest payload per
  topic waits in memory until PUBACKed, and a newer one replaces it unsent. Not on disk: after a restart
  the daemon publishes every device's state again.
- `publish_fast`: at most once. Dropped (and counted) while disconnected or when the small in-memory queue
  is full; never blocks. A retained one is held instead, the newest per topic, and sent once there is
  a link and room: the broker's retained value is then never older than the daemon's last one.

Protocol: MQTT 5 is preferred. A broker that answers CONNACK "unsupported protocol version" (amqtt, see
`edge.broker`) makes the link fall back to 3.1.1 for its lifetime; `LinkOptions(protocol="3.1.1")` starts
there. Under 3.1.1 there are no properties, so request/response metadata travels in the JSON payload:
outgoing JSON objects get `response_topic` and `correlation_id` (UTF-8 text of the correlation data)
added, and incoming JSON objects with those keys fill `IncomingMessage.response_topic` /
`correlation_data`. That JSON fallback is also read under MQTT 5 when a request carries no properties (a
3.1.1 client behind a v5 broker).

Sessions are clean: commands sent while the daemon is offline are not queued by the broker to be applied
late; their senders time out and may retry.

Incoming: every message the broker delivers reaches the handler, oversized ones included (counted as
`refused_oversize`): the API owes the sender a `payload_too_large` answer, and paho has read the message
into memory anyway. (Dropping them here is why 1 MB and 10 MB requests once went unanswered; neither
Mosquitto's default `message_size_limit` nor paho limits what is delivered.) MQTT 5 subscriptions are
retain-as-published, so the handler sees the retain flag of a retained request even on its first, live
delivery.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiomqtt
import structlog
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.backoff import Backoff
from edge.errors import ConfigError, PayloadError
from edge.lifecycle import ServiceState
from edge.mqtt_meta import metadata_from_json, metadata_into_json
from edge.mqtt_queues import FastQueue, LatestStates, Replies
from edge.mqtt_session import (
    BrokerAddress,
    MqttSession,
    ReadOnlyEvent,
    TlsFiles,
    is_link_error,
    payload_bytes,
    publish_properties,
    rc_int,
)
from edge.outbox import DrainCursor, Outbox, StoredMessage

__all__ = [
    "BrokerAddress",
    "IncomingMessage",
    "LinkOptions",
    "MessageHandler",
    "MqttLink",
    "ReadOnlyEvent",
    "TlsFiles",
]

log = structlog.get_logger(__name__)

ProtocolName = Literal["5", "3.1.1"]

# CONNACK "unsupported protocol version": 132 as an MQTT 5 reason code, 1 in 3.1.1.
_UNSUPPORTED_PROTOCOL = (132, 1)
_FAST_BATCH = 256
_REPLIES_MAX = 10_000  # answers waiting for the link; a longer outage outlives every requester


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A message from a subscription, with request/response metadata if it has any."""

    topic: str
    payload: bytes
    response_topic: str | None
    correlation_data: bytes | None
    user_properties: tuple[tuple[str, str], ...]
    retain: bool


MessageHandler = Callable[[IncomingMessage], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class LinkOptions:
    """How the link talks to the broker. Times are seconds; `max_payload_bytes` is what a
    received message may have before it counts as `refused_oversize`; `drain_window` is how
    many outbox rows are in flight at once; `fast_queue_max` bounds the QoS 0 queue."""

    protocol: ProtocolName = "5"
    keepalive_s: int = 30
    connect_timeout_s: float = 5.0
    backoff_max_s: float = 30.0
    max_payload_bytes: int = 65_536
    publish_timeout_s: float = 10.0
    drain_window: int = 100
    fast_queue_max: int = 10_000
    close_timeout_s: float = 5.0


class _SessionEnd(Exception):  # noqa: N818 - a signal, not an error
    """Raised inside a session's task group to end it cleanly on close."""


class MqttLink(MqttSession):
    """Resilient MQTT connection with a persistent outbox; see the module docstring."""

    def __init__(
        self,
        url: str,
        client_id: str,
        outbox: Outbox,
        *,
        will: tuple[str, bytes, bool] | None = None,
        online_message: tuple[str, bytes] | None = None,
        subscriptions: Sequence[str] = (),
        on_message: MessageHandler | None = None,
        tls: TlsFiles | None = None,
        options: LinkOptions | None = None,
    ) -> None:
        o = options or LinkOptions()
        if o.protocol not in ("5", "3.1.1"):
            raise ConfigError(f"unknown protocol {o.protocol!r}", key="mqtt.protocol")
        super().__init__(
            BrokerAddress.parse(url, tls=tls),
            name="mqtt",
            subscriptions=[(topic, 1) for topic in subscriptions],
            connect_timeout_s=o.connect_timeout_s,
            # a first retry within 1.5 s, as before the one backoff
            backoff=Backoff(min(1.5, o.backoff_max_s), o.backoff_max_s),
            pending_calls=3 * o.drain_window + _FAST_BATCH + 64,
        )
        self._client_id = client_id
        self._outbox = outbox
        self._will = will
        self._online = online_message
        self._on_message = on_message
        self._protocol: ProtocolName = o.protocol
        self._publish_timeout_s = o.publish_timeout_s
        self._close_timeout_s = o.close_timeout_s
        self._keepalive_s = o.keepalive_s
        self._max_payload_bytes = o.max_payload_bytes
        self._drain_window = o.drain_window

        self._drained = asyncio.Event()
        self._outbox_wake = asyncio.Event()
        self._appends = 0  # bumped after each committed append; see _drain
        self._fast = FastQueue(o.fast_queue_max, _FAST_BATCH)
        self._states = LatestStates(o.drain_window)
        self._replies = Replies(_REPLIES_MAX)

        self._v5_confirmed = False
        self._published = 0
        self._refused_oversize = 0
        self._refused_out = 0
        self._poisoned = 0

    # -- lifecycle -------------------------------------------------------------------

    async def _start(self) -> None:
        if self._outbox.backlog == 0:
            self._drained.set()
        await super()._start()

    async def _close_session(self) -> None:
        """Send what the outbox holds (briefly), publish the offline message, disconnect."""
        supervisor = self._supervisor
        if supervisor is None:
            return
        try:
            async with asyncio.timeout(self._close_timeout_s + self._connect_timeout_s):
                await asyncio.wait({supervisor})
        except TimeoutError:
            log.warning("mqtt_close_timeout", client_id=self._client_id)

    # -- public API --------------------------------------------------------------------

    @property
    def protocol(self) -> ProtocolName:
        """The protocol the link uses now (after any fallback)."""
        return self._protocol

    async def wait_drained(self, timeout: float) -> None:  # noqa: ASYNC109 - a bounded wait is the API
        """Wait until every committed reliable message, reply and queued state has its PUBACK."""
        async with asyncio.timeout(timeout):
            await self._drained.wait()
            await self._replies.empty.wait()
            await self._states.empty.wait()

    @property
    def stats(self) -> dict[str, Any]:
        """Counters for the health endpoint and tests."""
        return {
            "connected": self._connected.is_set(),
            "protocol": self._protocol,
            "reconnects": max(0, self._sessions - 1),
            "outbox_backlog": self._outbox.backlog,
            "outbox_dropped": self._outbox.dropped,
            "published": self._published,
            "published_fast": self._fast.published,
            "dropped": self._fast.dropped,
            "held_fast": self._fast.held,
            "received": self._received,
            "refused_oversize": self._refused_oversize,
            "refused_out": self._refused_out,
            "outbox_poisoned": self._poisoned,
            "replies_published": self._replies.published,
            "replies_pending": len(self._replies),
            "replies_dropped": self._replies.dropped,
            "states_published": self._states.published,
            "states_pending": len(self._states),
            "states_coalesced": self._states.coalesced,
            "states_refused": self._states.refused,
            "handler_errors": self._handler_errors,
        }

    async def publish_reliable(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        content_type: str | None = "application/json",
    ) -> None:
        """Commit a QoS 1 message to the outbox; the drainer sends it when connected.

        Raises PayloadError("invalid_topic" | "oversized") for a message no broker would
        take: stored, it would block the outbox behind it.
        """
        self._check_out([(topic, payload, retain)])
        await self._outbox.append(topic, payload, qos=1, retain=retain, response_topic=response_topic,
                                  correlation_data=correlation_data, content_type=content_type)  # fmt: skip
        self._appended(1)

    async def publish_reliable_many(self, messages: Sequence[tuple[str, bytes, bool]]) -> None:
        """`publish_reliable` of (topic, payload, retain) JSON messages, committed together."""
        self._check_out(messages)
        await self._outbox.append_many(messages, qos=1, content_type="application/json")
        self._appended(len(messages))

    def _check_out(self, messages: Sequence[tuple[str, bytes, bool]]) -> None:
        if self.state is not ServiceState.OPENED:
            raise RuntimeError(f"MqttLink is {self.state.value}")
        for topic, payload, _ in messages:
            if (problem := _publish_problem(topic, payload)) is not None:
                self._refused_out += 1
                raise PayloadError(problem, f"{len(payload)} bytes to {topic!r}")

    def _appended(self, n: int) -> None:
        self._appends += n
        self._drained.clear()
        self._outbox_wake.set()

    def publish_reply(self, topic: str, payload: bytes, *, correlation_data: bytes | None = None) -> None:
        """Queue an answer to a request (QoS 1, JSON), sent before anything else is.

        Raises PayloadError("invalid_topic" | "oversized") for a message no broker would take.
        """
        self._check_out([(topic, payload, False)])
        self._replies.put(topic, payload, correlation_data)

    def publish_state(self, topic: str, payload: bytes) -> None:
        """Queue a device's retained state (QoS 1, JSON): kept in memory until PUBACKed, and
        replaced by a newer one for the topic (`edge.mqtt_latest`), never stored on disk."""
        self._check_out([(topic, payload, True)])
        self._states.put(topic, payload)

    def publish_fast(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Queue a QoS 0 message; dropped (and counted) while disconnected or when full."""
        if _publish_problem(topic, payload) is not None:
            self._fast.dropped += 1
            return
        self._fast.put(topic, payload, retain, connected=self._connected.is_set())

    async def fast_room(self) -> None:
        """Wait while the QoS 0 queue is half full, so a bulk sender (a city's lamp counters) goes
        at the link's pace; at once while disconnected, at most the publish timeout otherwise."""
        await self._fast.room(self._publish_timeout_s, connected=self._connected.is_set())

    # -- the session, shaped for the link ----------------------------------------------

    def _connect_refused(self, exc: MqttConnectError) -> bool:
        """A broker without MQTT 5 (amqtt): fall back to 3.1.1 for the link's lifetime."""
        if self._protocol == "5" and _rc_value(exc) in _UNSUPPORTED_PROTOCOL:
            self._protocol = "3.1.1"
            log.warning("mqtt_protocol_fallback", url=self.address.safe_url, to="3.1.1")
            return True
        return False

    def _set_connected(self, *, up: bool, reason: str = "") -> None:
        super()._set_connected(up=up, reason=reason)
        if not up:
            self._fast.disconnected()

    def _new_client(self) -> aiomqtt.Client:
        """A fresh client per session: aiomqtt clients do not survive a lost connection."""
        will = None
        if self._will is not None:
            topic, payload, retain = self._will
            will = aiomqtt.Will(topic, payload, qos=1, retain=retain)
        v5 = self._protocol == "5"
        client = self.address.aiomqtt_client(
            timeout_s=self._connect_timeout_s,
            tls_context=self._tls_context,
            identifier=self._client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=will,
            keepalive=self._keepalive_s,
            max_inflight_messages=2 * self._drain_window,
            # A lone alarm should leave now, not wait in Nagle's buffer behind an
            # unacknowledged segment.
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )
        # aiomqtt warns on every call while more than 10 are pending; a drain window
        # and a telemetry burst are expected to exceed that.
        client.pending_calls_threshold = self._pending_calls
        return client

    async def _before_connect(self) -> None:
        """Ask the broker whether it speaks MQTT 5, with a bare CONNECT (no will, no id).

        amqtt answers a bare v5 CONNECT with "unsupported protocol version", but a v5
        CONNECT with a client id and a will derails its parser and it never answers
        (measured), so the real CONNECT cannot serve as the probe. Raises MqttConnectError
        when v5 is refused; returns when it is accepted.
        """
        if self._protocol != "5" or self._v5_confirmed:
            return
        probe = self.address.aiomqtt_client(
            timeout_s=self._connect_timeout_s,
            tls_context=self._tls_context,
            protocol=aiomqtt.ProtocolVersion.V5,
        )
        async with asyncio.timeout(self._connect_timeout_s * 2 + 1), probe:
            pass
        self._v5_confirmed = True

    def _sub_option(self, qos: int) -> Any:
        # MQTT 5: retain-as-published, so the handler sees the retain flag also on a retained
        # message delivered live (a retained request is refused, at publish and at reconnect).
        # Under 3.1.1 only the replay at subscribe time carries the flag.
        return SubscribeOptions(qos=qos, retainAsPublished=True) if self._protocol == "5" else qos

    async def _after_subscribe(self, client: aiomqtt.Client) -> None:
        """The online message, once subscribed: the world sees us only when ready."""
        if self._online is not None:
            topic, payload = self._online
            await client.publish(topic, payload, qos=1, retain=True, timeout=self._connect_timeout_s)

    def _log_connected(self) -> None:
        log.info(
            "mqtt_connected",
            url=self.address.safe_url,
            protocol=self._protocol,
            session=self._sessions,
            outbox_backlog=self._outbox.backlog,
        )

    async def _run(self, client: aiomqtt.Client) -> None:
        """Reader, drainer and fast sender until the connection drops or the link closes."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._read(client), name="mqtt.read")
                v5 = self._protocol == "5"
                tg.create_task(
                    self._replies.send(client, self._publish_timeout_s, v5=v5), name="mqtt.replies"
                )
                tg.create_task(self._drain(client), name="mqtt.drain")
                tg.create_task(self._fast.send(client, self._publish_timeout_s), name="mqtt.fast")
                props = publish_properties(None, None, "application/json") if self._protocol == "5" else None
                tg.create_task(self._states.send(client, self._publish_timeout_s, props), name="mqtt.states")
                tg.create_task(self._until_closing(), name="mqtt.close_watch")
        except BaseExceptionGroup as group:
            _raise_unless_session_end(group)
        # Closing: a clean DISCONNECT suppresses the will, so say offline ourselves.
        self._set_connected(up=False)
        if self._will is not None:
            topic, payload, retain = self._will
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(topic, payload, qos=1, retain=retain, timeout=self._connect_timeout_s)

    async def _until_closing(self) -> None:
        """On close, give the outbox a short while to empty, then end the session."""
        await self._closing.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._close_timeout_s):
                await self._drained.wait()
                await self._replies.empty.wait()
                await self._states.empty.wait()
        raise _SessionEnd

    # -- the three session tasks ---------------------------------------------------------

    async def _handle(self, message: aiomqtt.Message) -> None:
        """Hand each message to the handler in arrival order (`_read` is the boundary)."""
        payload = payload_bytes(message)
        if len(payload) > self._max_payload_bytes:
            # Handed on all the same: the broker has delivered it and paho holds it already, and
            # the handler owes its sender an answer (`payload_too_large`), not silence.
            self._refused_oversize += 1
        if self._on_message is None:
            return
        await self._on_message(
            _incoming(
                message.topic.value, payload, message.properties, message.retain, self._max_payload_bytes
            )
        )

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Send the outbox, replies first, then the rest, each oldest-first (`DrainCursor`);
        delete rows once PUBACKed.

        Two windows overlap: the next window goes out while the previous one waits for
        its PUBACKs. Waiting for each window before sending the next stalls on
        Mosquitto's default Nagle (`set_tcp_nodelay false`): its PUBACKs trickle out one
        per TCP round trip (measured: 20 QoS 1 publishes took 38 ms, 1.2 ms with
        nodelay on the broker). Continuous traffic lets the ACKs ride on our data.
        """
        cursor = DrainCursor()
        windows: collections.deque[asyncio.Task[None]] = collections.deque()
        try:
            while True:
                self._outbox_wake.clear()
                appends_before = self._appends
                rows = await cursor.next(self._outbox, self._drain_window)
                if rows:
                    # gather starts the publishes in row order, so paho sends them in
                    # order, after those of the previous window.
                    windows.append(
                        asyncio.create_task(self._send_window(client, rows), name="mqtt.drain.window")
                    )
                    if len(windows) > 1:
                        await windows[0]
                        windows.popleft()
                    continue
                if windows:
                    await windows[0]
                    windows.popleft()
                    continue
                # An append committed while we peeked bumps the counter: look again.
                if appends_before == self._appends:
                    self._drained.set()
                    await self._outbox_wake.wait()
        finally:
            for task in windows:
                task.cancel()
            # Their outcome no longer matters: unacked rows stay in the outbox.
            await asyncio.gather(*windows, return_exceptions=True)

    async def _send_window(self, client: aiomqtt.Client, rows: Sequence[StoredMessage]) -> None:
        """Publish rows concurrently, ack those PUBACKed, raise the first link error."""
        results = await asyncio.gather(
            *(self._publish_row(client, row) for row in rows), return_exceptions=True
        )
        done: list[int] = []
        link_error: BaseException | None = None
        for row, res in zip(rows, results, strict=True):
            assert row.id is not None
            if link_error is not None:
                # Keep every row after a lost one, PUBACKed or not: they are sent again after
                # it, so a retained topic never ends on an older state (at-least-once, in order).
                continue
            if res is None:
                done.append(row.id)
                self._published += 1
            elif is_link_error(res):
                link_error = res
            else:
                # paho refused this message itself (e.g. a row written by an older
                # version with a bad topic): retrying cannot help, drop it.
                done.append(row.id)
                self._poisoned += 1
                log.error("mqtt_outbox_message_dropped", topic=row.topic, error=repr(res))
        if done:
            await self._outbox.ack(done)
        if link_error is not None:
            raise link_error

    async def _publish_row(self, client: aiomqtt.Client, row: StoredMessage) -> None:
        payload = row.payload
        properties = None
        if self._protocol == "5":
            properties = publish_properties(row.response_topic, row.correlation_data, row.content_type)
        elif row.response_topic is not None or row.correlation_data is not None:
            payload = metadata_into_json(payload, row.response_topic, row.correlation_data)
        await client.publish(
            row.topic,
            payload,
            qos=row.qos,
            retain=row.retain,
            properties=properties,
            timeout=self._publish_timeout_s,
        )


# paho's limit on a PUBLISH payload (the MQTT remaining-length maximum).
_MAX_PUBLISH_BYTES = 268_435_455


def _publish_problem(topic: str, payload: bytes) -> str | None:
    """Why no broker would accept this publication, or None."""
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        return "invalid_topic"
    if len(topic.encode()) > 65_535:
        return "invalid_topic"
    if len(payload) > _MAX_PUBLISH_BYTES:
        return "oversized"
    return None


def _rc_value(exc: aiomqtt.MqttCodeError) -> int:
    return rc_int(exc.rc)


def _raise_unless_session_end(group: BaseExceptionGroup[BaseException]) -> None:
    """Re-raise the first real error of a session's task group (flattened)."""
    rest = group.split(_SessionEnd)[1]
    if rest is None:
        return
    first: BaseException = rest
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    if is_link_error(first):
        raise first
    raise rest


def _incoming(
    topic: str, payload: bytes, props: Properties | None, retain: bool, max_bytes: int
) -> IncomingMessage:
    """A received message with its request/response metadata (properties, else the 3.1.1 JSON keys)."""
    response_topic: str | None = getattr(props, "ResponseTopic", None)
    correlation: bytes | None = getattr(props, "CorrelationData", None)
    user_props: list[tuple[str, str]] = getattr(props, "UserProperty", None) or []
    if response_topic is None and correlation is None and payload[:1] == b"{" and len(payload) <= max_bytes:
        response_topic, correlation = metadata_from_json(payload, max_bytes)
    return IncomingMessage(
        topic=topic,
        payload=payload,
        response_topic=response_topic,
        correlation_data=correlation,
        user_properties=tuple((str(k), str(v)) for k, v in user_props),
        retain=retain,
    )
