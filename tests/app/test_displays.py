"""Parking guidance end to end: a car park fills and the signs change their guidance.

Real parts: the daemon, a broker, the display simulators (an MQTT board and a Modbus sign),
LoRaWAN bay sensors in ChirpStack format, a car park counter over MQTT, the lighting simulator.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import aiomqtt
import orjson
from harness import NIGHT, Site, one_controller_site, wait_for

from devices.inventory import load_inventory
from devices.profiles.lorawan import default_profiles
from edge.app.daemon import running
from edge.app.demo import sim_controllers
from edge.clock import SimClock
from edge.net import free_port
from edge.settings import load_settings
from simulators.displays import DisplaySimulator, SimBoard, SimSign
from simulators.lighting import LightingSimulator
from simulators.lorawan import chirpstack_event

BAYS = tuple(f"70b3d57ed000000{i}" for i in range(1, 7))  # a sensor in each of the six bays


def write_site(
    tmp: Path, site: str, mqtt_url: str, db_url: str, board: str, sign: str, sign_port: int
) -> Path:
    return one_controller_site(tmp, site, mqtt_url, db_url, [("L1", 51.51, 7.45)], f"""
[displays]
min_update_s = 0
step_s = 0.1
displays = [
  {{ id = "{board}", kind = "board", lat = 51.509, lon = 7.454 }},
  {{ id = "{sign}", kind = "sign", lat = 51.509, lon = 7.454, port = {sign_port} }},
]
car_parks = [
  {{ id = "p1", name = "P Near", capacity = 100, lat = 51.510, lon = 7.455 }},
  {{ id = "p2", name = "P Bays", capacity = 6, lat = 51.512, lon = 7.460, sensors = {list(BAYS)} }},
]
approaches = [ {{ id = "north", lat = 51.509, lon = 7.454, demand = 1, signs = ["{board}", "{sign}"] }} ]
[logging]
level = "warning"
""")  # fmt: skip


async def test_car_park_fills_and_signs_change(tmp_path: Path, mqtt_url: str, database_url: str) -> None:
    """Signs guide to the near car park; when it fills they guide to the bays the sensors report free."""
    token = uuid.uuid4().hex[:8]
    board, sign = f"led-{token}", f"vms-{token}"
    sign_port = free_port()
    cfg = write_site(tmp_path, "dp" + token, mqtt_url, database_url, board, sign, sign_port)
    settings = load_settings(cfg)
    inv = load_inventory(settings.inventory_path())
    clock = SimClock(NIGHT)
    host, port = mqtt_url.split("://")[1].split(":")
    parking = default_profiles()["parking_magnetic"]
    async with (
        LightingSimulator(sim_controllers(inv), clock),
        DisplaySimulator(
            clock, boards=[SimBoard(board)], signs=[SimSign(sign, port=sign_port)], mqtt_url=mqtt_url
        ) as dsim,
        running(settings, inv, clock) as d,
        aiomqtt.Client(host, int(port), identifier=f"t-{token}") as client,
    ):
        await d.link.wait_connected(10)
        base = d.api.base
        await client.publish(f"{base}/field/carparks/p1", orjson.dumps({"free": 40}), qos=1)
        await wait_for(
            lambda: "P Near" in dsim.shown(board) and "frei 40" in dsim.shown(sign),
            "guidance to P Near",
            timeout_s=30,  # a board counts as up at its first live status after the driver subscribed
        )
        # The bay sensors report both bays free (ChirpStack, one of them twice: a duplicate).
        for i, eui in enumerate(BAYS):
            topic, body = chirpstack_event(eui, f"bay{i}", f_cnt=5, f_port=1, payload=parking.encode({"occupied": False}),
                                           ts=clock.now(), dedup_id=f"{token}-{i}")  # fmt: skip
            await client.publish(topic, body, qos=1)
            await client.publish(topic, body, qos=1)
        await client.publish("application/x/device/0000000000000000/event/up", b"{broken", qos=1)
        # P Near fills up: the signs move to the car park the sensors report free.
        await client.publish(f"{base}/field/carparks/p1", orjson.dumps({"free": 0}), qos=1)
        await wait_for(
            lambda: "P Bays" in dsim.shown(board) and "P Bays" in dsim.shown(sign), "guidance to P Bays"
        )
        assert "frei 6" in dsim.shown(board)
        assert d.ingest is not None
        # counted, nothing crashed; the boards' own status topics on the same broker are not uplinks
        # (uplink topics are shared by every site on a broker: at least ours is counted)
        assert d.ingest.stats.refused.get("malformed_json", 0) >= 1
        assert d.ingest.stats.duplicates >= len(BAYS)  # each uplink was sent twice
        # A warning over MQTT takes the displays over, with an ack.
        s = Site(d, None, client, settings, inv, d.link.protocol == "5")  # type: ignore[arg-type]
        now = clock.now()
        ack = await s.request("cmd/warnings/set", {"action": "warn", "id": "storm", "severity": "severe",
                                                    "lines": ["STURM"], "start": now, "end": now + 600,
                                                    "area": {"lat": 51.509, "lon": 7.454, "radius_m": 300}})  # fmt: skip
        assert ack["ok"] is True
        assert ack["counts"]["displays"] == 2
        await wait_for(
            lambda: "STURM" in dsim.shown(board) and "STURM" in dsim.shown(sign), "the warning shown"
        )
