"""The help-point simulator: presses, cancels and faults in the registers the driver decodes.

Real parts: the lamp simulator serving the help-point blocks over Modbus TCP on 127.0.0.1 (read
back with a plain Modbus client, as the driver reads them), the simulator writing them, and a
broker for the MQTT fault topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiomqtt
import orjson
import pytest
import pytest_asyncio
from pymodbus.client import AsyncModbusTcpClient
from waiting import wait_until

from devices.profiles.helppoints import default_profile, parse_profile
from devices.protocols.registers import BlockDecoder
from edge.clock import ManualClock
from edge.events import Value
from simulators.helppoints import FAULT_TOPIC, HelpPointSimulator, SimHelpPoint, block_ranges
from simulators.lighting import LightingSimulator, SimController, SimLamp

START = 1_795_000_000.0
HOLD_S = 5.0
POINTS = [SimHelpPoint("HP-A", "lc-1", 0), SimHelpPoint("HP-B", "lc-1", 1)]


@dataclass
class Rig:
    lights: LightingSimulator
    sim: HelpPointSimulator
    clock: ManualClock


def controllers(points: list[SimHelpPoint]) -> list[SimController]:
    extra = block_ranges(points)
    return [
        SimController(ctl, "127.0.0.1", 0, 1, (SimLamp(f"{ctl}-001", 0),), extra=blocks)
        for ctl, blocks in extra.items()
    ]


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = ManualClock(START)
    async with (
        LightingSimulator(controllers(POINTS), clock, seed=1) as lights,
        HelpPointSimulator(POINTS, lights, clock, press_hold_s=HOLD_S) as sim,
    ):
        yield Rig(lights, sim, clock)


async def served(lights: LightingSimulator, hp: SimHelpPoint) -> Mapping[str, Value]:
    """The help point's block as a Modbus client reads it from the controller over TCP."""
    ep = next(e for e in lights.endpoints() if e.endpoint_id == hp.controller)
    profile = default_profile()
    client = AsyncModbusTcpClient(ep.host, port=ep.port, timeout=2.0)
    await client.connect()
    try:
        reply = await client.read_holding_registers(
            profile.base(hp.slot), count=profile.block.span, device_id=ep.unit
        )
    finally:
        client.close()
    assert not reply.isError(), reply
    return BlockDecoder(profile.block).decode(list(reply.registers), 0)


async def test_a_press_latches_counts_and_falls_after_the_hold(rig: Rig) -> None:
    """A press sets `pressed` and counts once; the latch falls after press_hold_s, the count stays."""
    hp = POINTS[0]
    at = rig.sim.press("HP-A")
    assert at == START
    values = await served(rig.lights, hp)
    assert values["pressed"] is True
    assert values["press_count"] == 1
    assert values["cancelled"] is False
    assert rig.sim.presses("HP-A") == [START]
    assert rig.sim.values("HP-B")["pressed"] is False  # the other slot is untouched
    rig.clock.advance(HOLD_S - 1)
    rig.sim.press("HP-B")  # a second point's latch shows that the sim ticked in the meantime
    rig.clock.advance(1)
    await wait_until(lambda: rig.sim.values("HP-A")["pressed"] is False, 2.0, "the latch to fall")
    values = await served(rig.lights, hp)
    assert values["pressed"] is False
    assert values["press_count"] == 1
    assert rig.sim.values("HP-B")["pressed"] is True  # its hold is not over yet


async def test_cancel_sets_cancelled_and_drops_pressed(rig: Rig) -> None:
    """The caller's cancel shows `cancelled` and ends the latched press; the count is kept."""
    rig.sim.press("HP-A")
    rig.sim.cancel("HP-A")
    values = await served(rig.lights, POINTS[0])
    assert values["cancelled"] is True
    assert values["pressed"] is False
    assert values["press_count"] == 1
    rig.sim.press("HP-A")  # a new press clears the cancel
    values = await served(rig.lights, POINTS[0])
    assert (values["pressed"], values["cancelled"], values["press_count"]) == (True, False, 2)


async def test_stuck_holds_pressed_until_cleared(rig: Rig) -> None:
    """A stuck button is one press held down for as long as the fault lasts, cancel included."""
    rig.sim.inject("HP-A", "stuck")
    values = await served(rig.lights, POINTS[0])
    assert (values["pressed"], values["press_count"]) == (True, 1)
    rig.sim.press("HP-B")
    rig.clock.advance(3600)
    # HP-B's latch falling proves a tick ran past the hold: HP-A is still down
    await wait_until(lambda: rig.sim.values("HP-B")["pressed"] is False, 2.0, "HP-B's latch to fall")
    assert rig.sim.values("HP-A")["pressed"] is True
    rig.sim.cancel("HP-A")
    assert rig.sim.values("HP-A")["pressed"] is True  # a cancel does not free a jammed button
    rig.sim.clear("HP-A", "stuck")
    await wait_until(lambda: rig.sim.values("HP-A")["pressed"] is False, 2.0, "the button released")
    values = await served(rig.lights, POINTS[0])
    assert (values["pressed"], values["press_count"]) == (False, 1)


@pytest.mark.parametrize(
    ("fault", "expect"),
    [
        ("selftest_failed", {"selftest_failed": True, "selftest_age_h": 0xFFFF}),
        ("tamper", {"tamper": True}),
        ("on_battery", {"on_battery": True}),
        ("battery_low", {"battery": 8}),
    ],
)
async def test_status_faults_set_the_points_the_profile_decodes(
    rig: Rig, fault: str, expect: dict[str, Value]
) -> None:
    """Each status fault shows in its bit or value over Modbus, and clearing it restores the block."""
    before = await served(rig.lights, POINTS[0])
    other = await served(rig.lights, POINTS[1])
    assert before["battery"] == 96
    assert before["selftest_age_h"] == 3
    assert not any(before[k] for k in ("pressed", "cancelled", "tamper", "selftest_failed", "on_battery"))
    rig.sim.inject("HP-A", fault)
    during = await served(rig.lights, POINTS[0])
    assert {k: during[k] for k in expect} == expect
    assert {k: v for k, v in during.items() if k not in expect and k != "status"} == {
        k: v for k, v in before.items() if k not in expect and k != "status"
    }
    assert await served(rig.lights, POINTS[1]) == other  # only the faulted help point changes
    rig.sim.clear("HP-A")
    assert await served(rig.lights, POINTS[0]) == before


async def test_unknown_points_faults_and_slots_are_refused(rig: Rig) -> None:
    """Calls naming what the simulator does not have raise ValueError and change nothing."""
    before = rig.sim.values("HP-A")
    with pytest.raises(ValueError, match="unknown help point"):
        rig.sim.press("HP-Z")
    with pytest.raises(ValueError, match="unknown fault"):
        rig.sim.inject("HP-A", "melted")
    assert rig.sim.values("HP-A") == before
    with pytest.raises(ValueError, match="duplicate help point"):
        HelpPointSimulator([POINTS[0], POINTS[0]], rig.lights, rig.clock)
    with pytest.raises(ValueError, match="slot 16"):
        HelpPointSimulator([SimHelpPoint("HP-X", "lc-1", 16)], rig.lights, rig.clock)


async def test_fault_payloads_are_validated_without_raising(rig: Rig) -> None:
    """A good MQTT message acts; an unknown target or fault, bad JSON or extra keys are refused."""
    assert rig.sim.apply_fault_payload(b'{"target": "HP-A", "fault": "press"}')
    assert rig.sim.values("HP-A")["press_count"] == 1
    assert rig.sim.apply_fault_payload('{"target": "HP-A", "fault": "tamper"}')
    assert rig.sim.values("HP-A")["tamper"] is True
    assert rig.sim.apply_fault_payload(b'{"target": "HP-A", "fault": "tamper", "active": false}')
    assert rig.sim.values("HP-A")["tamper"] is False
    before = {hp.device_id: rig.sim.values(hp.device_id) for hp in POINTS}
    for bad in (
        b'{"target": "HP-Z", "fault": "press"}',  # unknown target
        b'{"target": "HP-A", "fault": "melted"}',  # unknown fault
        b'{"target": "HP-A", "fault": "comm_loss"}',  # a lamp controller's fault, not a help point's
        b'{"target": "HP-A", "fault": "press", "extra": 1}',
        b'{"target": "HP-A"}',
        b"not json",
        b"[" * 5000,
        b"",
    ):
        assert rig.sim.apply_fault_payload(bad) is False, bad
    assert {hp.device_id: rig.sim.values(hp.device_id) for hp in POINTS} == before
    # `active: false` on an action does nothing
    assert rig.sim.apply_fault_payload(b'{"target": "HP-A", "fault": "press", "active": false}')
    assert rig.sim.values("HP-A")["press_count"] == 1


async def test_faults_arrive_over_mqtt(rig: Rig, mqtt_url: str) -> None:
    """The simulator takes a fault from its documented topic on a real broker."""
    topic = f"{FAULT_TOPIC}-{uuid.uuid4().hex[:8]}"
    task = asyncio.create_task(rig.sim.run_mqtt_faults(mqtt_url, topic), name="test.hp_faults")
    url = urlsplit(mqtt_url)
    try:
        async with aiomqtt.Client(url.hostname or "127.0.0.1", url.port or 1883) as client:
            body = orjson.dumps({"target": "HP-B", "fault": "selftest_failed"})

            async def publish_until_seen() -> None:  # the listener may not have subscribed yet
                while rig.sim.values("HP-B")["selftest_failed"] is not True:
                    await client.publish(topic, body, qos=1)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.2):
                            while rig.sim.values("HP-B")["selftest_failed"] is not True:  # noqa: ASYNC110
                                await asyncio.sleep(0.01)

            async with asyncio.timeout(10):
                await publish_until_seen()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert (await served(rig.lights, POINTS[1]))["selftest_failed"] is True
    assert rig.sim.values("HP-A")["selftest_failed"] is False


def test_block_ranges_group_the_blocks_by_controller() -> None:
    """Per controller, the (address, count) block of each of its help points, sorted."""
    points = [SimHelpPoint("A", "c2", 3), SimHelpPoint("B", "c1", 0), SimHelpPoint("C", "c2", 1)]
    p = default_profile()
    assert block_ranges(points) == {
        "c1": ((p.base(0), p.stride),),
        "c2": ((p.base(1), p.stride), (p.base(3), p.stride)),
    }
    assert p.base(1) == 4008  # the shipped map: base 4000, stride 8
    wide = parse_profile(
        {
            "profile": {"name": "wide", "version": 1},
            "block": {"base": 5000, "stride": 100, "max_points": 4,
                      "points": [{"name": "status", "offset": 0, "type": "u16"}]},
        }
    )  # fmt: skip
    assert block_ranges(points[:1], wide) == {"c2": ((5300, 100),)}
    with pytest.raises(ValueError, match="slot 4"):
        block_ranges([SimHelpPoint("D", "c1", 4)], wide)
    assert block_ranges([]) == {}


async def test_a_lorawan_button_sends_an_uplink_at_once_on_a_press_and_a_fault(mqtt_url: str) -> None:
    """A LoRaWAN help point reports every change at once (not at its next heartbeat), in its
    network server's format, on the profile the ingest decodes."""
    from devices.profiles.lorawan import default_profiles
    from devices.protocols.lorawan import UplinkIngest
    from edge.clock import SimClock
    from edge.events import Telemetry
    from simulators.helppoints import SimButton

    eui = "e757b0" + uuid.uuid4().hex[:10]
    clock = SimClock(1_795_000_000.0)
    got: list[Telemetry] = []
    ingest = UplinkIngest(default_profiles(), {eui: ("HPL", "helppoint_button")}, got.append, clock)
    url = urlsplit(mqtt_url)
    async with aiomqtt.Client(url.hostname or "127.0.0.1", url.port or 1883, identifier=f"t-{eui}") as client:
        await client.subscribe("v3/+/devices/+/up", qos=1)
        sim = HelpPointSimulator([], None, clock, buttons=[SimButton("HPL", eui, "tts")], mqtt_url=mqtt_url,
                                 heartbeat_s=3600.0)  # fmt: skip

        async def collect() -> None:
            async for msg in client.messages:
                ingest.handle(str(msg.topic), bytes(msg.payload))  # type: ignore[arg-type]

        task = asyncio.create_task(collect(), name="test.uplinks")
        try:
            async with sim:
                await wait_until(lambda: bool(got), 10.0, "the first heartbeat")
                assert got[-1].values["pressed"] is False
                sim.press("HPL")
                await wait_until(lambda: got[-1].values.get("pressed") is True, 10.0, "the press uplink")
                assert got[-1].values["press_count"] == 1
                sim.inject("HPL", "selftest_failed")
                await wait_until(
                    lambda: got[-1].values.get("selftest_failed") is True, 10.0, "the fault uplink"
                )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
