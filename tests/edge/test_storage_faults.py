"""Storage faults (issue 10 fault harness): a poison row, and PostgreSQL unreachable and back.

PostgreSQL is taken away through a TCP proxy on 127.0.0.1 that the test cuts, so the shared
server keeps serving other tests. Short outage by default (a few seconds); `EDGE_LONG_FAULTS=1`
runs the 30 s outage of the issue. Asserts: every row submitted is in its table or in
dead_letter afterwards, the backlog bound holds, the storage alarms are raised and cleared.
"""

from __future__ import annotations

import asyncio
import os
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url
from tcp_proxy import TcpProxy

from edge.alarms import DAEMON_DEVICE, Alarms
from edge.bus import EventBus
from edge.clock import SimClock
from edge.events import AlarmEvent
from edge.records import AlarmRow, CommandAudit, PlanRow, StateSample
from edge.storage import Storage

LONG = os.environ.get("EDGE_LONG_FAULTS") == "1"
OUTAGE_S = 30.0 if LONG else 3.0
TICK_S = 0.01  # the producer adds a handful of rows every tick
WAIT_S = 60.0


def _require_postgres(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip(
            "needs PostgreSQL (EDGE_TEST_DATABASE_URL); the SQLite poison row is in tests/edge/test_storage.py"
        )


class Producer:
    """Adds rows of every kind and counts what it submitted, per table."""

    def __init__(self, st: Storage) -> None:
        self.st = st
        self.submitted: Counter[str] = Counter()
        self.n = 0

    def tick(self) -> None:
        self.n += 1
        n = self.n
        for k in range(5):
            self.st.add(StateSample(device_id=f"L{k}", ts=float(n), values={"level": n % 100}))
        self.st.add(
            CommandAudit(command_id=f"c{n}", device_id=f"L{n % 7}", point="level_cmd", requested=50,
                         priority="operator", source="t", outcome="accepted", ts=float(n))
        )  # fmt: skip
        self.st.add(AlarmRow(device_id=f"D{n}", code="lamp_failure", severity="major", raised_at=float(n)))
        self.submitted.update({"state_sample": 5, "command_audit": 1, "alarm": 1})
        if n % 10 == 0:
            self.st.add(PlanRow(domain="lighting", created_at=float(n), status="ok", body={"n": n}))
            self.st.clear_alarm(f"D{n - 5}", "lamp_failure", float(n))
            self.submitted["plan"] += 1

    async def run_for(self, seconds: float) -> None:
        """Tick every TICK_S for `seconds` of wall time (fewer ticks on a loaded machine)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.tick()
            await asyncio.sleep(TICK_S)  # pacing the load, not waiting for behaviour


async def _until(cond: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not cond():  # noqa: ASYNC110 - the writer task runs on its own
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def _counts(url: str) -> dict[str, int]:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                t: int(conn.execute(sqlalchemy.text(f"SELECT count(*) FROM {t}")).scalar_one())
                for t in ("state_sample", "command_audit", "alarm", "plan", "dead_letter")
            }
    finally:
        engine.dispose()


def _alarm_log(bus: EventBus) -> tuple[list[tuple[str, bool]], Callable[[], None]]:
    """(code, active) of the daemon's storage alarms as they are published."""
    sub = bus.subscribe("test", AlarmEvent)
    seen: list[tuple[str, bool]] = []

    def drain() -> None:
        while (ev := sub.get_nowait()) is not None:
            if isinstance(ev, AlarmEvent) and ev.device_id == DAEMON_DEVICE:
                seen.append((ev.code, ev.active))

    return seen, drain


async def test_postgres_outage_loses_nothing_and_alarms_rise_and_clear(database_url: str) -> None:
    """PostgreSQL unreachable for OUTAGE_S while rows keep coming, with a poison row among them:
    afterwards every row is in its table or in dead_letter, nothing was shed, the backlog stayed
    within its bound, and storage_unreachable and storage_dead_letter were raised and cleared."""
    _require_postgres(database_url)
    real = make_url(database_url)
    bus = EventBus()
    alarms = Alarms(bus, SimClock(0.0))
    seen, drain = _alarm_log(bus)
    bound = 50_000
    async with TcpProxy(real.host or "127.0.0.1", real.port or 5432) as proxy:
        url = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        async with Storage(
            url, flush_interval_s=0.05, retry_max_s=1.0, max_backlog=bound, dead_letter_hold_s=0.5,
            on_alarm=lambda code, active, sev, detail: alarms.set(DAEMON_DEVICE, code, active, sev, detail),
        ) as st:  # fmt: skip
            prod = Producer(st)
            await prod.run_for(0.5)
            await proxy.cut()
            if LONG:  # tracing every allocation slows the producer 2-3x: the long run measures it
                tracemalloc.start()
            base_mem = tracemalloc.get_traced_memory()[0]
            await prod.run_for(0.3)
            await _until(
                lambda: alarms.is_active(DAEMON_DEVICE, "storage_unreachable"), "storage_unreachable"
            )
            poison = CommandAudit(command_id="poison", device_id="p" * 80, point="level_cmd", requested=1,
                                  priority="operator", source="t", outcome="accepted", ts=0.0)  # fmt: skip
            st.add(poison)
            await prod.run_for(OUTAGE_S)
            mem_peak = max(0, tracemalloc.get_traced_memory()[1] - base_mem)
            tracemalloc.stop()
            backlog_in_outage = st.backlog
            await proxy.restore()
            await prod.run_for(0.5)
            await _until(lambda: st.backlog == 0 and st.unreachable_since is None, "the backlog to drain")
            await _until(
                lambda: not alarms.is_active(DAEMON_DEVICE, "storage_unreachable"), "the alarm to clear"
            )
            await _until(
                lambda: not alarms.is_active(DAEMON_DEVICE, "storage_dead_letter"), "dead-letter clear"
            )
            drain()
            peak, dead, shed = st.peak_backlog, st.dead_lettered, dict(st.shed)
    counts = _counts(database_url)
    print(
        f"\nstorage outage {OUTAGE_S:.0f}s: submitted={dict(prod.submitted)} stored={counts} "
        f"dead_letter={dead} shed={shed} peak_backlog={peak} backlog_in_outage={backlog_in_outage} "
        f"traced_peak_mb={mem_peak / 1e6:.1f}"
    )
    assert shed == {}
    assert counts["dead_letter"] == dead == 1
    assert {t: counts[t] for t in prod.submitted} == dict(prod.submitted), "rows were lost"
    assert backlog_in_outage > 0
    assert peak <= bound
    assert mem_peak < peak * 4000 + 20e6, "memory grew beyond what the queued rows explain"
    assert ("storage_unreachable", True) in seen
    assert seen.index(("storage_unreachable", False)) > seen.index(("storage_unreachable", True))
    assert seen.index(("storage_dead_letter", False)) > seen.index(("storage_dead_letter", True))


async def test_outage_beyond_the_bound_sheds_samples_only_and_counts_them(database_url: str) -> None:
    """With a small bound, an outage fills the backlog: state samples are shed and counted, audit,
    alarm and plan rows all arrive, and the backlog never exceeds its bound."""
    _require_postgres(database_url)
    real = make_url(database_url)
    bound = 1000
    async with TcpProxy(real.host or "127.0.0.1", real.port or 5432) as proxy:
        url = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        async with Storage(url, flush_interval_s=0.05, retry_max_s=0.5, max_backlog=bound) as st:
            prod = Producer(st)
            await proxy.cut()
            await prod.run_for(min(OUTAGE_S, 3.0))
            assert st.peak_backlog <= bound
            await proxy.restore()
            await _until(lambda: st.backlog == 0 and st.unreachable_since is None, "the backlog to drain")
            shed = dict(st.shed)
    counts = _counts(database_url)
    print(f"\nbounded outage: submitted={dict(prod.submitted)} stored={counts} shed={shed} bound={bound}")
    assert set(shed) == {"state_sample"}
    assert counts["state_sample"] + shed["state_sample"] == prod.submitted["state_sample"]
    for table in ("command_audit", "alarm", "plan"):
        assert counts[table] == prod.submitted[table]
