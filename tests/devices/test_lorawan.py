"""LoRaWAN uplinks: ChirpStack and TTS parsing, payload profiles, ingest (dedupe, order), broker."""

from __future__ import annotations

import asyncio
import base64
import math
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from waiting import wait_until

from devices.profiles.lorawan import FieldType, LorawanProfile, default_profiles, parse_profile
from devices.protocols.lorawan import (
    MAX_UPLINK_BYTES,
    UplinkIngest,
    UplinkSubscriber,
    parse_chirpstack,
    parse_tts,
    parse_uplink,
)
from edge.clock import ManualClock
from edge.errors import ConfigError, PayloadError
from edge.events import Telemetry, Value
from edge.mqtt import BrokerAddress
from simulators.lorawan import (
    LorawanSimulator,
    chirpstack_event,
    demo_sensors,
    demo_values,
    network_decoded,
    tts_uplink,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "lorawan"
T0 = 1_742_300_000.0
NOW = T0 + 30 * 86400  # the daemon's clock: after every frame of these tests (none comes from the future)

CS_PARKING = "70b3d57ed0051a2f"
CS_PARKING_2 = "70b3d57ed0051a30"
CS_BIN = "a81758fffe04c1d2"
TTS_BIN = "a81758fffe04c0f1"
TTS_PARKING = "70b3d57ed0051b03"
TTS_BIN_2 = "a81758fffe04c0f7"

# (fixture file, topic) as the network servers publish them
TOPIC = {
    "chirpstack_parking_full.json": f"application/17c82e96-be03-4f38-aef3-f83d48582d97/device/{CS_PARKING}/event/up",
    "chirpstack_parking_defaults.json": f"application/17c82e96-be03-4f38-aef3-f83d48582d97/device/{CS_PARKING_2}/event/up",
    "chirpstack_bin_no_time.json": f"application/0b7e9a8c-1f2d-4e3a-8b5c-9d0e1f2a3b4c/device/{CS_BIN}/event/up",
    "chirpstack_bad_base64.json": f"application/17c82e96-be03-4f38-aef3-f83d48582d97/device/{CS_PARKING}/event/up",
    "tts_bin_full.json": "v3/dortmund-waste@dos/devices/bin-kreuzviertel-0042/up",
    "tts_parking_defaults.json": "v3/dortmund-parking@dos/devices/bay-hohe-str-003/up",
    "tts_bin_no_metadata.json": "v3/schwerte-waste/devices/bin-schwerte-0007/up",
    "tts_join_accept.json": "v3/dortmund-parking@dos/devices/bay-hohe-str-003/up",
}

DEVICES = {
    CS_PARKING: ("bay-017", "parking_magnetic"),
    CS_PARKING_2: ("bay-018", "parking_magnetic"),
    CS_BIN: ("bin-markt-03", "bin_ultrasonic"),
    TTS_BIN.upper(): ("bin-0042", "bin_ultrasonic"),  # any case in the inventory
    TTS_PARKING: ("bay-hohe-003", "parking_magnetic"),
    TTS_BIN_2: ("bin-0007", "bin_ultrasonic"),
}


def fixture(name: str) -> tuple[str, bytes]:
    return TOPIC[name], (FIXTURES / name).read_bytes()


def ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


class Sink:
    """Collects what the ingest publishes (and what it sets aside as late)."""

    def __init__(self) -> None:
        self.published: list[Telemetry] = []
        self.late: list[Telemetry] = []


def make_ingest(devices: Mapping[str, tuple[str, str]] = DEVICES, **kw: Any) -> tuple[UplinkIngest, Sink]:
    sink = Sink()
    ingest = UplinkIngest(
        default_profiles(), devices, sink.published.append, ManualClock(NOW), on_late=sink.late.append, **kw
    )
    return ingest, sink


def cs(
    f_cnt: int,
    at: float,
    *,
    dev_eui: str = CS_PARKING,
    dedup: str | None = None,
    data: bytes = b"\x01\x50\x0a\x00\x00",
) -> tuple[str, bytes]:
    """A ChirpStack uplink for the parking sensor (defaults left out by the builder)."""
    return chirpstack_event(
        dev_eui,
        "bay",
        f_cnt=f_cnt,
        f_port=1,
        payload=data,
        ts=at,
        dedup_id=dedup or f"id-{f_cnt}-{at}",
        gateways=[("0016c001f153a14c", -100.0, 5.0)],
    )


# -- parsing: fixtures ---------------------------------------------------------


def test_chirpstack_full_event() -> None:
    """Every field of a full ChirpStack event lands in the Uplink; the best gateway is the loudest."""
    up = parse_chirpstack(*fixture("chirpstack_parking_full.json"))
    assert up.source == "chirpstack"
    assert up.dev_eui == CS_PARKING
    assert up.device_name == "bay-lindemannstr-017"
    assert (up.f_cnt, up.f_port, up.confirmed) == (42, 1, True)
    assert up.payload == bytes.fromhex("01570c0102")
    assert up.decoded is not None
    assert up.decoded["batteryLevel"] == 87
    assert up.received_at == pytest.approx(ts("2025-03-18T19:34:15.775023+00:00"))
    assert up.dedup_id == "3ac7e3c4-4401-4b8d-9386-a5c902f9202d"
    assert (up.rssi, up.snr, up.gateways) == (-97.0, 7.5, 2)


def test_chirpstack_fields_at_default_left_out() -> None:
    """fCnt 0, confirmed false, no object, dr 0 and a gateway's snr 0 are absent: defaults fill in."""
    up = parse_chirpstack(*fixture("chirpstack_parking_defaults.json"))
    assert (up.f_cnt, up.confirmed, up.decoded) == (0, False, None)
    assert (up.rssi, up.snr) == (-104.0, 0.0)
    assert up.payload == bytes.fromhex("00550a0000")


def test_chirpstack_without_time_takes_the_network_server_time() -> None:
    """An event without `time` is stamped with the first gateway's nsTime; an uppercase devEui is lowered."""
    up = parse_chirpstack(*fixture("chirpstack_bin_no_time.json"))
    assert up.dev_eui == CS_BIN
    assert up.received_at == pytest.approx(ts("2025-03-18T11:45:03.220001+00:00"))
    assert (up.f_cnt, up.rssi, up.snr) == (1208, -118.0, -14.5)


def test_chirpstack_without_any_time_uses_now_or_refuses() -> None:
    """With no time anywhere the caller's `now` is used; without one the field is missing."""
    topic, payload = cs(5, T0)
    body = orjson.loads(payload)
    del body["time"]
    assert parse_chirpstack(topic, orjson.dumps(body), now=T0 + 7).received_at == T0 + 7
    with pytest.raises(PayloadError) as info:
        parse_chirpstack(topic, orjson.dumps(body))
    assert (info.value.reason, info.value.detail) == ("missing_field", "time")


def test_chirpstack_minimal_event() -> None:
    """A frame with nothing but deviceInfo: counter 0, port 0, empty payload, no gateway metadata."""
    topic = f"application/1/device/{CS_PARKING}/event/up"
    up = parse_chirpstack(topic, orjson.dumps({"deviceInfo": {"devEui": CS_PARKING}}), now=T0)
    assert (up.f_cnt, up.f_port, up.payload, up.rssi, up.snr, up.dedup_id) == (0, 0, b"", None, None, None)


def test_tts_full_uplink() -> None:
    """A full TTS uplink: lowercase EUI, the as:up correlation id as dedup id, ns times, best gateway."""
    up = parse_tts(*fixture("tts_bin_full.json"))
    assert up.source == "tts"
    assert up.dev_eui == TTS_BIN
    assert up.device_name == "bin-kreuzviertel-0042"
    assert (up.f_cnt, up.f_port) == (317, 2)
    assert up.payload == bytes.fromhex("02645b05300d54")
    assert up.dedup_id == "as:up:01HQ8Z3K4V7N2B6C9D0E1F2G3H"
    assert up.received_at == pytest.approx(ts("2025-03-18T09:15:45.787756+00:00"))
    assert (up.rssi, up.snr, up.gateways) == (-96.0, 9.75, 2)


def test_tts_empty_fields_left_out() -> None:
    """f_cnt 0 and decoded_payload absent; rssi only as channel_rssi; snr 0 absent."""
    up = parse_tts(*fixture("tts_parking_defaults.json"))
    assert (up.f_cnt, up.decoded, up.confirmed) == (0, None, False)
    assert (up.rssi, up.snr) == (-109.0, 0.0)


def test_tts_without_metadata_or_top_level_time() -> None:
    """No rx_metadata, no correlation ids, time only in uplink_message (with an offset); single-tenant topic."""
    up = parse_tts(*fixture("tts_bin_no_metadata.json"))
    assert (up.rssi, up.snr, up.gateways, up.dedup_id) == (None, None, 0, None)
    assert up.received_at == pytest.approx(ts("2025-03-18T11:00:00.5+00:00"))


def _mutate(name: str, **changes: Any) -> tuple[str, bytes]:
    topic, payload = fixture(name)
    body = orjson.loads(payload)
    for path, value in changes.items():
        target = body
        *parents, leaf = path.split("__")
        for p in parents:
            target = target[p]
        if value is ...:
            del target[leaf]
        else:
            target[leaf] = value
    return topic, orjson.dumps(body)


MALFORMED = [
    ("malformed_json", (TOPIC["chirpstack_parking_full.json"], b'{"deduplicationId": "x", ')),
    ("invalid_utf8", (TOPIC["tts_bin_full.json"], b"\xff\xfe\x00garbage")),
    ("malformed_json", (TOPIC["tts_bin_full.json"], b"")),
    ("not_an_uplink", (TOPIC["chirpstack_parking_full.json"], b"[1, 2, 3]")),
    ("not_an_uplink", (TOPIC["chirpstack_parking_full.json"], b'{"hello": "world"}')),
    ("not_an_uplink", (TOPIC["chirpstack_parking_full.json"], b"42")),
    ("not_an_uplink", fixture("tts_join_accept.json")),
    ("not_an_uplink", (f"application/1/device/{CS_PARKING}/event/status", b'{"margin": 7}')),
    ("not_an_uplink", ("city/sensors/x", b"{}")),
    ("bad_base64", fixture("chirpstack_bad_base64.json")),
    ("bad_base64", _mutate("tts_bin_full.json", uplink_message__frm_payload="AmRbBTANVA")),
    ("bad_base64", _mutate("tts_bin_full.json", uplink_message__frm_payload="Ä==")),
    ("missing_field", _mutate("tts_bin_full.json", end_device_ids=...)),
    ("missing_field", _mutate("tts_bin_full.json", end_device_ids__dev_eui=...)),
    ("missing_field", ("application/1/device//event/up", b'{"devAddr": "01020304"}')),
    ("bad_field", _mutate("chirpstack_parking_full.json", fCnt="forty-two")),
    ("bad_field", _mutate("chirpstack_parking_full.json", fCnt=-1)),
    ("bad_field", _mutate("chirpstack_parking_full.json", fCnt=1 << 32)),
    ("bad_field", _mutate("chirpstack_parking_full.json", fPort=True)),
    ("bad_field", _mutate("chirpstack_parking_full.json", time="yesterday")),
    ("bad_field", _mutate("chirpstack_parking_full.json", time=1742300000)),
    ("bad_field", _mutate("chirpstack_parking_full.json", rxInfo={"rssi": -1})),
    ("bad_field", _mutate("chirpstack_parking_full.json", rxInfo=[{"rssi": "-97"}])),
    ("bad_field", _mutate("chirpstack_parking_full.json", object=[1, 2])),
    ("bad_field", _mutate("chirpstack_parking_full.json", deviceInfo="70b3")),
    ("bad_field", _mutate("chirpstack_parking_full.json", confirmed="yes")),
    ("bad_field", _mutate("tts_bin_full.json", end_device_ids__dev_eui="not-an-eui")),
    ("bad_field", _mutate("tts_bin_full.json", uplink_message__rx_metadata=[3])),
    ("topic_mismatch", _mutate("chirpstack_parking_full.json", deviceInfo__devEui="0011223344556677")),
    ("topic_mismatch", _mutate("tts_bin_full.json", end_device_ids__device_id="someone-else")),
    ("payload_too_large", (TOPIC["tts_bin_full.json"], b" " * (MAX_UPLINK_BYTES + 1))),
    ("too_deep", (TOPIC["tts_bin_full.json"], b"[" * 2000 + b"]" * 2000)),
]


@pytest.mark.parametrize(
    ("reason", "message"), MALFORMED, ids=[f"{r}-{i}" for i, (r, _) in enumerate(MALFORMED)]
)
def test_malformed_uplink_refused_with_reason(reason: str, message: tuple[str, bytes]) -> None:
    """A malformed or wrong-shape uplink raises PayloadError with its reason, and the ingest counts it."""
    with pytest.raises(PayloadError) as info:
        parse_uplink(*message, now=T0)
    assert info.value.reason == reason
    ingest, sink = make_ingest()
    assert ingest.handle(*message) is None
    assert ingest.stats.refused == {reason: 1}
    assert sink.published == []


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
KEYS = st.sampled_from(
    [
        "deduplicationId", "time", "deviceInfo", "fCnt", "fPort", "confirmed", "data", "object", "rxInfo",
        "end_device_ids", "uplink_message", "received_at", "correlation_ids", "f_cnt", "f_port",
        "frm_payload", "decoded_payload", "rx_metadata", "devEui", "dev_eui", "device_id", "nsTime",
    ]
)  # fmt: skip


def _scramble(body: Any, key: str, value: Any, depth: int) -> Any:
    """Replace `key` wherever it occurs (up to `depth` levels down) with `value`."""
    if isinstance(body, dict):
        return {
            k: value if k == key else (_scramble(v, key, value, depth - 1) if depth else v)
            for k, v in body.items()
        }
    if isinstance(body, list) and depth:
        return [_scramble(v, key, value, depth - 1) for v in body]
    return body


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(sorted(n for n in TOPIC if n != "tts_join_accept.json")),
    edits=st.lists(st.tuples(KEYS, JSON), max_size=3),
    depth=st.integers(0, 3),
)
def test_scrambled_uplinks_raise_only_payload_errors(
    name: str, edits: list[tuple[str, Any]], depth: int
) -> None:
    """Any value in any field of a real uplink parses or raises PayloadError, never anything else."""
    topic, payload = fixture(name)
    body = orjson.loads(payload)
    for key, value in edits:
        body = _scramble(body, key, value, depth)
    try:
        up = parse_uplink(topic, orjson.dumps(body), now=T0)
    except PayloadError:
        return
    assert isinstance(up.payload, bytes)
    assert 0 <= up.f_cnt < 2**32
    assert math.isfinite(up.received_at)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=300), chirpstack=st.booleans())
def test_random_bytes_raise_only_payload_errors(raw: bytes, chirpstack: bool) -> None:
    """Arbitrary bytes on an uplink topic are refused with a PayloadError and the ingest keeps going."""
    topic = TOPIC["chirpstack_parking_full.json" if chirpstack else "tts_bin_full.json"]
    ingest, _ = make_ingest()
    ingest.handle(topic, raw)
    assert ingest.stats.received == 1
    assert ingest.stats.published == 0


# -- profiles --------------------------------------------------------------------


def _value_strategy(profile: LorawanProfile) -> st.SearchStrategy[dict[str, Value]]:
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for f in profile.fields:
        if f.bits:
            for name, _ in f.bits:
                parts[name] = st.booleans()
            continue
        lo, hi = f.type.raw_min, f.type.raw_max
        if f.min is not None:
            lo = max(lo, math.ceil(f.min / f.scale))
        if f.max is not None:
            hi = min(hi, math.floor(f.max / f.scale))
        parts[f.name] = st.integers(lo, hi).map(_scaled(f.scale))
    return st.fixed_dictionaries(parts)


def _scaled(scale: float) -> Callable[[int], Value]:
    def apply(raw: int) -> Value:
        return raw if scale == 1.0 else round(raw * scale, 6)

    return apply


@pytest.mark.parametrize("name", sorted(default_profiles()))
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_shipped_profiles_round_trip(name: str, data: st.DataObject) -> None:
    """encode then decode gives back every value of a shipped profile, within its range."""
    profile = default_profiles()[name]
    values = data.draw(_value_strategy(profile))
    payload = profile.encode(values)
    assert len(payload) == profile.length
    decoded, dropped = profile.decode(payload)
    assert dropped == ()
    assert decoded == pytest.approx(values)
    assert set(decoded) == set(profile.value_names)
    # the network server's view of the same bytes is accepted as is
    assert profile.from_decoded(network_decoded(profile, payload)) == decoded


@st.composite
def _field_profile(draw: st.DrawFn) -> tuple[LorawanProfile, dict[str, Value]]:
    ftype = draw(st.sampled_from(list(FieldType)))
    little = draw(st.booleans())
    scale = draw(st.sampled_from([1, 0.5, 0.1, 0.01, 0.001, 2, 10]))
    offset = draw(st.integers(0, 8))
    raw = draw(st.integers(ftype.raw_min, ftype.raw_max))
    bits = draw(st.lists(st.integers(0, 8 * ftype.size - 1), unique=True, max_size=4))
    field: dict[str, Any] = {
        "name": "v",
        "offset": offset,
        "type": ftype.value,
        "endian": "little" if little else "big",
    }
    flags: dict[str, Value] = {}
    as_flags: bool = draw(st.booleans())
    if bits and as_flags:
        field["bits"] = {f"b{b}": b for b in bits}
        flags = {f"b{b}": draw(st.booleans()) for b in bits}
        values = flags
    else:
        field["scale"] = scale
        values = {"v": raw if scale == 1 else round(raw * scale, 3)}
    profile = parse_profile({"profile": {"name": "p", "version": 1, "f_ports": [1]}, "fields": [field]})
    return profile, values


@settings(max_examples=300, deadline=None)
@given(case=_field_profile())
def test_any_field_layout_round_trips(case: tuple[LorawanProfile, dict[str, Value]]) -> None:
    """For every type, byte order, scale, offset and bit layout, decode(encode(v)) == v."""
    profile, values = case
    decoded, _ = profile.decode(profile.encode(values))
    assert decoded == pytest.approx(values)


def test_profile_byte_order_and_sign() -> None:
    """The parking sensor's arrival count is little-endian, its temperature a signed byte."""
    profile = default_profiles()["parking_magnetic"]
    values, _ = profile.decode(bytes([0x01, 87, 0xF6, 0x01, 0x02]))
    assert values == {
        "occupied": True, "recalibrating": False, "sensor_fault": False,
        "battery": 87, "temperature": -10, "arrivals": 0x0201,
    }  # fmt: skip


def test_out_of_range_value_left_out() -> None:
    """A battery of 255 (the sensor's 'unknown') is left out; the other values stay."""
    profile = default_profiles()["bin_ultrasonic"]
    values, dropped = profile.decode(bytes.fromhex("0264ff04300d54"))
    assert dropped == ("battery",)
    assert "battery" not in values
    assert values["fire"] is True
    assert values["distance_mm"] == 612


def test_short_payload_refused() -> None:
    """A payload shorter than the layout is a PayloadError `short_payload`."""
    with pytest.raises(PayloadError, match="short_payload"):
        default_profiles()["bin_ultrasonic"].decode(b"\x02\x64")


BASE = {
    "profile": {"name": "p", "version": 1, "f_ports": [1]},
    "fields": [{"name": "a", "offset": 0, "type": "u16"}],
}


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"fields": [{"name": "a", "offset": 0, "type": "u24"}]}, "fields.0.type"),
        ({"fields": [{"name": "a", "offset": 0, "type": "u16"}, {"name": "b", "offset": 1, "type": "u8"}]}, "fields.1.offset"),
        ({"fields": [{"name": "a", "offset": 0, "type": "u8", "bits": {"x": 8}}]}, "fields.0.bits.x"),
        ({"fields": [{"name": "a", "offset": 0, "type": "u8", "bits": {"x": 1, "y": 1}}]}, "fields.0.bits.y"),
        ({"fields": [{"name": "a", "offset": 0, "type": "u8", "colour": "red"}]}, "fields.0.colour"),
        ({"fields": [{"name": "a", "offset": 0, "type": "u8", "endian": "middle"}]}, "fields.0.endian"),
        ({"fields": [{"name": "a", "offset": 0, "type": "u8", "scale": 0}]}, "fields.0.scale"),
        ({"fields": [{"name": "a", "offset": 0, "type": "u8"}, {"name": "a", "offset": 1, "type": "u8"}]}, "fields.1.name"),
        ({"fields": []}, "fields"),
        ({"profile": {"name": "p", "version": 1, "f_ports": [0]}}, "profile.f_ports.0"),
        ({"profile": {"name": "p", "version": 1}}, "profile.f_ports"),
        ({"decoded": {"use": True, "keys": {"nope": "x"}}}, "decoded.keys.nope"),
        ({"decoded": {"use": "yes"}}, "decoded.use"),
        ({"decoded": {"keys": {"a": ""}}}, "decoded.keys.a"),
        ({"fields": [{"name": "a", "offset": 0, "type": "u8", "min": 5, "max": 1}]}, "fields.0.min"),
        ({"fields": [{"name": "a", "offset": 241, "type": "u16"}]}, "fields.0.offset"),
        ({"fields": [{"name": "a", "offset": 0, "type": "u8", "scale": 2, "bits": {"x": 1}}]}, "fields.0.bits"),
        ({"fields": [{"name": "a", "offset": 0, "type": "u8", "scale": float("inf")}]}, "fields.0.scale"),
        ({"fields": [{"name": "a", "offset": 0, "type": "u8", "bits": {"1x": 1}}]}, "fields.0.bits.1x"),
        ({"fields": [{"name": "a", "offset": "0", "type": "u8"}]}, "fields.0.offset"),
        ({"fields": [{"name": "a", "offset": 0, "type": "u8"}, {"name": "b", "offset": 1, "type": "u8", "bits": {"a": 1}}]}, "fields.1.name"),
        ({"profile": {"name": "p", "version": True, "f_ports": [1]}}, "profile.version"),
        ({"colour": "red"}, "colour"),
    ],
)  # fmt: skip
def test_bad_profile_names_the_key(change: dict[str, Any], key: str) -> None:
    """A bad profile fails at load with a ConfigError naming the key and the file."""
    with pytest.raises(ConfigError) as info:
        parse_profile({**BASE, **change}, file="lorawan_test.toml")
    assert info.value.key == key
    assert str(info.value).startswith(f"lorawan_test.toml: {key}: ")


# -- ingest ----------------------------------------------------------------------


def test_ingest_publishes_telemetry_with_link_values() -> None:
    """A parking uplink becomes Telemetry(device_id, received_at, values + f_cnt/rssi/snr); the trusted decoder is used."""
    ingest, sink = make_ingest()
    event = ingest.handle(*fixture("chirpstack_parking_full.json"))
    assert event is not None
    assert sink.published == [event]
    assert event.device_id == "bay-017"
    assert event.ts == pytest.approx(ts("2025-03-18T19:34:15.775023+00:00"))
    assert dict(event.values) == {
        "occupied": True, "recalibrating": False, "sensor_fault": False, "battery": 87,
        "temperature": 12, "arrivals": 513, "f_cnt": 42, "f_port": 1, "rssi": -97.0, "snr": 7.5,
    }  # fmt: skip
    assert ingest.stats.network_decoded == 1


def test_ingest_decodes_bytes_when_profile_does_not_trust_the_decoder() -> None:
    """The bin profile ignores TTS's decoded_payload (distance 600) and decodes the bytes (612)."""
    ingest, _sink = make_ingest()
    event = ingest.handle(*fixture("tts_bin_full.json"))
    assert event is not None
    assert event.values["distance_mm"] == 612
    assert (event.values["lid_open"], event.values["fire"], event.values["battery_v"]) == (True, True, 3.412)
    assert ingest.stats.network_decoded == 0


def test_ingest_falls_back_to_bytes_when_decoder_output_does_not_fit() -> None:
    """A trusted decoder whose output lacks a value or has a wrong type is ignored for the bytes."""
    topic, payload = _mutate("chirpstack_parking_full.json", object__batteryLevel="87%")
    ingest, _ = make_ingest()
    event = ingest.handle(topic, payload)
    assert event is not None
    assert event.values["battery"] == 87
    assert ingest.stats.network_decoded == 0


def test_every_fixture_ingests() -> None:
    """Each good fixture, ChirpStack and TTS, with and without defaults, publishes one Telemetry."""
    ingest, sink = make_ingest()
    good = [n for n in TOPIC if n not in ("tts_join_accept.json", "chirpstack_bad_base64.json")]
    for name in good:
        ingest.handle(*fixture(name))
    assert len(sink.published) == len(good)
    assert {e.device_id for e in sink.published} == {
        "bay-017",
        "bay-018",
        "bin-markt-03",
        "bin-0042",
        "bay-hohe-003",
        "bin-0007",
    }


def test_duplicate_dedup_id_dropped() -> None:
    """The same event delivered twice (same deduplicationId / as:up id) is published once."""
    ingest, sink = make_ingest()
    for name in ("chirpstack_parking_full.json", "tts_bin_full.json"):
        ingest.handle(*fixture(name))
        ingest.handle(*fixture(name))
    assert len(sink.published) == 2
    assert ingest.stats.duplicates == 2


def test_duplicate_frame_counter_dropped() -> None:
    """The same frame counter of a device with another dedup id (a retransmission) is a duplicate."""
    ingest, sink = make_ingest()
    ingest.handle(*cs(7, T0, dedup="a"))
    ingest.handle(*cs(7, T0 + 2.5, dedup="b"))
    assert len(sink.published) == 1
    assert ingest.stats.duplicates == 1


def test_late_frame_not_published_but_handed_on_flagged() -> None:
    """An older frame counter received earlier than the newest does not overwrite state: on_late gets it, late=True."""
    ingest, sink = make_ingest()
    ingest.handle(*cs(10, T0 + 60, data=b"\x01\x50\x0a\x00\x00"))
    assert ingest.handle(*cs(9, T0, data=b"\x00\x50\x0a\x00\x00")) is None
    assert [e.values["f_cnt"] for e in sink.published] == [10]
    assert [(e.values["f_cnt"], e.values["late"], e.values["occupied"]) for e in sink.late] == [
        (9, True, False)
    ]
    assert ingest.stats.late == 1
    # a duplicate of the late frame is a duplicate, not late twice
    ingest.handle(*cs(9, T0, dedup="other"))
    assert (ingest.stats.late, ingest.stats.duplicates) == (1, 1)
    ingest.handle(*cs(11, T0 + 120))
    assert [e.values["f_cnt"] for e in sink.published] == [10, 11]


def test_late_frames_dropped_without_on_late() -> None:
    """Without an on_late consumer a late frame is counted and dropped."""
    published: list[Telemetry] = []
    ingest = UplinkIngest(default_profiles(), DEVICES, published.append, ManualClock(NOW))
    ingest.handle(*cs(3, T0 + 1))
    ingest.handle(*cs(2, T0))
    assert len(published) == 1
    assert ingest.stats.late == 1


def test_counter_reset_after_rejoin_starts_a_new_session() -> None:
    """A low counter received after the newest frame is a rejoin: published, and the session restarts."""
    ingest, sink = make_ingest()
    ingest.handle(*cs(5000, T0))
    ingest.handle(*cs(0, T0 + 600))
    ingest.handle(*cs(1, T0 + 1200))
    assert [e.values["f_cnt"] for e in sink.published] == [5000, 0, 1]
    assert ingest.stats.resets == 1
    # a straggler of the old session arriving now is late, not newer
    ingest.handle(*cs(4999, T0 - 600))
    assert ingest.stats.late == 1
    assert len(sink.published) == 3


def test_sixteen_bit_counter_wrap_is_a_reset() -> None:
    """A network server reporting 16-bit counters wraps 65535 -> 0: the frame is current."""
    ingest, sink = make_ingest()
    ingest.handle(*cs(65534, T0))
    ingest.handle(*cs(65535, T0 + 600))
    ingest.handle(*cs(0, T0 + 1200))
    assert [e.values["f_cnt"] for e in sink.published] == [65534, 65535, 0]


def test_small_step_back_received_later_is_late_not_reset() -> None:
    """Counter 90 after 100 is reordering (within the window), even if stamped later: not a reset."""
    ingest, _sink = make_ingest()
    ingest.handle(*cs(100, T0))
    ingest.handle(*cs(90, T0 + 1))
    assert ingest.stats.resets == 0
    assert ingest.stats.late == 1


def test_unknown_devices_ports_and_short_payloads_counted() -> None:
    """Unknown DevEUIs, frames on other ports and too-short payloads are counted and dropped."""
    ingest, sink = make_ingest()
    ingest.handle(*cs(1, T0, dev_eui="0102030405060708"))
    topic, payload = chirpstack_event(
        CS_PARKING, "bay", f_cnt=2, f_port=99, payload=b"\x00", ts=T0, dedup_id="p"
    )
    ingest.handle(topic, payload)
    ingest.handle(*cs(3, T0 + 1, data=b"\x01"))
    ingest.handle("application/x/device/y/event/up", b"{")
    assert sink.published == []
    s = ingest.stats
    assert (s.received, s.unknown_device, s.ignored_port, s.refused) == (
        4,
        1,
        1,
        {"short_payload": 1, "malformed_json": 1},
    )
    assert ingest.stats.as_dict()["refused.short_payload"] == 1


def test_memory_is_bounded() -> None:
    """Dedup ids and per-device counters are LRU-bounded however many frames arrive."""
    ingest, sink = make_ingest(dedup_ids=100, recent_per_device=8)
    for i in range(1000):
        ingest.handle(*cs(i, T0 + i))
    assert len(sink.published) == 1000
    assert len(ingest._ids) == 100
    assert all(len(t.recent) <= 8 for t in ingest._tracks.values())


def test_bad_device_table_is_a_config_error() -> None:
    """A device with an unknown profile or a malformed EUI fails at construction, naming it."""
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        make_ingest({CS_PARKING: ("bay", "nope")})
    with pytest.raises(ConfigError) as info:
        make_ingest({"xyz": ("bay", "parking_magnetic")})
    assert info.value.key == "lorawan.devices.xyz"


def test_simulator_round_trips_through_ingest() -> None:
    """Simulated rounds with duplicates, reordering and rejoins: every frame is published or late exactly once."""
    clock = ManualClock(NOW)
    sim = LorawanSimulator(
        demo_sensors(10, 10),
        demo_values(7),
        clock,
        seed=7,
        duplicate_p=0.3,
        out_of_order_p=0.2,
        rejoin_p=0.05,
    )
    ingest, sink = make_ingest(sim.devices())
    for r in range(20):
        for topic, payload in sim.frames(T0 + 600 * r):
            ingest.handle(topic, payload)
    seen = [(e.device_id, e.values["f_cnt"], round(e.ts, 3)) for e in sink.published + sink.late]
    assert sorted(seen) == sorted((d, f, round(t, 3)) for d, f, t in sim.stats.sent_frames)
    assert ingest.stats.duplicates == sim.stats.duplicates
    assert ingest.stats.late == sim.stats.out_of_order
    assert ingest.stats.resets == sim.stats.rejoins
    assert ingest.stats.refused == {}
    # each device's published frames move forward in time
    for device_id in {e.device_id for e in sink.published}:
        times = [e.ts for e in sink.published if e.device_id == device_id]
        assert times == sorted(times)


def test_simulator_leaves_default_fields_out() -> None:
    """The first frame of each sensor has counter 0, so no fCnt / f_cnt key on the wire."""
    sim = LorawanSimulator(
        demo_sensors(1, 1), demo_values(1), ManualClock(NOW), duplicate_p=0, out_of_order_p=0
    )
    (cs_topic, cs_body), (tts_topic, tts_body) = sim.frames()
    assert "fCnt" not in orjson.loads(cs_body)
    assert "confirmed" not in orjson.loads(cs_body)
    assert "f_cnt" not in orjson.loads(tts_body)["uplink_message"]
    assert parse_uplink(cs_topic, cs_body).f_cnt == parse_uplink(tts_topic, tts_body).f_cnt == 0
    assert base64.b64decode(orjson.loads(tts_body)["uplink_message"]["frm_payload"])


def test_tts_builder_output_parses() -> None:
    """What tts_uplink builds, parse_tts reads back (the simulator and the parser agree)."""
    topic, body = tts_uplink(
        TTS_BIN,
        "bin-0042",
        f_cnt=3,
        f_port=2,
        payload=b"\x01",
        ts=T0,
        dedup_id="z",
        gateways=[("gw", -80.0, 3.5)],
    )
    up = parse_tts(topic, body)
    assert (up.dev_eui, up.f_cnt, up.payload, up.dedup_id, up.rssi, up.snr) == (
        TTS_BIN,
        3,
        b"\x01",
        "as:up:z",
        -80.0,
        3.5,
    )


# -- against a real broker -------------------------------------------------------


async def test_simulator_to_ingest_over_mqtt(mqtt_url: str) -> None:
    """The simulator publishes both formats over a broker; an aiomqtt subscriber feeding UplinkIngest sees every sensor exactly once."""
    clock = ManualClock(NOW)
    app = f"test-{uuid.uuid4().hex[:10]}"  # a broker shared with other tests: topics of our own
    sim = LorawanSimulator(
        demo_sensors(15, 15), demo_values(3), clock, seed=3, duplicate_p=0.5, out_of_order_p=0.0, app=app
    )
    ingest, sink = make_ingest(sim.devices())
    messages = sim.frames(T0)
    assert sim.stats.duplicates > 0
    address = BrokerAddress.parse(mqtt_url)
    async with aiomqtt.Client(
        address.host,
        address.port,
        identifier=f"sub-{app}",
        protocol=aiomqtt.ProtocolVersion.V311,
        timeout=10,
    ) as sub:
        await sub.subscribe([(t, 1) for t in sim.topics()])

        async def consume() -> None:
            async for message in sub.messages:
                assert isinstance(message.payload, bytes)
                ingest.handle(message.topic.value, message.payload)
                if ingest.stats.received == len(messages):
                    return

        async with asyncio.timeout(20), sim.connect_to(mqtt_url, qos=1), asyncio.TaskGroup() as tg:
            tg.create_task(consume(), name="lorawan-test.consume")
            await sim.publish(messages)
    assert ingest.stats.refused == {}
    assert ingest.stats.unknown_device == 0
    assert ingest.stats.duplicates == sim.stats.duplicates
    assert sorted(e.device_id for e in sink.published) == sorted(s.device_id for s in sim.sensors)
    formats = {s.format for s in sim.sensors}
    assert formats == {"chirpstack", "tts"}


def test_a_frame_from_the_future_is_refused_and_the_next_one_taken() -> None:
    """A frame stamped ten years ahead of the daemon's clock is refused (`future_ts`), not published:
    the state store would keep it as the newest reading; within the skew it is taken."""
    ingest, sink = make_ingest()
    assert ingest.handle(*cs(7, NOW + 10 * 365 * 86400)) is None
    assert ingest.stats.refused == {"future_ts": 1}
    assert ingest.handle(*cs(8, NOW + 60)) is not None
    assert len(sink.published) == 1


def test_deeply_nested_uplinks_are_refused_without_recursion() -> None:
    """2,000 nested arrays, or an `object` nested 40 deep, are refused by the byte scan (`too_deep`)."""
    ingest, sink = make_ingest()
    topic, body = cs(9, NOW)
    deep_object = body[:-1] + b', "object": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}"
    assert ingest.handle(topic, b"[" * 2000 + b"]" * 2000) is None
    assert ingest.handle(topic, deep_object) is None
    assert ingest.stats.refused == {"too_deep": 2}
    assert sink.published == []


async def test_the_ingest_subscribes_its_uplink_topics_itself(mqtt_url: str) -> None:
    """`UplinkSubscriber`: the ingest's own session on the broker (not the northbound API) takes
    every sensor exactly once, duplicates dropped, from both network-server formats."""
    clock = ManualClock(NOW)
    app = f"test-{uuid.uuid4().hex[:10]}"  # a broker shared with other tests: topics of our own
    sim = LorawanSimulator(
        demo_sensors(6, 6), demo_values(3), clock, seed=5, duplicate_p=0.5, out_of_order_p=0.0, app=app
    )
    ingest, sink = make_ingest(sim.devices())
    messages = sim.frames(T0)
    async with UplinkSubscriber(ingest, mqtt_url=mqtt_url, topics=sim.topics(), timeout_s=5.0) as uplinks:
        await uplinks.wait_connected(10)
        async with sim.connect_to(mqtt_url, qos=1):
            await sim.publish(messages)
        await wait_until(lambda: ingest.stats.received == len(messages), timeout_s=20, what="every uplink")
    assert ingest.stats.refused == {}
    assert ingest.stats.duplicates == sim.stats.duplicates
    assert sorted(e.device_id for e in sink.published) == sorted(s.device_id for s in sim.sensors)
