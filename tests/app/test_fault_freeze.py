"""Fault harness: the daemon frozen (SIGSTOP) past every watchdog, and starved by CPU hogs.

The daemon runs as its own process (`edge run`); the charge points (OPC UA) and lamp
controllers (Modbus) are real simulators in the test's process, on real time, so they keep
running while the daemon is stopped. Four cars want energy on a 20 A feeder; the chargers'
factory fail-safe is 6 A each (24 A: more than the feeder), the site configures 6/0/6/0 A
(12 A + the lamps at full power fit), and the daemon keeps each at or below its setpoint. The simulator's own records say whether the feeder was
ever over its limit or tripped: every physics tick counts, not samples.

Short variants run in `make test` (a few seconds each); `EDGE_TEST_LONG_FAULTS=1` runs five
freeze cycles and a minute of starvation.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import wait_for

from edge.clock import SystemClock
from edge.net import free_port
from simulators.charging import ChargingSimulator, SimChargePoint, SimFeeder
from simulators.lighting import LightingSimulator, SimController, SimLamp

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600 if os.environ.get("EDGE_TEST_LONG_FAULTS") == "1" else 120),
]

LONG = os.environ.get("EDGE_TEST_LONG_FAULTS") == "1"
LIMIT_A = 20.0
CHARGERS = {"CP0": 6.0, "CP1": 0.0, "CP2": 6.0, "CP3": 0.0}  # configured fail-safe currents
CHARGER_WATCHDOG_S = 3.0
LAMP_WATCHDOG_S = 5.0  # the lamps fall back to 100 % after the chargers have fallen back
LAMP_W = 60.0
VOLTS = 230.0


def write_site(tmp: Path, mqtt_url: str, db_url: str, opc_port: int, lamp_port: int) -> Path:
    with (tmp / "inventory.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "kind", "lat", "lon", "segment", "order", "lighting_class",
                                           "cabinet", "feeder", "controller", "port", "index", "p_max_w", "post",
                                           "url", "max_current_a", "phases", "failsafe_current_a"])  # fmt: skip
        w.writeheader()
        for i in range(6):
            w.writerow({"id": f"L{i}", "kind": "lamp", "lat": 51.51, "lon": 7.45 + i * 1e-4, "segment": "s",
                        "order": i, "lighting_class": "P4", "cabinet": "cab", "feeder": "f1", "controller": "c1",
                        "port": lamp_port, "index": i, "p_max_w": LAMP_W})  # fmt: skip
        for cp, fs in CHARGERS.items():
            w.writerow({"id": cp, "kind": "charger", "lat": 51.51, "lon": 7.45, "cabinet": "cab",
                        "feeder": "f1", "controller": "chargers", "post": "L0", "max_current_a": 16, "phases": 3,
                        "url": f"opc.tcp://127.0.0.1:{opc_port}/dos-edge/chargers",
                        "failsafe_current_a": fs})  # fmt: skip
    (tmp / "site.toml").write_text(
        f"""
[site]
id = "freeze{os.urandom(3).hex()}"
[storage]
url = "{db_url}"
flush_interval_s = 0.1
[mqtt]
url = "{mqtt_url}"
[lighting]
poll_interval_s = 0.2
timeout_s = 0.5
backoff_max_s = 0.5
[dispatcher]
write_timeout_s = 1
reconcile_interval_s = 0.5
[charging]
allow_no_security = true
lease_s = 1
replan_interval_s = 30
timeout_s = 1
lag_limit_s = 0.5
lag_hold_s = 2
cabinets = [{{ id = "cab", limit_a = 100 }}]
feeders = [{{ id = "f1", cabinet = "cab", limit_a = {LIMIT_A} }}]
[logging]
level = "info"
format = "json"
""",
        encoding="utf-8",
    )
    return tmp / "site.toml"


@dataclass
class World:
    """The simulators, the daemon process and what the grid saw."""

    csim: ChargingSimulator
    lsim: LightingSimulator
    proc: asyncio.subprocess.Process
    peak_pct: float = 0.0

    def lamps_w(self) -> float:
        return sum(float(str(self.lsim.lamp(f"L{i}")["power_w"])) for i in range(6))

    def limits(self) -> dict[str, float]:
        return {cp: float(str(self.csim.cp(cp)["current_limit_a"])) for cp in CHARGERS}

    def grid_ok(self) -> None:
        """No overload episode and no trip so far (the simulator's own record)."""
        peak = float(str(self.csim.feeder("f1")["peak_a"]))
        self.peak_pct = max(self.peak_pct, 100 * peak / LIMIT_A)
        assert self.csim.overloads == 0, list(self.csim.events)
        assert self.csim.trips == 0, list(self.csim.events)


async def _couple(w: World) -> None:
    """The lamps draw from the feeder the chargers share (what the lamp simulator says they draw)."""
    while True:
        w.csim.set_lighting_load("f1", w.lamps_w() / VOLTS)
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def world(tmp: Path, mqtt_url: str, db_url: str) -> AsyncIterator[World]:
    opc_port, lamp_port = free_port(), free_port()
    cfg = write_site(tmp, mqtt_url, db_url, opc_port, lamp_port)
    clock = SystemClock()
    cps = [
        SimChargePoint(cp, max_current_a=16.0, watchdog_s=CHARGER_WATCHDOG_S, feeder="f1", sessions_per_day=0)
        for cp in CHARGERS
    ]  # factory fail-safe 6 A each
    lamps = tuple(SimLamp(f"L{i}", i, p_max_w=LAMP_W, p_min_w=6.0) for i in range(6))
    ctl = SimController("c1", "127.0.0.1", lamp_port, 1, lamps, watchdog_s=LAMP_WATCHDOG_S)
    env = {**os.environ, "EDGE_LOGGING__FORMAT": "json"}
    async with (
        LightingSimulator([ctl], clock, seed=3) as lsim,
        ChargingSimulator(cps, clock, feeders=[SimFeeder("f1", LIMIT_A, trip_after_s=1.0)], port=opc_port,
                          seed=3, tick_s=0.05) as csim,
    ):  # fmt: skip
        log_path = tmp / "daemon.log"  # kept in the test's tmp folder for a post-mortem
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edge.app.cli", "run", "--config", str(cfg),
                stdout=asyncio.subprocess.DEVNULL, stderr=log_file, env=env,
            )  # fmt: skip
        w = World(csim, lsim, proc)
        coupling = asyncio.create_task(_couple(w), name="test.grid")
        try:
            yield w
        finally:
            coupling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await coupling
            if proc.returncode is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(20):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            # the daemon's own code never crashed (asyncua logs its lost sessions with a traceback)
            ours = [
                line for line in log_path.read_text(errors="replace").splitlines() if '"asyncua' not in line
            ]
            assert not [line for line in ours if "Traceback" in line], ours[-20:]
            assert proc.returncode == 0


async def _serving(w: World) -> None:
    """The daemon is up: fail-safe currents written and read back, cars charging on its setpoints."""
    await wait_for(
        lambda: all(
            w.csim.cp(cp)["failsafe_current_a"] == min(fs, w.limits()[cp]) for cp, fs in CHARGERS.items()
        ),
        "fail-safe currents written (the configured one, never above the setpoint)",
        timeout_s=60,
    )
    # The factory limit (16 A each) stands until the first plan lands; cars come after it, as
    # they do after commissioning (this test is about freezes, not about the first seconds).
    await wait_for(
        lambda: sum(w.limits().values()) + w.lamps_w() / VOLTS <= LIMIT_A,
        "the first plan's limits in force",
        timeout_s=60,
    )
    for cp in CHARGERS:  # cars come once the chargers are commissioned (their factory 6 A x 4 > 20 A)
        if not w.csim.cp(cp)["car_connected"]:
            await w.csim.arrive(cp, 60.0, w.csim.clock.now() + 12 * 3600, phases=3, capacity_kwh=77.0)
    await wait_for(
        lambda: (w.grid_ok() or True) and sum(w.limits().values()) >= 12.0
        and not any(w.csim.cp(cp)["failsafe_active"] for cp in CHARGERS),
        "the plan's setpoints in force",
        timeout_s=60,
    )  # fmt: skip


async def test_frozen_daemon_devices_fall_back_and_no_feeder_trips(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    """SIGSTOP past the chargers' and the lamp controllers' watchdogs: every charger falls to its
    configured fail-safe, the lamps go to full light, the feeder never goes over; SIGCONT and the
    daemon takes over again (decreases only until it keeps up)."""
    async with world(tmp_path, mqtt_url, database_url) as w:
        await _serving(w)
        for _cycle in range(5 if LONG else 1):
            trips_before = w.csim.watchdog_trips
            w.proc.send_signal(signal.SIGSTOP)
            before = w.limits()
            try:
                await wait_for(
                    lambda: (w.grid_ok() or True)
                    and all(w.csim.cp(cp)["failsafe_active"] for cp in CHARGERS),
                    "every charger's watchdog",
                    timeout_s=CHARGER_WATCHDOG_S + 10,
                )  # fmt: skip
                # each at its fail-safe: the configured one, but never above the setpoint it had
                assert w.limits() == {cp: min(fs, before[cp]) for cp, fs in CHARGERS.items()}
                await wait_for(
                    lambda: (w.grid_ok() or True) and w.lsim.controller("c1")["failsafe_active"] == 1,
                    "the lamp controller's watchdog",
                    timeout_s=LAMP_WATCHDOG_S + 10,
                )
                await wait_for(lambda: (w.grid_ok() or True) and w.lamps_w() >= 6 * LAMP_W * 0.99,
                               "lamps at full light")  # fmt: skip
                w.grid_ok()
            finally:
                w.proc.send_signal(signal.SIGCONT)
            assert w.csim.watchdog_trips >= trips_before + len(CHARGERS)
            await _serving(w)  # it recovers: setpoints again, no fail-safe, nothing over
            await wait_for(
                lambda: (w.grid_ok() or True) and w.lsim.controller("c1")["failsafe_active"] == 0,
                "the lamps back under control",
                timeout_s=20,
            )
        w.grid_ok()
        print(f"freeze: trips={w.csim.trips} overloads={w.csim.overloads} peak={w.peak_pct:.1f}%")


async def test_starved_daemon_never_overloads_a_feeder(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    """Two CPU hogs beside the daemon (bounded in time): watchdogs may fire, but no feeder goes over
    its limit or trips, and the daemon keeps the cars charging."""
    hog_s = 60 if LONG else 8
    async with world(tmp_path, mqtt_url, database_url) as w:
        await _serving(w)
        hogs = [
            await asyncio.create_subprocess_exec(
                "timeout",
                str(hog_s),
                sys.executable,
                "-c",
                "while 1: pass",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            for _ in range(2)
        ]
        try:
            async with asyncio.timeout(hog_s + 30):
                while any(h.returncode is None for h in hogs):
                    w.grid_ok()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.05):
                            await asyncio.gather(*(h.wait() for h in hogs))
        finally:
            for h in hogs:
                if h.returncode is None:
                    h.kill()
                await h.wait()
        await _serving(w)
        w.grid_ok()
        print(
            f"starve: trips={w.csim.trips} overloads={w.csim.overloads} peak={w.peak_pct:.1f}% "
            f"watchdog_trips={w.csim.watchdog_trips}"
        )
