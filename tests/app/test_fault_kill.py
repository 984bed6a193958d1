"""kill -9 during bursts (issue 10 fault harness), on SQLite and on PostgreSQL.

The real daemon (`edge run`) runs as a process against a real broker and simulated lamp
controllers with failing lamps. Each cycle: faults change while it is down, it starts, its
open alarms must match the failing lamps once reconciled, a burst of API commands and fault
changes arrives, and it is SIGKILLed at a random point. After every kill: the database is
intact (`PRAGMA integrity_check` on SQLite), the audit, alarm and sample counts never went
down, at most one alarm row per (device, code) is open, and every message the outbox held at
the kill is delivered by the next daemon.

`EDGE_KILL_CYCLES` sets the cycles per database (10 by default, 30 with `EDGE_LONG_FAULTS=1`),
`EDGE_KILL_SEED` the random seed.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
import sqlalchemy
from harness import NIGHT, write_site
from tcp_proxy import TcpProxy

from devices.inventory import load_inventory
from edge.app.demo import sim_controllers
from edge.clock import SimClock
from edge.mqtt import BrokerAddress
from edge.settings import load_settings
from simulators.lighting import LightingSimulator

LONG = os.environ.get("EDGE_LONG_FAULTS") == "1"
CYCLES = int(os.environ.get("EDGE_KILL_CYCLES", "30" if LONG else "10"))
SEED = int(os.environ.get("EDGE_KILL_SEED", "10"))
WAIT_S = 30.0
COUNTED = ("command_audit", "alarm", "state_sample")


@dataclass
class Received:
    """Every message the observer got on the site's topics, with its arrival time."""

    messages: list[tuple[float, str, bytes]] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def since(self, t: float) -> set[tuple[str, bytes]]:
        return {(topic, payload) for ts, topic, payload in self.messages if ts >= t}


async def _observe(client: aiomqtt.Client, rec: Received) -> None:
    async for msg in client.messages:
        payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload).encode()
        rec.messages.append((time.monotonic(), str(msg.topic), payload))
        rec.event.set()


async def _until(cond: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not cond():  # noqa: ASYNC110 - database rows and a subprocess have no event for us
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


class Db:
    """Read-only checks on the daemon's database between and during runs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = sqlalchemy.create_engine(url)

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {
                t: int(conn.execute(sqlalchemy.text(f"SELECT count(*) FROM {t}")).scalar_one())
                for t in COUNTED
            }

    def open_alarms(self) -> set[tuple[str, str]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text("SELECT device_id, code FROM alarm WHERE cleared_at IS NULL"))
            return {(str(d), str(c)) for d, c in rows}

    def duplicate_open(self) -> list[tuple[str, str, int]]:
        with self.engine.connect() as conn:
            rows: Any = conn.execute(
                sqlalchemy.text(
                    "SELECT device_id, code, count(*) FROM alarm WHERE cleared_at IS NULL"
                    " GROUP BY device_id, code HAVING count(*) > 1"
                )
            )
            return [(str(d), str(c), int(n)) for d, c, n in rows]

    def outbox(self) -> set[tuple[str, bytes]]:
        with self.engine.connect() as conn:
            rows: Any = conn.execute(
                sqlalchemy.text("SELECT topic, payload FROM edge_outbox WHERE response_topic IS NULL")
            )
            return {(str(t), bytes(p)) for t, p in rows}

    def integrity(self) -> str:
        if not self.url.startswith("sqlite"):
            return "ok"  # PostgreSQL: crash safety is the server's; the checks below still run
        conn = sqlite3.connect(self.url.removeprefix("sqlite:///"))
        try:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
        finally:
            conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def kill_db(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kill.db'}"
    if not database_url.startswith("postgresql"):
        pytest.skip("needs PostgreSQL (EDGE_TEST_DATABASE_URL)")
    return database_url


class DaemonProcess:
    """`edge run` as a child process; stdout and stderr go to a file per start."""

    def __init__(self, cfg: Path, logs: Path) -> None:
        self.cfg, self.logs = cfg, logs
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        env = {
            **os.environ,
            "EDGE_LOGGING__FORMAT": "json",
            "EDGE_LOGGING__LEVEL": "warning",
            "EDGE_STORAGE__HISTORY_INTERVAL_S": "0.5",
        }
        with (self.logs / f"daemon-{self.starts}.log").open("wb") as fh:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edge.app.cli", "run", "--config", str(self.cfg),
                stdout=fh, stderr=asyncio.subprocess.STDOUT, env=env,
            )  # fmt: skip

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            return await self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


@pytest.fixture
async def observer(mqtt_url: str) -> AsyncIterator[aiomqtt.Client]:
    async with BrokerAddress.parse(mqtt_url).client("kill-observer", timeout_s=10, pending=10_000) as client:
        yield client


# The embedded broker (amqtt, used when no EDGE_TEST_MQTT_URL is set) leaves the sockets of a
# SIGKILLed client to the garbage collector; that is the broker's leak, not the daemon's (the
# daemon is a separate process here), so only its unraisable ResourceWarnings are let through.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_kill_9_during_bursts(
    tmp_path: Path, mqtt_url: str, kill_db: str, observer: aiomqtt.Client
) -> None:
    """CYCLES kill -9 restarts during bursts keep the database intact and monotonic, one open alarm
    row per (device, code), the open alarms equal to the failing lamps, and the outbox resuming."""
    site_id = "kill" + uuid.uuid4().hex[:8]
    broker = BrokerAddress.parse(mqtt_url)
    # The daemon reaches the broker through a proxy the test cuts in every other burst, so the
    # outbox holds messages at the kill; the observer connects directly.
    link = TcpProxy(broker.host, broker.port)
    proxied = f"mqtt://127.0.0.1:{link.port}"
    cfg = write_site(tmp_path, site_id=site_id, mqtt_url=proxied, db_url=kill_db)
    settings = load_settings(cfg)
    inv = load_inventory(settings.inventory_path())
    base = f"{settings.mqtt.topic_prefix}/{site_id}"
    lamps = sorted(inv.lamps)
    rng = random.Random(SEED)
    db = Db(kill_db)
    daemon = DaemonProcess(cfg, tmp_path)
    rec = Received()
    failing: set[str] = set()
    passed, held_at_kill, delivered = 0, 0, 0
    prev = dict.fromkeys(COUNTED, 0)
    async with (
        link,
        LightingSimulator(sim_controllers(inv, watchdog_s=300), SimClock(NIGHT), seed=1) as sim,
        asyncio.TaskGroup() as tg,
    ):
        await observer.subscribe(f"{base}/#", qos=1)
        watcher = tg.create_task(_observe(observer, rec), name="kill.observer")

        def toggle(n: int) -> None:
            for lamp in rng.sample(lamps, n):
                if lamp in failing:
                    sim.clear(lamp, "lamp_failure")
                    failing.discard(lamp)
                else:
                    sim.inject(lamp, "lamp_failure")
                    failing.add(lamp)

        def online_since(t: float) -> bool:
            return any(
                ts >= t and topic == f"{base}/status" and b'"online":true' in payload.replace(b" ", b"")
                for ts, topic, payload in rec.messages
            )

        pending: set[tuple[str, bytes]] = set()
        killed_at = 0.0
        try:
            for cycle in range(CYCLES + 1):
                toggle(3)  # faults change while the daemon is down
                await link.restore()
                started = time.monotonic()
                await daemon.start()
                await _until(lambda t=started: online_since(t), f"cycle {cycle}: the daemon online")  # type: ignore[misc]
                # The outbox resumes: what it held at the kill reaches the broker now.
                await _until(
                    lambda p=pending, k=killed_at: p <= rec.since(k),  # type: ignore[misc]
                    f"cycle {cycle}: the outbox delivered",
                )
                delivered += len(pending)
                want = {(lamp, "lamp_failure") for lamp in failing}
                await _until(
                    lambda w=want: {a for a in db.open_alarms() if a[0] in inv.lamps} == w,  # type: ignore[misc]
                    f"cycle {cycle}: open alarms == failing lamps {sorted(failing)}",
                )
                if cycle == CYCLES:
                    break
                # A burst: operator commands (audited, answered on acks) while faults change;
                # in odd cycles the daemon has lost the broker, so its outbox fills.
                if cycle % 2:
                    await link.cut()
                for i in range(40):
                    body = {
                        "action": "set_level",
                        "level": rng.choice([20, 40, 60, 80, 100]),
                        "reason": f"b{i}",
                    }
                    await observer.publish(
                        f"{base}/cmd/lights/{rng.choice(lamps)}", orjson.dumps(body), qos=1
                    )
                    if i % 10 == 5:
                        toggle(1)
                await asyncio.sleep(rng.uniform(0.05, 1.5))  # the random kill point
                await daemon.kill()
                killed_at = time.monotonic()
                pending = db.outbox()
                held_at_kill += len(pending)
                assert db.integrity() == "ok", f"cycle {cycle}: integrity"
                counts = db.counts()
                assert all(counts[t] >= prev[t] for t in COUNTED), f"cycle {cycle}: {prev} -> {counts}"
                prev = counts
                assert db.duplicate_open() == [], f"cycle {cycle}: duplicate open alarm rows"
                passed += 1
            # The retained alarms/active topics follow the table (clears of reconciled alarms may
            # still be on their way through the outbox: wait for them, bounded).
            final_open = {a for a in db.open_alarms() if a[0] in inv.lamps}
            retained = await _retained_alarms(mqtt_url, base)
            try:
                async with asyncio.timeout(WAIT_S):
                    while {a for a in retained if a[0] in inv.lamps} != final_open:
                        retained = await _retained_alarms(mqtt_url, base)
            except TimeoutError:
                pytest.fail(f"retained alarm topics {sorted(retained)} != open rows {sorted(final_open)}")
            assert await daemon.stop() == 0
        finally:
            await daemon.kill()
            watcher.cancel()
    db.engine.dispose()
    print(
        f"\nkill -9 on {kill_db.split(':', maxsplit=1)[0]}: cycles passed {passed}/{CYCLES}; open lamp alarm rows "
        f"{len(final_open)} for {len(failing)} failing lamps; outbox rows held at kills {held_at_kill}, "
        f"delivered after restart {delivered}; final counts {prev}"
    )
    assert passed == CYCLES
    assert final_open == {(lamp, "lamp_failure") for lamp in failing}


async def _retained_alarms(mqtt_url: str, base: str) -> set[tuple[str, str]]:
    """(device, code) of the retained alarms/active topics, as a new subscriber sees them."""
    prefix = f"{base}/alarms/active/"
    marker = f"{prefix}_end/{uuid.uuid4().hex}"
    found: set[tuple[str, str]] = set()
    async with BrokerAddress.parse(mqtt_url).client("kill-retained", timeout_s=10, pending=1000) as c:
        await c.subscribe(f"{prefix}#", qos=1)
        await c.publish(marker, b"", qos=1)
        async with asyncio.timeout(10):
            async for msg in c.messages:
                if str(msg.topic) == marker:
                    break
                if msg.payload:
                    device, _, code = str(msg.topic).removeprefix(prefix).rpartition("/")
                    found.add((device, code))
    return found
