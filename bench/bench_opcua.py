"""OPC UA telemetry: OpcUaChargingDriver against a bare asyncua subscription on the same server.

The charging simulator (680 charge points, every one with a charging car and a little
current noise, so every charger's values change every second) runs in a child process;
the measured process is only the client. Both clients monitor the same variables with
the same publishing interval; the ratio of notifications per second turned into events
(and the client CPU per notification) is what the driver costs on top of asyncua.
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

from bench.common import Row
from devices.charging import OpcUaChargingDriver, OpcUaEndpoint, quiet_asyncua, string_node_id
from devices.profiles.charging import default_profile
from edge.clock import SystemClock
from edge.events import Event

CHARGE_POINTS = 680
PUBLISHING_MS = 500
TARGET = 0.90  # the driver must keep up with at least 90 % of what a bare subscription receives


def _serve(conn: Connection, stop: MpEvent, count: int) -> None:
    """Child process: every charge point with a car charging, until `stop` is set."""
    import logging

    import structlog
    import uvloop

    from simulators.charging import ChargingSimulator, SimChargePoint

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)  # a deleted subscription faults pending publishes

    async def main() -> None:
        clock = SystemClock()
        cps = [
            SimChargePoint(f"cp-{i + 1:03d}", sessions_per_day=0, phases=1 if i % 4 == 3 else 3)
            for i in range(count)
        ]
        async with ChargingSimulator(cps, clock, tick_s=1.0, noise_a=0.05, link=False, seed=3) as sim:
            for cp in cps:
                await sim.arrive(cp.cp_id, 70.0, clock.now() + 86_400, phases=cp.phases, capacity_kwh=77.0)
            conn.send((sim.endpoint_id, sim.url, [cp.cp_id for cp in cps]))
            await asyncio.to_thread(stop.wait)

    uvloop.run(main())


@dataclass(frozen=True, slots=True)
class _Result:
    notifications_per_s: float
    events_per_s: float
    cpu_us_per_notification: float
    cpu_pct: float


Body = Callable[[float, float], Coroutine[Any, Any, tuple[int, int]]]


def _measure(body: Body, warmup_s: float, seconds: float) -> _Result:
    """Run `body(measure_from, deadline)` under uvloop; it returns (notifications, events)."""
    import uvloop

    async def main() -> tuple[int, int, float, float]:
        t0 = time.perf_counter()
        start = t0 + warmup_s
        holder: dict[str, float] = {}

        async def clock_cpu() -> None:
            await asyncio.sleep(warmup_s)
            holder["c0"] = time.process_time()
            holder["t0"] = time.perf_counter()

        task = asyncio.create_task(clock_cpu(), name="bench.cpu")
        n, e = await body(start, start + seconds)
        await task
        return n, e, time.perf_counter() - holder["t0"], time.process_time() - holder["c0"]

    n, e, wall, cpu = uvloop.run(main())
    return _Result(n / wall, e / wall, 1e6 * cpu / max(1, n), 100.0 * cpu / wall)


def _bare(url: str, cps: list[str]) -> Body:
    """A plain asyncua client: one subscription, a handler that counts data changes."""
    from asyncua import ua
    from asyncua.client.client import Client

    points = [p.name for p in default_profile().subscribed]

    async def body(start: float, deadline: float) -> tuple[int, int]:
        counts = [0]

        class Handler:
            def datachange_notification(self, node: object, val: object, data: object) -> None:
                if time.perf_counter() >= start:
                    counts[0] += 1

        async with Client(url, timeout=10) as client:
            ns = await client.get_namespace_index(default_profile().namespace)
            sub = await client.create_subscription(PUBLISHING_MS, Handler())
            nodes = [client.get_node(string_node_id(f"{cp}.{p}", ns)) for cp in cps for p in points]
            for i in range(0, len(nodes), 1000):
                await sub.subscribe_data_change(nodes[i : i + 1000], sampling_interval=ua.Double(0.0))
            await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
            await sub.delete()
        return counts[0], counts[0]

    return body


def _driver(endpoint: OpcUaEndpoint) -> Body:
    async def body(start: float, deadline: float) -> tuple[int, int]:
        events = [0]

        def publish(_event: Event) -> None:
            events[0] += 1

        async with OpcUaChargingDriver(
            [endpoint],
            None,
            publish,
            SystemClock(),
            allow_no_security=True,
            timeout_s=10.0,
            publishing_interval_ms=PUBLISHING_MS,
        ) as drv:
            await asyncio.sleep(max(0.0, start - time.perf_counter()))
            n0, e0 = drv.stats.notifications, drv.stats.telemetry
            await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
            if drv.stats.session_errors:
                raise RuntimeError(f"driver lost {drv.stats.session_errors} sessions")
            return drv.stats.notifications - n0, drv.stats.telemetry - e0

    return body


def run(quick: bool) -> list[Row]:
    """Bare asyncua subscription vs the driver on 680 charge points changing every second."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    quiet_asyncua(logging.ERROR)
    count = 200 if quick else CHARGE_POINTS
    warmup_s, seconds = (2.0, 2.5) if quick else (3.0, 6.0)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    stop = ctx.Event()
    proc = ctx.Process(target=_serve, args=(child, stop, count), name="bench-opcua-sim", daemon=True)
    proc.start()
    try:
        deadline = time.monotonic() + 60
        while not parent.poll(0.2):
            if not proc.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("simulator process did not start")
        endpoint_id, url, cps = parent.recv()
        endpoint = OpcUaEndpoint(endpoint_id, url, tuple(cps))
        # bare, driver, bare: the mean of the bare runs is the reference (drift on a shared machine)
        bare1 = _measure(_bare(url, cps), warmup_s, seconds)
        ours = _measure(_driver(endpoint), warmup_s, seconds)
        bare2 = _measure(_bare(url, cps), warmup_s, seconds)
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    ref_n = (bare1.notifications_per_s + bare2.notifications_per_s) / 2
    ref_cpu = (bare1.cpu_us_per_notification + bare2.cpu_us_per_notification) / 2
    ref_pct = (bare1.cpu_pct + bare2.cpu_pct) / 2
    ratio = ours.notifications_per_s / ref_n if ref_n else 0.0
    name = f"opcua {count} charge points"
    return [
        Row(
            name,
            "notifications/s -> events",
            f"{ours.notifications_per_s:,.0f}",
            f"{ref_n:,.0f} bare",
            f"{ratio:.2f}",
            f">= {TARGET:.2f}",
            "ok" if ratio >= TARGET else "MISS",
        ),
        Row(name, "Telemetry events/s (per cp)", f"{ours.events_per_s:,.0f}", f"{count:,} cp x 1 tick/s"),
        Row(
            name,
            "client CPU us/notification",
            f"{ours.cpu_us_per_notification:.1f}",
            f"{ref_cpu:.1f} bare",
            f"{ours.cpu_us_per_notification / ref_cpu:.2f}" if ref_cpu else "",
        ),
        Row(name, "client CPU %", f"{ours.cpu_pct:.0f}", f"{ref_pct:.0f} bare"),
    ]
