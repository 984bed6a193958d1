"""Charging driver against the real OPC UA simulator over TCP on 127.0.0.1, security off and on."""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
from pathlib import Path

import pytest
from asyncua import ua
from asyncua.client.client import Client
from conftest_opcua import CLOCK_START, OpcUaRecorder, make_driver, sim_charge_points
from tcp_proxy import TcpProxy
from waiting import wait_until

from devices.charging import ClientSecurity, OpcUaChargingDriver, OpcUaEndpoint, string_node_id
from devices.profiles.charging import default_profile, parse_profile
from edge.clock import ManualClock
from edge.errors import ConfigError, DeviceError, DeviceReplyError, DeviceTimeout, DeviceUnavailable
from simulators.charging import ChargingSimulator
from simulators.charging_physics import SimFeeder
from simulators.elaad import SessionSampler, builtin_curves, load_curves

EP = "chargers"


def _close(a: object, b: float, tol: float = 0.02) -> bool:
    return isinstance(a, int | float) and abs(float(a) - b) <= tol


async def run_clock(sim: ChargingSimulator, clock: ManualClock, seconds: float, step: float = 15.0) -> None:
    """Move the clock in steps, letting the driver's heartbeats (every 20 s) keep up, as in real time."""
    end = clock.now() + seconds
    while clock.now() < end:
        clock.advance(step)
        await wait_until(
            lambda: min(sim.last_feed(cp) for cp in ("cp-001", "cp-002", "cp-003")) >= clock.now() - 20.0,
            what="heartbeats",
        )


async def test_telemetry_matches_simulator(
    charging_sim: ChargingSimulator, charging_driver: OpcUaChargingDriver, opcua_recorder: OpcUaRecorder
) -> None:
    """After connect and through the subscription, the driver's values equal the server's."""
    for cp_id in ("cp-001", "cp-002", "cp-003"):
        served = charging_sim.cp(cp_id)
        for point in ("status", "current_limit_a", "meter_energy_kwh", "max_current_a", "watchdog_s"):
            assert opcua_recorder.value(cp_id, point) == served[point], (cp_id, point)
    session = await charging_sim.arrive("cp-001", 30.0, CLOCK_START + 8 * 3600, capacity_kwh=77.0)
    await opcua_recorder.wait(
        lambda: opcua_recorder.value("cp-001", "session_id") == session, "new session via subscription"
    )
    served = charging_sim.cp("cp-001")
    for point in ("status", "car_connected", "energy_needed_kwh", "departure_ts", "power_kw"):
        assert opcua_recorder.value("cp-001", point) == served[point], point
    assert served["departure_ts"] == CLOCK_START + 8 * 3600
    assert charging_driver.max_current_a("cp-001") == 16.0


async def test_write_read_back_changes_setpoint(
    charging_sim: ChargingSimulator, charging_driver: OpcUaChargingDriver, charging_clock: ManualClock
) -> None:
    """A setpoint write returns the read-back value and the charger holds it; it feeds the watchdog."""
    charging_clock.advance(30)
    back = await charging_driver.write("cp-002", "current_limit_a", 10.5, 1.0)
    assert back == 10.5
    assert charging_sim.cp("cp-002")["current_limit_a"] == 10.5
    assert charging_sim.last_feed("cp-002") == charging_clock.now()


async def test_refused_writes_never_reach_the_device(
    charging_sim: ChargingSimulator, charging_driver: OpcUaChargingDriver, charging_clock: ManualClock
) -> None:
    """Out-of-range values and read-only points are refused before anything is sent."""
    charging_clock.advance(5)
    fed = charging_sim.last_feed("cp-001")
    with pytest.raises(DeviceReplyError, match="above the charger"):
        await charging_driver.write("cp-001", "current_limit_a", 16.5, 1.0)
    with pytest.raises(DeviceReplyError, match="below"):
        await charging_driver.write("cp-001", "current_limit_a", -1.0, 1.0)
    with pytest.raises(DeviceReplyError, match="not a writable point"):
        await charging_driver.write("cp-001", "power_kw", 3.0, 1.0)
    with pytest.raises(DeviceUnavailable):
        await charging_driver.write("cp-999", "current_limit_a", 6.0, 1.0)
    assert charging_sim.last_feed("cp-001") == fed
    assert charging_sim.cp("cp-001")["current_limit_a"] == 16.0


async def test_server_refuses_what_a_charger_would(charging_sim: ChargingSimulator) -> None:
    """A bare client gets BadOutOfRange above max_current_a and BadNotWritable on measurements."""
    async with Client(charging_sim.url, timeout=2) as client:
        ns = await client.get_namespace_index(default_profile().namespace)
        limit = client.get_node(string_node_id("cp-001.current_limit_a", ns))
        with pytest.raises(ua.uaerrors.BadOutOfRange):
            await limit.write_value(ua.DataValue(ua.Variant(40.0, ua.VariantType.Double)))
        power = client.get_node(string_node_id("cp-001.power_kw", ns))
        with pytest.raises(ua.uaerrors.BadNotWritable):
            await power.write_value(ua.DataValue(ua.Variant(1.0, ua.VariantType.Double)))
    assert charging_sim.cp("cp-001")["current_limit_a"] == 16.0


async def test_car_charges_at_setpoint_pauses_under_6a_and_suspends_when_full(
    charging_sim: ChargingSimulator,
    charging_driver: OpcUaChargingDriver,
    charging_clock: ManualClock,
    opcua_recorder: OpcUaRecorder,
) -> None:
    """Power = phases x A x 230 V at the setpoint; under 6 A SuspendedEVSE; full -> SuspendedEV."""
    departure = CLOCK_START + 12 * 3600
    await charging_sim.arrive("cp-001", 40.0, departure, phases=3, capacity_kwh=77.0)
    await charging_sim.arrive("cp-003", 20.0, departure, phases=1, capacity_kwh=60.0)
    await charging_driver.write("cp-001", "current_limit_a", 10.0, 1.0)
    await charging_driver.write("cp-003", "current_limit_a", 10.0, 1.0)
    await run_clock(charging_sim, charging_clock, 600)
    await opcua_recorder.wait(
        lambda: (
            _close(opcua_recorder.value("cp-001", "power_kw"), 3 * 10 * 0.230)
            and _close(opcua_recorder.value("cp-003", "power_kw"), 1 * 10 * 0.230)
        ),
        "both cars charging at 10 A",
    )
    assert opcua_recorder.value("cp-001", "status") == "Charging"
    assert opcua_recorder.value("cp-001", "phases_in_use") == 3
    assert opcua_recorder.value("cp-003", "phases_in_use") == 1
    assert opcua_recorder.value("cp-003", "current_l2_a") == 0.0
    await wait_until(lambda: _close(charging_sim.cp("cp-001")["session_energy_kwh"], 6.9 * 600 / 3600))

    await charging_driver.write("cp-001", "current_limit_a", 5.0, 1.0)
    await opcua_recorder.wait(
        lambda: (
            opcua_recorder.value("cp-001", "status") == "SuspendedEVSE"
            and opcua_recorder.value("cp-001", "power_kw") == 0.0
        ),
        "paused under 6 A",
    )

    # a nearly full car: it tapers, then stops drawing
    await charging_sim.arrive("cp-002", 1.0, departure, phases=3, capacity_kwh=10.0)
    await charging_driver.write("cp-002", "current_limit_a", 16.0, 1.0)
    first = charging_sim.cp("cp-002")["current_l1_a"]
    assert isinstance(first, float)
    assert 0 < first < 16.0  # above 80 % state of charge the car takes less than offered
    for _ in range(40):
        if charging_sim.cp("cp-002")["status"] == "SuspendedEV":
            break
        await run_clock(charging_sim, charging_clock, 120, step=20.0)
    await opcua_recorder.wait(lambda: opcua_recorder.value("cp-002", "status") == "SuspendedEV", "car full")
    served = charging_sim.cp("cp-002")
    assert served["power_kw"] == 0.0
    assert served["session_energy_kwh"] == pytest.approx(1.0, abs=0.002)
    assert served["energy_needed_kwh"] == 0.0


async def test_watchdog_falls_back_to_failsafe_when_driver_stops(
    charging_sim: ChargingSimulator, charging_clock: ManualClock, opcua_recorder: OpcUaRecorder
) -> None:
    """Heartbeats hold the setpoint past watchdog_s; without the driver it drops to the fail-safe."""
    cp = "cp-002"  # watchdog 60 s, fail-safe 6 A
    async with make_driver(charging_sim, charging_clock, opcua_recorder) as driver:
        await opcua_recorder.wait(lambda: driver.online(EP) is True, "online")
        assert await driver.write(cp, "current_limit_a", 16.0, 1.0) == 16.0
        for _ in range(15):  # 150 s of clock time, well past the 60 s watchdog
            charging_clock.advance(10)
            await wait_until(
                lambda: charging_sim.last_feed(cp) >= charging_clock.now() - 20.0,
                what="a heartbeat per period",
            )
        assert charging_sim.cp(cp)["failsafe_active"] is False
        assert charging_sim.cp(cp)["current_limit_a"] == 16.0
    charging_clock.advance(61)
    await wait_until(lambda: charging_sim.cp(cp)["failsafe_active"] is True, what="watchdog tripped")
    assert charging_sim.cp(cp)["current_limit_a"] == 6.0


async def test_comm_loss_marks_unavailable_once_and_recovery_restores_subscription(
    charging_sim: ChargingSimulator,
    charging_driver: OpcUaChargingDriver,
    charging_clock: ManualClock,
    opcua_recorder: OpcUaRecorder,
) -> None:
    """A silent link -> Availability(False) once; back -> True once, a write that waited for the
    link goes through, and telemetry flows again."""
    assert opcua_recorder.availability(EP) == [True]
    sessions = charging_driver.stats.sessions
    await charging_sim.inject(EP, "comm_loss")
    await opcua_recorder.wait(lambda: opcua_recorder.availability(EP) == [True, False], "down", timeout_s=8)
    with pytest.raises(DeviceUnavailable):
        await charging_driver.write("cp-001", "current_limit_a", 8.0, 1.0)
    # A write sent while the link is down waits for it within its timeout, then goes through.
    pending = asyncio.create_task(charging_driver.write("cp-001", "current_limit_a", 9.0, 20.0))
    await asyncio.sleep(0)
    assert not pending.done()
    await charging_sim.clear(EP, "comm_loss")
    await opcua_recorder.wait(lambda: opcua_recorder.availability(EP) == [True, False, True], "up again")
    assert await pending == 9.0
    assert charging_sim.cp("cp-001")["current_limit_a"] == 9.0
    assert charging_driver.stats.sessions > sessions  # a fresh client, not the old one
    session = await charging_sim.arrive("cp-003", 5.0, CLOCK_START + 3600, phases=1)
    await opcua_recorder.wait(
        lambda: opcua_recorder.value("cp-003", "session_id") == session, "telemetry via the new subscription"
    )
    assert opcua_recorder.availability(EP) == [True, False, True]


async def test_charger_faults(
    charging_sim: ChargingSimulator,
    charging_driver: OpcUaChargingDriver,
    charging_clock: ManualClock,
    opcua_recorder: OpcUaRecorder,
) -> None:
    """Faulted and lost chargers say so; a frozen meter stops counting while the car charges."""
    await charging_sim.arrive("cp-001", 30.0, CLOCK_START + 36_000, capacity_kwh=77.0)
    await charging_sim.inject("cp-001", "meter_frozen")
    meter = charging_sim.cp("cp-001")["meter_energy_kwh"]
    await run_clock(charging_sim, charging_clock, 300)
    await opcua_recorder.wait(lambda: opcua_recorder.value("cp-001", "status") == "Charging", "charging")
    await wait_until(lambda: charging_sim.cp("cp-001")["power_kw"] == pytest.approx(11.04, abs=0.01))
    assert charging_sim.cp("cp-001")["meter_energy_kwh"] == meter
    await charging_sim.inject("cp-002", "faulted")
    await opcua_recorder.wait(lambda: opcua_recorder.value("cp-002", "status") == "Faulted", "faulted")
    await charging_sim.inject("cp-003", "comm_loss")
    await opcua_recorder.wait(lambda: opcua_recorder.value("cp-003", "status") == "Unavailable", "lost")
    with pytest.raises(DeviceReplyError, match="BadCommunicationError"):
        await charging_driver.write("cp-003", "current_limit_a", 8.0, 1.0)
    assert charging_driver.online(EP) is True  # one lost charger is not a lost server
    await charging_sim.clear("cp-002")
    await opcua_recorder.wait(lambda: opcua_recorder.value("cp-002", "status") == "Available", "cleared")


def test_no_security_refused_unless_allowed(charging_clock: ManualClock) -> None:
    """Without certificates the driver refuses to start unless allow_no_security is set."""
    with pytest.raises(ConfigError) as err:
        OpcUaChargingDriver([], None, OpcUaRecorder(), charging_clock)
    assert err.value.key == "allow_no_security"
    OpcUaChargingDriver([], None, OpcUaRecorder(), charging_clock, allow_no_security=True)


async def test_sign_and_encrypt_session_works(
    secure_charging_sim: ChargingSimulator,
    charging_clock: ManualClock,
    opcua_recorder: OpcUaRecorder,
    opcua_certs: tuple[Path, Path, Path, Path],
) -> None:
    """With generated certificates the driver reads, subscribes and writes over SignAndEncrypt."""
    server_cert, _, client_cert, client_key = opcua_certs
    security = ClientSecurity(client_cert, client_key, server_cert)
    async with make_driver(secure_charging_sim, charging_clock, opcua_recorder, security=security) as driver:
        await opcua_recorder.wait(lambda: driver.online(EP) is True, "secure session")
        assert await driver.write("cp-001", "current_limit_a", 12.0, 2.0) == 12.0
        await opcua_recorder.wait(
            lambda: opcua_recorder.value("cp-001", "current_limit_a") == 12.0, "telemetry"
        )
    endpoints = secure_charging_sim
    assert endpoints.security is not None


async def test_client_without_certificates_is_refused(
    secure_charging_sim: ChargingSimulator, charging_clock: ManualClock, opcua_recorder: OpcUaRecorder
) -> None:
    """The secure server offers SignAndEncrypt only: a NoSecurity client never gets a session."""
    async with make_driver(secure_charging_sim, charging_clock, opcua_recorder) as driver:
        await opcua_recorder.wait(lambda: opcua_recorder.availability(EP) == [False], "refused")
        assert driver.stats.sessions >= 1
    with pytest.raises(Exception) as err:  # noqa: PT011 - asyncua raises various errors here
        async with Client(secure_charging_sim.url, timeout=1):
            pass
    assert not isinstance(err.value, AssertionError)


async def test_untrusted_client_certificate_is_refused(
    secure_charging_sim: ChargingSimulator,
    charging_clock: ManualClock,
    opcua_recorder: OpcUaRecorder,
    opcua_certs: tuple[Path, Path, Path, Path],
    tmp_path: Path,
) -> None:
    """A well-formed client certificate the server does not trust gets no session."""
    from simulators.charging import make_test_certificates

    server_cert = opcua_certs[0]
    _, _, other_cert, other_key = make_test_certificates(tmp_path)
    security = ClientSecurity(other_cert, other_key, server_cert)
    async with make_driver(secure_charging_sim, charging_clock, opcua_recorder, security=security):
        await opcua_recorder.wait(lambda: opcua_recorder.availability(EP) == [False], "refused")


def test_elaad_sampling_is_reproducible_and_plausible() -> None:
    """Same seed, same sessions; medians near ElaadNL's public 4.4 h and 7.2 kWh; evenings stay long."""
    a = SessionSampler(seed=7).sessions(7000, CLOCK_START)
    b = SessionSampler(seed=7).sessions(7000, CLOCK_START)
    assert a == b
    assert SessionSampler(seed=8).sessions(50, CLOCK_START) != a[:50]
    hours = [s.connected_s / 3600 for s in a]
    kwh = [s.energy_kwh for s in a]
    assert statistics.median(hours) == pytest.approx(4.4, rel=0.1)
    assert statistics.median(kwh) == pytest.approx(7.2, rel=0.1)
    assert statistics.mean(hours) == pytest.approx(8.1, rel=0.15)
    assert statistics.mean(kwh) == pytest.approx(12.3, rel=0.15)
    evening = [s for s in a if 17.5 * 3600 <= s.arrival_ts % 86_400 < 19 * 3600]
    assert len(evening) > 300
    assert statistics.mean(s.connected_s for s in evening) / 3600 > 10.0
    assert statistics.mean(s.energy_kwh for s in evening) > 14.0


def test_elaad_falls_back_to_builtin_curves(tmp_path: Path) -> None:
    """Without the CSV files the sampler uses coarse built-in curves with the same medians."""
    curves = load_curves("public", tmp_path)
    assert curves.source == "built-in"
    assert load_curves("public").source != "built-in"  # the shared data is installed here
    assert curves.connection_h.median == pytest.approx(builtin_curves().connection_h.median)
    sessions = SessionSampler(curves, seed=1).sessions(3000, CLOCK_START)
    assert statistics.median(s.connected_s / 3600 for s in sessions) == pytest.approx(4.4, rel=0.15)


def test_profile_errors_name_the_key() -> None:
    """A bad information model fails at load, naming the key."""
    with pytest.raises(ConfigError) as err:
        parse_profile({"profile": {"name": "x", "version": 1, "namespace": "urn:x", "folder": "F", "connectors": 1},
                       "points": [{"name": "status", "type": "Float"}]})  # fmt: skip
    assert err.value.key == "points.0.type"
    assert [p.name for p in default_profile().writable] == [
        "current_limit_a",
        "failsafe_current_a",
        "heartbeat",
    ]
    assert len(sim_charge_points()) == 3


async def test_failsafe_written_at_connect_and_read_back(
    charging_sim: ChargingSimulator, charging_clock: ManualClock, opcua_recorder: OpcUaRecorder
) -> None:
    """The driver writes each charger's configured fail-safe at connect (never above the limit in
    force) and with every setpoint, the read-back shows it in telemetry, and the simulator's
    watchdog falls back to it (0 A: the car pauses)."""
    assert charging_sim.cp("cp-002")["failsafe_current_a"] == 6.0  # the factory value
    failsafe = {"cp-001": 0.0, "cp-002": 0.0, "cp-003": 6.0}
    driver = make_driver(charging_sim, charging_clock, opcua_recorder, failsafe=failsafe)
    async with driver:
        await opcua_recorder.wait(lambda: driver.online(EP) is True, "online")
        for cp, amps in failsafe.items():
            assert charging_sim.cp(cp)["failsafe_current_a"] == amps
            assert driver.failsafe_read_a(cp) == amps
            assert opcua_recorder.value(cp, "failsafe_current_a") == amps
        # One batch of three per session that got that far: on a loaded machine a session can time
        # out after it (create_monitored_items) and the reconnect writes all three again.
        stats = driver.stats
        assert stats.failsafe_written in {3 * n for n in range(1, stats.sessions + 1)}, stats
        assert driver.stats.failsafe_mismatches == 0
        # with every setpoint the fail-safe goes along, never above it: a watchdog never raises a draw
        assert await driver.write("cp-003", "current_limit_a", 0.0, 1.0) == 0.0
        assert charging_sim.cp("cp-003")["failsafe_current_a"] == 0.0
        assert await driver.write("cp-003", "current_limit_a", 10.0, 1.0) == 10.0
        assert charging_sim.cp("cp-003")["failsafe_current_a"] == 6.0
        await opcua_recorder.wait(
            lambda: opcua_recorder.value("cp-003", "failsafe_current_a") == 6.0, "read back"
        )
        await charging_sim.arrive("cp-002", 20.0, CLOCK_START + 8 * 3600, capacity_kwh=77.0)
        assert await driver.write("cp-002", "current_limit_a", 16.0, 1.0) == 16.0
    charging_clock.advance(61)  # no driver: cp-002's 60 s watchdog fires
    await wait_until(lambda: charging_sim.cp("cp-002")["failsafe_active"] is True, what="watchdog tripped")
    assert charging_sim.cp("cp-002")["current_limit_a"] == 0.0
    await wait_until(lambda: charging_sim.cp("cp-002")["current_l1_a"] == 0.0, what="the car pauses")


async def test_failsafe_ignored_by_charger_shows_in_read_back(
    charging_sim: ChargingSimulator, charging_clock: ManualClock, opcua_recorder: OpcUaRecorder
) -> None:
    """A charger that accepts the write but keeps its own fail-safe is caught by the read-back."""
    await charging_sim.inject("cp-001", "failsafe_ignored")
    driver = make_driver(
        charging_sim, charging_clock, opcua_recorder, failsafe={"cp-001": 0.0, "cp-002": 0.0}
    )
    async with driver:
        await opcua_recorder.wait(lambda: driver.online(EP) is True, "online")
        assert driver.failsafe_read_a("cp-001") == 6.0  # its factory value, not ours
        assert driver.failsafe_read_a("cp-002") == 0.0
        assert driver.stats.failsafe_mismatches == 1


async def test_server_refuses_failsafe_between_0_and_6_a(charging_sim: ChargingSimulator) -> None:
    """A fail-safe of 3 A is no IEC 61851 current: the charger refuses it, like any bad value."""
    async with Client(charging_sim.url, timeout=2) as client:
        ns = await client.get_namespace_index(default_profile().namespace)
        node = client.get_node(string_node_id("cp-001.failsafe_current_a", ns))
        with pytest.raises(ua.uaerrors.BadOutOfRange):
            await node.write_value(ua.DataValue(ua.Variant(3.0, ua.VariantType.Double)))
        assert charging_sim.cp("cp-001")["failsafe_current_a"] == 6.0


async def test_late_heartbeat_is_reported(
    charging_sim: ChargingSimulator, charging_clock: ManualClock, opcua_recorder: OpcUaRecorder
) -> None:
    """A heartbeat that goes out late tells the daemon how late (it goes conservative on it)."""
    late: list[float] = []
    driver = OpcUaChargingDriver(
        [charging_sim.endpoint()], None, opcua_recorder, charging_clock,
        allow_no_security=True, timeout_s=0.5, heartbeat_every_s=10.0, on_late=late.append,
    )  # fmt: skip
    async with driver:
        await opcua_recorder.wait(lambda: driver.stats.heartbeats >= 1, "first heartbeat")
        charging_clock.advance(10)
        await opcua_recorder.wait(lambda: driver.stats.heartbeats >= 2, "on time")
        charging_clock.advance(35)  # the loop could not run: the next beat is 25 s late
        await opcua_recorder.wait(lambda: driver.stats.heartbeats >= 3, "late beat")
    assert late[0] == pytest.approx(0.0)
    assert late[1] == pytest.approx(25.0)


async def test_late_writes_keep_the_session_a_silent_server_ends_it(
    charging_sim: ChargingSimulator, charging_clock: ManualClock, opcua_recorder: OpcUaRecorder
) -> None:
    """Setpoint writes that time out on a server that still answers (a busy server answers late:
    OPC UA matches the late answer by its handle) keep the session of every charge point on it,
    however many time out; the next write goes through on it. A server that answers nothing
    at all (it hangs, the connection stays open) ends the session: the charge points go down."""
    async with TcpProxy("127.0.0.1", charging_sim.port) as proxy:
        ep = charging_sim.endpoint()
        ep = OpcUaEndpoint(
            ep.endpoint_id, ep.url.replace(f":{charging_sim.port}", f":{proxy.port}"), ep.charge_points
        )
        async with make_driver(charging_sim, charging_clock, opcua_recorder, endpoints=[ep]) as driver:
            await opcua_recorder.wait(lambda: driver.online(EP) is True, "online")
            sessions = driver.stats.sessions
            for _ in range(6):
                with pytest.raises(DeviceTimeout):
                    await driver.write("cp-001", "current_limit_a", 8.0, 1e-6)
            assert await driver.write("cp-001", "current_limit_a", 9.0, 2.0) == 9.0
            assert driver.stats.sessions == sessions
            assert opcua_recorder.availability(EP) == [True]
            proxy.hold()
            with pytest.raises(DeviceError):
                await driver.write("cp-001", "current_limit_a", 8.0, 0.5)
            await opcua_recorder.wait(lambda: opcua_recorder.availability(EP)[:2] == [True, False], "down")
            await proxy.restore()


async def test_power_back_boots_a_charger_at_its_failsafe(
    charging_clock: ManualClock, opcua_recorder: OpcUaRecorder
) -> None:
    """Power returns (dusk on a night-only circuit, a fuse replaced): the setpoint of before is
    gone, the charger offers no more than its fail-safe until its controller writes again."""
    cps = [dataclasses.replace(c, feeder="f1") for c in sim_charge_points()]
    feeders = [SimFeeder("f1", limit_a=63.0)]
    async with (
        ChargingSimulator(cps, charging_clock, feeders=feeders, seed=1) as sim,
        make_driver(sim, charging_clock, opcua_recorder) as driver,
    ):
        await opcua_recorder.wait(lambda: driver.online(EP) is True, "online")
        assert await driver.write("cp-002", "current_limit_a", 16.0, 1.0) == 16.0
        sim.set_feeder_live("f1", False)
        charging_clock.advance(2)  # the next physics tick
        await wait_until(lambda: sim.cp("cp-002")["status"] == "Unavailable", what="power gone")
        assert sim.cp("cp-002")["current_limit_a"] == 16.0  # kept while it is off
        sim.set_feeder_live("f1", True)
        charging_clock.advance(2)
        await wait_until(lambda: sim.cp("cp-002")["failsafe_active"] is True, what="booted on its fail-safe")
        assert sim.cp("cp-002")["current_limit_a"] == 6.0
        assert await driver.write("cp-002", "current_limit_a", 10.0, 1.0) == 10.0
        assert sim.cp("cp-002")["failsafe_active"] is False
