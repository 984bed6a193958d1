"""The Modbus link's connection handling, on a real simulator over TCP: a write to a device
still reported online finds its connection again, and a failure on a connection that was
already replaced does not close the new one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException

from devices.profiles.lighting import default_profile
from devices.protocols.link import LinkTiming
from devices.protocols.modbus import PRIO_COMMAND, ModbusSession
from edge.errors import DeviceUnavailable
from simulators.lighting import LightingSimulator

WAIT_S = 5.0
HEARTBEAT = default_profile().controller_address("heartbeat")  # a register every controller serves


@pytest_asyncio.fixture
async def session(lighting_sim: LightingSimulator) -> AsyncIterator[ModbusSession]:
    """A session to lc-001 whose link loop polls once a minute (so only a writer reconnects)."""
    ep = lighting_sim.endpoints()[0]
    timing = LinkTiming(timeout_s=2.0, backoff_base_s=0.02, backoff_max_s=0.1)
    s = ModbusSession(ep.endpoint_id, ep.host, ep.port, ep.unit, timing)
    states: list[bool] = []
    up = asyncio.Event()

    def on_state(online: bool, _reason: str) -> None:
        states.append(online)
        if online:
            up.set()

    async def poll() -> None:
        await s.read(HEARTBEAT, 1, PRIO_COMMAND, 2.0)

    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(s.run(poll, 60.0, on_state), name="link")
        async with asyncio.timeout(WAIT_S):
            await up.wait()  # the first poll answered: the link loop now idles for a minute
        yield s
        task.cancel()
    s.drop()
    assert False not in states  # the device was never reported down


async def _read_one(client: AsyncModbusTcpClient, s: ModbusSession) -> int:
    return (await s.read_regs(client, HEARTBEAT, 1))[0]


async def test_a_write_reopens_a_dropped_connection_and_goes_through(session: ModbusSession) -> None:
    """A request timed out in flight and dropped the connection; the device is still online.
    A write waits for the link to reconnect (now, not at the next poll a minute away)."""
    session.drop()
    got = await session.call(PRIO_COMMAND, WAIT_S, lambda c: _read_one(c, session), await_link=True)
    assert isinstance(got, int)
    assert session.client is not None
    assert session.connected.is_set()


async def test_without_waiting_for_the_link_a_dropped_connection_fails_at_once(
    session: ModbusSession,
) -> None:
    """A poll does not wait: its link loop reconnects on its own schedule."""
    session.drop()
    with pytest.raises(DeviceUnavailable, match="not connected"):
        await session.call(PRIO_COMMAND, WAIT_S, lambda c: _read_one(c, session))


async def test_a_failure_on_a_replaced_connection_keeps_the_new_one(session: ModbusSession) -> None:
    """A request fails on a connection that was meanwhile replaced (a writer reconnected):
    the error is reported, and the fresh connection stays open for the next request."""

    async def old_link_fails(client: AsyncModbusTcpClient) -> int:
        session.drop()
        await session.connect()  # what a writer's reconnect does meanwhile
        assert session.client is not client
        raise ConnectionException("connection reset by peer")

    with pytest.raises(DeviceUnavailable, match="reset by peer"):
        await session.call(PRIO_COMMAND, WAIT_S, old_link_fails)
    assert session.client is not None
    assert session.connected.is_set()
    assert isinstance(await session.call(PRIO_COMMAND, WAIT_S, lambda c: _read_one(c, session)), int)


async def test_a_device_gone_fails_the_write_within_its_timeout(
    session: ModbusSession, lighting_sim: LightingSimulator
) -> None:
    """The connection dropped and the device is gone: the write fails with DeviceUnavailable
    within its timeout instead of hanging, and the link loop does not hammer the port."""
    session.port = 1  # nothing listens there
    session.drop()
    before = session.counters.connect_errors
    with pytest.raises(DeviceUnavailable, match="not connected within"):
        await session.call(PRIO_COMMAND, 1.0, lambda c: _read_one(c, session), await_link=True)
    assert 1 <= session.counters.connect_errors - before <= 60  # backoff: not a busy loop
