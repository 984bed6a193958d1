"""The storm scenario: rising and falling water, a failing gauge, reproducible, and what its frames carry."""

from __future__ import annotations

import pytest

from devices.profiles.lorawan import default_profiles
from devices.protocols.lorawan import UplinkIngest
from edge.clock import ManualClock
from edge.events import Telemetry, Value
from edge.settings_environment import SensorSettings
from simulators.environment import (
    FailureMode,
    StormScenario,
    StormSimulator,
    storm_sensor_table,
    storm_sensors,
    timeline,
)
from simulators.lorawan import LorawanSimulator, SimSensor

T0 = 1_742_300_000.0
NOW = T0 + 86400  # the daemon's clock: after every frame of these tests
STEP = 300.0  # a level reading every 5 minutes
LINK = {"f_cnt", "f_port", "rssi", "snr"}

SENSORS = {s.device_id: s for s in storm_sensors()}
ZERO = {r["id"]: r["zero_mm"] for r in storm_sensor_table() if "zero_mm" in r}
GAUGES = ("gauge-emscher-1", "gauge-emscher-2")


def reported_level(scenario: StormScenario, device_id: str, ts: float) -> int | None:
    """The level a gauge reports (zero - distance), None while silent or without a distance."""
    sensor = SENSORS[device_id]
    if scenario.silent(sensor, ts):
        return None
    values = scenario.values(sensor, 0, ts)
    if values["probe_fault"]:
        return None
    distance = values["distance_mm"]
    assert isinstance(distance, int)
    return ZERO[device_id] - distance


def series(scenario: StormScenario, device_id: str) -> list[tuple[float, int | None]]:
    end = scenario.start + scenario.clock_duration_s
    times = [scenario.start + i * STEP for i in range(int(scenario.clock_duration_s / STEP) + 1)]
    assert times[-1] == end
    return [(t, reported_level(scenario, device_id, t)) for t in times]


def test_sensor_table() -> None:
    """Seven sensors in the Kreuzviertel, formats alternating, a zero for every level sensor only."""
    table = storm_sensor_table()
    assert [r["group"] for r in table] == [
        "gauge-emscher", "gauge-emscher", "drain-kreuzviertel", "rain", "wind", "soil", "air",
    ]  # fmt: skip
    assert len({r["dev_eui"] for r in table}) == len(table) == len({r["id"] for r in table})
    for r in table:
        assert 51.505 <= r["lat"] <= 51.515
        assert 7.445 <= r["lon"] <= 7.465
        assert r["profile"] in default_profiles()
        assert len(r["dev_eui"]) == 16
        assert r["dev_eui"].startswith("e7")
        assert ("zero_mm" in r) == (r["profile"] == "water_level_ultrasonic")
    assert storm_sensors(0xAB)[0].dev_eui.startswith("ab")
    assert [(s.device_id, s.dev_eui, s.profile, s.format) for s in storm_sensors()] == [
        (r["id"], r["dev_eui"], r["profile"], "chirpstack" if i % 2 == 0 else "tts")
        for i, r in enumerate(table)
    ]
    # the rows are the daemon's settings as they are
    for r in table:
        SensorSettings(**r)


@pytest.mark.parametrize("failure", ["silent", "implausible"])
@pytest.mark.parametrize("gauge", GAUGES)
def test_water_rises_peaks_and_falls_at_both_gauges(gauge: str, failure: FailureMode) -> None:
    """At least 10 cm within 15 minutes, a peak above 150 cm, below 80 cm again by the end."""
    scenario = StormScenario(3, start=T0, failure=failure)
    levels = series(scenario, gauge)
    seen = [(t, lv) for t, lv in levels if lv is not None]
    three = 900 / STEP
    rises = [b - a for (_, a), (_, b) in zip(levels, levels[int(three) :], strict=False) if a and b]
    assert max(rises) >= 100
    assert max(lv for _, lv in seen) > 1500
    assert levels[0][1] is not None
    assert levels[0][1] < 800
    assert levels[-1][1] is not None
    assert levels[-1][1] < 800
    # the true level (what the failing gauge would have seen) peaks too
    truth = [scenario.level_mm(SENSORS[gauge], t) for t, _ in levels]
    assert 1600 <= max(truth) <= 1800
    assert truth[-1] < 800


def test_drain_fills_with_the_rain_and_empties() -> None:
    scenario = StormScenario(3, start=T0)
    drain = series(scenario, "drain-kreuzviertel-1")
    assert drain[0][1] is not None
    assert drain[0][1] < 100
    assert max(lv for _, lv in drain if lv is not None) > 700
    assert drain[-1][1] is not None
    assert drain[-1][1] < 100


def test_failing_gauge_goes_silent_in_its_window_only() -> None:
    """The silent gauge: `silent` in its window, the other gauge and every other sensor never."""
    scenario = StormScenario(1, start=T0, failing="gauge-emscher-1", fail_window=(0.5, 0.6))
    for t, level in series(scenario, "gauge-emscher-1"):
        in_window = 0.5 <= scenario.progress(t) < 0.6
        assert scenario.silent(SENSORS["gauge-emscher-1"], t) is in_window
        assert (level is None) is in_window
    for device_id, sensor in SENSORS.items():
        if device_id != "gauge-emscher-1":
            assert not any(scenario.silent(sensor, t) for t, _ in series(scenario, "gauge-emscher-2"))


def test_failing_gauge_reports_an_implausible_reading() -> None:
    """In `implausible` mode the gauge sends a probe fault with distance 0; the ingest leaves the distance out."""
    scenario = StormScenario(1, start=T0, failure="implausible")
    gauge = SENSORS["gauge-emscher-2"]
    mid = scenario.clock_at(0.6)
    assert not scenario.silent(gauge, mid)
    assert dict(scenario.values(gauge, 0, mid)) | {"battery": 0, "temperature": 0} == {
        "distance_mm": 0, "probe_fault": True, "tamper": False, "battery": 0, "temperature": 0,
    }  # fmt: skip
    decoded, dropped = default_profiles()["water_level_ultrasonic"].decode(
        default_profiles()["water_level_ultrasonic"].encode(scenario.values(gauge, 0, mid))
    )
    assert dropped == ("distance_mm",)
    assert decoded["probe_fault"] is True
    after = scenario.values(gauge, 0, scenario.clock_at(0.75))
    assert after["probe_fault"] is False
    assert isinstance(after["distance_mm"], int)
    assert after["distance_mm"] > 200


def test_rain_and_wind_through_the_storm() -> None:
    """Rain peaks at 25-40 mm/h and its total only grows; gusts reach about 25 m/s; all calm before and after."""
    scenario = StormScenario(5, start=T0)
    times = [T0 + i * STEP for i in range(25)]
    rain = [scenario.values(SENSORS["rain-1"], 0, t) for t in times]
    wind = [scenario.values(SENSORS["wind-1"], 0, t) for t in times]
    rates = [float(v["rain_mm_h"]) for v in rain]
    totals = [float(v["rain_total_mm"]) for v in rain]
    assert 25 <= max(rates) <= 42
    assert rates[0] == rates[-1] == 0
    assert totals == sorted(totals)
    assert 10 < totals[-1] - totals[0] < 40
    gusts = [float(v["wind_gust_ms"]) for v in wind]
    assert 22 <= max(gusts) <= 28
    assert gusts[0] < 10
    assert gusts[-1] < 10
    assert all(float(v["wind_gust_ms"]) >= float(v["wind_speed_ms"]) for v in wind)
    assert all(0 <= int(v["wind_dir_deg"]) <= 359 for v in wind)


def test_every_value_fits_its_profile_through_the_storm() -> None:
    """Outside the failure, nothing a sensor reports is left out as implausible; help points are never pressed."""
    scenario = StormScenario(7, start=T0, failure="implausible")
    helppoint = SimSensor("e7ffff0000000001", "helppoint-1", "helppoint_button", "tts")
    profiles = default_profiles()
    for i in range(int(scenario.clock_duration_s / 60) + 30):
        t = T0 - 900 + i * 60
        for sensor in [*SENSORS.values(), helppoint]:
            values = scenario.values(sensor, i, t)
            decoded, dropped = profiles[sensor.profile].decode(profiles[sensor.profile].encode(values))
            assert dropped == (() if not scenario.failed(sensor, t) else ("distance_mm",))
            assert decoded == pytest.approx({k: v for k, v in values.items() if k not in dropped})
        button = scenario.values(helppoint, i, t)
        assert not button["pressed"]
        assert not button["cancelled"]


def test_unknown_profile_is_an_error() -> None:
    with pytest.raises(ValueError, match="parking_magnetic"):
        StormScenario().values(SimSensor("e700000000000099", "bay-1", "parking_magnetic", "tts"), 0, T0)


def test_deterministic_for_a_seed() -> None:
    """The same seed gives the same values whatever the order of the calls; another seed other values."""
    times = [T0 + i * 137.0 for i in range(60)]

    def run(seed: int, order: list[float]) -> dict[tuple[str, float], dict[str, Value]]:
        s = StormScenario(seed, start=T0)
        return {(d, t): dict(s.values(sensor, 0, t)) for t in order for d, sensor in SENSORS.items()}

    assert run(11, times) == run(11, times[::-1])
    assert run(11, times) != run(12, times)


def test_timeline_and_time_scale() -> None:
    """Phase changes in order from 0 to the storm's clock duration; a time scale compresses them."""
    full = timeline(StormScenario(start=T0))
    offsets = [t for t, _ in full]
    assert offsets == sorted(offsets)
    assert offsets[0] == 0
    assert offsets[-1] == pytest.approx(7200)
    texts = " | ".join(text for _, text in full)
    for words in (
        "rain starts",
        "water rising",
        "wind gusts",
        "gauge-emscher-2 fails",
        "water falling",
        "calm",
    ):
        assert words in texts
    fast = StormScenario(start=T0, time_scale=12)
    assert [t for t, _ in timeline(fast)] == pytest.approx([t / 12 for t in offsets])
    # the compressed storm is the same storm, sooner
    slow = StormScenario(start=T0)
    gauge = SENSORS["gauge-emscher-1"]
    assert fast.level_mm(gauge, T0 + 300) == pytest.approx(slow.level_mm(gauge, T0 + 3600))
    assert fast.phase(T0 + 300) == slow.phase(T0 + 3600) == "water at its peak (160-180 cm)"


def ingest_storm(sim: LorawanSimulator, rounds: int) -> tuple[list[Telemetry], UplinkIngest]:
    published: list[Telemetry] = []
    ingest = UplinkIngest(default_profiles(), sim.devices(), published.append, ManualClock(NOW))
    for r in range(rounds):
        for topic, payload in sim.frames(T0 + r * STEP):
            ingest.handle(topic, payload)
    return published, ingest


@pytest.mark.parametrize("failure", ["silent", "implausible"])
def test_simulator_frames_decode_to_the_scenarios_values(failure: FailureMode) -> None:
    """Frames of a LorawanSimulator built from storm_sensors() and the scenario carry its values, in both formats."""
    scenario = StormScenario(9, start=T0, failure=failure)
    sim = LorawanSimulator(
        storm_sensors(), scenario, ManualClock(NOW), seed=9, duplicate_p=0.3, out_of_order_p=0
    )
    rounds = int(scenario.clock_duration_s / STEP) + 1
    published, ingest = ingest_storm(sim, rounds)
    assert ingest.stats.refused == {}
    assert len(published) == len(sim.stats.sent_frames) == rounds * len(SENSORS)
    sent: dict[tuple[str, Value], float] = {(d, f): t for d, f, t in sim.stats.sent_frames}
    for event in published:
        sensor = SENSORS[event.device_id]
        t = sent[event.device_id, event.values["f_cnt"]]
        expected = dict(scenario.values(sensor, 0, t))
        if scenario.failed(sensor, t) and failure == "implausible":
            del expected["distance_mm"]  # left out by the ingest as implausible
        assert {k: v for k, v in event.values.items() if k not in LINK} == pytest.approx(expected)
    assert ingest.stats.network_decoded > 0  # the air-quality station's codec was trusted
    assert {s.format for s in sim.sensors} == {"chirpstack", "tts"}


def test_storm_simulator_leaves_the_silent_gauge_out() -> None:
    """StormSimulator sends nothing for the silent gauge in its window, then continues its frame counter."""
    scenario = StormScenario(9, start=T0)
    sim = StormSimulator(storm_sensors(), scenario, ManualClock(NOW), seed=9, duplicate_p=0, out_of_order_p=0)
    rounds = int(scenario.clock_duration_s / STEP) + 1
    published, _ = ingest_storm(sim, rounds)
    gauge = SENSORS["gauge-emscher-2"]
    from_gauge = [e for e in published if e.device_id == gauge.device_id]
    silent_rounds = sum(scenario.silent(gauge, T0 + r * STEP) for r in range(rounds))
    assert silent_rounds >= 3
    assert len(from_gauge) == rounds - silent_rounds
    assert not any(scenario.failed(gauge, e.ts) for e in from_gauge)
    assert [e.values["f_cnt"] for e in from_gauge] == list(range(len(from_gauge)))
    assert len(published) == rounds * len(SENSORS) - silent_rounds
    assert len(sim.sensors) == len(SENSORS)  # every sensor is back after the round
