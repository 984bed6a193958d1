"""Alarm acknowledgement over the MQTT API on a real daemon, broker, simulator and database.

`cmd/alarms/ack` with a comment: acked, stored, the retained active alarm republished with who
and why, the history retained; refused with a reason for an alarm that is not active.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
from harness import WAIT_S, site, wait_for

from edge.payloads import AlarmHistory, AlarmMessage


async def _retained(s: Any, topic: str, accept: Any) -> bytes:
    """The first message on `topic` (retained or live) whose payload `accept` takes."""
    await s.client.subscribe(topic, qos=1)
    try:
        async with asyncio.timeout(WAIT_S):
            async for msg in s.client.messages:
                if msg.topic.matches(topic) and isinstance(msg.payload, bytes) and accept(msg.payload):
                    return msg.payload
    finally:
        await s.client.unsubscribe(topic)
    raise AssertionError("unreachable")


async def test_ack_is_stored_and_republished_unknown_alarm_refused(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    """An operator acks a lamp failure with a comment; the daemon keeps who and why, and says no to a stray ack."""
    async with site(tmp_path, mqtt_url, database_url) as s:
        refused = await s.request(
            "cmd/alarms/ack", {"action": "ack", "device": "A2", "code": "lamp_failure", "comment": "on it"}
        )
        assert refused["ok"] is False
        assert refused["reason"].startswith("unknown_alarm")
        blank = await s.request(
            "cmd/alarms/ack", {"action": "ack", "device": "A2", "code": "lamp_failure", "comment": "  "}
        )
        assert blank["ok"] is False
        assert "comment" in blank["reason"]

        s.sim.inject("A2", "lamp_failure")
        await wait_for(lambda: s.daemon.alarms.is_active("A2", "lamp_failure"), "lamp_failure raised")
        payload = {
            "action": "ack",
            "device": "A2",
            "code": "lamp_failure",
            "comment": "crew sent",
            "by": "alice",
        }
        answer: dict[str, Any] = {}
        async with asyncio.timeout(WAIT_S):
            while not answer.get("ok"):  # the API may not have seen the raise yet
                answer = await s.request("cmd/alarms/ack", payload)
        assert answer["status"] == "accepted"
        assert "alice" in answer["reason"]

        active_topic = f"{s.base}/alarms/active/A2/lamp_failure"
        active = AlarmMessage.model_validate_json(
            await _retained(s, active_topic, lambda p: bool(p) and orjson.loads(p).get("acked"))
        )
        assert (active.active, active.acked_by, active.ack_comment) == (True, "alice", "crew sent")
        assert active.ack_ts is not None

        history = AlarmHistory.model_validate_json(
            await _retained(s, f"{s.base}/alarms/history", lambda p: b'"acked":true' in p)
        )
        kinds = [(e.device_id, e.code, e.active, e.acked) for e in history.events]
        assert kinds[:2] == [("A2", "lamp_failure", True, True), ("A2", "lamp_failure", True, False)]

        await s.flush_storage()
        await wait_for(
            lambda: any(r.acked_by == "alice" for r in s.daemon.storage.alarms(open_only=True)),
            "the ack stored",
        )
        row = next(r for r in s.daemon.storage.alarms() if r.device_id == "A2" and r.code == "lamp_failure")
        assert (row.acked_by, row.ack_comment, row.cleared_at) == ("alice", "crew sent", None)

        s.sim.clear("A2", "lamp_failure")
        await wait_for(lambda: not s.daemon.alarms.is_active("A2", "lamp_failure"), "lamp_failure cleared")
        cleared = AlarmHistory.model_validate_json(
            await _retained(s, f"{s.base}/alarms/history", lambda p: b'"active":false' in p)
        ).events[0]
        assert (cleared.active, cleared.acked, cleared.acked_by) == (False, True, "alice")
