"""ElaadNL charging-session statistics: arrivals, connection times and energy, seeded.

Reads the published ElaadNL curves (../shared/data/elaad/*.csv: arrival density per
15 minutes on weekdays and weekends, percentile tables of connection time and energy,
mean session length and energy per arrival half-hour) and falls back to coarse
built-in copies of them when the files are missing.

Sampling keeps each published marginal distribution exactly (inverse CDF of the
percentile table) and adds the dependence the mean-per-arrival tables show with a
Gaussian copula: the latent normal of the connection time leans towards the
arrival half-hour's normal score (evening arrivals stay the night), and the energy's
latent normal leans towards the connection time's. Same seed, same sessions.
"""

from __future__ import annotations

import bisect
import csv
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from statistics import NormalDist
from typing import Literal

Category = Literal["public", "private"]

DATA_DIR = Path(__file__).resolve().parent / "data" / "elaad"  # shipped with the package
SLOTS_PER_DAY = 96  # 15-minute arrival slots
SLOT_S = 900.0
_MEAN_COLUMN = {"public": "public", "private": "home"}  # the mean tables name "private" "home"
_N = NormalDist()

# Coarse built-in curves (hourly arrival %, deciles of the percentile tables, 3-hourly
# means), taken from the same ElaadNL files, for when they are not installed.
_BUILTIN_ARRIVAL_H = {
    ("public", False): (1.0, 0.5, 0.2, 0.2, 0.2, 0.2, 0.7, 3.2, 7.9, 7.7, 5.1, 4.7,
                        5.3, 5.3, 5.0, 5.1, 5.7, 8.3, 10.9, 8.1, 5.1, 4.0, 3.4, 2.3),
    ("public", True): (2.0, 1.2, 0.6, 0.4, 0.3, 0.3, 0.3, 0.6, 1.7, 3.7, 5.7, 7.0,
                       7.9, 8.2, 8.5, 8.3, 8.0, 8.0, 7.3, 5.8, 4.9, 3.9, 3.1, 2.2),
    ("private", False): (2.1, 0.5, 0.2, 0.1, 0.1, 0.1, 0.2, 0.6, 1.4, 1.1, 1.1, 1.5,
                         2.2, 2.2, 2.7, 3.7, 5.7, 12.1, 17.0, 11.5, 9.1, 8.9, 9.1, 6.6),
    ("private", True): (4.1, 2.0, 0.8, 0.3, 0.2, 0.1, 0.1, 0.4, 0.9, 1.7, 3.0, 4.8,
                        6.0, 6.2, 6.2, 6.9, 8.8, 10.2, 7.9, 6.5, 6.8, 6.2, 5.8, 4.1),
}  # fmt: skip
_BUILTIN_DECILES = {  # value exceeded by 0, 10, ..., 100 % of sessions
    ("public", "hours"): (72, 17.1, 13.5, 10.4, 7.4, 4.4, 3.0, 2.1, 1.3, 0.6, 0),
    ("public", "kwh"): (99.8, 29, 17.2, 11.3, 8.6, 7.2, 6.2, 4.9, 3.4, 1.6, 0),
    ("private", "hours"): (72, 20.3, 15.7, 13.8, 12.5, 11, 9.5, 6.5, 3.1, 1.5, 0),
    ("private", "kwh"): (99.9, 51.4, 40.4, 31.9, 24.9, 19.4, 14.6, 10.1, 6.6, 3.3, 0),
}
_BUILTIN_MEANS_3H = {  # at 00, 03, ..., 21 h
    ("public", "hours"): (10.0, 8.9, 5.3, 4.3, 2.9, 3.3, 12.5, 11.2),
    ("public", "kwh"): (20.9, 21.6, 19.1, 12.3, 12.8, 15.1, 16.2, 20.3),
    ("private", "hours"): (9.3, 5.7, 5.7, 3.6, 4.1, 14.3, 13.9, 11.4),
    ("private", "kwh"): (30.8, 25.5, 20.6, 14.7, 15.5, 19.1, 24.4, 28.7),
}


@dataclass(frozen=True, slots=True)
class Quantiles:
    """A percentile table as published: `values[i]` is exceeded by `percent[i]` % of sessions."""

    percent: tuple[float, ...]  # ascending, 0..100
    values: tuple[float, ...]  # descending

    def at(self, u: float) -> float:
        """Inverse CDF: the value below which a fraction `u` (0..1) of sessions lie."""
        p = min(100.0, max(0.0, 100.0 * (1.0 - u)))
        i = bisect.bisect_right(self.percent, p) - 1
        if i >= len(self.percent) - 1:
            return self.values[-1]
        p0, p1 = self.percent[i], self.percent[i + 1]
        v0, v1 = self.values[i], self.values[i + 1]
        return v0 + (v1 - v0) * (p - p0) / (p1 - p0)

    @property
    def median(self) -> float:
        """The published median."""
        return self.at(0.5)


@dataclass(frozen=True, slots=True)
class ElaadCurves:
    """One category's (public or private) curves; `source` says file or built-in."""

    category: Category
    arrival_weekday: tuple[float, ...]  # % of arrivals per 15-minute slot, 96 values
    arrival_weekend: tuple[float, ...]
    connection_h: Quantiles
    energy_kwh: Quantiles
    mean_hours: tuple[float, ...]  # mean connection time per arrival slot, 96 values
    mean_kwh: tuple[float, ...]
    source: str


@dataclass(frozen=True, slots=True)
class SampledSession:
    """One charging session: when the car arrives, how long it stays, what it takes."""

    arrival_ts: float
    connected_s: float
    energy_kwh: float

    @property
    def departure_ts(self) -> float:
        """When the car leaves."""
        return self.arrival_ts + self.connected_s


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def _slot_of(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 4 + int(m) // 15


def _per_slot(rows: list[dict[str, str]], key: str, column: str) -> tuple[float, ...]:
    """Spread a table keyed by 'HH:MM' (any step) over 96 slots, holding the last value."""
    known: dict[int, float] = {}
    for row in rows:
        cell = (row.get(column) or "").strip()
        if cell:
            known[_slot_of(row[key])] = float(cell)
    if not known:
        raise ValueError(f"column {column!r} is empty")
    out: list[float] = []
    last = known[min(known)]
    for slot in range(SLOTS_PER_DAY):
        last = known.get(slot, last)
        out.append(last)
    return tuple(out)


def _quantiles(rows: list[dict[str, str]], column: str) -> Quantiles:
    pairs = sorted((float(r["Percentage of charging events"]), float(r[column])) for r in rows)
    return Quantiles(tuple(p for p, _ in pairs), tuple(v for _, v in pairs))


def _from_files(directory: Path, category: Category) -> ElaadCurves:
    arrivals = _rows(directory / "distribution-of-arrival.csv")
    weekend = _rows(directory / "distribution-of-arrival-weekend.csv")
    mean_col = _MEAN_COLUMN[category]
    return ElaadCurves(
        category=category,
        arrival_weekday=_per_slot(arrivals, "Arrival time", category),
        arrival_weekend=_per_slot(weekend, "Arrival time", category),
        connection_h=_quantiles(_rows(directory / "distribution-of-connection-time.csv"), category),
        energy_kwh=_quantiles(_rows(directory / "distribution-of-energy-demand.csv"), category),
        mean_hours=_per_slot(_rows(directory / "mean-session-length-per.csv"), "Arrival Time", mean_col),
        mean_kwh=_per_slot(_rows(directory / "mean-demand-per-arrival.csv"), "Arrival Time", mean_col),
        source=str(directory),
    )


def builtin_curves(category: Category = "public") -> ElaadCurves:
    """Coarse copies of the ElaadNL curves (hourly arrivals, deciles, 3-hour means)."""
    pct = tuple(float(p) for p in range(0, 101, 10))

    def spread(values: Sequence[float], per: int, scale: float = 1.0) -> tuple[float, ...]:
        return tuple(values[s // per] * scale for s in range(SLOTS_PER_DAY))

    return ElaadCurves(
        category=category,
        arrival_weekday=spread(_BUILTIN_ARRIVAL_H[category, False], 4, 0.25),
        arrival_weekend=spread(_BUILTIN_ARRIVAL_H[category, True], 4, 0.25),
        connection_h=Quantiles(pct, tuple(float(v) for v in _BUILTIN_DECILES[category, "hours"])),
        energy_kwh=Quantiles(pct, tuple(float(v) for v in _BUILTIN_DECILES[category, "kwh"])),
        mean_hours=spread(_BUILTIN_MEANS_3H[category, "hours"], 12),
        mean_kwh=spread(_BUILTIN_MEANS_3H[category, "kwh"], 12),
        source="built-in",
    )


def load_curves(category: Category = "public", directory: Path | None = None) -> ElaadCurves:
    """The ElaadNL curves from `directory` (default ../shared/data/elaad), else built-in."""
    directory = DATA_DIR if directory is None else directory
    try:
        return _from_files(directory, category)
    except (OSError, KeyError, ValueError):
        return builtin_curves(category)


def _normal_scores(means: Sequence[float], weights: Sequence[float]) -> tuple[float, ...]:
    """Standard-normal scores of per-slot means, ranked under the arrival weights.

    Mid-rank CDF, then centred and scaled to weighted mean 0 and variance 1, so that
    rho * score + sqrt(1 - rho^2) * noise stays standard normal and the copula keeps
    the published marginal distribution.
    """
    total = sum(weights)
    order = sorted(range(len(means)), key=lambda i: means[i])
    scores = [0.0] * len(means)
    acc = 0.0
    i = 0
    while i < len(order):  # slots with equal means share one mid-rank
        j = i
        group_w = 0.0
        while j < len(order) and means[order[j]] == means[order[i]]:
            group_w += weights[order[j]]
            j += 1
        mid = (acc + group_w / 2) / total
        z = _N.inv_cdf(min(max(mid, 1e-6), 1 - 1e-6))
        for k in order[i:j]:
            scores[k] = z
        acc += group_w
        i = j
    mean = sum(s * w for s, w in zip(scores, weights, strict=True)) / total
    var = sum((s - mean) ** 2 * w for s, w in zip(scores, weights, strict=True)) / total
    sd = math.sqrt(var) if var > 0 else 1.0
    return tuple((s - mean) / sd for s in scores)


class SessionSampler:
    """Seeded sessions from ElaadNL curves; the same seed gives the same sessions.

    `rho_time`: how strongly the connection time follows the arrival time (0 = not);
    `rho_energy`: how strongly the energy follows the connection time.
    """

    def __init__(
        self,
        curves: ElaadCurves | None = None,
        seed: int = 0,
        *,
        rho_time: float = 0.5,
        rho_energy: float = 0.6,
    ) -> None:
        if not (0.0 <= rho_time < 1.0 and 0.0 <= rho_energy < 1.0):
            raise ValueError("copula correlations must be in [0, 1)")
        self.curves = curves or load_curves()
        self.rng = random.Random(seed)
        self.rho_time = rho_time
        self.rho_energy = rho_energy
        self._score = _normal_scores(self.curves.mean_hours, self.curves.arrival_weekday)
        self._spread = math.sqrt(1 - rho_time**2)
        # the published marginals are over all days: weigh the slots as a week does
        week = [
            5 * a + 2 * b
            for a, b in zip(self.curves.arrival_weekday, self.curves.arrival_weekend, strict=True)
        ]
        weights: dict[float, float] = {}
        for score, w in zip(self._score, week, strict=True):
            weights[score] = weights.get(score, 0.0) + w / sum(week)
        self._mixture = tuple(weights.items())
        self._cum = {
            weekend: self._cumulative(arr)
            for weekend, arr in ((False, self.curves.arrival_weekday), (True, self.curves.arrival_weekend))
        }

    def _mixture_cdf(self, z: float) -> float:
        """P(Z <= z) of the latent over all arrival slots: maps it to an exact uniform.

        The slot scores are discrete, so the latent is a mixture of normals, not a
        normal; its own CDF (not Phi) keeps the published marginal exact.
        """
        acc = 0.0
        for score, weight in self._mixture:
            acc += weight * _N.cdf((z - self.rho_time * score) / self._spread)
        return acc

    @staticmethod
    def _cumulative(density: Sequence[float]) -> tuple[float, ...]:
        out: list[float] = []
        acc = 0.0
        for d in density:
            acc += max(0.0, d)
            out.append(acc)
        return tuple(x / acc for x in out)

    @staticmethod
    def _is_weekend(ts: float) -> bool:
        return datetime.fromtimestamp(ts, UTC).weekday() >= 5

    def arrival_in_day(self, day_start_ts: float) -> float:
        """An arrival time within the (UTC) day starting at `day_start_ts`."""
        cum = self._cum[self._is_weekend(day_start_ts + 43_200)]
        slot = bisect.bisect_left(cum, self.rng.random())
        return day_start_ts + (min(slot, SLOTS_PER_DAY - 1) + self.rng.random()) * SLOT_S

    def next_arrival(self, after_ts: float, sessions_per_day: float) -> float:
        """The next arrival after `after_ts` at one charge point (inhomogeneous Poisson).

        The rate follows the arrival curve, scaled to `sessions_per_day`.
        """
        if sessions_per_day <= 0:
            return math.inf
        t = after_ts
        for _ in range(SLOTS_PER_DAY * 60):  # give up after 60 days
            slot_end = (math.floor(t / SLOT_S) + 1) * SLOT_S
            weekend = self._is_weekend(t)
            curve = self.curves.arrival_weekend if weekend else self.curves.arrival_weekday
            rate_per_s = sessions_per_day * curve[self.slot(t)] / 100.0 / SLOT_S
            if rate_per_s > 0:
                wait = self.rng.expovariate(rate_per_s)
                if t + wait < slot_end:
                    return t + wait
            t = slot_end
        return math.inf

    @staticmethod
    def slot(ts: float) -> int:
        """15-minute slot of the (UTC) day, 0..95."""
        return int((ts % 86_400) // SLOT_S)

    def session_at(self, arrival_ts: float) -> SampledSession:
        """Connection time and energy of a car arriving at `arrival_ts`."""
        z_t = self._score[self.slot(arrival_ts)]
        z_h = self.rho_time * z_t + self._spread * self.rng.gauss(0.0, 1.0)
        u_h = self._mixture_cdf(z_h)
        z_hn = _N.inv_cdf(min(max(u_h, 1e-12), 1 - 1e-12))
        z_e = self.rho_energy * z_hn + math.sqrt(1 - self.rho_energy**2) * self.rng.gauss(0.0, 1.0)
        hours = self.curves.connection_h.at(u_h)
        kwh = self.curves.energy_kwh.at(_N.cdf(z_e))
        return SampledSession(arrival_ts, max(hours, 1 / 60) * 3600.0, max(kwh, 0.1))

    def sessions(self, count: int, start_ts: float) -> list[SampledSession]:
        """`count` sessions with arrivals on consecutive days from `start_ts` (statistics)."""
        day0 = math.floor(start_ts / 86_400) * 86_400
        out = []
        for i in range(count):
            out.append(self.session_at(self.arrival_in_day(day0 + 86_400 * (i % 7))))
        return out
