"""Lighting controller: sun schedule, adaptive classes, floors, motion, failure detection.

It reads state and events, asks the optimizer for the night's dimming plan, and
submits commands to the dispatcher; it never touches a driver. The floors
(`LightingSafety`) are checked by the dispatcher for every command, whoever sends it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as dtime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import structlog
from astral import Observer
from astral.sun import sunrise, sunset

from controllers.lighting_holds import FullHolds
from devices.inventory import LIGHTING_CLASSES, Inventory, Lamp
from edge.dispatcher import make_command
from edge.events import (
    Command,
    CommandResult,
    Outcome,
    PlanEvent,
    Priority,
    Severity,
    StateChanged,
    Telemetry,
)
from edge.geo import haversine_m
from edge.kernel import Kernel
from edge.pacing import Pace
from edge.policy import DispatcherView, Verdict
from edge.settings import LightingSettings, SiteSettings, TrafficStep
from edge.tasks import TimeSlice
from optimizer.lighting_fallback import fallback_plan
from optimizer.lighting_model import DimmingInstance, DimmingPlan, LampGroup, check_plan

log = structlog.get_logger(__name__)

SLOT_S = 15 * 60
LEVEL_POINT = "level_cmd"
SOLVE = "optimizer.lighting:solve"  # run in the solver process (edge/solvers.py)
PLAN_WINDOW = 2000  # plan commands submitted and not finished, at most (the pace's cap)
FLOOR_LIMIT = "lighting_floor"  # the binding limit's name when a floor clamps or refuses a level
_SERIES = {"M": ["M1", "M2", "M3", "M4", "M5", "M6"],
           "C": ["C0", "C1", "C2", "C3", "C4", "C5"],
           "P": ["P1", "P2", "P3", "P4", "P5", "P6"]}  # fmt: skip


# ----- pure helpers -------------------------------------------------------------------------


def night_window(site: SiteSettings, cfg: LightingSettings, now: float) -> tuple[float, float]:
    """The on/off times (epoch s) of the night that contains `now`, or the next night.

    On at sunset plus the on-offset, off at the following sunrise minus the off-offset.
    """
    tz = ZoneInfo(site.timezone)
    obs = Observer(latitude=site.latitude, longitude=site.longitude)
    local = datetime.fromtimestamp(now, tz)
    for day in (local.date() - timedelta(days=1), local.date()):
        on = _sun(sunset, obs, day, tz) + cfg.on_offset_min * 60
        off = _sun(sunrise, obs, day + timedelta(days=1), tz) - cfg.off_offset_min * 60
        if now < off:
            return on, off
    raise AssertionError("unreachable: tomorrow's sunrise is always after now")


def _sun(fn: object, obs: Observer, day: date, tz: ZoneInfo) -> float:
    try:
        return float(fn(obs, date=day, tzinfo=tz).timestamp())  # type: ignore[operator]
    except ValueError:  # polar day/night: fall back to fixed times
        fixed = dtime(18, 0) if fn is sunset else dtime(6, 0)
        return datetime.combine(day, fixed, tz).timestamp()


def class_steps(local: dtime, profile: Sequence[TrafficStep]) -> int:
    """How many classes below design the traffic profile asks for at a local time.

    The night runs from noon to noon, so 22:00 comes before 00:00 and 05:00.
    """

    def night_order(t: dtime) -> tuple[int, dtime]:
        return (0 if t >= dtime(12, 0) else 1, t)

    steps = 0
    for step in sorted(profile, key=lambda s: night_order(s.start)):
        if night_order(step.start) <= night_order(local):
            steps = step.steps
    return steps


def class_level(lighting_class: str, steps: int) -> int:
    """Dim level (%) at which a lamp designed for its class delivers the class `steps` lower.

    EN 13201-2 values: e.g. M3 (1.0 cd/m²) one step down is M4 (0.75) = 75 %.
    """
    series = _SERIES[lighting_class[0]]
    idx = min(series.index(lighting_class) + steps, len(series) - 1)
    ratio = LIGHTING_CLASSES[series[idx]] / LIGHTING_CLASSES[lighting_class]
    return math.ceil(ratio * 100 - 1e-9)


def floor_level(lamp: Lamp, cfg: LightingSettings) -> int:
    """The level a lamp may never go below while the lights are on."""
    if "never_dim" in lamp.flags:
        return cfg.never_dim_floor
    if "fear_space" in lamp.flags:
        return cfg.fear_space_floor
    return 0


def expected_power(lamp: Lamp, level: float, d_min: int = 1, standby_w: float = 0.5) -> float:
    """LED power is close to linear in the dim level (DOMAIN.md), plus controller standby."""
    if level <= 0:
        return standby_w
    d = max(level, d_min)
    return lamp.p_min_w + (lamp.p_max_w - lamp.p_min_w) * (d - d_min) / (100 - d_min) + standby_w


def build_instance(
    inv: Inventory,
    site: SiteSettings,
    cfg: LightingSettings,
    on: float,
    off: float,
) -> tuple[DimmingInstance, list[float]]:
    """The optimizer instance for one night: per group the required level per 15-min slot."""
    tz = ZoneInfo(site.timezone)
    starts = [on + i * SLOT_S for i in range(max(1, math.ceil((off - on) / SLOT_S)))]
    locals_ = [datetime.fromtimestamp(t, tz) for t in starts]
    steps = [class_steps(t.time(), cfg.traffic_profile) for t in locals_]
    groups = []
    for gid, lamp_ids in inv.groups.items():
        lamps = [inv.lamps[i] for i in lamp_ids]
        first = lamps[0]
        floor = max(floor_level(x, cfg) for x in lamps)
        required = [max(floor, class_level(first.lighting_class, s)) for s in steps]
        groups.append(
            LampGroup(
                id=gid,
                segment=first.segment,
                lamp_count=len(lamps),
                p_max_w=sum(x.p_max_w for x in lamps) / len(lamps),
                p_min_w=sum(x.p_min_w for x in lamps) / len(lamps),
                required=required,
                max_changes=cfg.max_changes,
            )
        )
    inst = DimmingInstance(
        slot_start_local_minute=[t.hour * 60 + t.minute for t in locals_],
        groups=groups,
        time_limit_s=cfg.plan_time_limit_s,
    )
    return inst, starts


@dataclass(frozen=True, slots=True)
class NightPlan:
    """A validated plan with the absolute slot start times it applies to."""

    on: float
    off: float
    starts: list[float]
    plan: DimmingPlan
    levels: dict[str, list[int]]

    def slot(self, now: float) -> int:
        """The index of the slot in force at `now`; -1 outside the night (every lamp off)."""
        if not self.on <= now < self.off:
            return -1
        return min(int((now - self.on) // SLOT_S), len(self.starts) - 1)

    def level_at(self, group: str, now: float) -> int:
        i = self.slot(now)
        return 0 if i < 0 else self.levels[group][i]


class NightPlanSource(Protocol):
    """Who holds the night's lighting plan (the lighting controller); None before the first.

    Other domains read the lights through this: charging (lighting circuits live, lamp load)
    and displays (dim while the lights are on).
    """

    @property
    def plan(self) -> NightPlan | None: ...


def lights_on(plans: NightPlanSource, t: float) -> bool:
    """Whether the plan has the lights on at t (no plan: not known to be on)."""
    plan = plans.plan
    return plan is not None and plan.on <= t < plan.off


# ----- safety ---------------------------------------------------------------------------------


class LightingSafety:
    """Floors and ranges that hold whoever asks (operator, plan, motion, another domain)."""

    def __init__(self, inv: Inventory, site: SiteSettings, cfg: LightingSettings) -> None:
        self._inv = inv
        self._site = site
        self._cfg = cfg
        self._window: tuple[float, float] = (0.0, 0.0)

    def is_night(self, now: float) -> bool:
        on, off = self._window
        if now >= off or now < on - 86400:
            self._window = night_window(self._site, self._cfg, now)
        on, off = self._window
        return on <= now < off

    def check(self, cmd: Command, now: float, view: DispatcherView) -> Verdict:
        """Floors and ranges depend on the lamp and the night only: the view is not needed."""
        lamp = self._inv.lamps.get(cmd.device_id)
        if lamp is None:
            return Verdict(Outcome.REFUSED, cmd.value, "unknown_device")
        if cmd.point != LEVEL_POINT:
            return Verdict(Outcome.REFUSED, cmd.value, f"point_not_writable: {cmd.point}")
        if not 0 <= cmd.value <= 100:
            return Verdict(Outcome.REFUSED, cmd.value, f"out_of_range: level {cmd.value:g} not in 0..100")
        value = float(round(cmd.value))
        floor = floor_level(lamp, self._cfg)
        if floor and value < floor and self.is_night(now):
            kind = "never dim" if "never_dim" in lamp.flags else "a fear space"
            why = f"under_lighting_floor: {lamp.id} is {kind}, floor {floor} %"
            if cmd.priority is Priority.OPERATOR:
                return Verdict(Outcome.REFUSED, value, why, FLOOR_LIMIT)
            return Verdict(Outcome.CLAMPED, float(floor), why, FLOOR_LIMIT)
        return Verdict(Outcome.ACCEPTED, value)


# ----- controller -----------------------------------------------------------------------------


@dataclass(slots=True)
class LightingStats:
    plans: int = 0
    fallbacks: int = 0
    commands: int = 0
    motion_events: int = 0
    energy_kwh: float = 0.0
    baseline_static_kwh: float = 0.0
    baseline_dortmund_kwh: float = 0.0


STATUS_ALARMS: dict[str, Severity] = {
    "lamp_failure": Severity.MAJOR,
    "driver_failure": Severity.MAJOR,
    "power_high": Severity.MINOR,
    "power_low": Severity.MINOR,
    "comm_loss": Severity.MAJOR,
}


class LightingController:
    """Runs the night: plan, apply per slot, motion, failures. Start with `run()` in a TaskGroup.

    Built as `LightingController(kernel, cfg, inv=...)`. Motion on bike paths arrives as
    `Telemetry(lamp, ts, {"motion": True})` on the bus (every detection counts, even when the
    stored value does not change), not as a call from the API.
    """

    name = "lighting"

    def __init__(self, kernel: Kernel, cfg: LightingSettings, *, inv: Inventory) -> None:
        self.inv = inv
        self._site = kernel.settings.site
        self._cfg = cfg
        self._bus = kernel.bus
        self._clock = kernel.clock
        self._state = kernel.state
        self._dispatcher = kernel.dispatcher
        # Lamps at full at safety priority (motion, warnings, emergency calls), by holder.
        self.holds = FullHolds(
            lambda lamp, src, hold_s, reason: self.submit(lamp, 100, Priority.SAFETY, src, hold_s=hold_s,
                                                          reason=reason),
            lambda lamp, src: self._dispatcher.release(lamp, LEVEL_POINT, Priority.SAFETY, f"{src} let go", only=src),
            kernel.clock,
        )  # fmt: skip
        self._alarms = kernel.alarms
        self._solvers = kernel.solvers
        kernel.solvers.warm(SOLVE)
        self._ttl = kernel.settings.dispatcher.command_ttl_s
        self.plan: NightPlan | None = None
        self._applied: dict[str, int] = {}
        # group -> the level every lamp of it was sent: a group done is skipped until its
        # level changes (the loop runs four times a second over a city's groups, not its lamps)
        self._group_done: dict[str, int] = {}
        # Plan commands not finished yet (command id -> lamp and loop time sent, lamp -> command
        # id): at most `pace.window` at once (found as it goes, up to PLAN_WINDOW), so a city's
        # first plan goes out at the rate the node confirms it, each write well within its
        # timeout, and an operator's command never queues behind 54,000 of them.
        self._open: dict[str, tuple[str, float]] = {}
        self.pace = Pace(start=min(200, PLAN_WINDOW), low=min(20, PLAN_WINDOW), high=PLAN_WINDOW)
        self._open_of: dict[str, str] = {}
        self._replan = asyncio.Event()
        self._power_strikes: dict[tuple[str, str], int] = {}  # (lamp, check): bad readings in a row
        self._was_night = False
        self._sub = kernel.bus.subscribe("lighting", StateChanged, Telemetry, CommandResult)
        self.stats = LightingStats()

    def views(self) -> Mapping[str, Any]:
        """The night plan in force (None before the first)."""
        return {"plan": self.plan}

    def request_replan(self) -> None:
        self._replan.set()

    async def run(self) -> None:
        """Plan and apply forever; re-plan each night or on request."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch_state(), name="lighting.failures")
            while True:
                now = self._clock.now()
                on, off = night_window(self._site, self._cfg, now)
                if self.plan is None or self.plan.on != on or self._replan.is_set():
                    self._replan.clear()
                    await self._make_plan(on, off)
                await self._apply(now)
                night = self.plan is not None and self.plan.on <= now < self.plan.off
                if night != self._was_night:
                    # Floors start (or end) now: a command accepted by day may not hold at night.
                    self._was_night = night
                    await self._dispatcher.recheck_all()
                try:
                    async with asyncio.timeout(0.25):
                        await self._replan.wait()
                except TimeoutError:
                    pass

    async def _make_plan(self, on: float, off: float) -> None:
        inst, starts = build_instance(self.inv, self._site, self._cfg, on, off)
        try:
            # in the solver process: CP-SAT's imports stay out of the daemon (edge/solvers.py)
            plan = await self._solvers.run(SOLVE, inst)
        except Exception as exc:
            log.error("lighting_plan_failed", error=str(exc))
            plan = fallback_plan(inst, f"solver error: {exc}")
        problems = check_plan(inst, plan)
        if problems:
            log.error("lighting_plan_infeasible", problems=problems[:5])
            plan = fallback_plan(inst, f"plan failed the check: {problems[0]}")
        if plan.status == "fallback":
            self.stats.fallbacks += 1
        self.stats.plans += 1
        self.stats.energy_kwh = plan.energy_kwh
        self.stats.baseline_static_kwh = plan.baseline_static_kwh
        self.stats.baseline_dortmund_kwh = plan.baseline_dortmund_kwh
        self.plan = NightPlan(on, off, starts, plan, {g.id: list(g.levels) for g in plan.groups})
        self._applied.clear()
        self._group_done.clear()
        self._open.clear()
        self._open_of.clear()
        log.info(
            "lighting_plan_ready",
            status=plan.status,
            groups=len(plan.groups),
            energy_kwh=round(plan.energy_kwh, 1),
            baseline_static_kwh=round(plan.baseline_static_kwh, 1),
            baseline_dortmund_kwh=round(plan.baseline_dortmund_kwh, 1),
            solve_s=round(plan.solve_seconds, 2),
        )
        body = plan.model_dump(mode="json")
        body.update(on=on, off=off, slot_starts=starts)
        self._bus.publish(PlanEvent("lighting", self._clock.now(), body))

    async def _apply(self, now: float) -> None:
        """Submit plan commands for lamps whose planned level differs from what was sent."""
        if self.plan is None:
            return
        slice_ = TimeSlice()
        done, applied, state = self._group_done, self._applied, self._state
        for gid, lamp_ids in self.inv.groups.items():
            level = self.plan.level_at(gid, now)
            if done.get(gid) == level:
                continue
            complete = True
            for lamp_id in lamp_ids:
                dev = state.get(lamp_id)
                if dev is None or dev.online is not True:
                    complete = False
                    continue  # not reachable yet: applied once its controller answers
                if applied.get(lamp_id) != level:
                    if len(self._open) >= self.pace.window:
                        return  # the rest on a later turn, as earlier ones finish
                    applied[lamp_id] = level
                    self._submit_plan(lamp_id, level)
                    await slice_.tick()  # a city switches at once: let operator commands through
            if complete:
                done[gid] = level

    def _submit_plan(self, lamp_id: str, level: int) -> None:
        now = self._clock.now()
        cmd = make_command(lamp_id, LEVEL_POINT, level, Priority.PLAN, "plan", now=now,
                           ttl_s=self._ttl * self._clock.speed, reason="schedule")  # fmt: skip
        if (old := self._open_of.pop(lamp_id, None)) is not None:
            self._open.pop(old, None)  # replaced: the dispatcher reports no result for it
        self._open[cmd.id] = (lamp_id, asyncio.get_running_loop().time())
        self._open_of[lamp_id] = cmd.id
        self.stats.commands += 1
        self._dispatcher.submit(cmd)

    def _plan_result(self, ev: CommandResult) -> None:
        """A plan command finished: it leaves the window, and its wait paces the next ones; one
        that expired unapplied is sent again (with a fresh time to live) on the next turn."""
        entry = self._open.get(ev.command.id)
        if entry is None or ev.outcome in (Outcome.ACCEPTED, Outcome.CLAMPED):
            return  # not ours, or not final
        now = asyncio.get_running_loop().time()
        if ev.outcome is Outcome.FAILED:
            self.pace.congested(now)  # not final: the write is retried until its TTL
            return
        lamp_id, sent = entry
        self.pace.answered(now - sent, now)
        del self._open[ev.command.id]
        self._open_of.pop(lamp_id, None)
        if ev.outcome is Outcome.EXPIRED:
            self._applied.pop(lamp_id, None)
            self._group_done.pop(self.inv.lamps[lamp_id].group, None)

    def submit(
        self,
        lamp_id: str,
        level: float,
        priority: Priority,
        source: str,
        *,
        hold_s: float | None = None,
        reason: str = "",
    ) -> Verdict:
        now = self._clock.now()
        ttl = self._ttl * self._clock.speed
        cmd = make_command(
            lamp_id, LEVEL_POINT, level, priority, source, now=now, ttl_s=ttl, hold_s=hold_s, reason=reason
        )
        self.stats.commands += 1
        return self._dispatcher.submit(cmd)

    def planned_level(self, lamp_id: str) -> int | None:
        lamp = self.inv.lamps.get(lamp_id)
        if lamp is None or self.plan is None:
            return None
        return self.plan.level_at(lamp.group, self._clock.now())

    # ----- motion on bike paths -------------------------------------------------------------

    def on_motion(self, lamp_id: str) -> list[str]:
        """Raise the lamp and the next ones on its path to full for the hold time."""
        lamp = self.inv.lamps.get(lamp_id)
        if lamp is None or "bike_path" not in lamp.flags:
            return []
        if self.plan is None or self.plan.level_at(lamp.group, self._clock.now()) == 0:
            return []  # daytime: nothing to raise
        self.stats.motion_events += 1
        seg = self.inv.segments[lamp.segment]
        i = seg.index(lamp_id)
        n = self._cfg.motion_lamps_ahead
        raised = [x for x in seg[max(0, i - 1) : i + n + 1] if "bike_path" in self.inv.lamps[x].flags]
        for x in raised:
            self.holds.hold(x, "motion", self._cfg.motion_hold_s, "motion")
        return raised

    # ----- warnings -----------------------------------------------------------------------------

    def raise_for_warning(
        self, warning_id: str, end: float, area: tuple[float, float, float] | None = None
    ) -> int:
        """Lamps to full for a warning until it ends (those within `area` = (lat, lon, radius_m),
        or every lamp), as safety commands through the dispatcher (audited). Returns how many."""
        now = self._clock.now()
        lamps = list(self.inv.lamps.values())
        if area is not None:
            lat, lon, radius_m = area
            lamps = [x for x in lamps if haversine_m(lat, lon, x.lat, x.lon) <= radius_m]
        for lamp in lamps:
            self.holds.hold(lamp.id, f"warning:{warning_id}", end - now, "warning")
        return len(lamps)

    def release_warning(self, warning_id: str) -> int:
        """A warning withdrawn before its end lets go of the lamps it raised: each goes back to its
        plan unless another holder (an emergency call, a cyclist) still needs it. Returns how many."""
        source = f"warning:{warning_id}"
        return sum(self.holds.let_go(x, source) for x in self.inv.lamps)

    # ----- failure detection ------------------------------------------------------------------

    async def _watch_state(self) -> None:
        async for ev in self._sub:
            if isinstance(ev, StateChanged):
                self._check(ev)
            elif isinstance(ev, Telemetry):
                if ev.values.get("motion") is True:
                    self.on_motion(ev.device_id)
                elif not ev.derived and (lamp := self.inv.lamps.get(ev.device_id)) is not None:
                    self._reading(lamp, ev)
            elif isinstance(ev, CommandResult) and ev.command.source == "plan":
                self._plan_result(ev)

    def _check(self, ev: StateChanged) -> None:
        dev_id = ev.device_id
        lamp = self.inv.lamps.get(dev_id)
        if lamp is None:
            if dev_id in self.inv.controllers:
                self._check_controller(ev)
            return
        dev = self._state.get(dev_id)
        if dev is None:
            return
        for bit, sev in STATUS_ALARMS.items():
            if bit in ev.changed:
                self._alarms.set(dev_id, bit, bool(ev.changed[bit]), sev)

    def _reading(self, lamp: Lamp, ev: Telemetry) -> None:
        """Every reading counts toward the power checks, a value-less one ("nothing moved
        beyond the dead band") with the values last known: a lamp stuck at a wrong power
        draw is found although its readings no longer change."""
        if ev.values:
            self._check_power(lamp, ev.values)
        elif (dev := self._state.get(lamp.id)) is not None:
            self._check_power(lamp, dev.values)

    def _strike(self, lamp_id: str, code: str, bad: bool, needed: int = 3) -> bool | None:
        """Debounce: True after `needed` bad readings in a row, False on a good one, else None."""
        key = (lamp_id, code)
        if not bad:  # only lamps with strikes are kept: a city's healthy lamps cost nothing here
            self._power_strikes.pop(key, None)
            return False
        strikes = self._power_strikes[key] = self._power_strikes.get(key, 0) + 1
        return True if strikes >= needed else None

    def _check_power(self, lamp: Lamp, values: Mapping[str, object]) -> None:
        level, power, cmd = values.get("level_actual"), values.get("power_w"), values.get("level_cmd")
        if not isinstance(level, int | float) or not isinstance(power, int | float):
            return
        failed = any(values.get(bit) for bit in ("lamp_failure", "driver_failure"))
        expect = expected_power(lamp, float(level))
        band = expect * self._cfg.power_tolerance + self._cfg.power_tolerance_w
        verdict = self._strike(lamp.id, "power", abs(float(power) - expect) > band and not failed)
        if verdict is not None:
            detail = f"power {float(power):.1f} W, expected {expect:.1f} W at {float(level):g} %"
            self._alarms.set(lamp.id, "power_out_of_band", verdict, Severity.MINOR, detail)
        burning = cmd == 0 and float(level) > 0
        verdict = self._strike(lamp.id, "day_burner", burning)
        if verdict is not None:
            self._alarms.set(lamp.id, "day_burner", verdict, Severity.WARNING, "on although commanded off")

    def _check_controller(self, ev: StateChanged) -> None:
        if "online" in ev.changed:
            online = bool(ev.changed["online"])
            self._alarms.set(ev.device_id, "controller_offline", not online, Severity.MAJOR, "no answer")
        if "failsafe_active" in ev.changed:
            self._alarms.set(
                ev.device_id, "watchdog_failsafe", bool(ev.changed["failsafe_active"]), Severity.MAJOR
            )


def lamps_of(inv: Inventory, *, group: str | None = None, segment: str | None = None) -> Iterable[str]:
    """Lamp ids of a group or a segment (empty for an unknown name)."""
    if group is not None:
        return inv.groups.get(group, ())
    if segment is not None:
        return inv.segments.get(segment, ())
    return ()
