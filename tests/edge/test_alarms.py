"""Alarms across restarts (issue 10, finding 8): restored alarms pend until readings confirm them,
and the retained alarms/active topics follow the table."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from harness import WAIT_S, site, wait_for

from edge.alarms import DAEMON_DEVICE, Alarms, sweep_retained
from edge.bus import EventBus
from edge.clock import SimClock
from edge.events import AlarmEvent, Severity, Telemetry
from edge.mqtt import BrokerAddress
from edge.records import CommandAudit


def _restored(*keys: tuple[str, str]) -> list[AlarmEvent]:
    return [AlarmEvent(d, c, Severity.MAJOR, True, 1.0, "before the restart") for d, c in keys]


async def test_restored_alarm_is_confirmed_by_a_raise_without_a_new_event() -> None:
    """A controller raising an alarm that was open before the restart publishes nothing new
    (no second row, no second raise event); its ack survives; its clear is published as usual."""
    bus = EventBus()
    sub = bus.subscribe("t", AlarmEvent)
    alarms = Alarms(bus, SimClock(100.0))
    acked = AlarmEvent(
        "L1", "lamp_failure", Severity.MAJOR, True, 1.0, "", acked_by="op:anna", ack_comment="crew sent"
    )
    assert alarms.restore([acked]) == 1
    assert alarms.announce_restored() == 1
    announced = sub.get_nowait()
    assert isinstance(announced, AlarmEvent)
    assert (announced.restored, announced.acked_by, announced.ack_comment) == (True, "op:anna", "crew sent")
    alarms.set("L1", "lamp_failure", True, Severity.MAJOR)
    assert sub.get_nowait() is None
    assert alarms.pending() == []
    alarms.set("L1", "lamp_failure", False, Severity.MAJOR)
    cleared = sub.get_nowait()
    assert isinstance(cleared, AlarmEvent)
    assert (cleared.active, cleared.restored) == (False, False)


async def test_unconfirmed_alarm_clears_after_the_devices_first_readings() -> None:
    """A restored alarm its device's first readings did not re-raise is cleared; an alarm of a
    device that sends nothing stays pending; `reconcile` ends once nothing is pending."""
    bus = EventBus()
    sub = bus.subscribe("t", AlarmEvent)
    alarms = Alarms(bus, SimClock(100.0), confirm_readings=3)
    alarms.restore(_restored(("L1", "lamp_failure"), ("L1", "day_burner"), ("L2", "lamp_failure")))
    readings = bus.subscribe("alarms.reconcile", Telemetry)
    task = asyncio.create_task(alarms.reconcile(readings), name="reconcile")
    for _ in range(3):
        bus.publish(Telemetry("L1", 100.0, {"lamp_failure": False}))
    async with asyncio.timeout(5):
        while alarms.is_active("L1", "lamp_failure"):  # noqa: ASYNC110 - the task consumes the bus
            await asyncio.sleep(0.01)
    assert {(e.device_id, e.code) for e in alarms.active()} == {("L2", "lamp_failure")}
    cleared = [e for e in iter(sub.get_nowait, None) if isinstance(e, AlarmEvent)]
    assert {(e.device_id, e.code, e.active) for e in cleared} == {
        ("L1", "lamp_failure", False),
        ("L1", "day_burner", False),
    }
    alarms.set("L2", "lamp_failure", False, Severity.MAJOR)  # its controller settles it
    bus.publish(Telemetry("L2", 101.0, {}))
    async with asyncio.timeout(5):
        await task
    assert alarms.reconciled == 2


def test_sensors_that_report_rarely_settle_at_their_own_count() -> None:
    """A LoRaWAN bin (an uplink every 10-60 min) settles its restored alarms at its 2nd reading,
    a polled lamp at the default count."""
    alarms = Alarms(EventBus(), SimClock(0.0), confirm_readings=5, confirm_readings_of={"B1": 2})
    alarms.restore(_restored(("B1", "overflow"), ("L1", "lamp_failure")))
    for _ in range(2):
        alarms.reading("B1")
        alarms.reading("L1")
    assert [(e.device_id, e.code) for e in alarms.active()] == [("L1", "lamp_failure")]


async def test_sweep_clears_retained_topics_of_alarms_not_open(mqtt_url: str) -> None:
    """Retained alarms/active topics of alarms no longer open are cleared; the open ones stay."""
    base = f"dos/v1/sweep{uuid.uuid4().hex[:8]}"
    addr = BrokerAddress.parse(mqtt_url)
    async with addr.client("t-pub", timeout_s=10, pending=100) as pub:
        for dev, code in [("L1", "lamp_failure"), ("L2", "lamp_failure"), ("L3", "day_burner")]:
            await pub.publish(f"{base}/alarms/active/{dev}/{code}", b'{"active":true}', qos=1, retain=True)
    cleared = await sweep_retained(mqtt_url, base, [("L1", "lamp_failure")])
    assert sorted(cleared) == [f"{base}/alarms/active/L2/lamp_failure", f"{base}/alarms/active/L3/day_burner"]
    # What a new subscriber sees now: only the open alarm (the marker publish is also there).
    seen: list[str] = []
    async with addr.client("t-sub", timeout_s=10, pending=100) as sub:
        await sub.subscribe(f"{base}/alarms/active/#", qos=1)
        await sub.publish(f"{base}/alarms/active/_end", b"", qos=1)
        async with asyncio.timeout(10):
            async for msg in sub.messages:
                if str(msg.topic).endswith("/_end"):
                    break
                seen.append(str(msg.topic))
        await sub.publish(f"{base}/alarms/active/L1/lamp_failure", b"", qos=1, retain=True)
    assert set(seen) == {f"{base}/alarms/active/L1/lamp_failure"}  # amqtt may repeat a retained one


async def test_sweep_gives_up_quietly_when_the_broker_is_down() -> None:
    """No broker: the sweep is skipped within its timeout, and the daemon can start anyway."""
    from edge.net import free_port

    assert await sweep_retained(f"mqtt://127.0.0.1:{free_port()}", "dos/v1/x", [], timeout_s=2) == []


async def test_storage_health_alarm_reaches_the_api(tmp_path: Path, mqtt_url: str, database_url: str) -> None:
    """In the running daemon, a dead-lettered row raises `storage_dead_letter` on the device `edge`
    through the alarm mechanism: active in the daemon and retained on alarms/active/edge/..."""
    async with site(tmp_path, mqtt_url, database_url) as s:
        bad = CommandAudit(command_id="poison", device_id="L1", point="level_cmd", requested=1,
                           priority="operator", source="t", outcome="accepted", ts=0.0)  # fmt: skip
        bad.outcome = None  # type: ignore[assignment]
        topic = f"{s.base}/alarms/active/{DAEMON_DEVICE}/storage_dead_letter"
        await s.client.subscribe(topic, qos=1)
        s.daemon.storage.add(bad)
        await wait_for(lambda: s.daemon.alarms.is_active(DAEMON_DEVICE, "storage_dead_letter"), "the alarm")
        async with asyncio.timeout(WAIT_S):
            async for msg in s.client.messages:
                if str(msg.topic) == topic and msg.payload:
                    assert b"dead_letter" in (msg.payload if isinstance(msg.payload, bytes) else b"")
                    break
        assert s.daemon.storage.dead_lettered == 1
