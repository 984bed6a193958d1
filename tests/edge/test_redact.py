"""No configured secret reaches a log line or an error text: one redaction for all of them."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import orjson
import pytest
import structlog
from harness import NIGHT, write_site

from devices.inventory import load_inventory
from edge import logs, redact
from edge.app.demo import sim_controllers
from edge.clock import SimClock
from edge.errors import ConfigError
from edge.mqtt import BrokerAddress
from edge.net import free_port
from edge.settings import load_settings
from simulators.lighting import LightingSimulator

MQTT_SECRET = "Mq77-pass-9f3c1e"
DB_SECRET = "Db-secret-71aa0d"


def _with_password(url: str, user: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest.rpartition('@')[2]}"


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("mqtt://edge:hunter2x@broker:1883", "mqtt://edge:***@broker:1883"),
        ("mqtts://edge:p%40ss%2Fword@broker", "mqtts://edge:***@broker"),
        ("postgresql+psycopg://edge:pw1234@db:5432/edge", "postgresql+psycopg://edge:***@db:5432/edge"),
        (
            "postgresql+psycopg://edge@db/edge?password=pw1234",
            "postgresql+psycopg://edge@db/edge?password=***",
        ),
        ("sqlite:///var/edge.db", "sqlite:///var/edge.db"),
        ("mqtt://127.0.0.1:1883", "mqtt://127.0.0.1:1883"),
    ],
)
def test_redact_url(url: str, want: str) -> None:
    """A URL keeps scheme, user, host, port and path; its password becomes ***."""
    assert redact.redact_url(url) == want


def test_redact_text_masks_urls_pairs_and_remembered_secrets() -> None:
    """Free text (an exception message, a traceback) loses URL passwords, password=... pairs
    and every literal secret registered with `remember`, in any position."""
    redact.remember("Lit3ral-secret-77")
    text = (
        "connect to mqtts://u:Abc-123@h:8883 failed; conninfo password='Qz9-x' sslpassword=Kk88 "
        "then the library said: auth failed with Lit3ral-secret-77 (Lit3ral-secret-77)"
    )
    out = redact.redact_text(text)
    for secret in ("Abc-123", "Qz9-x", "Kk88", "Lit3ral-secret-77"):
        assert secret not in out
    assert "mqtts://u:***@h:8883" in out


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger and structlog back as they were after a test reconfigures them."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)


@pytest.mark.usefixtures("restore_logging")
def test_log_processor_masks_keys_values_nested_and_tracebacks() -> None:
    """Through the daemon's own log set-up: a secret-named key, a URL in a nested value, a
    stdlib record and an exception's traceback are all masked."""
    stream = io.StringIO()
    logs.configure("debug", "json", stream)
    log = structlog.get_logger("t")
    log.info(
        "evt",
        password="Pw-secret-1",
        mqtt="mqtt://a:Pw-secret-2@h",
        nested={"urls": ["mqtt://a:Pw-secret-3@h"]},
    )
    logging.getLogger("somelib").warning("connecting to mqtt://a:Pw-secret-4@h")
    log.info("obj", settings=load_settings(None, mqtt__url="mqtt://a:Pw-secret-6@h"))
    try:
        raise RuntimeError("cannot reach postgresql://a:Pw-secret-5@db/x")
    except RuntimeError:
        log.exception("crashed")
    out = stream.getvalue()
    assert out.count("\n") == 4
    for i in range(1, 7):
        assert f"Pw-secret-{i}" not in out
    first = json.loads(out.splitlines()[0])
    assert first["password"] == "***"
    assert first["nested"] == {"urls": ["mqtt://a:***@h"]}


def test_settings_error_never_echoes_the_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad broker URL (bad port) in the environment is named, with its password masked."""
    cfg = tmp_path / "site.toml"
    cfg.write_text('[site]\nid = "x"\n')
    monkeypatch.setenv("EDGE_MQTT__URL", "mqtt://edge:Env-secret-42@broker:99999")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    text = str(err.value)
    assert "EDGE_MQTT__URL" in text
    assert "Env-secret-42" not in text
    monkeypatch.setenv("EDGE_MQTT__URL", "mqtt://edge:Env-secret-42@broker:1883")
    settings = load_settings(cfg)
    assert "Env-secret-42" not in repr(BrokerAddress.parse(settings.mqtt.url))


def _grep(texts: dict[str, str], *secrets: str) -> list[str]:
    return [f"{secret} in {where}" for where, text in texts.items() for secret in secrets if secret in text]


async def test_daemon_run_logs_no_secret(tmp_path: Path, mqtt_url: str, database_url: str) -> None:
    """A whole `edge run` at debug level, with a broker password and (on PostgreSQL) a database
    password: started, serving and stopped, no log line on stdout or stderr holds either."""
    secrets = [MQTT_SECRET]
    db_url = database_url
    if db_url.startswith("postgresql"):  # trust auth in CI accepts (and ignores) any password
        db_url = _with_password(db_url, "postgres", DB_SECRET)
        secrets.append(DB_SECRET)
    site_id = "redact" + os.urandom(3).hex()
    cfg = write_site(tmp_path, site_id=site_id, mqtt_url="mqtt://127.0.0.1:1", db_url="sqlite:///unused.db")
    settings = load_settings(cfg)
    inv = load_inventory(settings.inventory_path())
    env = {
        **os.environ,
        "EDGE_LOGGING__FORMAT": "json",
        "EDGE_LOGGING__LEVEL": "debug",
        "EDGE_MQTT__URL": _with_password(mqtt_url, "edge", MQTT_SECRET),
        "EDGE_STORAGE__URL": db_url,
    }
    if not os.environ.get("EDGE_TEST_MQTT_URL"):
        # The embedded amqtt broker never answers an MQTT 5 CONNECT that carries a password
        # (its parser derails, measured); Mosquitto takes either.
        env["EDGE_MQTT__PROTOCOL"] = "3.1.1"
    host, port = mqtt_url.split("://")[1].rpartition("@")[2].split(":")
    topic = f"dos/v1/{site_id}/status"
    async with (
        LightingSimulator(sim_controllers(inv), SimClock(NIGHT), seed=1),
        aiomqtt.Client(host, int(port), identifier=f"w-{site_id}", timeout=10) as client,
    ):
        await client.subscribe(topic, qos=1)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge.app.cli", "run", "--config", str(cfg),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        try:
            async with asyncio.timeout(30):
                async for msg in client.messages:
                    if msg.payload and orjson.loads(msg.payload)["online"] is True:
                        break
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                out, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    texts = {"stdout": out.decode(), "stderr": err.decode()}
    assert proc.returncode == 0, texts["stderr"][-2000:]
    assert '"event": "daemon_started"' in texts["stderr"]
    assert "edge:***@" in texts["stderr"]  # the URL is logged, its password is not
    assert _grep(texts, *secrets) == []


def test_failed_start_names_the_problem_without_the_password(tmp_path: Path) -> None:
    """A start that fails on an unreachable database and broker, both with passwords in their
    URLs: the error text names what failed and holds neither password."""
    cfg = write_site(tmp_path, site_id="redactfail", mqtt_url="mqtt://127.0.0.1:1", db_url="sqlite:///x.db")
    env = {
        **os.environ,
        "EDGE_MQTT__URL": f"mqtt://edge:{MQTT_SECRET}@127.0.0.1:{free_port()}",
        "EDGE_STORAGE__URL": f"postgresql+psycopg://edge:{DB_SECRET}@127.0.0.1:{free_port()}/nope?connect_timeout=2",
    }
    r = subprocess.run(
        [sys.executable, "-m", "edge.app.cli", "run", "--config", str(cfg)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "storage.url" in r.stderr
    assert _grep({"stdout": r.stdout, "stderr": r.stderr}, MQTT_SECRET, DB_SECRET) == []
