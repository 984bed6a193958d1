"""Benchmark the storm's timeline: from a gauge reading to the warning on the displays and in CAP.

The demo district's sensors, rules and LED boards (its lamps too, with the flood rule raising
them), the daemon on an embedded broker and a SQLite file, the storm and flood scenario
publishing ChirpStack and TTS uplinks. The clock runs at `SPEED` (the storm's two hours in
`TIME_SCALE`-times compressed clock time), but every latency is measured in real time, with
the loop's clock, polling the simulators every millisecond:
- reading -> rule: the uplink round after which both gauges stood over the threshold was
  published, until the flood rule's warning exists in the daemon;
- rule -> displays: until both LED boards show it (MQTT to the boards, their status back);
- rule -> CAP: until its CAP Alert arrives at a subscriber on the broker;
and the same for its withdrawal (rule clears -> displays released -> CAP Cancel). The reference
is the broker itself: a message's round trip through it from the same process, in the same run.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt

from bench.common import RUNS, Row, median, median_spread
from devices.inventory import Inventory, load_inventory
from edge.app.daemon import running
from edge.app.demo import SITE_DIR, remap_ports, sim_controllers
from edge.broker import BrokerProcess
from edge.clock import SimClock
from edge.settings import load_settings
from simulators.displays import DisplaySimulator, SimBoard
from simulators.environment import StormScenario, StormSimulator, storm_sensors
from simulators.lighting import LightingSimulator

SPEED = 60.0
TIME_SCALE = 4.0  # the storm's 2 h in 30 clock minutes: 30 real seconds
UPLINK_EVERY_S = 120.0  # clock seconds between a sensor's uplinks
WAIT_S = 120.0


class _Rounds(StormSimulator):
    """The storm's sensors, noting the loop time each round of uplinks starts going out."""

    sent: list[float]

    async def publish_round(self, ts: float | None = None) -> int:
        self.sent.append(asyncio.get_running_loop().time())  # as its first uplink goes out
        return await super().publish_round(ts)


async def _until(cond: Callable[[], bool]) -> float:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(WAIT_S):
        while not cond():  # noqa: ASYNC110 - in-process simulators and controllers have no event
            await asyncio.sleep(0.001)
    return loop.time()


async def _one(run: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-storm-"))
    settings = load_settings(SITE_DIR / "site.toml", storage__url=f"sqlite:///{tmp / 'bench.db'}")
    boards = [x for x in settings.displays.displays if x.kind == "board"]
    settings = settings.model_copy(update={
        "charging": settings.charging.model_copy(update={"feeders": [], "cabinets": []}),
        "displays": settings.displays.model_copy(update={"displays": boards, "car_parks": [], "approaches": []}),
        "waste": settings.waste.model_copy(update={"bins": None}),
        "helppoints": settings.helppoints.model_copy(update={"points": []}),
        # the flood rule alone: another warning on the boards (the gusts) would hide its release
        "environment": settings.environment.model_copy(update={"stale_after_s": 3 * UPLINK_EVERY_S, "rules": [
            r for r in settings.environment.rules if r.id == "flood-emscher"]}),
    })  # fmt: skip
    inv = Inventory.build(remap_ports(load_inventory(settings.inventory_path())).lamps.values())
    clock = SimClock(start=time.time(), speed=SPEED)
    out: dict[str, float] = {}
    async with BrokerProcess() as broker:
        settings = settings.model_copy(update={"mqtt": settings.mqtt.model_copy(
            update={"url": broker.url, "protocol": "3.1.1"})})  # fmt: skip
        host, port = broker.url.split("://")[1].split(":")
        async with (
            LightingSimulator(sim_controllers(inv), clock, seed=1),
            DisplaySimulator(clock, boards=[SimBoard(b.id) for b in boards], mqtt_url=broker.url) as dsim,
            running(settings, inv, clock, drain_s=0.5) as d,
            aiomqtt.Client(host, int(port), identifier=f"bench-cap-{run}") as watcher,
        ):
            env = d.environment
            assert env is not None
            loop = asyncio.get_running_loop()
            base = d.api.base
            cap: list[tuple[float, str, bytes]] = []
            await watcher.subscribe(f"{base}/alerts/cap/#", qos=1)
            await watcher.subscribe(f"{base}/bench/echo", qos=1)

            async def collect() -> None:
                async for msg in watcher.messages:
                    cap.append((loop.time(), str(msg.topic), bytes(msg.payload)))  # type: ignore[arg-type]

            task = asyncio.create_task(collect(), name="bench.cap")
            echo: list[float] = []
            for _ in range(20):  # the reference: the broker's round trip from this process
                t0 = loop.time()
                n = len(cap)
                await watcher.publish(f"{base}/bench/echo", b"x", qos=1)
                await _until(lambda n=n: len(cap) > n)  # type: ignore[misc]
                echo.append(loop.time() - t0)
            out["echo"] = median(echo)
            scenario = StormScenario(run, start=clock.now(), time_scale=TIME_SCALE)
            sim = _Rounds(storm_sensors(), scenario, clock, seed=run, duplicate_p=0.2)
            sim.sent = []
            async with sim.connect_to(broker.url):
                storm = asyncio.create_task(sim.run(UPLINK_EVERY_S), name="bench.storm")

                def flood() -> str:
                    return next((w.id for w in env.warnings.values() if w.rule == "flood-emscher"), "")

                t_rule = await _until(lambda: bool(flood()))
                wid = flood()
                t_read = max(t for t in sim.sent if t <= t_rule)
                shown = lambda: all("HOCHWASSER" in dsim.shown(b.id) for b in boards)  # noqa: E731
                t_disp = await _until(shown)
                t_cap = await _until(
                    lambda: any(t.endswith(wid) and b"<msgType>Alert<" in p for _, t, p in cap)
                )
                t_clear = await _until(lambda: wid not in env.warnings)
                t_read_clear = max(t for t in sim.sent if t <= t_clear)
                t_disp_clear = await _until(lambda: not any("HOCHWASSER" in dsim.shown(b.id) for b in boards))
                t_cancel = await _until(
                    lambda: any(t.endswith(wid) and b"<msgType>Cancel<" in p for _, t, p in cap)
                )
                storm.cancel()
                await asyncio.gather(storm, return_exceptions=True)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            at_cap = next(a for a, t, p in cap if t.endswith(wid) and b"<msgType>Alert<" in p)
            out |= {
                "read_rule": t_rule - t_read, "rule_disp": t_disp - t_rule, "rule_cap": at_cap - t_rule,
                "read_cap": t_cap - t_read, "clear_read_rule": t_clear - t_read_clear,
                "clear_disp": t_disp_clear - t_clear, "clear_cap": t_cancel - t_clear,
                "storm_min": (t_rule - sim.sent[0]) * SPEED * TIME_SCALE / 60,
                "storm_clear_min": (t_clear - sim.sent[0]) * SPEED * TIME_SCALE / 60,
            }  # fmt: skip
    return out


def run(quick: bool) -> list[Row]:
    runs = [asyncio.run(_one(k + 1)) for k in range(1 if quick else RUNS)]

    def ms(key: str) -> str:
        return median_spread([r[key] * 1000 for r in runs], "{:.0f}")

    echo = median([r["echo"] for r in runs]) * 1000
    n = len(runs)
    return [
        Row("environment", f"storm: flood warning issued / withdrawn at storm minute (n={n})",
            f"{median([r['storm_min'] for r in runs]):.0f} / {median([r['storm_clear_min'] for r in runs]):.0f}"),
        Row("environment", "reading -> rule's warning, ms", ms("read_rule")),
        Row("environment", "rule -> both LED boards show it, ms", ms("rule_disp"), f"{echo:.1f} (broker round trip)"),
        Row("environment", "rule -> CAP Alert at a subscriber, ms", ms("rule_cap"), f"{echo:.1f} (broker round trip)",
            f"{median([r['rule_cap'] for r in runs]) * 1000 / max(echo, 1e-6):.1f}x"),
        Row("environment", "reading -> CAP Alert, ms", ms("read_cap"), target="< 1000",
            verdict="ok" if max(r["read_cap"] for r in runs) < 1.0 else "MISS"),
        Row("environment", "withdrawal: reading -> rule clears, ms", ms("clear_read_rule")),
        Row("environment", "withdrawal: rule -> boards released, ms", ms("clear_disp")),
        Row("environment", "withdrawal: rule -> CAP Cancel, ms", ms("clear_cap")),
    ]  # fmt: skip
