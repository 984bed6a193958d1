"""Driver against the real lighting simulator over TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import random
import tomllib
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiomqtt
import pytest
from conftest_modbus import Recorder
from pymodbus.client import AsyncModbusTcpClient
from waiting import wait_until

from devices.lighting import ModbusEndpoint, ModbusLightingDriver, plan_reads, within_deadband
from devices.profiles.lighting import (
    DEFAULT_PROFILE_PATH,
    LampControllerProfile,
    default_profile,
    parse_profile,
)
from devices.protocols.link import poll_phases
from devices.protocols.modbus import PRIO_COMMAND, PRIO_POLL, PriorityLock
from devices.protocols.registers import PointValueError
from edge.clock import ManualClock
from edge.errors import DeviceReplyError, DeviceUnavailable
from edge.events import Availability
from edge.net import free_port
from simulators.lighting import LightingSimulator, demo_controllers

LAMP = "lc-001-002"


async def test_telemetry_matches_simulator(
    lighting_sim: LightingSimulator, lighting_driver: ModbusLightingDriver, recorder: Recorder
) -> None:
    """Every lamp's telemetry equals what the simulator's registers hold."""
    ids = [d for ep in lighting_sim.endpoints() for _, d in ep.lamps]
    await recorder.wait(lambda: all(recorder.latest(d) for d in ids), "telemetry of every lamp")
    for device_id in ids:
        latest = recorder.latest(device_id)
        assert latest is not None
        assert dict(latest.values) == dict(lighting_sim.lamp(device_id))
    ctl = recorder.latest("lc-001")
    assert ctl is not None
    assert ctl.values["failsafe_active"] is False
    assert ctl.values["watchdog_s"] == 300
    assert ctl.values["failsafe_level"] == 100
    assert lighting_driver.stats.reads > 0


async def test_write_reads_back_and_changes_the_device(
    lighting_sim: LightingSimulator, lighting_driver: ModbusLightingDriver, recorder: Recorder
) -> None:
    """A level write returns the read-back value and the simulated lamp follows it."""
    assert await lighting_driver.write(LAMP, "level_cmd", 40, timeout=1.0) == 40.0
    lamp = lighting_sim.lamp(LAMP)
    assert lamp["level_cmd"] == 40
    assert lamp["level_actual"] == 40
    assert isinstance(lamp["power_w"], float)
    assert 10 < lamp["power_w"] < 25  # P(40 %) of a 30-46 W luminaire, plus standby
    await recorder.wait(
        lambda: (t := recorder.latest(LAMP)) is not None and t.values["level_actual"] == 40,
        "telemetry showing the new level",
    )


async def test_out_of_range_write_raises_without_touching_the_device(
    lighting_sim: LightingSimulator, lighting_driver: ModbusLightingDriver
) -> None:
    """Values that cannot be right and read-only points are refused before anything is sent."""
    writes = lighting_driver.stats.writes
    before = dict(lighting_sim.lamp(LAMP))
    for value in (101, -1, float("nan")):
        with pytest.raises(DeviceReplyError) as info:
            await lighting_driver.write(LAMP, "level_cmd", value, timeout=1.0)
        assert isinstance(info.value, PointValueError)
    with pytest.raises(PointValueError, match="not a writable point"):
        await lighting_driver.write(LAMP, "level_actual", 10, timeout=1.0)
    with pytest.raises(DeviceUnavailable):
        await lighting_driver.write("nobody", "level_cmd", 10, timeout=1.0)
    assert lighting_driver.stats.writes == writes
    assert lighting_sim.lamp(LAMP)["level_cmd"] == before["level_cmd"]


async def test_watchdog_goes_to_failsafe_when_heartbeat_stops(
    lighting_sim: LightingSimulator, manual_clock: ManualClock, recorder: Recorder
) -> None:
    """Without heartbeats for watchdog_s the lamps go to 100 %; the next write clears it."""
    endpoints = lighting_sim.endpoints()
    async with ModbusLightingDriver(endpoints, None, recorder, manual_clock, poll_interval_s=0.02) as drv:
        await recorder.wait(lambda: bool(drv.online("lc-001")), "online")
        await drv.write(LAMP, "level_cmd", 30, timeout=1.0)
    # the daemon is gone: nobody writes any more
    hours = lighting_sim.lamp(LAMP)["hours"]
    manual_clock.advance(299)
    await wait_until(lambda: lighting_sim.lamp(LAMP)["hours"] != hours, what="a physics tick")
    assert lighting_sim.controller("lc-001")["failsafe_active"] == 0
    manual_clock.advance(2)
    await wait_until(lambda: lighting_sim.controller("lc-001")["failsafe_active"] == 1, what="watchdog trip")
    assert lighting_sim.lamp(LAMP)["level_actual"] == 100
    assert lighting_sim.lamp(LAMP)["level_cmd"] == 30
    # a daemon coming back heartbeats at once, which clears the fail-safe
    async with ModbusLightingDriver(endpoints, None, recorder, manual_clock, poll_interval_s=0.02):
        await wait_until(
            lambda: lighting_sim.controller("lc-001")["failsafe_active"] == 0, what="fail-safe clear"
        )
        assert lighting_sim.lamp(LAMP)["level_actual"] == 30
        await recorder.wait(
            lambda: (t := recorder.latest("lc-001")) is not None and t.values["failsafe_active"] is False,
            "controller telemetry without fail-safe",
        )


async def test_heartbeat_keeps_the_watchdog_quiet(
    lighting_sim: LightingSimulator,
    lighting_driver: ModbusLightingDriver,
    manual_clock: ManualClock,
    recorder: Recorder,
) -> None:
    """While the driver runs, advancing time well past watchdog_s never trips the fail-safe."""
    ids = ("lc-001", "lc-002")
    for _ in range(12):  # 12 x 60 s = 720 s, more than twice watchdog_s
        manual_clock.advance(60)

        def fed() -> bool:  # a beat every 100 s; 160 s if it lands just after a step
            return all(manual_clock.now() - lighting_sim.last_write(e) <= 160 for e in ids)

        await wait_until(fed, timeout_s=15.0, what="heartbeats keeping up")  # a loaded box is slow
        # The simulator sees a beat at its write; the driver starts its next period only after the
        # read-back. Two more polls of each controller (they queue behind the beat on its link)
        # show the beat finished, so the next step cannot move the clock under a beat in flight.
        seen = {e: len(recorder.telemetry(e)) for e in ids}
        await wait_until(
            lambda: all(len(recorder.telemetry(e)) >= seen[e] + 2 for e in ids),  # noqa: B023
            timeout_s=15.0,
            what="two polls of each controller after the beat",
        )
        for e in ids:
            assert lighting_sim.controller(e)["failsafe_active"] == 0
    assert lighting_driver.stats.writes >= 2 * 4  # 720 s / at most 160 s between beats


async def test_comm_loss_publishes_availability_once_each_way(
    lighting_sim: LightingSimulator, lighting_driver: ModbusLightingDriver, recorder: Recorder
) -> None:
    """A controller that stops answering is reported down once, and up once when it is back."""
    assert recorder.availability("lc-002") == [True]
    lighting_sim.inject("lc-002", "comm_loss")
    await recorder.wait(lambda: recorder.availability("lc-002") == [True, False], "down")
    failed = lighting_driver.stats.connect_errors
    await recorder.wait(lambda: lighting_driver.stats.connect_errors >= failed + 3, "retries")
    with pytest.raises(DeviceUnavailable):
        await lighting_driver.write("lc-002-001", "level_cmd", 50, timeout=1.0)
    lighting_sim.clear("lc-002", "comm_loss")
    await recorder.wait(lambda: recorder.availability("lc-002") == [True, False, True], "up")
    reads = lighting_driver.stats.reads
    await recorder.wait(lambda: lighting_driver.stats.reads > reads + 10, "more polls")
    assert recorder.availability("lc-002") == [True, False, True]
    assert recorder.availability("lc-001") == [True]


async def test_a_write_waits_within_its_time_for_a_controller_coming_back(
    lighting_sim: LightingSimulator, lighting_driver: ModbusLightingDriver, recorder: Recorder
) -> None:
    """A write to a controller that is down waits for its link (within the write's timeout)
    instead of failing at once, and is applied once the controller answers again."""
    lighting_sim.inject("lc-002", "comm_loss")
    await recorder.wait(lambda: recorder.availability("lc-002") == [True, False], "down")
    errors = lighting_driver.stats.write_errors
    write = asyncio.create_task(lighting_driver.write("lc-002-001", "level_cmd", 55, timeout=15.0))
    await asyncio.sleep(0)
    assert not write.done()
    lighting_sim.clear("lc-002", "comm_loss")
    assert await write == 55
    assert lighting_sim.lamp("lc-002-001")["level_cmd"] == 55
    assert lighting_driver.stats.write_errors == errors


async def test_a_write_after_a_dropped_connection_reconnects_at_once(
    lighting_sim: LightingSimulator, manual_clock: ManualClock, recorder: Recorder
) -> None:
    """A request that timed out in flight drops the connection while the controller stays
    reported online (one late answer on a busy node is not a lost controller). A write then
    reconnects at once and is applied: it neither fails with DeviceUnavailable nor waits for
    the next poll (a minute away here)."""
    driver = ModbusLightingDriver(
        lighting_sim.endpoints(), None, recorder, manual_clock,
        poll_interval_s=60.0, timeout_s=0.5, backoff_max_s=0.1, backoff_base_s=0.02,
    )  # fmt: skip
    async with driver:
        await recorder.wait(lambda: driver.online("lc-002"), "lc-002 online")
        # the first heartbeat goes out as the link comes up: let it finish (beside CPU hogs a
        # heartbeat caught by the drop below can miss its 0.5 s and count as a write error)
        session = driver._runners["lc-002"].session
        await recorder.wait(
            lambda: lighting_sim.controller("lc-002")["heartbeat"] != 0 and not session.lock.locked(),
            "first heartbeat answered",
        )
        session.drop()  # what a timeout in flight does
        assert session.client is None
        assert await driver.write("lc-002-003", "level_cmd", 35, timeout=5.0) == 35
        assert lighting_sim.lamp("lc-002-003")["level_cmd"] == 35
        assert session.client is not None
        assert driver.stats.write_errors == 0
        assert recorder.availability("lc-002") == [True]  # never reported down


async def _silent_server() -> tuple[asyncio.Server, int]:
    """A TCP server that accepts and never answers: a hung controller."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()
        finally:
            writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """Port of a server that accepts connections and never replies."""
    server, port = await _silent_server()
    async with server:
        yield port
        server.close()
    await asyncio.sleep(0)


async def test_dead_endpoints_do_not_stop_the_others(
    lighting_sim: LightingSimulator,
    manual_clock: ManualClock,
    recorder: Recorder,
    silent_server: int,
) -> None:
    """A refused port and a hung controller time out alone; the live one keeps polling fast."""
    endpoints = [
        *lighting_sim.endpoints(),
        ModbusEndpoint("refused", "127.0.0.1", free_port(), 1, ((0, "refused-001"),)),
        ModbusEndpoint("hung", "127.0.0.1", silent_server, 1, ((0, "hung-001"),)),
    ]
    async with ModbusLightingDriver(
        endpoints, None, recorder, manual_clock, poll_interval_s=0.02, timeout_s=0.3
    ) as drv:
        await recorder.wait(
            lambda: recorder.availability("refused") == [False] and recorder.availability("hung") == [False],
            "both dead endpoints reported down",
        )
        n = len(recorder.telemetry(LAMP))
        await recorder.wait(lambda: len(recorder.telemetry(LAMP)) >= n + 20, "live telemetry")
        assert drv.online("lc-001") is True
        assert recorder.availability("refused") == [False]
        assert recorder.availability("hung") == [False]
        assert not recorder.telemetry("hung-001")


async def test_lamp_failure_shows_in_status_bits(
    lighting_sim: LightingSimulator, lighting_driver: ModbusLightingDriver, recorder: Recorder
) -> None:
    """A failed lamp reports its level but draws only standby, and its status bit is set."""
    await lighting_driver.write(LAMP, "level_cmd", 80, timeout=1.0)
    lighting_sim.inject(LAMP, "lamp_failure")

    def failed() -> bool:
        t = recorder.latest(LAMP)
        return t is not None and t.values["lamp_failure"] is True

    await recorder.wait(failed, "lamp_failure bit in telemetry")
    t = recorder.latest(LAMP)
    assert t is not None
    assert t.values["status"] == 1
    assert t.values["level_actual"] == 80
    assert t.values["power_w"] == 0.5
    assert recorder.latest("lc-001-001") is not None
    other = recorder.latest("lc-001-001")
    assert other is not None
    assert other.values["lamp_failure"] is False


async def test_driver_failure_sticks_the_level(
    lighting_sim: LightingSimulator, lighting_driver: ModbusLightingDriver
) -> None:
    """With a driver (control gear) failure the lamp ignores new levels."""
    await lighting_driver.write(LAMP, "level_cmd", 60, timeout=1.0)
    lighting_sim.inject(LAMP, "driver_failure")
    assert await lighting_driver.write(LAMP, "level_cmd", 20, timeout=1.0) == 20.0
    lamp = lighting_sim.lamp(LAMP)
    assert lamp["level_actual"] == 60
    assert lamp["driver_failure"] is True
    lighting_sim.clear(LAMP)
    assert lighting_sim.lamp(LAMP)["level_actual"] == 20


async def test_energy_and_hours_integrate_over_clock_time(
    lighting_sim: LightingSimulator, lighting_driver: ModbusLightingDriver, manual_clock: ManualClock
) -> None:
    """One clock hour at 100 % adds about one operating hour and P_max x 1 h of energy."""
    await lighting_driver.write(LAMP, "level_cmd", 100, timeout=1.0)
    before = dict(lighting_sim.lamp(LAMP))
    manual_clock.advance(3600)
    await wait_until(lambda: lighting_sim.lamp(LAMP)["hours"] != before["hours"], what="a tick")
    after = lighting_sim.lamp(LAMP)
    assert after["hours"] == pytest.approx(float(before["hours"]) + 1.0, abs=0.002)
    gained = float(after["energy_kwh"]) - float(before["energy_kwh"])
    assert 0.030 < gained < 0.050  # 30-46 W luminaire + 0.5 W standby for one hour


def test_fault_payloads_are_validated(lighting_sim: LightingSimulator) -> None:
    """Bad MQTT fault payloads are refused with a log line; good ones apply."""
    assert not lighting_sim.apply_fault_payload(b"not json")
    assert not lighting_sim.apply_fault_payload(b'{"target": "lc-001-001", "fault": "melted"}')
    assert not lighting_sim.apply_fault_payload(b'{"target": "nobody", "fault": "lamp_failure"}')
    assert not lighting_sim.apply_fault_payload(b'{"target": "lc-001-001", "fault": "power_loss"}')
    assert not lighting_sim.apply_fault_payload(b"[" * 5000)
    assert lighting_sim.apply_fault_payload(b'{"target": "lc-001-001", "fault": "power_high"}')
    assert lighting_sim.faults("lc-001-001") == {"power_high"}
    assert lighting_sim.apply_fault_payload(
        '{"target": "lc-001-001", "fault": "power_high", "active": false}'
    )
    assert lighting_sim.faults("lc-001-001") == frozenset()


def test_reads_are_coalesced_within_the_modbus_limit() -> None:
    """100 lamps and the controller block take 10 reads of at most 125 registers."""
    profile = default_profile()
    lamps = [(i, f"l{i}") for i in range(100)]
    spans = plan_reads(profile, lamps)
    assert len(spans) == 10
    assert all(s.count <= 125 for s in spans)
    assert sorted(d for s in spans for d in s.lamp_ids) == sorted(d for _, d in lamps)
    assert sum(s.controller is not None for s in spans) == 1
    # lamps missing from the inventory split the reads, they are not read over
    sparse = plan_reads(profile, [(0, "a"), (1, "b"), (5, "c")], include_controller=False)
    assert [(s.address, s.count) for s in sparse] == [(100, 20), (150, 10)]


async def test_commands_go_ahead_of_polls() -> None:
    """Queued on a busy connection, a command is served before polls that queued earlier."""
    lock = PriorityLock()
    await lock.acquire(PRIO_POLL)
    order: list[str] = []

    async def take(name: str, prio: int) -> None:
        await lock.acquire(prio)
        order.append(name)
        lock.release()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(take("poll-1", PRIO_POLL))
        tg.create_task(take("poll-2", PRIO_POLL))
        await asyncio.sleep(0)
        tg.create_task(take("command", PRIO_COMMAND))
        await asyncio.sleep(0)
        lock.release()
    assert order == ["command", "poll-1", "poll-2"]


async def test_faults_over_mqtt(lighting_sim: LightingSimulator, mqtt_url: str) -> None:
    """Faults arrive over MQTT; a bad payload is refused and the subscriber keeps going."""
    topic = f"test/sim/faults/{uuid.uuid4().hex}"
    parts = urlsplit(mqtt_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 1883
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(lighting_sim.run_mqtt_faults(mqtt_url, topic), name="sim.mqtt_faults")
        async with aiomqtt.Client(host, port) as client:
            # retained, so it reaches the simulator whenever its subscription lands
            await client.publish(topic, b'{"target": "lc-001-001", "fault": "power_low"}', retain=True)
            await wait_until(lambda: lighting_sim.faults("lc-001-001") == {"power_low"}, what="fault")
            await client.publish(topic, b"{broken", retain=True)
            await client.publish(
                topic, b'{"target": "lc-001-001", "fault": "power_low", "active": false}', retain=True
            )
            await wait_until(lambda: not lighting_sim.faults("lc-001-001"), what="fault cleared")
            await client.publish(topic, b"", retain=True)  # leave no retained message behind
        task.cancel()


def test_poll_phases_spread_over_the_interval() -> None:
    """Each of n links gets its own 1/n of the interval, jittered within it: no two line up."""
    n, interval = 538, 10.0
    phases = poll_phases(n, interval, random.Random(3))
    assert len(phases) == n
    for k, phase in enumerate(phases):
        assert k * interval / n <= phase < (k + 1) * interval / n
    again = poll_phases(n, interval, random.Random(4))
    assert phases != again  # jitter, not a fixed grid shared by every daemon


async def test_controllers_poll_at_spread_phases(manual_clock: ManualClock, recorder: Recorder) -> None:
    """A driver of 8 controllers polls each at its own phase: every controller answers (so
    the spread costs no availability), and the phases cover the interval, one per eighth."""
    async with LightingSimulator(demo_controllers(8, 2, 0), manual_clock, seed=1) as sim:
        driver = ModbusLightingDriver(
            sim.endpoints(), None, recorder, manual_clock, poll_interval_s=0.4, timeout_s=0.5, seed=5
        )
        async with driver:
            await recorder.wait(
                lambda: all(driver.online(e.endpoint_id) for e in sim.endpoints()), "every endpoint online"
            )
            phases = driver.phases()
    assert sorted(phases) == [e.endpoint_id for e in sim.endpoints()]
    for k, eid in enumerate(sorted(phases)):
        assert k * 0.05 <= phases[eid] < (k + 1) * 0.05


def _profile_variant(
    drop_table: bool = False, level_max: int | None = None, read_write: bool = True
) -> LampControllerProfile:
    """The shipped profile, without its level table or function 23, or with another level_cmd maximum."""
    data = tomllib.loads(DEFAULT_PROFILE_PATH.read_text())
    data["table"]["read_write"] = read_write
    if drop_table:
        del data["table"]
    if level_max is not None:
        next(p for p in data["lamp"]["points"] if p["name"] == "level_cmd")["max"] = level_max
    return parse_profile(data)


@pytest.mark.parametrize(
    ("table", "read_write"),
    [(True, True), (True, False), (False, False)],
    ids=["level table, function 23", "level table, write then read", "lamp blocks only"],
)
async def test_a_city_plan_burst_is_written_in_batches_and_confirmed(
    manual_clock: ManualClock, recorder: Recorder, table: bool, read_write: bool
) -> None:
    """600 lamp writes at once, as a first plan sends them (the dispatcher's 32 workers): every
    lamp holds its level in the simulator, every write returns its read-back, none fails, and
    they went out in batches (one hold of a link: writes, then a few block read-backs). With the
    profile's level table a run of lamps is one write-multiple, read back in the same request
    when the gateway takes function 23 (read/write multiple); without it, one write per lamp."""
    profile = _profile_variant(drop_table=not table, read_write=read_write)
    async with LightingSimulator(demo_controllers(6, 100, 0), manual_clock, profile, seed=1) as sim:
        driver = ModbusLightingDriver(
            sim.endpoints(), profile, recorder, manual_clock, poll_interval_s=0.2, timeout_s=2.0, seed=1
        )
        async with driver:
            await recorder.wait(
                lambda: all(driver.online(e.endpoint_id) for e in sim.endpoints()), "every endpoint online"
            )
            lamps = [d for ep in sim.endpoints() for _, d in ep.lamps]
            want = {d: 10 + i % 80 for i, d in enumerate(lamps)}
            workers = asyncio.Semaphore(32)

            async def one(device_id: str) -> float:
                async with workers:
                    return await driver.write(device_id, "level_cmd", want[device_id], timeout=5.0)

            got = await asyncio.gather(*(one(d) for d in lamps))
            stats = driver.stats
    assert got == [float(want[d]) for d in lamps]
    assert all(sim.lamp(d)["level_cmd"] == want[d] for d in lamps)
    assert stats.writes >= len(lamps)  # and the controllers' heartbeats
    assert stats.write_errors == 0
    assert stats.write_batches < len(lamps) // 4  # batched, not one hold per lamp
    if table:
        assert 0 < stats.table_writes <= stats.write_batches * 2  # a run or two per batch
        if read_write:
            assert stats.table_reads == 0  # each run read back in its own request
        else:
            assert stats.table_reads >= stats.write_batches  # a read after the writes
    else:
        assert stats.table_writes == 0


async def test_a_table_write_the_device_refuses_fails_only_its_own_lamp(
    manual_clock: ManualClock, recorder: Recorder
) -> None:
    """A controller that refuses one lamp's value refuses the whole write-multiple; the driver
    then writes that run lamp by lamp, so only the refused lamp fails and its neighbours hold."""
    strict = _profile_variant(level_max=90)  # the device takes at most 90 %; the driver up to 100
    async with LightingSimulator(demo_controllers(1, 20, 0), manual_clock, strict, seed=1) as sim:
        driver = ModbusLightingDriver(
            sim.endpoints(), None, recorder, manual_clock, poll_interval_s=0.2, timeout_s=2.0, seed=1
        )
        async with driver:
            await recorder.wait(lambda: driver.online("lc-001") is True, "online")
            lamps = [d for _, d in sim.endpoints()[0].lamps]
            want = {d: 95 if i == 7 else 30 + i for i, d in enumerate(lamps)}
            got = await asyncio.gather(
                *(driver.write(d, "level_cmd", want[d], timeout=5.0) for d in lamps), return_exceptions=True
            )
    refused = [d for d, g in zip(lamps, got, strict=True) if isinstance(g, DeviceReplyError)]
    assert refused == [lamps[7]]
    for d, g in zip(lamps, got, strict=True):
        if d != lamps[7]:
            assert g == float(want[d])
            assert sim.lamp(d)["level_cmd"] == want[d]
    assert sim.lamp(lamps[7])["level_cmd"] != 95
    assert driver.stats.table_writes >= 1


async def test_a_poll_behind_commands_is_skipped_not_down(
    lighting_sim: LightingSimulator, lighting_driver: ModbusLightingDriver, recorder: Recorder
) -> None:
    """Commands holding a link for longer than a poll interval delay its polls; the controller
    answers them, so it stays online and no poll counts as a failed read."""
    runner = lighting_driver._runners["lc-001"]
    errors = lighting_driver.stats.read_errors
    await runner.session.lock.acquire(PRIO_COMMAND)  # a command's hold on the link
    try:
        skipped = lighting_driver.stats.polls_skipped
        await wait_until(lambda: lighting_driver.stats.polls_skipped >= skipped + 3, 3.0, "skipped polls")
    finally:
        runner.session.lock.release()
    reads = lighting_driver.stats.reads
    await wait_until(lambda: lighting_driver.stats.reads > reads + 2, 3.0, "polls again")
    assert not [e for e in recorder.events if isinstance(e, Availability) and not e.online]
    assert lighting_driver.online("lc-001") is True
    assert lighting_driver.stats.read_errors == errors


def test_deadband_ignores_noise_and_counters_within_their_band() -> None:
    """Power noise and slow counters within the profile's bands are no change; anything else is."""
    bands = {p.name: p.deadband for p in default_profile().lamp.points if p.deadband > 0}
    assert set(bands) == {"power_w", "energy_kwh", "hours"}
    old = {"level_actual": 50, "power_w": 20.0, "energy_kwh": 1.000, "hours": 10.0, "lamp_failure": False}
    assert within_deadband(old, {**old, "power_w": 21.5, "energy_kwh": 1.005, "hours": 10.05}, bands)
    assert not within_deadband(old, {**old, "power_w": 22.5}, bands)
    assert not within_deadband(old, {**old, "level_actual": 51}, bands)
    assert not within_deadband(old, {**old, "lamp_failure": True}, bands)


async def test_quiet_lamps_report_value_less_and_changes_at_once(
    manual_clock: ManualClock, recorder: Recorder
) -> None:
    """With dead bands on, a lamp whose readings do not move is reported without values every
    `report_every_s`, each published set of values differs beyond a band from the one before,
    and a level change is reported at the next poll."""
    async with LightingSimulator(demo_controllers(1, 4, 0), manual_clock, seed=3) as sim:
        driver = ModbusLightingDriver(
            sim.endpoints(),
            None,
            recorder,
            manual_clock,
            poll_interval_s=0.05,
            timeout_s=0.5,
            report_every_s=0.2,
        )
        lamp = sim.endpoints()[0].lamps[0][1]
        async with driver:
            await recorder.wait(
                lambda: sum(not t.values for t in recorder.telemetry(lamp)) >= 3, "three value-less readings"
            )
            assert await driver.write(lamp, "level_cmd", 37, timeout=1.0) == 37.0
            await recorder.wait(
                lambda: any(t.values.get("level_actual") == 37 for t in recorder.telemetry(lamp)),
                "the new level",
            )
    full = [t.values for t in recorder.telemetry(lamp) if t.values]
    assert set(full[0]) >= {"level_cmd", "level_actual", "power_w", "energy_kwh", "hours"}
    for before, after in itertools.pairwise(full):
        assert not within_deadband(before, after, driver.deadbands)
    assert driver.stats.lamp_quiet > 0


async def test_the_simulators_level_table_and_lamp_blocks_are_one_value(
    lighting_sim: LightingSimulator,
) -> None:
    """On the wire, as another Modbus master sees it: a write-multiple to the level table sets
    the lamps' own level registers, a single write to a lamp's register shows in the table, and
    a table register of a lamp the controller does not have is refused."""
    profile = default_profile()
    assert profile.table is not None
    ep = lighting_sim.endpoints()[0]
    base = profile.table.base
    client = AsyncModbusTcpClient(ep.host, port=ep.port, timeout=2.0)
    await client.connect()
    try:
        n = len(ep.lamps)
        assert not (await client.write_registers(base, [11, 22, 33, 44][:n], device_id=ep.unit)).isError()
        for (index, device_id), level in zip(ep.lamps, [11, 22, 33, 44], strict=False):
            assert index < n
            assert lighting_sim.lamp(device_id)["level_cmd"] == level
        index, device_id = ep.lamps[2]
        addr = profile.lamp_address(index, "level_cmd")
        assert not (await client.write_register(addr, 55, device_id=ep.unit)).isError()
        table = await client.read_holding_registers(base, count=n, device_id=ep.unit)
        assert table.registers[index] == 55
        assert (await client.write_register(base + n, 10, device_id=ep.unit)).isError()
    finally:
        client.close()


async def test_polling_back_to_back_with_dead_bands(
    lighting_sim: LightingSimulator, recorder: Recorder, manual_clock: ManualClock
) -> None:
    """A poll interval of 0 reads flat out (the Modbus bench does): with dead bands every poll
    still reports, and a negative interval is refused by name."""
    with pytest.raises(ValueError, match="poll_interval_s"):
        ModbusLightingDriver(lighting_sim.endpoints(), None, recorder, manual_clock, poll_interval_s=-1.0)
    drv = ModbusLightingDriver(
        lighting_sim.endpoints(), None, recorder, manual_clock, poll_interval_s=0.0, report_every_s=60.0
    )
    assert drv.report_every_polls == 1
    async with drv:
        await recorder.wait(lambda: drv.stats.lamp_reads >= 2 * len(lighting_sim.endpoints()), "polls")
        await recorder.wait(lambda: recorder.latest(LAMP) is not None, "a reading of the lamp")
    assert drv.stats.read_errors == 0


async def test_without_dead_bands_every_poll_reports_the_full_values(
    lighting_sim: LightingSimulator, recorder: Recorder, manual_clock: ManualClock
) -> None:
    """No `report_every_s`: a lamp whose registers did not change is still reported with all its
    values at every poll, each event with its own dict (a consumer that changes one changes
    no other event and not what the driver sends next)."""
    drv = ModbusLightingDriver(lighting_sim.endpoints(), None, recorder, manual_clock, poll_interval_s=0.0)
    async with drv:
        await recorder.wait(lambda: len(recorder.telemetry(LAMP)) >= 3, "three polls of the lamp")
        cleared = recorder.telemetry(LAMP)
        for e in cleared:
            e.values.clear()  # a careless consumer
        await recorder.wait(lambda: len(recorder.telemetry(LAMP)) >= len(cleared) + 3, "three more polls")
    assert drv.stats.lamp_quiet > 0  # the registers stayed the same between polls
    after = [e.values for e in recorder.telemetry(LAMP)[len(cleared) :]]
    assert all(v and set(v) == set(after[0]) for v in after)
    assert len({id(v) for v in after}) == len(after)
