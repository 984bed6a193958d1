"""The city bench's child processes (all `spawn`): lamp simulators, the field simulators, the daemon.

- `serve_lamps`: a slice of the lamp controllers (`simulators.lighting.LightingSimulator`,
  physics every poll interval), sends their endpoints back, serves until `stop`.
- `serve_field`: every other simulated device of the site, from the run's site.toml and
  inventory, as the demo builds them (edge/app/demo.py): the charge points over OPC UA
  (`sim_chargers`), LED boards over MQTT and VMS signs over Modbus (`DisplaySimulator`), car-park
  counters (`ParkingSimulator`), bins with LoRaWAN uplinks and trucks (`WasteSimulator`, truck
  state every BENCH_CITY_TRUCK_S, uplink intervals spread between BENCH_CITY_UPLINK_MIN_S and
  _MAX_S).
- `run_daemon`: `edge.app.daemon.running` with a `SimClock` at the run's clock, and in the same
  process the bench's probes (city_probes.Probes): event-loop lag samples, plan events and
  timings, milestones of the start-up, and stack samples for CPU by area. Answers "stats" over
  the pipe until "stop".
"""

from __future__ import annotations

import os
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any


def quiet() -> None:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.getLogger("asyncua").setLevel(logging.ERROR)


def serve_lamps(conn: Connection, stop: MpEvent, total: int, per: int, lo: int, hi: int, tick_s: float,
                t0_wall: float) -> None:  # fmt: skip
    """Controllers [lo, hi) of `demo_controllers(total, per)` on free ports."""
    import asyncio

    import uvloop

    from bench.city_site import clock_at
    from edge.clock import SimClock
    from simulators import settle_heap
    from simulators.lighting import LightingSimulator, demo_controllers

    quiet()

    async def main() -> None:
        specs = demo_controllers(total, per, 0)[lo:hi]
        clock = SimClock(start=clock_at(t0_wall, time.time()))
        for attempt in range(5):  # free ports are picked per process: another may take one first
            try:
                sim = await LightingSimulator(specs, clock, tick_s=tick_s, seed=7 + lo).__aenter__()
            except (OSError, ExceptionGroup):  # "cannot listen on 127.0.0.1:PORT", from its task group
                if attempt == 4:
                    raise
                continue
            try:
                settle_heap()
                conn.send([(e.endpoint_id, e.host, e.port, e.unit, e.lamps) for e in sim.endpoints()])
                await asyncio.to_thread(stop.wait)
            finally:
                await sim.__aexit__(None, None, None)
            return

    uvloop.run(main())


def serve_field(conn: Connection, stop: MpEvent, config: str, t0_wall: float, knobs: dict[str, Any]) -> None:
    """Charge points, displays, car parks, bins and trucks of the site, until `stop`."""
    import asyncio
    import contextlib

    import uvloop

    import simulators.waste_bins as wb
    from bench.city_site import clock_at
    from devices.inventory import load_inventory
    from edge.app.daemon import site_bins
    from edge.app.demo import sim_chargers
    from edge.clock import SimClock
    from edge.settings import load_settings
    from simulators import settle_heap
    from simulators.charging import ChargingSimulator
    from simulators.displays import DisplaySimulator, SimBoard, SimSign
    from simulators.waste import WasteSimulator

    quiet()
    lo, hi = knobs["uplink_min_s"], knobs["uplink_max_s"]
    # the bench's uplink intervals: five steps from min to max, equally likely (module constants
    # FillModel reads when it draws each sensor's interval)
    wb.UPLINK_INTERVALS_S = tuple(lo + (hi - lo) * i / 4 for i in range(5))
    wb.UPLINK_WEIGHTS = (1, 1, 1, 1, 1)
    settings = load_settings(Path(config))
    inv = load_inventory(settings.inventory_path())
    url = settings.mqtt.url

    async def main() -> None:
        clock = SimClock(start=clock_at(t0_wall, time.time()))
        disp = settings.displays.displays
        async with contextlib.AsyncExitStack() as stack:
            if inv.chargers:
                cps, feeders = sim_chargers(inv, settings)
                opc_port = int(next(iter(inv.charger_servers.values()))[0].rsplit(":", 1)[1].split("/")[0])
                await stack.enter_async_context(
                    ChargingSimulator(cps, clock, feeders=feeders, port=opc_port, seed=3)
                )
            if disp:
                await stack.enter_async_context(
                    DisplaySimulator(
                        clock,
                        boards=[SimBoard(x.id) for x in disp if x.kind == "board"],
                        signs=[SimSign(x.id, port=x.port) for x in disp if x.kind == "sign"],
                        mqtt_url=url,
                    )
                )
            bins = site_bins(settings)
            if bins and settings.waste.trucks:
                await stack.enter_async_context(
                    WasteSimulator(
                        settings.waste,
                        bins,
                        clock,
                        mqtt_url=url,
                        seed=5,
                        timezone=settings.site.timezone,
                        state_every_s=knobs["truck_s"],
                        uplink_qos=0,
                    )
                )
            tasks = await _car_parks(stack, settings, clock, knobs["carpark_s"])
            settle_heap()
            conn.send("ready")
            await asyncio.to_thread(stop.wait)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    uvloop.run(main())


async def _car_parks(stack: Any, settings: Any, clock: Any, every_s: float) -> list[Any]:
    """The car-park counters (`ParkingSimulator`) on their own MQTT client, as the demo runs them."""
    import asyncio

    import aiomqtt

    from simulators.parking import ParkingSimulator, SimCarPark

    host, _, port = settings.mqtt.url.split("://", 1)[1].partition(":")
    tasks: list[asyncio.Task[None]] = []
    if settings.displays.car_parks:
        sim = ParkingSimulator(
            [SimCarPark(c.id, c.capacity, tuple(c.sensors)) for c in settings.displays.car_parks],
            clock,
            base_topic=f"{settings.mqtt.topic_prefix}/{settings.site.id}",
            seed=9,
        )
        client = await stack.enter_async_context(
            aiomqtt.Client(host, int(port or 1883), identifier=f"{settings.site.id}-parks", timeout=10)
        )
        tasks.append(asyncio.create_task(sim.run(client, every_s=every_s), name="bench.parks"))
    return tasks


def _write_memory_top(out: Path, n: int = 60) -> None:
    """The daemon's live Python memory by allocating line, largest first (tracemalloc)."""
    import tracemalloc

    snap = tracemalloc.take_snapshot()
    stats = snap.statistics("lineno")
    total = sum(st.size for st in stats)
    lines = [f"total {total / 2**20:.1f} MiB traced in {sum(st.count for st in stats)} blocks"]
    lines += [f"{st.size / 2**20:8.1f} MiB {st.count:9d} {st.traceback}" for st in stats[:n]]
    lines += ["", "by file:"]
    lines += [
        f"{st.size / 2**20:8.1f} MiB {st.count:9d} {st.traceback}" for st in snap.statistics("filename")[:n]
    ]
    lines += ["", "events alive, by type and what holds them (a sample of each):"]
    lines += _event_holders()
    out.write_text("\n".join(lines) + "\n")


def _event_holders(sample: int = 20) -> list[str]:
    """Events still alive (they should be gone once every subscriber has read them), counted by
    type, with the types of the objects that refer to a sample of them."""
    import gc
    from collections import Counter

    from edge.events import CommandResult, StateChanged, Telemetry

    alive: dict[str, list[object]] = {}
    for obj in gc.get_objects():
        if isinstance(obj, Telemetry | StateChanged | CommandResult):
            alive.setdefault(type(obj).__name__, []).append(obj)
    out = []
    for name, objs in sorted(alive.items()):
        holders: Counter[str] = Counter()
        for obj in objs[:sample]:
            for ref in gc.get_referrers(obj):
                if ref is objs:
                    continue
                holders[type(ref).__qualname__ + (f" len {len(ref)}" if hasattr(ref, "__len__") else "")] += 1
        out.append(f"{len(objs):9d} {name}: {dict(holders.most_common(5))}")
    return out


def _write_timeline(out: Path, probes: Any) -> None:
    """Per wall second: the stack sampler's area counts and the worst loop lag (for lining
    slow requests up with what the daemon was doing; BENCH_CITY_TIMELINE), and the collector's
    pauses over 5 ms (generation, ms)."""
    import json

    lag: dict[int, float] = {}
    for t, v in zip(probes.lag_at, probes.lags, strict=False):
        lag[int(t)] = max(lag.get(int(t), 0.0), v)
    areas = probes.sampler.timeline if probes.sampler is not None else {}
    pauses: dict[int, list[tuple[int, float]]] = {}
    for t, gen, took in probes.gc_long:
        pauses.setdefault(int(t), []).append((gen, round(took * 1e3, 1)))
    seconds = sorted(set(lag) | set(areas))
    rows = [
        {"t": t, "lag": round(lag.get(t, 0.0), 4), "areas": dict(areas.get(t, {})), "gc": pauses.get(t, [])}
        for t in seconds
    ]
    out.write_text(json.dumps(rows))


class StallWatch:
    """Where the event loop was stuck: the main thread's stack, sampled while the loop is late.

    A loop callback stamps the time every 20 ms; a thread looks every 25 ms and, when the stamp is
    older than `limit_s`, counts the main thread's innermost frames (BENCH_CITY_STALLS=<file>)."""

    def __init__(self, out: Path, limit_s: float = 0.15) -> None:
        import collections
        import threading

        self.out, self.limit_s = out, limit_s
        self.stamp = time.monotonic()
        self.stacks: collections.Counter[str] = collections.Counter()
        self.stalls = 0
        self._main = threading.main_thread().ident
        self._thread = threading.Thread(target=self._run, name="bench-stalls", daemon=True)

    async def beat(self) -> None:
        import asyncio

        self._thread.start()
        while True:
            self.stamp = time.monotonic()
            await asyncio.sleep(0.02)

    def _run(self) -> None:
        import sys
        import traceback

        late = False
        while True:
            time.sleep(0.025)
            if time.monotonic() - self.stamp < self.limit_s:
                late = False
                continue
            self.stalls += not late
            late = True
            frame = sys._current_frames().get(self._main or 0)
            if frame is not None:
                tb = traceback.extract_stack(frame)[-14:]
                self.stacks["\n".join(f"  {f.filename.split('/')[-2:]}:{f.lineno} {f.name}" for f in tb)] += 1

    def write(self) -> None:
        lines = [f"{self.stalls} stalls over {self.limit_s * 1000:.0f} ms; samples (every 25 ms) by stack:"]
        for stack, n in self.stacks.most_common(25):
            lines += [f"--- {n}", stack]
        self.out.write_text("\n".join(lines) + "\n")


def run_daemon(
    conn: Connection, config: str, t0_wall: float, start_timeout_s: float, sample_hz: float
) -> None:
    """Daemon child: start the daemon and the probes, report the start-up, answer 'stats' until 'stop'."""
    import asyncio

    import uvloop

    from bench.city_probes import Probes, StackSampler
    from bench.city_site import clock_at
    from devices.inventory import load_inventory
    from edge import logs
    from edge.app.daemon import running
    from edge.clock import SimClock
    from edge.settings import load_settings

    t_proc = time.time()
    memory_out = os.environ.get("BENCH_CITY_TRACEMALLOC", "")  # a file: where the daemon's memory went
    if memory_out:
        import tracemalloc

        tracemalloc.start(1)
    settings = load_settings(Path(config))
    logs.configure(settings.logging.level, "json")
    inv = load_inventory(settings.inventory_path())
    sampler = StackSampler(sample_hz) if sample_hz > 0 else None
    stalls_out = os.environ.get("BENCH_CITY_STALLS", "")  # a file: where the loop was stuck
    timeline_out = os.environ.get("BENCH_CITY_TIMELINE", "")  # a file prefix: per-second samples
    stalls = StallWatch(Path(stalls_out)) if stalls_out else None

    async def main() -> None:
        clock = SimClock(start=clock_at(t0_wall, time.time()))
        if sampler is not None:
            sampler.start()
        async with running(settings, inv, clock) as d:
            probes = Probes(d, sampler)
            async with asyncio.TaskGroup() as tg:
                probes.start(tg)
                beat = tg.create_task(stalls.beat(), name="bench.stalls") if stalls is not None else None
                ok = await probes.wait_started(start_timeout_s)
                conn.send(("ready" if ok else "timeout", {"t_proc": t_proc, **probes.stats()}))
                while True:
                    try:
                        msg = await asyncio.to_thread(conn.recv)
                    except EOFError:
                        break  # the parent is gone
                    if msg == "stats":
                        if memory_out:
                            _write_memory_top(Path(memory_out))
                        if stalls is not None:
                            stalls.write()
                        if timeline_out:
                            _write_timeline(Path(timeline_out + ".daemon.json"), probes)
                        conn.send(probes.stats())
                    elif msg == "replan_waste":
                        if d.waste is not None:
                            d.waste.request_replan()
                        conn.send("ok")
                    else:
                        break
                probes.stop()
                if beat is not None:
                    beat.cancel()
        if sampler is not None:
            sampler.stop()
        conn.send(("stopped", None))

    uvloop.run(main())
