"""`edge run` as a process: starts on uvloop, serves the site, and shuts down cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiomqtt
import orjson
import pytest
from harness import NIGHT, write_site
from sqlalchemy.engine import make_url

from devices.inventory import load_inventory
from edge.app.demo import sim_controllers
from edge.clock import SimClock
from edge.net import free_port
from edge.settings import load_settings
from simulators.lighting import LightingSimulator


async def _status(client: aiomqtt.Client, topic: str, want: bool) -> dict[str, object]:
    async with asyncio.timeout(20):
        async for msg in client.messages:
            if str(msg.topic) == topic and msg.payload:
                st = orjson.loads(msg.payload)
                if st["online"] is want:
                    return dict(st)
    raise AssertionError("unreachable")


async def test_run_serves_and_stops_on_sigterm(tmp_path: Path, mqtt_url: str, database_url: str) -> None:
    """The daemon comes online on MQTT, and SIGTERM ends it with exit code 0, status offline, no traceback."""
    cfg = write_site(tmp_path, site_id="clirun" + os.urandom(3).hex(), mqtt_url=mqtt_url, db_url=database_url)
    settings = load_settings(cfg)
    inv = load_inventory(settings.inventory_path())
    host, port = mqtt_url.split("://")[1].split(":")
    topic = f"dos/v1/{settings.site.id}/status"
    env = {**os.environ, "EDGE_LOGGING__FORMAT": "json", "EDGE_LOGGING__LEVEL": "info"}
    async with (
        LightingSimulator(sim_controllers(inv), SimClock(NIGHT), seed=1),
        aiomqtt.Client(host, int(port), identifier=f"w-{settings.site.id}", timeout=10) as client,
    ):
        await client.subscribe(topic, qos=1)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge.app.cli", "run", "--config", str(cfg),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        try:
            online = await _status(client, topic, True)
            assert online["site"] == settings.site.id
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                _, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0
        text = err.decode()
        assert "Traceback" not in text
        assert '"event": "daemon_stopped"' in text
        offline = await _status(client, topic, False)
        assert offline["online"] is False


def test_bad_cli_arguments_exit_2() -> None:
    """Unknown commands and bad values are usage errors (exit 2) with a message, not a traceback."""
    r = subprocess.run(
        [sys.executable, "-m", "edge.app.cli", "demo", "--speed", "-3"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2
    assert "must be greater than 0" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "edge.app.cli", "run"], capture_output=True, text=True, check=False
    )
    assert r.returncode == 2
    assert "--config" in r.stderr


# -- one validation for check-config and run; start failures are one line, exit 2 ------------


def _edge(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge.app.cli", *args],
        capture_output=True, text=True, check=False, timeout=timeout_s, env={**os.environ, **(env or {})},
    )  # fmt: skip


def _assert_refused(r: subprocess.CompletedProcess[str], *words: str, max_lines: int = 3) -> None:
    """Exit 2, no traceback, a short message that names each of `words`."""
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr + r.stdout
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= max_lines, r.stderr
    for word in words:
        assert word in r.stderr, (word, r.stderr)


def _site(tmp_path: Path, *, db_url: str = "", chargers: bool = False) -> Path:
    cfg = write_site(
        tmp_path, site_id="v" + os.urandom(3).hex(), mqtt_url="mqtt://127.0.0.1:1883",
        db_url=db_url or f"sqlite:///{tmp_path / 'edge.db'}",
    )  # fmt: skip
    if chargers:
        inv = tmp_path / "inventory.csv"
        rows = inv.read_text().splitlines()
        rows[0] += ",kind,url,cabinet,feeder"
        rows[1:] = [r + ",lamp,,," for r in rows[1:]]
        # a charger row: only the columns a charger needs are filled
        header = rows[0].split(",")
        charger = dict.fromkeys(header, "")
        charger |= {"id": "cp-1", "lat": "51.51", "lon": "7.45", "controller": "srv1", "kind": "charger",
                    "url": "opc.tcp://127.0.0.1:4840", "cabinet": "c1", "feeder": "f1"}  # fmt: skip
        rows.append(",".join(charger[h] for h in header))
        inv.write_text("\n".join(rows) + "\n")
        with cfg.open("a") as fh:
            fh.write('[charging]\ncabinets = [{id = "c1", limit_a = 100}]\n')
            fh.write('feeders = [{id = "f1", cabinet = "c1", limit_a = 40}]\n')
    return cfg


def test_check_config_refuses_what_run_refuses(tmp_path: Path) -> None:
    """Charge points without OPC UA security and without allow_no_security: check-config and
    run both refuse with the same line naming the key (check-config said ok before)."""
    cfg = _site(tmp_path, chargers=True)
    check = _edge("check-config", str(cfg))
    _assert_refused(check, "charging.allow_no_security", str(cfg))
    run = _edge("run", "--config", str(cfg))
    _assert_refused(run, "charging.allow_no_security")
    assert check.stderr == run.stderr
    ok = _edge("check-config", str(cfg), env={"EDGE_CHARGING__ALLOW_NO_SECURITY": "true"})
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout


def test_quiet_lamps_reported_less_often_than_chargers_count_them_stale_are_refused(tmp_path: Path) -> None:
    """lighting.report_every_s at or above charging.stale_after_s would make quiet lamps count at
    full power on their feeders: check-config refuses it with one line naming both keys."""
    cfg = _site(tmp_path, chargers=True)
    env = {"EDGE_CHARGING__ALLOW_NO_SECURITY": "true", "EDGE_LIGHTING__REPORT_EVERY_S": "120"}
    check = _edge("check-config", str(cfg), env=env)
    _assert_refused(check, "lighting.report_every_s", "charging.stale_after_s")
    ok = _edge("check-config", str(cfg), env=env | {"EDGE_LIGHTING__REPORT_EVERY_S": "30"})
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("url", ["mqtt://127.0.0.1:99999", "mqtt://127.0.0.1:18x3", "http://127.0.0.1:1883"])
def test_run_with_a_bad_broker_url_is_one_line(tmp_path: Path, url: str) -> None:
    """A bad port (or scheme) in EDGE_MQTT__URL: exit 2 and one line naming the variable, not a
    60-line traceback."""
    r = _edge("run", "--config", str(_site(tmp_path)), env={"EDGE_MQTT__URL": url})
    _assert_refused(r, "EDGE_MQTT__URL", "mqtt.url")


def test_run_with_an_unreachable_broker_is_one_line(tmp_path: Path) -> None:
    """Nothing listens on the broker's port: exit 2, one line naming mqtt.url and the address."""
    port = free_port()
    r = _edge("run", "--config", str(_site(tmp_path)), env={"EDGE_MQTT__URL": f"mqtt://127.0.0.1:{port}"})
    _assert_refused(r, "mqtt.url", f"127.0.0.1:{port}", "unreachable")


def _missing_database(tmp_path: Path) -> list[tuple[str, str]]:
    """Database URLs that cannot be opened, with a word the error must contain."""
    urls = [
        ("sqlite:////proc/no-such-dir/edge.db", "/proc/no-such-dir/edge.db"),
        (f"postgresql+psycopg://edge@127.0.0.1:{free_port()}/edge?connect_timeout=2", "storage.url"),
    ]
    shared = os.environ.get("EDGE_TEST_DATABASE_URL")
    if shared:
        name = "no_such_db_" + os.urandom(4).hex()
        urls.append((make_url(shared).set(database=name).render_as_string(hide_password=False), name))
    return urls


async def test_run_with_a_missing_database_is_one_line(tmp_path: Path, mqtt_url: str) -> None:
    """A database that does not exist or cannot be reached: exit 2, one line naming storage.url."""
    for url, word in _missing_database(tmp_path):
        r = await asyncio.to_thread(
            _edge,
            "run",
            "--config",
            str(_site(tmp_path)),
            env={"EDGE_STORAGE__URL": url, "EDGE_MQTT__URL": mqtt_url},
        )
        _assert_refused(r, "storage.url", word)


async def test_run_with_a_failing_migration_is_one_line(tmp_path: Path, mqtt_url: str) -> None:
    """A database whose schema revision this version does not know: the migration fails at start,
    and `edge run` says so in one line (exit 2)."""
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('0badc0ffee')")
    cfg = _site(tmp_path, db_url=f"sqlite:///{db}")
    r = await asyncio.to_thread(_edge, "run", "--config", str(cfg), env={"EDGE_MQTT__URL": mqtt_url})
    _assert_refused(r, "storage.url", "migration failed", "0badc0ffee")


def test_demo_on_a_port_in_use_is_one_line() -> None:
    """`edge demo --broker-port` on a port something listens on: exit 2 and one line, at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        r = _edge("demo", "--headless", "--for", "5", "--broker-port", str(port))
    _assert_refused(r, "in use", str(port))


async def test_check_config_connect_tries_broker_and_database(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    """`check-config --connect` connects to the broker and the database and says so; with both
    out of reach it lists one line for each (exit 2)."""
    cfg = _site(tmp_path, db_url=database_url)
    env = {"EDGE_MQTT__URL": mqtt_url}
    ok = await asyncio.to_thread(_edge, "check-config", "--connect", str(cfg), env=env)
    assert ok.returncode == 0, ok.stderr
    assert "mqtt.url" in ok.stdout
    assert "storage.url" in ok.stdout
    assert "connected" in ok.stdout
    bad = {
        "EDGE_MQTT__URL": f"mqtt://127.0.0.1:{free_port()}",
        "EDGE_STORAGE__URL": f"postgresql+psycopg://edge@127.0.0.1:{free_port()}/edge?connect_timeout=2",
    }
    r = await asyncio.to_thread(_edge, "check-config", "--connect", str(cfg), env=bad)
    _assert_refused(r, "mqtt.url", "storage.url")
    assert r.stderr.count("\n") == 3  # the file's header and one line per problem


def test_demo_with_an_unreachable_database_or_broker_is_one_line_each() -> None:
    """`edge demo --database/--broker` that cannot be reached: one line each naming the flag,
    exit 2, the password masked (it was a 170-line traceback and exit 1)."""
    db = f"postgresql+psycopg://u:Demo-secret-31@127.0.0.1:{free_port()}/x?connect_timeout=2"
    r = _edge(
        "demo", "--headless", "--for", "5", "--database", db, "--broker", f"mqtt://127.0.0.1:{free_port()}"
    )
    _assert_refused(r, "--database", "--broker", max_lines=2)
    assert "Demo-secret-31" not in r.stderr


def test_check_config_names_a_help_point_slot_and_a_rule_metric_that_cannot_work(tmp_path: Path) -> None:
    """A help-point slot the register block does not hold, and a rule on a metric its sensors never
    report (a typo would leave a warning that can never fire): both named, with their keys."""
    cfg = _site(tmp_path)
    lamp = next(line.split(",")[0] for line in (tmp_path / "inventory.csv").read_text().splitlines()[1:])
    with cfg.open("a") as fh:
        fh.write(f'[helppoints]\npoints = [{{ id = "HP1", post = "{lamp}", slot = 40 }}]\n')
        fh.write('[environment]\nsensors = [{ id = "w1", dev_eui = "e757a00000000004", profile = "wind", '
                 'group = "wind", lat = 51.51, lon = 7.45 }]\n')  # fmt: skip
        fh.write('[[environment.rules]]\nid = "gusts"\ngroup = "wind"\nmetric = "wind_gusts"\nkind = "threshold"\n'
                 'on = 20\noff = 15\nseverity = "severe"\nlines = ["STURM"]\n')  # fmt: skip
    check = _edge("check-config", str(cfg))
    assert check.returncode == 2, check.stderr
    assert "helppoints.points" in check.stderr
    assert "slot outside 0..15" in check.stderr
    assert "environment.rules" in check.stderr
    assert "'wind_gusts'" in check.stderr
    assert "wind_gust_ms" in check.stderr  # what it could have meant
    assert "Traceback" not in check.stderr
