"""`FastQueue` ordering of held retained messages when a send fails with the link.

A client whose publish fails with a link error stands in for a broker connection that drops in
the middle of a batch: the moment cannot be placed reliably on a real broker.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aiomqtt
import pytest
from waiting import wait_until

from edge.mqtt_queues import FastQueue


class _DroppingClient:
    """Publishes fail with a link error (the session ended mid-batch)."""

    def __init__(self, queue: FastQueue) -> None:
        self.queue = queue

    async def publish(self, topic: str, payload: bytes, **_: object) -> None:
        # while this batch is in flight, newer values come for the same topics
        self.queue.put("site/guidance", b"queued-newer", True, connected=True)
        raise aiomqtt.MqttError("Disconnected during message iteration")


class _Client:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bool]] = []

    async def publish(self, topic: str, payload: bytes, *, retain: bool, **_: object) -> None:
        self.sent.append((topic, payload, retain))


async def test_a_failed_send_never_puts_an_older_retained_value_ahead_of_a_newer_one() -> None:
    q = FastQueue(maxlen=4, batch=10)
    q.put("site/guidance", b"old", True, connected=True)
    q.put("site/warnings", b"old", True, connected=True)
    q.put("site/counter", b"1", False, connected=True)
    dropping = _DroppingClient(q)
    with pytest.raises(aiomqtt.MqttError):
        await q.send(cast(Any, dropping), 1.0)
    q.disconnected()
    assert q.held == 2  # guidance: the newer value queued in flight; warnings: the failed one
    assert q.dropped == 1  # the counter, not retained: at most once
    q.put("site/warnings", b"newest", True, connected=False)
    client = _Client()
    sender = asyncio.create_task(q.send(cast(Any, client), 1.0))
    try:
        await wait_until(lambda: len(client.sent) >= 2, 5.0, "the held messages sent")
    finally:
        sender.cancel()
    assert sorted(client.sent) == [
        ("site/guidance", b"queued-newer", True),
        ("site/warnings", b"newest", True),
    ]
    assert q.held == 0
