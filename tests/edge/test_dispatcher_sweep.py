"""The dispatcher's reconcile sweep over many points: each one once per interval, paced.

The device side is a recording stand-in (as in test_dispatcher_safety.py): what matters is
which points the sweep re-writes, and when, not a protocol.
"""

from __future__ import annotations

import asyncio

from waiting import wait_until

from edge.bus import EventBus
from edge.clock import ManualClock
from edge.dispatcher import SWEEP_SHARE, Dispatcher, make_command
from edge.events import Command, Outcome, Priority, Telemetry
from edge.policy import DispatcherView, Verdict
from edge.state import StateStore
from edge.tasks import PACE_BATCH

NOON = 1_796_392_800.0
INTERVAL_S = 1.0


class _Accept:
    def check(self, cmd: Command, now: float, view: DispatcherView) -> Verdict:
        return Verdict(Outcome.ACCEPTED, cmd.value)


class _Recording:
    """Applies every write at once; remembers when each device was written (loop time)."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, float, float]] = []  # (device, value, loop time)

    def handles(self, device_id: str) -> bool:
        return True

    async def write(self, device_id: str, point: str, value: float, timeout: float) -> float:  # noqa: ASYNC109
        self.writes.append((device_id, value, asyncio.get_running_loop().time()))
        return value


async def test_the_reconcile_sweep_restores_every_drifted_point_spread_over_its_interval() -> None:
    """Every lamp of a controller that rebooted reports another level than its plan: each is
    written back within the interval, not all in one burst that a command would wait behind."""
    n = 8 * PACE_BATCH
    ids = [f"L{i:04d}" for i in range(n)]
    clock = ManualClock(NOON)
    bus = EventBus()
    state = StateStore(bus, dict.fromkeys(ids, "lamp"))
    dev = _Recording()
    async with Dispatcher(
        bus=bus, clock=clock, state=state, drivers=[dev], policies={"lamp": _Accept()}, audit=lambda _r: None,
        workers=64, reconcile_interval_s=INTERVAL_S,
    ) as disp:  # fmt: skip
        for i in ids:
            assert disp.submit(
                make_command(i, "level_cmd", 50, Priority.PLAN, "plan", now=NOON, ttl_s=3600)
            ).outcome
        await wait_until(lambda: len(dev.writes) == n and disp.pending() == 0, what="the plan written")
        planned = len(dev.writes)
        for i in ids:  # the controller rebooted: every lamp reads back its default
            state.apply(Telemetry(i, NOON, {"level_cmd": 100.0}))
        await wait_until(
            lambda: {d for d, _v, _t in dev.writes[planned:]} == set(ids),
            what="every drifted lamp written back",
            timeout_s=10 * INTERVAL_S,
        )
        again = dev.writes[planned:]
        assert all(v == 50 for _d, v, _t in again)
        first: dict[str, float] = {}
        for d, _v, t in again:
            first.setdefault(d, t)
        spread = max(first.values()) - min(first.values())
        # batches on a schedule over SWEEP_SHARE of the interval: the last one 7/8 of the way
        assert spread >= 0.5 * SWEEP_SHARE * INTERVAL_S, f"the sweep wrote {n} points in {spread:.3f} s"
