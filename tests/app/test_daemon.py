"""End to end: MQTT request -> dispatcher -> Modbus write -> simulator register -> read-back -> ack -> audit.

Real parts only: the pymodbus simulator over TCP on 127.0.0.1, a real broker
(EDGE_TEST_MQTT_URL or the embedded one) and a real database (EDGE_TEST_DATABASE_URL
or a SQLite file).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from harness import WAIT_S, site, wait_for


async def test_command_over_mqtt_changes_the_lamp(tmp_path: Path, mqtt_url: str, database_url: str) -> None:
    """A set_level request is acked only after the simulator's register holds the value; audited."""
    async with site(tmp_path, mqtt_url, database_url) as s:
        ack = await s.request("cmd/lights/A3", {"action": "set_level", "level": 40, "reason": "works"})
        assert ack["ok"] is True, ack
        assert ack["status"] == "confirmed"
        assert ack["results"][0]["value"] == 40
        assert s.sim.lamp("A3")["level_cmd"] == 40
        await wait_for(lambda: s.sim.lamp("A3")["level_actual"] == 40, "the lamp to dim to 40 %")
        await s.flush_storage()
        rows = await asyncio.to_thread(s.daemon.storage.audit, None, "A3")
        operator = [r for r in rows if r.source.startswith("operator")]
        assert [r.outcome for r in operator] == ["accepted", "confirmed"]
        assert operator[-1].applied == 40


async def test_floor_violation_is_refused_and_audited(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    """Dimming a never-dim junction lamp is refused with the reason; the lamp stays at 100 %."""
    async with site(tmp_path, mqtt_url, database_url) as s:
        ack = await s.request("cmd/lights/A0", {"action": "set_level", "level": 20})
        assert ack["ok"] is False
        assert ack["status"] == "refused"
        assert "under_lighting_floor" in ack["reason"]
        assert s.sim.lamp("A0")["level_cmd"] == 100
        await s.flush_storage()
        rows = await asyncio.to_thread(s.daemon.storage.audit, None, "A0")
        assert any(r.outcome == "refused" and "under_lighting_floor" in r.reason for r in rows)


async def test_segment_command_with_a_floor_lamp_is_partial(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    """A segment command dims what it may and says which lamp refused and why."""
    async with site(tmp_path, mqtt_url, database_url) as s:
        ack = await s.request("cmd/segments/main", {"action": "set_level", "level": 30})
        assert ack["status"] == "partial"
        assert ack["counts"] == {"confirmed": 5, "refused": 1}
        refused = [r for r in ack["results"] if r["outcome"] == "refused"]
        assert [r["device_id"] for r in refused] == ["A0"]
        assert all(s.sim.lamp(f"A{i}")["level_cmd"] == 30 for i in range(1, 6))


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("cmd/lights/A1", b"{not json", "malformed_json"),
        ("cmd/lights/A1", {"action": "set_level", "level": 50, "colour": "red"}, "invalid_payload"),
        ("cmd/lights/A1", {"action": "explode"}, "invalid_payload"),
        ("cmd/lights/A1", {"action": "set_level", "level": "bright"}, "invalid_payload"),
        ("cmd/lights/A1", {"action": "set_level", "level": 150}, "out_of_range"),
        ("cmd/lights/NOPE", {"action": "set_level", "level": 50}, "unknown_device"),
        ("cmd/groups/nope", {"action": "set_level", "level": 50}, "unknown_group"),
        ("cmd/teapots/A1", {"action": "set_level", "level": 50}, "unknown_topic"),
        ("cmd/lights/A1", b"[" * 70_000 + b"]" * 70_000, "payload_too_large"),
    ],
)
async def test_bad_requests_are_refused_with_a_reason(
    tmp_path: Path,
    mqtt_url: str,
    database_url: str,
    topic: str,
    payload: dict[str, object] | bytes,
    reason: str,
) -> None:
    """Every bad request gets a nack naming the problem, is counted, and the daemon keeps working."""
    async with site(tmp_path, mqtt_url, database_url) as s:
        before = s.sim.lamp("A1")["level_cmd"]
        ack = await s.request(topic, payload)
        assert ack["ok"] is False
        assert reason in ack["reason"]
        assert s.sim.lamp("A1")["level_cmd"] == before
        good = await s.request("cmd/lights/A2", {"action": "set_level", "level": 10})
        assert good["ok"] is True


async def test_override_ends_and_plan_takes_over(tmp_path: Path, mqtt_url: str, database_url: str) -> None:
    """An override with a duration holds, then the lamp returns to the planned level by itself."""
    async with site(tmp_path, mqtt_url, database_url) as s:
        planned = s.daemon.lighting.planned_level("A4")
        ack = await s.request("cmd/lights/A4", {"action": "set_level", "level": 100, "duration_s": 1.0})
        assert ack["status"] == "confirmed"
        await wait_for(lambda: s.sim.lamp("A4")["level_cmd"] == planned, "the plan level back after the hold")
        # resume_schedule drops an open-ended override at once
        await s.request("cmd/lights/A5", {"action": "set_level", "level": 90})
        assert s.sim.lamp("A5")["level_cmd"] == 90
        ack = await s.request("cmd/lights/A5", {"action": "resume_schedule"})
        assert ack["counts"] == {"released": 1}
        await wait_for(lambda: s.sim.lamp("A5")["level_cmd"] == planned, "the plan level after resume")


async def test_motion_raises_the_bike_path_ahead(tmp_path: Path, mqtt_url: str, database_url: str) -> None:
    """Motion at a bike-path lamp raises it and the next lamps to full; the others stay dimmed."""
    async with site(tmp_path, mqtt_url, database_url) as s:
        planned = s.daemon.lighting.planned_level("B0")
        assert planned is not None
        assert planned < 100
        await s.client.publish(f"{s.base}/field/motion/B2", b'{"detected": true}', qos=1)
        await wait_for(
            lambda: all(s.sim.lamp(f"B{i}")["level_cmd"] == 100 for i in (1, 2, 3, 4)), "lamps ahead at 100 %"
        )
        assert s.sim.lamp("B0")["level_cmd"] == planned


async def test_failures_raise_and_clear_alarms_over_mqtt(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    """A lamp failure is raised once on alarms/events, retained while active, cleared after repair."""
    async with site(tmp_path, mqtt_url, database_url) as s:
        await s.client.subscribe(f"{s.base}/alarms/events", qos=1)
        s.sim.inject("A2", "lamp_failure")
        events = []
        async with asyncio.timeout(WAIT_S):
            async for msg in s.client.messages:
                if msg.topic.matches(f"{s.base}/alarms/events"):
                    ev = orjson.loads(msg.payload)
                    if ev["device_id"] == "A2" and ev["code"] == "lamp_failure":
                        events.append(ev["active"])
                        if ev["active"]:
                            s.sim.clear("A2", "lamp_failure")
                        else:
                            break
        assert events == [True, False]
        await s.flush_storage()
        alarms = await asyncio.to_thread(s.daemon.storage.alarms)
        row = next(a for a in alarms if a.device_id == "A2" and a.code == "lamp_failure")
        assert row.cleared_at is not None
        assert row.cleared_at >= row.raised_at


async def test_a_lamp_stuck_at_a_wrong_draw_is_found_although_its_readings_stop_changing(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    """With dead bands, a lamp at a steady wrong power draw sends no new values; its
    value-less readings still count toward the power check, so the alarm is raised."""
    async with site(tmp_path, mqtt_url, database_url) as s:
        await s.client.subscribe(f"{s.base}/alarms/events", qos=1)
        ack = await s.request("cmd/lights/A3", {"action": "set_level", "level": 100, "reason": "test"})
        assert ack["ok"] is True, ack
        s.sim.inject("A3", "power_low")
        async with asyncio.timeout(WAIT_S):
            async for msg in s.client.messages:
                ev = orjson.loads(msg.payload)
                if ev["device_id"] == "A3" and ev["code"] == "power_out_of_band" and ev["active"]:
                    break
        assert s.daemon.driver.stats.lamp_quiet > 0  # the readings had stopped changing


async def test_retained_state_and_plan_are_published(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    """A late subscriber gets every lamp's state, the plan and the daemon's status from retained messages."""
    async with site(tmp_path, mqtt_url, database_url) as s:
        await s.daemon.link.wait_drained(WAIT_S)
        await s.client.subscribe(f"{s.base}/#", qos=1)
        states: dict[str, dict[str, object]] = {}
        plan = status = None
        async with asyncio.timeout(WAIT_S):
            async for msg in s.client.messages:
                t = str(msg.topic)
                if t.endswith("/state") and "/lights/" in t:
                    d = orjson.loads(msg.payload)
                    states[d["device_id"]] = d
                elif t == f"{s.base}/plans/lighting":
                    plan = orjson.loads(msg.payload)
                elif t == f"{s.base}/status":
                    status = orjson.loads(msg.payload)
                complete = len(states) == 12 and plan and status
                if complete and states["A0"]["level_cmd"] == 100 and states["B1"]["level_cmd"] is not None:
                    break
        assert status is not None
        assert status["online"] is True
        assert plan is not None
        assert plan["plan"]["status"] in {"optimal", "feasible"}
        assert states["A0"]["level_cmd"] == 100
        assert states["B1"]["segment"] == "bike"


async def test_controller_loss_alarm_and_recovery(tmp_path: Path, mqtt_url: str, database_url: str) -> None:
    """A controller that stops answering raises controller_offline once; a command to it fails with a reason."""
    async with site(tmp_path, mqtt_url, database_url) as s:
        s.sim.inject("c2", "comm_loss")
        await wait_for(lambda: s.daemon.alarms.is_active("c2", "controller_offline"), "controller_offline")
        assert s.daemon.state.get("B1").online is False  # type: ignore[union-attr]
        ack = await s.request("cmd/lights/B1", {"action": "set_level", "level": 80, "ttl_s": 1})
        assert ack["ok"] is False
        assert ack["reason"]
        s.sim.clear("c2", "comm_loss")
        await wait_for(lambda: not s.daemon.alarms.is_active("c2", "controller_offline"), "recovery")
        assert s.daemon.alarms.raised >= 1


async def test_first_plan_goes_out_paced_and_reaches_every_lamp(
    tmp_path: Path, mqtt_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a window of 2 open plan commands, the first plan still reaches every lamp (the
    harness waits for each lamp's register), never more than 2 at once, with no failed write."""
    from controllers import lighting

    monkeypatch.setattr(lighting, "PLAN_WINDOW", 2)
    open_at_submit: list[int] = []
    submit = lighting.LightingController._submit_plan

    def counting(self: lighting.LightingController, lamp_id: str, level: int) -> None:
        open_at_submit.append(len(self._open))
        submit(self, lamp_id, level)

    monkeypatch.setattr(lighting.LightingController, "_submit_plan", counting)
    async with site(tmp_path, mqtt_url, database_url) as s:
        assert len(open_at_submit) >= len(s.inventory.lamps)
        assert max(open_at_submit) < 2
        assert s.daemon.dispatcher.stats.failed == 0
        assert s.daemon.dispatcher.stats.expired == 0
