"""The feeder interlock: what any charger may be given, whoever asks.

`ChargingSafety` is the policy the dispatcher runs on every setpoint: the sum of setpoints on
a feeder (and a cabinet) never exceeds its limit minus the lighting load on it. A request that
would break it is clamped (or refused) with the reason and the binding limit's name. With
stale measurements, or while the daemon lags (event-loop delay: it may not feed the chargers'
watchdogs in time), only moves towards less load pass. Lighting counts at full power (DALI
fail-safe, overrides, motion) while the lamps are on or come on within a slot, so the lamps
switching on cannot push a feeder over while setpoints are old. A charger whose fail-safe
current did not read back as configured gets no more than that.

Everything it knows about the present comes from the dispatcher's read-only view, passed at
check time: there is nothing to bind later and no stand-in until then. What the view does not
know counts at its worst: a charger that never reported draws its maximum, a lamp nobody
planned or measured burns at full power, a fail-safe never read back is unverified.

`failsafe_problems` is the config rule behind all this: on every feeder and cabinet, the
chargers' fail-safe currents plus the lamps at full power fit the limit, so a daemon that is
gone (watchdogs fired everywhere) cannot overload anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from controllers.charging_lighting import VOLTS, LightingLoad, as_number
from devices.inventory import Charger, Inventory
from edge.events import Command, Outcome
from edge.policy import DispatcherView, Verdict
from edge.settings import ChargingSettings

POINT = "current_limit_a"
MIN_A = 6.0
SLOT_S = 900


@dataclass(frozen=True, slots=True)
class LimitWindow:
    """A feeder or cabinet limit for a time window (utility curtailment or operator)."""

    target: str
    limit_a: float
    start: float
    end: float
    source: str


def failsafe_a(c: Charger, cfg: ChargingSettings) -> float:
    """The current a charger falls back to when its watchdog fires (inventory, else the site's)."""
    return cfg.failsafe_current_a if c.failsafe_current_a is None else c.failsafe_current_a


def worst_lighting_a(inv: Inventory, feeder: str) -> float:
    """Every lamp of a feeder at full power (DALI fail-safe), in A on one phase."""
    return worst_lighting_by_feeder(inv).get(feeder, 0.0)


def worst_lighting_by_feeder(inv: Inventory) -> dict[str, float]:
    """`worst_lighting_a` of every feeder with lamps, in one pass over the lamps (a feeder at a
    time is a pass per feeder: 400 passes over 54,000 lamps took the city's start-up 3 s)."""
    watts: dict[str, float] = {}
    for lamp in inv.lamps.values():
        watts[lamp.feeder] = watts.get(lamp.feeder, 0.0) + lamp.p_max_w
    return {f: w / VOLTS for f, w in watts.items()}


def failsafe_problems(cfg: ChargingSettings, inv: Inventory) -> list[str]:
    """Feeders and cabinets where the chargers' fail-safe currents plus the lamps at full power
    exceed the limit (what they would carry with the daemon gone), and bad fail-safe values.

    Counted as the interlock counts: every current on the worst phase.
    """
    problems: list[str] = []
    feeders = {f.id: f for f in cfg.feeders}
    per_feeder: dict[str, float] = {}
    count: dict[str, int] = {}
    for c in inv.chargers.values():
        fs = failsafe_a(c, cfg)
        if 0 < fs < MIN_A:
            problems.append(
                f"charger {c.id}: fail-safe {fs:g} A is not 0 or at least {MIN_A:g} A (IEC 61851)"
            )
        if fs > c.max_current_a:
            problems.append(f"charger {c.id}: fail-safe {fs:g} A is above its maximum {c.max_current_a:g} A")
        if c.feeder not in feeders and fs > 0:
            problems.append(
                f"charger {c.id}: feeder {c.feeder!r} is not in [charging] feeders, "
                f"so its fail-safe must be 0 A, not {fs:g} A"
            )
        per_feeder[c.feeder] = per_feeder.get(c.feeder, 0.0) + fs
        count[c.feeder] = count.get(c.feeder, 0) + 1
    by_cabinet: dict[str, tuple[float, float, int]] = {}
    worst = worst_lighting_by_feeder(inv)
    for f in cfg.feeders:
        fs, lights, n = per_feeder.get(f.id, 0.0), worst.get(f.id, 0.0), count.get(f.id, 0)
        if fs + lights > f.limit_a + 1e-9:
            problems.append(
                f"feeder {f.id}: fail-safe {fs:g} A ({n} charge points) + lamps at full power "
                f"{lights:.1f} A = {fs + lights:.1f} A exceeds its limit of {f.limit_a:g} A"
            )
        a, b, k = by_cabinet.get(f.cabinet, (0.0, 0.0, 0))
        by_cabinet[f.cabinet] = (a + fs, b + lights, k + n)
    for cab in cfg.cabinets:
        fs, lights, n = by_cabinet.get(cab.id, (0.0, 0.0, 0))
        if fs + lights > cab.limit_a + 1e-9:
            problems.append(
                f"cabinet {cab.id}: fail-safe {fs:g} A ({n} charge points) + lamps at full power "
                f"{lights:.1f} A = {fs + lights:.1f} A exceeds its limit of {cab.limit_a:g} A"
            )
    return problems


# ----- what a charger draws, seen through the dispatcher's view ----------------------------


def drawn_a(view: DispatcherView, c: Charger) -> float:
    """What a charger may draw: the winning command, a write in flight, the value it reports,
    and for a charger we cannot reach its fail-safe current (or its maximum if it never said)."""
    eff = view.effective_value(c.id, POINT)
    values = [0.0 if eff is None else eff, view.in_flight_value(c.id, POINT) or 0.0]
    reported = as_number(view.value(c.id, POINT))
    if reported is not None:
        values.append(reported)
    if view.online(c.id) is not True:
        failsafe = as_number(view.value(c.id, "failsafe_current_a"))
        values.append(c.max_current_a if failsafe is None else failsafe)
    return max(values)


def is_fresh(view: DispatcherView, c: Charger) -> bool:
    """OPC UA telemetry comes by subscription (on change) with keep-alives: a charger whose
    session is up is current; a lost one, or one never heard of, is not."""
    return view.online(c.id) is True


def reported_failsafe(view: DispatcherView, c: Charger) -> float | None:
    """The fail-safe current the driver read back after writing it (None: not read back)."""
    return as_number(view.value(c.id, "failsafe_current_a"))


class ChargingSafety:
    """The feeder interlock; independent of the optimizer and of who asks.

    `lighting`: the lamps' load and live circuits; `lagging`: whether the daemon runs late
    (edge/lag.py), then only decreases pass. Both are required: there is no safe default.
    """

    def __init__(
        self,
        inv: Inventory,
        cfg: ChargingSettings,
        *,
        lighting: LightingLoad,
        lagging: Callable[[], bool],
    ) -> None:
        self._inv = inv
        self._cfg = cfg
        self._lighting = lighting
        self._lagging = lagging
        self._feeders = {f.id: f for f in cfg.feeders}
        self._cabinets = {c.id: c for c in cfg.cabinets}
        self._in_cabinet: dict[str, list[str]] = {}
        for f in cfg.feeders:
            self._in_cabinet.setdefault(f.cabinet, []).append(f.id)
        self._on_feeder: dict[str, list[Charger]] = {}
        for c in inv.chargers.values():
            self._on_feeder.setdefault(c.feeder, []).append(c)
        self._worst = worst_lighting_by_feeder(inv)
        self.windows: list[LimitWindow] = []

    def failsafe_a(self, c: Charger) -> float:
        """The configured fail-safe current of a charger."""
        return failsafe_a(c, self._cfg)

    def fallback_a(self, c: Charger, view: DispatcherView) -> float:
        """What the charger falls back to when its watchdog fires: its read-back fail-safe (the
        driver writes the configured one, never above the setpoint), else the configured one."""
        got = reported_failsafe(view, c)
        return self.failsafe_a(c) if got is None else got

    def failsafe_verified(self, c: Charger, view: DispatcherView) -> bool:
        """Whether the charger's fail-safe reads back within the configured one (never read back: no)."""
        got = reported_failsafe(view, c)
        return got is not None and got <= self.failsafe_a(c) + 0.05

    def lagging(self) -> bool:
        return self._lagging()

    # ----- limits -------------------------------------------------------------------------

    def min_device_a(self, c: Charger) -> float:
        """The per-device floor under curtailment (§14a EnWG: 4.2 kW), in amps on its phases."""
        return max(MIN_A, self._cfg.min_device_kw * 1000 / (VOLTS * c.phases))

    def amps_for_kw(self, target: str, kw: float) -> float:
        """A power limit on a feeder or cabinet in amps per phase, on its chargers' phases (3 if none)."""
        phases = max((c.phases for c in self.chargers_on(target)), default=3)
        return kw * 1000 / (VOLTS * phases)

    def feeder_limit(self, feeder: str, now: float) -> float:
        """Per-phase amps the feeder may carry now, before the lighting load."""
        f = self._feeders.get(feeder)
        if f is None:
            return 0.0  # an unknown feeder carries nothing: fail safe
        if f.live == "night" and not self._lighting.live(feeder, now):
            return 0.0
        limit = f.limit_a
        for w in self.windows:
            if w.target == feeder and w.start <= now < w.end:
                limit = min(limit, w.limit_a)
        return limit

    def rating_a(self, target: str) -> float:
        """The configured limit (A per phase) of a feeder or cabinet, whatever windows apply (inf if unknown)."""
        f = self._feeders.get(target)
        if f is not None:
            return f.limit_a
        c = self._cabinets.get(target)
        return c.limit_a if c is not None else math.inf

    def cabinet_limit(self, cabinet: str, now: float) -> float:
        c = self._cabinets.get(cabinet)
        limit = c.limit_a if c is not None else math.inf
        for w in self.windows:
            if w.target == cabinet and w.start <= now < w.end:
                limit = min(limit, w.limit_a)
        return limit

    def lighting_a(self, feeder: str, now: float, view: DispatcherView) -> float:
        """The lighting load the chargers must leave room for (A on L1) at `now`.

        Whenever the circuit carries power (a 24/7 feeder always, a lighting circuit while the
        lamps are on or come on within a slot) every lamp counts at full power: a warning's or
        an emergency call's 100 %, an operator, motion or the lamps' own fail-safe (DALI: 100 %)
        raise lamps faster than chargers can be lowered, and a raise must never wait for a shed.
        (Counted by the plan by day, a flood warning's raise on a charging feeder came before
        the chargers' shed.) A dead lighting circuit carries no charging either (`feeder_limit`).
        """
        light = self._lighting
        est = max(light.amps(feeder, now, view), light.amps(feeder, now + SLOT_S, view))
        f = self._feeders.get(feeder)
        always = f is None or f.live == "always"
        if always or light.live(feeder, now) or light.live(feeder, now + SLOT_S):
            return max(est, self._worst.get(feeder, 0.0))
        return est

    def lighting_now_a(self, feeder: str, now: float, view: DispatcherView) -> float:
        """The lamps' load as best known now (plan, commands, measurements), without reserve."""
        return self._lighting.amps(feeder, now, view)

    def setpoints_a(self, feeder: str, view: DispatcherView, exclude: str = "") -> float:
        """The sum of charger setpoints on a feeder (what the interlock counts)."""
        return sum(drawn_a(view, c) for c in self._on_feeder.get(feeder, ()) if c.id != exclude)

    def committed_a(self, c: Charger, view: DispatcherView) -> float:
        """What a charger may draw at any moment: its setpoint, or its fail-safe if its watchdog
        fires first (watchdogs do not fire together: a charger at 0 A that falls back to 6 A
        while the others hold their setpoints adds 6 A). The driver keeps the fail-safe at or
        below the setpoint, so this is the setpoint unless a charger did not take it."""
        return max(drawn_a(view, c), self.fallback_a(c, view))

    def feeder_load(self, feeder: str, now: float, view: DispatcherView, exclude: str = "") -> float:
        """Lighting load (with its reserve) plus what every other charger may draw (its setpoint or
        its fail-safe), all on the worst phase (L1)."""
        load = self.lighting_a(feeder, now, view)
        for c in self._on_feeder.get(feeder, ()):
            if c.id != exclude:
                load += self.committed_a(c, view)
        return load

    def headroom(self, c: Charger, now: float, view: DispatcherView) -> tuple[float, str]:
        """Amps this charger may use now, and which limit binds ("feeder:F1" or "cabinet:C1")."""
        room = self.feeder_limit(c.feeder, now) - self.feeder_load(c.feeder, now, view, exclude=c.id)
        why = f"feeder:{c.feeder}"
        feeder = self._feeders.get(c.feeder)
        cabinet = feeder.cabinet if feeder is not None else c.cabinet  # the supply tree decides, not the row
        cab_limit = self.cabinet_limit(cabinet, now)
        if math.isfinite(cab_limit):
            cab_load = sum(self.feeder_load(f, now, view, exclude=c.id) for f in self.feeders_in(cabinet))
            if cab_limit - cab_load < room:
                room, why = cab_limit - cab_load, f"cabinet:{cabinet}"
        return max(0.0, room), why

    def curtail_floor_a(self, target: str, view: DispatcherView) -> float:
        """The lowest limit a utility may set on a feeder or cabinet: every charging car keeps its §14a minimum."""
        feeders = [target] if target in self._feeders else self.feeders_in(target)
        return sum(
            self.min_device_a(c) for f in feeders for c in self._on_feeder.get(f, ()) if drawn_a(view, c) > 0
        )

    def cabinet_ids(self) -> list[str]:
        return sorted({f.cabinet for f in self._feeders.values()})

    def feeders_in(self, cabinet: str) -> list[str]:
        return list(self._in_cabinet.get(cabinet, ()))

    def feeder_ids(self) -> list[str]:
        return list(self._feeders)

    def chargers_on(self, feeder: str) -> list[Charger]:
        return list(self._on_feeder.get(feeder, ()))

    # ----- the check ----------------------------------------------------------------------

    def check(self, cmd: Command, now: float, view: DispatcherView) -> Verdict:
        c = self._inv.chargers.get(cmd.device_id)
        if c is None:
            return Verdict(Outcome.REFUSED, cmd.value, "unknown_device")
        if cmd.point != POINT:
            return Verdict(Outcome.REFUSED, cmd.value, f"point_not_writable: {cmd.point}")
        if not 0 <= cmd.value <= c.max_current_a:
            return Verdict(
                Outcome.REFUSED, cmd.value, f"out_of_range: {cmd.value:g} A not in 0..{c.max_current_a:g}"
            )
        value, reasons, limit = float(cmd.value), [], ""
        if 0 < value < MIN_A:
            value, reasons, limit = (
                0.0,
                ["below_6a_minimum: IEC 61851 allows 0 or at least 6 A"],
                "min_current",
            )
        current = drawn_a(view, c)
        if value > current and not all(is_fresh(view, x) for x in self._on_feeder.get(c.feeder, ())):
            return Verdict(Outcome.REFUSED, cmd.value, "stale_measurements: only a lower setpoint is allowed")
        if value > current and self._lagging():
            return Verdict(
                Outcome.REFUSED,
                cmd.value,
                "daemon_lagging: only a lower setpoint is allowed until it keeps up",
            )
        if not self.failsafe_verified(c, view) and value > self.failsafe_a(c):
            cap = self.failsafe_a(c)
            reasons.append(f"failsafe_unverified: {c.id} did not confirm its fail-safe, at most {cap:g} A")
            value, limit = cap, f"failsafe:{c.id}"
        room, binding = self.headroom(c, now, view)
        if value > room + 1e-9:
            allowed = math.floor(room * 10) / 10 if room >= MIN_A else 0.0
            kind, _, name = binding.partition(":")
            reasons.append(f"feeder_limit: {kind} {name} leaves {room:.1f} A, set {allowed:g} A")
            value, limit = allowed, binding
        if reasons:
            return Verdict(Outcome.CLAMPED, value, "; ".join(reasons), limit)
        return Verdict(Outcome.ACCEPTED, value)
