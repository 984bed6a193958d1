"""The link's in-memory send queues: QoS 0 messages, devices' retained states, answers to requests.

`FastQueue`: at most once, dropped (and counted) while disconnected or when full; a retained
message is held instead (the newest per topic) until the link has room for it.

`LatestStates`: retained device states at QoS 1, the newest payload per topic, kept in memory
until PUBACKed. A device's retained state is replaced by its next one, and the daemon publishes every device's
state again when it starts. So a state needs neither the disk outbox nor a row per change: only
the newest payload per topic, sent at QoS 1 and kept until the broker acknowledges it or a newer
one replaces it. At city size (54,000 lamps after a plan step, each changed twice: the write's
read-back, then the next poll) the outbox's insert, read and delete per message cost about a
fifth of a core; here a change costs a dict entry, and two changes before a send cost one message.

`Replies`: answers to requests (acks) at QoS 1, in order, kept in memory until PUBACKed and sent
ahead of everything else. An answer matters to a requester still waiting for it, for seconds. In
the disk outbox each one waited for a commit with `synchronous=FULL`, behind the outbox's other
commits: at city size 50-130 ms of an operator command's round trip of 190-270 ms. A command's
final outcome still goes through the outbox (`commands/results`).

Events that must not be lost (alarms, command results, plans) still go through the outbox.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
from collections.abc import Sequence
from typing import Any, TypeVar

import aiomqtt
import structlog

from edge.mqtt_meta import metadata_into_json
from edge.mqtt_session import is_link_error, publish_properties

log = structlog.get_logger(__name__)

__all__ = ["FastQueue", "LatestStates", "Replies", "publish_qos1_many"]


class _BatchAck:
    """Counts a batch's PUBACKs; aiomqtt's on_publish calls `set()` on what it holds per message id."""

    __slots__ = ("done", "left")

    def __init__(self, n: int) -> None:
        self.left = n
        self.done = asyncio.Event()
        if n == 0:
            self.done.set()


class _OneAck:
    __slots__ = ("acked", "batch")

    def __init__(self, batch: _BatchAck) -> None:
        self.batch = batch
        self.acked = False

    def set(self) -> None:
        if not self.acked:
            self.acked = True
            self.batch.left -= 1
            if self.batch.left <= 0:
                self.batch.done.set()


async def publish_qos1_many(
    client: aiomqtt.Client,
    items: Sequence[tuple[str, bytes]],
    *,
    retain: bool,
    properties: Any,
    timeout_s: float,
) -> list[BaseException | None]:
    """Publish `items` at QoS 1 and wait for their PUBACKs together: per item None (acknowledged)
    or the error (a link error for what was not acknowledged within `timeout_s`).

    aiomqtt's `publish` waits for each message with its own event, `wait_for` (a task) and
    timeout: 240 µs of CPU per message measured here, against about 10 µs for paho's own
    publish. A city's plan step publishes 54,000 lamp states, so this calls paho directly and
    registers one counter per batch in aiomqtt's table of pending publishes, which its
    on_publish callback completes (aiomqtt 2.5, pinned; without that table it falls back to
    aiomqtt's `publish` per message).
    """
    paho = getattr(client, "_client", None)
    pending = getattr(client, "_pending_publishes", None)
    if paho is None or not isinstance(pending, dict):
        results = await asyncio.gather(
            *(
                client.publish(t, p, qos=1, retain=retain, properties=properties, timeout=timeout_s)
                for t, p in items
            ),
            return_exceptions=True,
        )
        return list(results)
    batch = _BatchAck(0)
    out: list[BaseException | None] = []
    waiting: list[tuple[int, int, _OneAck]] = []  # (index in out, message id, its ack)
    for topic, payload in items:
        try:
            info = paho.publish(topic, payload, 1, retain, properties)
        except (ValueError, TypeError) as exc:  # a message paho cannot send at all
            out.append(exc)
            continue
        if info.rc != 0:
            out.append(aiomqtt.MqttCodeError(info.rc, "Could not publish message"))
            continue
        out.append(None)
        if not info.is_published():
            ack = _OneAck(batch)
            pending[info.mid] = ack
            waiting.append((len(out) - 1, info.mid, ack))
            batch.left += 1
    if waiting:
        batch.done.clear()
        try:
            async with asyncio.timeout(timeout_s):
                await batch.done.wait()
        except TimeoutError:
            pass
        finally:
            for i, mid, ack in waiting:
                if not ack.acked:
                    pending.pop(mid, None)  # a late PUBACK finds nothing to complete
                    out[i] = aiomqtt.MqttError("Operation timed out")
    return out


M = TypeVar("M", bound=tuple[Any, ...])  # a queued message: its topic first


def outcomes(
    batch: Sequence[M], results: Sequence[BaseException | None], dropped_event: str
) -> tuple[int, int, list[M], BaseException | None]:
    """(acknowledged, refused, lost, first link error) of a window sent at QoS 1. Lost: not
    acknowledged because the link failed (to send again, in order); refused: paho cannot send
    it at all, so it is logged under `dropped_event` with its topic and not tried again."""
    acked = refused = 0
    lost: list[M] = []
    link_error: BaseException | None = None
    for message, res in zip(batch, results, strict=True):
        if res is None:
            acked += 1
        elif is_link_error(res):
            link_error = link_error or res
            lost.append(message)
        else:
            refused += 1
            log.error(dropped_event, topic=message[0], error=repr(res))
    return acked, refused, lost, link_error


class LatestStates:
    """The newest retained state per topic, waiting for the link; `send` runs per session."""

    def __init__(self, window: int) -> None:
        self._pending: dict[str, bytes] = {}
        self._window = window
        self.wake = asyncio.Event()
        self.empty = asyncio.Event()
        self.empty.set()
        self.published = 0
        self.coalesced = 0  # states replaced by a newer one before they were sent
        self.refused = 0  # states paho refused (cannot be sent at all), dropped and logged

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, topic: str, payload: bytes) -> None:
        """Queue `payload` as the newest state of `topic`, replacing one not sent yet."""
        if topic in self._pending:
            self.coalesced += 1
        self._pending[topic] = payload
        self.empty.clear()
        self.wake.set()

    def _take(self) -> list[tuple[str, bytes]]:
        keys = list(itertools.islice(self._pending, self._window))
        return [(k, self._pending.pop(k)) for k in keys]

    def _give_back(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Unacknowledged states wait for the next session, unless a newer one came meanwhile."""
        for topic, payload in items:
            self._pending.setdefault(topic, payload)

    async def send(self, client: aiomqtt.Client, timeout_s: float, properties: Any) -> None:
        """Publish what is queued, a window at a time, until the session ends (a link error is
        raised after the states it did not get acknowledged are queued again)."""
        if self._pending:
            self.wake.set()
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self._pending:
                batch = self._take()
                try:
                    results = await publish_qos1_many(
                        client, batch, retain=True, properties=properties, timeout_s=timeout_s
                    )
                except BaseException:  # the session ended under us: nothing of it is known sent
                    self._give_back(batch)
                    raise
                acked, refused, lost, link_error = outcomes(batch, results, "mqtt_state_dropped")
                self.published += acked
                self.refused += refused
                if link_error is not None:
                    self._give_back(lost)
                    raise link_error
            self.empty.set()


class Replies:
    """Answers to requests waiting for the link, oldest first; `send` runs per session.

    Sent again in the next session if a connection drops before their PUBACK; the oldest are
    dropped (and counted) beyond `maxlen`, as a long outage outlives every requester's wait.
    Not on disk: a daemon that stops loses those not yet sent, and their requesters time out.
    """

    def __init__(self, maxlen: int, window: int = 64) -> None:
        self._queue: collections.deque[tuple[str, bytes, bytes | None]] = collections.deque()
        self._maxlen = maxlen
        self._window = window
        self.wake = asyncio.Event()
        self.empty = asyncio.Event()
        self.empty.set()
        self.published = 0
        self.dropped = 0
        self.refused = 0

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, topic: str, payload: bytes, correlation_data: bytes | None) -> None:
        if len(self._queue) >= self._maxlen:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append((topic, payload, correlation_data))
        self.empty.clear()
        self.wake.set()

    async def send(self, client: aiomqtt.Client, timeout_s: float, *, v5: bool) -> None:
        """Publish what is queued, a window at a time, until the session ends (a link error is
        raised after the answers it did not get acknowledged are queued again, in order)."""

        async def one(topic: str, payload: bytes, corr: bytes | None) -> None:
            props = publish_properties(None, corr, "application/json") if v5 else None
            body = payload if v5 or corr is None else metadata_into_json(payload, None, corr)
            await client.publish(topic, body, qos=1, properties=props, timeout=timeout_s)

        if self._queue:
            self.wake.set()
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(self._window, len(self._queue)))]
                try:
                    results = await asyncio.gather(*(one(*m) for m in batch), return_exceptions=True)
                except BaseException:  # the session ended under us: nothing of it is known sent
                    self._queue.extendleft(reversed(batch))
                    raise
                acked, refused, lost, link_error = outcomes(batch, results, "mqtt_reply_dropped")
                self.published += acked
                self.refused += refused
                if link_error is not None:
                    self._queue.extendleft(reversed(lost))
                    raise link_error
            self.empty.set()


class FastQueue:
    """QoS 0 messages, sent in concurrent batches (one socket write each); `send` runs per session."""

    def __init__(self, maxlen: int, batch: int) -> None:
        self._queue: collections.deque[tuple[str, bytes, bool]] = collections.deque()
        self._max = maxlen
        self._batch = batch
        self._wake = asyncio.Event()
        self._room = asyncio.Event()  # set while the queue is under half full
        self._room.set()
        self.published = 0
        self.dropped = 0
        self._held: dict[str, bytes] = {}  # retained messages that could not go yet, newest per topic

    @property
    def held(self) -> int:
        """Retained messages waiting for the link or for room, one per topic."""
        return len(self._held)

    def put(self, topic: str, payload: bytes, retain: bool, *, connected: bool) -> None:
        """Queue a message; dropped (and counted) while disconnected or when full, unless it is
        retained: then it is held, the newest per topic, and sent when there is room again."""
        if not connected or len(self._queue) >= self._max:
            self._hold(topic, payload, retain)
            if connected:
                self._wake.set()  # the sender moves what is held once it has room
            return
        if retain:
            self._held.pop(topic, None)  # a newer value is on its way
        self._queue.append((topic, payload, retain))
        self._wake.set()

    def _hold(self, topic: str, payload: bytes, retain: bool, *, newest: bool = True) -> None:
        """Keep a retained message that cannot go now (the broker would keep an older value for
        its topic until the next change: a car park's free spaces, the warnings in force), at
        most `maxlen` topics; drop (and count) anything else. Not `newest` (a send that failed):
        a value held for the topic meanwhile is newer and stays."""
        if retain and (topic in self._held or len(self._held) < self._max):
            if newest:
                self._held[topic] = payload
            else:
                self._held.setdefault(topic, payload)
        else:
            self.dropped += 1

    def _unhold(self) -> None:
        """Queue what is held while there is room (oldest topics first)."""
        while self._held and len(self._queue) < self._max // 2:
            topic = next(iter(self._held))
            self._queue.append((topic, self._held.pop(topic), True))

    async def room(self, timeout_s: float, *, connected: bool) -> None:
        """Wait while the queue is half full (at most `timeout_s`; at once while disconnected)."""
        if not connected or len(self._queue) < self._max // 2:
            return
        self._room.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._room.wait()

    def disconnected(self) -> None:
        """The link went down: what is queued is dropped (and counted), retained messages held
        for the next session, and waiters go on."""
        for topic, payload, retain in self._queue:
            if retain:
                self._held.setdefault(topic, payload)  # one held already is newer
            else:
                self.dropped += 1
        self._queue.clear()
        self._room.set()

    async def send(self, client: aiomqtt.Client, timeout_s: float) -> None:
        """Send what is queued until the session ends (a link error is raised)."""
        if self._held:
            self._wake.set()
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._unhold()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
                results = await asyncio.gather(
                    *(client.publish(t, p, qos=0, retain=r, timeout=timeout_s) for t, p, r in batch),
                    return_exceptions=True,
                )
                if len(self._queue) < self._max // 2:
                    self._room.set()
                failed = [
                    (m, res) for m, res in zip(batch, results, strict=True) if isinstance(res, BaseException)
                ]
                self.published += len(batch) - len(failed)
                queued = {t for t, _, r in self._queue if r} if failed else set()
                for (topic, payload, retain), res in failed:
                    if not (retain and topic in queued):  # else a newer value is queued: superseded
                        self._hold(topic, payload, retain and is_link_error(res), newest=False)
                for _, res in failed:
                    if is_link_error(res):
                        raise res
                self._unhold()
