"""Environmental sensors and the warnings their rules make: storm, flood and air quality.

Readings come from LoRaWAN sensors through the shared ingest (one path in) and go into the
state store and history like any other. The rule engine (`controllers.environment_rules`,
pure) decides when a rule fires or clears; this controller turns that into warnings:
- a rule in `issue` mode issues its warning at once: it takes the displays in its area (and
  the lamps, if the rule says so) through the displays domain, as an operator's warning does;
- a rule in `propose` mode proposes it; an operator confirms (then it is issued) or rejects it;
- a warning is withdrawn when its rule clears, or by an operator; it expires at its end, which
  moves on (in steps of a quarter of the rule's duration) while the rule keeps firing;
- a sensor that is stale or implausible never issues or clears anything (the engine leaves it
  out) and raises a maintenance alarm; a warning whose sensors all went silent stays until an
  operator or its end clears it.

North: every sensor's status as derived state, and the rules and warnings as a `PlanEvent`
("environment"); the API publishes them and a CAP 1.2 message per public warning.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

import orjson
import structlog

from controllers.environment_rules import RuleEngine, Transition
from edge.events import PlanEvent, Severity, Telemetry, Value
from edge.geo import haversine_m
from edge.kernel import Kernel
from edge.settings_environment import EnvironmentSettings, RuleSettings

log = structlog.get_logger(__name__)

DOMAIN = "environment"
FINISHED_KEPT = 100
TIMELINE_KEPT = 500
BATTERY_LOW_PCT = 15.0  # LoRaWAN sensors report battery in %: replace within weeks below this

Status = Literal["proposed", "issued", "withdrawn", "rejected", "expired"]


class WarningSink(Protocol):
    """Where an issued warning goes: the displays domain (display warnings and lamps)."""

    def issue(self, w: EnvWarning) -> int: ...
    def withdraw(self, warning_id: str) -> None: ...


@dataclass(slots=True)
class EnvWarning:
    """A warning one rule made, from its proposal or issue to its end."""

    id: str
    rule: str
    status: Status
    severity: str
    lines: list[str]
    start: float
    end: float
    area: list[float]  # lat, lon, radius_m
    sensors: list[str]
    value: float
    event: str = "Warning"
    source: str = ""
    decided_by: str | None = None
    issued_at: float | None = None
    finished_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class EnvStats:
    readings: int = 0
    proposed: int = 0
    issued: int = 0
    withdrawn: int = 0
    rejected: int = 0
    expired: int = 0
    # (clock time, what) for the demo's summary and the bench: the latest TIMELINE_KEPT
    timeline: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=TIMELINE_KEPT))


class EnvironmentError(ValueError):
    """An operator request that cannot apply (`reason`: a short code for the nack)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class EnvironmentController:
    """Sensor readings in, rule warnings out; see the module docstring."""

    name = DOMAIN

    def __init__(self, kernel: Kernel, cfg: EnvironmentSettings, *, sink: WarningSink | None = None) -> None:
        self.cfg = cfg
        self._clock = kernel.clock
        self._bus = kernel.bus
        self._alarms = kernel.alarms
        self.engine = RuleEngine(cfg, ZoneInfo(kernel.settings.site.timezone))
        self.rules = {r.id: r for r in cfg.rules}
        self.sensor_ids = {s.id for s in cfg.sensors}
        self._sensor_cfg = {s.id: s for s in cfg.sensors}
        self._sink = sink
        self._sub = kernel.bus.subscribe(DOMAIN, Telemetry)
        self.warnings: dict[str, EnvWarning] = {}  # proposed or issued, by id
        self.finished: deque[EnvWarning] = deque(maxlen=FINISHED_KEPT)
        self._of_rule: dict[str, str] = {}  # rule -> its live warning
        self._status: dict[str, str] = {}  # sensor -> "ok" / "stale" / "implausible" as last published
        self._seq = 0
        self._started = kernel.clock.now()
        self._stale_of = {x.id: x.stale_after_s or cfg.stale_after_s for x in cfg.sensors}
        self._changed = asyncio.Event()
        self.stats = EnvStats()

    # ----- the Controller protocol ----------------------------------------------------------

    def request_replan(self) -> None:
        """Evaluate the rules now."""
        self._changed.set()

    def views(self) -> Mapping[str, Any]:
        return {
            "warnings": dict(self.warnings),
            "finished": list(self.finished),
            "firing": self.engine.firing(),
        }

    def restore(self, body: Mapping[str, Any], now: float) -> int:
        """Bring back the warnings proposed or in force when the daemon stopped (not yet ended).

        The rules start clear after a restart: a restored warning is withdrawn by its rule only
        once the rule has fired and cleared again; until then it stays until an operator withdraws
        it or its end, as one whose sensors went silent does. An issued one takes its displays
        again when `run` starts."""
        n = 0
        records = body.get("warnings")
        for raw in records if isinstance(records, list) else []:
            if (
                not isinstance(raw, dict)
                or not isinstance(raw.get("id"), str)
                or not isinstance(raw.get("rule"), str)
                or raw["rule"] not in self.rules
                or raw.get("id") in self.warnings
            ):
                continue
            if raw.get("status") not in {"proposed", "issued"} or not isinstance(raw.get("end"), int | float):
                continue
            if raw["end"] <= now:
                continue
            try:
                w = EnvWarning(**{k: raw[k] for k in EnvWarning.__dataclass_fields__ if k in raw})
                w.start, w.end, w.value = float(w.start), float(w.end), float(w.value)
                w.area = [float(x) for x in w.area][:3]
                if len(w.area) != 3 or not isinstance(w.id, str) or not w.lines:
                    raise ValueError("not a warning record")
            except (TypeError, ValueError, KeyError) as exc:  # an older or damaged record: skipped, said
                log.error("environment_restore_skipped", record=str(raw.get("id"))[:80], error=str(exc)[:200])
                continue
            self.warnings[w.id] = w
            self._of_rule[w.rule] = w.id
            n += 1
        return n

    async def run(self) -> None:
        for w in self.warnings.values():
            if w.status == "issued" and self._sink is not None:
                self._sink.issue(w)  # restored: the displays' own state did not outlive the process
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch(), name="environment.watch")
            while True:
                try:
                    self.step(self._clock.now())
                except Exception:  # the next step tries again: warnings must not stop for good
                    log.exception("environment_step_failed")
                try:
                    async with asyncio.timeout(max(0.05, self.cfg.evaluate_every_s / self._clock.speed)):
                        await self._changed.wait()
                except TimeoutError:
                    pass
                self._changed.clear()

    async def _watch(self) -> None:
        async for ev in self._sub:
            if not isinstance(ev, Telemetry) or ev.derived or ev.device_id not in self.sensor_ids:
                continue
            try:
                self.engine.reading(ev.device_id, ev.ts, ev.values)
                self._flags(ev.device_id, ev.values)
                self.stats.readings += 1
                self._changed.set()
            except Exception:  # one bad reading must not end the watch (a per-message boundary)
                log.exception("environment_reading_failed", device=ev.device_id)

    # ----- evaluation -------------------------------------------------------------------------

    def step(self, now: float) -> None:
        """Sensor health, rule transitions, expiry; north when anything changed."""
        changed = self._sensors(now)
        for t in self.engine.evaluate(now):
            changed = True
            self._fired(t, now) if t.fired else self._cleared(t, now)
        for w in list(self.warnings.values()):
            end = self.engine.end_of(w.rule)
            rule = self.rules[w.rule]
            # pushed on in quarter steps (so CAP is not updated per reading), and always at its end
            # while the rule's own end lies later
            if end is not None and (end - w.end >= rule.duration_s / 4 or (now >= w.end and end > now)):
                w.end = end
                if w.status == "issued" and self._sink is not None:
                    self._sink.issue(w)
                changed = True
            if now >= w.end:
                self._finish(w, "expired", now, None)
                changed = True
        changed |= self._still_firing(now)
        if changed:
            self.publish(now)

    def _still_firing(self, now: float) -> bool:
        """A rule that kept firing past its warning's end (its sensors were silent, then came back
        over `off`) makes a new warning: the engine reports no new transition for it."""
        made = False
        for rule_id in self.engine.firing():
            end = self.engine.end_of(rule_id)
            if rule_id in self._of_rule or end is None or end <= now:
                continue
            rule = self.rules[rule_id]
            seen = {sid: st for sid, st in self.engine.sensors(now).items()
                    if st.fresh and self._sensor_cfg[sid].group == rule.group and rule.metric in st.values}  # fmt: skip
            value = max((st.values[rule.metric] for st in seen.values()), default=rule.on)
            self._fired(Transition(rule_id, True, now, value, tuple(sorted(seen)), "still firing"), now)
            made = True
        return made

    def _flags(self, sid: str, values: Mapping[str, Value]) -> None:
        """What a sensor says about itself: a probe fault, tamper, a low battery (maintenance)."""
        for flag in ("probe_fault", "tamper"):
            if flag in values:
                self._alarms.set(sid, flag, values[flag] is True, Severity.MINOR)
        battery = values.get("battery")
        if isinstance(battery, int | float) and not isinstance(battery, bool):
            self._alarms.set(
                sid, "battery_low", battery < BATTERY_LOW_PCT, Severity.MINOR, f"battery {battery:.0f} %"
            )

    def _sensors(self, now: float) -> bool:
        """Maintenance alarms for stale and implausible sensors, and their status into the store."""
        changed = False
        for sid, st in self.engine.sensors(now).items():
            status = "unknown" if st.last_ts is None else "ok"
            # a sensor silent since the start (dead at install, or gone while the daemon was down)
            # is as stale as one that stopped: it counts from the start
            never = st.last_ts is None and now - self._started > self._stale_of[sid]
            if never or (st.last_ts is not None and not st.fresh):
                status = "stale"
            elif st.implausible:
                status = "implausible"
            self._alarms.set(sid, "stale", status == "stale", Severity.MINOR,
                             "no reading: it neither issues nor clears a warning")  # fmt: skip
            self._alarms.set(
                sid, "implausible", status == "implausible", Severity.MINOR, st.implausible or ""
            )
            if self._status.get(sid) != status or status == "ok":
                cfg = self._sensor_cfg[sid]
                values: dict[str, Value] = {"profile": cfg.profile, "group": cfg.group, "status": status,
                                            "values": orjson.dumps(dict(st.values)).decode()}  # fmt: skip
                if self._status.get(sid) != status:
                    changed = True
                    self.stats.timeline.append((now, f"sensor {sid} {status}"))
                self._status[sid] = status
                self._bus.publish(Telemetry(sid, now, values, derived=True))
        return changed

    def _fired(self, t: Transition, now: float) -> None:
        rule = self.rules[t.rule_id]
        self.stats.timeline.append((now, f"rule {rule.id} fired: {t.reason}"))
        if t.rule_id in self._of_rule:
            return  # its warning is still live (withdrawn by nobody): nothing new
        self._seq += 1
        w = EnvWarning(
            id=f"env-{rule.id[:40]}-{int(now) % 100_000_000}-{self._seq}",
            rule=rule.id, status="proposed", severity=rule.severity, lines=list(rule.lines), start=now,
            end=self.engine.end_of(rule.id) or now + rule.duration_s, area=self.area(rule),
            sensors=list(t.sensors), value=t.value, event=rule.event, source=f"rule:{rule.id}",
        )  # fmt: skip
        self.warnings[w.id] = w
        self._of_rule[rule.id] = w.id
        if rule.mode == "issue":
            self._issue(w, now, "rule")
        else:
            self.stats.proposed += 1
            self._alarms.set(rule.id, "warning_proposed", True, Severity.MAJOR,
                             f"{w.id}: {' / '.join(w.lines)} (confirm or reject)")  # fmt: skip
            self.stats.timeline.append((now, f"warning {w.id} proposed"))
        log.warning("environment_rule_fired", rule=rule.id, warning=w.id, mode=rule.mode, value=t.value)

    def _cleared(self, t: Transition, now: float) -> None:
        self.stats.timeline.append((now, f"rule {t.rule_id} cleared: {t.reason}"))
        wid = self._of_rule.pop(t.rule_id, None)
        if wid is not None and (w := self.warnings.get(wid)) is not None:
            self._finish(w, "withdrawn", now, f"rule:{t.rule_id}")

    def _issue(self, w: EnvWarning, now: float, by: str) -> None:
        w.status, w.issued_at, w.decided_by = "issued", now, by
        self.stats.issued += 1
        self._alarms.set(w.rule, "warning_proposed", False, Severity.MAJOR)
        if self._sink is not None:
            self._sink.issue(w)
        self.stats.timeline.append((now, f"warning {w.id} issued by {by}"))

    def _finish(self, w: EnvWarning, status: Status, now: float, by: str | None) -> None:
        was_issued = w.status == "issued"
        w.status, w.finished_at = status, now
        if by is not None:
            w.decided_by = by
        del self.warnings[w.id]
        if status == "expired" or w.rule not in self.engine.firing():
            # an operator's withdraw or reject while its rule fires: no second warning until it clears
            self._of_rule.pop(w.rule, None)
        self.finished.append(w)
        setattr(self.stats, status, getattr(self.stats, status) + 1)
        self._alarms.set(w.rule, "warning_proposed", False, Severity.MAJOR)
        if was_issued and self._sink is not None:
            self._sink.withdraw(w.id)
        self.stats.timeline.append((now, f"warning {w.id} {status}"))
        log.info("environment_warning_finished", warning=w.id, status=status, by=by)

    def area(self, rule: RuleSettings) -> list[float]:
        """The rule's area: a circle around its group's sensors, wide enough to hold them all."""
        pts = [(s.lat, s.lon) for s in self.cfg.sensors if s.group == rule.group]
        lat = sum(p[0] for p in pts) / len(pts)
        lon = sum(p[1] for p in pts) / len(pts)
        spread = max(haversine_m(lat, lon, a, b) for a, b in pts)
        return [round(lat, 6), round(lon, 6), max(rule.radius_m, spread)]

    # ----- operator ---------------------------------------------------------------------------

    def decide(self, warning_id: str, action: str, by: str) -> EnvWarning:
        """confirm / reject a proposed warning, withdraw one in force (ValueError for another action)."""
        if action not in {"confirm", "reject", "withdraw"}:
            raise ValueError(f"unknown action {action!r}: confirm, reject or withdraw")
        w = self.warnings.get(warning_id)
        if w is None:
            done = next((x for x in self.finished if x.id == warning_id), None)
            raise EnvironmentError("warning_finished" if done else "unknown_warning",
                                   f"{warning_id}" + (f" is {done.status}" if done else ""))  # fmt: skip
        now = self._clock.now()
        if action == "confirm":
            if w.status != "proposed":
                raise EnvironmentError("not_proposed", f"{warning_id} is {w.status}")
            self._issue(w, now, by)
        elif action == "reject":
            if w.status != "proposed":
                raise EnvironmentError("not_proposed", f"{warning_id} is {w.status}: withdraw it")
            self._finish(w, "rejected", now, by)
        else:
            self._finish(w, "withdrawn", now, by)
        self.publish(now)
        return w

    # ----- north --------------------------------------------------------------------------------

    def publish(self, now: float) -> None:
        firing = self.engine.firing()
        rules = [
            {"id": r.id, "group": r.group, "metric": r.metric, "firing": r.id in firing,
             "since": firing.get(r.id), "warning": self._of_rule.get(r.id)}
            for r in self.cfg.rules
        ]  # fmt: skip
        body: dict[str, object] = {
            "rules": rules,
            "warnings": [w.as_dict() for w in self.warnings.values()],
            "finished": [w.as_dict() for w in list(self.finished)[-20:]],
            "stats": {"readings": self.stats.readings, "proposed": self.stats.proposed, "issued": self.stats.issued,
                      "withdrawn": self.stats.withdrawn, "rejected": self.stats.rejected,
                      "expired": self.stats.expired},
        }  # fmt: skip
        self._bus.publish(PlanEvent(DOMAIN, now, body))
