"""Nothing is lost when the broker goes away: alarms and state changes wait in the outbox.

The test runs its own broker (mosquitto where present, the embedded one otherwise),
stops it while lamps fail and commands change levels, starts it again and checks that
the retained alarms and states the world sees afterwards include everything that
happened during the outage.

A persistent QoS 1 subscriber (a session that outlives its connection) receives every
alarm raise and clear exactly once across an outage. The outbox is at least once (a
message whose PUBACK was lost in the outage is sent again), so the daemon stamps each
transition with an `event_id`: the subscriber counts transitions by id, and every extra
message must be a byte-identical redelivery of one it already has.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
from harness import WAIT_S, site, wait_for
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.events import Priority


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


SENTINEL = b"end-of-test"


@dataclass
class Witness:
    """A persistent QoS 1 subscriber: subscribes once, then only reconnects (clean_start off).

    Its session, kept by the broker across the outage, must bring whatever was published
    while it was away; it never subscribes again, so a lost session would show as loss.
    """

    host: str
    port: int
    topic: str
    v5: bool
    identifier: str = field(default_factory=lambda: f"witness-{uuid.uuid4().hex[:8]}")
    payloads: list[bytes] = field(default_factory=list)
    connects: int = 0
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        props = None
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        while True:
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    identifier=self.identifier,
                    protocol=aiomqtt.ProtocolVersion.V5 if self.v5 else aiomqtt.ProtocolVersion.V311,
                    clean_session=None if self.v5 else False,
                    clean_start=False,
                    properties=props,
                    timeout=5,
                ) as client:
                    self.connects += 1
                    if not self.subscribed.is_set():
                        await client.subscribe(self.topic, qos=1)
                        self.subscribed.set()
                    async for msg in client.messages:
                        if isinstance(msg.payload, bytes):
                            self.payloads.append(msg.payload)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)  # the broker is down: try again soon

    def alarms(self, code: str) -> list[dict[str, Any]]:
        return [a for p in self.payloads if p != SENTINEL and (a := orjson.loads(p))["code"] == code]


async def test_persistent_subscriber_gets_every_alarm_transition_exactly_once(
    tmp_path: Path, persistent_broker: Any, database_url: str
) -> None:
    """Raises and clears before, during and after an outage reach a persistent QoS 1 subscriber
    once each (by event id); any extra message is a redelivery of the same bytes."""
    code = "lamp_failure"
    async with site(tmp_path, persistent_broker.url, database_url) as s:
        d = s.daemon
        host, port = persistent_broker.url.split("://")[1].split(":")
        witness = Witness(host, int(port), f"{s.base}/alarms/events", s.v5)
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(witness.run(), name="test.witness")
            try:
                async with asyncio.timeout(WAIT_S):
                    await witness.subscribed.wait()
                # before the outage: A1 fails
                s.sim.inject("A1", code)
                await wait_for(lambda: len(witness.alarms(code)) >= 1, "the raise of A1 before the outage")
                await persistent_broker.stop()
                await wait_for(lambda: not d.link.connected.is_set(), "the link to notice the outage")
                # during the outage: A2 and B3 fail, A1 is repaired
                s.sim.inject("A2", code)
                s.sim.inject("B3", code)
                s.sim.clear("A1", code)
                await wait_for(
                    lambda: (
                        d.alarms.is_active("A2", code)
                        and d.alarms.is_active("B3", code)
                        and not d.alarms.is_active("A1", code)
                    ),
                    "raises and a clear during the outage",
                )
                await persistent_broker.start()
                await d.link.wait_connected(WAIT_S)
                # after the outage: B3 is repaired
                s.sim.clear("B3", code)
                await wait_for(lambda: not d.alarms.is_active("B3", code), "the clear of B3 after the outage")
                # The API publishes from its own task, so an empty outbox proves nothing until the
                # clear has reached the witness; the marker below then catches any late redelivery.
                await wait_for(
                    lambda: any(a["device_id"] == "B3" and not a["active"] for a in witness.alarms(code)),
                    "the clear of B3 at the witness",
                )
                await d.link.wait_drained(WAIT_S)
                # Everything the daemon sent is acked by the broker, so queued for the witness
                # ahead of this marker: once it arrives, nothing of the daemon's is still on its way.
                # (a fresh client: the site's own one does not outlive the outage)
                async with aiomqtt.Client(
                    host, int(port), identifier=f"marker-{witness.identifier}"
                ) as marker:
                    await marker.publish(witness.topic, SENTINEL, qos=1)
                await wait_for(lambda: SENTINEL in witness.payloads, "the end marker")
            finally:
                task.cancel()
        published = [a for a in d.api.north.alarm_history().events if a.code == code]
    received = witness.alarms(code)
    assert witness.connects >= 2, "the witness reconnected to its kept session"
    by_id: dict[str, bytes] = {}
    for raw in (p for p in witness.payloads if p != SENTINEL):
        a = orjson.loads(raw)
        if a["code"] == code:
            assert "event_id" in a, "every alarm event carries its transition id"
            # a duplicate is a redelivery: the very same message, never a second transition
            assert by_id.setdefault(a["event_id"], raw) == raw
    transitions = Counter(
        (a["device_id"], a["active"]) for a in {a["event_id"]: a for a in received}.values()
    )
    expected = {("A1", True): 1, ("A2", True): 1, ("B3", True): 1, ("A1", False): 1, ("B3", False): 1}
    assert dict(transitions) == expected  # no loss, and no transition counted twice
    assert set(by_id) == {a.event_id for a in published}  # exactly what the daemon published
    assert len(received) >= len(by_id)  # the message count: unique transitions plus redeliveries
