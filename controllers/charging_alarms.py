"""Charging's alarms and measures, kept apart from planning: what the controller watches.

Peak load and limit violations per feeder, a feeder whose charge points all lost power (a
tripped fuse: critical), chargers that should charge and do not, meters that stand still
while power flows, and fail-safe currents that did not read back as configured.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import structlog

from controllers.charging_safety import MIN_A, ChargingSafety
from devices.inventory import Charger, Inventory
from edge.events import Severity, Value
from edge.kernel import Kernel
from edge.settings import ChargingSettings
from optimizer.charging_model import ChargingPlan

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class ChargingStats:
    plans: int = 0
    fallbacks: int = 0
    clamped: int = 0
    delivered_kwh: float = 0.0
    requested_kwh: float = 0.0
    peak_ratio: float = 0.0
    peak_feeder: str = ""
    violations: int = 0
    signals: int = 0
    lease_refreshes: int = 0
    unchanged: int = 0  # setpoints a lease found standing already (not sent again)
    trips: int = 0  # feeders seen losing supply (every charge point on it Unavailable)


TRIP_HOLD_S = 60.0
"""Clock seconds a live feeder's charge points must all stay dark before it counts as tripped."""
TRIP_EVIDENCE_S = 5.0
"""Real seconds of watching them dark, too: at 300x the clock hold alone is a fifth of a second."""
_EVIDENCE_GAP_S = 0.75
"""At most this much of a gap between two looks counts as seeing (a stalled loop saw nothing)."""


@dataclass(slots=True)
class _Dark:
    """A live feeder seen with every charge point dark: since when, and how long really watched."""

    since: float  # clock
    seen_at: float  # monotonic, the last look
    watched_s: float = 0.0  # real seconds of looks, each gap capped


@dataclass(slots=True)
class _Meter:
    last_kwh: float = -1.0
    since: float = 0.0


class ChargingWatch:
    """Charging's alarms and measures: peak load, limit violations, tripped feeders, chargers that
    do not charge, frozen meters and fail-safes that did not read back."""

    def __init__(
        self,
        kernel: Kernel,
        cfg: ChargingSettings,
        *,
        inv: Inventory,
        safety: ChargingSafety,
        stats: ChargingStats,
        setpoint: Callable[[str], float],
    ) -> None:
        self.inv = inv
        self._cfg = cfg
        self._clock = kernel.clock
        self._state = kernel.state
        self._alarms = kernel.alarms
        self._view = kernel.dispatcher.view
        self.safety = safety
        self.stats = stats
        self._setpoint = setpoint
        self._meters: dict[str, _Meter] = {}
        self._bad_since: dict[str, float] = {}
        self._dark: dict[str, _Dark] = {}
        self.tripped: dict[str, bool] = {}

    def status_changed(self, charger_id: str, status: Value | None) -> None:
        self._alarms.set(charger_id, "charger_faulted", status == "Faulted", Severity.MAJOR)

    def observe(self, now: float, plan: ChargingPlan | None) -> None:
        """Peak load, violations, and the slow alarms (near limit, not charging, meter frozen)."""
        for _ in self.observe_steps(now, plan):
            pass

    def observe_steps(self, now: float, plan: ChargingPlan | None) -> Iterator[None]:
        """`observe`, a feeder or a charger per step (the controller's turn yields between)."""
        for feeder in self.safety.feeder_ids():
            self.observe_feeder(feeder, now)
            yield
        delivered = 0.0
        for c in self.inv.chargers.values():
            delivered += self.observe_charger(c, now)
            yield
        self.stats.delivered_kwh = delivered
        if plan is not None:
            self.stats.requested_kwh = plan.requested_kwh

    def observe_feeder(self, feeder: str, now: float) -> None:
        """One feeder: its supply, its load against its limit (near limit, violations)."""
        s = self.safety
        self._watch_supply(feeder, now)
        limit = s.feeder_limit(feeder, now)
        measured = s.lighting_now_a(feeder, now, self._view) + sum(
            self.measured_a(c) for c in s.chargers_on(feeder)
        )
        if limit > 0:
            ratio = measured / limit
            if ratio > self.stats.peak_ratio:
                self.stats.peak_ratio, self.stats.peak_feeder = ratio, feeder
            self._alarms.set(
                feeder,
                "feeder_near_limit",
                ratio >= self._cfg.near_limit_ratio,
                Severity.WARNING,
                f"{measured:.1f} of {limit:.1f} A",
            )
        if measured > limit + 0.5 and limit >= 0:
            self.stats.violations += 1

    def observe_charger(self, c: Charger, now: float) -> float:
        """One charger's slow alarms; returns the energy of its session so far (kWh)."""
        dev = self._state.get(c.id)
        if dev is None:
            return 0.0
        s, v = self.safety, dev.values
        after = self._cfg.alarm_after_s
        power = _f(v.get("power_kw"), 0.0) > 0.1
        should = (
            bool(v.get("car_connected"))
            and self._setpoint(c.id) >= MIN_A
            and v.get("status") not in {"SuspendedEV", "Finishing", "Faulted", "Unavailable"}
        )
        self._persisting(c.id, "not_charging", should and not power, now, after, Severity.MINOR,
                         "car connected, setpoint given, no power")  # fmt: skip
        m = self._meters.setdefault(c.id, _Meter())
        kwh = _f(v.get("meter_energy_kwh"), -1.0)
        if kwh != m.last_kwh:
            m.last_kwh, m.since = kwh, now
        frozen = power and now - m.since >= after
        self._alarms.set(
            c.id, "meter_frozen", frozen, Severity.MINOR, "power flows but the meter stands still"
        )
        if dev.online and "failsafe_current_a" in v:
            want = s.failsafe_a(c)
            bad = not s.failsafe_verified(c, self._view)
            detail = (
                f"fail-safe reads {v.get('failsafe_current_a')!r} A, configured {want:g} A: held at {want:g} A"
                if bad
                else ""
            )
            self._alarms.set(c.id, "failsafe_mismatch", bad, Severity.MAJOR, detail)
        return _f(v.get("session_energy_kwh"), 0.0)

    def _watch_supply(self, feeder: str, now: float) -> None:
        """A live feeder whose charge points all report Unavailable while we reach them has lost
        its supply: its fuse tripped (a critical alarm until power returns).

        It must hold for `TRIP_HOLD_S` clock seconds (a lighting circuit switches on a moment after
        the plan says so) and be watched for `TRIP_EVIDENCE_S` real seconds of looks, a stalled
        loop's gap counting at most `_EVIDENCE_GAP_S`: when the daemon lags, the clock runs on
        while nothing is seen, and the chargers' Unavailable of the day, not yet replaced by what
        the circuit coming live brought, read as a trip (beside two CPU hogs at 300x, the demo's
        night-only circuits did, with no trip in the simulator)."""
        s = self.safety
        chargers = s.chargers_on(feeder)
        seen = [self._state.get(c.id) for c in chargers]
        reachable = [d for d in seen if d is not None and d.online is True and "status" in d.values]
        dark = bool(reachable) and len(reachable) == len(chargers)
        dark = dark and all(d.values.get("status") == "Unavailable" for d in reachable)
        was = self.tripped.get(feeder, False)
        expected_live = s.feeder_limit(feeder, now) > 0  # night-only circuits are dead by day
        if not dark or not (expected_live or was):
            self._dark.pop(feeder, None)
            now_tripped = False
        else:
            looked = time.monotonic()
            d = self._dark.get(feeder)
            if d is None:
                d = self._dark[feeder] = _Dark(now, looked)
            d.watched_s += min(looked - d.seen_at, _EVIDENCE_GAP_S)
            d.seen_at = looked
            now_tripped = was or (now - d.since >= TRIP_HOLD_S and d.watched_s >= TRIP_EVIDENCE_S)
        if now_tripped and not was:
            self.stats.trips += 1
            log.error("feeder_tripped", feeder=feeder, chargers=len(chargers))
        elif was and not now_tripped:
            log.info("feeder_supply_back", feeder=feeder)
        self.tripped[feeder] = now_tripped
        self._alarms.set(
            feeder,
            "feeder_tripped",
            now_tripped,
            Severity.CRITICAL,
            f"all {len(chargers)} charge points lost power: fuse tripped or supply lost",
        )

    def _persisting(
        self, device: str, code: str, bad: bool, now: float, after: float, severity: Severity, detail: str
    ) -> None:
        """Raise an alarm once a condition has held for `after` clock seconds; clear it at once."""
        key = f"{device}/{code}"
        if not bad:
            self._bad_since.pop(key, None)
            self._alarms.set(device, code, False, severity)
            return
        since = self._bad_since.setdefault(key, now)
        if now - since >= after:
            self._alarms.set(device, code, True, severity, detail)

    def measured_a(self, c: Charger) -> float:
        dev = self._state.get(c.id)
        if dev is None:
            return 0.0
        v = dev.values
        return max(
            _f(v.get("current_l1_a"), 0.0), _f(v.get("current_l2_a"), 0.0), _f(v.get("current_l3_a"), 0.0)
        )


def _f(v: object, default: float) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else default
