"""Inbound messages (issue 10): one decode, one id grammar, per-message boundaries in every receive loop.

Unit tests of `edge.decode`, then the receive loops on real parts: the board driver and the
fleet driver against a real broker, and the daemon (harness site) for API requests: ids,
response topics, retained and oversized requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
from conftest_displays import DisplayIds
from conftest_modbus import Recorder
from harness import NIGHT, WAIT_S, _host_port, site, wait_for, write_site
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict
from structlog.testing import capture_logs

from devices.displays import DisplayDriver
from devices.inventory import load_inventory
from devices.profiles.displays import (
    BoardStatus,
    default_led_board_profile,
    parse_status_payload,
    status_payload,
)
from devices.waste import FleetDriver
from edge.app.api import ACK_TOPIC_CHARS
from edge.app.daemon import running
from edge.app.demo import sim_controllers
from edge.clock import ManualClock, SimClock
from edge.decode import Refusal, Refusals, check_id, check_ts, decode, decode_json, depth_exceeds, is_id
from edge.events import Event, Telemetry
from edge.net import free_port
from edge.settings import load_settings
from simulators.displays import DisplaySimulator
from simulators.lighting import LightingSimulator

DEEP = b"[" * 2000 + b"]" * 2000  # killed the daemon through the stdlib json's RecursionError


class _Point(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: float
    tags: list[str] = []


# -- edge.decode ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (DEEP, "too_deep"),
        (b'{"x": 1, "tags": ' + b"[" * 40 + b"]" * 40 + b"}", "too_deep"),
        (b"x" * 70_000, "payload_too_large"),
        (b'{"x": "\xff\xfe"}', "invalid_utf8"),
        (b"{not json", "malformed_json"),
        (b"", "malformed_json"),
        (b'{"x": NaN}', "malformed_json"),
        (b'{"x": 1e400}', "malformed_json"),
        (b'{"x": "one"}', "invalid_payload"),
        (b'{"x": 1, "colour": "red"}', "invalid_payload"),
        (b"[1, 2]", "invalid_payload"),
    ],
)
def test_decode_refuses_with_a_reason(payload: bytes, reason: str) -> None:
    """Every kind of bad payload comes back as a Refusal with its reason code, never as an exception."""
    got = decode(payload, _Point)
    assert isinstance(got, Refusal), got
    assert got.reason == reason, got
    assert got.detail


def test_decode_returns_the_model_and_brackets_in_strings_do_not_count() -> None:
    """A valid payload gives the model; brackets inside strings (escaped quotes too) are not nesting."""
    tags = ["[" * 50, '\\"[[[[' + "{" * 40, "}" * 60]
    got = decode(orjson.dumps({"x": 1.5, "tags": tags}), _Point)
    assert got == _Point(x=1.5, tags=tags)
    assert not depth_exceeds(b"[" * 32 + b"]" * 32, 32)
    assert depth_exceeds(b"[" * 33 + b"]" * 33, 32)
    assert depth_exceeds(b'[{"a": [' * 11 + b"]}]" * 11, 32)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=2000), st.recursive(st.none() | st.floats() | st.text(), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3)).map(orjson.dumps)))  # fmt: skip
def test_decode_never_raises(payload: bytes) -> None:
    """Whatever the bytes, the answer is a model or a Refusal."""
    got = decode(payload, _Point)
    assert isinstance(got, _Point | Refusal)
    assert isinstance(decode_json(payload), object)


def _depth(v: object) -> int:
    if isinstance(v, list):
        return 1 + max((_depth(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((_depth(x) for x in v.values()), default=0)
    return 0


_JSON = st.recursive(
    st.none() | st.integers(min_value=-(2**53), max_value=2**53) | st.text(alphabet='[]{}"\\ab,:'),
    lambda c: (
        st.lists(c, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\a', max_size=4), c, max_size=3)
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(_JSON, st.integers(min_value=0, max_value=8))
def test_depth_scan_matches_the_real_nesting(value: object, limit: int) -> None:
    """The byte scan's verdict equals the nesting of the parsed value, brackets and escapes in strings included."""
    assert depth_exceeds(orjson.dumps(value), limit) == (_depth(value) > limit)


def test_id_grammar() -> None:
    """One grammar for every id from a topic or payload: the inventory's, 1-64 characters."""
    for good in ("L01003", "feeder-3", "cp-003", "70b3d57ed0020001", "bay-70b3d57ed0020001", "truck-1",
                 "led-hohe", "a", "x" * 64, "hohe-strasse:M3:nd", "v1.2_x"):  # fmt: skip
        assert is_id(good), good
    for bad in ("", "x" * 65, "-lead", "a/b", "a+b", "a#", "a b", "ä", "a\x00", "x" * 3004):
        refusal = check_id(bad)
        assert refusal is not None, bad
        assert refusal.reason == "invalid_id"
        assert len(refusal.detail) < 200  # the raw text is never repeated in full


def test_check_ts_refuses_only_the_future() -> None:
    """A timestamp beyond the skew ahead is refused; the past and a small skew are the caller's business."""
    now = 1_800_000_000.0
    assert check_ts(now + 299, now, 300) is None
    assert check_ts(now - 10 * 365 * 86400, now, 300) is None
    refusal = check_ts(now + 10 * 365 * 86400, now, 300)
    assert refusal is not None
    assert refusal.reason == "future_ts"


def test_refusals_log_transitions_per_source_not_every_message() -> None:
    """A source that keeps failing is logged once (and again when its reason changes or it recovers)."""
    r = Refusals("test")
    with capture_logs() as logs:
        for _ in range(50):
            r.refuse("board-1", Refusal("too_deep", "x"))
        r.refuse("board-2", Refusal("too_deep", "x"))
        r.refuse("board-1", Refusal("malformed_json", "y"))
        r.accepted("board-1")
        r.accepted("board-1")
    events = [(e["event"], e.get("source"), e.get("reason")) for e in logs]
    assert events == [
        ("inbound_refused", "board-1", "too_deep"),
        ("inbound_refused", "board-2", "too_deep"),
        ("inbound_refused", "board-1", "malformed_json"),
        ("inbound_recovered", "board-1", None),
    ]
    assert r.by_reason == {"too_deep": 51, "malformed_json": 1}


def test_board_status_parser_refuses_deep_nesting_without_recursion() -> None:
    """The LED board status parser used the stdlib json: 2,000 levels raised RecursionError."""
    got = parse_status_payload(default_led_board_profile(), DEEP)
    assert isinstance(got, Refusal)
    assert got.reason == "too_deep"


# -- the board driver on a real broker --------------------------------------------------------


@contextlib.asynccontextmanager
async def publisher(mqtt_url: str) -> AsyncIterator[aiomqtt.Client]:
    host, port = _host_port(mqtt_url)
    async with aiomqtt.Client(host, port, identifier=f"t-{uuid.uuid4().hex[:8]}", timeout=10) as client:
        yield client


async def test_deep_retained_board_status_leaves_the_driver_running(
    display_sim: DisplaySimulator,
    mqtt_url: str,
    manual_clock: ManualClock,
    recorder: Recorder,
    display_ids: DisplayIds,
) -> None:
    """A 2,000-deep array on displays/{id}/status, retained (so there at start) and live, is counted and
    logged once; the driver's loop goes on and the board still shows and confirms content."""
    board = display_ids.boards[0]
    topic = f"displays/{board}/status"
    async with publisher(mqtt_url) as pub:
        display_sim.inject(board, "comm_loss")  # the board is silent while the poison sits retained
        await pub.publish(topic, DEEP, qos=1, retain=True)
        try:
            driver = DisplayDriver(recorder, manual_clock, boards=[board], mqtt_url=mqtt_url,
                                   status_interval_s=0.1, timeout_s=1.0, backoff_base_s=0.02, backoff_max_s=0.1)  # fmt: skip
            with capture_logs() as logs:
                async with driver:
                    await recorder.wait(
                        lambda: driver.refusals.by_reason["too_deep"] >= 1, "the retained poison", 5.0
                    )
                    for _ in range(3):
                        await pub.publish(topic, DEEP, qos=1)
                    await pub.publish(topic, b"\xff\xfe{", qos=1)
                    ahead = BoardStatus(online=True, brightness=50, ts=manual_clock.now() + 10 * 365 * 86400)
                    await pub.publish(topic, status_payload(default_led_board_profile(), ahead), qos=1)
                    await recorder.wait(
                        lambda: driver.refusals.by_reason["future_ts"] >= 1, "all the poison", 5.0
                    )
                    assert driver.refusals.by_reason["too_deep"] == 4
                    assert driver.refusals.by_reason["invalid_utf8"] == 1
                    assert recorder.value(board, "brightness") is None  # the future status was not taken
                    display_sim.clear(board)
                    await recorder.wait(lambda: bool(driver.online(board)), "the board online", 5.0)
                    body = {"message_id": 7, "lines": ["P1 frei 12"], "arrow": "left"}
                    assert await driver.write(board, "content", orjson.dumps(body).decode(), 2.0) == 7
                    assert display_sim.shown(board) == "P1 frei 12"
            refused = [e for e in logs if e["event"] == "inbound_refused"]
            # transitions, not a line per message
            assert [e["reason"] for e in refused] == ["too_deep", "invalid_utf8", "future_ts"]
        finally:
            await pub.publish(topic, b"", qos=1, retain=True)


# -- the fleet driver on a real broker ---------------------------------------------------------


async def test_poison_on_truck_topics_leaves_the_fleet_driver_running(mqtt_url: str) -> None:
    """Deep, huge, non-UTF-8 and future-stamped truck messages (and wild truck ids) are counted by
    reason; the loop goes on and the next good state is taken."""
    now = 1_800_000_000.0
    truck = f"T{uuid.uuid4().hex[:6]}"
    out: list[Event] = []
    good = {"ts": now, "lat": 51.5, "lon": 7.45, "status": "idle"}
    async with (
        FleetDriver(out.append, ManualClock(now), [truck], mqtt_url=mqtt_url, timeout_s=2.0) as fleet,
        publisher(mqtt_url) as pub,
    ):
        await fleet.wait_connected(WAIT_S)
        await pub.publish(f"fleet/{truck}/state", DEEP, qos=1, retain=True)
        await pub.publish(f"fleet/{truck}/event", DEEP, qos=1)
        await pub.publish(f"fleet/{truck}/state", b"\xff" * 10, qos=1)
        await pub.publish(f"fleet/{truck}/state", b"[" * 300_000, qos=1)
        await pub.publish(f"fleet/{truck}/state", orjson.dumps({**good, "ts": now + 10 * 365 * 86400}), qos=1)
        await pub.publish(f"fleet/{'x' * 3004}/state", orjson.dumps(good), qos=1)
        await pub.publish(f"fleet/{truck}/state", orjson.dumps(good), qos=1)
        async with asyncio.timeout(WAIT_S):
            while not any(isinstance(e, Telemetry) for e in out):  # noqa: ASYNC110 - the driver has no event for this
                await asyncio.sleep(0.01)
        await pub.publish(f"fleet/{truck}/state", b"", qos=1, retain=True)
    # On a shared broker other runs may have left retained states of wild truck ids: at least ours.
    assert fleet.refused["invalid_id"] >= 1
    assert {k: v for k, v in fleet.refused.items() if k != "invalid_id"} == {
        "too_deep": 2,
        "invalid_utf8": 1,
        "payload_too_large": 1,
        "future_ts": 1,
    }
    assert [e.device_id for e in out if isinstance(e, Telemetry)] == [truck]


# -- the daemon: API requests -------------------------------------------------------------------


async def _audited_ids(s: Any) -> list[str]:
    await s.flush_storage()
    rows = await asyncio.to_thread(s.daemon.storage.audit)
    return [r.device_id for r in rows]


async def test_long_and_unknown_ids_are_nacked_and_never_stored(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    """`cmd/lights/` with an 80-character id is nacked `invalid_id`, an unknown lamp `unknown_device`;
    neither id reaches the audit table (a VARCHAR(64) on PostgreSQL: the long one jammed the writer)."""
    long_id = "L" * 80
    async with site(tmp_path, mqtt_url, database_url) as s:
        ack = await s.request(f"cmd/lights/{long_id}", {"action": "set_level", "level": 50})
        assert ack["ok"] is False, ack
        assert ack["reason"].startswith("invalid_id"), ack
        assert long_id not in ack["reason"]
        ack = await s.request("cmd/lights/NOPE", {"action": "set_level", "level": 50})
        assert ack["ok"] is False, ack
        assert ack["reason"].startswith("unknown_device"), ack
        ack = await s.request("cmd/lights/A1", {"action": "set_level", "level": 50})
        assert ack["ok"] is True, ack
        ids = await _audited_ids(s)
        assert "A1" in ids
        assert not [i for i in ids if i in (long_id, "NOPE") or len(i) > 64]
        assert s.daemon.api.refused["invalid_id"] == 1


async def _request_raw(
    s: Any, topic: str, payload: bytes, *, reply: str | None, retain: bool = False, timeout_s: float = WAIT_S
) -> tuple[str, dict[str, Any]]:
    """Publish a request with an arbitrary response topic; return (topic answered on, ack) from the
    acks topic or `{base}/replies/#` (whichever carries the answer to this request)."""
    corr = uuid.uuid4().hex
    await s.client.subscribe(f"{s.base}/acks", qos=1)
    await s.client.subscribe(f"{s.base}/replies/#", qos=1)
    props = None
    body = payload
    if s.v5:
        props = Properties(PacketTypes.PUBLISH)
        if reply is not None:
            props.ResponseTopic = reply
        props.CorrelationData = corr.encode()
    elif reply is not None:
        body = orjson.dumps({**orjson.loads(payload), "response_topic": reply, "correlation_id": corr})
    await s.client.publish(f"{s.base}/{topic}", body, qos=1, retain=retain, properties=props)
    async with asyncio.timeout(timeout_s):
        async for msg in s.client.messages:
            if not isinstance(msg.payload, bytes) or not msg.payload:
                continue
            data = orjson.loads(msg.payload)
            if data.get("request_topic") == f"{s.base}/{topic}":
                return msg.topic.value, dict(data)
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    "reply",
    [
        "fleet/truck-1/route",
        "dos/v1/{site}/alarms/active/x/y",
        "dos/v1/{site}/replies/+",
        "{base}/replies/a/#",
    ],
)
async def test_answers_go_only_under_the_reply_prefix(
    tmp_path: Path, mqtt_url: str, database_url: str, reply: str
) -> None:
    """A response topic outside `replies/` (a device's topic, the daemon's own) or with a wildcard is
    refused on `acks` with `response_topic_refused`, and the request is not executed."""
    async with site(tmp_path, mqtt_url, database_url) as s:
        before = s.sim.lamp("A3")["level_cmd"]
        reply = reply.format(site=s.settings.site.id, base=s.base)
        body = orjson.dumps({"action": "set_level", "level": 37})
        topic, ack = await _request_raw(s, "cmd/lights/A3", body, reply=reply)
        assert topic == f"{s.base}/acks"
        assert ack["ok"] is False, ack
        assert ack["reason"].startswith("response_topic_refused"), ack
        good = await s.request("cmd/lights/A2", {"action": "set_level", "level": 10})  # under replies/
        assert good["ok"] is True
        assert s.sim.lamp("A3")["level_cmd"] == before
        assert s.daemon.api.refused.get("internal_error", 0) == 0


@pytest.mark.parametrize("size", [1_000_000, 10_000_000])
async def test_oversized_requests_get_an_answer(
    tmp_path: Path, mqtt_url: str, database_url: str, size: int
) -> None:
    """1 MB and 10 MB requests are nacked `payload_too_large` (they went unanswered: the link dropped
    them). MQTT 5: on the response topic; 3.1.1 (embedded broker): on `acks`, since the response topic
    sits inside a JSON body too large to be parsed."""
    async with site(tmp_path, mqtt_url, database_url) as s:
        reply = f"{s.base}/replies/big-{uuid.uuid4().hex[:6]}"
        body = b'{"action": "set_level", "level": 50, "reason": "' + b"x" * size + b'"}'
        topic, ack = await _request_raw(s, "cmd/lights/A1", body, reply=reply, timeout_s=30)
        assert topic == (reply if s.v5 else f"{s.base}/acks")
        assert ack["ok"] is False, ack
        assert ack["reason"].startswith("payload_too_large"), ack


async def test_an_unreadable_request_on_a_long_topic_is_nacked_naming_its_cut_topic(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    """The fuzz harness's 'unanswered' 1.1 MB request: a 3.1.1-style JSON body (response topic
    `replies/a/+/b`, no MQTT 5 properties) on `utility/{3,000 x}/limits`. The daemon cannot read the
    body, so it nacks `payload_too_large` on `acks`, naming the request by the first
    ACK_TOPIC_CHARS characters of its topic (a client matches it by that, as it has no correlation)."""
    async with site(tmp_path, mqtt_url, database_url) as s:
        topic = f"{s.base}/utility/{'x' * 3000}/limits"
        body = orjson.dumps(
            {"kind": "price", "reason": "r" * 1_100_000, "response_topic": f"{s.base}/replies/a/+/b",
             "correlation_id": "big-1"}
        )  # fmt: skip
        await s.client.subscribe(f"{s.base}/acks", qos=1)
        await s.client.publish(topic, body, qos=1)
        async with asyncio.timeout(30):
            async for msg in s.client.messages:
                data = orjson.loads(msg.payload) if isinstance(msg.payload, bytes) and msg.payload else {}
                if data.get("request_topic") == topic[:ACK_TOPIC_CHARS]:
                    break
        assert data["ok"] is False, data
        assert data["reason"].startswith("payload_too_large"), data
        assert s.daemon.api.refused.get("internal_error", 0) == 0


async def test_a_retained_request_is_refused_and_never_run(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    """A retained set_level is nacked `retained_request` when it arrives, and again (not executed)
    when a fresh daemon subscribes and the broker replays it; the lamp stays at its planned level."""
    site_id = "t" + uuid.uuid4().hex[:10]
    cfg = write_site(tmp_path, site_id=site_id, mqtt_url=mqtt_url, db_url=database_url)
    settings = load_settings(cfg)
    inv = load_inventory(settings.inventory_path())
    base = f"{settings.mqtt.topic_prefix}/{site_id}"
    request = f"{base}/cmd/lights/A3"
    clock = SimClock(start=NIGHT, speed=1.0)
    async with (
        publisher(mqtt_url) as pub,
        LightingSimulator(sim_controllers(inv, watchdog_s=300), clock, seed=3) as sim,
    ):
        await pub.subscribe(f"{base}/acks", qos=1)
        try:
            # Retained before the daemon exists: it is there at start.
            await pub.publish(request, orjson.dumps({"action": "set_level", "level": 37}), qos=1, retain=True)
            for restart in range(2):
                async with running(settings, inv, clock) as d:
                    await d.link.wait_connected(WAIT_S)
                    async with asyncio.timeout(WAIT_S):
                        async for msg in pub.messages:
                            data = orjson.loads(msg.payload)
                            if data.get("request_topic") == request:
                                break
                    assert data["ok"] is False, (restart, data)
                    assert data["reason"].startswith("retained_request"), (restart, data)
                    await wait_for(lambda: d.lighting.planned_level("A3") is not None, "a plan")
                    await wait_for(
                        lambda: sim.lamp("A3")["level_cmd"] == d.lighting.planned_level("A3"), "the plan"
                    )
                    assert d.api.refused["retained_request"] == 1
                    await d.storage.flush()
                    rows = await asyncio.to_thread(d.storage.audit, None, "A3")
                    assert not [r for r in rows if r.source.startswith("operator")]
        finally:
            await pub.publish(request, b"", qos=1, retain=True)
        assert sim.lamp("A3")["level_cmd"] != 37


# -- the daemon: every device topic at once ------------------------------------------------


async def test_poison_on_device_topics_leaves_the_daemon_running(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    """The 2,000-deep array retained on a board's status (there at start), on an uplink topic and on a
    car-park counter, and a car-park count stamped ten years ahead: each is refused and counted; the
    daemon keeps running and guides to the car park whose count is real."""
    from devices.profiles.lorawan import default_profiles
    from simulators.displays import SimBoard, SimSign
    from simulators.lorawan import chirpstack_event
    from tests.app.test_displays import write_site as write_display_site

    token = uuid.uuid4().hex[:8]
    board, sign = f"led-{token}", f"vms-{token}"
    sign_port = free_port()
    cfg = write_display_site(tmp_path, "dp" + token, mqtt_url, database_url, board, sign, sign_port)
    settings = load_settings(cfg)
    inv = load_inventory(settings.inventory_path())
    clock = SimClock(NIGHT)
    status_topic = f"displays/{board}/status"
    async with publisher(mqtt_url) as pub:
        try:
            async with (
                LightingSimulator(sim_controllers(inv), clock),
                DisplaySimulator(
                    clock, boards=[SimBoard(board)], signs=[SimSign(sign, port=sign_port)], mqtt_url=mqtt_url
                ) as dsim,
            ):
                await pub.publish(status_topic, DEEP, qos=1, retain=True)  # the board's last word: poison
                async with running(settings, inv, clock) as d:
                    await d.link.wait_connected(WAIT_S)
                    base = d.api.base
                    assert d.display_driver is not None
                    assert d.ingest is not None
                    assert d.car_parks is not None
                    dd, ingest, counters = d.display_driver, d.ingest, d.car_parks
                    await wait_for(
                        lambda: dd.refusals.by_reason["too_deep"] >= 1, "the retained status refused"
                    )
                    await pub.publish(f"{base}/field/carparks/p1", DEEP, qos=1)
                    future = {"free": 99, "ts": clock.now() + 10 * 365 * 86400}
                    await pub.publish(f"{base}/field/carparks/p1", orjson.dumps(future), qos=1)
                    await pub.publish("application/x/device/70b3d57ed0000001/event/up", DEEP, qos=1)
                    parking = default_profiles()["parking_magnetic"]
                    topic, body = chirpstack_event(
                        "70b3d57ed0000001", "bay0", f_cnt=5, f_port=1, payload=parking.encode({"occupied": False}),
                        ts=clock.now() + 10 * 365 * 86400, dedup_id=f"{token}-f",
                    )  # fmt: skip
                    await pub.publish(topic, body, qos=1)
                    # Uplink topics are shared by every site on the broker: at least ours are counted.
                    await wait_for(
                        lambda: (
                            ingest.stats.refused.get("future_ts", 0) >= 1
                            and counters.refused["future_ts"] == 1
                            and counters.refused["too_deep"] == 1
                        ),
                        "every poison counted",
                    )
                    assert ingest.stats.refused.get("too_deep", 0) >= 1
                    states = {topic: body for _, topic, body in d.api.north.messages("p1")}
                    p1 = orjson.loads(states[f"{base}/parking/p1/state"])
                    assert p1["free"] is None  # the future count was never taken, so never "fresh"
                    assert p1["fresh"] is False
                    await pub.publish(f"{base}/field/carparks/p1", orjson.dumps({"free": 40}), qos=1)
                    await wait_for(
                        lambda: "P Near" in dsim.shown(board) and "frei 40" in dsim.shown(sign),
                        "guidance to P Near",
                        timeout_s=30,
                    )
                    assert dd.refusals.by_reason["too_deep"] >= 1
        finally:
            await pub.publish(status_topic, b"", qos=1, retain=True)


# -- acks say what is in force ----------------------------------------------------------------


async def test_limit_acks_say_the_rating_applies_and_the_effective_value(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    """`set_limit` of 5,000 A on a 25 A feeder is acked `clamped` with the effective 25 A and a note
    (it was `accepted` with no note); a limit at the rating is `accepted` with requested == effective;
    a curtailment to 0 A with no car charging is `accepted` as asked (the §14a floor protects cars)."""
    from harness import Site

    from controllers.lighting import night_window
    from edge.app.demo import sim_chargers
    from simulators.charging import ChargingSimulator
    from tests.app.test_charging import LIMIT_A
    from tests.app.test_charging import write_site as write_charging_site

    opc_port = free_port()
    cfg = write_charging_site(tmp_path, "ack" + uuid.uuid4().hex[:6], mqtt_url, database_url, opc_port)
    settings = load_settings(cfg)
    inv = load_inventory(settings.inventory_path())
    on, _ = night_window(settings.site, settings.lighting, NIGHT - 12 * 3600)
    clock = SimClock(start=on + 3600, speed=1)
    cps, feeders = sim_chargers(inv, settings)
    cps = [  # no car until the test brings one
        c.__class__(**{**{f: getattr(c, f) for f in c.__dataclass_fields__}, "sessions_per_day": 0})
        for c in cps
    ]
    async with (
        LightingSimulator(sim_controllers(inv), clock, seed=2) as lsim,
        ChargingSimulator(cps, clock, feeders=feeders, port=opc_port, seed=2) as csim,
        running(settings, inv, clock) as d,
        publisher(mqtt_url) as client,
    ):
        await d.link.wait_connected(WAIT_S)
        csim.set_feeder_live("lc", True)
        s = Site(d, lsim, client, settings, inv, d.link.protocol == "5")
        ack = await s.request("cmd/feeders/lc", {"action": "set_limit", "limit_a": 5000, "duration_s": 600})
        assert ack["ok"] is True, ack
        assert ack["status"] == "clamped", repr(ack)
        assert ack["requested"] == 5000
        assert ack["effective"] == LIMIT_A
        assert "rating" in ack["note"], ack
        ack = await s.request(
            "cmd/feeders/lc", {"action": "set_limit", "limit_a": LIMIT_A, "duration_s": 600}
        )
        assert ack["status"] == "accepted", ack
        assert (ack["requested"], ack["effective"], ack["note"]) == (LIMIT_A, LIMIT_A, "")
        now = clock.now()
        ack = await s.request(
            "utility/dso/limits",
            {"action": "curtail", "target": "lc", "limit_a": 0, "start": now, "end": now + 600},
        )
        # No car is charging, so §14a protects nobody: the curtailment stands as asked (the floor
        # with a charging car is `tests/app/test_charging.py`'s); the ack says so without a note.
        assert ack["status"] == "accepted", repr(ack)
        assert (ack["requested"], ack["effective"], ack["note"]) == (0, 0, "")


def test_summarize_tells_clamped_from_data_not_reason_text() -> None:
    """A command a policy clamped carries the asked value (`requested`): the ack is `clamped` with
    requested, effective and the policy's note, whatever the reason text says; an unclamped one with
    a reason that merely looks like a clamp is `confirmed`."""
    from edge.app.routes.base import summarize
    from edge.events import Command, CommandResult, Outcome, Priority

    def result(value: float, reason: str, requested: float | None) -> CommandResult:
        cmd = Command("c1", "CP0", "current_limit_a", value, Priority.OPERATOR, "operator:t", 0.0, 30.0,
                      reason=reason, requested=requested)  # fmt: skip
        return CommandResult(cmd, Outcome.CONFIRMED, value, "", 1.0)

    ack = summarize([result(7.5, "feeder_limit: feeder f leaves 7.5 A, set 7.5 A", 16.0)], "t", 1.0)
    assert (ack.status, ack.ok, ack.requested, ack.effective) == ("clamped", True, 16.0, 7.5)
    assert ack.note.startswith("feeder_limit")
    assert ack.results[0].requested == 16.0
    plain = summarize([result(10.0, "feeder_limit is what the operator typed", None)], "t", 1.0)
    assert (plain.status, plain.requested, plain.effective, plain.note) == ("confirmed", 10.0, 10.0, "")
