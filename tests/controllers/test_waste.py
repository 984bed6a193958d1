"""Waste controller: alarms from bin uplinks, the scheduled plan, routes through the dispatcher,
emptying confirmed by the sensor, a breakdown re-plan that keeps what is done, operator requests.

The dispatcher, state store, bus and alarms are the daemon's own; the trucks are a small
`PayloadDriver` that accepts every route (the seam the MQTT fleet driver fills in the daemon).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest
import pytest_asyncio
from waiting import wait_until

from controllers.waste import ROUTE_POINT, WasteController, WastePorts, WasteSafety
from devices.inventory import Bin
from devices.profiles.waste import route_number
from edge.alarms import Alarms
from edge.app.domains.waste import restore_waste
from edge.bus import EventBus
from edge.clock import ManualClock
from edge.dispatcher import AuditRecord, Dispatcher, make_command
from edge.errors import DeviceReplyError
from edge.events import AlarmEvent, Outcome, PlanEvent, Priority, Severity, Telemetry
from edge.records import PlanRow
from edge.settings import WasteSettings
from edge.solvers import Solvers
from edge.state import StateStore
from edge.storage import Storage
from optimizer.waste import select

TZ = ZoneInfo("Europe/Berlin")
MONDAY_5 = datetime(2026, 11, 30, 5, 0, tzinfo=TZ).timestamp()  # a Monday, before plan_at
SUNDAY_6 = datetime(2026, 11, 29, 6, 0, tzinfo=TZ).timestamp()
TRUCKS = ("T1", "T2")


def make_bins(n: int = 8) -> list[Bin]:
    return [
        Bin(
            f"B{i}",
            f"{i:016x}",
            51.506 + 0.001 * (i % 4),
            7.446 + 0.002 * (i // 4),
            "residential",
            1100,
            1200,
            250,
            0.12,
            "residential",
            "",
        )
        for i in range(n)
    ]


def settings() -> WasteSettings:
    return WasteSettings.model_validate(
        {
            "threshold": 0.8,
            "plan_at": "05:30",
            "depot": {"lat": 51.500, "lon": 7.440},
            "disposal": {"lat": 51.520, "lon": 7.470, "service_s": 600},
            "trucks": [
                {"id": t, "volume_l": 16000, "weight_kg": 9000, "shift": "06:00-14:00"} for t in TRUCKS
            ],
            "solver_time_s": 0.3,
        }
    )


@dataclass
class Fleet:
    """Trucks that accept every route they are sent (the read-back is the route's number)."""

    routes: dict[str, list[dict[str, object]]] = field(default_factory=dict)

    def handles(self, device_id: str) -> bool:
        return device_id in TRUCKS

    async def write(self, device_id: str, point: str, value: float, timeout: float) -> float:  # noqa: ASYNC109
        raise DeviceReplyError("trucks take routes only", endpoint=device_id)

    async def write_payload(self, device_id: str, point: str, payload: str, timeout: float) -> float:  # noqa: ASYNC109
        body = orjson.loads(payload)
        self.routes.setdefault(device_id, []).append(body)
        return float(route_number(body["route_id"]))


@dataclass
class Rig:
    ctl: WasteController
    clock: ManualClock
    bus: EventBus
    fleet: Fleet
    audit: list[AuditRecord]
    events: list[object]
    bins: list[Bin]
    disp: Dispatcher


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = ManualClock(MONDAY_5)
    bus = EventBus()
    bins = make_bins()
    state = StateStore(bus, {**dict.fromkeys(TRUCKS, "truck"), **{b.id: "bin" for b in bins}})
    fleet = Fleet()
    audit: list[AuditRecord] = []
    events: list[object] = []
    sub = bus.subscribe("test", AlarmEvent, PlanEvent)
    async with Dispatcher(
        bus=bus, clock=clock, state=state, drivers=[fleet], policies={"truck": WasteSafety()},
        audit=audit.append, write_timeout_s=1.0, workers=2,
    ) as disp:  # fmt: skip
        ctl = WasteController(
            WastePorts(TZ, clock, Alarms(bus, clock), disp.submit, bus), settings(), bins=bins
        )
        r = Rig(ctl, clock, bus, fleet, audit, events, bins, disp)
        yield r
    while (ev := sub.get_nowait()) is not None:
        events.append(ev)


def drain(r: Rig) -> None:
    sub = next(s for s in r.bus._subs if s.name == "test")
    while (ev := sub.get_nowait()) is not None:
        r.events.append(ev)


def uplink(r: Rig, bin_id: str, fill: float, ts: float | None = None, **extra: object) -> None:
    b = next(x for x in r.bins if x.id == bin_id)
    values: dict[str, object] = {"distance_mm": round(b.distance_of(fill)), "battery": 90, "temperature": 12}
    values.update(extra)
    r.ctl.handle(Telemetry(bin_id, r.clock.now() if ts is None else ts, values))  # type: ignore[arg-type]


def fill_history(r: Rig, fills: dict[str, float], hours: int = 6) -> None:
    """Hourly readings rising 1 %/h to `fills` now, for every bin."""
    now = r.clock.now()
    for h in range(hours, -1, -1):
        for bid, f in fills.items():
            uplink(r, bid, max(0.0, f - 0.01 * h), ts=now - h * 3600)


def truck_state(r: Rig, tid: str, **values: object) -> None:
    base: dict[str, object] = {"lat": 51.5, "lon": 7.44, "load_l": 0, "load_kg": 0, "status": "idle",
                               "route_id": "", "stop_index": 0, "odometer_km": 0.0}  # fmt: skip
    base.update(values)
    r.ctl.handle(Telemetry(tid, r.clock.now(), base))  # type: ignore[arg-type]


SEQ = iter(range(1, 10_000))


def truck_event(r: Rig, tid: str, kind: str, **values: object) -> None:
    body: dict[str, object] = {"event": kind, "seq": next(SEQ)}
    body.update(values)
    r.ctl.handle(Telemetry(tid, r.clock.now(), body))  # type: ignore[arg-type]


FULL = {"B0": 0.85, "B1": 0.9, "B2": 0.82, "B3": 0.3, "B4": 0.1, "B5": 0.88, "B6": 0.05, "B7": 0.6}


async def test_scheduled_plan_sends_routes_through_the_dispatcher(rig: Rig) -> None:
    """At plan_at on a run day the controller plans once; every truck gets its route as an audited
    command whose JSON follows the fleet protocol, and the full bins are in the routes."""
    r = rig
    fill_history(r, FULL)
    r.ctl.step(r.clock.now())
    assert r.ctl.pending is None  # 05:00: not yet
    r.clock.advance(31 * 60)
    r.ctl.step(r.clock.now())
    assert r.ctl.pending == "scheduled"
    active = await r.ctl.plan_pending()
    assert active is not None
    r.ctl.step(r.clock.now())
    assert r.ctl.pending is None  # once a day
    planned = {b for route in active.plan.routes for b in route.bins}
    assert {"B0", "B1", "B2", "B5"} <= planned
    assert "B6" not in planned  # 5 % full: not worth a detour
    await wait_until(lambda: len(r.fleet.routes) == 2, what="routes for both trucks")
    for tid in TRUCKS:
        body = r.fleet.routes[tid][-1]
        assert body["route_id"] == active.route_ids[tid]
        stops = body["stops"]
        assert isinstance(stops, list)
        for i, s in enumerate(stops):
            assert s["seq"] == i
            assert s["kind"] in {"bin", "disposal", "depot"}
            assert {"id", "lat", "lon", "eta_ts"} <= s.keys()
        if stops:
            assert stops[-1]["kind"] == "depot"
            assert stops[-2]["kind"] == "disposal"
    await wait_until(
        lambda: (
            sum(1 for a in r.audit if a.outcome is Outcome.CONFIRMED and a.command.point == ROUTE_POINT) == 2
        ),
        what="both routes confirmed in the audit",
    )
    assert r.ctl.bin_state("B1", r.clock.now())["plan"] == "mandatory"
    assert r.ctl.bin_state("B6", r.clock.now())["plan"] == "none"
    drain(r)
    plans = [e for e in r.events if isinstance(e, PlanEvent)]
    assert plans
    assert plans[-1].domain == "waste"
    assert plans[-1].plan["reason"] == "scheduled"


async def test_no_plan_on_a_rest_day() -> None:
    """Sunday is not a run day: nothing is planned at plan_at."""
    clock = ManualClock(SUNDAY_6)
    bus = EventBus()
    ctl = WasteController(WastePorts(TZ, clock, Alarms(bus, clock), None, bus), settings(), bins=make_bins())
    ctl.step(clock.now())
    assert ctl.pending is None
    assert ctl.run_day(clock.now()).weekday() == 0  # a plan now would be for Monday


async def test_emptied_counts_only_when_the_sensor_confirms(rig: Rig) -> None:
    """A truck's "emptied" shows as reported; the bin's own drop makes it done and counts it."""
    r = rig
    fill_history(r, FULL)
    r.clock.advance(31 * 60)
    r.ctl.step(r.clock.now())
    active = await r.ctl.plan_pending()
    assert active is not None
    route = next(x for x in active.plan.routes if "B1" in x.bins)
    seq = next(s.seq for s in route.stops if s.id == "B1")
    r.clock.advance(3600)
    truck_event(r, route.truck, "emptied", route_id=active.route_ids[route.truck], bin="B1")
    assert r.ctl.stop_state(route.truck, seq) == "reported"
    assert r.ctl.counters.emptied == 0
    assert r.ctl.summary(r.clock.now())["emptied_today"] == 0
    r.clock.advance(300)
    uplink(r, "B1", 0.02)
    assert r.ctl.stop_state(route.truck, seq) == "done"
    assert r.ctl.counters.emptied == 1
    assert r.ctl.counters.reported == 0
    state = r.ctl.bin_state("B1", r.clock.now())
    assert state["last_emptied_ts"] == r.clock.now()
    msg = r.ctl.plan_message()
    assert msg is not None
    stops = next(x for x in msg["routes"] if x["truck"] == route.truck)["stops"]  # type: ignore[attr-defined]
    assert next(s for s in stops if s["id"] == "B1")["done"] is True


async def test_breakdown_replans_keeping_what_is_done(rig: Rig) -> None:
    """A truck breaks down mid-route: an alarm, a re-plan without it, the bins already emptied stay
    out, its remaining mandatory bins go to the other truck, which starts from where it is."""
    r = rig
    fill_history(r, FULL)
    r.clock.advance(31 * 60)
    r.ctl.step(r.clock.now())
    first = await r.ctl.plan_pending()
    assert first is not None
    mandatory = {b for b, s in first.plan.selection.items() if s.kind == "mandatory"}
    # Both trucks out; one bin emptied and confirmed.
    r.clock.advance(2 * 3600)
    for tid in TRUCKS:
        truck_state(
            r,
            tid,
            lat=51.507,
            lon=7.447,
            status="driving",
            route_id=first.route_ids[tid],
            load_l=800,
            load_kg=90,
        )
    done_bin = "B0"
    owner = next((x.truck for x in first.plan.routes if done_bin in x.bins), "T1")
    truck_event(r, owner, "emptied", route_id=first.route_ids[owner], bin=done_bin)
    uplink(r, done_bin, 0.03)
    assert r.ctl.counters.emptied == 1
    broken = "T1"
    truck_event(r, broken, "breakdown", route_id=first.route_ids[broken], lat=51.507, lon=7.447)
    assert r.ctl.pending == "breakdown"
    drain(r)
    alarms = [e for e in r.events if isinstance(e, AlarmEvent) and e.code == "truck_breakdown"]
    assert alarms
    assert alarms[-1].active
    assert alarms[-1].severity is Severity.MAJOR
    second = await r.ctl.plan_pending()
    assert second is not None
    assert second.reason == "breakdown"
    assert second.plan.route_of(broken) is None
    other = second.plan.route_of("T2")
    assert other is not None
    assert done_bin not in other.bins
    assert (mandatory - {done_bin}) <= set(other.bins)
    assert second.plan.missed_mandatory == ()
    # T2 starts from the road: its first stop's ETA is after now, it carries its load to the disposal site
    assert other.stops[0].eta_ts >= r.clock.now()
    # (the first routes expired unsent: the clock jumped two hours past their time to live)
    await wait_until(
        lambda: r.fleet.routes.get("T2", [{}])[-1].get("route_id") == second.route_ids["T2"],
        what="T2's new route",
    )
    assert r.ctl.truck_state(broken, r.clock.now())["status"] == "broken"
    # the broken truck was told to stop: an empty route
    await wait_until(lambda: r.fleet.routes.get(broken, [{}])[-1].get("stops") == [], what="empty route")
    # a state older than the breakdown (another topic, delivered late) repairs nothing
    r.ctl.handle(Telemetry(broken, r.clock.now() - 30, {"status": "driving", "lat": 51.5, "lon": 7.44}))
    assert r.ctl.trucks[broken].broken
    # repaired (a later state): the alarm clears and the trucks are planned again
    r.clock.advance(60)
    truck_state(r, broken, status="idle")
    drain(r)
    last = [e for e in r.events if isinstance(e, AlarmEvent) and e.code == "truck_breakdown"][-1]
    assert not last.active
    assert str(r.ctl.pending) == "replan"


async def test_operator_force_exclude_clear(rig: Rig) -> None:
    """force puts a nearly empty bin into the plan (re-plan), exclude keeps a full one out, clear undoes."""
    r = rig
    fill_history(r, FULL)
    r.clock.advance(31 * 60)
    r.ctl.step(r.clock.now())
    await r.ctl.plan_pending()
    assert r.ctl.operator("B6", "force") == (True, "")
    assert r.ctl.pending == "operator"
    assert r.ctl.operator("B1", "exclude") == (True, "")
    active = await r.ctl.plan_pending()
    assert active is not None
    planned = {b for route in active.plan.routes for b in route.bins}
    assert "B6" in planned
    assert "B1" not in planned
    assert r.ctl.bin_state("B1", r.clock.now())["excluded"] is True
    assert r.ctl.operator("B1", "force")[0] is False  # excluded: clear first
    assert r.ctl.operator("B1", "clear") == (True, "")
    assert r.ctl.bin_state("B1", r.clock.now())["excluded"] is False
    assert r.ctl.operator("nope", "force") == (False, "unknown_bin")
    assert r.ctl.operator("B1", "explode")[0] is False


async def test_bin_alarms_raised_and_cleared(rig: Rig) -> None:
    """Fire (from the temperature) is critical and asks for a re-plan during the day's operation;
    overflow counts; stale after three silent intervals; all clear when the cause goes."""
    r = rig
    fill_history(r, FULL)
    r.clock.advance(31 * 60)
    r.ctl.step(r.clock.now())
    await r.ctl.plan_pending()
    r.clock.advance(600)
    uplink(r, "B4", 0.2, temperature=85)
    uplink(r, "B3", 0.99)
    drain(r)
    raised = {(e.device_id, e.code): e for e in r.events if isinstance(e, AlarmEvent) and e.active}
    assert raised[("B4", "fire")].severity is Severity.CRITICAL
    assert raised[("B3", "overflow")].severity is Severity.MAJOR
    assert r.ctl.counters.overflows == 1
    assert r.ctl.pending == "alarm"
    active = await r.ctl.plan_pending()
    assert active is not None
    assert "B4" in {b for route in active.plan.routes for b in route.bins}
    assert r.ctl.bin_state("B4", r.clock.now())["alarms"] == ["fire"]
    r.clock.advance(300)
    uplink(r, "B4", 0.2, temperature=15)
    r.clock.advance(4 * 3600)
    r.ctl.step(r.clock.now())
    drain(r)
    cleared = {(e.device_id, e.code) for e in r.events if isinstance(e, AlarmEvent) and not e.active}
    assert ("B4", "fire") in cleared
    state = r.ctl.bin_state("B4", r.clock.now())
    assert state["status"] == "stale"
    assert "stale" in state["alarms"]  # type: ignore[operator]
    summary = r.ctl.summary(r.clock.now())
    assert summary["reporting"] == 0
    assert summary["overflows_today"] == 1


async def test_safety_refuses_a_malformed_route(rig: Rig) -> None:
    """Only a well-formed route reaches a truck: the dispatcher refuses anything else, audited."""
    r = rig
    now = r.clock.now()
    bad = make_command(
        "T1", ROUTE_POINT, 3.0, Priority.PLAN, "test", now=now, ttl_s=60, payload='{"stops": 1}'
    )
    assert r.disp.submit(bad).outcome is Outcome.REFUSED
    body = orjson.dumps({"route_id": "x-T1-r4", "stops": []}).decode()
    wrong = make_command("T1", ROUTE_POINT, 3.0, Priority.PLAN, "test", now=now, ttl_s=60, payload=body)
    assert r.disp.submit(wrong).outcome is Outcome.REFUSED  # value is not the route's number
    ok = make_command("T1", ROUTE_POINT, 4.0, Priority.PLAN, "test", now=now, ttl_s=60, payload=body)
    assert r.disp.submit(ok).outcome is Outcome.ACCEPTED
    assert [a.outcome for a in r.audit if a.command.id == bad.id] == [Outcome.REFUSED]


async def test_run_loop_consumes_the_bus(rig: Rig) -> None:
    """`run` takes bin and truck telemetry from the bus and plans by itself at plan_at."""
    import asyncio

    r = rig
    r.ctl.step_s = 0.01
    task = asyncio.create_task(r.ctl.run(), name="waste.test")
    try:
        now = r.clock.now()
        for bid, f in FULL.items():
            b = next(x for x in r.bins if x.id == bid)
            r.bus.publish(Telemetry(bid, now, {"distance_mm": round(b.distance_of(f)), "battery": 90}))
        await wait_until(lambda: r.ctl.bins["B1"].reading is not None, what="uplinks consumed")
        r.clock.advance(31 * 60)
        await wait_until(lambda: r.ctl.active is not None, what="the scheduled plan")
        await wait_until(lambda: len(r.fleet.routes) == 2, what="routes sent")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_fleet_messages_validated_at_the_boundary() -> None:
    """Truck state and events become Telemetry; bad JSON, bad fields and unknown trucks are counted, not passed on."""
    from devices.waste import FleetDriver
    from edge.errors import DeviceUnavailable

    out: list[object] = []
    clock = ManualClock(MONDAY_5)
    drv = FleetDriver(out.append, clock, ["T1"], mqtt_url="mqtt://127.0.0.1:1")
    state = {"ts": MONDAY_5, "lat": 51.5, "lon": 7.44, "load_l": 10, "load_kg": 1, "status": "driving",
             "route_id": None, "stop_index": 2, "odometer_km": 3.5}  # fmt: skip
    ev = drv.on_message("fleet/T1/state", orjson.dumps(state))
    assert ev is not None
    assert ev.values["route_id"] == ""
    assert ev.values["stop_index"] == 2
    ev = drv.on_message(
        "fleet/T1/event",
        orjson.dumps({"type": "emptied", "ts": MONDAY_5, "seq": 4, "bin": "B1", "load_l": 900}),
    )
    assert ev is not None
    assert dict(ev.values) == {"event": "emptied", "seq": 4, "bin": "B1", "load_l": 900.0}
    assert drv.on_message("fleet/T1/state", b"{nope") is None
    assert drv.on_message("fleet/T1/state", orjson.dumps({**state, "status": "flying"})) is None
    assert drv.on_message("fleet/T1/event", orjson.dumps({"type": "emptied", "ts": 1.0})) is None  # no seq
    assert drv.on_message("fleet/T9/state", orjson.dumps(state)) is None
    assert drv.on_message("fleet/T1/route", b"{}") is None  # our own retained route: not an input
    assert drv.stats.bad == 3
    assert drv.stats.unknown_truck == 1
    assert len(out) == 2
    with pytest.raises(DeviceUnavailable):  # never connected: the dispatcher retries until the TTL
        await drv.write_payload("T1", "route", '{"route_id": "d-T1-r1", "stops": []}', 1.0)


async def test_restart_keeps_plan_flags_and_history(rig: Rig) -> None:
    """A restarted controller takes today's stored plan back (no second scheduled plan, route
    numbers go on), the operators' flags, and the fill history from stored state samples."""
    r = rig
    fill_history(r, FULL)
    r.clock.advance(31 * 60)
    r.ctl.step(r.clock.now())
    active = await r.ctl.plan_pending()
    assert active is not None
    r.ctl.operator("B3", "exclude")
    drain(r)
    stored = [e for e in r.events if isinstance(e, PlanEvent)]
    plan_body = next(e.plan for e in reversed(stored) if e.domain == "waste")
    flags_body = next(e.plan for e in reversed(stored) if e.domain == "waste.operator")

    bus = EventBus()
    fresh = WasteController(WastePorts(TZ, r.clock, Alarms(bus, r.clock), None, bus), settings(), bins=r.bins)
    samples = [(MONDAY_5 - h * 3600, {"distance_mm": round(r.bins[1].distance_of(0.9 - 0.01 * h)), "f_cnt": 100 - h})
               for h in range(6, -1, -1)]  # fmt: skip
    samples.insert(3, samples[2])  # a repeated snapshot of the same frame adds nothing
    assert fresh.restore_history("B1", samples) == 7
    rate = fresh.bins["B1"].est.segment_rate()
    assert rate is not None
    assert rate == pytest.approx(0.01, rel=0.05)
    fresh.restore_flags(flags_body)
    assert fresh.bins["B3"].excluded
    assert fresh.restore_plan(plan_body, r.clock.now())
    assert fresh.active is not None
    assert fresh.active.route_ids == active.route_ids
    assert [x.bins for x in fresh.active.plan.routes] == [x.bins for x in active.plan.routes]
    fresh.step(r.clock.now())
    assert fresh.pending is None  # today's plan exists: no second scheduled plan
    assert fresh.bin_state("B1", r.clock.now())["plan"] == "mandatory"
    # a stored plan of another day is not taken back
    assert not fresh.restore_plan({**plan_body, "day": "2026-11-01"}, r.clock.now())
    assert not fresh.restore_plan({"routes": "garbage"}, r.clock.now())


async def test_alarm_replans_are_rate_limited_not_lost(rig: Rig) -> None:
    """A second fire soon after an alarm re-plan is held back, then re-planned once the limit has passed."""
    r = rig
    fill_history(r, FULL)
    r.clock.advance(31 * 60)
    r.ctl.step(r.clock.now())
    await r.ctl.plan_pending()
    r.clock.advance(600)
    uplink(r, "B4", 0.2, temperature=85)
    assert r.ctl.pending == "alarm"
    await r.ctl.plan_pending()
    r.clock.advance(60)
    uplink(r, "B6", 0.1, fire=True)
    assert r.ctl.pending is None  # within alarm_replan_s of the last one
    r.ctl.step(r.clock.now())
    assert r.ctl.pending is None
    r.clock.advance(r.ctl.alarm_replan_s)
    r.ctl.step(r.clock.now())
    assert r.ctl.pending == "alarm"
    active = await r.ctl.plan_pending()
    assert active is not None
    assert "B6" in {b for route in active.plan.routes for b in route.bins}


async def test_planner_inputs_carry_the_risk_quantile(rig: Rig) -> None:
    """The controller hands the planner an upper quantile of each bin's fill at the next run: above
    the forecast for a rising bin, and a bin is mandatory as soon as that quantile reaches the
    threshold (the next run is the next chance to collect it)."""
    r = rig
    fill_history(r, FULL)
    bins, _, ctx, _ = r.ctl.planner.inputs(r.clock.now())
    assert ctx.next_run_ts > ctx.now + 12 * 3600  # the start of the next run, not of this one
    sel = select(bins, ctx)
    for b in bins:
        assert b.fill_next is not None
        assert b.fill_next_hi is not None
        if b.fill_next < 1.0:
            assert b.fill_next_hi > b.fill_next  # rising 1 %/h: the quantile lies above
        if b.fill_next_hi >= ctx.threshold:
            assert sel[b.id].kind == "mandatory", (b, sel[b.id])
    assert sel["B6"].kind == "optional"


async def test_a_device_ts_far_ahead_is_refused_and_does_not_stop_the_loop(rig: Rig) -> None:
    """A truck ts beyond what datetime can hold, or a day ahead, neither ends `run` nor freezes the truck."""
    import asyncio

    r = rig
    r.ctl.step_s = 0.01
    task = asyncio.create_task(r.ctl.run(), name="waste.test")
    try:
        now = r.clock.now()
        base: dict[str, float | str] = {"lat": 51.5, "lon": 7.44, "status": "idle", "odometer_km": 1.0}
        r.bus.publish(Telemetry("T1", 1e15, base))
        r.bus.publish(Telemetry("T1", now + 3 * 86400, {**base, "lat": 51.6}))
        r.bus.publish(Telemetry("T1", now, {**base, "lat": 51.51}))
        await wait_until(lambda: r.ctl.trucks["T1"].lat == 51.51, what="the truck's real state")
        assert not task.done()
        assert r.ctl.rejected == 2
        assert r.ctl.trucks["T1"].last_seen_ts == now
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_an_unusable_plan_is_not_sent_and_raises_an_alarm(rig: Rig) -> None:
    """A plan the check refused: no route goes out (and no KeyError without an earlier plan); the
    alarm `plan_failed` and the plan message say why; the next usable plan clears the alarm."""
    from optimizer.waste import PlannedStop, TruckRoute, WastePlan

    r = rig
    now = r.clock.now()
    day = r.ctl.st.day(now)
    stop = PlannedStop(0, "depot", "depot", 51.5, 7.44, now + 60)
    bad = WastePlan(now, (TruckRoute("T1", (stop,), 0, now + 60),), {}, (), (), "feasible", "x", 0,
                    violations=("T1: shift end exceeded",))  # fmt: skip
    got = r.ctl.planner.apply(bad, "operator", day)
    assert not got.plan.usable
    assert r.ctl.active is None
    await r.disp.drain(2.0)
    assert r.fleet.routes == {}
    drain(r)
    alarms = [e for e in r.events if isinstance(e, AlarmEvent) and e.code == "plan_failed"]
    assert alarms
    assert alarms[-1].active
    assert "shift end" in alarms[-1].detail
    plans = [e for e in r.events if isinstance(e, PlanEvent)]
    assert plans
    assert plans[-1].plan["violations"] == ["T1: shift end exceeded"]
    good = WastePlan(now, (TruckRoute("T1", (), 0, now),), {}, (), (), "optimal", "x", 0)
    r.ctl.planner.apply(good, "operator", day)
    drain(r)
    alarms = [e for e in r.events if isinstance(e, AlarmEvent) and e.code == "plan_failed"]
    assert not alarms[-1].active


async def test_a_glitch_taken_for_an_emptying_is_undone(rig: Rig) -> None:
    """0.69 -> 0.05 -> 0.70 without a truck: the drop was a glitch; the bin is not done, not counted,
    and an operator's force stays in force."""
    r = rig
    fill_history(r, {"B3": 0.69})
    assert r.ctl.operator("B3", "force")[0]
    r.clock.advance(900)
    uplink(r, "B3", 0.05)
    bt = r.ctl.bins["B3"]
    assert r.ctl.st.done_today(bt)
    assert r.ctl.counters.emptied == 1
    r.ctl.st.north.bins.clear()
    r.clock.advance(900)
    uplink(r, "B3", 0.70)
    assert not r.ctl.st.done_today(bt)
    assert bt.confirmed_ts is None
    assert bt.forced
    assert r.ctl.counters.emptied == 0
    assert "B3" in r.ctl.st.north.bins  # its state goes north again


async def test_a_blocked_transducer_is_a_sensor_fault_not_an_overflow(rig: Rig) -> None:
    """0 mm (a blocked or iced transducer) says nothing about the fill: sensor_fault, no overflow."""
    r = rig
    fill_history(r, {"B2": 0.4})
    r.clock.advance(900)
    r.ctl.handle(Telemetry("B2", r.clock.now(), {"distance_mm": 0, "battery": 90}))
    bt = r.ctl.bins["B2"]
    assert "overflow" not in bt.alarms
    assert "sensor_fault" in bt.alarms
    assert bt.reading is not None
    assert bt.reading.fill is None
    assert r.ctl.counters.overflows == 0


async def test_km_today_counts_only_todays_driving(rig: Rig) -> None:
    """Overnight the truck still reports yesterday's odometer, then resets it at the shift start:
    today's km are only what it drives today."""
    r = rig
    truck_state(r, "T1", odometer_km=10.0)
    truck_state(r, "T1", odometer_km=120.0)
    assert r.ctl.summary(r.clock.now())["km_today"] == 120.0
    r.clock.advance(20 * 3600)  # Tuesday 01:00
    truck_state(r, "T1", odometer_km=120.0)
    assert r.ctl.summary(r.clock.now())["km_today"] == 0.0
    r.clock.advance(5 * 3600)
    truck_state(r, "T1", odometer_km=0.0)
    truck_state(r, "T1", odometer_km=7.5)
    assert r.ctl.summary(r.clock.now())["km_today"] == 7.5


async def test_restart_after_a_forced_bin_was_emptied(rig: Rig) -> None:
    """The emptying of a forced bin is stored as a flags change (a restart does not force it
    again), and a bin emptied earlier today is done after a restart from its stored history."""
    r = rig
    fill_history(r, {"B2": 0.5})
    assert r.ctl.operator("B2", "force")[0]
    r.clock.advance(900)
    uplink(r, "B2", 0.02)
    drain(r)
    flags = [e.plan for e in r.events if isinstance(e, PlanEvent) and e.domain == "waste.operator"]
    assert flags[-1]["forced"] == []

    bus = EventBus()
    fresh = WasteController(WastePorts(TZ, r.clock, Alarms(bus, r.clock), None, bus), settings(), bins=r.bins)
    now = r.clock.now()
    fills = [0.45, 0.47, 0.5, 0.02]
    samples = [(now - (3 - i) * 900, {"distance_mm": round(r.bins[2].distance_of(f)), "f_cnt": i})
               for i, f in enumerate(fills)]  # fmt: skip
    assert fresh.restore_history("B2", samples) == 4
    fresh.restore_flags(flags[-1])
    bt = fresh.bins["B2"]
    assert not bt.forced
    assert fresh.st.done_today(bt)
    assert fresh.counters.emptied == 1


async def test_a_skipped_mandatory_bin_or_a_rejected_route_replans(rig: Rig) -> None:
    """A truck skips a mandatory bin: an alarm and a re-plan; a rejected route asks for one too
    (rate-limited like the alarm re-plans)."""
    r = rig
    fill_history(r, FULL)
    r.clock.advance(31 * 60)
    r.ctl.step(r.clock.now())
    first = await r.ctl.plan_pending()
    assert first is not None
    r.clock.advance(2 * 3600)
    route = next(x for x in first.plan.routes if "B1" in x.bins)
    truck_event(r, route.truck, "skipped", route_id=first.route_ids[route.truck], bin="B1", reason="blocked")
    drain(r)
    alarms = [e for e in r.events if isinstance(e, AlarmEvent) and e.code == "bin_skipped"]
    assert alarms
    assert alarms[-1].device_id == "B1"
    assert alarms[-1].active
    assert r.ctl.pending == "alarm"
    await r.ctl.plan_pending()
    r.clock.advance(r.ctl.alarm_replan_s + 1)
    truck_event(r, "T2", "route_rejected", route_id="x", reason="busy")
    assert r.ctl.pending == "alarm"


async def test_the_plan_is_made_in_the_solver_process(rig: Rig) -> None:
    """With the daemon's solver process (edge/solvers.py), the search runs there, not in a
    thread of the daemon (OR-Tools holds the GIL); ending the process is the Solvers' own test."""
    r = rig
    fill_history(r, FULL)
    async with Solvers() as solvers:
        r.ctl.planner.solvers = solvers
        active = await r.ctl.planner.plan_now("operator")
        assert solvers.stats.calls == 1
        assert solvers.stats.in_thread == 0
        assert len(solvers.pids()) == 1
    assert active.plan.routes
    assert {s.id for rt in active.plan.routes for s in rt.stops} >= {"B1"}  # the fullest bin is emptied


async def test_bins_emptied_while_planning_are_left_out_of_the_routes(rig: Rig) -> None:
    """A bin the sensor saw emptied after the solver started is not sent as a stop."""
    from optimizer.waste import PlannedStop, TruckRoute, WastePlan

    r = rig
    fill_history(r, {"B0": 0.85, "B1": 0.9})
    made = r.ctl.clock.now()
    stops = (
        PlannedStop(0, "bin", "B0", 51.506, 7.446, made + 600),
        PlannedStop(1, "bin", "B1", 51.507, 7.446, made + 900),
        PlannedStop(2, "disposal", "disposal", 51.52, 7.47, made + 1800),
        PlannedStop(3, "depot", "depot", 51.5, 7.44, made + 2400),
    )
    plan = WastePlan(made, (TruckRoute("T1", stops, 5000, made + 2400),), {}, (), (), "optimal", "x", 5000)
    r.ctl.planner.route_lead_s = 2 * 3600  # (the shift starts at 06:00: not held back)
    r.clock.advance(60)
    uplink(r, "B0", 0.02)  # emptied while the solver ran
    active = r.ctl.planner.apply(plan, "operator", r.ctl.st.day(made))
    route = active.plan.route_of("T1")
    assert route is not None
    assert route.bins == ("B1",)
    assert [s.seq for s in route.stops] == [0, 1, 2]
    await wait_until(lambda: "T1" in r.fleet.routes, what="the route sent")
    sent = r.fleet.routes["T1"][-1]["stops"]
    assert [s["id"] for s in sent if s["kind"] == "bin"] == ["B1"]  # type: ignore[attr-defined]


async def test_a_route_for_a_later_shift_is_held_until_shortly_before_it(rig: Rig) -> None:
    """A plan made on Sunday evening for Monday: the routes carry the shift start and go out only
    `route_lead_s` before it, from `step`."""
    from optimizer.waste import PlannedStop, TruckRoute, WastePlan

    r = rig
    r.clock.advance(-(MONDAY_5 - SUNDAY_6) + 14 * 3600)  # Sunday 20:00
    now = r.clock.now()
    monday = datetime.fromtimestamp(MONDAY_5, TZ).date()
    stops = (PlannedStop(0, "bin", "B0", 51.506, 7.446, MONDAY_5 + 3600),
             PlannedStop(1, "depot", "depot", 51.5, 7.44, MONDAY_5 + 7200))  # fmt: skip
    plan = WastePlan(now, (TruckRoute("T1", stops, 3000, MONDAY_5 + 7200),), {}, (), (), "optimal", "x", 3000)
    r.ctl.planner.apply(plan, "operator", monday)
    r.ctl.step(now)
    await r.disp.drain(2.0)
    assert "T1" not in r.fleet.routes
    shift_start = MONDAY_5 + 3600
    r.clock.advance(shift_start - r.ctl.planner.route_lead_s - 60 - r.clock.now())
    r.ctl.step(r.clock.now())
    await r.disp.drain(2.0)
    assert "T1" not in r.fleet.routes
    r.clock.advance(120)
    r.ctl.step(r.clock.now())
    await wait_until(lambda: "T1" in r.fleet.routes, what="the route sent before the shift")
    assert r.fleet.routes["T1"][-1]["start_ts"] == shift_start


async def test_a_stuck_sensor_raises_sensor_fault(rig: Rig) -> None:
    """The same distance for more than a day while the bin's pattern expects it to rise: the
    sensor is stuck (sensor_fault); a day of readings that do change raises nothing."""
    r = rig
    now = r.clock.now()
    for h in range(30, -1, -1):
        uplink(r, "B3", 0.3, ts=now - h * 3600)
        uplink(r, "B4", 0.1 + 0.005 * (30 - h), ts=now - h * 3600)
    r.ctl.step(now)
    assert "sensor_fault" in r.ctl.bins["B3"].alarms
    assert "unchanged" in r.ctl.bins["B3"].alarms["sensor_fault"]
    assert "sensor_fault" not in r.ctl.bins["B4"].alarms


async def test_a_faulty_sensor_bin_is_planned_as_if_it_kept_filling(rig: Rig) -> None:
    """A stuck sensor's bin: the planner assumes the pattern's rise since the readings froze, so
    a bin that could be full by the next run is mandatory."""
    r = rig
    now = r.clock.now()
    for h in range(40, -1, -1):
        uplink(r, "B3", 0.6, ts=now - h * 3600)
    r.ctl.step(now)
    bt = r.ctl.bins["B3"]
    assert "sensor_fault" in bt.alarms
    assert bt.same_since is not None
    bins, _, ctx, _ = r.ctl.planner.inputs(now)
    b3 = next(b for b in bins if b.id == "B3")
    expected = min(1.0, 0.6 + bt.est.pattern.integral(bt.same_since, ctx.next_run_ts))
    assert b3.fill_next_hi is not None
    assert b3.fill_next_hi == pytest.approx(expected, abs=0.01)
    assert (select(bins, ctx)["B3"].kind == "mandatory") == (expected >= ctx.threshold)
    assert expected >= ctx.threshold  # 40 h stuck at 60 % plus a day to the next run


async def test_planner_inputs_give_the_event_loop_turns() -> None:
    """Building the planner's inputs for many bins yields to the event loop every INPUT_CHUNK bins
    and gives the same inputs as the blocking call."""
    import asyncio

    from controllers.waste import INPUT_CHUNK

    clock = ManualClock(MONDAY_5)
    bus = EventBus()
    bins = make_bins(2 * INPUT_CHUNK + 50)
    ctl = WasteController(WastePorts(TZ, clock, Alarms(bus, clock), None, bus), settings(), bins=bins)
    turns = 0
    stop = False

    async def other() -> None:
        nonlocal turns
        while not stop:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other(), name="other")
    await asyncio.sleep(0)
    before = turns
    got = await ctl.planner.inputs_async(clock.now())
    stop = True
    await task
    assert turns - before >= 2
    assert got == ctl.planner.inputs(clock.now())


async def test_bin_state_full_ts_is_computed_once_per_reading(rig: Rig) -> None:
    """full_ts in bin_state comes from the forecast made at the reading; asking again later
    gives the same time (or now, once it has passed) without forecasting again."""
    r = rig
    fill_history(r, {"B2": 0.5})
    now = r.clock.now()
    first = r.ctl.bin_state("B2", now)["full_ts"]
    assert isinstance(first, float)
    assert first == pytest.approx(r.ctl.bins["B2"].est.time_to(0.8, now), abs=60)
    key = r.ctl.bins["B2"].full_cache
    assert r.ctl.bin_state("B2", now + 600)["full_ts"] == first
    assert r.ctl.bins["B2"].full_cache is key
    assert r.ctl.bin_state("B2", first + 3600)["full_ts"] == first + 3600
    r.clock.advance(900)
    uplink(r, "B2", 0.52)
    r.ctl.bin_state("B2", r.clock.now())
    assert r.ctl.bins["B2"].full_cache is not key


async def test_restart_restores_the_newest_usable_plan(rig: Rig, tmp_path: Path) -> None:
    """A failed re-plan is stored for the record, but a restart brings back the last good plan."""
    r = rig
    fill_history(r, FULL)
    r.clock.advance(31 * 60)
    r.ctl.step(r.clock.now())
    active = await r.ctl.plan_pending()
    assert active is not None
    drain(r)
    good = next(e.plan for e in reversed(r.events) if isinstance(e, PlanEvent) and e.domain == "waste")
    failed = {**good, "status": "infeasible", "violations": ["vehicle T2: back at depot after its shift end"]}
    async with Storage(f"sqlite:///{tmp_path / 'edge.db'}") as st:
        for body in (good, failed):
            st.add(
                PlanRow(domain="waste", created_at=r.clock.now(), status=str(body["status"]), body=dict(body))
            )
        await st.flush()
        bus = EventBus()
        fresh = WasteController(
            WastePorts(TZ, r.clock, Alarms(bus, r.clock), None, bus), settings(), bins=r.bins
        )
        restore_waste(fresh, st, r.clock.now())
    assert fresh.active is not None
    assert fresh.active.route_ids == active.route_ids


async def test_bins_trucks_and_summary_go_north_as_telemetry(rig: Rig) -> None:
    """The controller publishes what changed into the state store (contract C-north): value keys are
    the BinState / TruckState / WasteSummary fields, lists as JSON strings; its own derived state
    coming back on the bus is not taken for a reading."""
    from controllers.waste import SUMMARY_ID
    from edge.payloads import BinState, TruckState, WasteSummary

    r = rig
    sub = r.bus.subscribe("north-test", Telemetry)
    fill_history(r, {"B1": 0.5})
    uplink(r, "B3", 0.99)  # overflow: an alarm list to carry
    truck_state(r, "T1", status="driving", load_l=800, load_kg=90)
    now = r.clock.now()
    await r.ctl.north.flush(now)
    got: dict[str, dict[str, object]] = {}
    while (ev := sub.get_nowait()) is not None:
        if isinstance(ev, Telemetry) and ("id" in ev.values or ev.device_id == SUMMARY_ID):
            got[ev.device_id] = {
                k: orjson.loads(v) if k in {"alarms"} and isinstance(v, str) else v
                for k, v in ev.values.items()
            }
    assert set(got) == {*(b.id for b in r.bins), *TRUCKS, SUMMARY_ID}  # everything once at the start
    assert BinState.model_validate(got["B1"]).fill == pytest.approx(0.5, abs=0.01)
    assert BinState.model_validate(got["B3"]).alarms == ["overflow"]
    assert TruckState.model_validate(got["T1"]).status == "driving"
    assert WasteSummary.model_validate(got[SUMMARY_ID]).overflows_today == 1
    # Only what changed goes out next time; our own state on the bus is not an uplink.
    reading = r.ctl.bins["B1"].reading
    r.ctl.handle(Telemetry("B1", now, got["B1"]))  # type: ignore[arg-type]
    assert r.ctl.bins["B1"].reading is reading
    r.clock.advance(60)
    uplink(r, "B2", 0.4)
    await r.ctl.north.flush(r.clock.now())
    ids = set()
    while (ev := sub.get_nowait()) is not None:
        if isinstance(ev, Telemetry) and "id" in ev.values:
            ids.add(ev.device_id)
    assert ids == {"B2"}
    r.bus.unsubscribe(sub)


async def test_the_controller_is_built_from_the_kernel_and_is_a_controller() -> None:
    """`WasteController(kernel, cfg, bins=...)` takes its clock, bus, alarms, dispatcher, solvers and
    time zone from the kernel and satisfies `edge.kernel.Controller` (name, run, request_replan, views)."""
    from types import SimpleNamespace
    from typing import cast

    from edge.kernel import Controller, Kernel

    clock = ManualClock(MONDAY_5)
    bus = EventBus()
    submitted: list[object] = []
    kernel = SimpleNamespace(
        settings=SimpleNamespace(site=SimpleNamespace(timezone="Europe/Berlin")),
        clock=clock,
        bus=bus,
        alarms=Alarms(bus, clock),
        dispatcher=SimpleNamespace(submit=submitted.append),
        solvers=Solvers(processes=False),
    )
    ctl = WasteController(cast(Kernel, kernel), settings(), bins=make_bins(2))
    assert ctl.planner.solvers is kernel.solvers
    assert isinstance(ctl, Controller)
    assert ctl.name == "waste"
    assert ctl.st.tz == TZ
    assert ctl.views() == {"plan": None, "flags": {"forced": [], "excluded": []}}
    ctl.request_replan()
    assert ctl.pending == "operator"
