"""The environment sensor profiles (water level, rain, wind, soil, air, help point) through parser and ingest."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from devices.profiles.lorawan import LorawanProfile, default_profiles
from devices.protocols.lorawan import UplinkIngest, parse_uplink
from edge.clock import ManualClock
from edge.events import Telemetry, Value
from simulators.lorawan import chirpstack_event, network_decoded, tts_uplink

T0 = 1_742_300_000.0
NOW = T0 + 86400  # the daemon's clock: after every frame here
LINK = {"f_cnt", "f_port", "rssi", "snr"}

# one realistic reading per new profile
SAMPLES: dict[str, dict[str, Value]] = {
    "water_level_ultrasonic": {
        "distance_mm": 1834, "battery": 91, "probe_fault": False, "tamper": True, "temperature": -4,
    },
    "rain_gauge": {"rain_mm_h": 31.4, "rain_total_mm": 1234.6, "battery": 77},
    "wind": {"wind_speed_ms": 11.3, "wind_gust_ms": 24.8, "wind_dir_deg": 359, "battery": 64},
    "soil_moisture": {"soil_moisture": 27.5, "soil_temp": -2.3, "battery": 88},
    "air_quality": {
        "pm2_5": 12.3, "pm10": 20.7, "no2": 41, "temperature": -7.5, "humidity": 93, "battery": 70,
    },
    "helppoint_button": {
        "pressed": True, "cancelled": False, "tamper": False, "selftest_failed": True,
        "battery": 99, "press_count": 513,
    },
}  # fmt: skip
EUI = {name: f"e7e0a0000000{i:04x}" for i, name in enumerate(SAMPLES)}
DEVICES = {eui: (f"dev-{name}", name) for name, eui in EUI.items()}


def profile(name: str) -> LorawanProfile:
    return default_profiles()[name]


def message(
    name: str, payload: bytes, fmt: str, *, decoded: Mapping[str, Any] | None = None
) -> tuple[str, bytes]:
    """An uplink of the named profile's device in ChirpStack or TTS format."""
    eui, port = EUI[name], profile(name).f_ports[0]
    build = chirpstack_event if fmt == "chirpstack" else tts_uplink
    return build(
        eui,
        f"dev-{name}",
        f_cnt=5,
        f_port=port,
        payload=payload,
        ts=T0,
        dedup_id=f"{fmt}-{name}",
        gateways=[("0016c001f153a14c", -104.0, 6.5)],
        decoded=decoded,
    )


def ingest_one(topic: str, body: bytes) -> tuple[Telemetry | None, UplinkIngest]:
    published: list[Telemetry] = []
    ingest = UplinkIngest(default_profiles(), DEVICES, published.append, ManualClock(NOW))
    event = ingest.handle(topic, body)
    assert published == ([event] if event is not None else [])
    return event, ingest


def reading(event: Telemetry | None) -> dict[str, Value]:
    assert event is not None
    return {k: v for k, v in event.values.items() if k not in LINK}


def test_new_profiles_load_with_the_shipped_ones() -> None:
    """default_profiles() has the six environment profiles beside the parking and bin ones."""
    names = set(default_profiles())
    assert set(SAMPLES) <= names
    assert {"parking_magnetic", "bin_ultrasonic"} <= names
    for name, sample in SAMPLES.items():
        assert set(profile(name).value_names) == set(sample)
        assert "battery" in profile(name).value_names


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_profile_round_trip(name: str) -> None:
    """encode then decode gives back the sample, nothing left out."""
    p = profile(name)
    payload = p.encode(SAMPLES[name])
    assert len(payload) == p.length
    values, dropped = p.decode(payload)
    assert dropped == ()
    assert values == pytest.approx(SAMPLES[name])


def test_byte_layouts() -> None:
    """Known bytes: big-endian words by default, little-endian for the soil probe, signed temperatures."""
    level, _ = profile("water_level_ultrasonic").decode(bytes.fromhex("072a5b02fc"))
    assert level == {
        "distance_mm": 1834,
        "battery": 91,
        "probe_fault": False,
        "tamper": True,
        "temperature": -4,
    }
    soil, _ = profile("soil_moisture").decode(bytes.fromhex("1301e9ff58"))
    assert soil == {"soil_moisture": 27.5, "soil_temp": -2.3, "battery": 88}
    rain, _ = profile("rain_gauge").decode(bytes.fromhex("013a00003039" + "4d"))
    assert rain == {"rain_mm_h": 31.4, "rain_total_mm": 1234.5, "battery": 77}
    button, _ = profile("helppoint_button").decode(bytes.fromhex("0a630201"))
    assert button == {
        "pressed": False, "cancelled": True, "tamper": False, "selftest_failed": True,
        "battery": 99, "press_count": 513,
    }  # fmt: skip


@pytest.mark.parametrize("fmt", ["chirpstack", "tts"])
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_uplink_round_trip_through_parser_and_ingest(name: str, fmt: str) -> None:
    """Each profile's payload in either format parses to its bytes and ingests to the sample values."""
    payload = profile(name).encode(SAMPLES[name])
    topic, body = message(name, payload, fmt)
    up = parse_uplink(topic, body)
    assert (up.dev_eui, up.f_port, up.payload, up.source) == (
        EUI[name],
        profile(name).f_ports[0],
        payload,
        fmt,
    )
    event, ingest = ingest_one(topic, body)
    assert event is not None
    assert event.device_id == f"dev-{name}"
    assert reading(event) == pytest.approx(SAMPLES[name])
    assert (event.values["f_cnt"], event.values["rssi"]) == (5, -104.0)
    assert ingest.stats.out_of_range == 0


@pytest.mark.parametrize(
    ("name", "change", "left_out"),
    [
        ("water_level_ultrasonic", {"distance_mm": 0, "probe_fault": True}, "distance_mm"),  # no echo
        ("water_level_ultrasonic", {"distance_mm": 120}, "distance_mm"),  # inside the blind zone
        ("water_level_ultrasonic", {"battery": 255}, "battery"),
        ("rain_gauge", {"rain_mm_h": 6553.5}, "rain_mm_h"),  # bucket stuck
        ("wind", {"wind_dir_deg": 0xFFFF}, "wind_dir_deg"),  # vane fault
        ("wind", {"wind_gust_ms": 90.0}, "wind_gust_ms"),
        ("soil_moisture", {"soil_moisture": 6553.5}, "soil_moisture"),  # probe out of the soil
        ("soil_moisture", {"soil_temp": -300.0}, "soil_temp"),
        ("air_quality", {"no2": 0xFFFF}, "no2"),  # cell warming up
        ("air_quality", {"humidity": 140}, "humidity"),
        ("helppoint_button", {"battery": 255}, "battery"),
    ],
)
def test_implausible_value_left_out(name: str, change: dict[str, Value], left_out: str) -> None:
    """An out-of-range value is left out of the telemetry and counted; the others stay."""
    payload = profile(name).encode({**SAMPLES[name], **change})
    event, ingest = ingest_one(*message(name, payload, "tts"))
    values = reading(event)
    assert left_out not in values
    assert values == pytest.approx({k: v for k, v in {**SAMPLES[name], **change}.items() if k != left_out})
    assert ingest.stats.out_of_range == 1


@pytest.mark.parametrize("fmt", ["chirpstack", "tts"])
def test_air_quality_trusts_the_network_servers_decoder(fmt: str) -> None:
    """The vendor codec's output (its own key names, its calibration) is used when it fits."""
    payload = profile("air_quality").encode(SAMPLES["air_quality"])
    decoded = {
        "pm25": 11.9, "pm10": 20.2, "nitrogenDioxide": 39, "airTemperature": -7.4,
        "relativeHumidity": 92, "batteryLevel": 70,
    }  # fmt: skip
    event, ingest = ingest_one(*message("air_quality", payload, fmt, decoded=decoded))
    assert reading(event) == {
        "pm2_5": 11.9, "pm10": 20.2, "no2": 39, "temperature": -7.4, "humidity": 92, "battery": 70,
    }  # fmt: skip
    assert ingest.stats.network_decoded == 1
    # the simulator's rendering of the codec is accepted as is
    assert profile("air_quality").from_decoded(
        network_decoded(profile("air_quality"), payload)
    ) == pytest.approx(SAMPLES["air_quality"])


@pytest.mark.parametrize(
    "bad",
    [
        {"nitrogenDioxide": None},  # a value missing
        {"pm25": "12"},  # a wrong type
        {"relativeHumidity": 140},  # out of range
        {"no2": 39, "nitrogenDioxide": None},  # our name, not the codec's
    ],
)
def test_air_quality_decodes_the_bytes_when_the_decoder_does_not_fit(bad: dict[str, Any]) -> None:
    """A codec output that lacks a value, has a wrong type or an implausible value is ignored for the bytes."""
    payload = profile("air_quality").encode(SAMPLES["air_quality"])
    decoded = {
        k: v for k, v in {**network_decoded(profile("air_quality"), payload), **bad}.items() if v is not None
    }
    event, ingest = ingest_one(*message("air_quality", payload, "chirpstack", decoded=decoded))
    assert reading(event) == pytest.approx(SAMPLES["air_quality"])
    assert ingest.stats.network_decoded == 0


@pytest.mark.parametrize("name", sorted(set(SAMPLES) - {"air_quality"}))
def test_other_profiles_ignore_the_decoder(name: str) -> None:
    """Level, rain, wind, soil and help-point values come from the bytes, whatever the codec says."""
    payload = profile(name).encode(SAMPLES[name])
    wrong = {k: (not v if isinstance(v, bool) else 1) for k, v in SAMPLES[name].items()}
    event, ingest = ingest_one(*message(name, payload, "tts", decoded=wrong))
    assert reading(event) == pytest.approx(SAMPLES[name])
    assert ingest.stats.network_decoded == 0
