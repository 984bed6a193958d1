"""The one path north: what the daemon publishes comes from the state store, on change.

Real parts: the event bus, the state store (its `run` folding events) and `North`; the MQTT link
is a recording publisher. "No timer" is shown by turns of the event loop: a change is published
within a few turns, while no clock time passes (the lamp telemetry, the only timer, is an hour).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

import orjson
import pytest
from sqlalchemy.exc import OperationalError

from controllers.waste import PLANNER_ID, SUMMARY_ID
from controllers.waste.views import telemetry_values
from devices.inventory import Inventory, Lamp
from edge.app.north import North
from edge.bus import EventBus
from edge.clock import SimClock
from edge.events import PlanEvent, Telemetry, Value
from edge.payloads import (
    BinState,
    FeederState,
    LampState,
    ParkingState,
    TruckState,
    WastePlanMessage,
    WasteSummary,
)
from edge.state import StateStore

BASE = "dos/v1/t"
TURNS = 50  # event-loop turns a change may take to go out (no clock time passes in them)
KINDS = {
    "L1": "lamp", "F1": "feeder", "P1": "car_park", "W01": "bin", "T1": "truck",
    SUMMARY_ID: "planner", PLANNER_ID: "planner",
}  # fmt: skip


@dataclass
class Recorder:
    """A publisher that keeps what it was given: (topic, payload, retained, qos)."""

    sent: list[tuple[str, bytes, bool, int]] = field(default_factory=list)
    busy: int = 0  # batches to refuse first, as an outbox that gave up on a busy database
    types: dict[str, str | None] = field(default_factory=dict)  # content type of single messages

    async def publish_reliable(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        content_type: str | None = "application/json",
    ) -> None:
        self.sent.append((topic, payload, retain, 1))
        self.types[topic] = content_type

    async def publish_reliable_many(self, messages: Sequence[tuple[str, bytes, bool]]) -> None:
        if self.busy:
            self.busy -= 1
            raise OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
        self.sent += [(topic, payload, retain, 1) for topic, payload, retain in messages]

    def publish_fast(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.sent.append((topic, payload, retain, 0))

    def publish_state(self, topic: str, payload: bytes) -> None:
        if self.busy:
            self.busy -= 1
            raise RuntimeError("MqttLink is closing")
        self.sent.append((topic, payload, True, 1))

    async def fast_room(self) -> None:
        return None  # nothing queued here: every message is recorded at once

    def on(self, topic: str) -> list[tuple[bytes, bool, int]]:
        return [(p, r, q) for t, p, r, q in self.sent if t == topic]


@dataclass
class Rig:
    bus: EventBus
    state: StateStore
    north: North
    pub: Recorder

    async def settle(self) -> None:
        """Let the store and North fold and publish what is queued: loop turns, no clock time."""
        for _ in range(TURNS):
            await asyncio.sleep(0)

    def publish(self, device: str, values: Mapping[str, Value], *, derived: bool = True) -> None:
        self.bus.publish(Telemetry(device, 1000.0, values, derived=derived))


def _lamp() -> Lamp:
    return Lamp(
        id="L1", lat=51.5, lon=7.4, segment="s1", order=0, lighting_class="P4", cabinet="C1", feeder="F1",
        flags=frozenset(), controller="ctl", host="127.0.0.1", port=1, unit=1, index=0, p_max_w=40.0, p_min_w=4.0,
    )  # fmt: skip


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    bus = EventBus()
    state = StateStore(bus, KINDS)
    north = North(
        state=state, bus=bus, clock=SimClock(1000.0), base=BASE, inventory=Inventory(lamps={"L1": _lamp()}),
        telemetry_interval_s=3600.0,
    )  # fmt: skip
    pub = Recorder()
    tasks = [
        asyncio.create_task(state.run(), name="state"),
        asyncio.create_task(north.run(pub), name="north"),
    ]
    r = Rig(bus, state, north, pub)
    await r.settle()
    pub.sent.clear()  # the first state of every device, published at start
    try:
        yield r
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


def _json(model: type[FeederState] | type[ParkingState], **values: object) -> bytes:
    return orjson.dumps(model.model_validate(values).model_dump(mode="json"))


async def test_feeder_and_car_park_state_go_out_on_change_without_a_timer(rig: Rig) -> None:
    """A controller's new view of a feeder or car park is published within a few loop turns
    (retained, QoS 0); a raw counter reading on the car park is not its derived view."""
    feeder: dict[str, Value] = {"limit_a": 40.0, "lighting_a": 3.2, "setpoints_a": 16.0, "measured_a": 15.5,
                                "chargers": 2, "tripped": False}  # fmt: skip
    rig.publish("F1", feeder)
    rig.publish("P1", {"car_park": "P1", "name": "Near", "capacity": 80, "fresh": True, "free": 12,
                       "open": True, "ts": 990.0})  # fmt: skip
    await rig.settle()
    assert rig.pub.on(f"{BASE}/feeders/F1/state") == [
        (_json(FeederState, feeder="F1", ts=1000.0, **feeder), True, 0)
    ]
    parking = _json(
        ParkingState, car_park="P1", name="Near", capacity=80, free=12, open=True, fresh=True, ts=990.0
    )
    assert rig.pub.on(f"{BASE}/parking/P1/state") == [(parking, True, 0)]
    rig.pub.sent.clear()
    rig.publish("P1", {"free": 11, "open": True}, derived=False)  # the counter itself
    rig.publish("F1", feeder)  # unchanged: the store announces nothing
    await rig.settle()
    assert rig.pub.on(f"{BASE}/parking/P1/state") == []
    assert rig.pub.on(f"{BASE}/feeders/F1/state") == []
    rig.publish("F1", {**feeder, "setpoints_a": 20.0})
    await rig.settle()
    (payload, retained, qos), *_ = rig.pub.on(f"{BASE}/feeders/F1/state")
    assert (orjson.loads(payload)["setpoints_a"], retained, qos) == (20.0, True, 0)


async def test_a_lamp_power_change_republishes_its_retained_state(rig: Rig) -> None:
    """power_w is state: a move beyond the dead band republishes lights/L1/state (QoS 1, retained);
    measurement noise within it does not."""
    topic = f"{BASE}/lights/L1/state"
    rig.publish("L1", {"level_actual": 50, "power_w": 20.0}, derived=False)
    await rig.settle()
    [(first, retained, qos)] = rig.pub.on(topic)
    assert (LampState.model_validate_json(first).power_w, retained, qos) == (20.0, True, 1)
    rig.pub.sent.clear()
    rig.publish("L1", {"level_actual": 50, "power_w": 20.3}, derived=False)  # noise
    await rig.settle()
    assert rig.pub.on(topic) == []
    rig.publish("L1", {"level_actual": 50, "power_w": 26.0}, derived=False)  # a driver failing
    await rig.settle()
    [(again, _, _)] = rig.pub.on(topic)
    state = LampState.model_validate_json(again)
    assert (state.power_w, state.level_actual, state.segment) == (26.0, 50.0, "s1")


async def test_a_failed_publish_keeps_the_state_for_the_next_flush(rig: Rig) -> None:
    """The link refusing a batch costs neither the publisher nor the lamp's state: it is counted,
    and the state goes out with the next change (North is still running)."""
    topic = f"{BASE}/lights/L1/state"
    rig.pub.busy = 1
    rig.publish("L1", {"level_actual": 50, "power_w": 20.0}, derived=False)
    await rig.settle()
    assert rig.pub.on(topic) == []
    assert rig.north.failed_events == 1
    rig.publish("F1", {"limit_a": 40.0}, derived=True)  # any later event flushes again
    await rig.settle()
    [(payload, _, _)] = rig.pub.on(topic)
    assert LampState.model_validate_json(payload).power_w == 20.0


async def test_bins_trucks_plan_and_summary_come_from_the_state_store(rig: Rig) -> None:
    """What the waste controller puts into the store (lists as JSON strings) goes out as the
    payload it was made from; a truck's own raw state between views publishes nothing."""
    bin_ = {"id": "W01", "lat": 51.5, "lon": 7.4, "kind": "residential", "zone": "z", "fill": 0.82,
            "rate_per_h": 0.01, "full_ts": None, "battery": 88.0, "temperature": 12.5,
            "alarms": ["overflow", "lid_open"], "status": "ok", "last_seen_ts": 990.0, "last_emptied_ts": None,
            "plan": "mandatory", "forced": False, "excluded": True, "ts": 1000.0}  # fmt: skip
    truck = {"id": "T1", "online": True, "status": "collecting", "lat": 51.5, "lon": 7.4, "load_l": 300.0,
             "load_kg": 40.0, "load_pct": 12.5, "route_id": "R1", "stop_index": 2, "stops_total": 5,
             "bins_done": 1, "bins_total": 3, "odometer_km": 12.0, "last_seen_ts": 995.0, "ts": 1000.0}  # fmt: skip
    plan = {"plan_id": "p1", "made_ts": 900.0, "reason": "scheduled", "status": "optimal", "solver": "cp-sat",
            "distance_km": 4.2, "mandatory": 1, "optional": 0, "dropped": ["W02"],
            "routes": [{"truck": "T1", "route_id": "R1", "distance_km": 4.2,
                        "stops": [{"seq": 0, "kind": "bin", "id": "W01", "eta_ts": 950.0, "done": True}]}],
            "violations": [], "ts": 1000.0}  # fmt: skip
    summary = {"bins": 1, "reporting": 1, "above_threshold": 1, "alarms": 2, "trucks": 1, "trucks_on_route": 1,
               "emptied_today": 0, "overflows_today": 1, "km_today": 12.0, "ts": 1000.0}  # fmt: skip
    for device, payload in (("W01", bin_), ("T1", truck), (PLANNER_ID, plan), (SUMMARY_ID, summary)):
        rig.publish(device, telemetry_values(payload))
    await rig.settle()
    for topic, model, payload in (
        ("waste/bins/W01/state", BinState, bin_), ("waste/trucks/T1/state", TruckState, truck),
        ("waste/plan", WastePlanMessage, plan), ("waste/summary", WasteSummary, summary),
    ):  # fmt: skip
        expected = orjson.dumps(model.model_validate(payload).model_dump(mode="json"))
        assert rig.pub.on(f"{BASE}/{topic}") == [(expected, True, 1)], topic
    assert not [t for t, *_ in rig.pub.sent if t.startswith(f"{BASE}/controllers/")], (
        "derived is not device state"
    )
    rig.pub.sent.clear()
    rig.publish("T1", {"status": "driving", "speed_kmh": 30.0, "route_id": "R1"}, derived=False)
    await rig.settle()
    assert rig.pub.on(f"{BASE}/waste/trucks/T1/state") == []


async def test_plans_go_out_as_the_controllers_made_them(rig: Rig) -> None:
    """Guidance and warnings on plans/{domain} and on their own topics; the waste planner's
    stored record is not published (waste/plan comes from the store)."""
    guidance = {"signs": {"S1": {"car_park": "P1", "free": 12, "minutes": 3.0}}}
    rig.bus.publish(PlanEvent("guidance", 1000.0, guidance))
    rig.bus.publish(PlanEvent("warnings", 1000.0, {"warnings": []}))
    rig.bus.publish(PlanEvent("waste", 1000.0, {"plan_id": "p1", "day": "2026-12-03"}))
    await rig.settle()
    assert rig.pub.on(f"{BASE}/guidance") == [(orjson.dumps(guidance), True, 0)]
    assert rig.pub.on(f"{BASE}/warnings/active") == [(b"[]", True, 0)]
    [(plan, retained, qos)] = rig.pub.on(f"{BASE}/plans/guidance")
    assert (orjson.loads(plan)["plan"], retained, qos) == (guidance, True, 1)
    assert rig.pub.on(f"{BASE}/plans/waste") == []
    assert rig.pub.on(f"{BASE}/waste/plan") == []


async def test_a_public_warning_goes_out_as_cap_xml_with_its_content_type(rig: Rig) -> None:
    """A warning on the displays' list is also a CAP 1.2 Alert, retained, marked as CAP XML for
    MQTT 5 clients (every other topic is JSON)."""
    now = 1000.0
    warning = {"id": "storm-1", "severity": "severe", "lines": ["STURM"], "displays": [], "start": now,
               "end": now + 600, "source": "operator:anna", "public": True, "area": None}  # fmt: skip
    rig.bus.publish(PlanEvent("warnings", now, {"warnings": [warning]}))
    await rig.settle()
    topic = f"{BASE}/alerts/cap/storm-1"
    ((payload, retained, qos),) = rig.pub.on(topic)
    assert retained
    assert qos == 1
    assert payload.startswith(b"<?xml")
    assert b"<msgType>Alert</msgType>" in payload
    assert rig.pub.types[topic] == "application/cap+xml"
