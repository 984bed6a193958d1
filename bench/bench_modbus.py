"""Modbus polling: ModbusLightingDriver against a bare pymodbus loop reading the same registers.

The simulator (50 controllers x 100 lamps) runs in a child process so the measured
process is only the client. Both clients use uvloop, one task per controller and the
same coalesced reads (`plan_reads`); the ratio of lamp reads per second is what the
driver's decoding, telemetry events and scheduling cost on top of pymodbus.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

import uvloop
from pymodbus.client import AsyncModbusTcpClient

from bench.common import Row
from devices.lighting import ModbusEndpoint, ModbusLightingDriver, plan_reads
from devices.profiles.lighting import default_profile
from edge.clock import SystemClock
from edge.events import Event

CONTROLLERS = 50
LAMPS = 100
TARGET = 0.70
WARMUP_S = 1.0


def _serve(conn: Connection, stop: MpEvent, controllers: int, lamps: int) -> None:
    """Child process: run the simulator until `stop` is set; send the endpoints back."""
    import logging

    import structlog

    from simulators.lighting import LightingSimulator, demo_controllers

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    async def main() -> None:
        async with LightingSimulator(
            demo_controllers(controllers, lamps, 0), SystemClock(), tick_s=1.0
        ) as sim:
            conn.send([(e.endpoint_id, e.host, e.port, e.unit, e.lamps) for e in sim.endpoints()])
            await asyncio.to_thread(stop.wait)

    uvloop.run(main())


@dataclass(frozen=True, slots=True)
class _Result:
    requests_per_s: float
    lamps_per_s: float
    cpu_pct: float
    cpu_us_per_request: float


def _measure(body: Callable[[float], Coroutine[Any, Any, tuple[int, int]]], seconds: float) -> _Result:
    """Run `body(deadline)` under uvloop; it returns (requests, lamp reads) after warm-up."""

    async def main() -> tuple[int, int, float, float]:
        await asyncio.sleep(0)
        t0, c0 = time.perf_counter(), time.process_time()
        requests, lamps = await body(time.perf_counter() + seconds)
        return requests, lamps, time.perf_counter() - t0, time.process_time() - c0

    requests, lamps, wall, cpu = uvloop.run(main())
    return _Result(
        requests_per_s=requests / wall,
        lamps_per_s=lamps / wall,
        cpu_pct=100.0 * cpu / wall,
        cpu_us_per_request=1e6 * cpu / max(1, requests),
    )


def _bare(endpoints: list[ModbusEndpoint]) -> Callable[[float], Coroutine[Any, Any, tuple[int, int]]]:
    profile = default_profile()

    async def body(deadline: float) -> tuple[int, int]:
        counts = [0, 0]
        start = time.perf_counter() + WARMUP_S
        measuring = [False]

        async def one(ep: ModbusEndpoint) -> None:
            spans = plan_reads(profile, ep.lamps)
            client = AsyncModbusTcpClient(ep.host, port=ep.port, reconnect_delay=0, timeout=5)
            await client.connect()
            try:
                while time.perf_counter() < deadline:
                    for s in spans:
                        async with asyncio.timeout(5):
                            rr = await client.read_holding_registers(
                                s.address, count=s.count, device_id=ep.unit
                            )
                        if rr.isError():
                            raise RuntimeError(f"read error {rr}")
                        if measuring[0]:
                            counts[0] += 1
                            counts[1] += len(s.lamps)
                    await asyncio.sleep(0)
            finally:
                client.close()

        async def warmup() -> None:
            await asyncio.sleep(max(0.0, start - time.perf_counter()))
            measuring[0] = True

        async with asyncio.TaskGroup() as tg:
            tg.create_task(warmup(), name="bench.warmup")
            for ep in endpoints:
                tg.create_task(one(ep), name=f"bench[{ep.endpoint_id}].poll")
        return counts[0], counts[1]

    return body


def _driver(endpoints: list[ModbusEndpoint]) -> Callable[[float], Coroutine[Any, Any, tuple[int, int]]]:
    async def body(deadline: float) -> tuple[int, int]:
        events = [0]

        def publish(_event: Event) -> None:
            events[0] += 1

        async with ModbusLightingDriver(
            endpoints, None, publish, SystemClock(), poll_interval_s=0.0, timeout_s=5.0
        ) as drv:
            await asyncio.sleep(WARMUP_S)
            r0, l0 = drv.stats.reads, drv.stats.lamp_reads
            await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
            if drv.stats.read_errors:
                raise RuntimeError(f"driver saw {drv.stats.read_errors} read errors")
            return drv.stats.reads - r0, drv.stats.lamp_reads - l0

    return body


def run(quick: bool) -> list[Row]:
    """Bare pymodbus vs the driver on 5,000 simulated lamps; target: driver >= 70 % of bare."""
    import logging

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    seconds = 3.0 if quick else 10.0
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    stop = ctx.Event()
    proc = ctx.Process(
        target=_serve, args=(child, stop, CONTROLLERS, LAMPS), name="bench-modbus-sim", daemon=True
    )
    proc.start()
    try:
        deadline = time.monotonic() + 120
        while not parent.poll(0.2):
            if not proc.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("simulator process did not start")
        endpoints = [
            ModbusEndpoint(eid, host, port, unit, tuple(tuple(x) for x in lamps))
            for eid, host, port, unit, lamps in parent.recv()
        ]
        # bare first, then driver, then bare again: the mean of the two bare runs is the
        # reference, which evens out drift in a shared machine
        bare1 = _measure(_bare(endpoints), seconds)
        ours = _measure(_driver(endpoints), seconds)
        bare2 = _measure(_bare(endpoints), seconds)
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    ref_lamps = (bare1.lamps_per_s + bare2.lamps_per_s) / 2
    ref_cpu_us = (bare1.cpu_us_per_request + bare2.cpu_us_per_request) / 2
    ref_cpu_pct = (bare1.cpu_pct + bare2.cpu_pct) / 2
    ratio = ours.lamps_per_s / ref_lamps if ref_lamps else 0.0
    name = f"modbus {CONTROLLERS}x{LAMPS} lamps"
    return [
        Row(
            name,
            "lamp reads/s",
            f"{ours.lamps_per_s:,.0f}",
            f"{ref_lamps:,.0f} bare",
            f"{ratio:.2f}",
            f">= {TARGET:.2f}",
            "ok" if ratio >= TARGET else "MISS",
        ),
        Row(
            name,
            "requests/s",
            f"{ours.requests_per_s:,.0f}",
            f"{(bare1.requests_per_s + bare2.requests_per_s) / 2:,.0f} bare",
        ),
        Row(name, "client CPU %", f"{ours.cpu_pct:.0f}", f"{ref_cpu_pct:.0f} bare"),
        Row(
            name,
            "client CPU us/request",
            f"{ours.cpu_us_per_request:.0f}",
            f"{ref_cpu_us:.0f} bare",
            f"{ours.cpu_us_per_request / ref_cpu_us:.2f}" if ref_cpu_us else "",
        ),
    ]
