"""OCPP 1.6J central system: 680 charge points' MeterValues and heartbeats, against a bare websockets peer.

The simulated charge points (simulators/charging_ocpp.py, every one with a charging car) run in a
child process and send MeterValues and a Heartbeat every 60 clock seconds on a clock 60 times
real time: about 1,360 CALLs a second for 680 chargers. The measured process is only the server:
our `OcppCentralSystem` (security profile 1, every frame through the decode path, the OCPP schema,
the mapping to telemetry), or a bare websockets server that answers every CALL with a minimal
valid CALLRESULT (orjson, nothing checked): the same frames from the same simulator, so the
ratio is what the central system costs on top of the transport.

Headline: server CPU per CALL answered (process CPU seconds / CALLs in the window), ours against
bare; and whether ours keeps up (CALLs/s against the bare server's, pair by pair: the two run
back to back, alternating). Projected: the CPU the city's 680 chargers at their real 60 s
intervals would take (2 CALLs a minute each). The simulator's CPU is in the table: a simulator
that does not get its core sends less, and both rates fall with it.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

import psutil

from bench.common import RUNS, Row, median, median_spread

CHARGE_POINTS = 680
SPEED = float(
    os.environ.get("BENCH_OCPP_SPEED", "60")
)  # clock s per real s: 60 makes a 60 s interval one second
INTERVAL_S = 60.0
PASSWORD = "bench-ocpp-password"
START_S = 120.0
KEEP_UP = 0.95  # ours answers at least 95 % of what the bare server answers from the same chargers
CPU_US_TARGET = 1000.0  # per CALL: 680 chargers at 60 s cost under 2.5 % of a core


def _serve(url: str, count: int, ready: MpEvent, stop: MpEvent) -> None:
    """Child process: `count` OCPP charge points with a charging car each, until `stop` is set."""
    import logging

    import structlog
    import uvloop

    from devices.profiles.charging_ocpp import SAMPLED_DATA
    from edge.clock import SimClock
    from simulators.charging import ChargingSimulator, SimChargePoint

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    async def main() -> None:
        clock = SimClock(time.time(), SPEED)
        cps = [
            SimChargePoint(
                f"cp-{i + 1:03d}", sessions_per_day=0, phases=1 if i % 4 == 3 else 3, protocol="ocpp"
            )
            for i in range(count)
        ]
        async with ChargingSimulator(
            cps, clock, tick_s=INTERVAL_S, noise_a=0.05, ocpp_url=url, ocpp_password=PASSWORD, seed=3
        ) as sim:
            assert sim.ocpp is not None
            for point in sim.ocpp.points.values():  # what our central system configures, for the bare one too
                point.config["MeterValuesSampledData"] = ",".join(SAMPLED_DATA)
            for cp in cps:
                await sim.arrive(
                    cp.cp_id, 70.0, clock.now() + 30 * 86_400, phases=cp.phases, capacity_kwh=77.0
                )
            ready.set()
            await asyncio.to_thread(stop.wait)

    uvloop.run(main())


@dataclass(frozen=True, slots=True)
class _Window:
    calls: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    sim_cpu_s: float = 0.0
    refused: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.calls > 0

    @property
    def rate(self) -> float:
        return self.calls / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu_s / self.calls if self.calls else math.nan

    @property
    def cpu_pct(self) -> float:
        return 100.0 * self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def sim_pct(self) -> float:
        return 100.0 * self.sim_cpu_s / self.wall_s if self.wall_s > 0 else 0.0


Counters = Callable[[], tuple[int, int, int]]  # (CALLs answered, charge points up, refused frames)
Server = Callable[[int], Awaitable[tuple[str, Counters, Callable[[], Awaitable[None]]]]]


async def _ours(count: int) -> tuple[str, Counters, Callable[[], Awaitable[None]]]:
    from devices.charging_ocpp import OcppCentralSystem, OcppSecurity
    from edge.clock import SimClock

    ids = [f"cp-{i + 1:03d}" for i in range(count)]
    telemetry = [0]

    def publish(_event: object) -> None:
        telemetry[0] += 1

    cs = OcppCentralSystem(
        ids,
        publish,
        SimClock(time.time(), SPEED),
        security=OcppSecurity(1, passwords=dict.fromkeys(ids, PASSWORD)),
        timeout_s=10.0,
        heartbeat_interval_s=INTERVAL_S,
        meter_interval_s=INTERVAL_S,
        failsafe_timeout_s=2 * INTERVAL_S,
    )
    await cs.__aenter__()

    def counters() -> tuple[int, int, int]:
        calls = sum(n for k, n in cs.stats.messages_in.items() if k not in ("CALLRESULT", "CALLERROR"))
        return calls, sum(1 for cp in ids if cs.online(cp)), cs.stats.refused_frames

    async def close() -> None:
        await cs.__aexit__(None, None, None)

    return cs.url, counters, close


async def _bare(count: int) -> tuple[str, Counters, Callable[[], Awaitable[None]]]:
    """A websockets server answering each CALL with the smallest valid answer, nothing checked."""
    import orjson
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.typing import Subprotocol

    from devices.protocols.ocpp import iso

    counts = [0, 0]
    tx = [0]

    def answer(action: str) -> dict[str, Any]:
        if action == "BootNotification":
            counts[1] += 1
            return {"status": "Accepted", "currentTime": iso(time.time()), "interval": int(INTERVAL_S)}
        if action == "Heartbeat":
            return {"currentTime": iso(time.time())}
        if action == "StartTransaction":
            tx[0] += 1
            return {"transactionId": tx[0], "idTagInfo": {"status": "Accepted"}}
        return {}

    async def handler(ws: ServerConnection) -> None:
        async for raw in ws:
            msg = orjson.loads(raw)
            if msg[0] == 2:
                counts[0] += 1
                await ws.send(orjson.dumps([3, msg[1], answer(msg[2])]).decode())

    server = await serve(
        handler, "127.0.0.1", 0, subprotocols=[Subprotocol("ocpp1.6")], compression=None, max_size=65_536
    )
    port = next(iter(server.sockets)).getsockname()[1]

    async def close() -> None:
        server.close()
        await server.wait_closed()

    return f"ws://127.0.0.1:{port}/ocpp", lambda: (counts[0], counts[1], 0), close


def _measure(server: Server, count: int, warmup_s: float, seconds: float) -> _Window:
    """One server under uvloop, the simulator in a child process, a window of `seconds`."""
    import uvloop

    async def main() -> _Window:
        url, counters, close = await server(count)
        ctx = mp.get_context("spawn")
        ready, stop = ctx.Event(), ctx.Event()
        proc = ctx.Process(target=_serve, args=(url, count, ready, stop), name="bench-ocpp-sim", daemon=True)
        proc.start()
        try:
            async with asyncio.timeout(START_S):
                while counters()[1] < count or not ready.is_set():
                    if not proc.is_alive():
                        raise RuntimeError("simulator process died")
                    await asyncio.sleep(0.1)
            await asyncio.sleep(warmup_s)
            assert proc.pid is not None
            sim = psutil.Process(proc.pid)
            n0, _, r0 = counters()
            t0, c0, s0 = time.perf_counter(), time.process_time(), sum(sim.cpu_times()[:2])
            await asyncio.sleep(seconds)
            n1, _, r1 = counters()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            return _Window(n1 - n0, wall, cpu, sum(sim.cpu_times()[:2]) - s0, r1 - r0)
        finally:
            stop.set()
            await asyncio.to_thread(proc.join, 15)
            if proc.is_alive():
                proc.terminate()
            await close()

    try:
        return uvloop.run(main())
    except Exception as exc:  # a failed run is a row of the table
        return _Window(error=f"{type(exc).__name__}: {exc}"[:200])


def run(quick: bool) -> list[Row]:
    """Ours against a bare websockets peer, back to back in alternating order, `RUNS` pairs."""
    import logging

    import structlog

    # ERROR: at the end of a run the simulator leaves first, and every charge point going down is a warning
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    count = 68 if quick else CHARGE_POINTS
    warmup_s, seconds = (2.0, 3.0) if quick else (5.0, 15.0)
    pairs: list[tuple[_Window, _Window]] = []
    for i in range(RUNS):
        if i % 2 == 0:
            ours = _measure(_ours, count, warmup_s, seconds)
            bare = _measure(_bare, count, warmup_s, seconds)
        else:
            bare = _measure(_bare, count, warmup_s, seconds)
            ours = _measure(_ours, count, warmup_s, seconds)
        pairs.append((ours, bare))
    return _rows(f"ocpp {count} charge points", count, pairs)


def _rows(name: str, count: int, pairs: list[tuple[_Window, _Window]]) -> list[Row]:
    ours, bare = [o for o, _ in pairs if o.ok], [b for _, b in pairs if b.ok]
    cpu_o, cpu_b = median([w.cpu_us for w in ours]), median([w.cpu_us for w in bare])
    pair_ratios = [o.rate / b.rate for o, b in pairs if o.ok and b.ok and b.rate > 0]
    keep_up = median(pair_ratios) if pair_ratios else math.nan
    real_calls_per_s = count * 2 / INTERVAL_S  # MeterValues and a heartbeat a minute each, in real time
    projected = cpu_o * real_calls_per_s / 1e4  # % of one core
    windows = [w for pair in pairs for w in pair]
    failed = sum(1 for w in windows if not w.ok)
    errors = "; ".join(sorted({w.error for w in windows if w.error}))
    return [
        Row(name, "server CPU us per CALL answered (headline)", median_spread([w.cpu_us for w in ours]),
            f"{median_spread([w.cpu_us for w in bare])} bare", f"{cpu_o / cpu_b:.2f}" if cpu_b > 0 else "",
            f"<= {CPU_US_TARGET:.0f} us", "ok" if cpu_o <= CPU_US_TARGET else "MISS"),
        Row(name, f"CALLs/s at {SPEED:g}x (offered ~{count * 2 * SPEED / INTERVAL_S:,.0f})",
            median_spread([w.rate for w in ours], "{:,.0f}"), f"{median_spread([w.rate for w in bare], '{:,.0f}')} bare"),
        Row(name, "rate ratio ours/bare per back-to-back pair", median_spread(pair_ratios, "{:.3f}"),
            "1.000 = keeps up", f"{keep_up:.3f}", f">= {KEEP_UP:.2f}", "ok" if keep_up >= KEEP_UP else "MISS"),
        Row(name, "server CPU % of one core", median_spread([w.cpu_pct for w in ours], "{:.0f}"),
            f"{median_spread([w.cpu_pct for w in bare], '{:.0f}')} bare"),
        Row(name, f"projected CPU, {count} chargers at real {INTERVAL_S:g} s intervals", f"{projected:.2f} % of a core",
            f"{real_calls_per_s:.0f} CALLs/s; one core: ~{1e6 / cpu_o:,.0f} CALLs/s" if cpu_o > 0 else ""),
        Row(name, "simulator CPU % of one core in the window", median_spread([w.sim_pct for w in ours], "{:.0f}"),
            f"{median_spread([w.sim_pct for w in bare], '{:.0f}')} in bare windows"),
        Row(name, "failed runs / refused frames", f"{failed} / {sum(w.refused for w in ours)}",
            f"of {len(windows)} runs {errors}".rstrip(), "", "0 / 0",
            "ok" if failed == 0 and not any(w.refused for w in ours) else "FAIL"),
    ]  # fmt: skip
