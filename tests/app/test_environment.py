"""Sensor-driven warnings end to end: the storm scenario issues a flood warning from two gauges,
it reaches the displays and goes out as CAP 1.2, and is withdrawn when the water falls; a gauge
that goes silent never clears a warning; a proposed warning waits for an operator.

Real parts: the daemon, a broker, LoRaWAN uplinks in both formats from the storm simulator, an
LED board, the lamp simulator, a database. CAP messages are validated against the OASIS schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import xmlschema
from harness import NIGHT, Site, one_controller_site, wait_for

from devices.inventory import load_inventory
from devices.profiles.lorawan import default_profiles
from edge.app.daemon import running
from edge.app.demo import sim_controllers
from edge.clock import SimClock
from edge.settings import load_settings
from simulators.displays import DisplaySimulator, SimBoard
from simulators.environment import StormScenario, StormSimulator, storm_sensor_table, storm_sensors
from simulators.lighting import LightingSimulator
from simulators.lorawan import chirpstack_event

CAP_XSD = Path(__file__).resolve().parents[1] / "fixtures" / "cap" / "CAP-v1.2.xsd"
SPEED = 120.0  # clock seconds per real second
TIME_SCALE = 4.0  # storm seconds per clock second: the 2 h storm in 30 clock minutes, 15 real s


def _sensors_toml(prefix: int) -> str:
    rows = []
    for r in storm_sensor_table(prefix):
        zero = f", zero_mm = {r['zero_mm']}" if "zero_mm" in r else ""
        rows.append(f'  {{ id = "{r["id"]}", dev_eui = "{r["dev_eui"]}", profile = "{r["profile"]}", '
                    f'group = "{r["group"]}", lat = {r["lat"]}, lon = {r["lon"]}{zero}, '
                    f'max_step = {{ level_cm = 80 }} }},')  # fmt: skip
    return "\n".join(rows)


def write_site(tmp: Path, site: str, mqtt_url: str, db_url: str, board: str, prefix: int, mode: str) -> Path:
    rows = storm_sensor_table(prefix)
    lat0, lon0 = rows[0]["lat"], rows[0]["lon"]
    return one_controller_site(tmp, site, mqtt_url, db_url, [("L1", lat0, lon0)], f"""
[displays]
min_update_s = 0
step_s = 0.1
displays = [ {{ id = "{board}", kind = "board", lat = {lat0}, lon = {lon0} }} ]
[environment]
stale_after_s = 600
evaluate_every_s = 30
sensors = [
{_sensors_toml(prefix)}
]

[[environment.rules]]
id = "flood-emscher"
group = "gauge-emscher"
metric = "level_cm"
kind = "threshold"
on = 140
off = 100
agree = 2
min_hold_s = 300
severity = "severe"
mode = "{mode}"
event = "Flood"
lines = ["HOCHWASSER", "Emscher meiden"]
duration_s = 1800
radius_m = 2000

[[environment.rules]]
id = "rise-emscher"
group = "gauge-emscher"
metric = "level_cm"
kind = "rate_of_rise"
on = 10
off = 2
window_s = 900
min_hold_s = 300
severity = "warning"
mode = "propose"
lines = ["PEGEL STEIGT"]

[logging]
level = "warning"
""")  # fmt: skip


@dataclass
class Watch:
    base: str
    topics: dict[str, bytes] = field(default_factory=dict)
    cap: list[tuple[str, bytes]] = field(default_factory=list)

    def json(self, sub: str) -> Any:
        raw = self.topics.get(f"{self.base}/{sub}")
        return orjson.loads(raw) if raw else None

    def live(self) -> dict[str, dict[str, Any]]:
        prefix = f"{self.base}/environment/warnings/"
        return {
            t[len(prefix) :]: orjson.loads(p) for t, p in self.topics.items() if t.startswith(prefix) and p
        }


@contextlib.asynccontextmanager
async def district(tmp: Path, mqtt_url: str, database_url: str, mode: str = "issue") -> AsyncIterator[Any]:
    token = uuid.uuid4().hex[:8]
    board = f"led-{token}"
    prefix = int(token[:2], 16)
    cfg = write_site(tmp, "env" + token, mqtt_url, database_url, board, prefix, mode)
    settings = load_settings(cfg)
    inv = load_inventory(settings.inventory_path())
    clock = SimClock(NIGHT, speed=SPEED)
    host, port = mqtt_url.split("://")[1].split(":")
    async with (
        LightingSimulator(sim_controllers(inv, watchdog_s=3600), clock, seed=3) as sim,
        DisplaySimulator(clock, boards=[SimBoard(board)], mqtt_url=mqtt_url) as dsim,
        running(settings, inv, clock) as d,
        aiomqtt.Client(host, int(port), identifier=f"t-{token}") as client,
        aiomqtt.Client(host, int(port), identifier=f"w-{token}") as watcher,
    ):
        await d.link.wait_connected(10)
        base = d.api.base
        watch = Watch(base)
        await watcher.subscribe(f"{base}/environment/#", qos=1)
        await watcher.subscribe(f"{base}/alerts/cap/#", qos=1)

        async def collect() -> None:
            async for msg in watcher.messages:
                watch.topics[str(msg.topic)] = bytes(msg.payload)  # type: ignore[arg-type]
                if "/alerts/cap/" in str(msg.topic) and msg.payload:
                    watch.cap.append((str(msg.topic), bytes(msg.payload)))  # type: ignore[arg-type]

        task = asyncio.create_task(collect(), name="test.watch")
        try:
            yield (
                Site(d, sim, client, settings, inv, d.link.protocol == "5"),
                dsim,
                board,
                watch,
                clock,
                prefix,
            )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_the_storm_issues_a_flood_warning_and_withdraws_it(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    async with district(tmp_path, mqtt_url, database_url) as (s, dsim, board, watch, clock, prefix):
        d = s.daemon
        env = d.environment
        assert env is not None
        scenario = StormScenario(7, start=clock.now(), time_scale=TIME_SCALE)
        storm = StormSimulator(storm_sensors(prefix), scenario, clock, seed=7, duplicate_p=0.2)
        async with storm.connect_to(s.daemon.settings.mqtt.url):
            task = asyncio.create_task(storm.run(60.0), name="test.storm")
            try:
                await wait_for(
                    lambda: env.stats.issued >= 1, "a warning issued from the gauges", timeout_s=30
                )
                w = next(x for x in [*env.warnings.values(), *env.finished] if x.rule == "flood-emscher")
                assert sorted(w.sensors) == ["gauge-emscher-1", "gauge-emscher-2"]  # both gauges agreed
                await wait_for(lambda: "HOCHWASSER" in dsim.shown(board), "the warning on the display")
                await wait_for(lambda: any(t.endswith(w.id) for t, _ in watch.cap), "the CAP alert")
                await wait_for(lambda: env.stats.withdrawn >= 1, "the warning withdrawn as the water falls",
                               timeout_s=40)  # fmt: skip
                await wait_for(lambda: "HOCHWASSER" not in dsim.shown(board), "the display released")
                await wait_for(lambda: any(t.endswith(w.id) and b"<msgType>Cancel<" in x for t, x in watch.cap),
                               "the CAP cancel")  # fmt: skip
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        schema = xmlschema.XMLSchema(CAP_XSD)
        mine = [xml for t, xml in watch.cap if t.endswith(w.id)]
        for xml in mine:
            schema.validate(xml.decode())
        assert b"<msgType>Alert</msgType>" in mine[0]
        assert b"<msgType>Cancel</msgType>" in mine[-1]
        assert w.id not in watch.live()
        # the rate-of-rise rule proposed its own warning, which nobody confirmed: never on a display
        assert env.stats.proposed >= 1
        rules = watch.json("environment/rules")
        assert {r["id"] for r in rules["rules"]} == {"flood-emscher", "rise-emscher"}
        gauge = watch.json("environment/sensors/gauge-emscher-1/state")
        assert gauge["profile"] == "water_level_ultrasonic"
        assert "level_cm" in gauge["values"]


async def test_a_silent_gauge_never_clears_a_warning_and_a_proposal_waits_for_the_operator(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    async with district(tmp_path, mqtt_url, database_url, mode="propose") as (
        s,
        dsim,
        board,
        watch,
        clock,
        prefix,
    ):
        d = s.daemon
        env = d.environment
        assert env is not None
        water = default_profiles()["water_level_ultrasonic"]
        rows = {r["id"]: r for r in storm_sensor_table(prefix)}

        async def gauge(sid: str, level_cm: float, n: int) -> None:
            r = rows[sid]
            payload = water.encode({"distance_mm": round(r["zero_mm"] - level_cm * 10), "battery": 90,
                                    "probe_fault": False, "tamper": False, "temperature": 8})  # fmt: skip
            topic, body = chirpstack_event(r["dev_eui"], sid, f_cnt=n, f_port=2, payload=payload, ts=clock.now(),
                                           dedup_id=uuid.uuid4().hex)  # fmt: skip
            await s.client.publish(topic, body, qos=1)

        for n in range(1, 4):
            await gauge("gauge-emscher-1", 170, n)
            await gauge("gauge-emscher-2", 165, n)
            await clock.sleep(60)
        await wait_for(lambda: any(w.rule == "flood-emscher" for w in env.warnings.values()), "a proposal")
        w = next(w for w in env.warnings.values() if w.rule == "flood-emscher")
        assert w.status == "proposed"
        assert "HOCHWASSER" not in dsim.shown(board)
        assert d.alarms.is_active("flood-emscher", "warning_proposed")
        ack = await s.request(
            f"cmd/environment/warnings/{w.id}", {"action": "confirm", "comment": "seen at the gauge"}
        )
        assert ack["ok"] is True, ack
        await wait_for(lambda: "HOCHWASSER" in dsim.shown(board), "the confirmed warning on the display")
        # Both gauges fall silent: they go stale, and the warning stays (nothing clears it on its own).
        await wait_for(
            lambda: d.alarms.is_active("gauge-emscher-1", "stale"), "the stale-gauge alarm", timeout_s=20
        )
        assert d.alarms.is_active("gauge-emscher-2", "stale")
        assert env.warnings[w.id].status == "issued"
        assert "HOCHWASSER" in dsim.shown(board)
        await wait_for(
            lambda: watch.live().get(w.id, {}).get("status") == "issued", "still in force on the API"
        )
        # An operator withdraws it: a reject is only for proposals.
        nack = await s.request(f"cmd/environment/warnings/{w.id}", {"action": "reject"})
        assert nack["ok"] is False
        assert nack["reason"].startswith("not_proposed")
        ack = await s.request(
            f"cmd/environment/warnings/{w.id}", {"action": "withdraw", "comment": "all clear"}
        )
        assert ack["ok"] is True
        await wait_for(lambda: "HOCHWASSER" not in dsim.shown(board), "the display released")
        assert env.finished[-1].decided_by == "operator:mqtt" or env.finished[-1].decided_by


async def test_a_warning_in_force_survives_a_restart_until_an_operator_withdraws_it(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    """Issued from two gauges, then the daemon restarts while the gauges are silent: the warning is
    still in force and on the display (no reading clears it), until an operator withdraws it."""
    token = uuid.uuid4().hex[:8]
    board = f"led-{token}"
    prefix = int(token[:2], 16)
    cfg = write_site(tmp_path, "er" + token, mqtt_url, database_url, board, prefix, "issue")
    settings = load_settings(cfg)
    inv = load_inventory(settings.inventory_path())
    clock = SimClock(NIGHT, speed=SPEED)
    water = default_profiles()["water_level_ultrasonic"]
    rows = {r["id"]: r for r in storm_sensor_table(prefix)}
    host, port = mqtt_url.split("://")[1].split(":")
    async with (
        LightingSimulator(sim_controllers(inv, watchdog_s=3600), clock, seed=3) as sim,
        DisplaySimulator(clock, boards=[SimBoard(board)], mqtt_url=mqtt_url) as dsim,
        aiomqtt.Client(host, int(port), identifier=f"t-{token}") as client,
    ):
        async with running(settings, inv, clock) as d:
            env = d.environment
            assert env is not None
            for n in range(1, 4):
                for sid, level in (("gauge-emscher-1", 170), ("gauge-emscher-2", 160)):
                    r = rows[sid]
                    payload = water.encode({"distance_mm": round(r["zero_mm"] - level * 10), "battery": 90,
                                            "probe_fault": False, "tamper": False, "temperature": 8})  # fmt: skip
                    topic, body = chirpstack_event(r["dev_eui"], sid, f_cnt=n, f_port=2, payload=payload,
                                                   ts=clock.now(), dedup_id=uuid.uuid4().hex)  # fmt: skip
                    await client.publish(topic, body, qos=1)
                await clock.sleep(60)
            await wait_for(lambda: any(w.status == "issued" for w in env.warnings.values()), "issued")
            wid = next(iter(env.warnings))
            await wait_for(lambda: "HOCHWASSER" in dsim.shown(board), "on the display")
            await d.storage.flush()
        async with running(settings, inv, clock) as d2:
            env2 = d2.environment
            assert env2 is not None
            assert env2.warnings[wid].status == "issued"
            assert d2.displays is not None
            await wait_for(lambda: wid in d2.displays.warnings, "the display warning taken again")
            s = Site(d2, sim, client, settings, inv, d2.link.protocol == "5")
            await d2.link.wait_connected(10)
            ack = await s.request(
                f"cmd/environment/warnings/{wid}", {"action": "withdraw", "comment": "over"}
            )
            assert ack["ok"] is True, ack
            await wait_for(lambda: wid not in d2.displays.warnings, "withdrawn")  # type: ignore[union-attr]
