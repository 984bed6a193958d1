"""Waste collection end to end: a day on real parts.

The broker (`mqtt_url`), a SQLite file, the daemon (`edge.app.daemon.running`) and the waste
simulator (bins sending LoRaWAN uplinks in both formats, with duplicates and late frames;
trucks following the routes they are sent) share one fast clock. Bins fill, the plan is made
at plan_at, trucks drive and empty bins (the bins' sensors confirm), a truck breaks down
(`fleet/{truck}/fault`) and the re-plan keeps what is done; the MQTT API shows it all.
"""

from __future__ import annotations

import asyncio
import csv
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiomqtt
import orjson
import pytest
from harness import Site, wait_for

from devices.inventory import Bin, load_inventory, write_bins
from edge.app.daemon import running
from edge.app.demo import sim_controllers
from edge.clock import SimClock
from edge.net import free_port
from edge.settings import load_settings
from simulators.lighting import LightingSimulator
from simulators.waste import WasteSimulator

TZ = ZoneInfo("Europe/Berlin")
START = datetime(2026, 11, 30, 7, 0, tzinfo=TZ).timestamp()  # a Monday morning
SPEED = 600.0  # ten clock minutes per real second


def write_site(tmp: Path, token: str, mqtt_url: str, db_url: str) -> tuple[Path, list[Bin]]:
    with (tmp / "inventory.csv").open("w", newline="") as fh:
        w = csv.DictWriter(
            fh, fieldnames=["id", "lat", "lon", "segment", "lighting_class", "controller", "port", "index"]
        )
        w.writeheader()
        w.writerow({"id": "L1", "lat": 51.51, "lon": 7.45, "segment": "s", "lighting_class": "P4", "controller": "c",
                    "port": free_port(), "index": 0})  # fmt: skip
    prefix = uuid.uuid4().hex[:8]
    bins = [
        Bin(
            id=f"W{i:02d}",
            dev_eui=f"{prefix}{i:08x}",
            lat=51.505 + 0.0015 * (i % 4),
            lon=7.446 + 0.002 * (i // 4),
            kind="shopping" if i % 3 == 0 else "residential",
            volume_l=1100.0,
            height_mm=1250.0,
            blind_zone_mm=250.0,
            density_kg_l=0.12,
            road_class="pedestrian" if i == 0 else "residential",
            zone="",
        )
        for i in range(10)
    ]
    write_bins(tmp / "bins.csv", bins)
    (tmp / "site.toml").write_text(
        f"""
[site]
id = "w{token}"
[storage]
url = "{db_url}"
flush_interval_s = 0.05
history_interval_s = 900
[mqtt]
url = "{mqtt_url}"
client_id = "edge-w{token}"
[lighting]
poll_interval_s = 0.2
[dispatcher]
write_timeout_s = 2
command_ttl_s = 5
[waste]
bins = "bins.csv"
threshold = 0.8
plan_at = "08:00"
run_days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
service_s = 60
solver_time_s = 1
depot = {{ lat = 51.5015, lon = 7.4435 }}
disposal = {{ lat = 51.5205, lon = 7.4330, service_s = 600 }}
trucks = [
  {{ id = "ta-{token}", volume_l = 16000, weight_kg = 9000, shift = "08:00-16:00" }},
  {{ id = "tb-{token}", volume_l = 16000, weight_kg = 9000, shift = "08:00-16:00" }},
]
[logging]
level = "warning"
""",
        encoding="utf-8",
    )
    return tmp / "site.toml", bins


async def test_a_day_of_collection_with_a_breakdown(tmp_path: Path, mqtt_url: str, database_url: str) -> None:
    """Plan at plan_at, bins emptied and confirmed by their sensors, a breakdown re-plan that keeps
    what is done and hands the broken truck's bins to the other one; the API shows it all."""
    token = uuid.uuid4().hex[:6]
    cfg, bins = write_site(tmp_path, token, mqtt_url, database_url)
    settings = load_settings(cfg)
    inv = load_inventory(settings.inventory_path())
    clock = SimClock(START, SPEED)
    host, port = mqtt_url.split("://")[1].split(":")
    async with (
        LightingSimulator(sim_controllers(inv), clock),
        running(settings, inv, clock) as d,
        WasteSimulator(
            settings.waste,
            bins,
            clock,
            mqtt_url=mqtt_url,
            seed=3,
            initial=(0.72, 0.95),
            timezone="Europe/Berlin",
            client_id=f"wsim-{token}",
        ) as wsim,  # fmt: skip
        aiomqtt.Client(host, int(port), identifier=f"t-{token}") as client,
    ):
        await d.link.wait_connected(10)
        waste = d.waste
        assert waste is not None
        base = d.api.base
        await client.subscribe(f"{base}/waste/#", qos=1)

        # 08:00: the plan. Every bin is at or near the threshold, so every bin is in it.
        await wait_for(lambda: waste.active is not None, "the scheduled plan", timeout_s=20)
        first = waste.active
        assert first is not None
        assert first.reason == "scheduled"
        assert first.plan.status in {"optimal", "feasible", "fallback"}
        planned = {b for r in first.plan.routes for b in r.bins}
        mandatory = {b for b, s in first.plan.selection.items() if s.kind == "mandatory"}
        assert mandatory
        assert mandatory <= planned
        # made in the daemon's solver process, not in a thread of the daemon
        solvers = waste.planner.solvers
        assert solvers is not None
        assert solvers.stats.calls >= 1
        assert solvers.stats.in_thread == 0
        assert solvers.pids()

        # Trucks drive; the bins' own sensors confirm the first emptyings.
        await wait_for(lambda: waste.counters.emptied >= 2, "two emptyings confirmed by the sensors")
        busy = max(first.plan.routes, key=lambda r: sum(waste.stop_state(r.truck, s.seq) == "pending"
                                                         for s in r.stops if s.kind == "bin"))  # fmt: skip
        other = next(t for t in waste.trucks if t != busy.truck)
        await client.publish(f"fleet/{busy.truck}/fault", orjson.dumps({"type": "breakdown"}), qos=1)

        # The breakdown: an alarm and a re-plan without the broken truck that keeps what is done.
        await wait_for(
            lambda: waste.active is not None and waste.active.reason == "breakdown", "the breakdown re-plan"
        )
        second = waste.active
        assert second is not None
        assert d.alarms.is_active(busy.truck, "truck_breakdown")
        assert second.plan.route_of(busy.truck) is None
        sel = second.plan.selection
        done_before = {b for b, x in sel.items() if x.kind == "done"}
        replanned = {b for r in second.plan.routes for b in r.bins}
        assert len(done_before) >= 2
        assert not done_before & replanned  # what is done stays done
        left = {b for b in busy.bins if sel[b].kind == "mandatory"}
        assert left
        assert left <= replanned | set(second.plan.missed_mandatory)  # the broken truck's bins move on
        route = second.plan.route_of(other)
        assert route is not None
        assert route.bins

        # The other truck collects the rest; each stop is done once the bin's sensor confirms it.
        await wait_for(
            lambda: all(waste.stop_state(other, s.seq) == "done" for s in route.stops if s.kind == "bin"),
            "every bin of the new route emptied and confirmed",
            timeout_s=25,
        )
        emptied = waste.counters.emptied
        assert emptied >= len(done_before) + len(route.bins)
        assert wsim.emptied >= emptied  # the simulator lifted at least what the sensors confirmed

        # The API: retained plan, truck and bin states and the summary, and requests answered.
        seen: dict[str, dict[str, Any]] = {}

        def ingest(msg: aiomqtt.Message) -> None:
            if isinstance(msg.payload, bytes) and msg.payload:
                seen[str(msg.topic).removeprefix(base + "/")] = orjson.loads(msg.payload)

        async def until(what: str, cond: Callable[[], bool]) -> None:
            try:
                async with asyncio.timeout(10):
                    async for msg in client.messages:
                        ingest(msg)
                        if cond():
                            return
            except TimeoutError:
                pytest.fail(f"timed out waiting for {what}")

        await until(
            "summary with the day's emptyings",
            lambda: (
                seen.get("waste/summary", {}).get("emptied_today", 0) >= emptied
                and seen.get("waste/plan", {}).get("reason") == "breakdown"
                and seen.get(f"waste/trucks/{busy.truck}/state", {}).get("status") == "broken"
            ),
        )
        plan = seen["waste/plan"]
        assert {r["truck"] for r in plan["routes"]} == {other}
        some = next(iter(done_before))
        await until("the bin's state", lambda: f"waste/bins/{some}/state" in seen)
        state = seen[f"waste/bins/{some}/state"]
        assert state["last_emptied_ts"] is not None
        assert state["fill"] is not None
        assert seen["waste/summary"]["km_today"] > 0

        s = Site(d, None, client, settings, inv, d.link.protocol == "5")  # type: ignore[arg-type]
        ack = await s.request("cmd/waste/bins/NOPE", {"action": "force"})
        assert ack["ok"] is False
        assert "unknown_bin" in ack["reason"]
        ack = await s.request(f"cmd/waste/bins/{bins[0].id}", {"action": "exclude", "reason": "construction"})
        assert ack["ok"] is True
        ack = await s.request("cmd/waste/replan", {"action": "replan"})
        assert ack["ok"] is True
        await wait_for(
            lambda: waste.active is not None and waste.active.reason == "operator", "operator re-plan"
        )
        assert bins[0].id not in {b for r in waste.active.plan.routes for b in r.bins}  # type: ignore[union-attr]

        # Stored: every plan, and the operator's exclusion for a restart.
        await d.storage.flush()
        rows = d.storage.plans("waste")
        assert [r.body["reason"] for r in rows][:2] == ["scheduled", "breakdown"]
        assert d.storage.plans("waste.operator")[-1].body["excluded"] == [bins[0].id]
        last_plan = waste.active.plan_id  # type: ignore[union-attr]
        routes_sent = waste.routes_sent

    # A restart on the same database: today's plan, the exclusion and the fill history come back,
    # and no second scheduled plan is made.
    async with running(settings, inv, clock) as d2:
        w2 = d2.waste
        assert w2 is not None
        assert w2.active is not None
        assert w2.active.plan_id == last_plan
        assert w2.bins[bins[0].id].excluded
        assert sum(1 for b in w2.bins.values() if b.est.last is not None) >= len(bins) // 2
        w2.step(clock.now())
        assert w2.pending is None
        assert w2.routes_sent == 0 < routes_sent


def test_simulate_waste_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`edge simulate waste` names what is wrong and exits 2: a missing site, a site without bins, a bad fault."""
    from edge.app.cli import main

    assert main(["simulate", "waste", "--config", str(tmp_path / "nope.toml")]) == 2
    (tmp_path / "site.toml").write_text('[site]\nid = "x"\n', encoding="utf-8")
    assert main(["simulate", "waste", "--config", str(tmp_path / "site.toml")]) == 2
    assert "no [waste] bins" in capsys.readouterr().err
    assert main(["simulate", "waste", "--site", "kreuzviertel", "--fault-rate", "-1"]) == 2
    assert (
        main(
            [
                "simulate",
                "waste",
                "--site",
                "kreuzviertel",
                "--fault",
                "NOPE:fire",
                "--mqtt",
                "mqtt://127.0.0.1:1",
            ]
        )
        == 2
    )
    assert "NOPE" in capsys.readouterr().err
