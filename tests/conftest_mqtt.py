"""pytest plugin: MQTT brokers and databases for integration tests (the task-leak check is in conftest.py).

Registered in tests/conftest.py (`pytest_plugins`; tests/ is on sys.path, see pyproject.toml).

Fixtures:
- `mqtt_url`: the shared broker from `EDGE_TEST_MQTT_URL` (CI: Mosquitto), else an
  embedded amqtt broker of the test's own on a free port.
- `private_broker`: a broker only this test uses, which it may `stop()` and `start()`
  on the same port: Mosquitto when the binary is present, amqtt otherwise
  (`EDGE_TEST_PRIVATE_BROKER=embedded|mosquitto` forces one). The shared broker is
  never stopped.
- `persistent_broker`: like `private_broker`, but Mosquitto with persistence (sessions and
  queued QoS 1 messages survive a restart); skipped where only the embedded broker runs.
- `database_url`: `EDGE_TEST_DATABASE_URL` (PostgreSQL) with a fresh schema per test,
  dropped afterwards, else a SQLite file in `tmp_path`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Protocol

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

from edge.broker import BrokerProcess, EmbeddedBroker
from edge.net import free_port

MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
BROKER_START_TIMEOUT_S = 10.0


class PrivateBroker(Protocol):
    """A broker a test owns: stoppable and restartable on the same port."""

    @property
    def url(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def kind(self) -> str: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class MosquittoProcess:
    """A `mosquitto` child process with a config of its own (anonymous; no persistence unless asked)."""

    kind = "mosquitto"

    def __init__(
        self, binary: str, workdir: Path, host: str = "127.0.0.1", *, persistence: bool = False
    ) -> None:
        self._binary = binary
        self._host = host
        self._port = free_port(host)
        self._conf = workdir / "mosquitto.conf"
        # persistence: sessions, subscriptions and queued QoS 1 messages survive a stop/start
        # (mosquitto writes its database on SIGTERM), as on a production broker
        store = (
            f"persistence true\npersistence_location {workdir}/\n" if persistence else "persistence false\n"
        )
        if persistence and os.geteuid() == 0:
            # started as root, mosquitto drops to the `mosquitto` user, which cannot write
            # into a test's private tmp_path; stay the user who started it
            store += "user root\n"
        self._conf.write_text(f"listener {self._port} {host}\nallow_anonymous true\n{store}log_dest none\n")
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        """Start and wait until the port accepts connections."""
        if self._proc is not None:
            raise RuntimeError("mosquitto already running")
        self._proc = await asyncio.create_subprocess_exec(
            self._binary,
            "-c",
            str(self._conf),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(BROKER_START_TIMEOUT_S):
            while True:
                if self._proc.returncode is not None:
                    raise RuntimeError(f"mosquitto exited with {self._proc.returncode}")
                try:
                    _, writer = await asyncio.open_connection(self._host, self._port)
                except OSError:
                    await asyncio.sleep(0.02)  # polling a port that is not open yet
                    continue
                writer.close()
                await writer.wait_closed()
                return

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; client sockets are closed either way."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


class EmbeddedPrivateBroker:
    """`EmbeddedBroker` on a fixed free port, behind the `PrivateBroker` protocol."""

    kind = "embedded"

    def __init__(self) -> None:
        self._broker = EmbeddedBroker(port=0)

    @property
    def url(self) -> str:
        return self._broker.url

    @property
    def port(self) -> int:
        return self._broker.port

    async def start(self) -> None:
        await self._broker.start()

    async def stop(self) -> None:
        await self._broker.stop()


def _mosquitto_binary() -> str | None:
    for candidate in MOSQUITTO_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


@pytest.fixture
async def mqtt_url() -> AsyncIterator[str]:
    """URL of a running broker the test may share with others (never stopped by tests)."""
    shared = os.environ.get("EDGE_TEST_MQTT_URL")
    if shared:
        yield shared
        return
    async with EmbeddedBroker(port=0) as broker:
        yield broker.url
    _collect_embedded_leftovers()


@pytest.fixture
async def mqtt_url_elsewhere() -> AsyncIterator[str]:
    """`mqtt_url`, but never on the test's own event loop: the shared broker, or the embedded
    one in a child process (for a test that holds its loop busy on purpose)."""
    async with contextlib.AsyncExitStack() as stack:
        shared = os.environ.get("EDGE_TEST_MQTT_URL")
        yield shared or (await stack.enter_async_context(BrokerProcess())).url


def _collect_embedded_leftovers() -> None:
    """Collect what the embedded broker left behind, while the loop still runs."""
    # amqtt can drop a client's stream without closing it when clients and broker stop
    # together; collect it here, while the loop still runs, instead of as a ResourceWarning
    # in whichever test the garbage collector happens to run next. Only the embedded broker's
    # own leftovers are collected this way: our code's leaks still fail the tests.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture
async def private_broker(tmp_path: Path) -> AsyncIterator[PrivateBroker]:
    """A started broker of this test's own; stop()/start() keep the port."""
    wanted = os.environ.get("EDGE_TEST_PRIVATE_BROKER", "")
    binary = _mosquitto_binary() if wanted != "embedded" else None
    if wanted == "mosquitto" and binary is None:
        pytest.fail("EDGE_TEST_PRIVATE_BROKER=mosquitto but no mosquitto binary found")
    broker: PrivateBroker = (
        MosquittoProcess(binary, tmp_path) if binary is not None else EmbeddedPrivateBroker()
    )
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


@pytest.fixture
async def persistent_broker(tmp_path: Path) -> AsyncIterator[PrivateBroker]:
    """A private Mosquitto that keeps sessions and queued messages across stop()/start().

    Skipped without the mosquitto binary: amqtt starts each run empty (no session survives
    a restart) and queues nothing for anonymous offline clients (see edge/broker.py).
    """
    binary = _mosquitto_binary()
    if binary is None or os.environ.get("EDGE_TEST_PRIVATE_BROKER") == "embedded":
        pytest.skip("needs mosquitto: the embedded broker keeps no session across a restart")
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    broker = MosquittoProcess(binary, workdir, persistence=True)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """A database of this test's own: a PostgreSQL schema or a SQLite file."""
    shared = os.environ.get("EDGE_TEST_DATABASE_URL")
    if not shared:
        yield f"sqlite:///{tmp_path / 'edge.db'}"
        return
    schema = f"test_{uuid.uuid4().hex[:16]}"
    admin = sqlalchemy.create_engine(shared)
    try:
        with admin.begin() as conn:
            conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{schema}"'))
        # libpq `options` puts every connection of the test in its own schema, so tables
        # are created there and parallel tests never see each other's rows.
        url = make_url(shared).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sqlalchemy.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
