"""pytest plugin: a real charging simulator over OPC UA/TCP, a driver on it, certificates.

Registered in tests/conftest.py (`pytest_plugins`; tests/ is on sys.path, see pyproject.toml).

Fixtures:
- `charging_clock`: a ManualClock shared by simulator and driver (time moves when told).
- `opcua_recorder`: collects published events and waits for conditions with a timeout.
- `opcua_certs`: self-signed server and client certificates (session-wide, in a tmp dir).
- `charging_sim`: 3 charge points (cp-001..cp-003; cp-003 single-phase), no security.
- `charging_driver`: an OpcUaChargingDriver on `charging_sim` (NoSecurity allowed), online.
- `secure_charging_sim`: the same charge points, Basic256Sha256 SignAndEncrypt only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from waiting import Recorder

from devices.charging import ClientSecurity, OpcUaChargingDriver, OpcUaEndpoint
from edge.clock import ManualClock
from simulators.charging import ChargingSimulator, ServerSecurity, SimChargePoint, make_test_certificates

CLOCK_START = 1_795_000_000.0  # a fixed epoch so runs are repeatable
WAIT_S = 5.0


OpcUaRecorder = Recorder  # shared: tests/waiting.py


def sim_charge_points() -> list[SimChargePoint]:
    """Three posts without random arrivals (tests force cars): two three-phase, one single-phase."""
    return [
        SimChargePoint("cp-001", sessions_per_day=0),
        SimChargePoint("cp-002", sessions_per_day=0, watchdog_s=60.0, failsafe_current_a=6.0),
        SimChargePoint("cp-003", phases=1, sessions_per_day=0),
    ]


@pytest.fixture
def charging_clock() -> ManualClock:
    """A clock that moves only when the test advances it."""
    return ManualClock(CLOCK_START)


@pytest.fixture
def opcua_recorder() -> OpcUaRecorder:
    """Collects the driver's events."""
    return OpcUaRecorder(wait_s=WAIT_S)


@pytest.fixture(scope="session")
def opcua_certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """(server_cert, server_key, client_cert, client_key), generated once per run."""
    return make_test_certificates(tmp_path_factory.mktemp("opcua_certs"))


@pytest_asyncio.fixture
async def charging_sim(charging_clock: ManualClock) -> AsyncIterator[ChargingSimulator]:
    """Three charge points on a free local port, NoSecurity."""
    async with ChargingSimulator(sim_charge_points(), charging_clock, seed=1) as sim:
        yield sim


def make_driver(
    sim: ChargingSimulator,
    clock: ManualClock,
    recorder: OpcUaRecorder,
    *,
    security: ClientSecurity | None = None,
    failsafe: dict[str, float] | None = None,
    endpoints: list[OpcUaEndpoint] | None = None,
) -> OpcUaChargingDriver:
    """A driver with short timeouts and backoff, fast publishing, on `sim` (or on `endpoints`)."""
    return OpcUaChargingDriver(
        endpoints or [sim.endpoint()],
        None,
        recorder,
        clock,
        security=security,
        allow_no_security=security is None,
        timeout_s=0.5,
        backoff_max_s=0.2,
        backoff_base_s=0.02,
        publishing_interval_ms=20,
        failsafe=failsafe,
    )


@pytest_asyncio.fixture
async def charging_driver(
    charging_sim: ChargingSimulator, charging_clock: ManualClock, opcua_recorder: OpcUaRecorder
) -> AsyncIterator[OpcUaChargingDriver]:
    """A driver on `charging_sim`, already online."""
    async with make_driver(charging_sim, charging_clock, opcua_recorder) as driver:
        await opcua_recorder.wait(lambda: driver.online(charging_sim.endpoint_id) is True, "driver online")
        yield driver


@pytest_asyncio.fixture
async def secure_charging_sim(
    charging_clock: ManualClock,
    opcua_certs: tuple[Path, Path, Path, Path],
) -> AsyncIterator[ChargingSimulator]:
    """The same charge points, offering Basic256Sha256 SignAndEncrypt only; trusts our client cert."""
    server_cert, server_key, client_cert, _ = opcua_certs
    security = ServerSecurity(server_cert, server_key, trusted_client_certs=(client_cert,))
    async with ChargingSimulator(sim_charge_points(), charging_clock, seed=1, security=security) as sim:
        yield sim
