"""A storm over Dortmund's Kreuzviertel, as LoRaWAN environment sensors report it.

`StormScenario` is a `ValuesFn` for `LorawanSimulator`: values depend on the clock time
(`ts - start`), not on the frame index, so a sensor that sends every minute and one that
sends every ten see the same storm. It is seeded and pure: the same seed, sensor and time
always give the same values (noise included), so tests can recompute what a frame carried.

Phases, as fractions of the storm's `duration_s` (default 2 h; `time_scale` compresses it
into fewer clock seconds for a demo):

    0.00  calm: no rain, both gauges near 60 cm, light south-westerly wind
    0.10  rain starts, rising to 25-40 mm/h by 0.25; the drain fills first
    0.25  water rising at both gauges (the downstream one 0.03 later) to 160-180 cm by 0.50
    0.40  wind gusts, up to ~25 m/s at 0.50, over by 0.60
    0.45  rain easing, dry by 0.65
    0.55  one gauge fails (silent, or an implausible reading: probe fault and distance 0)
    0.60  water falling
    0.70  the failed gauge reports again
    0.85  calm: water back near 60 cm, well below the 80 cm mark

The scenario cannot make `LorawanSimulator` skip a frame (it encodes whatever its
`ValuesFn` returns), so a silent gauge is signalled by `StormScenario.silent(sensor, ts)`:
`StormSimulator` checks it and leaves the sensor out of the round; any other caller must
check it too. `values()` of a silent gauge still says what it would have measured.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

from edge.clock import Clock
from edge.events import Value
from simulators.lorawan import LorawanSimulator, SimSensor

FailureMode = Literal["silent", "implausible"]

# Phase boundaries as fractions of the storm's duration (the module docstring's table).
RAIN_START = 0.10
RAIN_FULL = 0.25
RAIN_EASING = 0.45
RAIN_END = 0.65
RISE_START = 0.25
PEAK = 0.50
FALL_START = 0.60
FALL_END = 0.82  # + the downstream gauge's lag: water is back by CALM
CALM = 0.85
GUST_START = 0.40
GUST_END = 0.60
DRAIN_RISE = (0.12, 0.32)
DRAIN_FALL = (0.45, 0.70)
FAIL_WINDOW = (0.55, 0.70)
DOWNSTREAM_LAG = 0.03

BASE_LEVEL_MM = 600
DRAIN_BASE_MM = 60
DEFAULT_ZERO_MM = 3400
WATER_LEVEL = "water_level_ultrasonic"


class SensorRow(TypedDict):
    """One storm sensor with exactly the keys of the daemon's `[[environment.sensors]]` table.

    `zero_mm` (level sensors only) is the distance from the sensor down to the gauge's zero or
    the drain's invert: level = zero_mm - distance_mm. The uplink format is not a setting:
    `storm_sensors` alternates ChirpStack / TTS in table order.
    """

    id: str
    dev_eui: str
    profile: str
    group: str
    lat: float
    lon: float
    zero_mm: NotRequired[int]


# (id, profile, group, lat, lon, zero_mm or 0): inside the Kreuzviertel, 51.505-51.515 N, 7.445-7.465 E
_SITES: tuple[tuple[str, str, str, float, float, int], ...] = (
    ("gauge-emscher-1", WATER_LEVEL, "gauge-emscher", 51.5062, 7.4478, 3400),
    ("gauge-emscher-2", WATER_LEVEL, "gauge-emscher", 51.5071, 7.4523, 3200),
    ("drain-kreuzviertel-1", WATER_LEVEL, "drain-kreuzviertel", 51.5112, 7.4561, 2100),
    ("rain-1", "rain_gauge", "rain", 51.5098, 7.4590, 0),
    ("wind-1", "wind", "wind", 51.5135, 7.4612, 0),
    ("soil-1", "soil_moisture", "soil", 51.5085, 7.4540, 0),
    ("air-1", "air_quality", "air", 51.5120, 7.4502, 0),
)


def storm_sensor_table(prefix: int = 0xE7) -> list[SensorRow]:
    """The storm's sensors as rows for the daemon's settings (`SensorSettings(**row)`)."""
    rows: list[SensorRow] = []
    for i, (sid, profile, group, lat, lon, zero) in enumerate(_SITES):
        row: SensorRow = {
            "id": sid,
            "dev_eui": f"{prefix:02x}57a0{i:010x}",
            "profile": profile,
            "group": group,
            "lat": lat,
            "lon": lon,
        }
        if zero:
            row["zero_mm"] = zero
        rows.append(row)
    return rows


def storm_sensors(prefix: int = 0xE7) -> list[SimSensor]:
    """The simulated sensors of `storm_sensor_table(prefix)`, formats alternating ChirpStack / TTS."""
    return [
        SimSensor(r["dev_eui"], r["id"], r["profile"], "chirpstack" if i % 2 == 0 else "tts")
        for i, r in enumerate(storm_sensor_table(prefix))
    ]


# -- shapes ---------------------------------------------------------------------


def _ramp(p: float, a: float, b: float) -> float:
    """0 before a, 1 after b, a smooth step between (water does not jump)."""
    if p <= a:
        return 0.0
    if p >= b:
        return 1.0
    x = (p - a) / (b - a)
    return x * x * (3 - 2 * x)


def _bump(p: float, a: float, b: float) -> float:
    """0 outside (a, b), a half sine inside peaking at the middle."""
    return math.sin(math.pi * (p - a) / (b - a)) if a < p < b else 0.0


_RAIN_KNOTS = ((RAIN_START, 0.0), (RAIN_FULL, 1.0), (RAIN_EASING, 1.0), (RAIN_END, 0.0))


def _rain_shape(p: float) -> float:
    """The rain's intensity relative to its peak: a trapezoid over the knots."""
    for (a, ya), (b, yb) in itertools.pairwise(_RAIN_KNOTS):
        if a <= p < b:
            return ya + (yb - ya) * (p - a) / (b - a)
    return 0.0


def _rain_area(p: float) -> float:
    """Integral of `_rain_shape` from 0 to p (in storm fractions), for the rain total."""
    area = 0.0
    for (a, ya), (b, yb) in itertools.pairwise(_RAIN_KNOTS):
        if p <= a:
            break
        end = min(p, b)
        y_end = ya + (yb - ya) * (end - a) / (b - a)
        area += (ya + y_end) / 2 * (end - a)
    return area


def _clamp(v: float, lo: float, hi: float) -> float:
    return float(max(lo, min(hi, v)))


@dataclass(frozen=True, slots=True)
class _Site:
    """What the scenario keeps per level sensor: its zero and its part in the storm."""

    zero_mm: int
    drain: bool
    lag: float


# -- the scenario -------------------------------------------------------------------


class StormScenario:
    """A seeded, time-driven storm: a `ValuesFn` for `LorawanSimulator` (see the module doc).

    `start` is the clock time the storm begins; `time_scale` is storm seconds per clock
    second (12 plays the 2 h storm in 10 clock minutes). `failing` names the gauge (device
    id) that fails in the `fail_window` (fractions of the storm), `failure` how.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        start: float = 0.0,
        duration_s: float = 7200.0,
        time_scale: float = 1.0,
        failing: str = "gauge-emscher-2",
        failure: FailureMode = "silent",
        fail_window: tuple[float, float] = FAIL_WINDOW,
        table: Sequence[SensorRow] | None = None,
    ) -> None:
        if duration_s <= 0 or time_scale <= 0:
            raise ValueError("duration_s and time_scale must be positive")
        if not 0 <= fail_window[0] < fail_window[1]:
            raise ValueError(f"fail_window must be (from, to) with 0 <= from < to, got {fail_window}")
        self.seed = seed
        self.start = start
        self.duration_s = duration_s
        self.time_scale = time_scale
        self.failing = failing
        self.failure: FailureMode = failure
        self.fail_window = fail_window
        rows = storm_sensor_table() if table is None else table
        self._sites: dict[str, _Site] = {}
        gauges = 0
        for r in rows:
            if r["profile"] != WATER_LEVEL:
                continue
            drain = r["group"].startswith("drain")
            lag = 0.0 if drain else DOWNSTREAM_LAG * min(gauges, 1)
            gauges += not drain
            self._sites[r["dev_eui"].lower()] = _Site(r.get("zero_mm", DEFAULT_ZERO_MM), drain, lag)
        rng = random.Random(f"storm:{seed}")
        self.rain_peak_mm_h = round(rng.uniform(28, 38), 1)
        self.gust_peak_ms = round(rng.uniform(23, 26), 1)

    @property
    def clock_duration_s(self) -> float:
        """Clock seconds the storm lasts."""
        return self.duration_s / self.time_scale

    def progress(self, ts: float) -> float:
        """Where the storm stands at clock time `ts`: 0 at `start`, 1 at its end (unbounded)."""
        return (ts - self.start) * self.time_scale / self.duration_s

    def clock_at(self, fraction: float) -> float:
        """The clock time of a point in the storm (a fraction of its duration)."""
        return self.start + fraction * self.clock_duration_s

    def failed(self, sensor: SimSensor, ts: float) -> bool:
        """Whether `sensor` is the failing gauge and `ts` lies in its failure window."""
        lo, hi = self.fail_window
        return sensor.device_id == self.failing and lo <= self.progress(ts) < hi

    def silent(self, sensor: SimSensor, ts: float) -> bool:
        """Whether `sensor` sends no frame at `ts` (the caller must check: see the module doc)."""
        return self.failure == "silent" and self.failed(sensor, ts)

    def _sensor_rng(self, sensor: SimSensor, what: str) -> random.Random:
        """A sensor's own constant (peak, battery ...): the same for the whole storm."""
        return random.Random(f"{self.seed}:{sensor.dev_eui}:{what}")

    def level_mm(self, sensor: SimSensor, ts: float) -> float:
        """The true water level under a level sensor at `ts` (mm above the gauge's zero / invert)."""
        site = self._site(sensor)
        p = self.progress(ts)
        peak = self._sensor_rng(sensor, "peak").uniform(1600, 1800)
        if site.drain:
            peak = peak / 2
            rise, fall = _ramp(p, *DRAIN_RISE), _ramp(p, *DRAIN_FALL)
            return DRAIN_BASE_MM + (peak - DRAIN_BASE_MM) * (rise - fall)
        lag = site.lag
        rise = _ramp(p, RISE_START + lag, PEAK + lag)
        fall = _ramp(p, FALL_START + lag, FALL_END + lag)
        return BASE_LEVEL_MM + (peak - BASE_LEVEL_MM) * (rise - fall)

    def _site(self, sensor: SimSensor) -> _Site:
        return self._sites.get(sensor.dev_eui.lower(), _Site(DEFAULT_ZERO_MM, False, 0.0))

    def __call__(self, sensor: SimSensor, frame: int, ts: float) -> Mapping[str, Value]:
        """`values`: the scenario as a `ValuesFn`."""
        return self.values(sensor, frame, ts)

    def values(self, sensor: SimSensor, frame: int, ts: float) -> Mapping[str, Value]:
        """What `sensor` reports at clock time `ts` (`frame` is not used: time drives the storm).

        Raises ValueError for a profile the storm has no values for.
        """
        del frame
        p = self.progress(ts)
        noise = random.Random(f"{self.seed}:{sensor.dev_eui}:{ts!r}")
        battery = self._sensor_rng(sensor, "battery").randint(62, 99)
        air_temp = 17.0 - 5.0 * _ramp(p, 0.08, 0.30) + noise.gauss(0, 0.2)
        kind = sensor.profile
        if kind == WATER_LEVEL:
            return self._level_values(sensor, ts, noise, battery, air_temp)
        if kind == "rain_gauge":
            return self._rain_values(p, noise, battery)
        if kind == "wind":
            return self._wind_values(p, noise, battery)
        if kind == "soil_moisture":
            return {
                "soil_moisture": round(
                    _clamp(24.0 + 9.0 * _ramp(p, 0.15, 0.70) + noise.gauss(0, 0.2), 0, 100), 1
                ),
                "soil_temp": round(13.5 - 1.0 * _ramp(p, 0.10, 0.60) + noise.gauss(0, 0.1), 1),
                "battery": battery,
            }
        if kind == "air_quality":
            return self._air_values(p, noise, battery, air_temp)
        if kind == "helppoint_button":
            return {
                "pressed": False,
                "cancelled": False,
                "tamper": False,
                "selftest_failed": False,
                "battery": battery,
                "press_count": self._sensor_rng(sensor, "presses").randint(0, 12),
            }
        raise ValueError(f"{sensor.device_id}: the storm has no values for profile {kind!r}")

    def _level_values(
        self, sensor: SimSensor, ts: float, noise: random.Random, battery: int, air_temp: float
    ) -> dict[str, Value]:
        zero = self._site(sensor).zero_mm
        broken = self.failure == "implausible" and self.failed(sensor, ts)
        distance = (
            0 if broken else round(_clamp(zero - self.level_mm(sensor, ts) + noise.gauss(0, 3), 200, 10000))
        )
        return {
            "distance_mm": distance,
            "battery": battery,
            "probe_fault": broken,
            "tamper": False,
            "temperature": round(air_temp),
        }

    def _rain_values(self, p: float, noise: random.Random, battery: int) -> dict[str, Value]:
        shape = _rain_shape(p)
        rate = self.rain_peak_mm_h * shape + (noise.gauss(0, 1.0) if shape > 0 else 0.0)
        # the total since power-up: a seeded count before the storm plus the storm's rain so far
        hours = self.duration_s / 3600
        before = random.Random(f"{self.seed}:rain-total").uniform(300, 600)
        total = before + self.rain_peak_mm_h * hours * _rain_area(_clamp(p, 0, 1))
        return {
            "rain_mm_h": round(_clamp(rate, 0, 300), 1),
            "rain_total_mm": round(total, 1),
            "battery": battery,
        }

    def _wind_values(self, p: float, noise: random.Random, battery: int) -> dict[str, Value]:
        gusts = _bump(p, GUST_START, GUST_END)
        speed = _clamp(3.0 + 9.0 * gusts + noise.gauss(0, 0.5), 0, 75)
        gust = speed + 2.0 + (self.gust_peak_ms - 14.0) * gusts + abs(noise.gauss(0, 0.5))
        direction = 220 + 40 * _ramp(p, RAIN_START, PEAK) + noise.gauss(0, 8)
        return {
            "wind_speed_ms": round(speed, 1),
            "wind_gust_ms": round(_clamp(gust, speed, 75), 1),
            "wind_dir_deg": round(direction) % 360,
            "battery": battery,
        }

    def _air_values(self, p: float, noise: random.Random, battery: int, air_temp: float) -> dict[str, Value]:
        washout = _ramp(p, RAIN_START, 0.40)  # rain washes particles out of the air
        pm2_5 = _clamp(14.0 - 9.0 * washout + noise.gauss(0, 0.6), 0.5, 1000)
        pm10 = _clamp(pm2_5 * 1.6 + noise.gauss(0, 0.8), pm2_5, 1000)
        return {
            "pm2_5": round(pm2_5, 1),
            "pm10": round(pm10, 1),
            "no2": round(_clamp(32.0 - 8.0 * washout + noise.gauss(0, 2.0), 0, 2000)),
            "temperature": round(air_temp, 1),
            "humidity": round(_clamp(68.0 + 27.0 * _ramp(p, RAIN_START, 0.35) + noise.gauss(0, 1.0), 0, 100)),
            "battery": battery,
        }

    def phase(self, ts: float) -> str:
        """The description of the phase the storm is in at clock time `ts`."""
        current = "calm (before the storm)"
        for offset, text in timeline(self):
            if ts - self.start >= offset:
                current = text
        return current


def timeline(scenario: StormScenario) -> list[tuple[float, str]]:
    """The scenario's phase changes as (clock seconds after `start`, description), in order."""
    s = scenario
    lo, hi = s.fail_window
    how = (
        "goes silent" if s.failure == "silent" else "reports an implausible reading (probe fault, distance 0)"
    )
    events = [
        (0.0, f"calm: no rain, gauges near {BASE_LEVEL_MM // 10} cm, light south-westerly wind"),
        (RAIN_START, f"rain starts, rising to {s.rain_peak_mm_h} mm/h; the drain fills"),
        (RISE_START, "water rising at the Emscher gauges"),
        (GUST_START, f"wind gusts, up to {s.gust_peak_ms} m/s"),
        (RAIN_EASING, "rain easing"),
        (PEAK, "water at its peak (160-180 cm)"),
        (lo, f"{s.failing} fails: {how}"),
        (FALL_START, "water falling"),
        (CALM, f"calm: water back near {BASE_LEVEL_MM // 10} cm"),
        (1.0, "storm over"),
    ]
    if hi <= 1.0:
        events.append((hi, f"{s.failing} reports again"))
    events.sort(key=lambda e: e[0])
    return [(round(f * s.clock_duration_s, 3), text) for f, text in events]


class StormSimulator(LorawanSimulator):
    """A `LorawanSimulator` driven by a `StormScenario` whose silent sensors send nothing.

    `frames()` (and so `publish_round()` and `run()`) leaves out every sensor the scenario
    reports silent at the round's time; its frame counter simply continues afterwards.
    """

    def __init__(
        self, sensors: Sequence[SimSensor], scenario: StormScenario, clock: Clock, **kw: Any
    ) -> None:
        """`kw`: `LorawanSimulator`'s options (seed, duplicate_p, decoded_p ...)."""
        super().__init__(sensors, scenario, clock, **kw)
        self.scenario = scenario
        self._all = list(self.sensors)

    def frames(self, ts: float | None = None, only: Collection[str] | None = None) -> list[tuple[str, bytes]]:
        """One round at `ts` (default: the clock) from the sensors that are not silent."""
        now = self._clock.now() if ts is None else ts
        talking = {s.device_id for s in self._all if not self.scenario.silent(s, now)}
        return super().frames(now, talking if only is None else talking & set(only))
