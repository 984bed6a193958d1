"""Nothing is lost when the broker goes away: alarms and state changes wait in the outbox.

The test runs its own broker (mosquitto where present, the embedded one otherwise),
stops it while lamps fail and commands change levels, starts it again and checks that
the retained alarms and states the world sees afterwards include everything that
happened during the outage.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
from harness import WAIT_S, site, wait_for

from edge.events import Priority

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


async def test_alarms_and_state_survive_a_broker_outage(
    tmp_path: Path, private_broker: Any, database_url: str
) -> None:
    """Alarms raised and levels changed while the broker is down reach it once it is back."""
    async with site(tmp_path, private_broker.url, database_url) as s:
        d = s.daemon
        await d.link.wait_drained(WAIT_S)
        await private_broker.stop()
        await wait_for(lambda: not d.link.connected.is_set(), "the link to notice the outage")
        published_before = d.link.stats["published"]

        for lamp in ("A1", "A2", "B3"):
            s.sim.inject(lamp, "lamp_failure")
        d.lighting.submit("A4", 30, Priority.OPERATOR, "operator:test", reason="during outage")
        await wait_for(
            lambda: all(d.alarms.is_active(x, "lamp_failure") for x in ("A1", "A2", "B3")),
            "alarms raised during the outage",
        )
        await wait_for(lambda: s.sim.lamp("A4")["level_cmd"] == 30, "the command applied during the outage")
        await wait_for(lambda: d.link.stats["outbox_backlog"] >= 4, "messages waiting in the outbox")
        backlog = d.link.stats["outbox_backlog"]

        await private_broker.start()
        await d.link.wait_connected(WAIT_S)
        await d.link.wait_drained(WAIT_S)
        assert d.link.stats["published"] - published_before >= backlog

        host, port = private_broker.url.split("://")[1].split(":")
        proto = aiomqtt.ProtocolVersion.V5 if s.v5 else aiomqtt.ProtocolVersion.V311
        active: set[str] = set()
        states: dict[str, dict[str, Any]] = {}
        async with aiomqtt.Client(host, int(port), identifier="witness", protocol=proto, timeout=10) as w:
            await w.subscribe(f"{s.base}/alarms/active/#", qos=1)
            await w.subscribe(f"{s.base}/lights/+/state", qos=1)
            async with asyncio.timeout(WAIT_S):
                async for msg in w.messages:
                    t = str(msg.topic)
                    if "/alarms/active/" in t and msg.payload:
                        a = orjson.loads(msg.payload)
                        active.add(f"{a['device_id']}/{a['code']}")
                    elif t.endswith("/state"):
                        st = orjson.loads(msg.payload)
                        states[st["device_id"]] = st
                    if {"A1/lamp_failure", "A2/lamp_failure", "B3/lamp_failure"} <= active and (
                        states.get("A4", {}).get("level_cmd") == 30
                        and all(
                            "lamp_failure" in states.get(x, {}).get("failures", [])
                            for x in ("A1", "A2", "B3")
                        )
                    ):
                        break
        assert {"A1/lamp_failure", "A2/lamp_failure", "B3/lamp_failure"} <= active
        assert states["A4"]["level_cmd"] == 30
        await s.flush_storage()
        rows = await asyncio.to_thread(d.storage.alarms, True)
        assert {(r.device_id, r.code) for r in rows} >= {("A1", "lamp_failure"), ("B3", "lamp_failure")}
