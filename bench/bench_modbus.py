"""Modbus polling: ModbusLightingDriver against a bare pymodbus loop reading the same registers.

The simulator (50 controllers x 100 lamps) runs in a child process so the measured
process is only the client. Both clients use uvloop, one task per controller and the
same coalesced reads (`plan_reads`); the ratio of lamp reads per second is what the
driver's decoding, telemetry events and scheduling cost on top of pymodbus.

Both are counted only inside the window: it opens `WARMUP_S` after the first read and
closes before the clients disconnect; counters, wall and process CPU are read at its two
ends. `RUNS` pairs run back to back in alternating order (driver, bare, bare, driver, ...)
so drift on a shared machine cancels; the table gives medians with their spread and ratios
of medians. Read errors and failed runs are counted in the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing as mp
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

import uvloop
from pymodbus.client import AsyncModbusTcpClient

from bench.common import RUNS, Row, median, median_spread
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
class _Window:
    """What one client did inside the measurement window (or why it failed)."""

    requests: int = 0
    lamps: int = 0
    errors: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    failure: str = ""

    @property
    def lamps_per_s(self) -> float:
        return self.lamps / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_pct(self) -> float:
        return 100.0 * self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu_s / self.requests if self.requests else math.nan


Counters = Callable[[], tuple[int, int, int]]  # requests, lamp reads, read errors


async def _window(counters: Counters, seconds: float) -> _Window:
    """Wait for the first read, warm up, then count for `seconds` (bounded by the caller)."""
    while counters()[0] == 0:  # noqa: ASYNC110 - counters of the clients, nothing to await
        await asyncio.sleep(0.05)
    await asyncio.sleep(WARMUP_S)
    r0, l0, e0 = counters()
    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    r1, l1, e1 = counters()
    return _Window(r1 - r0, l1 - l0, e1 - e0, time.perf_counter() - t0, time.process_time() - c0)


Body = Callable[[float], Coroutine[Any, Any, _Window]]


def _measure(body: Body, seconds: float) -> _Window:
    """Run `body(seconds)` under uvloop; a failure is returned, not raised."""

    async def main() -> _Window:
        async with asyncio.timeout(seconds + WARMUP_S + 60):
            return await body(seconds)

    try:
        return uvloop.run(main())
    except Exception as exc:  # counted in the table
        return _Window(failure=f"{type(exc).__name__}: {exc}"[:200])


def _bare(endpoints: list[ModbusEndpoint]) -> Body:
    profile = default_profile()

    async def body(seconds: float) -> _Window:
        counts = [0, 0, 0]
        done = asyncio.Event()

        async def one(ep: ModbusEndpoint) -> None:
            spans = plan_reads(profile, ep.lamps)
            client = AsyncModbusTcpClient(ep.host, port=ep.port, reconnect_delay=0, timeout=5)
            await client.connect()
            try:
                while not done.is_set():
                    for s in spans:
                        async with asyncio.timeout(5):
                            rr = await client.read_holding_registers(
                                s.address, count=s.count, device_id=ep.unit
                            )
                        if rr.isError():
                            counts[2] += 1
                            continue
                        counts[0] += 1
                        counts[1] += len(s.lamp_ids)
                    await asyncio.sleep(0)
            finally:
                client.close()

        async with asyncio.TaskGroup() as tg:
            for ep in endpoints:
                tg.create_task(one(ep), name=f"bench[{ep.endpoint_id}].poll")
            window = await _window(lambda: (counts[0], counts[1], counts[2]), seconds)
            done.set()
        return window

    return body


def _driver(endpoints: list[ModbusEndpoint]) -> Body:
    async def body(seconds: float) -> _Window:
        def publish(_event: Event) -> None:
            pass

        async with ModbusLightingDriver(
            endpoints, None, publish, SystemClock(), poll_interval_s=0.0, timeout_s=5.0
        ) as drv:
            st = drv.stats
            return await _window(lambda: (st.reads, st.lamp_reads, st.read_errors), seconds)

    return body


@contextlib.contextmanager
def _simulator() -> Iterator[list[ModbusEndpoint]]:
    """The lighting simulator in a child process; yields its endpoints."""
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
        yield [
            ModbusEndpoint(eid, host, port, unit, tuple(tuple(x) for x in lamps))
            for eid, host, port, unit, lamps in parent.recv()
        ]
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)


def run(quick: bool) -> list[Row]:
    """Bare pymodbus vs the driver on 5,000 simulated lamps; target: driver >= 70 % of bare."""
    import logging

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    seconds = 3.0 if quick else 8.0
    pairs: list[tuple[_Window, _Window]] = []  # (driver, bare), back to back
    with _simulator() as endpoints:
        for i in range(RUNS):  # driver, bare, bare, driver, ...: drift cancels over the pairs
            first, second = (_driver, _bare) if i % 2 == 0 else (_bare, _driver)
            a = _measure(first(endpoints), seconds)
            b = _measure(second(endpoints), seconds)
            pairs.append((a, b) if i % 2 == 0 else (b, a))
    return _rows(f"modbus {CONTROLLERS}x{LAMPS} lamps", pairs)


def _rows(name: str, pairs: list[tuple[_Window, _Window]]) -> list[Row]:
    good = [(o, b) for o, b in pairs if not o.failure and not b.failure and o.requests and b.requests]
    ours, bare = [o for o, _ in good], [b for _, b in good]
    ratio = (
        median([w.lamps_per_s for w in ours]) / median([w.lamps_per_s for w in bare]) if good else math.nan
    )
    cpu_ratio = median([w.cpu_us for w in ours]) / median([w.cpu_us for w in bare]) if good else math.nan
    failed = sum(1 for o, b in pairs for w in (o, b) if w.failure or not w.requests)
    errors = sum(w.errors for o, b in pairs for w in (o, b))
    why = "; ".join(sorted({w.failure for o, b in pairs for w in (o, b) if w.failure}))
    return [
        Row(name, "lamp reads/s (headline)", median_spread([w.lamps_per_s for w in ours], "{:,.0f}"),
            f"{median_spread([w.lamps_per_s for w in bare], '{:,.0f}')} bare", f"{ratio:.2f}",
            f">= {TARGET:.2f}", "ok" if ratio >= TARGET else "MISS"),
        Row(name, "lamp-read ratio per back-to-back pair",
            median_spread([o.lamps_per_s / b.lamps_per_s for o, b in good if b.lamps_per_s], "{:.2f}")),
        Row(name, "requests/s", median_spread([w.requests_per_s for w in ours], "{:,.0f}"),
            f"{median_spread([w.requests_per_s for w in bare], '{:,.0f}')} bare"),
        Row(name, "client CPU % of one core", median_spread([w.cpu_pct for w in ours], "{:.0f}"),
            f"{median_spread([w.cpu_pct for w in bare], '{:.0f}')} bare"),
        Row(name, "client CPU us/request", median_spread([w.cpu_us for w in ours], "{:.0f}"),
            f"{median_spread([w.cpu_us for w in bare], '{:.0f}')} bare", f"{cpu_ratio:.2f}"),
        Row(name, "read errors / failed runs", f"{errors} / {failed}", f"of {2 * len(pairs)} runs {why}".rstrip(), "",
            "0 / 0", "ok" if errors == 0 and failed == 0 else "FAIL"),
    ]  # fmt: skip
