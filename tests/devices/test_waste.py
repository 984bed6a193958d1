"""The truck link at its trust boundary: what a truck may send, how misbehaviour is logged, how it connects.

Connection tests run a real TCP server on 127.0.0.1 that reads the first packet a driver
sends: an MQTT CONNECT (first byte 0x10) with its username and password, or a TLS
ClientHello (record type 0x16) when the URL says `mqtts://`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import orjson
import pytest
from structlog.testing import capture_logs
from waiting import wait_until

from devices.displays import DisplayDriver
from devices.profiles.waste import Route, decode_route, route_number
from devices.waste import LOG_EVERY, MAX_SKEW_S, FleetDriver
from edge.clock import ManualClock
from edge.decode import Refusal
from edge.errors import ConfigError, DeviceReplyError
from edge.events import Event
from edge.mqtt import BrokerAddress
from edge.settings import DisplaysSettings, WasteSettings

NOW = 1_796_000_000.0
HOST = "127.0.0.1"
WAIT_S = 5.0


def state(**over: Any) -> bytes:
    body: dict[str, Any] = {"ts": NOW, "lat": 51.5, "lon": 7.44, "load_l": 10, "load_kg": 1,
                            "status": "driving", "route_id": None, "stop_index": 0, "odometer_km": 3.5}  # fmt: skip
    body.update(over)
    return orjson.dumps(body)


def event(**over: Any) -> bytes:
    body: dict[str, Any] = {"type": "emptied", "ts": NOW, "seq": 1, "route_id": "d-T1-r1", "bin": "B1"}
    body.update(over)
    return orjson.dumps(body)


def driver(out: list[Event], trucks: tuple[str, ...] = ("T1", "T2"), **kw: Any) -> FleetDriver:
    return FleetDriver(out.append, ManualClock(NOW), list(trucks), mqtt_url="mqtt://127.0.0.1:1", **kw)


@pytest.mark.parametrize(
    ("body", "field_name"),
    [
        (state(ts=NOW * 1000), "ts"),  # milliseconds
        (state(ts=NOW + 10 * 365 * 86400), "ts"),  # ten years ahead
        (state(ts=NOW - MAX_SKEW_S - 60), "ts"),  # a truck whose clock never synced
        (state(ts="inf"), "ts"),
        (state(ts="1e308"), "ts"),
        (state(ts="nan"), "ts"),
        (state(load_l="inf"), "load_l"),
        (state(load_kg=1e308), "load_kg"),
        (state(odometer_km="Infinity"), "odometer_km"),
        (state(stop_index=10**12), "stop_index"),
        (event(ts=NOW * 1000), "ts"),
        (event(ts="inf"), "ts"),
        (event(load_l="inf"), "load_l"),
        (event(load_kg=1e300), "load_kg"),
    ],
)
def test_absurd_numbers_are_refused_naming_the_field(body: bytes, field_name: str) -> None:
    """ts beyond now +- 1 day, inf/nan (also as strings) and huge loads never reach the bus; the log names the field."""
    out: list[Event] = []
    drv = driver(out)
    kind = "state" if b'"status"' in body else "event"
    with capture_logs() as logs:
        assert drv.on_message(f"fleet/T1/{kind}", body) is None
    assert out == []
    assert drv.stats.bad == 1
    assert drv.stats.states == drv.stats.events == 0
    (entry,) = [e for e in logs if e["event"] == "fleet_bad_message"]
    assert entry["truck"] == "T1"
    assert entry["error"].startswith(f"{field_name}:"), entry["error"]


def test_ts_within_a_day_is_taken() -> None:
    out: list[Event] = []
    drv = driver(out)
    assert drv.on_message("fleet/T1/state", state(ts=NOW - MAX_SKEW_S + 60)) is not None
    assert drv.on_message("fleet/T1/event", event(ts=NOW + 60)) is not None
    assert len(out) == 2
    assert drv.stats.bad == 0


async def test_an_absurd_ts_does_not_answer_a_route() -> None:
    """A state naming the route but with a ts of another epoch is not a read-back of that route."""
    out: list[Event] = []
    drv = driver(out)
    fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    drv._answers[("T1", "d-T1-r3")] = fut
    drv.on_message("fleet/T1/event", event(type="route_accepted", route_id="d-T1-r3", ts=NOW * 1000))
    assert not fut.done()
    drv.on_message("fleet/T1/event", event(type="route_accepted", route_id="d-T1-r3"))
    assert fut.result() == 3.0


def test_every_misbehaving_truck_is_named_and_unknown_ids_once_each() -> None:
    out: list[Event] = []
    drv = driver(out)
    with capture_logs() as logs:
        for _ in range(LOG_EVERY):
            drv.on_message("fleet/T1/state", b"{nope")
        drv.on_message("fleet/T2/state", state(status="flying"))
        for _ in range(3):
            drv.on_message("fleet/T9/state", state())
            drv.on_message("fleet/X7/event", event())
    bad = [(e["truck"], e["count"]) for e in logs if e["event"] == "fleet_bad_message"]
    assert bad == [("T1", 1), ("T1", LOG_EVERY), ("T2", 1)]
    assert drv.bad_count("T1") == LOG_EVERY
    assert drv.bad_count("T2") == 1
    unknown = [e["truck"] for e in logs if e["event"] == "fleet_unknown_truck"]
    assert unknown == ["T9", "X7"]
    assert drv.stats.unknown_truck == 6
    assert out == []


def test_emptied_for_a_bin_not_in_the_inventory_is_logged() -> None:
    out: list[Event] = []
    drv = driver(out, bins=["B1", "B2"])
    with capture_logs() as logs:
        assert drv.on_message("fleet/T1/event", event(bin="B1")) is not None
        for seq in (2, 3):
            drv.on_message("fleet/T1/event", event(bin="B77", seq=seq))
        drv.on_message("fleet/T1/event", event(type="skipped", bin="B78", seq=4, reason="blocked"))
    unknown = [(e["truck"], e["bin"]) for e in logs if e["event"] == "fleet_unknown_bin"]
    assert unknown == [("T1", "B77"), ("T1", "B78")]
    assert drv.stats.unknown_bin == 3


# -- connecting --------------------------------------------------------------------------


@dataclass
class FirstPacket:
    """A TCP server on 127.0.0.1 that keeps the first bytes of every connection."""

    port: int = 0
    first: list[bytes] = field(default_factory=list)
    got: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(WAIT_S):
                data = await reader.read(4096)
            self.first.append(data)
            self.got.set()
        except TimeoutError:
            pass
        finally:
            writer.close()


@pytest.fixture
async def first_packet() -> AsyncIterator[FirstPacket]:
    fp = FirstPacket()
    server = await asyncio.start_server(fp.handle, HOST, 0)
    fp.port = server.sockets[0].getsockname()[1]
    async with server:
        yield fp


def _credentials(connect: bytes) -> tuple[str, str]:
    """Username and password of an MQTT 3.1.1 CONNECT packet."""
    assert connect[0] == 0x10, f"not an MQTT CONNECT: {connect[:8]!r}"
    i = 1
    while connect[i] & 0x80:  # remaining length (varint)
        i += 1
    i += 1
    pos = i

    def string() -> str:
        nonlocal pos
        n = int.from_bytes(connect[pos : pos + 2], "big")
        pos += 2
        s = connect[pos : pos + n].decode()
        pos += n
        return s

    assert string() == "MQTT"
    flags = connect[pos + 1]
    pos += 4  # level, flags, keep-alive
    string()  # client id
    if flags & 0x04:  # will topic and message
        string()
        string()
    assert flags & 0xC0 == 0xC0, "no username and password"
    return string(), string()


async def _first(fp: FirstPacket) -> bytes:
    async with asyncio.timeout(WAIT_S):
        await fp.got.wait()
    return fp.first[0]


async def test_fleet_url_credentials_are_percent_decoded(first_packet: FirstPacket) -> None:
    url = f"mqtt://fleet%40site:p%40ss%3Aw%2Frd@{HOST}:{first_packet.port}"
    drv = FleetDriver(lambda e: None, ManualClock(NOW), ["T1"], mqtt_url=url, timeout_s=1.0)
    with capture_logs() as logs:
        async with drv:
            packet = await _first(first_packet)
    assert _credentials(packet) == ("fleet@site", "p@ss:w/rd")
    assert "p%40ss" not in repr(logs)  # logs name host:port only
    assert "p@ss" not in repr(logs)


# paho leaves the socket of a failed TLS handshake (our server hangs up on the ClientHello)
# to the garbage collector, which warns about it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_fleet_mqtts_speaks_tls(first_packet: FirstPacket) -> None:
    url = f"mqtts://edge:pw@{HOST}:{first_packet.port}"
    drv = FleetDriver(lambda e: None, ManualClock(NOW), ["T1"], mqtt_url=url, timeout_s=1.0)
    async with drv:
        packet = await _first(first_packet)
    assert packet[:2] == b"\x16\x03", f"not a TLS ClientHello: {packet[:8]!r}"


async def test_board_url_credentials_are_percent_decoded(first_packet: FirstPacket) -> None:
    url = f"mqtt://boards%40site:s%23cr%40t@{HOST}:{first_packet.port}"
    async with DisplayDriver(lambda e: None, ManualClock(NOW), boards=["led-1"], mqtt_url=url, timeout_s=1.0):
        packet = await _first(first_packet)
    assert _credentials(packet) == ("boards@site", "s#cr@t")


# paho leaves the socket of a failed TLS handshake (our server hangs up on the ClientHello)
# to the garbage collector, which warns about it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_board_mqtts_speaks_tls(first_packet: FirstPacket) -> None:
    url = f"mqtts://{HOST}:{first_packet.port}"
    async with DisplayDriver(lambda e: None, ManualClock(NOW), boards=["led-1"], mqtt_url=url, timeout_s=1.0):
        packet = await _first(first_packet)
    assert packet[:2] == b"\x16\x03", f"not a TLS ClientHello: {packet[:8]!r}"


@pytest.mark.parametrize("url", ["http://127.0.0.1:1883", "127.0.0.1:1883", "mqtt://", "mqtt://h:99999"])
def test_bad_broker_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match=r"waste\.fleet_mqtt_url"):
        FleetDriver(lambda e: None, ManualClock(NOW), ["T1"], mqtt_url=url)
    with pytest.raises(ConfigError, match=r"displays\.board_mqtt_url"):
        DisplayDriver(lambda e: None, ManualClock(NOW), boards=["led-1"], mqtt_url=url)
    with pytest.raises(ValueError, match="fleet_mqtt_url"):
        WasteSettings(fleet_mqtt_url=url)
    with pytest.raises(ValueError, match="board_mqtt_url"):
        DisplaysSettings(board_mqtt_url=url)


def test_empty_device_broker_urls_mean_the_northbound_broker() -> None:
    assert WasteSettings(fleet_mqtt_url="").fleet_mqtt_url == ""
    assert DisplaysSettings(board_mqtt_url="").board_mqtt_url == ""
    assert WasteSettings(fleet_mqtt_url="mqtts://u:p%40@broker.example:8883").fleet_mqtt_url


async def test_a_finished_route_is_cleared_from_its_retained_topic(mqtt_url: str) -> None:
    """After `route_done` for the route retained on fleet/T1/route, a truck that connects gets no route."""
    t1 = f"T1-{secrets.token_hex(4)}"  # a broker shared by several test runs keeps retained routes
    drv = FleetDriver(lambda e: None, ManualClock(NOW), [t1], mqtt_url=mqtt_url, timeout_s=2.0)
    route = orjson.dumps({"route_id": f"d-{t1}-r1", "issued_ts": NOW, "stops": []}).decode()
    async with drv, _client(mqtt_url) as truck:
        await drv.wait_connected(WAIT_S)
        await truck.subscribe(f"fleet/{t1}/route", qos=1)
        writing = asyncio.create_task(drv.write_payload(t1, "route", route, WAIT_S))
        async with asyncio.timeout(WAIT_S):
            async for message in truck.messages:
                assert message.payload == route.encode()
                break
        await truck.publish(
            f"fleet/{t1}/event", event(type="route_accepted", route_id=f"d-{t1}-r1", seq=1), qos=1
        )
        assert await writing == 1.0
        # another route's done does not clear it
        await truck.publish(
            f"fleet/{t1}/event", event(type="route_done", route_id=f"d-{t1}-r0", seq=2), qos=1
        )
        await truck.publish(
            f"fleet/{t1}/event", event(type="route_done", route_id=f"d-{t1}-r1", seq=3), qos=1
        )
        async with asyncio.timeout(WAIT_S):
            async for message in truck.messages:
                assert message.payload == b""
                break
        await wait_until(lambda: drv.stats.routes_cleared == 1, what="the route cleared")
    async with _client(mqtt_url) as late:
        await late.subscribe(f"fleet/{t1}/route", qos=1)
        await late.subscribe(f"fleet/{t1}/marker", qos=1)
        await late.publish(f"fleet/{t1}/marker", b"m", qos=1)
        async with asyncio.timeout(WAIT_S):
            async for message in late.messages:
                assert message.topic.value == f"fleet/{t1}/marker", "a cleared route is still retained"
                break


def _client(url: str) -> aiomqtt.Client:
    a = BrokerAddress.parse(url)
    return aiomqtt.Client(a.host, a.port, username=a.username, password=a.password, timeout=WAIT_S)


def test_the_route_model_is_the_wire_format_of_the_protocol() -> None:
    """docs/fleet-protocol.md's route: decoded through edge.decode, dumped back to the same JSON;
    optional fields that are absent stay absent."""
    body = {
        "route_id": "2026-11-26-truck-1-r2",
        "issued_ts": 1795677000.0,
        "start_ts": 1795672800.0,
        "stops": [
            {"seq": 0, "kind": "bin", "id": "B0042", "lat": 51.5071, "lon": 7.4512,
             "eta_ts": 1795678200.0, "window": [1795672800.0, 1795687200.0]},
            {"seq": 1, "kind": "depot", "id": "depot", "lat": 51.5, "lon": 7.44, "eta_ts": 1795684000.0},
        ],
    }  # fmt: skip
    route = decode_route(orjson.dumps(body))
    assert isinstance(route, Route)
    assert orjson.loads(route.payload()) == body
    assert route_number(route.route_id) == 2
    assert isinstance(decode_route(b'{"route_id": "r-3", "stops": "nope"}'), Refusal)
    far = {**body, "stops": [{"kind": "bin", "id": "B1", "lat": 91.0, "lon": 7.0}]}
    assert isinstance(decode_route(orjson.dumps(far)), Refusal)


async def test_a_payload_that_is_not_a_route_is_refused_before_it_is_sent() -> None:
    """The driver checks the dispatcher's payload against the Route model: a malformed one is a
    DeviceReplyError (the dispatcher does not retry it), and nothing is published."""
    drv = driver([])
    with pytest.raises(DeviceReplyError, match="not a route"):
        await drv.write_payload("T1", "route", '{"route_id": "d-T1-r1", "stops": [{"kind": "shop"}]}', 1.0)
    with pytest.raises(DeviceReplyError, match="not a route"):
        await drv.write_payload("T1", "route", '{"stops": []}', 1.0)
    assert drv.stats.routes_sent == 0
