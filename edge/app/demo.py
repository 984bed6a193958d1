"""`edge demo`: an embedded broker, the demo district's simulators and the daemon on one clock.

The clock starts shortly before sunset and runs faster than real time, so a short run
shows lights coming on, the plan dimming them, a cyclist raising the bike path ahead,
an operator override, a failed lamp and a controller that drops out and comes back.
With `--headless --for SECONDS` it prints one JSON summary at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiomqtt
import orjson
import structlog

from controllers.lighting import night_window
from devices.inventory import Inventory, load_inventory
from edge.app.daemon import Daemon, running, site_bins
from edge.app.demo_safety import (
    STORM_SHARE,
    environment_summary,
    help_calls,
    helppoints_summary,
    run_storm,
    storm_for,
)
from edge.app.demo_summary import charging_summary, displays_summary, summary, waste_summary
from edge.app.domains.helppoints import endpoints_of as helppoint_endpoints
from edge.broker import BrokerProcess
from edge.clock import SimClock
from edge.net import free_port
from edge.settings import Settings, WasteSettings, load_settings
from edge.tasks import cancel_and_wait
from simulators.charging import ChargingSimulator, SimChargePoint, SimFeeder
from simulators.charging_ocpp import DEFAULT_ID_TAG
from simulators.displays import DisplaySimulator, SimBoard, SimSign
from simulators.helppoints import HelpPointSimulator, SimButton, SimHelpPoint, block_ranges
from simulators.lighting import LightingSimulator, SimController, SimLamp
from simulators.parking import ParkingSimulator, SimCarPark
from simulators.waste import WasteSimulator

log = structlog.get_logger(__name__)

SITE_DIR = Path(__file__).parent / "sites" / "kreuzviertel"
DEMO_LOG_ROOT = "dos-edge-demo"


def demo_log_path(root: Path | None = None) -> Path:
    """A fresh log file for one demo run: `{tmp}/dos-edge-demo/{YYYYmmdd-HHMMSS}-{pid}-{random}/demo.log`.

    Every run gets a directory of its own (created here, never reused), so two demos at the
    same time, or one after the other, never overwrite each other's log.
    """
    base = (root or Path(tempfile.gettempdir())) / DEMO_LOG_ROOT
    base.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(tempfile.mkdtemp(prefix=f"{stamp}-{os.getpid()}-", dir=base))
    return run_dir / "demo.log"


class _ModbusSendCancelled(logging.Filter):
    """pymodbus logs at ERROR each request it drops on a connection that just closed (and then
    "Repeating...."); the driver reports that endpoint down itself, as a warning, once. Keep the
    line, at the driver's level, so a demo's stderr has errors only for real errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and record.getMessage().startswith(
            ("Cancel send, because not connected", "Repeating....")
        ):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def sim_controllers(
    inv: Inventory, watchdog_s: float = 1800.0, extra: Mapping[str, tuple[tuple[int, int], ...]] | None = None
) -> list[SimController]:
    """Simulated lamp controllers matching an inventory (same endpoints, same lamps); `extra`: per
    controller, the register blocks of other devices in its posts (help points)."""
    extra = extra or {}
    return [
        SimController(
            endpoint_id=c.id,
            host=c.host,
            port=c.port,
            unit=c.unit,
            lamps=tuple(
                SimLamp(device_id=lamp.id, index=lamp.index, p_max_w=lamp.p_max_w, p_min_w=lamp.p_min_w)
                for lamp in c.lamps
            ),
            watchdog_s=watchdog_s,
            extra=extra.get(c.id, ()),
        )
        for c in inv.controllers.values()
    ]


def remap_ports(inv: Inventory, charger_url: str = "") -> Inventory:
    """Move every controller (and the charger server) to a free local port: the demo never collides."""
    ports = {cid: free_port() for cid in inv.controllers}
    moved = Inventory.build(dataclasses.replace(x, port=ports[x.controller]) for x in inv.lamps.values())
    if not inv.chargers:
        return moved
    return moved.with_chargers(
        dataclasses.replace(c, url=charger_url or c.url) if c.protocol == "opcua" else c
        for c in inv.chargers.values()
    )


def sim_chargers(
    inv: Inventory, settings: Settings, speed: float = 1.0
) -> tuple[list[SimChargePoint], list[SimFeeder]]:
    """Simulated charge points and feeders matching the inventory and the supply-tree settings.

    The chargers' watchdog guards against a real outage, so it counts real time: at 300x a
    120 s watchdog would be 0.4 real seconds, and any hiccup of a loaded machine would look
    like two minutes of silence. It stays below the lamp controllers' (sim_controllers).
    The chargers come with a factory fail-safe of 6 A; the daemon writes the site's at connect.
    """
    feeders = [
        # The fuse counts clock time: at 300x its 60 s would be 0.2 real seconds, less than the
        # interlock's real-time reaction on a busy machine (as for the watchdogs below).
        SimFeeder(
            f.id,
            limit_a=f.limit_a,
            phases=f.phases,
            night_only=f.live == "night",
            trip_after_s=max(60.0, 2.0 * speed),
        )
        for f in settings.charging.feeders
    ]
    cps = [
        SimChargePoint(
            c.id,
            max_current_a=c.max_current_a,
            phases=c.phases,
            feeder=c.feeder,
            sessions_per_day=1.2,
            watchdog_s=max(120.0, 4.0 * speed),
            protocol=c.protocol,
        )
        for c in inv.chargers.values()
    ]
    return cps, feeders


def with_ocpp(settings: Settings, tmp: Path, speed: float) -> tuple[Settings, dict[str, str]]:
    """The demo's central system on a free port, with fresh passwords for its OCPP charge points
    (written where the site's `passwords_file` is read from) and, like the OPC UA watchdogs,
    heartbeat and fail-safe timeout in real seconds at high speeds."""
    oc = settings.charging.ocpp
    if oc is None:
        return settings, {}
    inv = load_inventory(settings.inventory_path())
    passwords = {c.id: secrets.token_urlsafe(12) for c in inv.chargers.values() if c.protocol == "ocpp"}
    file = tmp / "ocpp_passwords.toml"
    file.write_text("".join(f'{k} = "{v}"\n' for k, v in passwords.items()), encoding="utf-8")
    beat = max(oc.heartbeat_interval_s, speed)
    oc = oc.model_copy(
        update={
            "port": free_port(),
            "passwords_file": str(file),
            "heartbeat_interval_s": beat,
            "failsafe_timeout_s": max(oc.failsafe_timeout_s, 4.0 * speed, 2 * beat),
        }
    )
    charging = settings.charging.model_copy(update={"ocpp": oc})
    return settings.model_copy(update={"charging": charging}), passwords


async def _couple(d: Daemon, csim: ChargingSimulator) -> None:
    """The physical world: lamps draw from the feeders the chargers share (the simulator
    watches every feeder on every physics tick and records each overload and trip)."""
    s = d.charging.safety if d.charging is not None else None
    while True:
        now = d.clock.now()
        if s is not None:
            for f in d.settings.charging.feeders:
                csim.set_lighting_load(f.id, s.lighting_now_a(f.id, now, d.dispatcher.view))
                if f.live == "night":  # the cabinet switches the lighting circuit with the lights
                    csim.set_feeder_live(f.id, s.feeder_limit(f.id, now) > 0)
        await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def _broker(url: str, port: int = 0) -> AsyncIterator[str]:
    if url:
        yield url
        return
    async with BrokerProcess(port=port) as broker:  # its own core: see edge/broker.py
        yield broker.url


async def _scenario(
    d: Daemon, sim: LightingSimulator, url: str, rnd: random.Random, horizon_s: float | None
) -> None:
    """Things that happen in the night: a cyclist, an override, failures, a controller outage."""
    base = d.api.base
    inv = d.inventory
    bike = list(inv.segments.get("radweg-tremoniapark", ()))
    ordinary = [lamp.id for lamp in inv.lamps.values() if not lamp.flags]
    host, port = _host_port(url)
    clock = d.clock
    on, _off = night_window(d.settings.site, d.settings.lighting, clock.now())
    night = min(15 * 3600.0, horizon_s or 15 * 3600.0)

    async def at(fraction: float) -> None:
        await clock.sleep(max(0.0, on + fraction * night - clock.now()))

    async with aiomqtt.Client(host, port, identifier="demo-scenario", timeout=5) as client:
        await at(0.05)
        failed = rnd.choice(ordinary)
        sim.inject(failed, "lamp_failure")
        log.info("demo_fault_injected", device=failed, fault="lamp_failure")
        await at(0.10)
        seg = "kreuzstrasse"
        await client.publish(
            f"{base}/cmd/segments/{seg}",
            orjson.dumps(
                {"action": "set_level", "level": 100, "duration_s": 3600, "reason": "event in the street"}
            ),
            qos=1,
        )
        log.info("demo_operator_override", segment=seg, level=100)
        await client.publish(
            f"{base}/cmd/lights/{inv.segments['hohe-strasse'][0]}",
            orjson.dumps({"action": "set_level", "level": 20}),
            qos=1,
        )  # under the never-dim floor: refused
        if d.charging is not None:
            now = clock.now()
            prices = [0.35 if 16 <= ((now + i * 900) / 3600 + 1) % 24 < 22 else 0.22 for i in range(96)]
            await client.publish(
                f"{base}/utility/dso/signals",
                orjson.dumps({"action": "price_curve", "kind": "price", "start": now, "values": prices}),
                qos=1,
            )
            await client.publish(
                f"{base}/utility/dso/limits",
                orjson.dumps(
                    {
                        "action": "curtail",
                        "target": "feeder-4",
                        "limit_kw": 8.0,
                        "start": now,
                        "end": now + 7200,
                    }
                ),
                qos=1,
            )
            log.info("demo_utility_curtailment", feeder="feeder-4", limit_kw=8.0)
        if d.displays is not None:
            await at(0.14)
            now = clock.now()
            warning = {"action": "warn", "id": "storm-1", "severity": "severe", "lines": ["STURMWARNUNG", "Parks meiden"],
                       "start": now, "end": now + 1800, "response_topic": f"{base}/replies/demo"}  # fmt: skip
            await client.publish(f"{base}/cmd/warnings/set", orjson.dumps(warning), qos=1)
            log.info("demo_warning", id="storm-1")
        await at(0.18)
        drifted = rnd.choice([x for x in ordinary if x != failed])
        sim.inject(drifted, "power_high")
        ctrl = list(inv.controllers)[-1]
        sim.inject(ctrl, "comm_loss")
        log.info("demo_fault_injected", device=ctrl, fault="comm_loss")
        await at(0.24)
        sim.clear(ctrl, "comm_loss")
        for k in range(1_000):  # bounded: a cyclist every few minutes of clock time
            await at(0.28 + 0.05 * k)
            if not bike or clock.now() > on + night:
                break
            for lamp_id in bike[:: max(1, len(bike) // 8)]:
                await client.publish(f"{base}/field/motion/{lamp_id}", b'{"detected": true}', qos=0)
                await clock.sleep(30)


def _host_port(url: str) -> tuple[str, int]:
    hostport = url.split("://", 1)[1].rsplit("@", 1)[-1]
    host, _, port = hostport.partition(":")
    return host, int(port or 1883)


async def _car_parks(d: Daemon, url: str, seed: int) -> None:
    """Car parks through the evening (arrivals and departures), reported by counters and bay sensors."""
    cfg = d.settings.displays
    if not cfg.car_parks:
        return
    host, port = _host_port(url)
    sim = ParkingSimulator(
        [SimCarPark(c.id, c.capacity, tuple(c.sensors)) for c in cfg.car_parks],
        d.clock,
        base_topic=d.api.base,
        seed=seed,
    )
    async with aiomqtt.Client(host, port, identifier="demo-car-parks", timeout=5) as client:
        await sim.run(client, every_s=300.0)


def demo_waste(settings: Settings, start: float) -> WasteSettings:
    """The site's [waste] for a demo that starts at `start` (evening): the trucks work the demo's
    hours instead of tomorrow morning, every day is a run day, the plan comes an hour in (every bin
    has reported by then) and the solver gets less time."""
    w = settings.waste
    if w.bins is None:
        return w
    tz = ZoneInfo(settings.site.timezone)
    t = datetime.fromtimestamp(start, tz)
    if t.hour >= 21:  # keep the shift inside the day (HH:MM windows do not wrap)
        t = t.replace(hour=14, minute=0)
    plan = t + timedelta(hours=1)
    shift = f"{(plan + timedelta(minutes=5)):%H:%M}-23:59"
    trucks = [x.model_copy(update={"shift": shift}) for x in w.trucks]
    zones = [z.model_copy(update={"window": shift}) for z in w.zones]
    return w.model_copy(
        update={
            "plan_at": f"{plan:%H:%M}",
            "run_days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
            "trucks": trucks,
            "zones": zones,
            "solver_time_s": min(w.solver_time_s, 3.0),
        }
    )


def charging_simulator(
    settings: Settings,
    cps: list[SimChargePoint],
    feeders: list[SimFeeder],
    clock: SimClock,
    passwords: Mapping[str, str],
    opc_port: int,
    seed: int,
) -> ChargingSimulator:
    """The district's charge points: the OPC UA server on `opc_port`, the OCPP ones connecting
    to the central system of `settings` (see `with_ocpp`) with their passwords."""
    oc = settings.charging.ocpp
    return ChargingSimulator(
        cps,
        clock,
        feeders=feeders,
        port=opc_port,
        seed=seed,
        ocpp_url=None if oc is None else f"ws://127.0.0.1:{oc.port}{oc.path}",
        ocpp_passwords=passwords,
        ocpp_id_tags=tuple(oc.id_tags) if oc is not None and oc.id_tags else (DEFAULT_ID_TAG,),
    )


@dataclass(frozen=True, slots=True)
class _District:
    """The demo district before anything runs: settings, inventory, clock and simulated parts."""

    settings: Settings
    inv: Inventory
    clock: SimClock
    cps: list[SimChargePoint]
    feeders: list[SimFeeder]
    opc_port: int
    ocpp_passwords: dict[str, str]


def _prepare(database_url: str, tmp: Path, speed: float) -> _District:
    """The demo site with free ports for the OPC UA server and the signs, its clock at dusk."""
    settings = load_settings(
        SITE_DIR / "site.toml", storage__url=database_url or f"sqlite:///{tmp / 'demo.db'}"
    )
    opc_port = free_port()
    inv = remap_ports(
        load_inventory(settings.inventory_path()), f"opc.tcp://127.0.0.1:{opc_port}/dos-edge/chargers"
    )
    on, _ = night_window(settings.site, settings.lighting, _now())
    clock = SimClock(start=on - 120.0, speed=speed)
    cps, feeders = sim_chargers(inv, settings, speed)
    settings, ocpp_passwords = with_ocpp(settings, tmp, speed)
    signs = [
        x.model_copy(update={"port": free_port()}) if x.kind == "sign" else x
        for x in settings.displays.displays
    ]
    settings = settings.model_copy(
        update={
            "displays": settings.displays.model_copy(update={"displays": signs}),
            "waste": demo_waste(settings, clock.now()),
        }
    )
    return _District(settings, inv, clock, cps, feeders, opc_port, ocpp_passwords)


@contextlib.asynccontextmanager
async def _simulators(
    district: _District, url: str, seed: int, speed: float
) -> AsyncIterator[
    tuple[LightingSimulator, ChargingSimulator, DisplaySimulator, WasteSimulator | None, HelpPointSimulator]
]:
    """Every simulated device of the district, running on the demo broker."""
    settings, clock = district.settings, district.clock
    signs = settings.displays.displays
    bins = site_bins(settings)
    points = [SimHelpPoint(hp, ep.endpoint_id, slot) for ep in helppoint_endpoints(settings, district.inv)
              for slot, hp in ep.points]  # fmt: skip
    buttons = [
        SimButton(p.id, p.dev_eui, "tts")
        for p in settings.helppoints.points
        if p.via == "lorawan" and p.dev_eui
    ]
    async with (
        LightingSimulator(sim_controllers(district.inv, extra=block_ranges(points)), clock, seed=seed) as sim,
        HelpPointSimulator(points, sim, clock, buttons=buttons, mqtt_url=url, seed=seed) as hsim,
        charging_simulator(
            settings, district.cps, district.feeders, clock, district.ocpp_passwords, district.opc_port, seed
        ) as csim,
        DisplaySimulator(
            clock,
            boards=[SimBoard(x.id) for x in signs if x.kind == "board"],
            # The fail-safe counts clock time: at 300x, 300 s would be one real second.
            signs=[
                SimSign(x.id, port=x.port, failsafe_after_s=int(60 * speed))
                for x in signs
                if x.kind == "sign"
            ],
            mqtt_url=url,
        ) as dsim,
        contextlib.AsyncExitStack() as stack,
    ):
        wsim = None
        if bins:
            wsim = await stack.enter_async_context(
                WasteSimulator(
                    settings.waste,
                    bins,
                    clock,
                    mqtt_url=url,
                    seed=seed,
                    timezone=settings.site.timezone,
                    # at most five positions per truck and real second: the embedded broker
                    # is the bottleneck of a fast demo
                    state_every_s=max(20.0, speed / 5),
                    uplink_qos=0,  # as a network server forwards them; the ingest dedups
                )
            )
        yield sim, csim, dsim, wsim, hsim


async def run_demo(
    *,
    seconds: float | None,
    headless: bool,
    speed: float,
    broker_url: str,
    database_url: str,
    seed: int = 1,
    broker_port: int = 0,
    metrics_port: int | None = None,
    status_lines: bool = True,
    on_summary: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the demo district; return the summary (printed by the CLI when headless).

    `seconds` counts from the call, start-up included, so a `--for N` run ends about N
    seconds in; `on_summary` gets the summary before the district shuts down.
    """
    started = time.monotonic()
    pymodbus_log = logging.getLogger("pymodbus.logging")
    if not any(isinstance(f, _ModbusSendCancelled) for f in pymodbus_log.filters):
        pymodbus_log.addFilter(_ModbusSendCancelled())
    tmp = Path(tempfile.mkdtemp(prefix="dos-edge-demo-"))
    try:
        district = _prepare(database_url, tmp, speed)
        async with _broker(broker_url, broker_port) as url:
            # amqtt speaks 3.1.1 only: no v5 probe (it costs a connect timeout on every start)
            settings = _with_mqtt(district.settings, url, "5" if broker_url else "3.1.1")
            if metrics_port is not None:  # the operations endpoint, on loopback
                metrics = settings.metrics.model_copy(update={"enabled": True, "port": metrics_port})
                settings = settings.model_copy(update={"metrics": metrics})
            async with (
                _simulators(district, url, seed, speed) as (sim, csim, dsim, wsim, hsim),
                # the summary is taken by then: a short drain keeps `--for N` near N seconds
                running(settings, district.inv, district.clock, drain_s=1.5) as d,
                asyncio.TaskGroup() as tg,
            ):
                horizon = None if seconds is None else seconds * speed
                tasks = [
                    tg.create_task(_couple(d, csim), name="demo.grid"),
                    tg.create_task(_car_parks(d, url, seed), name="demo.car_parks"),
                    tg.create_task(
                        _scenario(d, sim, url, random.Random(seed), horizon), name="demo.scenario"
                    ),
                ]
                # The safety services' scenario spans what is left of the run (2 h of clock when unbounded).
                left = 7200.0 if seconds is None else (seconds - (time.monotonic() - started)) * speed
                storm = storm_for(d, left * STORM_SHARE if seconds is not None else None)
                t0 = district.clock.now()

                async def at(fraction: float) -> None:
                    await district.clock.sleep(max(0.0, t0 + fraction * left - district.clock.now()))

                tasks.append(tg.create_task(help_calls(d, hsim, url, at), name="demo.help_calls"))
                if storm is not None:
                    tasks.append(tg.create_task(run_storm(d, url, storm), name="demo.storm"))
                if status_lines and not headless:
                    tasks.append(tg.create_task(_status_lines(d, sim), name="demo.status"))
                try:
                    if seconds is None:
                        await asyncio.Event().wait()
                    else:
                        await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
                finally:
                    result = summary(d, sim)
                    result["charging"] = charging_summary(d, csim)
                    result["displays"] = displays_summary(d, dsim)
                    result["waste"] = waste_summary(d, wsim)
                    result["help_points"] = helppoints_summary(d)
                    result["environment"] = environment_summary(d, storm)
                    await cancel_and_wait(tasks)
                if on_summary is not None:
                    on_summary(result)
            return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _with_mqtt(settings: Settings, url: str, protocol: str = "5") -> Settings:
    mqtt = settings.mqtt.model_copy(update={"url": url, "protocol": protocol})
    return settings.model_copy(update={"mqtt": mqtt})


def _now() -> float:
    return time.time()


async def _status_lines(d: Daemon, sim: LightingSimulator) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(d.settings.site.timezone)
    while True:
        await asyncio.sleep(2.0)
        s = summary(d, sim)
        t = datetime.fromtimestamp(d.clock.now(), tz).strftime("%H:%M")
        print(
            f"{t}  lamps lit {s['lamps']['lit']:3d}/{s['lamps']['total']} dimmed {s['lamps']['dimmed']:3d} "
            f"failed {s['lamps']['failed']}  "
            f"commands {s['commands']['confirmed']}/{s['commands']['submitted']} "
            f"alarms +{s['alarms']['raised']} -{s['alarms']['cleared']}",
            file=sys.stdout,
            flush=True,
        )
