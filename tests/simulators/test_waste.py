"""The waste simulator: bins fill by kind and weekday, sensors uplink in both formats, trucks drive routes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiomqtt
import orjson
import pytest
from harness import wait_for

from devices.inventory import Bin
from devices.profiles.lorawan import default_profiles
from devices.profiles.waste import Route, RouteStop
from devices.protocols.lorawan import UplinkIngest
from edge.clock import SimClock
from edge.events import Telemetry
from edge.mqtt import BrokerAddress
from edge.settings import PlaceSettings, TruckSettings, WasteSettings, load_settings
from simulators.waste import (
    FillModel,
    TruckSim,
    UplinkEncoder,
    WasteSimulator,
    run_waste_simulator,
    site_config,
)

TZ = ZoneInfo("Europe/Berlin")
MONDAY = datetime(2026, 11, 23, 0, 0, tzinfo=TZ).timestamp()
DEPOT = (51.5015, 7.4435)
DISPOSAL = (51.5060, 7.4440)


def make_bin(i: int, kind: str = "residential", volume: float = 1100.0, lat: float = 51.507) -> Bin:
    return Bin(
        id=f"T{i:03d}",
        dev_eui=f"70b3d57ed0ff{i:04x}",
        lat=lat,
        lon=7.450 + i * 0.002,
        kind=kind,  # type: ignore[arg-type]
        volume_l=volume,
        height_mm=1250.0,
        blind_zone_mm=250.0,
        density_kg_l=0.12,
        road_class="residential",
        zone="",
    )


def settings(truck: str, volume_l: float = 16_000.0, disposal_s: float = 300.0) -> WasteSettings:
    return WasteSettings(
        depot=PlaceSettings(lat=DEPOT[0], lon=DEPOT[1]),
        disposal=PlaceSettings(lat=DISPOSAL[0], lon=DISPOSAL[1], service_s=disposal_s),
        trucks=[TruckSettings(id=truck, volume_l=volume_l)],
        service_s=60.0,
    )


def series(seed: int, step_s: float, bins: list[Bin]) -> list[tuple[float, ...]]:
    """True fills every 6 hours over three days, the model stepped every `step_s`."""
    m = FillModel(bins, start=MONDAY, seed=seed)
    out = []
    t = MONDAY
    for k in range(1, 13):
        while t < MONDAY + k * 6 * 3600:
            t = min(t + step_s, MONDAY + k * 6 * 3600)
            m.advance(t)
        out.append(tuple(round(f, 9) for f in m.fills().values()))
    return out


def test_same_seed_same_fill_series_whatever_the_step() -> None:
    """The fill process ticks on fixed quarter hours with per-bin streams: step size does not matter."""
    bins = [make_bin(i, kind) for i, kind in enumerate(("residential", "shopping", "park"))]
    a = series(7, 3600.0, bins)
    assert a == series(7, 437.0, bins)
    assert a != series(8, 3600.0, bins)
    assert all(0.0 <= f <= 1.0 for row in a for f in row)


def test_weekday_pattern_and_overflow() -> None:
    """Parks take more at the weekend than early in the week; a full bin stays full and counts overflow."""
    park = make_bin(1, "park", volume=10_000.0)
    m = FillModel([park], start=MONDAY, seed=3, initial=(0.0, 0.0))
    m.advance(MONDAY + 2 * 86_400)
    mon_tue = m.litres(park.id)
    m.empty(park.id, MONDAY + 5 * 86_400)
    before = m.litres(park.id)
    m.advance(MONDAY + 7 * 86_400)
    sat_sun = m.litres(park.id) - before
    assert sat_sun > 1.5 * mon_tue

    small = make_bin(2, "shopping", volume=120.0)
    m = FillModel([small], start=MONDAY, seed=3, initial=(0.9, 0.9))
    m.advance(MONDAY + 7 * 86_400)
    s = m.stats(small.id)
    assert m.fill(small.id) == 1.0
    assert s.overflow_events == 1
    assert s.overflow_hours > 24
    assert s.overflow_l > 0


def test_sensor_faults_in_readings() -> None:
    """Faults change what the sensor sends: fire at once with heat, out-of-range distances, stuck values, silence."""
    bins = [make_bin(i) for i in range(4)]
    m = FillModel(bins, start=MONDAY, seed=1)
    m.advance(MONDAY + 3600)
    m.take_readings()
    t = MONDAY + 3600
    m.inject("T000", "fire", t)
    m.inject("T001", "out_of_range", t)
    m.inject("T002", "stuck", t)
    m.inject("T003", "silent", t)
    m.advance(t)
    first = m.take_readings()
    assert [(r.bin_id, r.fire) for r in first] == [("T000", True)]  # the alarm goes out at once
    assert first[0].temperature >= 70
    m.advance(t + 12 * 3600)
    rs = m.take_readings()
    by: dict[str, list[Any]] = {}
    for r in rs:
        by.setdefault(r.bin_id, []).append(r)
    assert all(r.fire for r in by["T000"])
    assert all(r.distance_mm > 1250 + 250 for r in by["T001"])
    assert len({r.distance_mm for r in by["T002"]}) == 1
    assert len(by["T002"]) >= 10
    assert "T003" not in by
    m.clear("T003", ts=t + 12 * 3600)
    m.advance(t + 14 * 3600)
    assert any(r.bin_id == "T003" for r in m.take_readings())


def test_truck_sim_skips_when_full_and_unloads() -> None:
    """Without MQTT: a truck too small for the next bin skips it, unloads at disposal, and goes home."""
    bins = [make_bin(i) for i in range(3)]
    s = settings("t1", volume_l=1500.0)
    m = FillModel(bins, start=MONDAY, seed=2, initial=(0.6, 0.6))
    truck = TruckSim(s.trucks[0], s, m, MONDAY)
    stops = [RouteStop(kind="bin", id=b.id, lat=b.lat, lon=b.lon) for b in bins]
    stops.insert(3, RouteStop(kind="disposal", id="disposal", lat=DISPOSAL[0], lon=DISPOSAL[1]))
    stops.append(RouteStop(kind="depot", id="depot", lat=DEPOT[0], lon=DEPOT[1]))
    events = truck.take_route(Route(route_id="r1", stops=stops), MONDAY)
    for k in range(1, 200):
        events += truck.step(MONDAY + k * 30)
    kinds = [(e, f.get("bin"), f.get("reason")) for e, f in events]
    assert kinds == [
        ("route_accepted", None, None),
        ("emptied", "T000", None),
        ("emptied", "T001", None),
        ("skipped", "T002", "truck_full"),
        ("unloaded", None, None),
        ("route_done", None, None),
    ]
    assert truck.load_l == 0
    assert truck.stop_index == 5
    assert (truck.lat, truck.lon) == pytest.approx(DEPOT)
    ts = [f["ts"] for _, f in events]
    assert ts == sorted(ts)
    assert truck.km_total > 2.0


@asynccontextmanager
async def listen(url: str, topics: list[str]) -> AsyncIterator[list[tuple[str, bytes]]]:
    """Collect every message on `topics` while the block runs."""
    a = BrokerAddress.parse(url)
    got: list[tuple[str, bytes]] = []
    async with aiomqtt.Client(a.host, a.port, protocol=aiomqtt.ProtocolVersion.V311, timeout=10) as client:
        for t in topics:
            await client.subscribe(t, qos=1)

        async def pump() -> None:
            async for msg in client.messages:
                assert isinstance(msg.payload, bytes)
                got.append((str(msg.topic), msg.payload))

        task = asyncio.create_task(pump(), name="test.listen")
        try:
            yield got
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


def ingest_of(sim: WasteSimulator, clock: SimClock) -> tuple[UplinkIngest, list[Telemetry]]:
    out: list[Telemetry] = []
    return UplinkIngest(default_profiles(), sim.devices(), out.append, clock), out


def events_of(got: list[tuple[str, bytes]], truck: str) -> list[dict[str, Any]]:
    return [orjson.loads(p) for t, p in got if t == f"fleet/{truck}/event"]


async def test_uplinks_decode_to_the_fill_in_both_formats(mqtt_url: str) -> None:
    """Every bin's uplinks parse and decode (ChirpStack and TTS) to a distance that gives its true fill."""
    app = f"app-{uuid.uuid4().hex[:8]}"
    bins = [make_bin(i) for i in range(4)]
    clock = SimClock(MONDAY + 8 * 3600, speed=3000.0)
    sim = WasteSimulator(settings(f"t-{app}"), bins, clock, mqtt_url=mqtt_url, seed=4, app=app,
                         duplicate_p=0.0, out_of_order_p=0.0)  # fmt: skip
    ingest, telemetry = ingest_of(sim, clock)
    async with listen(mqtt_url, list(sim.uplink_topics())) as got, sim:
        await wait_for(lambda: len({t for t, _ in got}) >= 4, "an uplink from every bin")
        seen = list(got)
    for topic, payload in seen:
        ingest.handle(topic, payload)
    assert ingest.stats.refused_total == 0
    assert ingest.stats.published == len(seen)
    assert {t.split("/")[0] for t, _ in seen} == {"application", "v3"}
    by_id = {b.id: b for b in bins}
    assert {t.device_id for t in telemetry} == set(by_id)
    for t in telemetry:
        b = by_id[t.device_id]
        fill = b.fill_of(float(t.values["distance_mm"]))  # type: ignore[arg-type]
        assert fill == pytest.approx(sim.fills()[b.id], abs=0.05)
        assert t.values["lid_open"] is False
        assert t.values["fire"] is False


async def test_route_is_driven_bins_emptied_and_confirmed(mqtt_url: str) -> None:
    """A route on fleet/{truck}/route: accepted, bins emptied (their next uplink shows it), unload, home."""
    app = f"app-{uuid.uuid4().hex[:8]}"
    truck = f"t-{app}"
    bins = [make_bin(i, lat=51.5075) for i in range(3)]
    clock = SimClock(MONDAY + 6 * 3600, speed=1500.0)
    sim = WasteSimulator(settings(truck), bins, clock, mqtt_url=mqtt_url, seed=5, app=app, initial=(0.7, 0.8),
                         duplicate_p=0.0, out_of_order_p=0.0)  # fmt: skip
    ingest, telemetry = ingest_of(sim, clock)
    stops: list[dict[str, Any]] = [
        {"seq": i, "kind": "bin", "id": b.id, "lat": b.lat, "lon": b.lon} for i, b in enumerate(bins)
    ]
    stops.insert(2, {"seq": 9, "kind": "disposal", "id": "disposal", "lat": DISPOSAL[0], "lon": DISPOSAL[1]})
    stops.append({"seq": 10, "kind": "depot", "id": "depot", "lat": DEPOT[0], "lon": DEPOT[1]})
    route = {"route_id": "r-1", "issued_ts": clock.now(), "stops": stops}
    a = BrokerAddress.parse(mqtt_url)
    topics = [f"fleet/{truck}/#", *sim.uplink_topics()]
    async with (
        listen(mqtt_url, topics) as got,
        sim,
        aiomqtt.Client(a.host, a.port, protocol=aiomqtt.ProtocolVersion.V311, timeout=10) as c,
    ):
        await c.publish(f"fleet/{truck}/route", orjson.dumps(route), qos=1, retain=True)
        await wait_for(lambda: any(e["type"] == "route_done" for e in events_of(got, truck)), "route_done")
        await c.publish(f"fleet/{truck}/route", b"", qos=1, retain=True)  # clear the retained route

        def confirmed() -> bool:
            done = {e["bin"]: e["ts"] for e in events_of(got, truck) if e["type"] == "emptied"}
            ups = [(t, p) for t, p in got if not t.startswith("fleet/")]
            after = {_name(t, p) for t, p in ups if _ts(p) > done.get(_name(t, p), float("inf"))}
            return len(done) == 3 and after >= set(done)

        await wait_for(confirmed, "an uplink from every emptied bin after its emptying")
        seen = list(got)
    events = events_of(seen, truck)
    assert [e["type"] for e in events] == [
        "route_accepted",
        "emptied",
        "emptied",
        "unloaded",
        "emptied",
        "route_done",
    ]
    assert [e["seq"] for e in events] == sorted({e["seq"] for e in events})
    emptied = [e for e in events if e["type"] == "emptied"]
    unloaded = events[3]
    assert unloaded["load_l"] == pytest.approx(emptied[1]["load_l"], abs=0.2)
    assert unloaded["load_l"] > 1500  # two bins at 70-80 % of 1100 L
    # the sensors confirm: the first uplink after each emptying decodes to a nearly empty bin
    for topic, payload in seen:
        if not topic.startswith("fleet/"):
            ingest.handle(topic, payload)
    by_id = {b.id: b for b in bins}
    for e in emptied:
        after = [t for t in telemetry if t.device_id == e["bin"] and t.ts > e["ts"]]
        assert after, e
        assert by_id[e["bin"]].fill_of(float(after[0].values["distance_mm"])) < 0.06  # type: ignore[arg-type]
    states = [orjson.loads(p) for t, p in seen if t == f"fleet/{truck}/state"]
    assert {"idle", "driving", "collecting", "unloading", "returning"} <= {s["status"] for s in states}
    last = states[-1]
    assert last["status"] == "idle"
    assert last["stop_index"] == 5
    assert last["route_id"] == "r-1"
    assert last["load_l"] == pytest.approx(emptied[2]["load_l"], abs=0.2)
    assert last["lat"] == pytest.approx(DEPOT[0], abs=1e-6)
    assert last["odometer_km"] > 2
    assert sim.emptied == 3
    assert sim.km_driven == pytest.approx(last["odometer_km"], abs=0.01)


def _ts(payload: bytes) -> float:
    d = orjson.loads(payload)
    when_ = d.get("time") or d.get("received_at")
    return datetime.fromisoformat(str(when_).replace("Z", "+00:00")).timestamp()


def _name(topic: str, payload: bytes) -> str:
    d = orjson.loads(payload)
    return str(d.get("deviceInfo", {}).get("deviceName") or topic.split("/")[-2])


async def test_breakdown_stops_the_truck_and_repair(mqtt_url: str) -> None:
    """fleet/{truck}/fault breakdown: a breakdown event, status broken, no more moving, routes refused."""
    app = f"app-{uuid.uuid4().hex[:8]}"
    truck = f"t-{app}"
    far = make_bin(0, lat=51.60)  # ten kilometres away: still driving when it breaks down
    clock = SimClock(MONDAY + 6 * 3600, speed=120.0)  # ~10 s of real driving: a loaded machine keeps up
    sim = WasteSimulator(settings(truck), [far], clock, mqtt_url=mqtt_url, seed=6, app=app)
    route = {"route_id": "r-far", "stops": [{"kind": "bin", "id": far.id, "lat": far.lat, "lon": far.lon}]}
    a = BrokerAddress.parse(mqtt_url)
    async with (
        listen(mqtt_url, [f"fleet/{truck}/#"]) as got,
        sim,
        aiomqtt.Client(a.host, a.port, protocol=aiomqtt.ProtocolVersion.V311, timeout=10) as c,
    ):
        await c.publish(f"fleet/{truck}/route", orjson.dumps(route), qos=1)
        await wait_for(lambda: sim.trucks()[truck].odometer_km > 0.2, "the truck on its way")
        await c.publish(f"fleet/{truck}/fault", b'{"type": "breakdown"}', qos=1)
        await wait_for(lambda: any(e["type"] == "breakdown" for e in events_of(got, truck)), "breakdown")
        where = sim.truck_positions()[truck]
        n = len(got)
        await wait_for(lambda: len([t for t, _ in got[n:] if t.endswith("/state")]) >= 3, "three more states")
        assert sim.truck_positions()[truck] == where
        await c.publish(f"fleet/{truck}/route", orjson.dumps({**route, "route_id": "r-2"}), qos=1)
        await wait_for(lambda: any(e["type"] == "route_rejected" for e in events_of(got, truck)), "rejected")
        await c.publish(f"fleet/{truck}/fault", b'{"type": "repair"}', qos=1)
        await c.publish(f"fleet/{truck}/route", b'{"route_id": "r-3", "stops": "nope"}', qos=1)
        await wait_for(lambda: len(events_of(got, truck)) >= 4, "the malformed route refused")
        seen = list(got)
    events = events_of(seen, truck)
    assert [e["type"] for e in events] == ["route_accepted", "breakdown", "route_rejected", "route_rejected"]
    brk = events[1]
    assert brk["route_id"] == "r-far"
    assert (brk["lat"], brk["lon"]) == pytest.approx(where)
    assert events[2]["reason"] == "broken_down"
    assert events[3]["reason"].startswith("malformed")
    states = [orjson.loads(p) for t, p in seen if t == f"fleet/{truck}/state"]
    assert any(s["status"] == "broken" and s["speed_kmh"] == 0 for s in states)
    assert states[-1]["status"] == "idle"
    assert sim.stats.refused == 1


async def test_fire_alarm_goes_out_at_once(mqtt_url: str) -> None:
    """A fire injected over MQTT reaches the broker as an uplink with the fire flag before the bin's next interval."""
    app = f"app-{uuid.uuid4().hex[:8]}"
    bins = [make_bin(i) for i in range(2)]
    clock = SimClock(MONDAY + 6 * 3600, speed=60.0)  # an hour's interval would take a minute
    sim = WasteSimulator(settings(f"t-{app}"), bins, clock, mqtt_url=mqtt_url, seed=8, app=app,
                         duplicate_p=0.0, out_of_order_p=0.0)  # fmt: skip
    ingest, telemetry = ingest_of(sim, clock)
    a = BrokerAddress.parse(mqtt_url)
    async with (
        listen(mqtt_url, list(sim.uplink_topics())) as got,
        sim,
        aiomqtt.Client(a.host, a.port, protocol=aiomqtt.ProtocolVersion.V311, timeout=10) as c,
    ):
        fault = {"target": "T001", "fault": "fire", "active": True}
        await c.publish("dos/sim/waste/faults", orjson.dumps(fault), qos=1)

        handled = [0]

        def fire() -> bool:
            for t, p in got[handled[0] :]:
                ingest.handle(t, p)
            handled[0] = len(got)
            return any(x.values.get("fire") for x in telemetry)

        await wait_for(fire, "a fire uplink", timeout_s=10)
    alarm = next(x for x in telemetry if x.values.get("fire"))
    assert alarm.device_id == "T001"
    assert int(alarm.values["temperature"]) >= 70  # type: ignore[call-overload]


def test_duplicate_and_out_of_order_frames_reach_the_ingest_as_such() -> None:
    """Duplicate and out-of-order faults: the ingest sees the same frame twice, and an older frame late."""
    bins = [make_bin(i) for i in range(2)]
    m = FillModel(bins, start=MONDAY, seed=9)
    enc = UplinkEncoder(bins, seed=9, duplicate_p=0.0, out_of_order_p=0.0, app="app-dup")
    m.inject("T000", "duplicate", MONDAY)
    m.inject("T001", "out_of_order", MONDAY)
    m.advance(MONDAY + 6 * 3600)
    clock = SimClock(MONDAY + 6 * 3600, speed=1.0)  # the ingest runs after the frames were sent, not before
    out: list[Telemetry] = []
    late: list[Telemetry] = []
    devices = {b.dev_eui: (b.id, "bin_ultrasonic") for b in bins}
    ingest = UplinkIngest(
        default_profiles(), devices, out.append, clock, on_late=late.append, dup_window_s=1e9
    )
    frames = {"T000": 0, "T001": 0}
    for r in m.take_readings():
        frames[r.bin_id] += 1
        for topic, payload in enc.encode(r):
            ingest.handle(topic, payload)
    assert ingest.stats.duplicates == frames["T000"]
    assert ingest.stats.late >= frames["T001"] // 2 - 1
    assert {t.device_id for t in late} == {"T001"}
    assert enc.format_of("T000") != enc.format_of("T001")


async def test_bad_site_or_fault_is_a_clear_error() -> None:
    """A site without bins, an unknown fault or an unknown target fail before anything connects."""
    sw = load_settings(site_config("schwerte"))
    assert sw.bins_path() is not None
    with pytest.raises(ValueError, match="melt"):
        await run_waste_simulator(sw, mqtt_url="mqtt://127.0.0.1:1", faults=["S0001:melt"])
    with pytest.raises(ValueError, match="no bin 'S9999'"):
        await run_waste_simulator(sw, mqtt_url="mqtt://127.0.0.1:1", faults=["S9999:fire"])
    with pytest.raises(ValueError, match="no truck"):
        await run_waste_simulator(sw, mqtt_url="mqtt://127.0.0.1:1", faults=["S0001:breakdown"])
    with pytest.raises(ValueError, match="no \\[waste\\] bins"):
        await run_waste_simulator(load_settings(None), mqtt_url="mqtt://127.0.0.1:1")
