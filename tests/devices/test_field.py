"""Field inputs as drivers (devices/field.py): motion and car-park counters become Telemetry.

The checks are the ones the northbound API made before these inputs had drivers: the id
grammar, a known device, the payload model, no `ts` from the future, no retained motion,
no retained car-park count without its `ts`; each refusal is counted by reason.
"""

from __future__ import annotations

import secrets

import orjson
from waiting import Recorder

from devices.field import car_park_counters, motion_sensors
from edge.bus import EventBus
from edge.clock import ManualClock
from edge.events import Telemetry
from edge.mqtt import BrokerAddress
from edge.state import StateStore

NOW = 1_795_000_000.0
BASE = "dos/test-site"
URL = "mqtt://127.0.0.1:1"  # never connected in the unit tests


def test_motion_becomes_telemetry_of_the_lamp() -> None:
    rec = Recorder()
    drv = motion_sensors(rec, ManualClock(NOW), ["B1", "B2"], mqtt_url=URL, base=BASE)
    ev = drv.on_message(f"{BASE}/field/motion/B2", b'{"detected": true}', False)
    assert ev == Telemetry("B2", NOW, {"motion": True}, derived=True)
    assert drv.on_message(f"{BASE}/field/motion/B1", b"", False) == Telemetry(
        "B1", NOW, {"motion": True}, derived=True
    )
    assert drv.on_message(f"{BASE}/field/motion/B1", orjson.dumps({"ts": NOW - 5}), False) == Telemetry(
        "B1", NOW - 5, {"motion": True}, derived=True
    )
    assert drv.on_message(f"{BASE}/field/motion/B1", b'{"detected": false}', False) is None
    assert rec.telemetry("B2") == [ev]
    assert len(rec.events) == 3
    assert drv.refused == {}


def test_motion_does_not_make_a_silent_lamp_online() -> None:
    """A motion sensor stands by the lamp, it is not the lamp: its reading reaches the store as
    derived, so a lamp whose controller has not answered stays not-online (as through the API)."""
    store = StateStore(EventBus(), {"B1": "lamp"})
    drv = motion_sensors(store.apply, ManualClock(NOW), ["B1"], mqtt_url=URL, base=BASE)
    drv.on_message(f"{BASE}/field/motion/B1", b"{}", False)
    dev = store.get("B1")
    assert dev is not None
    assert dev.values["motion"] is True
    assert dev.online is None
    assert dev.updated_at == 0.0  # never heard from itself; the motion is kept as derived_at
    assert dev.derived_at == NOW


def test_bad_motion_is_refused_and_counted_by_reason() -> None:
    rec = Recorder()
    drv = motion_sensors(rec, ManualClock(NOW), ["B1"], mqtt_url=URL, base=BASE, max_clock_skew_s=300)
    assert drv.on_message(f"{BASE}/field/motion/B9", b"{}", False) is None
    assert drv.on_message(f"{BASE}/field/motion/bad id!", b"{}", False) is None
    assert drv.on_message(f"{BASE}/field/motion/B1", orjson.dumps({"ts": NOW + 3600}), False) is None
    assert drv.on_message(f"{BASE}/field/motion/B1", b'{"detected": "yes please"}', False) is None
    assert drv.on_message(f"{BASE}/field/motion/B1", b"{nope", False) is None
    assert drv.on_message(f"{BASE}/field/motion/B1", b"{}", True) is None  # a replay, not someone now
    assert drv.refused == {
        "unknown_device": 1,
        "invalid_id": 1,
        "future_ts": 1,
        "invalid_payload": 1,
        "malformed_json": 1,
        "retained_request": 1,
    }
    assert rec.events == []


def test_car_park_counts_become_telemetry() -> None:
    rec = Recorder()
    drv = car_park_counters(rec, ManualClock(NOW), ["p1"], mqtt_url=URL, base=BASE)
    assert drv.on_message(f"{BASE}/field/carparks/p1", b'{"free": 40}', False) == Telemetry(
        "p1", NOW, {"free": 40, "open": True}
    )
    retained = orjson.dumps({"free": 3, "open": False, "ts": NOW - 60})
    assert drv.on_message(f"{BASE}/field/carparks/p1", retained, True) == Telemetry(
        "p1", NOW - 60, {"free": 3, "open": False}
    )
    assert drv.refused == {}


def test_bad_car_park_counts_are_refused_and_counted() -> None:
    rec = Recorder()
    drv = car_park_counters(rec, ManualClock(NOW), ["p1"], mqtt_url=URL, base=BASE)
    assert drv.on_message(f"{BASE}/field/carparks/p1", b'{"free": 40}', True) is None  # retained, no ts
    assert drv.on_message(f"{BASE}/field/carparks/p9", b'{"free": 40}', False) is None
    assert drv.on_message(f"{BASE}/field/carparks/p1", b'{"free": -1}', False) is None
    assert (
        drv.on_message(f"{BASE}/field/carparks/p1", orjson.dumps({"free": 1, "ts": NOW + 3600}), False)
        is None
    )
    assert drv.on_message(f"{BASE}/field/carparks/p1", b"[" * 100 + b"]" * 100, False) is None
    assert drv.refused == {
        "retained_request": 1,
        "unknown_car_park": 1,
        "invalid_payload": 1,
        "future_ts": 1,
        "too_deep": 1,
    }
    assert rec.events == []


async def test_field_drivers_subscribe_the_site_broker(mqtt_url: str) -> None:
    """Over a real broker: each driver takes its own topics and publishes Telemetry."""
    base = f"dos/field-{secrets.token_hex(4)}"  # a broker shared with other tests
    rec = Recorder()
    clock = ManualClock(NOW)
    motion = motion_sensors(rec, clock, ["B1"], mqtt_url=mqtt_url, base=base)
    counters = car_park_counters(rec, clock, ["p1"], mqtt_url=mqtt_url, base=base)
    async with (
        motion,
        counters,
        BrokerAddress.parse(mqtt_url).client("t-field", timeout_s=10, pending=10) as pub,
    ):
        await motion.wait_connected(10)
        await counters.wait_connected(10)
        await pub.publish(f"{base}/field/motion/B1", b'{"detected": true}', qos=1)
        await pub.publish(f"{base}/field/carparks/p1", b'{"free": 12}', qos=1)
        await rec.wait(lambda: bool(rec.telemetry("B1")) and bool(rec.telemetry("p1")), what="both readings")
    assert rec.telemetry("B1") == [Telemetry("B1", NOW, {"motion": True}, derived=True)]
    assert rec.telemetry("p1") == [Telemetry("p1", NOW, {"free": 12, "open": True})]
