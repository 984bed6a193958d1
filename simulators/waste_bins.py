"""Waste bins that fill and the sensors that report them: the pure part of `simulators.waste`.

Bins fill by the kind of place they stand in (residential, shopping street, park): a mean
rate per bin (litres per hour, drawn around a typical days-to-full of its kind), shaped by
the weekday and the hour of the day, with noise per quarter hour, a noise factor per day and
now and then a bulky drop. A bin at its rim overflows: its fill stays at the top while the
overflow hours and litres are counted. Each bin's ultrasonic sensor reads the distance to
the surface (`Bin.distance_of` plus measurement noise) every 10-60 minutes (per bin, with
jitter), at once on an alarm (lid open, tilt, fire) and soon after the bin was emptied.
`UplinkEncoder` turns readings into ChirpStack v4 or The Things Stack v3 messages (per bin
or all one format), with the bytes of the same profile the daemon decodes with.

`FillModel` is synchronous, with no MQTT and no clock: the bench steps it through weeks in
seconds. Everything random is seeded per bin, so the same seed gives the same fill series
whatever the step size.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

import structlog

from devices.inventory import Bin, BinKind
from devices.profiles.lorawan import LorawanProfile, default_profiles
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

SENSOR_FAULTS = ("stuck", "out_of_range", "duplicate", "out_of_order", "silent", "lid_open", "tilt", "fire")
ALARM_FAULTS = frozenset({"lid_open", "tilt", "fire"})
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
