"""The fault topics docs/devices.md names are the ones the simulators listen on (issue 10, 13)."""

from __future__ import annotations

import argparse
import asyncio
import re
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt
import orjson
from conftest_displays import DisplayIds
from waiting import wait_until

import simulators.charging
import simulators.displays
import simulators.helppoints
import simulators.lighting
import simulators.waste
from edge.app.cli import _parser
from simulators.displays import DisplaySimulator
from simulators.lighting import LightingSimulator

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "devices.md"
# `edge simulate {domain}` -> the simulator module behind it
SIMULATORS = {
    "lights": simulators.lighting,
    "chargers": simulators.charging,
    "displays": simulators.displays,
    "waste": simulators.waste,
    "helppoints": simulators.helppoints,
}
_ROW = re.compile(r"^\| `edge simulate (\w+)` \| (.*?) \|", re.MULTILINE)
_TOPIC = re.compile(r"`(dos/sim/[^`]+)`")


def documented_fault_topics() -> dict[str, str | None]:
    """The table of docs/devices.md: per `edge simulate` domain its fault topic, or None."""
    out: dict[str, str | None] = {}
    for domain, cell in _ROW.findall(DOC.read_text(encoding="utf-8")):
        found = _TOPIC.search(cell)
        out[domain] = found.group(1) if found else None
    return out


def simulate_domains() -> set[str]:
    """The domains `edge simulate` accepts, from the CLI's own parser."""
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    domain = next(a for a in sub.choices["simulate"]._actions if a.dest == "domain")
    return set(domain.choices or ())


def test_every_simulator_has_its_documented_fault_topic() -> None:
    """Each `edge simulate` domain is in the docs' table, with the topic its module subscribes to."""
    documented = documented_fault_topics()
    assert set(documented) == simulate_domains() == set(SIMULATORS)
    for domain, module in SIMULATORS.items():
        assert documented[domain] == getattr(module, "FAULT_TOPIC", None), domain


def test_every_fault_topic_in_docs_and_code_is_one_of_the_table() -> None:
    """No other spelling (e.g. `dos/sim/lighting/faults`) is left in the docs or the code."""
    table = {t for t in documented_fault_topics().values() if t}
    texts = [
        *ROOT.glob("docs/*.md"),
        ROOT / "README.md",
        *ROOT.glob("simulators/*.py"),
        *ROOT.glob("edge/*.py"),
    ]
    for path in texts:
        for topic in re.findall(r"dos/sim/[\w{}]+/faults", path.read_text(encoding="utf-8")):
            assert topic in table or topic == "dos/sim/{domain}/faults", f"{path.name}: {topic}"


async def test_lighting_simulator_takes_faults_on_the_documented_topic(
    lighting_sim: LightingSimulator, mqtt_url: str
) -> None:
    """A fault published where the docs say reaches a lighting simulator left at its default topic."""
    topic = documented_fault_topics()["lights"]
    assert topic is not None
    parts = urlsplit(mqtt_url)
    lamp = "lc-002-003"
    payload = orjson.dumps({"target": lamp, "fault": "lamp_failure", "active": True})
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(lighting_sim.run_mqtt_faults(mqtt_url), name="sim.mqtt_faults")
        async with aiomqtt.Client(
            parts.hostname or "127.0.0.1", parts.port or 1883, identifier=f"test-{uuid.uuid4().hex}"
        ) as client:
            # retained, so it reaches the simulator whenever its subscription lands; removed after
            await client.publish(topic, payload, qos=1, retain=True)
            try:
                await wait_until(lambda: lighting_sim.faults(lamp) == {"lamp_failure"}, what="fault applied")
            finally:
                await client.publish(topic, b"", qos=1, retain=True)
        task.cancel()


async def test_display_simulator_takes_faults_on_the_documented_topic(
    display_sim: DisplaySimulator, display_ids: DisplayIds, mqtt_url: str
) -> None:
    """A pixel fault published where the docs say reaches a board and a sign; garbage is refused."""
    topic = documented_fault_topics()["displays"]
    assert topic is not None
    board, sign = display_ids.boards[0], display_ids.signs[0]
    parts = urlsplit(mqtt_url)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(display_sim.run_mqtt_faults(mqtt_url), name="sim.display_faults")
        async with aiomqtt.Client(
            parts.hostname or "127.0.0.1", parts.port or 1883, identifier=f"test-{uuid.uuid4().hex}"
        ) as client:
            # retained, so it reaches the simulator whenever its subscription lands; removed after
            try:
                for target in (board, sign):
                    body = {"target": target, "fault": "pixel_fault", "active": True, "pixels": 7}
                    await client.publish(topic, orjson.dumps(body), qos=1, retain=True)
                    await wait_until(lambda t=target: display_sim.faults(t) == {"pixel_fault"}, what=target)  # type: ignore[misc]
                await client.publish(topic, b"[" * 5000, qos=1, retain=True)
                await client.publish(
                    topic, orjson.dumps({"target": board, "fault": "melted"}), qos=1, retain=True
                )
                await client.publish(
                    topic,
                    orjson.dumps({"target": board, "fault": "pixel_fault", "active": False}),
                    qos=1,
                    retain=True,
                )
                await wait_until(lambda: not display_sim.faults(board), what="fault cleared")
            finally:
                await client.publish(topic, b"", qos=1, retain=True)
        task.cancel()
    assert display_sim.faults(sign) == {"pixel_fault"}
