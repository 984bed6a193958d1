"""Four simulated weeks of waste collection: the fixed weekly round against demand-based plans.

Both strategies run on the same bins with the same seeded fill processes (simulators/waste.py
`FillModel`, no MQTT), after the same warm-up week on the fixed round (the sensors were
installed while the old round still ran), and both route with the same planner and router
(optimizer/waste.py `plan_collection` over optimizer/routing.py `solve`) at the same time
limit, so the difference is what gets collected:

- fixed: every bin on fixed weekdays, as a city runs its round once it knows its bins: each
  bin as rarely as its long-run fill rate allows (every other week, weekly, two, three or six
  times a week), residential containers in six sectors west to east, one per weekday; each
  day's bins are forced into the plan, the others excluded.
- demand (the product): at `plan_at` on each of the site's run days, the controller's
  estimator (controllers/waste.py `FillEstimator`, fed with every uplink the sensors would have
  sent, decoded to a fill as the controller does) predicts each bin's fill and the controller's
  own `planner_bin` turns it into the planner's input; the planner (defaults as the daemon uses
  them) selects mandatory and optional bins and routes them. Headline: the site's settings as
  they are in site.toml. Reference row: the same with perfect prediction (the model's own future
  instead of the estimator), the bound a better estimator could reach.

The trucks then drive the planned stops at the settings' road speeds (straight line x detour),
empty the bins in the model at the simulated time (unloading early if a bin turns out fuller
than planned), unload and go home. Kilometres are what they drove; collections are bins
emptied; overflows are from the model (a bin reaching its rim; hours at the rim).
Target from issue 5: at least 30 % fewer kilometres than the fixed round, no more overflows.
Every comparison runs `RUNS` times with different seeds (fill processes and solver); the table
gives medians with their spread, ratios of medians, and plans that failed their own check.
"""

from __future__ import annotations

import copy
import sys
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from bench.common import RUNS, Row, median, median_spread
from controllers.waste import BinReading, FillEstimator, bin_alarms, planner_bin
from devices.inventory import Bin, BinKind, load_bins
from edge.settings import Settings, WasteSettings, load_settings, window_s
from optimizer.waste import (
    BinInput,
    HaversineProvider,
    Place,
    PlanContext,
    TruckInput,
    TruckRoute,
    plan_collection,
)
from simulators.waste import FillModel, Reading, leg

BENCH = "waste"
SITES = Path(__file__).resolve().parent.parent / "edge" / "app" / "sites"
START = date(2026, 11, 2)  # a Monday: the warm-up week starts here
WARMUP_DAYS = 7
SEED = 11
Strategy = Literal["fixed", "demand"]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
FIXED_DAYS = frozenset(range(6))  # the fixed round works Monday to Saturday (six residential sectors)
# Collection patterns of the fixed round, by visits per week: (weekdays, every other week?)
# A pattern's longest gap must stay under GAP_SHARE of the bin's mean days-to-full.
GAP_SHARE = 0.85
PATTERNS: dict[BinKind, tuple[tuple[float, tuple[int, ...]], ...]] = {
    # (longest gap in days, weekdays); residential weekday comes from the bin's sector
    "residential": ((14.0, ()), (7.0, ()), (4.0, ())),
    "shopping": ((4.0, (1, 4)), (3.0, (1, 3, 5)), (2.0, (0, 1, 2, 3, 4, 5))),
    "park": ((4.0, (0, 4)), (3.0, (0, 2, 4)), (2.0, (0, 1, 2, 3, 4, 5))),
}


@dataclass(slots=True)
class Outcome:
    """What one strategy did over the measured days."""

    strategy: Strategy
    km: float = 0.0
    collections: int = 0
    overflow_events: int = 0
    overflow_hours: float = 0.0
    truck_days: int = 0  # trucks sent out, summed over the days
    extra_unloads: int = 0  # unplanned trips to the disposal site (a bin fuller than planned)
    missed_mandatory: int = 0
    skipped_days: int = 0  # run days the demand strategy stayed home (nothing would overflow)
    plan_violations: int = 0  # plans whose own feasibility check found something (any day, warm-up too)
    fills_at_emptying: list[float] = field(default_factory=list)
    solve_s: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def below_half(self) -> float:
        f = self.fills_at_emptying
        return sum(1 for x in f if x < 0.5) / len(f) if f else 0.0

    @property
    def mean_fill(self) -> float:
        f = self.fills_at_emptying
        return sum(f) / len(f) if f else 0.0


def site_settings(name: str) -> Settings:
    """The site's settings, with the [waste] example snippet if the site has no [waste] yet."""
    path = SITES / name / "site.toml"
    settings = load_settings(path)
    snippet = path.parent / "waste.example.toml"
    if settings.waste.bins is None and snippet.exists():
        waste = tomllib.loads(snippet.read_text(encoding="utf-8"))["waste"]
        settings = load_settings(path, waste=waste)
    return settings


def fixed_schedule(
    bins: list[Bin], days_to_full: Mapping[str, float]
) -> dict[str, tuple[tuple[int, int], ...]]:
    """(week parity or -1, weekday) pairs each bin is emptied on in the fixed round.

    The round is dimensioned as a city runs it once it knows its bins (complaints, weighing):
    each bin as rarely as its long-run fill rate allows (every other week, weekly, twice or
    three times a week, daily), residential containers in six sectors west to east, one per
    weekday, twice-weekly sectors paired Monday/Thursday, Tuesday/Friday, Wednesday/Saturday.
    """
    out: dict[str, tuple[tuple[int, int], ...]] = {}
    residential = sorted((b for b in bins if b.kind == "residential"), key=lambda b: (b.lon, b.lat))
    sector = {b.id: i * 6 // len(residential) for i, b in enumerate(residential)}
    for b in bins:
        options = PATTERNS[b.kind]
        gap, days = next(((g, d) for g, d in options if g <= GAP_SHARE * days_to_full[b.id]), options[-1])
        if b.kind == "residential":
            d = sector[b.id]
            if gap >= 14:
                out[b.id] = ((d % 2, d),)
            elif gap >= 7:
                out[b.id] = ((-1, d),)
            else:
                out[b.id] = ((-1, d % 3), (-1, d % 3 + 3))
        else:
            out[b.id] = tuple((-1, x) for x in days)
    return out


def on_schedule(schedule: tuple[tuple[int, int], ...], day: date) -> bool:
    parity = (day.toordinal() // 7) % 2
    return any(wd == day.weekday() and p in (-1, parity) for p, wd in schedule)


class Run:
    """One strategy over warm-up plus measured days on a fresh, identically seeded model."""

    def __init__(
        self,
        settings: Settings,
        bins: list[Bin],
        strategy: Strategy,
        limit_s: float,
        seed: int,
        *,
        postpone_at: float | None = None,
        run_days: tuple[str, ...] | None = None,
        **planner: float,
    ) -> None:
        cfg = settings.waste
        assert cfg.depot is not None
        assert cfg.disposal is not None
        self.cfg: WasteSettings = cfg
        self.depot, self.disposal = cfg.depot, cfg.disposal
        self.tz = ZoneInfo(settings.site.timezone)
        self.bins = {b.id: b for b in bins}
        self.strategy = strategy
        self.limit_s = limit_s
        self.seed = seed
        start = self._at(START, 0)
        self.model = FillModel(bins, start=start, seed=seed, timezone=self.tz)
        self.est = {b.id: FillEstimator(b.kind, self.tz) for b in bins}
        self.last: dict[str, BinReading] = {}
        mean_days = {b.id: b.volume_l / (24 * self.model.rate_lph(b.id)) for b in bins}
        self.schedule = fixed_schedule(bins, mean_days)
        self.run_days = {WEEKDAYS.index(d) for d in (run_days or cfg.run_days)}
        self.fixed_days = FIXED_DAYS  # the round's own days, whatever the sensors' run days are
        self.postpone_at = postpone_at
        self.oracle = False  # predictions from the model itself: what a perfect estimator would give
        self.provider = HaversineProvider(cfg.detour, {str(k): v for k, v in cfg.speeds_kmh.items()})
        self.out = Outcome(strategy)
        self.planner = planner  # PlanContext overrides (value_m, visit_m ...) for experiments

    def _at(self, day: date, seconds: float) -> float:
        midnight = datetime(day.year, day.month, day.day, tzinfo=self.tz)
        return (midnight + timedelta(seconds=seconds)).timestamp()

    def _next_run(self, day: date) -> date:
        for i in range(1, 8):
            d = day + timedelta(days=i)
            if d.weekday() in self.run_days:
                return d
        return day + timedelta(days=7)

    def _run_start(self, day: date) -> float:
        return min(self._at(day, window_s(t.shift)[0]) for t in self.cfg.trucks)

    def feed(self, readings: list[Reading]) -> None:
        """Decode each reading to a fill as the controller does and feed the bin's estimator."""
        for r in readings:
            b = self.bins[r.bin_id]
            fill = None if r.distance_mm > b.height_mm + 100 else b.fill_of(r.distance_mm)
            if r.tilt or r.lid_open:
                fill = None
            self.last[r.bin_id] = BinReading(r.ts, fill, float(r.distance_mm), float(r.battery),
                                             float(r.temperature), r.lid_open, r.tilt, r.fire)  # fmt: skip
            if fill is not None:
                self.est[r.bin_id].add(r.ts, fill)

    def day(self, day: date, *, measure: bool, strategy: Strategy) -> None:
        """One day: plan at plan_at (on run days), drive the routes, let the bins fill to the next day."""
        plan_at = self._at(day, window_s(f"{self.cfg.plan_at}-23:59")[0])
        self.model.advance(plan_at)
        self.feed(self.model.take_readings())
        days = self.fixed_days if strategy == "fixed" else self.run_days
        if day.weekday() in days and (strategy == "fixed" or self.worth_going(day, plan_at)):
            routes = self.plan(day, plan_at, strategy, measure)
            for r in routes:
                if r.stops:
                    self.drive(r, measure)
        self.model.advance(self._at(day + timedelta(days=1), 0))
        self.feed(self.model.take_readings())

    def worth_going(self, day: date, now: float) -> bool:
        """With `postpone_at`: go out only if a bin would reach it before the next run is over (or burns)."""
        if self.postpone_at is None:
            return True
        nxt = self._next_run(day)
        until = max(self._at(nxt, window_s(t.shift)[1]) for t in self.cfg.trucks)
        for b in self.bins.values():
            f = self.est[b.id].fill_at(until)
            if f is not None and f >= self.postpone_at:
                return True
            if {"fire", "overflow"} & bin_alarms(b, self.last.get(b.id), self.est[b.id], now).keys():
                return True
        if self.out is not None:
            self.out.skipped_days += 1
        return False

    def plan(self, day: date, now: float, strategy: Strategy, measure: bool) -> tuple[TruckRoute, ...]:
        cfg = self.cfg
        start = max(now, self._run_start(day))
        next_start = self._run_start(self._next_run(day))
        shifts = {t.id: tuple(self._at(day, s) for s in window_s(t.shift)) for t in cfg.trucks}
        mid = 0.5 * (start + max(b for _, b in shifts.values()))
        inputs = []
        future: list[dict[str, float]] = []
        if self.oracle and strategy == "demand":  # perfect foresight: the model's own future, no emptying
            ahead = copy.deepcopy(self.model)
            for ts in (mid, max(mid, next_start)):
                ahead.advance(ts)
                future.append(ahead.fills())
            ahead.take_readings()
        for b in self.bins.values():
            est = self.est[b.id]
            if strategy == "fixed":
                today = on_schedule(self.schedule[b.id], day)
                fill, fill_next, fill_service, alarms = est.fill_at(now), None, None, frozenset[str]()
                forced, excluded = today, not today
            elif self.oracle:
                fill, fill_next, fill_service = self.model.fill(b.id), future[1][b.id], future[0][b.id]
                alarms = frozenset(bin_alarms(b, self.last.get(b.id), est, now))
                forced = excluded = False
            else:  # the product: the controller's own view of the bin
                alarms = frozenset(bin_alarms(b, self.last.get(b.id), est, now))
                inputs.append(
                    planner_bin(b, est, now=now, next_start=next_start, service_ts=mid, alarms=alarms)
                )
                continue
            inputs.append(BinInput(b.id, b.lat, b.lon, b.road_class, b.zone, b.volume_l, b.density_kg_l,
                                   fill, fill_next, fill_service, alarms, forced, excluded))  # fmt: skip
        trucks = [
            TruckInput(t.id, t.volume_l, t.weight_kg, shifts[t.id], self.depot.lat, self.depot.lon)  # type: ignore[arg-type]
            for t in cfg.trucks
        ]
        zones = {}
        for z in cfg.zones:
            za, zb = window_s(z.window)
            zones[z.id] = (self._at(day, za), self._at(day, zb))
        overrides: dict[str, Any] = {k: v for k, v in self.planner.items() if k != "threshold"}
        ctx = PlanContext(
            now=now,
            next_run_ts=next_start,
            threshold=self.planner.get("threshold", cfg.threshold),
            depot=Place("depot", self.depot.lat, self.depot.lon),
            disposal=Place("disposal", self.disposal.lat, self.disposal.lon),
            disposal_service_s=self.disposal.service_s,
            service_s=cfg.service_s,
            zones=zones,
            solver_time_s=self.limit_s,
            seed=self.seed,
            **overrides,
        )
        plan = plan_collection(inputs, trucks, ctx, self.provider)
        if measure:
            o = self.out
            o.solve_s.append(plan.wall_s)
            o.statuses[plan.status] = o.statuses.get(plan.status, 0) + 1
            o.missed_mandatory += len(plan.missed_mandatory)
        if plan.violations:
            self.out.plan_violations += 1
            print(f"  {strategy} {day}: plan violations {plan.violations[:3]}", file=sys.stderr)
        return plan.routes

    def drive(self, route: TruckRoute, measure: bool) -> None:
        """Drive the stops at the road speeds; empty bins in the model; unload early if full."""
        cfg, depot, disposal = self.cfg, self.depot, self.disposal
        truck = next(t for t in cfg.trucks if t.id == route.truck)
        pos, road = (depot.lat, depot.lon), "main"
        first = route.stops[0]
        _, s0 = leg(pos, (first.lat, first.lon), road, self._road(first.kind, first.id), cfg)
        t = first.eta_ts - s0  # leave so as to be at the first stop when planned
        km = 0.0
        load_l = load_kg = 0.0
        extra = 0

        def go(to: tuple[float, float], to_road: str) -> None:
            nonlocal pos, road, t, km
            metres, seconds = leg(pos, to, road, to_road, cfg)
            km += metres / 1000
            t += seconds
            pos, road = to, to_road

        for s in route.stops:
            if s.kind == "bin":
                b = self.bins[s.id]
                go((s.lat, s.lon), b.road_class)
                if s.window is not None and t < s.window[0]:
                    t = s.window[0]
                self.model.advance_bin(b.id, t)
                litres = self.model.litres(b.id)
                if load_l + litres > truck.volume_l or load_kg + litres * b.density_kg_l > truck.weight_kg:
                    here = pos
                    go((disposal.lat, disposal.lon), "main")
                    t += disposal.service_s
                    load_l = load_kg = 0.0
                    extra += 1
                    go(here, b.road_class)
                t += cfg.service_s
                fill = self.model.fill(b.id)
                taken_l, taken_kg = self.model.empty(b.id, t)
                load_l += taken_l
                load_kg += taken_kg
                if measure:
                    self.out.fills_at_emptying.append(fill)
            elif s.kind == "disposal":
                go((s.lat, s.lon), "main")
                t += disposal.service_s
                load_l = load_kg = 0.0
            else:
                go((s.lat, s.lon), "main")
        if load_l > 0:  # trucks park empty: unload before going home
            go((disposal.lat, disposal.lon), "main")
            go((depot.lat, depot.lon), "main")
            extra += 1
        if measure:
            self.out.km += km
            self.out.truck_days += 1
            self.out.extra_unloads += extra

    def _road(self, kind: str, stop_id: str) -> str:
        return self.bins[stop_id].road_class if kind == "bin" else "main"

    def warm_up(self) -> Run:
        """The common start: a week of the fixed round while the sensors already report."""
        for i in range(WARMUP_DAYS):
            self.day(START + timedelta(days=i), measure=False, strategy="fixed")
        return self

    def variant(
        self,
        strategy: Strategy,
        *,
        run_days: tuple[str, ...] | None = None,
        postpone_at: float | None = None,
        oracle: bool = False,
        **planner: float,
    ) -> Run:
        """A copy of this (warmed-up) run that goes on with another strategy or configuration."""
        r = copy.deepcopy(self)
        r.oracle = oracle
        r.strategy = strategy
        r.run_days = {WEEKDAYS.index(d) for d in (run_days or self.cfg.run_days)}
        r.postpone_at = postpone_at
        r.planner = planner
        r.out = Outcome(strategy)
        return r

    def measure(self, days: int) -> Outcome:
        """`days` measured days after the warm-up."""
        e0, o0, h0 = self.model.emptied, self.model.overflow_events, self.model.overflow_hours
        for i in range(WARMUP_DAYS, WARMUP_DAYS + days):
            self.day(START + timedelta(days=i), measure=True, strategy=self.strategy)
        self.out.collections = self.model.emptied - e0
        self.out.overflow_events = self.model.overflow_events - o0
        self.out.overflow_hours = self.model.overflow_hours - h0
        return self.out

    def simulate(self, days: int) -> Outcome:
        return self.warm_up().measure(days)


@dataclass(frozen=True, slots=True)
class Variant:
    """A demand-based configuration: its run days (None: the site's) and planner overrides."""

    name: str
    run_days: tuple[str, ...] | None = None
    planner: tuple[tuple[str, float], ...] = ()
    oracle: bool = False  # perfect prediction instead of the estimator: the planner's bound


PRODUCT = Variant("product, site settings")
VARIANTS = (PRODUCT,)
ORACLE = Variant("site settings, perfect prediction (reference)", oracle=True)


def compare(
    site: str, days: int, limit_s: float, seed: int = SEED, variants: tuple[Variant, ...] = VARIANTS
) -> tuple[Outcome, list[tuple[Variant, Outcome]]]:
    """The fixed round and each demand variant over `days` measured days of `site`.

    Plans with violations during the common warm-up are added to the fixed round's count.
    """
    settings = site_settings(site)
    path = settings.bins_path()
    assert path is not None
    bins = load_bins(path, [z.id for z in settings.waste.zones])
    base = Run(settings, bins, "fixed", limit_s, seed).warm_up()
    fixed = base.variant("fixed").measure(days)
    fixed.plan_violations += base.out.plan_violations
    out = []
    for v in variants:
        out.append(
            (v, base.variant("demand", run_days=v.run_days, oracle=v.oracle, **dict(v.planner)).measure(days))
        )
    return fixed, out


def _km_ratio(fixed: Outcome, demand: Outcome) -> float:
    return demand.km / fixed.km if fixed.km else float("nan")


def rows(site: str, days: int, limit_s: float, runs: list[tuple[Outcome, Outcome]], v: Variant) -> list[Row]:
    """One variant against the fixed round over the seeded runs (fixed, demand): medians and spread."""
    tag = f"{site} {days} d {limit_s:g} s, {v.name}"
    fixed, demand = [f for f, _ in runs], [d for _, d in runs]
    km_f, km_d = [o.km for o in fixed], [o.km for o in demand]
    km_ratio = median(km_d) / median(km_f) if fixed else float("nan")
    over_f, over_d = [o.overflow_events for o in fixed], [o.overflow_events for o in demand]
    ok_over = median(over_d) <= median(over_f)
    solve = [x for o in demand for x in o.solve_s]
    coll_f, coll_d = [o.collections for o in fixed], [o.collections for o in demand]
    violations = sum(o.plan_violations for o in fixed + demand)
    return [
        Row(BENCH, f"{tag}: km driven vs fixed round", median_spread(km_d), median_spread(km_f),
            f"{km_ratio:.2f}", "<= 0.70", "ok" if km_ratio <= 0.70 else "MISS"),
        Row(BENCH, f"{tag}: km ratio per seeded run", median_spread([_km_ratio(f, d) for f, d in runs], "{:.2f}")),
        Row(BENCH, f"{tag}: overflow events", median_spread(over_d, "{:.0f}"), median_spread(over_f, "{:.0f}"),
            "", "<= fixed", "ok" if ok_over else "MISS"),
        Row(BENCH, f"{tag}: overflow bin-hours", median_spread([o.overflow_hours for o in demand], "{:.0f}"),
            median_spread([o.overflow_hours for o in fixed], "{:.0f}")),
        Row(BENCH, f"{tag}: collections", median_spread(coll_d, "{:.0f}"), median_spread(coll_f, "{:.0f}"),
            f"{median(coll_d) / max(1.0, median(coll_f)):.2f}"),
        Row(BENCH, f"{tag}: truck-days", median_spread([o.truck_days for o in demand], "{:.0f}"),
            median_spread([o.truck_days for o in fixed], "{:.0f}")),
        Row(BENCH, f"{tag}: mean fill at emptying, share under half",
            f"{median([o.mean_fill for o in demand]):.0%}, {median([o.below_half for o in demand]):.0%}",
            f"{median([o.mean_fill for o in fixed]):.0%}, {median([o.below_half for o in fixed]):.0%}"),
        Row(BENCH, f"{tag}: solve s (all plans)", median_spread(solve), f"limit {limit_s:g} s"),
        Row(BENCH, f"{tag}: missed mandatory / unplanned unloads / plans with violations",
            f"{sum(o.missed_mandatory for o in demand)} / {sum(o.extra_unloads for o in demand)} / "
            f"{sum(o.plan_violations for o in demand)}",
            f"fixed: {sum(o.extra_unloads for o in fixed)} unplanned unloads, "
            f"{sum(o.plan_violations for o in fixed)} plans with violations",
            "", "0 missed, 0 violations",
            "ok" if violations == 0 and sum(o.missed_mandatory for o in demand) == 0 else "FAIL"),
    ]  # fmt: skip


def verdict(site: str, days: int, runs: list[tuple[Outcome, Outcome]]) -> Row:
    """PASS when the product meets issue 5's target against the fixed round on this site (medians of the runs)."""
    fixed, demand = [f for f, _ in runs], [d for _, d in runs]
    km_f = median([o.km for o in fixed])
    ratio = median([o.km for o in demand]) / km_f if km_f else float("nan")
    over_d, over_f = median([o.overflow_events for o in demand]), median([o.overflow_events for o in fixed])
    ok = ratio <= 0.70 and over_d <= over_f
    return Row(
        BENCH,
        f"{site} {days} d: TARGET >= 30 % fewer km, no more overflows (product, site settings)",
        f"{ratio:.2f}x km, {over_d:.0f} overflows",
        f"fixed {km_f:.0f} km, {over_f:.0f} overflows",
        f"medians of {len(runs)} seeds",
        "<= 0.70x, <= fixed",
        "PASS" if ok else "FAIL",
    )


def run(quick: bool) -> list[Row]:
    """`python -m bench waste`: four weeks of both sites (quick: one week of the demo district, 1 s per solve).

    Per site and `RUNS` seeds (fill processes and solver seed SEED, SEED+1, ...): the product
    with the site's settings against the fixed round (and a PASS/FAIL line against the target
    on the medians), then the perfect-prediction reference on the demo district.
    """
    days, limit_s = (7, 1.0) if quick else (28, 2.0)
    out: list[Row] = []
    verdicts: list[Row] = []
    for site in ("kreuzviertel",) if quick else ("kreuzviertel", "schwerte"):
        t0 = time.perf_counter()
        extra = () if quick or site != "kreuzviertel" else (ORACLE,)
        by_variant: dict[Variant, list[tuple[Outcome, Outcome]]] = {}
        for i in range(RUNS):
            fixed, variants = compare(site, days, limit_s, seed=SEED + i, variants=VARIANTS + extra)
            for v, demand in variants:
                by_variant.setdefault(v, []).append((fixed, demand))
        for v, runs in by_variant.items():
            out += rows(site, days, limit_s, runs, v)
            if v is PRODUCT:
                verdicts.append(verdict(site, days, runs))
        w = site_settings(site).waste
        trucks = ", ".join(f"{t.id} {t.volume_l:.0f} l/{t.weight_kg:.0f} kg" for t in w.trucks)
        print(
            f"  waste {site}: {time.perf_counter() - t0:.0f} s; run days {','.join(w.run_days)}, "
            f"threshold {w.threshold:g}; trucks {trucks}",
            file=sys.stderr,
        )
    return verdicts + out
