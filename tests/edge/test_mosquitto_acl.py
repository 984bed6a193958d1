"""The example broker configuration in docs/mosquitto/ against a real Mosquitto.

A private `mosquitto` runs on a free 127.0.0.1 port with the example `mosquitto.conf` and
`acl`, copied to `tmp_path` with only the paths, the port and the log destination changed,
and a password file made there with `mosquitto_passwd`. Real aiomqtt clients play the
daemon, an operator, a viewer, the utility `dso`, the LoRaWAN network server `lns` and
the trucks `T1` and `T2` (accounts named as the truck ids, for the ACL's `pattern` lines).

"Not delivered" is shown without sleeping: the forbidden message is published at QoS 1
(Mosquitto acknowledges and drops it), then an allowed client publishes a marker, and the
receiver must see the marker with nothing forbidden before it.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from edge.net import free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "mosquitto"
HOST = "127.0.0.1"
SITE = "acltest"
BASE = f"dos/v1/{SITE}"
START_TIMEOUT_S = 10.0
RECEIVE_TIMEOUT_S = 5.0
TRUCKS = ("T1", "T2")  # not `user` lines: the ACL's fleet patterns cover them by username
BOARDS = ("led-1",)  # likewise for the LED boards' patterns


def _binary(name: str, *fallbacks: str) -> str | None:
    for candidate in (name, *fallbacks):
        found = shutil.which(candidate)
        if found:
            return found
    return None


MOSQUITTO = _binary("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
MOSQUITTO_PASSWD = _binary("mosquitto_passwd", "/usr/bin/mosquitto_passwd", "/usr/local/bin/mosquitto_passwd")


def _settings(conf: str) -> dict[str, str]:
    """`key value` lines of a mosquitto.conf (the first of each key), comments skipped."""
    found: dict[str, str] = {}
    for line in conf.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            found.setdefault(key, value.strip())
    return found


def _private_config(example: str, port: int, workdir: Path) -> str:
    """The example with its paths, port and log destination moved into `workdir`."""
    replacements = {
        "listener": f"listener {port} {HOST}",
        "password_file": f"password_file {workdir / 'passwd'}",
        "acl_file": f"acl_file {workdir / 'acl'}",
        "persistence_location": f"persistence_location {workdir}/",
        "log_dest": f"log_dest file {workdir / 'mosquitto.log'}",
    }
    lines: list[str] = []
    replaced: set[str] = set()
    for line in example.splitlines():
        key = line.split(maxsplit=1)[0] if line.strip() and not line.startswith("#") else ""
        if key not in replacements:
            lines.append(line)
        elif key not in replaced:  # a second log_dest is dropped: one file is enough here
            replaced.add(key)
            lines.append(replacements[key])
    assert replaced == set(replacements), f"example lacks {set(replacements) - replaced}"
    if os.geteuid() == 0:
        lines.append("user root")  # else mosquitto drops to `mosquitto`, which cannot read tmp_path
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Broker:
    port: int
    passwords: dict[str, str]
    log: Path

    def client(self, user: str | None, password: str | None = None) -> aiomqtt.Client:
        if user is not None and password is None:
            password = self.passwords[user]
        return aiomqtt.Client(HOST, self.port, username=user, password=password, timeout=RECEIVE_TIMEOUT_S)


@dataclass(frozen=True)
class BrokerFiles:
    binary: str
    conf: Path
    port: int
    passwords: dict[str, str]
    log: Path


@pytest.fixture
def broker_files(tmp_path: Path) -> BrokerFiles:
    """The example config in tmp_path, with a password file for every account of the ACL."""
    if MOSQUITTO is None or MOSQUITTO_PASSWD is None:
        pytest.skip("mosquitto and mosquitto_passwd are not installed")
    acl = (EXAMPLE / "acl").read_text()
    users = re.findall(r"^user\s+(\S+)", acl, flags=re.MULTILINE)
    assert {"edge", "operator", "viewer", "dso", "lns"} <= set(users)
    users += [*TRUCKS, *BOARDS]
    shutil.copy(EXAMPLE / "acl", tmp_path / "acl")
    passwords = {user: secrets.token_urlsafe(12) for user in users}
    passwd = tmp_path / "passwd"
    for i, (user, password) in enumerate(passwords.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run(
            [MOSQUITTO_PASSWD, "-b", *create, str(passwd), user, password],
            check=True,
            capture_output=True,
        )
    port = free_port(HOST)
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(_private_config((EXAMPLE / "mosquitto.conf").read_text(), port, tmp_path))
    return BrokerFiles(MOSQUITTO, conf, port, passwords, tmp_path / "mosquitto.log")


@pytest.fixture
async def broker(broker_files: BrokerFiles) -> AsyncIterator[Broker]:
    """A private mosquitto with the example config, stopped at the end."""
    proc = await asyncio.create_subprocess_exec(
        broker_files.binary,
        "-c",
        str(broker_files.conf),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while True:
                if proc.returncode is not None:
                    stderr = await proc.stderr.read() if proc.stderr else b""
                    log = broker_files.log.read_text() if broker_files.log.exists() else ""
                    pytest.fail(f"mosquitto exited with {proc.returncode}: {stderr.decode()}{log}")
                try:
                    _, writer = await asyncio.open_connection(HOST, broker_files.port)
                except OSError:
                    await asyncio.sleep(0.02)  # polling a port that is not open yet
                    continue
                writer.close()
                await writer.wait_closed()
                break
        yield Broker(broker_files.port, broker_files.passwords, broker_files.log)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _subscribe(client: aiomqtt.Client, topic: str) -> None:
    """Subscribe at QoS 1 and insist that the broker granted it."""
    codes = await client.subscribe(topic, qos=1)
    values = [code if isinstance(code, int) else code.value for code in codes]
    assert all(value < 0x80 for value in values), (topic, codes)


async def _until(client: aiomqtt.Client, marker_topic: str, marker: bytes) -> list[tuple[str, bytes]]:
    """Everything `client` receives up to and including the marker (bounded wait)."""
    received: list[tuple[str, bytes]] = []
    try:
        async with asyncio.timeout(RECEIVE_TIMEOUT_S):
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                received.append((message.topic.value, payload))
                if message.topic.value == marker_topic and payload == marker:
                    return received
    except TimeoutError:
        pass
    pytest.fail(f"no {marker!r} on {marker_topic} within {RECEIVE_TIMEOUT_S} s; received {received}")


def test_example_config_has_the_required_settings() -> None:
    settings = _settings((EXAMPLE / "mosquitto.conf").read_text())
    assert settings["listener"].split()[-1] == "127.0.0.1"
    assert settings["allow_anonymous"] == "false"
    assert settings["set_tcp_nodelay"] == "true"
    assert settings["persistence"] == "true"
    assert "password_file" in settings
    assert "acl_file" in settings


async def test_anonymous_and_wrong_password_cannot_connect(broker: Broker) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with broker.client(None):
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with broker.client("operator", "not-the-password"):
            pass


async def test_operator_command_reaches_daemon_viewer_command_does_not(broker: Broker) -> None:
    topic = f"{BASE}/cmd/lights/L0001"
    async with (
        broker.client("edge") as daemon,
        broker.client("viewer") as viewer,
        broker.client("operator") as operator,
    ):
        await _subscribe(daemon, f"{BASE}/cmd/#")
        await viewer.publish(topic, b'{"action": "set_level", "level": 0}', qos=1)
        await operator.publish(topic, b'{"action": "set_level", "level": 40}', qos=1)
        received = await _until(daemon, topic, b'{"action": "set_level", "level": 40}')
    assert received == [(topic, b'{"action": "set_level", "level": 40}')]


async def test_operator_reads_the_answer_on_its_reply_topic(broker: Broker) -> None:
    reply = f"{BASE}/replies/tui-0123456789ab"
    async with broker.client("edge") as daemon, broker.client("operator") as operator:
        await _subscribe(operator, reply)
        await daemon.publish(reply, b'{"ok": true}', qos=1)
        assert await _until(operator, reply, b'{"ok": true}') == [(reply, b'{"ok": true}')]


async def test_utility_writes_only_under_its_own_name(broker: Broker) -> None:
    own, other = f"{BASE}/utility/dso/limits", f"{BASE}/utility/other/limits"
    body = b'{"action": "curtail", "target": "feeder-4", "limit_kw": 8, "start": 0, "end": 60}'
    async with broker.client("edge") as daemon, broker.client("dso") as dso:
        await _subscribe(daemon, f"{BASE}/utility/+/+")
        await dso.publish(other, body, qos=1)
        await dso.publish(own, body, qos=1)
        received = await _until(daemon, own, body)
    assert received == [(own, body)]


async def test_utility_reads_only_its_own_replies(broker: Broker) -> None:
    reply = f"{BASE}/replies/dso"
    async with broker.client("edge") as daemon, broker.client("dso") as dso:
        # Mosquitto grants the wide subscription and filters what it delivers.
        await _subscribe(dso, f"{BASE}/#")
        await daemon.publish(f"{BASE}/lights/L0001/state", b'{"online": true}', qos=1)
        await daemon.publish(f"{BASE}/replies/tui-0123456789ab", b'{"ok": false}', qos=1)
        await daemon.publish(f"{BASE}/acks", b'{"ok": false}', qos=1)
        await daemon.publish(reply, b'{"ok": true}', qos=1)
        assert await _until(dso, reply, b'{"ok": true}') == [(reply, b'{"ok": true}')]


async def test_viewer_reads_state_only_the_daemon_writes_it(broker: Broker) -> None:
    state = f"{BASE}/lights/L0001/state"
    async with broker.client("edge") as daemon, broker.client("operator") as operator:
        await daemon.publish(state, b'{"level_actual": 40}', qos=1, retain=True)
        await operator.publish(state, b'{"level_actual": 0}', qos=1, retain=True)  # refused
        async with broker.client("viewer") as viewer:
            await _subscribe(viewer, f"{BASE}/#")
            retained = await _until(viewer, state, b'{"level_actual": 40}')
            await viewer.publish(state, b'{"level_actual": 100}', qos=1)  # refused
            await daemon.publish(state, b'{"level_actual": 60}', qos=1)
            live = await _until(viewer, state, b'{"level_actual": 60}')
    assert retained == [(state, b'{"level_actual": 40}')]
    assert live == [(state, b'{"level_actual": 60}')]


@pytest.mark.parametrize(
    ("topic", "body"),
    [
        (
            f"{BASE}/cmd/alarms/ack",
            b'{"action": "ack", "device": "L0001", "code": "lamp_failure", "comment": "x"}',
        ),
        (f"{BASE}/cmd/waste/bins/B0001", b'{"action": "force"}'),
        (f"{BASE}/cmd/waste/replan", b'{"action": "replan"}'),
    ],
    ids=["alarm-ack", "waste-force", "waste-replan"],
)
async def test_only_operators_ack_alarms_and_command_waste(broker: Broker, topic: str, body: bytes) -> None:
    """An alarm ack or a waste request reaches the daemon from an operator, never from a viewer or a utility."""
    async with (
        broker.client("edge") as daemon,
        broker.client("viewer") as viewer,
        broker.client("dso") as dso,
        broker.client("operator") as operator,
    ):
        await _subscribe(daemon, f"{BASE}/cmd/#")
        await viewer.publish(topic, b'{"from": "viewer"}', qos=1)
        await dso.publish(topic, b'{"from": "dso"}', qos=1)
        await operator.publish(topic, body, qos=1)
        received = await _until(daemon, topic, body)
    assert received == [(topic, body)]


@pytest.mark.parametrize(
    "topic",
    [
        f"{BASE}/alarms/history",
        f"{BASE}/alarms/active/L0001/lamp_failure",
        f"{BASE}/waste/bins/B0001/state",
        f"{BASE}/waste/trucks/T1/state",
        f"{BASE}/waste/plan",
        f"{BASE}/waste/summary",
        f"{BASE}/displays/led-1/state",
        f"{BASE}/warnings/active",
    ],
)
async def test_daemon_publishes_alarm_history_waste_displays_viewers_read_them(
    broker: Broker, topic: str
) -> None:
    """What the daemon publishes for alarms, waste and displays reaches a viewer; an operator cannot forge it."""
    async with (
        broker.client("edge") as daemon,
        broker.client("operator") as operator,
        broker.client("viewer") as viewer,
    ):
        await _subscribe(viewer, f"{BASE}/#")
        await operator.publish(topic, b'{"forged": true}', qos=1)
        await daemon.publish(topic, b'{"ts": 1}', qos=1)
        received = await _until(viewer, topic, b'{"ts": 1}')
    assert received == [(topic, b'{"ts": 1}')]


# -- device side: trucks and the LoRaWAN network server ---------------------------------


@pytest.mark.parametrize(
    ("account", "topic"),
    [
        ("T1", "fleet/T1/state"),
        ("T1", "fleet/T1/event"),
        ("lns", "application/7/device/0004a30b001c0530/event/up"),
        ("lns", "v3/bins@city/devices/s0001/up"),
    ],
)
async def test_daemon_reads_truck_state_events_and_uplinks(broker: Broker, account: str, topic: str) -> None:
    """The daemon reads what trucks and the network server write; a viewer cannot forge it."""
    async with (
        broker.client("edge") as daemon,
        broker.client("viewer") as viewer,
        broker.client(account) as device,
    ):
        for pattern in (
            "fleet/+/state",
            "fleet/+/event",
            "application/+/device/+/event/up",
            "v3/+/devices/+/up",
        ):
            await _subscribe(daemon, pattern)
        await viewer.publish(topic, b'{"forged": true}', qos=1)
        await device.publish(topic, b'{"ts": 1}', qos=1)
        received = await _until(daemon, topic, b'{"ts": 1}')
    assert received == [(topic, b'{"ts": 1}')]


async def test_daemon_writes_routes_each_truck_reads_only_its_own(broker: Broker) -> None:
    route1, route2 = b'{"route_id": "d-T1-r1", "stops": []}', b'{"route_id": "d-T2-r1", "stops": []}'
    async with broker.client("edge") as daemon, broker.client("T1") as t1, broker.client("T2") as t2:
        await _subscribe(t1, "fleet/+/route")  # granted wide; only its own route is delivered
        await _subscribe(t2, "fleet/+/route")
        await daemon.publish("fleet/T2/route", route2, qos=1)
        await daemon.publish("fleet/T1/route", route1, qos=1)
        got1 = await _until(t1, "fleet/T1/route", route1)
        got2 = await _until(t2, "fleet/T2/route", route2)
    assert got1 == [("fleet/T1/route", route1)]
    assert got2 == [("fleet/T2/route", route2)]


@pytest.mark.parametrize("topic", ["fleet/T1/state", "fleet/T1/event"])
async def test_a_truck_cannot_write_another_trucks_topics(broker: Broker, topic: str) -> None:
    async with broker.client("edge") as daemon, broker.client("T1") as t1, broker.client("T2") as t2:
        await _subscribe(daemon, "fleet/#")
        await t2.publish(topic, b'{"from": "T2"}', qos=1)
        await t2.publish("fleet/T1/route", b'{"from": "T2"}', qos=1)  # nor a route, not even its own
        await t2.publish("fleet/T2/route", b'{"from": "T2"}', qos=1)
        await t2.publish("application/7/device/0004a30b001c0530/event/up", b'{"from": "T2"}', qos=1)
        await t1.publish(topic, b'{"from": "T1"}', qos=1)
        received = await _until(daemon, topic, b'{"from": "T1"}')
    assert received == [(topic, b'{"from": "T1"}')]


@pytest.mark.parametrize("account", ["viewer", "operator", "dso", "lns"])
async def test_only_the_daemon_writes_fleet_routes(broker: Broker, account: str) -> None:
    route = b'{"route_id": "d-T1-r2", "stops": []}'
    async with broker.client("edge") as daemon, broker.client(account) as other, broker.client("T1") as t1:
        await _subscribe(t1, "fleet/T1/route")
        await other.publish("fleet/T1/route", b'{"route_id": "forged", "stops": []}', qos=1)
        await daemon.publish("fleet/T1/route", route, qos=1)
        received = await _until(t1, "fleet/T1/route", route)
    assert received == [("fleet/T1/route", route)]


async def test_daemon_reads_board_status_and_writes_board_content(broker: Broker) -> None:
    """The LED boards' device-side topics (devices/profiles/display_led_board.toml); a viewer forges neither."""
    content, status = "displays/led-1/content", "displays/led-1/status"
    async with (
        broker.client("edge") as daemon,
        broker.client("led-1") as board,
        broker.client("viewer") as viewer,
    ):
        await _subscribe(daemon, "displays/+/status")
        await _subscribe(board, "displays/+/content")
        await viewer.publish(content, b'{"forged": true}', qos=1)
        await viewer.publish(status, b'{"forged": true}', qos=1)
        await daemon.publish(content, b'{"message_id": 1}', qos=1)
        await board.publish(status, b'{"online": true}', qos=1)
        got_board = await _until(board, content, b'{"message_id": 1}')
        got_daemon = await _until(daemon, status, b'{"online": true}')
    assert got_board == [(content, b'{"message_id": 1}')]
    assert got_daemon == [(status, b'{"online": true}')]
