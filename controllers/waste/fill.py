"""Pure fill estimation: sensor readings in, fill-rate estimates and forecasts out.

Per bin a `FillEstimator` turns sensor readings into a fill-rate estimate that survives
noise and emptying (a clear drop starts a new segment; a drop that comes straight back
is a sensor glitch, not an emptying), learns a weekday-and-time-of-day pattern, and
predicts when the bin reaches the collection threshold. No I/O and no clock reads: every
time is an argument, so it runs the same in the controller, in a restore and in a bench.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal
from zoneinfo import ZoneInfo

from devices.inventory import BinKind

HOUR = 3600.0
BLOCK_H = 6  # pattern cells: 4 blocks of 6 hours per weekday
CELLS = 7 * (24 // BLOCK_H)

# Prior fill rates (fraction of the bin per hour) by kind, before a bin has taught us anything.
# Chosen so a residential bin fills in about four days, a shopping street bin in about two.
PRIOR_RATE: dict[BinKind, float] = {"residential": 0.010, "shopping": 0.020, "park": 0.012}
# Relative rate by time-of-day block (00-06, 06-12, 12-18, 18-24) and by weekday (Mon..Sun).
PRIOR_BLOCK: dict[BinKind, tuple[float, float, float, float]] = {
    "residential": (0.4, 1.2, 1.0, 1.4),
    "shopping": (0.2, 1.4, 1.8, 0.6),
    "park": (0.2, 0.8, 1.8, 1.2),
}
PRIOR_DAY: dict[BinKind, tuple[float, ...]] = {
    "residential": (1.0, 1.0, 1.0, 1.0, 1.0, 1.1, 1.1),
    "shopping": (1.0, 1.0, 1.0, 1.1, 1.2, 1.4, 0.3),
    "park": (0.8, 0.8, 0.8, 0.9, 1.0, 1.6, 1.7),
}

DEFAULT_ERR_VAR = 0.3**2  # a day's rise is within about 30 % of the forecast until learned
SATURATED = 0.97  # at the blind zone: readings above this say "full", not how full


def net_rate(points: Sequence[tuple[float, float]]) -> float | None:
    """Net rise per x unit between the ends, each end the median of up to three points.

    Bins fill in steps (a bag, a box) as well as gradually: a median of pairwise slopes
    (Theil-Sen) treats the steps as outliers and under-estimates the rate by their share,
    the net rise counts them. Medians at the ends keep one noisy reading from moving it much.
    """
    n = len(points)
    if n < 2:
        return None
    k = min(3, n // 2) if n >= 4 else 1
    head = sorted(points[:k], key=lambda p: p[1])[k // 2]
    tail = sorted(points[-k:], key=lambda p: p[1])[k // 2]
    x0 = sum(p[0] for p in points[:k]) / k
    x1 = sum(p[0] for p in points[-k:]) / k
    if x1 - x0 <= 1e-9:
        return None
    return (tail[1] - head[1]) / (x1 - x0)


def theil_sen(points: Sequence[tuple[float, float]]) -> float | None:
    """Median of pairwise slopes (y per x unit): one outlier in n points cannot move it far."""
    slopes = [
        (y2 - y1) / (x2 - x1) for (x1, y1), (x2, y2) in itertools.combinations(points, 2) if x2 - x1 > 1e-9
    ]
    if not slopes:
        return None
    slopes.sort()
    n = len(slopes)
    mid = n // 2
    return slopes[mid] if n % 2 else 0.5 * (slopes[mid - 1] + slopes[mid])


class WeekPattern:
    """Fill rate per (weekday, 6-hour block) in local time: an EWMA of observed rates.

    Starts from the kind's prior; each finished cell of readings moves its cell towards the
    rate observed in it (the first observation counts half, later ones 30 %).
    """

    def __init__(self, kind: BinKind, tz: ZoneInfo, alpha: float = 0.3) -> None:
        self.tz = tz
        self.alpha = alpha
        base = PRIOR_RATE[kind]
        self.rate = [base * PRIOR_DAY[kind][c // 4] * PRIOR_BLOCK[kind][c % 4] for c in range(CELLS)]
        self.count = [0] * CELLS

    def cell(self, ts: float) -> int:
        t = datetime.fromtimestamp(ts, self.tz)
        return t.weekday() * 4 + t.hour // BLOCK_H

    def learn(self, cell: int, rate: float) -> None:
        a = max(self.alpha, 1.0 / (self.count[cell] + 2))
        self.rate[cell] += a * (max(0.0, rate) - self.rate[cell])
        self.count[cell] += 1

    @property
    def learned(self) -> int:
        """Cells that have seen at least one observation."""
        return sum(1 for c in self.count if c)

    def integral(self, t0: float, t1: float) -> float:
        """Expected fill added between t0 and t1 (pattern rates, no scaling), bounded steps."""
        if t1 <= t0:
            return 0.0
        total, t = 0.0, t0
        for _ in range(200):  # 200 blocks of 6 h is 50 days: more than any horizon asked
            lt = datetime.fromtimestamp(t, self.tz)
            into = (lt.hour % BLOCK_H) * 3600 + lt.minute * 60 + lt.second + lt.microsecond / 1e6
            end = min(t1, t + BLOCK_H * HOUR - into)
            if end <= t:  # DST edge: step at least a second
                end = min(t1, t + 1.0)
            total += self.rate[lt.weekday() * 4 + lt.hour // BLOCK_H] * (end - t) / HOUR
            t = end
            if t >= t1:
                break
        return total


@dataclass(slots=True)
class Reading:
    ts: float
    fill: float


class FillEstimator:
    """Fill-rate estimate for one bin, robust to noise, saturation and emptying.

    - The current segment (readings since the last emptying) gives the net rise over its
      last `window` readings (`net_rate`: bins fill in steps too, which a Theil-Sen slope
      would discard as outliers and so under-estimate the rate); readings at the blind zone
      (>= 97 %) are left out because a full bin's level cannot rise any more. Glitches are
      kept out before they reach the segment (below).
    - A drop of more than `drop` (and to well below the previous level) is an emptying: the
      segment restarts and `last_emptied_ts` is recorded. If the next reading jumps back to
      the old level, the drop was a glitch: the old segment is restored and `glitches` counts it.
    - A rise faster than `max_rate_per_h` (plus `jump`) is implausible: the reading is kept
      out of the estimate and counted in `glitches`.
    - The weekday pattern learns each 6-hour cell's net rate when the cell ends, from the
      last reading before the cell to its last reading (so a rise between two readings on
      either side of a cell boundary is not lost); the prediction scales the pattern by how
      the current segment compares with it (shrunk towards 1 while the segment is short).
    - Each local day the estimator checks its own forecast: the rise over the past day
      against what it predicted for it. The spread of that ratio (`spread`) gives an upper
      quantile of the fill (`fill_upper`) for risk-aware planning: a bin whose rate varies a
      lot is collected earlier than one that fills like clockwork.
    """

    def __init__(
        self,
        kind: BinKind,
        tz: ZoneInfo,
        *,
        window: int = 96,
        drop: float = 0.15,
        jump: float = 0.25,
        max_rate_per_h: float = 0.3,
    ) -> None:
        self.pattern = WeekPattern(kind, tz)
        self.window = window
        self.drop = drop
        self.jump = jump
        self.max_rate_per_h = max_rate_per_h
        self.segment: deque[Reading] = deque(maxlen=window)
        self.last: Reading | None = None
        self.last_emptied_ts: float | None = None
        self.emptyings = 0
        self.glitches = 0
        self.fault_streak = 0  # consecutive implausible readings (the bin alarm uses it)
        self._undo: tuple[deque[Reading], Reading, float | None] | None = None
        self._cell: int | None = None
        self._cell_points: list[tuple[float, float]] = []
        self._gaps: deque[float] = deque(maxlen=8)
        self._day: date | None = None
        self._day_ref: tuple[float, float, float] | None = None  # ts, fill, scale at the day's first reading
        self.err_var = DEFAULT_ERR_VAR  # EWMA of (observed / predicted day rise - 1)^2
        self.checks = 0

    # -- input --------------------------------------------------------------------------

    def add(
        self, ts: float, fill: float, *, expect_empty: bool = False
    ) -> Literal["ok", "emptied", "glitch", "late"]:
        """Take one reading; say whether it was an emptying, a glitch or out of order.

        `expect_empty`: a truck says it emptied the bin, so a smaller drop (a bin collected
        nearly empty) counts, and it is not taken back as a glitch.
        """
        last = self.last
        if last is not None and ts <= last.ts:
            return "late"  # the estimate is built in time order; late frames add nothing new
        if last is not None:
            self._gaps.append(ts - last.ts)
            dt_h = (ts - last.ts) / HOUR
            undo = self._undo
            self._undo = None
            if undo is not None and fill >= undo[1].fill - self.drop / 2 and dt_h < 12:
                # The "emptying" came straight back: it was a glitch (or a reflection).
                self.segment, self.last, self.last_emptied_ts = undo[0], undo[1], undo[2]
                self.emptyings -= 1
                self.glitches += 1
                self.fault_streak = 1
                self._reset_cell(ts)
                self._append(ts, fill)
                return "glitch"
            drop = max(0.03, 0.3 * last.fill) if expect_empty else self.drop
            if fill < last.fill - drop and fill < 0.6 * last.fill + 0.05:
                if not expect_empty:
                    self._undo = (self.segment.copy(), last, self.last_emptied_ts)
                self.segment = deque(maxlen=self.window)
                self.last_emptied_ts = ts
                self.emptyings += 1
                self._day_ref = None
                self.fault_streak = 0
                self._reset_cell(ts)
                self._append(ts, fill)
                return "emptied"
            if fill > last.fill + self.jump + self.max_rate_per_h * dt_h:
                self.glitches += 1
                self.fault_streak += 1
                if self.fault_streak < 3:
                    return "glitch"  # kept out; three in a row is the new truth (a new bin?)
                self.segment = deque(maxlen=self.window)
                self._reset_cell(ts)
        self.fault_streak = 0
        self._append(ts, fill)
        return "ok"

    def mark_emptied(self) -> bool:
        """The latest reading turned out to be just after an emptying (the truck's report came
        late): start the segment there. False if there is no reading to start from."""
        last = self.last
        if last is None:
            return False
        self.segment = deque([last] if last.fill < SATURATED else [], maxlen=self.window)
        self.last_emptied_ts = last.ts
        self.emptyings += 1
        self._undo = None
        self._day_ref = None
        self._reset_cell(last.ts)
        return True

    def _append(self, ts: float, fill: float) -> None:
        r = Reading(ts, fill)
        if fill < SATURATED:  # a full bin's level cannot rise: keep the rate it had before
            self.segment.append(r)
        self.last = r
        self._check_day(ts, fill)
        cell = self.pattern.cell(ts)
        if cell != self._cell:
            carry = self._cell_points[-1:] if self._cell is not None else []
            self._close_cell()
            self._cell = cell
            self._cell_points = carry  # the rise across the boundary belongs to this cell
        if fill < SATURATED:
            self._cell_points.append((ts / HOUR, fill))

    def _check_day(self, ts: float, fill: float) -> None:
        """On a new local day: how did yesterday's forecast do? Then forecast today."""
        d = datetime.fromtimestamp(ts, self.pattern.tz).date()
        if d == self._day:
            return
        self._day = d
        ref = self._day_ref
        if ref is not None and fill < SATURATED and 18 * HOUR <= ts - ref[0] <= 30 * HOUR:
            expected = ref[2] * self.pattern.integral(ref[0], ts)
            if expected >= 0.03:  # a tiny rise is all sensor noise
                err = min(4.0, ((fill - ref[1]) / expected - 1.0) ** 2)
                self.err_var += max(0.1, 1.0 / (self.checks + 2)) * (err - self.err_var)
                self.checks += 1
        self._day_ref = (ts, fill, self.scale()) if fill < SATURATED else None

    def _reset_cell(self, ts: float) -> None:
        """An emptying or glitch inside a cell: learn from what came before it."""
        self._close_cell()
        self._cell = self.pattern.cell(ts)
        self._cell_points = []

    def _close_cell(self) -> None:
        pts = self._cell_points
        if self._cell is not None and len(pts) >= 3 and pts[-1][0] - pts[0][0] >= 1.0:
            slope = net_rate(pts)
            if slope is not None:
                self.pattern.learn(self._cell, slope)
        self._cell_points = []

    # -- estimates ----------------------------------------------------------------------

    def segment_rate(self) -> float | None:
        """Net rate of the current segment (fraction per hour), None if too short."""
        pts = [(r.ts / HOUR, r.fill) for r in self.segment]
        if len(pts) < 3 or pts[-1][0] - pts[0][0] < 1.0:
            return None
        return net_rate(pts)

    def scale(self) -> float:
        """How fast this bin fills compared with its pattern right now (1 = as the pattern says)."""
        pts = self.segment
        slope = self.segment_rate()
        if slope is None:
            return 1.0
        span = pts[-1].ts - pts[0].ts
        expected = self.pattern.integral(pts[0].ts, pts[-1].ts) / (span / HOUR)
        if expected <= 1e-6:
            return 1.0
        k = max(0.0, slope) / expected
        n = len(pts)
        k = (n * k + 4 * 1.0) / (n + 4)  # shrink towards the pattern while the segment is short
        return min(5.0, max(0.05, k))

    def rate_at(self, ts: float) -> float:
        """Predicted fill rate (fraction per hour) at time `ts`."""
        cell = self.pattern.cell(ts)
        return self.pattern.rate[cell] * self.scale()

    def fill_at(self, ts: float) -> float | None:
        """Predicted fill at `ts` (after the last reading), None before any reading."""
        if self.last is None:
            return None
        if ts <= self.last.ts:
            return self.last.fill
        return min(1.0, self.last.fill + self.scale() * self.pattern.integral(self.last.ts, ts))

    @property
    def spread(self) -> float:
        """Relative spread of a day's rise around the forecast (learned; a prior until checked)."""
        return math.sqrt(self.err_var)

    def fill_upper(self, ts: float, z: float = 1.0) -> float | None:
        """An upper quantile of the fill at `ts`: the predicted rise times 1 + z x its spread.

        Day-to-day noise averages out over a longer horizon, the error of the rate itself does
        not: the relative spread falls with the square root of the days ahead, to half at most.
        """
        if self.last is None:
            return None
        if ts <= self.last.ts:
            return self.last.fill
        rise = self.scale() * self.pattern.integral(self.last.ts, ts)
        days = max(1.0, (ts - self.last.ts) / 86400)
        rel = self.spread * max(0.5, 1.0 / math.sqrt(days))
        return min(1.0, self.last.fill + rise * (1.0 + z * rel))

    def time_to(self, level: float, now: float, horizon_s: float = 14 * 86400) -> float | None:
        """When the fill is predicted to reach `level` (now if it already has), None beyond the horizon."""
        last = self.last
        if last is None:
            return None
        f = self.fill_at(now)
        if f is not None and f >= level:
            return now
        k = self.scale()
        if k <= 0:
            return None
        need = level - last.fill
        t, step = last.ts, 6 * HOUR
        end = now + horizon_s
        while t < end:
            nxt = min(end, t + step)
            added = k * self.pattern.integral(t, nxt)
            if added >= need:
                # linear inside the step (bisect a few times for minutes-level precision)
                lo, hi = t, nxt
                for _ in range(12):
                    mid = 0.5 * (lo + hi)
                    if k * self.pattern.integral(t, mid) >= need:
                        hi = mid
                    else:
                        lo = mid
                return max(now, hi)
            need -= added
            t = nxt
        return None

    def expected_interval_s(self) -> float:
        """The bin's usual uplink interval (median of recent gaps), 10-60 min."""
        if not self._gaps:
            return 3600.0
        gaps = sorted(self._gaps)
        return min(3600.0, max(600.0, gaps[len(gaps) // 2]))
