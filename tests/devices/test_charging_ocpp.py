"""OCPP 1.6J central system against simulated charge points over real websockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest_opcua import CLOCK_START, OpcUaRecorder, make_driver
from waiting import Recorder, wait_until
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.headers import build_authorization_basic

from devices.charging_ocpp import OcppCentralSystem, OcppSecurity
from devices.profiles.charging_ocpp import read_meter_values, sampled_values
from devices.protocols.ocpp import decode_frame
from edge.clock import ManualClock
from edge.errors import ConfigError, DeviceReplyError, DeviceUnavailable
from simulators.charging import ChargingSimulator, SimChargePoint
from simulators.charging_physics import SimFeeder
from simulators.charging_site import make_tls_certificates

PASSWORDS = {"cp-101": "pw-101-0123456789", "cp-102": "pw-102-0123456789", "cp-raw": "pw-raw-0123456789"}
FAILSAFE = {"cp-101": 8.0}
WRITE_S = 3.0
GOOD_TAG = "TAG-GOOD-01"


def ocpp_points(*ids: str, **kw: Any) -> list[SimChargePoint]:
    """OCPP posts without random arrivals (tests force cars), 16 A, fail-safe 6 A, watchdog 120 s."""
    return [SimChargePoint(cp, sessions_per_day=0, protocol="ocpp", **kw) for cp in ids]


@contextlib.asynccontextmanager
async def rig(
    clock: ManualClock,
    rec: Recorder,
    *,
    ids: Sequence[str] = ("cp-101", "cp-102"),
    security: OcppSecurity | None = None,
    sim_passwords: Mapping[str, str] = PASSWORDS,
    ca_file: Path | None = None,
    points: Sequence[SimChargePoint] | None = None,
    feeders: Sequence[SimFeeder] = (),
    cs_ids: Sequence[str] | None = None,
    **cs_kw: Any,
) -> AsyncIterator[tuple[OcppCentralSystem, ChargingSimulator]]:
    """A central system and a simulator whose OCPP charge points connect to it."""
    security = security or OcppSecurity(1, passwords=PASSWORDS)
    cs_kw.setdefault("timeout_s", 2.0)
    cs_kw.setdefault("failsafe", FAILSAFE)
    cs_kw.setdefault("id_tags", (GOOD_TAG,))
    async with OcppCentralSystem(list(cs_ids or ids), rec, clock, security=security, **cs_kw) as cs:
        sim = ChargingSimulator(
            list(points) if points is not None else ocpp_points(*ids),
            clock,
            feeders=feeders,
            seed=1,
            ocpp_url=cs.url,
            ocpp_passwords=sim_passwords,
            ocpp_ca_file=ca_file,
            ocpp_id_tags=(GOOD_TAG,),
        )
        async with sim:
            yield cs, sim


async def online(cs: OcppCentralSystem, rec: Recorder, *ids: str) -> None:
    await rec.wait(lambda: all(cs.online(cp) is True for cp in ids), f"{ids} online")


async def advance(clock: ManualClock, seconds: float, step: float = 30.0) -> None:
    """Move the clock in steps (as real time would), yielding to the simulator's loops between them;
    what a test expects after it, it waits for."""
    end = clock.now() + seconds
    while clock.now() < end:
        clock.advance(min(step, end - clock.now()))
        for _ in range(20):
            await asyncio.sleep(0)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(CLOCK_START)


@pytest.fixture
def rec() -> Recorder:
    return Recorder(wait_s=8.0)


async def test_boot_configures_the_charger_and_publishes_telemetry(clock: ManualClock, rec: Recorder) -> None:
    """After a boot the configuration is pushed and read back; the charge point goes online once,
    with its fail-safe, watchdog and maximum, and "not reported" for what OCPP cannot say."""
    async with rig(clock, rec) as (cs, sim):
        await online(cs, rec, "cp-101", "cp-102")
        assert rec.availability("cp-101") == [True]
        assert rec.value("cp-101", "failsafe_current_a") == 8.0  # configured for it
        assert rec.value("cp-102", "failsafe_current_a") == 6.0  # its own
        assert rec.value("cp-101", "watchdog_s") == 120.0
        assert rec.value("cp-101", "max_current_a") == 16.0
        assert rec.value("cp-101", "status") == "Available"
        assert rec.value("cp-101", "car_connected") is False
        assert rec.value("cp-101", "energy_needed_kwh") == -1.0
        assert rec.value("cp-101", "departure_ts") == 0.0
        assert cs.failsafe_read_a("cp-101") == 8.0
        assert cs.max_current_a("cp-101") == 16.0
        assert cs.stats.boots == 2
        point = sim.ocpp.points["cp-101"] if sim.ocpp else None
        assert point is not None
        assert point.config["MeterValuesSampledData"] == (
            "Current.Import,Current.Offered,Energy.Active.Import.Register,Power.Active.Import"
        )
        assert point.config["DosEdgeFailsafeTimeout"] == "120"
        assert sim.cp("cp-101")["failsafe_current_a"] == 8.0
        # no profile since the boot: the charger offers its fail-safe current
        assert sim.cp("cp-101")["current_limit_a"] == 8.0


async def test_setpoint_confirmed_by_answer_and_next_meter_values(clock: ManualClock, rec: Recorder) -> None:
    """A setpoint is a TxDefaultProfile (no transaction) or a TxProfile (one running); the write
    returns Current.Offered of the MeterValues it triggered, and the car really draws it."""
    async with rig(clock, rec) as (cs, sim):
        await online(cs, rec, "cp-101")
        assert await cs.write("cp-101", "current_limit_a", 10.0, WRITE_S) == 10.0
        assert sim.cp("cp-101")["current_limit_a"] == 10.0
        point = sim.ocpp.points["cp-101"] if sim.ocpp else None
        assert point is not None
        assert set(point.profiles) == {"TxDefaultProfile"}
        await sim.arrive("cp-101", 30.0, CLOCK_START + 8 * 3600, phases=3, capacity_kwh=77.0, id_tag=GOOD_TAG)
        await rec.wait(lambda: rec.value("cp-101", "session_id") not in (None, ""), "transaction")
        await wait_until(lambda: point.tx_id is not None, what="the charger has its StartTransaction answer")
        assert await cs.write("cp-101", "current_limit_a", 12.5, WRITE_S) == 12.5
        assert set(point.profiles) == {"TxDefaultProfile", "TxProfile"}
        served = sim.cp("cp-101")
        assert served["current_l1_a"] == 12.5
        assert served["power_kw"] == pytest.approx(3 * 12.5 * 0.230, abs=0.01)
        assert rec.value("cp-101", "current_limit_a") == 12.5
        assert rec.value("cp-101", "phases_in_use") == 3
        assert rec.value("cp-101", "power_kw") == pytest.approx(3 * 12.5 * 0.230, abs=0.01)
        # a setpoint off the 0.1 A grid of OCPP profiles is sent floored, never above
        assert await cs.write("cp-101", "current_limit_a", 10.07, WRITE_S) == 10.0


async def test_a_txprofile_the_charger_refuses_falls_back_to_the_default_profile(
    clock: ManualClock, rec: Recorder
) -> None:
    """The central system knows a transaction before the charger has its answer: a TxProfile it
    refuses then is sent again as the TxDefaultProfile, which limits that transaction too."""
    async with rig(clock, rec) as (cs, sim):
        await online(cs, rec, "cp-101")
        point = sim.ocpp.points["cp-101"] if sim.ocpp else None
        assert point is not None
        await sim.arrive("cp-101", 30.0, CLOCK_START + 8 * 3600, phases=3, capacity_kwh=77.0)
        await wait_until(lambda: point.tx_id is not None, what="transaction")
        point.tx_id = None  # as if the StartTransaction answer were still on its way
        assert await cs.write("cp-101", "current_limit_a", 9.0, WRITE_S) == 9.0
        assert set(point.profiles) == {"TxDefaultProfile"}
        assert sim.cp("cp-101")["current_limit_a"] == 9.0


async def test_refused_setpoints_are_never_sent(clock: ManualClock, rec: Recorder) -> None:
    """Under 6 A (but not 0), above the charger's maximum, read-only points, unknown chargers."""
    async with rig(clock, rec) as (cs, sim):
        await online(cs, rec, "cp-101")
        calls = cs.stats.calls
        with pytest.raises(DeviceReplyError, match="IEC 61851"):
            await cs.write("cp-101", "current_limit_a", 3.0, WRITE_S)
        with pytest.raises(DeviceReplyError, match="above the charger"):
            await cs.write("cp-101", "current_limit_a", 16.5, WRITE_S)
        with pytest.raises(DeviceReplyError, match="not a writable point"):
            await cs.write("cp-101", "power_kw", 3.0, WRITE_S)
        with pytest.raises(DeviceUnavailable):
            await cs.write("cp-999", "current_limit_a", 6.0, WRITE_S)
        assert cs.stats.calls == calls
        assert await cs.write("cp-101", "current_limit_a", 0.0, WRITE_S) == 0.0  # 0 pauses charging
        assert sim.cp("cp-101")["current_limit_a"] == 0.0


async def test_rejected_profile_fails_the_write_and_the_charger_keeps_its_limit(
    clock: ManualClock, rec: Recorder
) -> None:
    """SetChargingProfile answered Rejected: DeviceReplyError, and the limit is what it was."""
    async with rig(clock, rec) as (cs, sim):
        await online(cs, rec, "cp-101")
        assert await cs.write("cp-101", "current_limit_a", 10.0, WRITE_S) == 10.0
        await sim.inject("cp-101", "reject_profile")
        with pytest.raises(DeviceReplyError, match="Rejected"):
            await cs.write("cp-101", "current_limit_a", 14.0, WRITE_S)
        assert sim.cp("cp-101")["current_limit_a"] == 10.0
        await sim.clear("cp-101", "reject_profile")
        assert await cs.write("cp-101", "current_limit_a", 14.0, WRITE_S) == 14.0


async def test_frozen_meter_values_do_not_confirm_a_setpoint(clock: ManualClock, rec: Recorder) -> None:
    """MeterValues that repeat old values: the charger took the profile, but the write is an error."""
    async with rig(clock, rec) as (cs, sim):
        await online(cs, rec, "cp-101")
        assert await cs.write("cp-101", "current_limit_a", 10.0, WRITE_S) == 10.0
        await sim.inject("cp-101", "meter_frozen")
        with pytest.raises(DeviceReplyError, match=r"Current\.Offered reads 10 A"):
            await cs.write("cp-101", "current_limit_a", 12.0, WRITE_S)
        await sim.clear("cp-101", "meter_frozen")
        assert await cs.write("cp-101", "current_limit_a", 12.0, WRITE_S) == 12.0


async def test_disconnect_falls_back_to_failsafe_and_reconnect_restores_the_setpoint(
    clock: ManualClock, rec: Recorder
) -> None:
    """Link lost: offline once, the charger limits itself to its fail-safe after the timeout, a write
    meanwhile fails; back: online, and the central system re-applies the setpoint."""
    async with rig(clock, rec) as (cs, sim):
        await online(cs, rec, "cp-101", "cp-102")
        assert await cs.write("cp-101", "current_limit_a", 16.0, WRITE_S) == 16.0
        await sim.inject("cp-101", "disconnect")
        await rec.wait(lambda: rec.availability("cp-101") == [True, False], "offline")
        with pytest.raises(DeviceUnavailable):
            await cs.write("cp-101", "current_limit_a", 16.0, 0.2)
        await advance(clock, 90)
        assert sim.cp("cp-101")["current_limit_a"] == 16.0  # installed profiles stay in force
        await advance(clock, 40)
        await wait_until(lambda: sim.cp("cp-101")["failsafe_active"] is True, what="watchdog fired")
        assert sim.cp("cp-101")["current_limit_a"] == 8.0
        await sim.clear("cp-101", "disconnect")
        await rec.wait(lambda: rec.availability("cp-101") == [True, False, True], "online again")
        await wait_until(lambda: sim.cp("cp-101")["current_limit_a"] == 16.0, what="setpoint re-applied")
        assert sim.cp("cp-101")["failsafe_active"] is False


async def test_reboot_loses_the_profile_and_the_central_system_reapplies_it(
    clock: ManualClock, rec: Recorder
) -> None:
    """A reboot: a new BootNotification, the charger at its fail-safe, then the last setpoint again."""
    async with rig(clock, rec) as (cs, sim):
        await online(cs, rec, "cp-101")
        assert await cs.write("cp-101", "current_limit_a", 12.0, WRITE_S) == 12.0
        boots = cs.stats.boots
        await sim.inject("cp-101", "reboot")
        assert sim.cp("cp-101")["current_limit_a"] == 8.0  # profiles gone: its fail-safe
        await wait_until(lambda: cs.stats.boots > boots, what="boot notification")
        await wait_until(lambda: sim.cp("cp-101")["current_limit_a"] == 12.0, what="setpoint re-applied")
        assert sim.cp("cp-101")["failsafe_active"] is False
        assert "reboot" not in sim.faults("cp-101")  # an event, not a state


async def test_start_transaction_checks_the_tag_against_the_local_list(
    clock: ManualClock, rec: Recorder
) -> None:
    """A tag on the list: a transaction (session_id) and the car charges; off the list: Invalid,
    no session, and the car does not draw."""
    async with rig(clock, rec) as (cs, sim):
        await online(cs, rec, "cp-101", "cp-102")
        await sim.arrive("cp-101", 20.0, CLOCK_START + 3600, id_tag=GOOD_TAG)
        await sim.arrive("cp-102", 20.0, CLOCK_START + 3600, id_tag="TAG-STOLEN")
        await rec.wait(lambda: rec.value("cp-101", "status") == "Charging", "charging")
        await rec.wait(lambda: rec.value("cp-102", "status") == "Finishing", "refused")
        assert rec.value("cp-101", "session_id") not in (None, "")
        assert rec.value("cp-101", "car_connected") is True
        assert rec.value("cp-102", "session_id") is None
        assert rec.value("cp-102", "car_connected") is True
        assert sim.cp("cp-101")["power_kw"] > 0
        assert sim.cp("cp-102")["power_kw"] == 0.0


async def test_remote_stop_ends_the_transaction(clock: ManualClock, rec: Recorder) -> None:
    """RemoteStopTransaction (an operator's pause): accepted, StopTransaction follows, the car stops."""
    async with rig(clock, rec) as (cs, sim):
        await online(cs, rec, "cp-101", "cp-102")
        await sim.arrive("cp-101", 20.0, CLOCK_START + 3600, id_tag=GOOD_TAG)
        await rec.wait(lambda: rec.value("cp-101", "session_id") not in (None, ""), "transaction")
        assert await cs.remote_stop("cp-101", WRITE_S) is True
        await rec.wait(lambda: rec.value("cp-101", "session_id") == "", "stopped")
        await rec.wait(lambda: rec.value("cp-101", "status") == "Finishing", "finishing")
        assert sim.cp("cp-101")["power_kw"] == 0.0
        assert await cs.remote_stop("cp-102", WRITE_S) is False  # no transaction there
        assert await cs.trigger("cp-101", "StatusNotification", WRITE_S) == "Accepted"
        assert await cs.trigger("cp-101", "DiagnosticsStatusNotification", WRITE_S) == "NotImplemented"


async def _refused_status(url: str, cp: str, **kw: Any) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"{url}/{cp}", proxy=None, open_timeout=2, **kw):
            pass
    return info.value.response.status_code


async def test_profile_1_refuses_bad_credentials_paths_and_subprotocols(
    clock: ManualClock, rec: Recorder
) -> None:
    """Basic auth per charge point: a wrong password is refused (401) and counted, the others
    connect; an unknown charge point is 404, a client without "ocpp1.6" 400."""
    wrong = {**PASSWORDS, "cp-102": "not-the-password"}
    async with rig(clock, rec, sim_passwords=wrong) as (cs, _sim):
        await online(cs, rec, "cp-101")
        await wait_until(lambda: cs.stats.refused_handshakes >= 1, what="refused handshake")
        assert cs.online("cp-102") is None
        auth = {"Authorization": build_authorization_basic("cp-101", PASSWORDS["cp-101"])}
        assert await _refused_status(cs.url, "cp-101", subprotocols=["ocpp1.6"]) == 401
        assert (
            await _refused_status(cs.url, "cp-999", subprotocols=["ocpp1.6"], additional_headers=auth) == 404
        )
        assert await _refused_status(cs.url, "cp-101", additional_headers=auth) == 400
        other = {"Authorization": build_authorization_basic("cp-102", PASSWORDS["cp-101"])}
        assert (
            await _refused_status(cs.url, "cp-101", subprotocols=["ocpp1.6"], additional_headers=other) == 401
        )
        assert cs.refusals.total == 0  # handshakes are counted apart from frames
        assert cs.stats.refused_handshakes >= 5
        assert cs.online("cp-101") is True


async def test_profile_2_runs_over_tls(clock: ManualClock, rec: Recorder, tmp_path: Path) -> None:
    """wss:// with a server certificate the charge points check against the CA; a client that does
    not trust it cannot connect."""
    ca, cert, key = make_tls_certificates(tmp_path)
    security = OcppSecurity(2, passwords=PASSWORDS, cert_file=cert, key_file=key)
    async with rig(clock, rec, security=security, ca_file=ca) as (cs, _sim):
        assert cs.url.startswith("wss://127.0.0.1:")
        await online(cs, rec, "cp-101", "cp-102")
        assert await cs.write("cp-101", "current_limit_a", 9.0, WRITE_S) == 9.0
        with pytest.raises(ssl.SSLCertVerificationError):
            async with connect(f"{cs.url}/cp-101", proxy=None, open_timeout=2, subprotocols=["ocpp1.6"]):
                pass
    with pytest.raises(ConfigError) as err:
        OcppSecurity(2, passwords=PASSWORDS, cert_file=tmp_path / "missing.pem", key_file=key)
    assert err.value.key == "cert_file"


async def test_profile_0_refused_unless_allowed(clock: ManualClock, rec: Recorder) -> None:
    """No authentication at all is a configuration error unless allow_profile_0 says so."""
    with pytest.raises(ConfigError) as err:
        OcppSecurity(0)
    assert err.value.key == "allow_profile_0"
    with pytest.raises(ConfigError) as missing:
        OcppCentralSystem(["cp-101", "cp-9"], rec, clock, security=OcppSecurity(1, passwords=PASSWORDS))
    assert missing.value.key == "passwords"
    async with rig(clock, rec, security=OcppSecurity(0, allow_profile_0=True), sim_passwords={}) as (
        cs,
        _sim,
    ):
        await online(cs, rec, "cp-101", "cp-102")


def test_settings_that_cannot_work_are_refused() -> None:
    """Heartbeats that do not fit twice into the chargers' watchdog, fail-safes IEC 61851 forbids."""
    clock, security = ManualClock(CLOCK_START), OcppSecurity(1, passwords=PASSWORDS)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"heartbeat_interval_s": 90.0, "failsafe_timeout_s": 120.0}, "heartbeat_interval_s"),
        ({"failsafe": {"cp-101": 3.0}}, "failsafe"),
        ({"failsafe": {"cp-777": 6.0}}, "failsafe"),
        ({"timeout_s": 0.0}, "timeout_s"),
    ]
    for kw, key in cases:
        with pytest.raises(ConfigError) as err:
            OcppCentralSystem(["cp-101"], Recorder(), clock, security=security, **kw)
        assert err.value.key == key, kw
    with pytest.raises(ConfigError):
        OcppCentralSystem(["cp 101"], Recorder(), clock, security=OcppSecurity(0, allow_profile_0=True))


async def _raw(url: str, cp: str) -> ClientConnection:
    auth = {"Authorization": build_authorization_basic(cp, PASSWORDS[cp])}
    return await connect(
        f"{url}/{cp}",
        proxy=None,
        open_timeout=2,
        subprotocols=["ocpp1.6"],
        additional_headers=auth,
        max_size=None,
    )


async def _answer(ws: ClientConnection, uid: str) -> list[Any]:
    """The central system's answer to our message `uid` (its own requests skipped)."""
    async with asyncio.timeout(3):
        while True:
            frame = orjson.loads(await ws.recv())
            if frame[0] in (3, 4) and frame[1] == uid:
                return list(frame)


async def test_malformed_frames_do_not_hurt_the_server_or_other_charge_points(
    clock: ManualClock, rec: Recorder
) -> None:
    """Garbage, unknown actions, schema violations, binary and deep frames are refused and counted
    (answered with a CALLERROR where the message id is readable); a 1 MB frame closes only that
    connection; the simulated charger beside it keeps working and the server keeps accepting."""
    async with rig(clock, rec, ids=("cp-101",), cs_ids=("cp-101", "cp-raw"), timeout_s=10.0) as (cs, _sim):
        await online(cs, rec, "cp-101")
        ws = await _raw(cs.url, "cp-raw")
        await ws.send("this is not json")
        await ws.send(b"\x00\x01binary")
        await ws.send("[" * 100 + "]" * 100)
        await ws.send('[3,"nobody-asked",{}]')
        await ws.send('[2,"m1","NoSuchAction",{}]')
        assert (await _answer(ws, "m1"))[:3] == [4, "m1", "NotSupported"]
        await ws.send('[2,"m2","Reset",{"type":"Hard"}]')  # a 1.6 action a central system does not take
        assert (await _answer(ws, "m2"))[:3] == [4, "m2", "NotImplemented"]
        await ws.send(
            '[2,"m3","StatusNotification",{"connectorId":"one","errorCode":"NoError","status":"Available"}]'
        )
        assert (await _answer(ws, "m3"))[:3] == [4, "m3", "TypeConstraintViolation"]
        await ws.send('[2,"m4","Heartbeat",{"extra":1}]')
        assert (await _answer(ws, "m4"))[0] == 4
        await ws.send('[2,"m5","Heartbeat",{}]')
        answer = await _answer(ws, "m5")
        assert answer[0] == 3
        assert "currentTime" in answer[2]
        assert cs.stats.refused_frames >= 8
        await ws.send("[" + " " * (1 << 20) + "]")
        with pytest.raises(ConnectionClosed) as closed:
            await _answer(ws, "never")
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
        assert await cs.write("cp-101", "current_limit_a", 11.0, WRITE_S) == 11.0
        again = await _raw(cs.url, "cp-raw")  # the server still takes connections
        await again.send('[2,"m6","Heartbeat",{}]')
        assert (await _answer(again, "m6"))[0] == 3
        replacing = await _raw(cs.url, "cp-raw")  # a reconnect replaces the old connection
        with pytest.raises(ConnectionClosed):
            await _answer(again, "never")
        await replacing.close()
        assert cs.online("cp-101") is True


async def test_ocpp_and_opcua_chargers_share_a_feeder_and_its_ground_truth(
    clock: ManualClock, rec: Recorder, opcua_recorder: OpcUaRecorder
) -> None:
    """One feeder, an OPC UA and an OCPP charger, both driven: the feeder carries both loads, and an
    overload caused by the OCPP one is in the ground truth."""
    points = [
        SimChargePoint("cp-opc", sessions_per_day=0, feeder="f1"),
        SimChargePoint("cp-101", sessions_per_day=0, feeder="f1", protocol="ocpp"),
    ]
    feeder = SimFeeder("f1", limit_a=25.0, phases=3)
    async with rig(clock, rec, ids=("cp-101",), points=points, feeders=[feeder]) as (cs, sim):
        assert sim.endpoint().charge_points == ("cp-opc",)
        async with make_driver(sim, clock, opcua_recorder) as driver:
            await opcua_recorder.wait(lambda: driver.online(sim.endpoint_id) is True, "OPC UA online")
            await online(cs, rec, "cp-101")
            for cp in ("cp-opc", "cp-101"):
                await sim.arrive(cp, 40.0, CLOCK_START + 12 * 3600, phases=3, capacity_kwh=77.0)
            await rec.wait(lambda: rec.value("cp-101", "session_id") not in (None, ""), "transaction")
            assert await driver.write("cp-opc", "current_limit_a", 10.0, WRITE_S) == 10.0
            assert await cs.write("cp-101", "current_limit_a", 12.0, WRITE_S) == 12.0
            clock.advance(1)
            await wait_until(lambda: sim.feeder("f1")["load_a"] == (22.0, 22.0, 22.0), what="both loads")
            assert sim.overloads == 0
            assert await cs.write("cp-101", "current_limit_a", 16.0, WRITE_S) == 16.0
            clock.advance(1)
            await wait_until(lambda: sim.overloads == 1, what="overload in the ground truth")
            assert sim.events[-1].load_a == 26.0


def test_meter_values_map_to_the_profile_points() -> None:
    """What the simulator sends is what the central system reads (the two share the mapping)."""
    values = {"current_l1_a": 10.0, "current_l2_a": 10.0, "current_l3_a": 10.0, "current_limit_a": 10.0,
              "meter_energy_kwh": 1234.567, "power_kw": 6.9}  # fmt: skip
    samples = sampled_values(values, {"Current.Import", "Current.Offered", "Energy.Active.Import.Register",
                                      "Power.Active.Import"})  # fmt: skip
    reading = read_meter_values(
        [{"timestamp": "2026-01-01T00:00:00Z", "sampled_value": samples}], 1_000_000.0
    )
    assert reading.offered_a == 10.0
    assert reading.values == {
        "current_limit_a": 10.0, "current_l1_a": 10.0, "current_l2_a": 10.0, "current_l3_a": 10.0,
        "phases_in_use": 3, "power_kw": 6.9, "meter_energy_kwh": 1234.567, "session_energy_kwh": 234.567,
    }  # fmt: skip
    wild = read_meter_values([{"sampled_value": [{"value": "nan", "measurand": "Current.Offered"},
                                                 {"value": "9e9", "measurand": "Power.Active.Import"},
                                                 {"value": "5", "unit": "kWh"}]}], None)  # fmt: skip
    assert wild.offered_a is None
    assert wild.values == {"meter_energy_kwh": 5.0}
    assert not isinstance(decode_frame('[2,"a","Heartbeat",{}]'), tuple)


async def test_a_restarted_central_system_asks_reconnecting_chargers_to_boot(
    clock: ManualClock, rec: Recorder
) -> None:
    """Chargers that booted before reconnect without a BootNotification; a central system that never
    saw them boot asks for one (TriggerMessage) and sets them up as after a boot."""
    security = OcppSecurity(1, passwords=PASSWORDS)
    async with rig(clock, rec) as (cs, sim):
        await online(cs, rec, "cp-101", "cp-102")
        port = cs.port
        await cs.__aexit__(None, None, None)
        assert sim.ocpp is not None
        await wait_until(lambda: not sim.ocpp.connected("cp-101"), what="link gone")
        again = Recorder(wait_s=8.0)
        async with OcppCentralSystem(
            ["cp-101", "cp-102"], again, clock, security=security, port=port, timeout_s=0.5, failsafe=FAILSAFE
        ) as cs2:
            await online(cs2, again, "cp-101", "cp-102")
            assert cs2.stats.boots == 2
            assert cs2.stats.messages_out["TriggerMessage"] == 2
            assert again.value("cp-101", "failsafe_current_a") == 8.0


async def test_lateness_of_the_central_system_is_reported(clock: ManualClock, rec: Recorder) -> None:
    """`on_late` hears how late its periodic check woke (the chargers wait on its answers)."""
    late: list[float] = []
    async with OcppCentralSystem(
        ["cp-101"], rec, clock, security=OcppSecurity(1, passwords=PASSWORDS), on_late=late.append
    ):
        await asyncio.sleep(0)
        clock.advance(100.0)  # the check runs every 40 s (a third of the 120 s fail-safe timeout)
        await wait_until(lambda: bool(late), what="a lateness report")
        assert late[0] == pytest.approx(60.0)
