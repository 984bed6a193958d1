"""The `[environment]` table: LoRaWAN weather, water and air sensors and the warning rules on them.

Rules are data: a site states which metric of which sensor group warns at what level, and the
rule engine (`controllers.environment_rules`) only interprets these tables. Every check that can
be made before the daemon runs is made here, so a typo cannot silently disarm a warning.
"""

from __future__ import annotations

from collections import Counter
from datetime import time
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from edge.settings_sections import Section, _hhmm

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"  # the API's id grammar
Id = Annotated[str, Field(pattern=_ID)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class SensorSettings(Section):
    """A LoRaWAN sensor that feeds warning rules; `group` is the set of sensors a rule reads."""

    id: Id
    dev_eui: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{16}$")]
    profile: Annotated[str, Field(min_length=1, max_length=64)]  # e.g. "water_level_ultrasonic"
    group: Id
    lat: Annotated[float, Field(ge=-90, le=90)]
    lon: Annotated[float, Field(ge=-180, le=180)]
    # Water level sensors measure the distance down to the water: level_cm = (zero_mm - distance_mm) / 10.
    zero_mm: Finite | None = None
    stale_after_s: Positive | None = None  # None: the section's stale_after_s
    # Per metric, the largest plausible change between two consecutive readings: a bigger jump
    # is a glitch (a bird on an ultrasonic gauge, a clogged rain funnel emptying), not weather.
    max_step: dict[str, Positive] = Field(default_factory=dict)


class RuleSettings(Section):
    """A warning: when `agree` sensors of `group` reach `on`, until all are back at `off`."""

    id: Id
    group: Id
    metric: Annotated[str, Field(min_length=1, max_length=64)]  # e.g. "level_cm", "rain_mm_h", "pm2_5"
    kind: Literal["threshold", "rate_of_rise"]
    on: Finite  # fire at or over this (rate_of_rise: the rise over window_s)
    off: Finite  # clear at or under this; below `on`: the hysteresis band
    window_s: Positive = 900.0  # rate_of_rise: the rise is measured over this window
    agree: Annotated[int, Field(ge=1)] = 1  # fresh, plausible sensors that must be at/over `on`
    # "HH:MM-HH:MM" local time in which the rule may fire (clearing is always allowed); may wrap midnight.
    hours: tuple[time, time] | None = None
    min_hold_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 600.0  # time hysteresis
    severity: Literal["info", "warning", "severe", "extreme"]
    mode: Literal["issue", "propose"] = "propose"  # propose: an operator confirms before it is issued
    lines: Annotated[list[Annotated[str, Field(max_length=40)]], Field(min_length=1, max_length=4)]
    event: Annotated[str, Field(min_length=1, max_length=64)] = "Warning"
    duration_s: Positive = 3600.0  # expected end: last seen firing + duration_s
    radius_m: Positive = 1500.0  # the warning area: a circle around the group's centroid
    raise_lamps: bool = False

    @field_validator("hours", mode="before")
    @classmethod
    def _hours(cls, v: object) -> object:
        if not isinstance(v, str):
            return v
        a, sep, b = v.partition("-")
        if not sep:
            raise ValueError(f"hours: {v!r} is not HH:MM-HH:MM")
        start, end = _hhmm(a, "hours"), _hhmm(b, "hours")
        if start == end:
            raise ValueError(f"hours: {v!r} is empty (start equals end)")
        return (time(start // 60, start % 60), time(end // 60, end % 60))

    @model_validator(mode="after")
    def _band(self) -> RuleSettings:
        if not self.off < self.on:
            raise ValueError(f"rule {self.id!r}: off ({self.off}) must be below on ({self.on})")
        return self


class EnvironmentSettings(Section):
    """Environment sensors and warning rules (storm, flood, air quality)."""

    sensors: list[SensorSettings] = Field(default_factory=list)
    rules: list[RuleSettings] = Field(default_factory=list)
    stale_after_s: Positive = 1800.0  # a sensor silent this long neither fires nor clears anything
    lorawan_topics: list[str] = Field(
        default_factory=lambda: ["application/+/device/+/event/up", "v3/+/devices/+/up"]
    )
    evaluate_every_s: Positive = 10.0

    @model_validator(mode="after")
    def _consistent(self) -> EnvironmentSettings:
        _unique("sensor id", [s.id for s in self.sensors])
        _unique("sensor dev_eui", [s.dev_eui.lower() for s in self.sensors])
        _unique("rule id", [r.id for r in self.rules])
        sizes: dict[str, int] = {}
        for s in self.sensors:
            sizes[s.group] = sizes.get(s.group, 0) + 1
        for r in self.rules:
            have = sizes.get(r.group, 0)
            if have < r.agree:
                raise ValueError(
                    f"rule {r.id!r}: group {r.group!r} has {have} sensor(s), fewer than agree={r.agree}"
                )
        return self


def _unique(what: str, values: list[str]) -> None:
    dup = sorted(v for v, n in Counter(values).items() if n > 1)
    if dup:
        raise ValueError(f"duplicate {what}: {', '.join(dup)}")
