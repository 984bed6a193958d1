"""The dispatcher against the real simulator: priority layers, holds, TTL, read-back, reconcile, audit."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
from pymodbus.client import AsyncModbusTcpClient
from waiting import wait_until

from devices.lighting import ModbusLightingDriver
from devices.profiles.lighting import default_profile
from edge.bus import EventBus
from edge.clock import ManualClock
from edge.dispatcher import IN_FORCE, AuditRecord, Dispatcher
from edge.events import Command, CommandResult, Outcome, Priority
from edge.policy import DispatcherView, Verdict
from edge.state import StateStore
from simulators.lighting import LightingSimulator

LAMP = "lc-001-002"


class RangeOnly:
    """A minimal safety policy for these tests: 0..100, nothing else."""

    def check(self, cmd: Command, now: float, view: DispatcherView) -> Verdict:
        if not 0 <= cmd.value <= 100:
            return Verdict(Outcome.REFUSED, cmd.value, "out_of_range")
        return Verdict(Outcome.ACCEPTED, cmd.value)


@dataclass
class Rig:
    sim: LightingSimulator
    dispatcher: Dispatcher
    clock: ManualClock
    state: StateStore
    driver: ModbusLightingDriver
    audit: list[AuditRecord] = field(default_factory=list)
    results: list[CommandResult] = field(default_factory=list)

    def cmd(self, value: float, prio: Priority, *, hold_s: float | None = None, ttl_s: float = 30) -> Command:
        now = self.clock.now()
        cid = f"{prio.name.lower()}-{value:g}-{len(self.audit)}"
        hold = None if hold_s is None else now + hold_s
        return Command(cid, LAMP, "level_cmd", value, prio, prio.name.lower(), now, now + ttl_s, hold)

    def level(self) -> object:
        return self.sim.lamp(LAMP)["level_cmd"]


@pytest_asyncio.fixture
async def rig(
    lighting_sim: LightingSimulator, manual_clock: ManualClock, request: pytest.FixtureRequest
) -> AsyncIterator[Rig]:
    marker = request.node.get_closest_marker("reconcile_s")  # a test that must not race the reconcile
    reconcile_s = 0.05 if marker is None else float(marker.args[0])
    bus = EventBus()
    devices = {lamp_id: "lamp" for ep in lighting_sim.endpoints() for _, lamp_id in ep.lamps}
    state = StateStore(bus, devices)
    audit: list[AuditRecord] = []
    driver = ModbusLightingDriver(
        lighting_sim.endpoints(), default_profile(), bus.publish, manual_clock, poll_interval_s=0.02, timeout_s=0.3,
        backoff_max_s=0.1,
    )  # fmt: skip
    results_sub = bus.subscribe("test", CommandResult)
    async with (
        driver,
        Dispatcher(
            bus=bus, clock=manual_clock, state=state, drivers=[driver], policies={"lamp": RangeOnly()},
            audit=audit.append, write_timeout_s=0.5, workers=4, reconcile_interval_s=reconcile_s,
        ) as dispatcher,
        asyncio.TaskGroup() as tg,
    ):  # fmt: skip
        r = Rig(lighting_sim, dispatcher, manual_clock, state, driver, audit)

        async def collect() -> None:
            async for ev in results_sub:
                assert isinstance(ev, CommandResult)
                r.results.append(ev)

        tasks = [tg.create_task(state.run(), name="state"), tg.create_task(collect(), name="collect")]
        await wait_until(lambda: driver.online("lc-001") is True, what="driver online")
        yield r
        bus.close()
        for t in tasks:
            t.cancel()


async def test_confirmed_only_after_read_back(rig: Rig) -> None:
    """A write is reported confirmed with the value the device read back, and both steps are audited."""
    res = await rig.dispatcher.submit_and_wait(rig.cmd(35, Priority.PLAN), 3)
    assert res.outcome is Outcome.CONFIRMED
    assert res.applied_value == 35
    assert rig.level() == 35
    assert [a.outcome for a in rig.audit] == [Outcome.ACCEPTED, Outcome.CONFIRMED]


async def test_operator_override_wins_and_plan_resumes(rig: Rig) -> None:
    """Operator > plan: a plan change during an override waits; releasing the override applies it."""
    await rig.dispatcher.submit_and_wait(rig.cmd(50, Priority.PLAN), 3)
    assert (
        await rig.dispatcher.submit_and_wait(rig.cmd(100, Priority.OPERATOR), 3)
    ).outcome is Outcome.CONFIRMED
    held = await rig.dispatcher.submit_and_wait(rig.cmd(30, Priority.PLAN), 3)
    assert held.outcome is Outcome.SUPERSEDED
    assert "held by operator" in held.reason
    assert rig.level() == 100
    assert rig.dispatcher.release(LAMP, "level_cmd", Priority.OPERATOR, "test")
    await wait_until(lambda: rig.level() == 30, what="the plan's latest value after release")


async def test_hold_ends_on_the_clock(rig: Rig) -> None:
    """A motion (safety) hold of 60 s ends when the clock passes it; the plan level returns."""
    await rig.dispatcher.submit_and_wait(rig.cmd(40, Priority.PLAN), 3)
    await rig.dispatcher.submit_and_wait(rig.cmd(100, Priority.SAFETY, hold_s=60), 3)
    assert rig.level() == 100
    rig.clock.advance(30)
    eff = rig.dispatcher.effective(LAMP, "level_cmd")
    assert eff is not None
    assert eff.priority is Priority.SAFETY  # still held halfway through
    assert rig.level() == 100
    rig.clock.advance(31)
    await wait_until(lambda: rig.level() == 40, what="plan level after the hold")


async def test_refused_command_never_reaches_the_device(rig: Rig) -> None:
    before = rig.level()
    res = await rig.dispatcher.submit_and_wait(rig.cmd(180, Priority.OPERATOR), 3)
    assert res.outcome is Outcome.REFUSED
    assert res.reason == "out_of_range"
    assert rig.level() == before
    assert [a.outcome for a in rig.audit] == [Outcome.REFUSED]
    unknown = Command("u1", "nope", "level_cmd", 50, Priority.PLAN, "plan", 0, rig.clock.now() + 9)
    assert rig.dispatcher.submit(unknown).reason == "unknown_device"


async def test_command_expires_when_the_controller_is_silent(rig: Rig) -> None:
    """While the controller does not answer, writes fail and retry; past its TTL the command expires."""
    rig.sim.inject("lc-001", "comm_loss")
    cmd = rig.cmd(60, Priority.OPERATOR, ttl_s=10)
    rig.dispatcher.submit(cmd)
    await wait_until(
        lambda: any(r.command.id == cmd.id and r.outcome is Outcome.FAILED for r in rig.results),
        what="a failed try",
    )
    rig.clock.advance(11)
    await wait_until(
        lambda: any(r.command.id == cmd.id and r.outcome is Outcome.EXPIRED for r in rig.results),
        what="expiry",
    )
    rig.sim.clear("lc-001", "comm_loss")
    assert any(a.command.id == cmd.id and a.outcome is Outcome.EXPIRED for a in rig.audit)


async def test_a_retry_failing_as_before_is_counted_not_recorded_again(rig: Rig) -> None:
    """A command to a silent controller is retried until its TTL; a failure is audited and
    published when its reason changes, the repeats only counted (no audit row a second per point)."""
    rig.sim.inject("lc-001", "comm_loss")
    cmd = rig.cmd(60, Priority.OPERATOR, ttl_s=10)
    rig.dispatcher.submit(cmd)
    await wait_until(lambda: rig.dispatcher.stats.repeated_failures >= 3, what="three repeated failures")
    rig.clock.advance(11)
    await wait_until(
        lambda: any(r.command.id == cmd.id and r.outcome is Outcome.EXPIRED for r in rig.results),
        what="expiry",
    )
    rig.sim.clear("lc-001", "comm_loss")
    failed = [a.reason for a in rig.audit if a.command.id == cmd.id and a.outcome is Outcome.FAILED]
    assert failed
    assert all(a != b for a, b in itertools.pairwise(failed))  # a repeat is never a second row
    published = [r.reason for r in rig.results if r.command.id == cmd.id and r.outcome is Outcome.FAILED]
    assert published == failed


async def test_reconcile_restores_a_value_changed_behind_our_back(rig: Rig) -> None:
    """Someone else writes the register (a local panel, a controller reboot): the winning command is re-applied."""
    await rig.dispatcher.submit_and_wait(rig.cmd(45, Priority.PLAN), 3)
    ep = next(e for e in rig.sim.endpoints() if e.endpoint_id == "lc-001")
    idx = next(i for i, d in ep.lamps if d == LAMP)
    address = default_profile().lamp_address(idx, "level_cmd")
    client = AsyncModbusTcpClient(ep.host, port=ep.port)
    await client.connect()
    try:
        await client.write_register(address, 100, device_id=ep.unit)
    finally:
        client.close()
    await wait_until(lambda: rig.level() == 45, what="reconcile back to 45")


async def test_repeated_reconciles_keep_the_command_id_short(rig: Rig) -> None:
    """A device that keeps drifting is re-written again and again under an id of bounded length
    (each re-write used to append to the last one's id, past the audit's 64 characters)."""
    await rig.dispatcher.submit_and_wait(rig.cmd(45, Priority.PLAN), 3)
    ep = next(e for e in rig.sim.endpoints() if e.endpoint_id == "lc-001")
    idx = next(i for i, d in ep.lamps if d == LAMP)
    address = default_profile().lamp_address(idx, "level_cmd")
    client = AsyncModbusTcpClient(ep.host, port=ep.port)
    await client.connect()
    try:
        for n in range(12):
            await client.write_register(address, 100, device_id=ep.unit)
            await wait_until(
                lambda n=n: sum(a.command.reason == "reconcile" for a in rig.audit) > n and rig.level() == 45,
                what=f"reconcile {n + 1} back to 45",
            )
    finally:
        client.close()
    ids = [a.command.id for a in rig.audit if a.command.reason == "reconcile"]
    assert len(set(ids)) >= 12
    assert max(len(i) for i in ids) <= 64
    assert all(i.count(".r") == 1 for i in ids)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
async def test_non_finite_values_are_refused(rig: Rig, value: float) -> None:
    assert rig.dispatcher.submit(rig.cmd(value, Priority.OPERATOR)).reason == "value_not_finite"


async def test_an_operator_command_does_not_queue_behind_a_plan_step(
    rig: Rig, lighting_sim: LightingSimulator
) -> None:
    """Plan writes to every other lamp are queued first; the operator's write still goes out
    among the first the four workers take, not after the plan step."""
    now = rig.clock.now()
    others = [lamp for ep in lighting_sim.endpoints() for _, lamp in ep.lamps if lamp != LAMP]
    for i, lamp in enumerate(others):
        rig.dispatcher.submit(
            Command(f"plan-{i}", lamp, "level_cmd", 40, Priority.PLAN, "plan", now, now + 30)
        )
    op = Command("op-1", LAMP, "level_cmd", 70, Priority.OPERATOR, "operator", now, now + 30)
    res = await rig.dispatcher.submit_and_wait(op, 5)
    assert res.outcome is Outcome.CONFIRMED
    await wait_until(lambda: len([r for r in rig.results if r.outcome is Outcome.CONFIRMED]) == len(others) + 1,
                     what="every write confirmed")  # fmt: skip
    order = [r.command.id for r in rig.results if r.outcome is Outcome.CONFIRMED]
    assert len(others) >= 7
    assert order.index("op-1") < 4, order


async def test_plan_writes_leave_a_worker_for_operators(rig: Rig, lighting_sim: LightingSimulator) -> None:
    """Plan writes wait for a controller that is down and would hold every worker; an eighth of
    the workers (here one of four) never takes a plan write, so an operator's command is written
    at once, even on a lamp whose own plan write waits in the queue."""
    rig.sim.inject("lc-002", "comm_loss")
    await wait_until(lambda: rig.driver.online("lc-002") is False, what="lc-002 down")
    down = [lamp for ep in lighting_sim.endpoints() if ep.endpoint_id == "lc-002" for _, lamp in ep.lamps]
    async with Dispatcher(
        bus=EventBus(), clock=rig.clock, state=rig.state, drivers=[rig.driver], policies={"lamp": RangeOnly()},
        audit=[].append, write_timeout_s=60, workers=4,
    ) as dispatcher:  # fmt: skip
        now = rig.clock.now()
        plans = [
            asyncio.create_task(dispatcher.submit_and_wait(
                Command(f"plan-{i}", lamp, "level_cmd", 40, Priority.PLAN, "plan", now, now + 600), 120
            ))
            for i, lamp in enumerate(down)
        ]  # fmt: skip
        await wait_until(lambda: dispatcher.stats.sent == 3, what="three plan writes waiting for lc-002")
        dispatcher.submit(Command("plan-up", LAMP, "level_cmd", 40, Priority.PLAN, "plan", now, now + 600))
        assert dispatcher.pending() == 2  # lc-002's fourth lamp and LAMP, both waiting for a slot
        op = Command("op-1", LAMP, "level_cmd", 70, Priority.OPERATOR, "operator", now, now + 30)
        res = await dispatcher.submit_and_wait(op, 10)
        assert (res.outcome, res.applied_value) == (Outcome.CONFIRMED, 70)
        assert rig.level() == 70
        assert not any(t.done() for t in plans)  # still waiting for lc-002, holding three workers
        rig.sim.clear("lc-002", "comm_loss")
        results = await asyncio.gather(*plans)
        assert [r.outcome for r in results] == [Outcome.CONFIRMED] * len(down)
        assert dispatcher.effective(LAMP, "level_cmd") == op  # the plan write under it stays below


async def test_a_command_for_the_value_the_device_reports_is_confirmed_without_a_write(rig: Rig) -> None:
    """A lease refresh or a plan re-sent unchanged: the device reports the value, so nothing is
    written; the command is confirmed and audited as in force already."""
    await rig.dispatcher.submit_and_wait(rig.cmd(45, Priority.PLAN), 3)
    await wait_until(lambda: rig.state.value(LAMP, "level_cmd") == 45, what="the poll reports 45")
    writes = rig.driver.stats.write_batches  # lamp writes (heartbeats go on their own)
    again = rig.cmd(45, Priority.PLAN)
    res = await rig.dispatcher.submit_and_wait(again, 3)
    assert (res.outcome, res.applied_value, res.reason) == (Outcome.CONFIRMED, 45, IN_FORCE)
    assert rig.driver.stats.write_batches == writes
    assert rig.dispatcher.stats.unchanged == 1
    assert [(a.outcome, a.reason) for a in rig.audit if a.command.id == again.id][-1] == (
        Outcome.CONFIRMED,
        IN_FORCE,
    )
    assert rig.dispatcher.effective(LAMP, "level_cmd") == again


@pytest.mark.reconcile_s(3600)
async def test_a_device_that_drifted_is_written_even_for_the_value_last_confirmed(rig: Rig) -> None:
    """The device reports another value than the one last confirmed (a reboot, a local panel):
    the same value sent again is written, not taken as in force."""
    await rig.dispatcher.submit_and_wait(rig.cmd(45, Priority.PLAN), 3)
    ep = next(e for e in rig.sim.endpoints() if e.endpoint_id == "lc-001")
    idx = next(i for i, d in ep.lamps if d == LAMP)
    client = AsyncModbusTcpClient(ep.host, port=ep.port)
    await client.connect()
    try:
        await client.write_register(default_profile().lamp_address(idx, "level_cmd"), 100, device_id=ep.unit)
    finally:
        client.close()
    await wait_until(lambda: rig.state.value(LAMP, "level_cmd") == 100, what="the poll reports 100")
    writes = rig.driver.stats.write_batches  # lamp writes (heartbeats go on their own)
    res = await rig.dispatcher.submit_and_wait(rig.cmd(45, Priority.PLAN), 3)
    assert (res.outcome, res.applied_value) == (Outcome.CONFIRMED, 45)
    assert res.reason != IN_FORCE
    assert rig.driver.stats.write_batches == writes + 1
    assert rig.level() == 45
