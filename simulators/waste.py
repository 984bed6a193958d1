"""Waste bins that fill and trucks that empty them: `edge simulate waste`, the demo and the bench.

Bins fill by the kind of place they stand in (residential, shopping street, park): a mean
rate per bin (litres per hour, drawn around a typical days-to-full of its kind), shaped by
the weekday and the hour of the day, with noise per quarter hour, a noise factor per day and
now and then a bulky drop. A bin at its rim overflows: its fill stays at the top while the
overflow hours and litres are counted. Each bin's ultrasonic sensor reads the distance to
the surface (`Bin.distance_of` plus measurement noise) every 10-60 minutes (per bin, with
jitter), at once on an alarm (lid open, tilt, fire) and soon after the bin was emptied.
Uplinks go out as ChirpStack v4 or The Things Stack v3 messages (per bin or all one format),
with the bytes of the same profile the daemon decodes with.

`FillModel` is the pure, synchronous part (no MQTT, no clock): the bench steps it through
weeks in seconds. `TruckSim` is a truck's state machine: it follows a route of stops at the
speed of the roads it drives (straight line x detour; half a leg at the speed of the road it
leaves, half at the road it arrives on), empties bins into the `FillModel`, unloads at the
disposal site and returns to the depot. `WasteSimulator` runs both on a `Clock` and speaks
MQTT: uplinks on the LoRaWAN broker and the truck protocol (docs/fleet-protocol.md) on the
fleet broker.

Faults (sensor): stuck, out_of_range, duplicate, out_of_order, silent, lid_open, tilt, fire;
(truck): breakdown, repair. Injected at start (`--fault B0007:fire`), by `inject()`, on
MQTT (`fleet/{truck}/fault`, and `dos/sim/waste/faults` with {"target", "fault", "active"})
or at random with `fault_rate_per_day` per bin. Everything random is seeded per bin, so the
same seed gives the same fill series whatever the step size.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import enum
import math
import random
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from zoneinfo import ZoneInfo

import aiomqtt
import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from devices.bins import Bin, BinKind, load_bins
from devices.profiles.lorawan import LorawanProfile, default_profiles
from edge.clock import Clock, SimClock, SystemClock
from edge.mqtt import BrokerAddress
from edge.settings import PlaceSettings, Settings, TruckSettings, WasteSettings
from edge.tasks import close_task_group
from simulators import fault_topic
from simulators.lorawan import (
    APPLICATION_ID,
    TTS_APP,
    TTS_TENANT,
    chirpstack_event,
    network_decoded,
    tts_uplink,
)

log = structlog.get_logger(__name__)

TICK_S = 900.0
"""The fill process advances in quarter hours: the same ticks whatever the caller's step."""

PROFILE = "bin_ultrasonic"
FAULT_TOPIC = fault_topic("waste")  # `edge simulate waste`
CONNECT_TIMEOUT_S = 10.0
MAX_MESSAGE_BYTES = 1 << 20  # a route of 5000 stops is about 700 kB
EARTH_M = 6_371_000.0

SENSOR_FAULTS = ("stuck", "out_of_range", "duplicate", "out_of_order", "silent", "lid_open", "tilt", "fire")
ALARM_FAULTS = frozenset({"lid_open", "tilt", "fire"})
TRUCK_FAULTS = ("breakdown", "repair")
OUT_OF_RANGE_MM = 0xFFFF  # what many ultrasonic sensors send when no echo came back


def _norm(values: Sequence[float]) -> tuple[float, ...]:
    mean = sum(values) / len(values)
    return tuple(v / mean for v in values)


# Typical days from empty to full, median and log-normal spread across bins of a kind. Most
# residential containers need far less than weekly emptying (about 20 % in a case study),
# litter bins in a shopping street fill in days.
DAYS_TO_FULL: dict[BinKind, tuple[float, float]] = {
    "residential": (12.0, 0.45),
    "shopping": (4.0, 0.35),
    "park": (6.0, 0.4),
}
# Monday .. Sunday. Households throw out the weekend's waste on Monday; shops are busy on
# Saturday and closed on Sunday; parks fill at the weekend.
WEEKDAY: dict[BinKind, tuple[float, ...]] = {
    "residential": _norm((1.35, 1.0, 0.95, 0.95, 1.0, 0.9, 0.85)),
    "shopping": _norm((1.0, 1.0, 1.0, 1.05, 1.2, 1.55, 0.2)),
    "park": _norm((0.7, 0.65, 0.7, 0.75, 0.9, 1.6, 1.7)),
}
# Local hour 0 .. 23.
# fmt: off
HOURLY: dict[BinKind, tuple[float, ...]] = {
    "residential": _norm((0.1, 0.05, 0.05, 0.05, 0.1, 0.3, 1.2, 1.8, 1.4, 1.0, 0.9, 0.9,
                          1.0, 1.0, 0.9, 0.9, 1.1, 1.4, 1.8, 1.9, 1.6, 1.2, 0.6, 0.3)),
    "shopping": _norm((0.05, 0.02, 0.02, 0.02, 0.02, 0.05, 0.1, 0.3, 0.8, 1.4, 1.8, 2.0,
                       2.2, 2.1, 1.9, 1.9, 2.0, 2.1, 1.9, 1.4, 0.8, 0.5, 0.3, 0.1)),
    "park": _norm((0.05, 0.02, 0.02, 0.02, 0.02, 0.05, 0.1, 0.2, 0.4, 0.7, 1.1, 1.6,
                   2.0, 2.2, 2.2, 2.1, 2.0, 1.9, 1.6, 1.2, 0.8, 0.5, 0.3, 0.1)),
}
# fmt: on
TICK_SIGMA = 0.5  # log-normal noise of a quarter hour's amount
DAY_SIGMA = 0.25  # log-normal noise of a bin's day
DROP_P = 0.004  # chance per daytime quarter hour of a bulky drop (a bag, a box)
UPLINK_INTERVALS_S = (600.0, 900.0, 1200.0, 1800.0, 3600.0)
UPLINK_WEIGHTS = (1, 3, 2, 3, 1)
FormatChoice = Literal["both", "chirpstack", "tts"]


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_M * math.asin(min(1.0, math.sqrt(a)))


def leg(
    a: tuple[float, float], b: tuple[float, float], road_a: str, road_b: str, settings: WasteSettings
) -> tuple[float, float]:
    """(road metres, seconds) from `a` to `b`: straight line x detour, half at each end's road speed."""
    d = haversine_m(a[0], a[1], b[0], b[1]) * settings.detour
    speeds = settings.speeds_kmh
    slowest = min(speeds.values(), default=20.0)
    va = speeds.get(road_a, slowest) / 3.6  # type: ignore[call-overload]
    vb = speeds.get(road_b, slowest) / 3.6  # type: ignore[call-overload]
    return d, d * (0.5 / va + 0.5 / vb)


# -- the fill process and the sensor --------------------------------------------


@dataclass(frozen=True, slots=True)
class Reading:
    """What one bin sensor measured and sends in one uplink."""

    bin_id: str
    dev_eui: str
    ts: float
    distance_mm: int
    fill: float  # the true fill at the time, for tests and the bench (not on the wire)
    battery: int
    battery_v: float
    temperature: int
    lid_open: bool = False
    tilt: bool = False
    fire: bool = False
    transport: frozenset[str] = frozenset()  # duplicate / out_of_order: how the frame travels

    def values(self) -> dict[str, int | float | bool]:
        """The values the bin profile encodes."""
        return {
            "distance_mm": self.distance_mm,
            "battery": self.battery,
            "lid_open": self.lid_open,
            "tilt": self.tilt,
            "fire": self.fire,
            "temperature": self.temperature,
            "battery_v": self.battery_v,
        }


@dataclass(slots=True)
class _BinState:
    spec: Bin
    rate_lph: float
    litres: float
    t: float  # advanced to
    rng: random.Random  # the fill process
    srng: random.Random  # the sensor
    erng: random.Random  # emptying residue
    frng: random.Random  # random faults
    interval_s: float
    next_up: float
    battery: float
    day: int = -1
    day_factor: float = 1.0
    full: bool = False
    overflow_events: int = 0
    overflow_s: float = 0.0
    overflow_l: float = 0.0
    emptied: int = 0
    collected_l: float = 0.0
    faults: dict[str, float] = field(default_factory=dict)  # fault -> until (inf: until cleared)
    stuck_mm: int | None = None
    last_mm: int = 0


@dataclass(frozen=True, slots=True)
class BinStats:
    """One bin's counters."""

    fill: float
    emptied: int
    overflow_events: int
    overflow_hours: float
    overflow_l: float
    collected_l: float


class FillModel:
    """Bins filling and their sensors reading, stepped in quarter hours; pure and seeded.

    `advance(ts)` brings every bin to `ts` and queues the readings their sensors made on the
    way (`take_readings()`); `empty(bin, ts)` is a truck lifting it. Quarter-hour ticks sit
    on fixed epoch boundaries and each bin draws from its own random streams, so the fill
    series is the same for any sequence of `advance` calls.
    """

    def __init__(
        self,
        bins: Sequence[Bin],
        *,
        start: float,
        seed: int = 0,
        timezone: str | ZoneInfo = "Europe/Berlin",
        initial: tuple[float, float] = (0.05, 0.6),
        fault_rate_per_day: float = 0.0,
        fault_kinds: Sequence[str] = SENSOR_FAULTS,
        rate_scale: float = 1.0,
    ) -> None:
        if not bins:
            raise ValueError("no bins to simulate")
        unknown = [f for f in fault_kinds if f not in SENSOR_FAULTS]
        if unknown:
            raise ValueError(f"unknown sensor fault(s) {unknown}; known: {', '.join(SENSOR_FAULTS)}")
        self.tz = timezone if isinstance(timezone, ZoneInfo) else ZoneInfo(timezone)
        self.seed = seed
        self.fault_rate_per_day = fault_rate_per_day
        self._fault_kinds = tuple(fault_kinds)
        self._bins: dict[str, _BinState] = {}
        self._readings: list[Reading] = []
        self._local: dict[int, tuple[int, int, int]] = {}
        for b in bins:
            rng = random.Random(f"{seed}:{b.id}:fill")
            median, sigma = DAYS_TO_FULL[b.kind]
            days = median * math.exp(rng.gauss(0.0, sigma))
            srng = random.Random(f"{seed}:{b.id}:sensor")
            interval = srng.choices(UPLINK_INTERVALS_S, weights=UPLINK_WEIGHTS)[0]
            self._bins[b.id] = _BinState(
                spec=b,
                rate_lph=rate_scale * b.volume_l / (days * 24.0),
                litres=b.volume_l * rng.uniform(*initial),
                t=start,
                rng=rng,
                srng=srng,
                erng=random.Random(f"{seed}:{b.id}:empty"),
                frng=random.Random(f"{seed}:{b.id}:faults"),
                interval_s=interval,
                next_up=start + srng.uniform(0.0, interval),
                battery=srng.uniform(60.0, 100.0),
            )

    # -- views -------------------------------------------------------------------

    @property
    def bins(self) -> dict[str, Bin]:
        return {k: st.spec for k, st in self._bins.items()}

    def fill(self, bin_id: str) -> float:
        """The true fill fraction 0..1 (1: at the rim or overflowing)."""
        st = self._bins[bin_id]
        return min(1.0, st.litres / st.spec.volume_l)

    def fills(self) -> dict[str, float]:
        return {k: min(1.0, st.litres / st.spec.volume_l) for k, st in self._bins.items()}

    def litres(self, bin_id: str) -> float:
        return self._bins[bin_id].litres

    def rate_lph(self, bin_id: str) -> float:
        """The bin's mean fill rate (litres per hour, before weekday and hour shaping)."""
        return self._bins[bin_id].rate_lph

    def interval_s(self, bin_id: str) -> float:
        return self._bins[bin_id].interval_s

    def faults(self, bin_id: str) -> frozenset[str]:
        return frozenset(self._bins[bin_id].faults)

    def stats(self, bin_id: str) -> BinStats:
        st = self._bins[bin_id]
        return BinStats(
            fill=self.fill(bin_id),
            emptied=st.emptied,
            overflow_events=st.overflow_events,
            overflow_hours=st.overflow_s / 3600.0,
            overflow_l=st.overflow_l,
            collected_l=st.collected_l,
        )

    @property
    def emptied(self) -> int:
        return sum(st.emptied for st in self._bins.values())

    @property
    def overflow_events(self) -> int:
        return sum(st.overflow_events for st in self._bins.values())

    @property
    def overflow_hours(self) -> float:
        """Bin-hours spent overflowing."""
        return sum(st.overflow_s for st in self._bins.values()) / 3600.0

    @property
    def overflowing(self) -> list[str]:
        return [k for k, st in self._bins.items() if st.full]

    # -- stepping ----------------------------------------------------------------

    def advance(self, ts: float) -> None:
        """Bring every bin to `ts` (earlier times are ignored: time only moves on)."""
        for st in self._bins.values():
            self._advance(st, ts)
        if len(self._local) > 20_000:
            self._local.clear()

    def advance_bin(self, bin_id: str, ts: float) -> None:
        """Bring one bin to `ts` (a truck stands at it); the others stay where they are."""
        self._advance(self._bins[bin_id], ts)

    def take_readings(self) -> list[Reading]:
        """The readings made since the last call, oldest first."""
        out, self._readings = self._readings, []
        out.sort(key=lambda r: r.ts)
        return out

    def empty(self, bin_id: str, ts: float) -> tuple[float, float]:
        """A truck lifts the bin at `ts`: (litres, kg) taken; a little stays; the sensor reports soon."""
        st = self._bins[bin_id]
        self._advance(st, ts)
        residue = st.spec.volume_l * st.erng.uniform(0.0, 0.03)
        taken = max(0.0, st.litres - residue)
        st.litres = min(st.litres, residue)
        st.full = False
        st.emptied += 1
        st.collected_l += taken
        st.next_up = min(st.next_up, ts + st.erng.uniform(30.0, 120.0))
        return taken, taken * st.spec.density_kg_l

    def inject(self, bin_id: str, fault: str, ts: float, duration_s: float | None = None) -> None:
        """Start a sensor fault on a bin (until cleared, or for `duration_s`)."""
        if fault not in SENSOR_FAULTS:
            raise ValueError(f"unknown bin fault {fault!r}; known: {', '.join(SENSOR_FAULTS)}")
        st = self._bins.get(bin_id)
        if st is None:
            raise KeyError(f"unknown bin {bin_id!r}")
        self._advance(st, ts)
        self._start_fault(st, fault, ts, math.inf if duration_s is None else ts + duration_s)

    def clear(self, bin_id: str, fault: str | None = None, ts: float | None = None) -> None:
        """End one fault (or all) on a bin; an alarm ending is reported at once."""
        st = self._bins[bin_id]
        if ts is not None:
            self._advance(st, ts)
        ended = list(st.faults) if fault is None else [fault] if fault in st.faults else []
        for f in ended:
            del st.faults[f]
        if "stuck" in ended:
            st.stuck_mm = None
        if ALARM_FAULTS.intersection(ended):
            st.next_up = min(st.next_up, st.t)

    def _start_fault(self, st: _BinState, fault: str, ts: float, until: float) -> None:
        st.faults[fault] = until
        if fault == "stuck":
            st.stuck_mm = st.last_mm or round(st.spec.distance_of(st.litres / st.spec.volume_l))
        if fault in ALARM_FAULTS:
            st.next_up = min(st.next_up, ts)  # an alarm goes out at once

    def _local_time(self, tick: int) -> tuple[int, int, int]:
        """(weekday, hour, day ordinal) in local time of the tick starting at tick x TICK_S."""
        got = self._local.get(tick)
        if got is None:
            d = datetime.fromtimestamp(tick * TICK_S, self.tz)
            got = (d.weekday(), d.hour, d.toordinal())
            self._local[tick] = got
        return got

    def _advance(self, st: _BinState, ts: float) -> None:
        for _ in range(1_000_000):  # ticks and uplinks until ts; bounded
            boundary = (math.floor(st.t / TICK_S) + 1) * TICK_S
            if st.next_up <= ts and st.next_up <= boundary:
                self._read(st, st.next_up)
                continue
            if boundary > ts:
                break
            self._tick(st, int(boundary // TICK_S) - 1)
            st.t = boundary
        st.t = max(st.t, ts)

    def _tick(self, st: _BinState, tick: int) -> None:
        spec = st.spec
        weekday, hour, day = self._local_time(tick)
        rng = st.rng
        if day != st.day:
            st.day = day
            st.day_factor = math.exp(rng.gauss(-(DAY_SIGMA**2) / 2, DAY_SIGMA))
        shape = WEEKDAY[spec.kind][weekday] * HOURLY[spec.kind][hour]
        noise = math.exp(rng.gauss(-(TICK_SIGMA**2) / 2, TICK_SIGMA))
        add = st.rate_lph * (TICK_S / 3600.0) * shape * st.day_factor * noise
        if shape > 0.5 and rng.random() < DROP_P:
            add += spec.volume_l * rng.uniform(0.02, 0.08)
        litres = st.litres + add
        if litres >= spec.volume_l:
            st.overflow_l += litres - spec.volume_l
            litres = spec.volume_l
            if not st.full:
                st.full = True
                st.overflow_events += 1
        st.litres = litres
        if st.full:
            st.overflow_s += TICK_S
        end = (tick + 1) * TICK_S
        for f, until in list(st.faults.items()):
            if until <= end:
                self.clear(spec.id, f)
        if self.fault_rate_per_day > 0 and st.frng.random() < self.fault_rate_per_day * TICK_S / 86_400:
            fault = st.frng.choice(self._fault_kinds)
            self._start_fault(st, fault, end, end + st.frng.uniform(3600.0, 12 * 3600.0))

    def _read(self, st: _BinState, ts: float) -> None:
        spec, rng = st.spec, st.srng
        st.next_up = ts + st.interval_s * rng.uniform(0.9, 1.1)
        faults = st.faults
        if "silent" in faults:
            return
        fill = min(1.0, st.litres / spec.volume_l)
        if fill >= 1.0:  # heaped above the rim: the surface is inside the blind zone
            mm = spec.blind_zone_mm - rng.uniform(0.0, 80.0)
        else:
            mm = spec.distance_of(fill) + rng.gauss(0.0, 6.0)
        if "lid_open" in faults:
            mm = rng.uniform(1500.0, 4000.0)  # the sensor in the lid looks at the sky
        if "tilt" in faults:
            mm = rng.uniform(300.0, 3000.0)  # knocked over: it looks along the ground
        distance = max(0, round(mm))
        if "stuck" in faults and st.stuck_mm is not None:
            distance = st.stuck_mm
        if "out_of_range" in faults:
            distance = (
                OUT_OF_RANGE_MM if rng.random() < 0.5 else round(rng.uniform(spec.height_mm + 300, 4990))
            )
        st.last_mm = distance
        hour = self._local_time(int(ts // TICK_S))[1]
        temp = 8.0 + 4.0 * math.sin(2 * math.pi * (hour - 9) / 24) + rng.gauss(0.0, 1.0)
        fire = "fire" in faults
        if fire:
            temp = rng.uniform(70.0, 95.0)
        st.battery = max(0.0, st.battery - 0.003)
        self._readings.append(
            Reading(
                bin_id=spec.id,
                dev_eui=spec.dev_eui,
                ts=ts,
                distance_mm=min(0xFFFF, distance),
                fill=fill,
                battery=round(st.battery),
                battery_v=round(3.0 + 0.006 * st.battery, 3),
                temperature=max(-128, min(127, round(temp))),
                lid_open="lid_open" in faults,
                tilt="tilt" in faults,
                fire=fire,
                transport=frozenset(f for f in ("duplicate", "out_of_order") if f in faults),
            )
        )


# -- uplinks on the wire ---------------------------------------------------------


class UplinkEncoder:
    """Readings to network-server messages: ChirpStack v4 or TTS v3, with the field's quirks.

    Per bin a frame counter and a format; frames are duplicated (same deduplication id) with
    `duplicate_p` or under a `duplicate` fault, and held back behind the bin's next frame
    with `out_of_order_p` or under an `out_of_order` fault.
    """

    def __init__(
        self,
        bins: Sequence[Bin],
        *,
        seed: int = 0,
        formats: FormatChoice = "both",
        duplicate_p: float = 0.03,
        out_of_order_p: float = 0.01,
        decoded_p: float = 0.3,
        profile: LorawanProfile | None = None,
        app: str | None = None,
    ) -> None:
        self._profile = profile if profile is not None else default_profiles()[PROFILE]
        self._rng = random.Random(f"{seed}:uplinks")
        self._seed = seed
        self._format: dict[str, Literal["chirpstack", "tts"]] = {}
        for i, b in enumerate(bins):
            if formats == "both":
                self._format[b.id] = "chirpstack" if i % 2 == 0 else "tts"
            else:
                self._format[b.id] = formats
        self._f_cnt = {b.id: 0 for b in bins}
        self._held: dict[str, list[tuple[str, bytes]]] = {}
        self._dup_p, self._ooo_p, self._decoded_p = duplicate_p, out_of_order_p, decoded_p
        self._app = app
        self._ids = 0
        self.frames = 0
        self.messages = 0
        self.duplicates = 0
        self.out_of_order = 0

    def format_of(self, bin_id: str) -> Literal["chirpstack", "tts"]:
        return self._format[bin_id]

    def topics(self) -> tuple[str, str]:
        """Subscriptions that match exactly these uplinks (both formats)."""
        return (
            f"application/{self._app or APPLICATION_ID}/device/+/event/up",
            f"v3/{self._app or TTS_APP}@{TTS_TENANT}/devices/+/up",
        )

    def encode(self, r: Reading) -> list[tuple[str, bytes]]:
        """The messages for one reading (none while it is held back; two for a duplicate)."""
        rng = self._rng
        f_cnt = self._f_cnt[r.bin_id]
        self._f_cnt[r.bin_id] = f_cnt + 1
        payload = self._profile.encode(r.values())
        self._ids += 1
        dedup = f"{self._seed & 0xFFFFFFFF:08x}-{self._ids:024x}"
        gateways = [
            (f"{0xB827EB000000 + g:016x}", float(rng.randint(-120, -70)), round(rng.uniform(-12, 10), 1))
            for g in rng.sample(range(6), rng.randint(1, 3))
        ]
        decoded = network_decoded(self._profile, payload) if rng.random() < self._decoded_p else None
        port = self._profile.f_ports[0]
        fmt = self._format[r.bin_id]
        if fmt == "chirpstack":
            msg = chirpstack_event(r.dev_eui, r.bin_id, f_cnt=f_cnt, f_port=port, payload=payload, ts=r.ts,
                                   dedup_id=dedup, gateways=gateways, decoded=decoded, profile_name=PROFILE,
                                   application_id=self._app or APPLICATION_ID)  # fmt: skip
        else:
            msg = tts_uplink(r.dev_eui, r.bin_id, f_cnt=f_cnt, f_port=port, payload=payload, ts=r.ts,
                             dedup_id=dedup, gateways=gateways, decoded=decoded, app=self._app or TTS_APP)  # fmt: skip
        out = [msg]
        self.frames += 1
        if "duplicate" in r.transport or rng.random() < self._dup_p:
            out.append(msg)
            self.duplicates += 1
        held = self._held.pop(r.bin_id, [])
        if "out_of_order" in r.transport or rng.random() < self._ooo_p:
            if held:  # already one waiting: let it go behind this one
                out += held
            else:
                self._held[r.bin_id] = out
                return []
        elif held:
            out += held
            self.out_of_order += 1
        self.messages += len(out)
        return out


# -- trucks ----------------------------------------------------------------------


class StopMessage(BaseModel):
    """One stop of a route (docs/fleet-protocol.md)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    seq: int | None = None
    kind: Literal["bin", "disposal", "depot"]
    id: str = Field(min_length=1, max_length=128)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    eta_ts: float | None = None
    window: tuple[float, float] | None = None


class RouteMessage(BaseModel):
    """`fleet/{truck}/route`: the stops to drive, replacing any earlier route."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    route_id: str = Field(min_length=1, max_length=200)
    issued_ts: float | None = None
    start_ts: float | None = None  # do not start before (the shift start); absent: at once
    stops: list[StopMessage] = Field(max_length=5000)


class FaultMessage(BaseModel):
    """`dos/sim/waste/faults`: {"target": bin or truck id, "fault": ..., "active": true}."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str = Field(min_length=1, max_length=128)
    fault: Literal[
        "stuck", "out_of_range", "duplicate", "out_of_order", "silent", "lid_open", "tilt", "fire",
        "breakdown", "repair",
    ]  # fmt: skip
    active: bool = True
    duration_s: float | None = Field(default=None, gt=0)


class Status(enum.StrEnum):
    IDLE = "idle"
    DRIVING = "driving"
    COLLECTING = "collecting"
    UNLOADING = "unloading"
    RETURNING = "returning"
    BROKEN = "broken"


class _Phase(enum.Enum):
    IDLE = "idle"
    DRIVING = "driving"
    WAITING = "waiting"  # at a bin before its zone's window opens
    SERVING = "serving"
    BROKEN = "broken"


@dataclass(frozen=True, slots=True)
class TruckView:
    """A truck as tests and the demo see it."""

    id: str
    lat: float
    lon: float
    status: Status
    route_id: str | None
    stop_index: int
    load_l: float
    load_kg: float
    odometer_km: float
    km_total: float
    emptied: int


class TruckSim:
    """One truck following its route; `step(now)` moves it on, returning the events that happened.

    Events are (type, fields) pairs stamped with their own simulated time; the caller adds
    `seq` and publishes them. A route's bins are emptied in `model`.
    """

    def __init__(self, spec: TruckSettings, settings: WasteSettings, model: FillModel, now: float) -> None:
        if settings.depot is None or settings.disposal is None:
            raise ValueError("waste settings need a depot and a disposal site for trucks")
        self.spec = spec
        self._settings = settings
        self._depot: PlaceSettings = settings.depot
        self._disposal: PlaceSettings = settings.disposal
        self._model = model
        self._bins = model.bins
        self.lat, self.lon = self._depot.lat, self._depot.lon
        self.road = "main"
        self.status = Status.IDLE
        self.route_id: str | None = None
        self.stops: list[StopMessage] = []
        self.stop_index = 0
        self.load_l = 0.0
        self.load_kg = 0.0
        self.odometer_km = 0.0
        self.km_total = 0.0
        self.emptied = 0
        self.speed_kmh = 0.0
        self._odo_day = -1
        self._phase = _Phase.IDLE
        self._t = now
        self._leg_from = (self.lat, self.lon)
        self._leg_to = (self.lat, self.lon)
        self._leg_to_road = "main"
        self._leg_km = 0.0
        self._leg_s = 0.0
        self._leg_done_s = 0.0
        self._leg_km_done = 0.0
        self._target: StopMessage | None = None  # None while driving: the implicit way home
        self._busy_until = now
        self.changed = True  # status or stop index changed since the last state message

    def view(self) -> TruckView:
        return TruckView(self.spec.id, self.lat, self.lon, self.status, self.route_id, self.stop_index,
                         self.load_l, self.load_kg, self.odometer_km, self.km_total, self.emptied)  # fmt: skip

    def state(self, ts: float) -> dict[str, Any]:
        """The `fleet/{truck}/state` payload."""
        return {
            "ts": ts,
            "lat": round(self.lat, 6),
            "lon": round(self.lon, 6),
            "speed_kmh": round(self.speed_kmh, 1),
            "load_l": round(self.load_l, 1),
            "load_kg": round(self.load_kg, 1),
            "status": self.status.value,
            "route_id": self.route_id,
            "stop_index": self.stop_index,
            "odometer_km": round(self.odometer_km, 3),
        }

    def _set(self, status: Status) -> None:
        if status is not self.status:
            self.status = status
            self.changed = True

    # -- commands ----------------------------------------------------------------

    def take_route(self, route: RouteMessage, now: float) -> list[tuple[str, dict[str, Any]]]:
        """A new route replaces the old one; the truck goes on from where it is."""
        events = self.step(now)
        if self._phase is _Phase.BROKEN:
            return [
                *events,
                ("route_rejected", {"ts": now, "route_id": route.route_id, "reason": "broken_down"}),
            ]
        if route.route_id == self.route_id and route.stops == self.stops:
            return events  # the retained copy again after a reconnect: nothing new
        day = datetime.fromtimestamp(now, self._model.tz).toordinal()
        if day != self._odo_day and self.status is Status.IDLE:
            self._odo_day, self.odometer_km = day, 0.0  # a new shift
        self.route_id, self.stops, self.stop_index = route.route_id, list(route.stops), 0
        self.changed = True
        events.append(("route_accepted", {"ts": now, "route_id": route.route_id}))
        if self._phase is _Phase.IDLE and route.start_ts is not None and route.start_ts > now:
            # Before the shift: stand still until start_ts (served as a pause with no target).
            self._target, self._phase, self._busy_until = None, _Phase.SERVING, route.start_ts
            self._t = min(self._t, now)
        elif self._phase in (_Phase.IDLE, _Phase.DRIVING, _Phase.WAITING):
            events += self._next_leg(now)
        # serving: finish the lift or unload first, then follow the new stops
        return events

    def breakdown(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        events = self.step(now)
        if self._phase is _Phase.BROKEN:
            return events
        self._phase = _Phase.BROKEN
        self.speed_kmh = 0.0
        self._set(Status.BROKEN)
        events.append(("breakdown", {"ts": now, "route_id": self.route_id, "lat": self.lat, "lon": self.lon}))
        self.stops = self.stops[: self.stop_index]  # it cannot go on: the rest is for a re-plan
        return events

    def repair(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        events = self.step(now)
        if self._phase is _Phase.BROKEN:
            self._phase = _Phase.IDLE
            self._set(Status.IDLE)
        return events

    # -- moving ------------------------------------------------------------------

    def step(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        """Move on to `now`: drive, wait for a window, lift bins, unload; bounded per call."""
        events: list[tuple[str, dict[str, Any]]] = []
        t = self._t
        for _ in range(10_000):
            if t >= now or self._phase in (_Phase.IDLE, _Phase.BROKEN):
                break
            if self._phase is _Phase.DRIVING:
                dt = min(now - t, self._leg_s - self._leg_done_s)
                self._leg_done_s += dt
                t += dt
                frac = 1.0 if self._leg_s <= 0 else min(1.0, self._leg_done_s / self._leg_s)
                km = self._leg_km * frac
                before = self._leg_km_done
                self._leg_km_done = km
                self.odometer_km += km - before
                self.km_total += km - before
                a, b = self._leg_from, self._leg_to
                self.lat, self.lon = a[0] + (b[0] - a[0]) * frac, a[1] + (b[1] - a[1]) * frac
                if frac >= 1.0:
                    events += self._arrive(t)
            else:  # waiting or serving: busy until a time
                t = min(now, self._busy_until)
                if t >= self._busy_until:
                    events += self._finish(t)
        self._t = max(self._t, now)
        return events

    def _start_leg(self, to: tuple[float, float], road: str, now: float) -> None:
        metres, seconds = leg((self.lat, self.lon), to, self.road, road, self._settings)
        self._leg_from, self._leg_to, self._leg_to_road = (self.lat, self.lon), to, road
        self._leg_km, self._leg_s, self._leg_done_s, self._leg_km_done = metres / 1000, seconds, 0.0, 0.0
        self.speed_kmh = 0.0 if seconds <= 0 else metres / seconds * 3.6
        self._phase = _Phase.DRIVING
        self._t = min(self._t, now)

    def _next_leg(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        if self.stop_index < len(self.stops):
            stop = self.stops[self.stop_index]
            self._target = stop
            road = self._bins[stop.id].road_class if stop.kind == "bin" and stop.id in self._bins else "main"
            self._start_leg((stop.lat, stop.lon), road, now)
            self._set(Status.RETURNING if stop.kind == "depot" else Status.DRIVING)
            return []
        # out of stops without a depot stop: home by itself
        self._target = None
        depot = (self._depot.lat, self._depot.lon)
        if haversine_m(self.lat, self.lon, *depot) < 1.0:
            return self._done(now)
        self._start_leg(depot, "main", now)
        self._set(Status.RETURNING)
        return []

    def _done(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        self._phase = _Phase.IDLE
        self.speed_kmh = 0.0
        self._set(Status.IDLE)
        return [("route_done", {"ts": now, "route_id": self.route_id})]

    def _arrive(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        self.road = self._leg_to_road
        self.speed_kmh = 0.0
        stop = self._target
        if stop is None:
            return self._done(now)
        if stop.kind == "depot":
            self.stop_index += 1
            self.changed = True
            return self._done(now) if self.stop_index >= len(self.stops) else self._next_leg(now)
        if stop.kind == "disposal":
            self._phase = _Phase.SERVING
            self._busy_until = now + self._disposal.service_s
            self._set(Status.UNLOADING)
            return []
        if stop.id not in self._bins:
            return self._skip(stop, "not_found", now)
        self._set(Status.COLLECTING)
        if stop.window is not None and now < stop.window[0]:
            self._phase = _Phase.WAITING
            self._busy_until = stop.window[0]
            return []
        self._phase = _Phase.SERVING
        self._busy_until = now + self._settings.service_s
        return []

    def _skip(self, stop: StopMessage, reason: str, now: float) -> list[tuple[str, dict[str, Any]]]:
        events = [("skipped", {"ts": now, "route_id": self.route_id, "bin": stop.id, "reason": reason})]
        self.stop_index += 1
        self.changed = True
        return events + self._next_leg(now)

    def _finish(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        stop = self._target
        if self._phase is _Phase.WAITING:
            self._phase = _Phase.SERVING
            self._busy_until = now + self._settings.service_s
            return []
        if stop is None:  # a route replaced while serving, nothing targeted
            return self._next_leg(now)
        events: list[tuple[str, dict[str, Any]]] = []
        if stop.kind == "disposal":
            events.append(("unloaded", {"ts": now, "route_id": self.route_id,
                                        "load_l": round(self.load_l, 1), "load_kg": round(self.load_kg, 1)}))  # fmt: skip
            self.load_l = self.load_kg = 0.0
        else:
            b = self._bins[stop.id]
            litres = self._model.litres(b.id)
            if (
                self.load_l + litres > self.spec.volume_l
                or self.load_kg + litres * b.density_kg_l > self.spec.weight_kg
            ):
                return self._skip_current(stop, "truck_full", now)
            taken_l, taken_kg = self._model.empty(b.id, now)
            self.load_l += taken_l
            self.load_kg += taken_kg
            self.emptied += 1
            events.append(("emptied", {"ts": now, "route_id": self.route_id, "bin": b.id, "lat": b.lat, "lon": b.lon,
                                       "load_l": round(self.load_l, 1), "load_kg": round(self.load_kg, 1)}))  # fmt: skip
        if self._stop_current(stop):
            self.stop_index += 1
            self.changed = True
        return events + self._next_leg(now)

    def _stop_current(self, stop: StopMessage) -> bool:
        """Whether `stop` is still the route's next stop (a new route may have come meanwhile)."""
        return self.stop_index < len(self.stops) and self.stops[self.stop_index] is stop

    def _skip_current(self, stop: StopMessage, reason: str, now: float) -> list[tuple[str, dict[str, Any]]]:
        if self._stop_current(stop):
            return self._skip(stop, reason, now)
        return [("skipped", {"ts": now, "route_id": self.route_id, "bin": stop.id, "reason": reason})]


# -- the simulator on MQTT ---------------------------------------------------------


class SimState(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


@dataclass(slots=True)
class WasteSimStats:
    """What the simulator did and sent."""

    uplinks: int = 0  # frames
    messages: int = 0  # uplink messages on the wire (duplicates included)
    events: int = 0
    states: int = 0
    dropped: int = 0  # messages lost while a broker was away
    refused: int = 0  # bad route or fault messages


@dataclass(slots=True)
class _Link:
    url: str
    subscriptions: tuple[str, ...]
    queue: collections.deque[tuple[str, bytes, int, bool]]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)


def parse_fault(spec: str) -> tuple[str, str]:
    """ "TARGET:FAULT" (a bin or truck id and a fault) or a ValueError saying what is wrong."""
    target, sep, fault = spec.rpartition(":")
    known = (*SENSOR_FAULTS, *TRUCK_FAULTS)
    if not sep or not target or fault not in known:
        raise ValueError(f"fault {spec!r}: expected TARGET:FAULT with FAULT one of {', '.join(known)}")
    return target, fault


class WasteSimulator:
    """Bins with fill sensors and collection trucks on one clock, talking MQTT.

    Uplinks go to `mqtt_url`; the truck protocol runs on `fleet_mqtt_url` (the settings'
    `fleet_mqtt_url`, else `mqtt_url`). `async with` connects (and waits until subscribed),
    runs the step loop, and on exit cancels and awaits everything it started.
    """

    def __init__(
        self,
        settings: WasteSettings,
        bins: Sequence[Bin],
        clock: Clock,
        *,
        mqtt_url: str,
        fleet_mqtt_url: str | None = None,
        seed: int = 0,
        timezone: str = "Europe/Berlin",
        faults: Sequence[str] = (),
        fault_rate_per_day: float = 0.0,
        formats: FormatChoice = "both",
        step_s: float = 10.0,
        state_every_s: float = 20.0,
        duplicate_p: float = 0.03,
        out_of_order_p: float = 0.01,
        initial: tuple[float, float] = (0.05, 0.6),
        app: str | None = None,
        client_id: str = "",
        uplink_qos: int = 1,
    ) -> None:
        BrokerAddress.parse(mqtt_url)  # a bad URL fails here, naming itself
        if uplink_qos not in (0, 1):
            raise ValueError(f"uplink_qos must be 0 or 1, not {uplink_qos!r}")
        # A network server forwards uplinks at QoS 0 or 1; the ingest copes with both
        # (duplicates and out-of-order frames are expected either way).
        self._uplink_qos = uplink_qos
        fleet_url = fleet_mqtt_url or settings.fleet_mqtt_url or mqtt_url
        BrokerAddress.parse(fleet_url)
        self._clock = clock
        self._settings = settings
        self._seed = seed
        now = clock.now()
        self.model = FillModel(bins, start=now, seed=seed, timezone=timezone, initial=initial,
                               fault_rate_per_day=fault_rate_per_day)  # fmt: skip
        self.encoder = UplinkEncoder(bins, seed=seed, formats=formats, duplicate_p=duplicate_p,
                                     out_of_order_p=out_of_order_p, app=app)  # fmt: skip
        self._trucks = {t.id: TruckSim(t, settings, self.model, now) for t in settings.trucks}
        self._seq = dict.fromkeys(self._trucks, 0)
        self._state_at = dict.fromkeys(self._trucks, -math.inf)
        self._start_faults = [parse_fault(f) for f in faults]
        for target, fault in self._start_faults:
            self._check_target(target, fault)
        self._step_s = step_s
        self._state_every_s = state_every_s
        self.stats = WasteSimStats()
        self._client_id = client_id or f"waste-sim-{seed}-{id(self):x}"
        subs = (*(f"fleet/{t}/{kind}" for t in self._trucks for kind in ("route", "fault")), FAULT_TOPIC)
        self._links: dict[str, _Link] = {}
        self._uplink = self._link(mqtt_url, ())
        self._fleet = self._link(fleet_url, subs)
        self._state = SimState.UNOPENED
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stepped = asyncio.Event()

    def _link(self, url: str, subs: tuple[str, ...]) -> _Link:
        link = self._links.get(url)
        if link is None:
            link = self._links[url] = _Link(url, subs, collections.deque(maxlen=100_000))
        elif subs:
            link.subscriptions = link.subscriptions + subs
        return link

    def _check_target(self, target: str, fault: str) -> None:
        if fault in TRUCK_FAULTS:
            if target not in self._trucks:
                raise ValueError(f"fault {target}:{fault}: no truck {target!r} ({', '.join(self._trucks)})")
        elif target not in self.model.bins:
            raise ValueError(f"fault {target}:{fault}: no bin {target!r}")

    # -- views for tests and the demo -----------------------------------------------

    @property
    def state(self) -> SimState:
        return self._state

    @property
    def bins(self) -> dict[str, Bin]:
        return self.model.bins

    def devices(self) -> dict[str, tuple[str, str]]:
        """DevEUI -> (bin id, profile name): the mapping `UplinkIngest` takes."""
        return {b.dev_eui: (b.id, PROFILE) for b in self.model.bins.values()}

    def fills(self) -> dict[str, float]:
        """True fill fractions now (the sensors report them with noise)."""
        return self.model.fills()

    def trucks(self) -> dict[str, TruckView]:
        return {k: t.view() for k, t in self._trucks.items()}

    def truck_positions(self) -> dict[str, tuple[float, float]]:
        return {k: (t.lat, t.lon) for k, t in self._trucks.items()}

    @property
    def emptied(self) -> int:
        return self.model.emptied

    @property
    def overflow_events(self) -> int:
        return self.model.overflow_events

    @property
    def overflow_hours(self) -> float:
        return self.model.overflow_hours

    @property
    def km_driven(self) -> float:
        return sum(t.km_total for t in self._trucks.values())

    def uplink_topics(self) -> tuple[str, str]:
        return self.encoder.topics()

    # -- faults ----------------------------------------------------------------------

    def inject(
        self, target: str, fault: str, *, active: bool = True, duration_s: float | None = None
    ) -> None:
        """Start (or with active=False end) a fault on a bin or a truck; ValueError if unknown."""
        self._check_target(target, fault)
        now = self._clock.now()
        if fault == "breakdown" and active:
            self._emit(target, self._trucks[target].breakdown(now))
        elif fault in {"repair", "breakdown"}:
            self._emit(target, self._trucks[target].repair(now))
        elif active:
            self.model.inject(target, fault, now, duration_s)
        else:
            self.model.clear(target, fault, now)
        self._wake_step()

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state is not SimState.UNOPENED:
            raise RuntimeError(f"simulator is {self._state.value}; it cannot be opened again")
        self._state = SimState.OPENED
        tg = asyncio.TaskGroup()
        await tg.__aenter__()
        self._tg = tg
        for i, link in enumerate(self._links.values()):
            self._tasks.append(tg.create_task(self._link_main(link, i), name=f"waste_sim.mqtt[{link.url}]"))
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S + 2):
                for link in self._links.values():
                    await link.ready.wait()
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        for target, fault in self._start_faults:
            self.inject(target, fault)
        now = self._clock.now()
        for tid in self._trucks:
            self._publish_state(tid, now)
        self._tasks.append(tg.create_task(self._step_loop(), name="waste_sim.step"))
        log.info("sim_waste_started", bins=len(self.model.bins), trucks=len(self._trucks), seed=self._seed)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._state is SimState.CLOSED:
            return
        self._state = SimState.CLOSED
        await close_task_group(self._tg, self._tasks, exc_type, exc, tb)

    # -- stepping ----------------------------------------------------------------------

    def step(self, now: float | None = None) -> None:
        """Move trucks and bins on to `now` and queue what they send (the loop calls this)."""
        now = self._clock.now() if now is None else now
        for tid, truck in self._trucks.items():
            self._emit(tid, truck.step(now))
        self.model.advance(now)
        for r in self.model.take_readings():
            self.stats.uplinks += 1
            for topic, payload in self.encoder.encode(r):
                self.stats.messages += 1
                self._send(self._uplink, topic, payload, self._uplink_qos, False)
        for tid, truck in self._trucks.items():
            every = self._state_every_s if truck.status not in (Status.IDLE, Status.BROKEN) else 300.0
            if truck.changed or now - self._state_at[tid] >= every:
                self._publish_state(tid, now)

    def _wake_step(self) -> None:
        self._stepped.set()

    async def _step_loop(self) -> None:
        min_real_s = 0.02
        for _ in range(100_000_000):
            self.step()
            interval = max(self._step_s, min_real_s * self._clock.speed)
            self._stepped.clear()
            try:
                async with asyncio.timeout(interval / self._clock.speed):
                    await self._stepped.wait()  # an injected fault or a new route: step at once
            except TimeoutError:
                pass

    def _emit(self, truck_id: str, events: Iterable[tuple[str, dict[str, Any]]]) -> None:
        for kind, fields in events:
            self._seq[truck_id] += 1
            body = {"type": kind, **fields, "seq": self._seq[truck_id]}
            self.stats.events += 1
            self._send(self._fleet, f"fleet/{truck_id}/event", orjson.dumps(body), 1, False)
            log.info(
                "sim_truck_event",
                truck=truck_id,
                kind=kind,
                bin=fields.get("bin"),
                route=fields.get("route_id"),
            )

    def _publish_state(self, truck_id: str, now: float) -> None:
        truck = self._trucks[truck_id]
        truck.changed = False
        self._state_at[truck_id] = now
        self.stats.states += 1
        self._send(self._fleet, f"fleet/{truck_id}/state", orjson.dumps(truck.state(now)), 0, True)

    def _send(self, link: _Link, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if len(link.queue) == link.queue.maxlen:
            self.stats.dropped += 1
        link.queue.append((topic, payload, qos, retain))
        link.wake.set()

    # -- MQTT in ---------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes | bytearray | str) -> None:
        """One message from the fleet broker: a route, a truck fault or a simulator fault."""
        parts = topic.split("/")
        now = self._clock.now()
        try:
            if len(payload) > MAX_MESSAGE_BYTES:
                raise ValueError(f"oversized: {len(payload)} bytes")
            if topic == FAULT_TOPIC:
                msg = FaultMessage.model_validate_json(payload)
                self.inject(msg.target, msg.fault, active=msg.active, duration_s=msg.duration_s)
                return
            if len(parts) != 3 or parts[0] != "fleet" or parts[1] not in self._trucks:
                return
            tid = parts[1]
            truck = self._trucks[tid]
            if parts[2] == "fault":
                data = orjson.loads(payload)
                kind = data.get("type") if isinstance(data, dict) else None
                if kind == "breakdown":
                    self._emit(tid, truck.breakdown(now))
                elif kind == "repair":
                    self._emit(tid, truck.repair(now))
                else:
                    raise ValueError(f"type {kind!r} is not breakdown or repair")
            elif parts[2] == "route":
                if not payload:
                    return  # a cleared retained route
                try:
                    route = RouteMessage.model_validate_json(payload)
                except ValidationError as exc:
                    rid = _route_id(payload)
                    reason = f"malformed: {_first_error(exc)}"
                    if rid is not None:
                        self._emit(tid, [("route_rejected", {"ts": now, "route_id": rid, "reason": reason})])
                    raise ValueError(reason) from exc
                self._emit(tid, truck.take_route(route, now))
            self._wake_step()
        except (ValueError, KeyError, orjson.JSONDecodeError) as exc:
            self.stats.refused += 1
            log.warning("sim_waste_message_refused", topic=topic[:120], reason=str(exc).splitlines()[0][:200])

    async def _link_main(self, link: _Link, index: int) -> None:
        address = BrokerAddress.parse(link.url)
        attempt = 0
        for _ in range(1_000_000):
            try:
                client = aiomqtt.Client(
                    address.host,
                    address.port,
                    username=address.username,
                    password=address.password,
                    identifier=f"{self._client_id}-{index}",
                    protocol=aiomqtt.ProtocolVersion.V311,  # the embedded broker speaks only 3.1.1
                    timeout=CONNECT_TIMEOUT_S,
                    max_inflight_messages=1000,
                    socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
                )
                client.pending_calls_threshold = 1 << 20  # uplink bursts: no warning per publish
                async with asyncio.timeout(CONNECT_TIMEOUT_S + 1):
                    await client.__aenter__()
                try:
                    for sub in link.subscriptions:
                        async with asyncio.timeout(CONNECT_TIMEOUT_S):
                            await client.subscribe(sub, qos=1)
                    if attempt:
                        log.info("sim_waste_mqtt_connected", url=link.url)
                    attempt = 0
                    link.ready.set()
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._pump(link, client), name=f"waste_sim.pump[{link.url}]")
                        if link.subscriptions:
                            tg.create_task(self._receive(client), name=f"waste_sim.receive[{link.url}]")
                finally:
                    await client.__aexit__(None, None, None)
            except* (aiomqtt.MqttError, TimeoutError, OSError) as eg:
                if attempt == 0:
                    log.warning("sim_waste_mqtt_down", url=link.url, error=str(eg.exceptions[0]))
                delay = random.uniform(0, min(30.0, 0.5 * 1.5**attempt))
                attempt = min(attempt + 1, 10)
                await asyncio.sleep(delay)

    async def _pump(self, link: _Link, client: aiomqtt.Client) -> None:
        queue = link.queue
        for _ in range(1_000_000_000):
            if not queue:
                link.wake.clear()
                await link.wake.wait()
                continue
            topic, payload, qos, retain = queue[0]
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await client.publish(topic, payload, qos=qos, retain=retain)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # 3.11: aiomqtt's `wait_for` can swallow a cancel that lands as the publish
                # completes; the TaskGroup cancels only once, so honour it here or hang.
                raise asyncio.CancelledError
            queue.popleft()

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if isinstance(payload, bytes | bytearray | str):
                try:  # one bad message must not end the simulator's session
                    self.handle(str(message.topic), payload)
                except Exception:
                    self.stats.refused += 1
                    log.exception("sim_waste_message_failed", topic=str(message.topic)[:120])


def _route_id(payload: bytes | bytearray | str) -> str | None:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    rid = data.get("route_id") if isinstance(data, dict) else None
    return rid if isinstance(rid, str) and 0 < len(rid) <= 200 else None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "<root>"
    return f"{loc}: {err['msg']}"


# -- entry points -------------------------------------------------------------------------


async def run_waste_simulator(
    settings: Settings,
    *,
    mqtt_url: str | None = None,
    seed: int = 0,
    speed: float = 1.0,
    start: float | None = None,
    faults: Sequence[str] = (),
    fault_rate_per_day: float = 0.0,
    formats: FormatChoice = "both",
    until: float | None = None,
) -> WasteSimStats:
    """Run the site's bins and trucks until cancelled (or until clock time `until`): `edge simulate waste`.

    `start` is the clock's epoch start (default: now), so a daemon given the same start and
    speed shares the simulated time. Raises ConfigError for a bad site, ValueError for a bad fault.
    """
    path = settings.bins_path()
    if path is None:
        raise ValueError("the site has no [waste] bins inventory (waste.bins)")
    bins = load_bins(path, [z.id for z in settings.waste.zones])
    clock: Clock = (
        SystemClock()
        if speed == 1.0 and start is None
        else SimClock(start if start is not None else time.time(), speed)
    )
    url = mqtt_url or settings.mqtt.url
    async with WasteSimulator(
        settings.waste,
        bins,
        clock,
        mqtt_url=url,
        seed=seed,
        timezone=settings.site.timezone,
        faults=faults,
        fault_rate_per_day=fault_rate_per_day,
        formats=formats,
    ) as sim:
        log.info("sim_waste_serving", url=url, bins=len(bins), trucks=len(settings.waste.trucks), speed=speed)
        for _ in range(100_000_000):
            await clock.sleep(60.0)
            if until is not None and clock.now() >= until:
                break
        return sim.stats


SITES = Path(__file__).resolve().parent.parent / "edge" / "app" / "sites"


def site_config(name_or_path: str) -> Path:
    """A site name under edge/app/sites (kreuzviertel, schwerte) or a path to a site.toml."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        return p
    return SITES / name_or_path / "site.toml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `edge simulate waste` (for a CLI that wants to reuse them)."""
    p.add_argument("--site", default="", help="site name under edge/app/sites (kreuzviertel, schwerte)")
    p.add_argument("--config", type=Path, help="a site.toml with a [waste] section")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    p.add_argument("--fault", action="append", default=[], metavar="TARGET:FAULT", help="inject at start")
    p.add_argument("--fault-rate", type=float, default=0.0, help="random sensor faults per bin per day")
    p.add_argument("--formats", choices=["both", "chirpstack", "tts"], default="both")
    p.add_argument("--mqtt", default="", help="broker URL (default: the site's mqtt.url)")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m simulators.waste --site kreuzviertel --speed 300 --fault B0007:fire`."""
    from edge import logs
    from edge.errors import ConfigError
    from edge.settings import load_settings

    p = argparse.ArgumentParser(prog="python -m simulators.waste", description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    if args.speed <= 0:
        p.error("--speed must be positive")
    logs.configure("info", "auto")
    try:
        config = args.config or site_config(args.site or "kreuzviertel")
        settings = load_settings(config)
        asyncio.run(
            run_waste_simulator(
                settings,
                mqtt_url=args.mqtt or None,
                seed=args.seed,
                speed=args.speed,
                faults=args.fault,
                fault_rate_per_day=args.fault_rate,
                formats=args.formats,
            )
        )
    except (ConfigError, ValueError) as exc:
        print(f"edge simulate waste: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
