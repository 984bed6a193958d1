"""The MQTT API's incoming half: every request checked once, routed to its domain, answered.

Requests are answered on the MQTT 5 response topic with the correlation data (or, for MQTT
3.1.1 clients, `response_topic`/`correlation_id` inside the JSON), else on
`{prefix}/{site}/acks`. A response topic must lie under the reply prefix: the daemon never
writes an answer onto a device's or its own topics for a client. Every payload goes through
`edge.decode` (size, depth, JSON) and every id through its grammar; malformed, unknown,
oversized or retained requests get a nack with the reason and are counted; nothing a client
sends can crash the daemon. What a request means is its route's business (`edge.app.routes`);
field input never comes this way (it is read by drivers, `devices.field`, `devices.protocols.lorawan`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from edge.app.routes.base import Incoming, Request, Route
from edge.clock import Clock
from edge.decode import Refusal, Refusals, check_id, decode_json, encode_json
from edge.errors import PayloadError
from edge.payloads import Ack

__all__ = ["ACK_TOPIC_CHARS", "MAX_REPLY_TOPIC", "Router", "shown_topic"]

MAX_REPLY_TOPIC = 256  # bytes of a response topic; the reply prefix plus a client's own name
ACK_TOPIC_CHARS = 300  # a refusal names a (possibly 64 kB, hostile) request topic by its first 300 characters
MAX_IN_FLIGHT = 64  # requests handled at once; the link's receive loop waits beyond


class Replier(Protocol):
    """The part of the MQTT link an answer goes out through."""

    def publish_reply(self, topic: str, payload: bytes, *, correlation_data: bytes | None = None) -> None: ...


@dataclass(slots=True)
class _Reply:
    """Where the answer to one request goes, filled in as the checks pass."""

    corr: bytes | None
    topic: str | None = None
    corr_json: str | None = None


def shown_topic(topic: str, limit: int = 200) -> str:
    """A topic cut for a log line or an ack reason (a hostile one may be 64 kB long)."""
    return topic if len(topic) <= limit else f"{topic[:limit]}... ({len(topic)} characters)"


def _dump(model: BaseModel) -> bytes:
    return encode_json(model.model_dump(mode="json"))


class Router:
    """Matches request topics to the domains' routes; counts and answers every request."""

    def __init__(
        self,
        *,
        base: str,
        clock: Clock,
        routes: Sequence[Route],
        publisher: Callable[[], Replier | None],
        max_payload_bytes: int = 65_536,
        reply_prefix: str = "",
    ) -> None:
        """`base` is `{prefix}/{site}`; `publisher()` the link once the API runs (None before);
        `reply_prefix`: where answers may go ("" = `{base}/replies/`)."""
        self.base = base
        self.routes = list(routes)
        self._clock = clock
        self._publisher = publisher
        self._max_payload = max_payload_bytes
        self._reply_prefix = reply_prefix or f"{base}/replies/"
        self._refusals = Refusals("api")
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._handlers: set[asyncio.Task[None]] = set()
        self.refused: Counter[str] = Counter()
        self.requests = 0
        self.acks = 0
        self.nacks = 0

    async def on_message(self, msg: Incoming) -> None:
        """Handle one request without blocking the link's receive loop."""
        await self._slots.acquire()
        task = asyncio.create_task(self._handle_guarded(msg), name=f"api.request[{msg.topic}]")
        self._handlers.add(task)
        task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self._handlers.discard(task)
        self._slots.release()

    async def close(self) -> None:
        """Wait briefly for requests in progress, then cancel the rest."""
        if self._handlers:
            _, pending = await asyncio.wait(set(self._handlers), timeout=2.0)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _handle_guarded(self, msg: Incoming) -> None:
        """The per-message boundary: a bug in one request's handling is logged (once per topic)
        and answered `internal_error`; it never ends the receive loop."""
        try:
            await self.handle(msg)
        except Exception as exc:
            self.refused["internal_error"] += 1
            self._refusals.crashed(shown_topic(msg.topic, 80), exc)
            pub = self._publisher()
            if pub is None or not msg.topic.startswith(self.base + "/cmd/"):
                return
            reply = msg.response_topic
            try:
                if reply is not None:
                    self.check_reply(reply)
            except PayloadError:
                reply = None
            ack = Ack(ok=False, status="failed", reason="internal_error: see the daemon's log",
                      request_topic=msg.topic[:ACK_TOPIC_CHARS], ts=self._clock.now())  # fmt: skip
            with contextlib.suppress(PayloadError):
                pub.publish_reply(
                    reply or f"{self.base}/acks", _dump(ack), correlation_data=msg.correlation_data
                )

    async def handle(self, msg: Incoming) -> Ack:
        """Check, route, execute and answer one request; returns the ack sent."""
        self.requests += 1
        reply = _Reply(msg.correlation_data)
        try:
            request = self._request(msg, reply)
            route = next((r for r in self.routes if r.matches(request.parts)), None)
            if route is None:
                raise PayloadError("unknown_topic", shown_topic(msg.topic))
            ack = await route.handler(request)
        except PayloadError as exc:
            self.refused[exc.reason] += 1
            self._refusals.refuse(f"request:{shown_topic(msg.topic, 80)}", Refusal(exc.reason, exc.detail))
            ack = Ack(ok=False, status="refused", reason=str(exc)[:500],
                      request_topic=msg.topic[:ACK_TOPIC_CHARS], ts=self._clock.now())  # fmt: skip
        if reply.corr_json is not None:
            ack = ack.model_copy(update={"correlation_id": reply.corr_json})
        if ack.ok:
            self.acks += 1
        else:
            self.nacks += 1
        pub = self._publisher()
        if pub is not None:
            pub.publish_reply(reply.topic or f"{self.base}/acks", _dump(ack), correlation_data=reply.corr)
        return ack

    def _request(self, msg: Incoming, reply: _Reply) -> Request:
        """The checks every request passes, in order: the response topic (an answer goes only
        under the reply prefix, else to `acks`), the retain flag (a retained request would run
        again at every reconnect), the one decode (size, depth, JSON), then the topic's id."""
        if msg.response_topic is not None:
            self.check_reply(msg.response_topic)
            reply.topic = msg.response_topic
        if msg.retain:
            raise PayloadError(
                "retained_request", "requests must not be retained: it would run again at every reconnect"
            )
        raw: Any = None
        if msg.payload:
            decoded = decode_json(msg.payload, max_bytes=self._max_payload)
            if isinstance(decoded, Refusal):
                raise PayloadError(decoded.reason, decoded.detail)
            raw = decoded
        if isinstance(raw, dict):
            # MQTT 3.1.1 clients carry request/response inside the payload.
            reply_in = raw.pop("response_topic", None)
            if reply.topic is None and reply_in is not None:
                if not isinstance(reply_in, str):
                    raise PayloadError("response_topic_refused", "response_topic must be a string")
                self.check_reply(reply_in)
                reply.topic = reply_in
            corr_in = raw.pop("correlation_id", None)
            if corr_in is not None:
                reply.corr_json = str(corr_in)[:200]
                reply.corr = reply.corr or reply.corr_json.encode()
        parts = tuple(msg.topic.removeprefix(self.base + "/").split("/"))
        named = parts[:2] not in (("cmd", "segments"), ("cmd", "groups"))  # inventory names, looked up
        if named and len(parts) >= 3 and (bad := check_id(parts[-1], "topic id")) is not None:
            raise PayloadError(bad.reason, bad.detail)
        return Request(msg, parts, raw)

    def check_reply(self, topic: str) -> None:
        """Answers go only under the reply prefix: never to a device's or the daemon's own topics."""
        if not topic.startswith(self._reply_prefix) or len(topic) == len(self._reply_prefix):
            raise PayloadError(
                "response_topic_refused",
                f"{shown_topic(topic, 80)} is not under {self._reply_prefix}",
            )
        if "+" in topic or "#" in topic or "\x00" in topic or len(topic.encode()) > MAX_REPLY_TOPIC:
            raise PayloadError(
                "response_topic_refused",
                f"{shown_topic(topic, 80)}: no wildcards, no NUL, at most {MAX_REPLY_TOPIC} bytes",
            )
