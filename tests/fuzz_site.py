"""A small district on real parts for the topic fuzzer: every domain, every simulator, one daemon.

Lamps (two Modbus controllers, a never-dim junction lamp and a fear space), three charge points
on one 25 A night circuit (OPC UA), an LED board (MQTT) and a message sign (Modbus), two car
parks (a counter over MQTT and LoRaWAN bay sensors), four bins (LoRaWAN) and two trucks (fleet
protocol). The daemon runs in its own task so a test can see it die, restart it on the same
simulators, and learn what it subscribes to from its own SUBSCRIBE calls (`SubscriptionSpy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from controllers.lighting import floor_level
from devices.inventory import Bin, Inventory, load_inventory, write_bins
from edge.app.daemon import Daemon, running
from edge.app.demo import sim_chargers, sim_controllers
from edge.clock import SimClock
from edge.net import free_port
from edge.settings import Settings, load_settings
from simulators.charging import ChargingSimulator
from simulators.displays import DisplaySimulator, SimBoard, SimSign
from simulators.lighting import LightingSimulator
from simulators.waste import WasteSimulator

WAIT_S = 20.0
FEEDER = "lc"
FEEDER_LIMIT_A = 25.0
VOLTS = 230.0
OVERLOAD_GRACE_S = 0.5
# Modules whose SUBSCRIBE calls are the daemon's (its API link and its device drivers).
DAEMON_MODULES = ("edge.", "devices.", "controllers.")
# Subscriptions that only read retained state once at start (the alarm sweep learns which
# `alarms/active` topics the broker keeps): no listener, so nothing there is fuzzed as input.
STARTUP_READERS = ("edge.alarms",)


class SubscriptionSpy:
    """Records every topic filter the daemon's MQTT clients subscribe to.

    It wraps `aiomqtt.Client.subscribe` and keeps the filters whose caller lives in the
    daemon's packages: the API link (requests, field input, uplinks) and the drivers (board
    status, fleet). A topic a new route or driver subscribes to is thus fuzzed without
    anyone adding it to a list.
    """

    def __init__(self) -> None:
        self.filters: dict[str, str] = {}  # filter -> module that subscribed

    def install(self, setattr_: Callable[[object, str, object], None]) -> None:
        original = aiomqtt.Client.subscribe
        spy = self

        def subscribe(
            self: aiomqtt.Client, topic: Any, *args: Any, **kwargs: Any
        ) -> Coroutine[Any, Any, Any]:
            module = str(sys._getframe(1).f_globals.get("__name__", ""))
            if module.startswith(DAEMON_MODULES) and not module.startswith(STARTUP_READERS):
                topics = (
                    [topic]
                    if isinstance(topic, str)
                    else [t[0] if isinstance(t, tuple) else t for t in topic]
                )
                for t in topics:
                    spy.filters.setdefault(str(t), module)
            return original(self, topic, *args, **kwargs)

        setattr_(aiomqtt.Client, "subscribe", subscribe)


def _write_site(tmp: Path, token: str, mqtt_url: str, db_url: str, sign_port: int) -> tuple[Path, list[Bin]]:
    ports = [free_port(), free_port()]
    opc_port = free_port()
    fields = ["id", "kind", "lat", "lon", "segment", "order", "lighting_class", "flags", "cabinet", "feeder",
              "controller", "port", "index", "p_max_w", "post", "url", "max_current_a", "phases"]  # fmt: skip
    with (tmp / "inventory.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, restval="")
        w.writeheader()
        for i in range(6):
            w.writerow({"id": f"A{i}", "kind": "lamp", "lat": 51.51, "lon": 7.45 + i * 1e-4, "segment": "main",
                        "order": i, "lighting_class": "M3", "flags": "never_dim" if i == 0 else "",
                        "cabinet": "cab", "feeder": FEEDER, "controller": "c1", "port": ports[0], "index": i,
                        "p_max_w": 70})  # fmt: skip
            w.writerow({"id": f"B{i}", "kind": "lamp", "lat": 51.509, "lon": 7.45 + i * 1e-4, "segment": "bike",
                        "order": i, "lighting_class": "P4", "flags": "fear_space" if i == 5 else "bike_path",
                        "cabinet": "cab", "feeder": FEEDER, "controller": "c2", "port": ports[1], "index": i,
                        "p_max_w": 25})  # fmt: skip
        for i in range(3):
            w.writerow({"id": f"CP{i}", "kind": "charger", "lat": 51.51, "lon": 7.45, "cabinet": "cab",
                        "feeder": FEEDER, "controller": "chargers", "post": f"A{i + 1}", "max_current_a": 16,
                        "phases": 1, "url": f"opc.tcp://127.0.0.1:{opc_port}/dos-edge/chargers"})  # fmt: skip
    bins = [
        Bin(
            id=f"W{i}",
            dev_eui=f"{token[:8]}{i:08x}",
            lat=51.505 + 0.001 * i,
            lon=7.446,
            kind="residential",
            volume_l=1100.0,
            height_mm=1250.0,
            blind_zone_mm=250.0,
            density_kg_l=0.12,
            road_class="residential",
            zone="",
        )
        for i in range(4)
    ]
    write_bins(tmp / "bins.csv", bins)
    bays = [f"{token[:8]}aa00000{i}" for i in range(3)]
    (tmp / "site.toml").write_text(
        f"""
[site]
id = "fz{token}"
latitude = 51.51
longitude = 7.455
[storage]
url = "{db_url}"
flush_interval_s = 0.05
history_interval_s = 3600
[mqtt]
url = "{mqtt_url}"
client_id = "edge-fz{token}"
telemetry_interval_s = 3600
[lighting]
poll_interval_s = 0.1
timeout_s = 0.5
backoff_max_s = 0.3
plan_time_limit_s = 2
[dispatcher]
write_timeout_s = 1
command_ttl_s = 5
reconcile_interval_s = 0.5
[charging]
allow_no_security = true
lease_s = 20
replan_interval_s = 300
cabinets = [{{ id = "cab", limit_a = 100 }}]
feeders = [{{ id = "{FEEDER}", cabinet = "cab", limit_a = {FEEDER_LIMIT_A}, phases = 1, live = "night" }}]
[displays]
min_update_s = 0
step_s = 0.2
displays = [
  {{ id = "led-{token}", kind = "board", lat = 51.509, lon = 7.454 }},
  {{ id = "vms-{token}", kind = "sign", lat = 51.509, lon = 7.454, port = {sign_port} }},
]
car_parks = [
  {{ id = "p1", name = "P Near", capacity = 100, lat = 51.510, lon = 7.455 }},
  {{ id = "p2", name = "P Bays", capacity = 3, lat = 51.512, lon = 7.460, sensors = {bays} }},
]
approaches = [ {{ id = "north", lat = 51.509, lon = 7.454, demand = 1, signs = ["led-{token}", "vms-{token}"] }} ]
[waste]
bins = "bins.csv"
threshold = 0.8
plan_at = "08:00"
service_s = 60
solver_time_s = 1
depot = {{ lat = 51.5015, lon = 7.4435 }}
disposal = {{ lat = 51.5205, lon = 7.4330, service_s = 600 }}
trucks = [
  {{ id = "ta-{token}", volume_l = 16000, weight_kg = 9000, shift = "08:00-16:00" }},
  {{ id = "tb-{token}", volume_l = 16000, weight_kg = 9000, shift = "08:00-16:00" }},
]
[logging]
level = "error"
""",
        encoding="utf-8",
    )
    return tmp / "site.toml", bins


@dataclass
class District:
    """The simulators, the settings and the running daemon (restartable), for a fuzz run."""

    settings: Settings
    inventory: Inventory
    clock: SimClock
    lights: LightingSimulator
    chargers: ChargingSimulator
    displays: DisplaySimulator
    waste: WasteSimulator
    board: str
    sign: str
    runner: asyncio.Task[None] | None = None
    daemon: Daemon | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    starts: int = 0
    over_since: float | None = None  # real time the feeder went over its limit
    peak_over_a: float = 0.0  # the highest load seen over the limit, however short

    @property
    def d(self) -> Daemon:
        assert self.daemon is not None, "the daemon is not running"
        return self.daemon

    @property
    def base(self) -> str:
        return f"{self.settings.mqtt.topic_prefix}/{self.settings.site.id}"

    def alive(self) -> str | None:
        """Why the daemon is not up (None while it is): its task ended, or its link is down."""
        if self.runner is None:
            return "never started"
        if self.runner.done():
            exc = None if self.runner.cancelled() else self.runner.exception()
            return f"daemon task ended: {exc!r}"
        if not self.d.link.connected.is_set():
            return "daemon's MQTT link is down"
        return None

    async def start(self) -> Daemon:
        """Start the daemon in a task of its own; return once its link is up."""
        self._stop = asyncio.Event()
        ready: asyncio.Future[Daemon] = asyncio.get_running_loop().create_future()

        async def run() -> None:
            async with running(self.settings, self.inventory, self.clock, drain_s=1.0) as d:
                ready.set_result(d)
                await self._stop.wait()

        self.runner = asyncio.create_task(run(), name=f"fuzz.daemon[{self.starts}]")
        self.starts += 1
        try:
            async with asyncio.timeout(WAIT_S):
                self.daemon = await asyncio.shield(ready)
        except TimeoutError:
            if self.runner.done() and not self.runner.cancelled() and self.runner.exception():
                raise AssertionError(f"the daemon did not start: {self.runner.exception()!r}") from None
            raise
        await self.daemon.link.wait_connected(WAIT_S)
        assert self.daemon.fleet is not None
        await self.daemon.fleet.wait_connected(WAIT_S)
        return self.daemon

    async def stop(self) -> None:
        """Stop the daemon (if it still runs) and wait for it."""
        runner, self.runner = self.runner, None
        if runner is None:
            return
        self._stop.set()
        try:
            async with asyncio.timeout(WAIT_S):
                await asyncio.gather(runner, return_exceptions=True)
        except TimeoutError:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        self.daemon = None

    def couple(self) -> None:
        """Feed the charging simulator the lamps' real current on the shared circuit (physics)."""
        lamps_w = sum(float(self.lights.lamp(x)["power_w"]) for x in self.inventory.lamps)
        self.chargers.set_lighting_load(FEEDER, lamps_w / VOLTS)

    def physics_violations(self) -> list[str]:
        """Out-of-range device values, broken floors and feeder overloads, as the simulators hold them."""
        out: list[str] = []
        night = (
            self.d.lighting.plan is not None
            and self.d.lighting.plan.on <= self.clock.now() < self.d.lighting.plan.off
        )
        for lamp in self.inventory.lamps.values():
            v = self.lights.lamp(lamp.id)
            level = float(v["level_cmd"])
            if not 0 <= level <= 100:
                out.append(f"lamp {lamp.id} level_cmd {level} outside 0..100")
            floor = floor_level(lamp, self.settings.lighting)
            if night and floor and level < floor:
                out.append(f"lamp {lamp.id} at {level} % under its floor {floor} %")
        for cid, c in self.inventory.chargers.items():
            sp = float(self.chargers.cp(cid)["current_limit_a"])
            if not (sp == 0 or 6 <= sp <= c.max_current_a):
                out.append(f"charger {cid} setpoint {sp} A not 0 or 6..{c.max_current_a}")
        f = self.chargers.feeder(FEEDER)
        load = max(f["load_a"])  # type: ignore[call-overload]
        if load > FEEDER_LIMIT_A + 0.5:
            # The simulator sums the feeder once a tick, and a car follows a lowered setpoint
            # within one: an overload counts when it outlasts OVERLOAD_GRACE_S (the fuse takes 60 s).
            self.peak_over_a = max(self.peak_over_a, load)
            now = time.monotonic()
            self.over_since = self.over_since or now
            if now - self.over_since >= OVERLOAD_GRACE_S:
                setpoints = {c: self.chargers.cp(c)["current_limit_a"] for c in self.inventory.chargers}
                out.append(
                    f"feeder {FEEDER} carries {load:.1f} A > {FEEDER_LIMIT_A} A (setpoints {setpoints})"
                )
        else:
            self.over_since = None
        if f["tripped"]:
            out.append(f"feeder {FEEDER} tripped")
        for did in (self.board, self.sign):
            shown = self.displays.shown(did)
            lines = shown.split("\n") if shown else []
            if len(lines) > 4 or any(len(x) > 40 or not x.isprintable() for x in lines):
                out.append(f"display {did} shows {shown[:120]!r}")
            b = self.displays.brightness(did)
            if not 0 <= b <= 100:
                out.append(f"display {did} brightness {b}")
        return out


@contextlib.asynccontextmanager
async def district(tmp_path: Path, mqtt_url: str, database_url: str, start: float) -> AsyncIterator[District]:
    """The simulators of a small district, and its settings; the daemon is started by the caller."""
    token = uuid.uuid4().hex[:10]
    sign_port = free_port()
    cfg, bins = _write_site(tmp_path, token, mqtt_url, database_url, sign_port)
    settings = load_settings(cfg)
    inv = load_inventory(settings.inventory_path())
    clock = SimClock(start=start, speed=1.0)
    cps, feeders = sim_chargers(inv, settings)
    cps = [
        c.__class__(**{**{f: getattr(c, f) for f in c.__dataclass_fields__}, "sessions_per_day": 0})
        for c in cps
    ]
    opc_port = int(next(iter(inv.chargers.values())).url.rsplit(":", 1)[1].split("/", 1)[0])
    board, sign = f"led-{token}", f"vms-{token}"
    async with (
        LightingSimulator(sim_controllers(inv, watchdog_s=300), clock, seed=3) as lsim,
        ChargingSimulator(cps, clock, feeders=feeders, port=opc_port, seed=3, tick_s=0.2) as csim,
        DisplaySimulator(
            clock, boards=[SimBoard(board)], signs=[SimSign(sign, port=sign_port)], mqtt_url=mqtt_url
        ) as dsim,
        WasteSimulator(
            settings.waste, bins, clock, mqtt_url=mqtt_url, seed=3, client_id=f"wsim-{token}"
        ) as wsim,
    ):
        csim.set_feeder_live(FEEDER, True)
        yield District(settings, inv, clock, lsim, csim, dsim, wsim, board, sign)
