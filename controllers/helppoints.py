"""Help points: a press in a lamp post becomes an incident the control room handles.

Within a second of a press reaching the daemon (one bus event, no planning): a critical alarm
with the post's place and street; the lamps within `radius_m` to 100 % through the dispatcher
at safety priority (audited, held until the incident is closed); a notice on the nearest
displays if the site wants one; the incident published (retained until closed). The operator
acknowledges, notes and closes it; the lights go back to their plan only on close. An incident
nobody acknowledges within `ack_timeout_s` escalates: a second alarm, and the incident on the
escalation target's retained topic.

A press is a rising `pressed` bit or a higher `press_count` (a press shorter than a poll still
counts). A press while the post's incident is open counts on that incident, so a stuck or
hammered button is one incident; a button held longer than `stuck_after_s` is a maintenance
alarm, and after a close it opens a new incident only once it has been released. Self-test
failures, tamper, a low battery and a controller that does not answer ("help point
unavailable") are alarms of the help point.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import structlog

from edge.events import Availability, PlanEvent, Severity, Telemetry, Value
from edge.geo import haversine_m
from edge.kernel import Kernel
from edge.settings import HelpPointsSettings

log = structlog.get_logger(__name__)

DOMAIN = "helppoints"
SOURCE = "helppoint"  # commands' source prefix: "helppoint:<incident id>"
HOLD_S = 7 * 86400.0  # lamps stay up until the close releases them; re-raised before this runs out
CLOSED_KEPT = 200  # closed incidents kept for the API, the dashboard and the demo's summary
ALARM_CALL = "help_call"
ALARM_ESCALATED = "help_call_escalated"
STATUS_ALARMS: Mapping[str, tuple[str, Severity]] = {
    "selftest_failed": ("selftest_failed", Severity.MAJOR),
    "tamper": ("tamper", Severity.MAJOR),
    "on_battery": ("on_battery", Severity.MINOR),
}

Status = Literal["open", "acknowledged", "closed"]


@dataclass(frozen=True, slots=True)
class HelpPointSite:
    """Where a help point is: its post (a lamp), place and street."""

    id: str
    post: str
    lat: float
    lon: float
    street: str


@dataclass(slots=True)
class Incident:
    """One emergency call, from the press to the close."""

    id: str
    helppoint: str
    post: str
    street: str
    lat: float
    lon: float
    opened_at: float
    status: Status = "open"
    presses: int = 1
    caller_cancelled: bool = False
    acked_by: str | None = None
    acked_at: float | None = None
    escalated_at: float | None = None
    closed_by: str | None = None
    closed_at: float | None = None
    close_comment: str = ""
    notes: list[dict[str, Any]] = field(default_factory=list)
    lamps: list[str] = field(default_factory=list)
    displays: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The incident as the API publishes it (lamps as a count: a city block has hundreds)."""
        d = asdict(self)
        d["lamps"] = len(self.lamps)
        return d


@dataclass(slots=True)
class HelpPointStats:
    calls: int = 0
    presses: int = 0
    acknowledged: int = 0
    closed: int = 0
    escalated: int = 0
    ack_total_s: float = 0.0  # summed, not listed: a year of calls is one number

    @property
    def mean_time_to_ack_s(self) -> float | None:
        return self.ack_total_s / self.acknowledged if self.acknowledged else None


class IncidentError(ValueError):
    """An operator request that cannot apply (`reason`: a short code for the nack)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


RaiseLamps = Callable[[str, float, str], None]  # (lamp id, hold_s, incident id)
ReleaseLamp = Callable[[str, str], bool]  # (lamp id, incident id) -> released
Notice = Callable[[str, frozenset[str], float, float], None]  # (incident id, displays, start, end)
ClearNotice = Callable[[str], None]


class HelpPointController:
    """Turns help-point readings into incidents and acts on them; see the module docstring."""

    name = DOMAIN

    def __init__(
        self,
        kernel: Kernel,
        cfg: HelpPointsSettings,
        *,
        sites: Mapping[str, HelpPointSite],
        lamps: Mapping[str, tuple[float, float]],
        raise_lamp: RaiseLamps | None = None,
        release_lamp: ReleaseLamp | None = None,
        displays: Mapping[str, tuple[float, float]] | None = None,
        notice: Notice | None = None,
        clear_notice: ClearNotice | None = None,
        lorawan: frozenset[str] = frozenset(),
    ) -> None:
        """`lamps`/`displays`: positions by id; the callables act through the lighting and
        displays domains (None: the site has none)."""
        self.cfg = cfg
        self.sites = dict(sites)
        self._lamp_pos = lamps
        self._display_pos = displays or {}
        self._raise, self._release = raise_lamp, release_lamp
        self._notice, self._clear_notice = notice, clear_notice
        self._clock = kernel.clock
        self._bus = kernel.bus
        self._alarms = kernel.alarms
        self._sub = kernel.bus.subscribe(DOMAIN, Telemetry, Availability)
        self.incidents: dict[str, Incident] = {}  # open or acknowledged, by id
        self.closed: deque[Incident] = deque(maxlen=CLOSED_KEPT)
        self._of_post: dict[str, str] = {}  # help point -> its open incident
        self._last: dict[str, tuple[bool, int | None]] = {}  # help point -> (pressed, press_count)
        self._held_since: dict[str, float] = {}  # help point -> when its button went down
        self._blocked: set[str] = set()  # closed while still held: no new incident until released
        self._near: dict[str, list[str]] = {}
        self._raised_at: dict[str, float] = {}  # incident -> when its lamps were last raised
        self._seq = itertools.count(1)
        self._changed = asyncio.Event()
        self._restored: list[str] = []
        # LoRaWAN buttons send a heartbeat (hourly): one silent too long is unavailable, as a
        # Modbus one is when its controller does not answer.
        self._lorawan = lorawan
        self._heard: dict[str, float] = {}
        self._started = kernel.clock.now()
        self.stats = HelpPointStats()

    # ----- the Controller protocol ----------------------------------------------------------

    def request_replan(self) -> None:
        """Nothing to plan: incidents act at once."""

    def views(self) -> Mapping[str, Any]:
        """Open incidents, the latest closed ones, the numbers."""
        return {"incidents": dict(self.incidents), "closed": list(self.closed), "stats": self.stats}

    async def run(self) -> None:
        """Readings from the bus; escalations on time; the incident list north on every change."""
        for inc_id in self._restored:
            if (inc := self.incidents.get(inc_id)) is not None:
                self._act(inc, self._clock.now())
        self._restored.clear()
        for hp in self.sites:
            self._describe(hp)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch(), name="helppoints.watch")
            tg.create_task(self._timers(), name="helppoints.timers")
            self.publish()
            while True:
                await self._changed.wait()
                self._changed.clear()
                self.publish()

    async def _watch(self) -> None:
        async for ev in self._sub:
            try:
                if isinstance(ev, Telemetry):
                    if not ev.derived and ev.device_id in self.sites:
                        self.reading(ev.device_id, ev.values, ev.ts)
                elif isinstance(ev, Availability):
                    for dev in ev.device_ids:
                        if dev in self.sites:
                            self._alarms.set(dev, "unavailable", not ev.online, Severity.MAJOR,
                                             f"help point unavailable: {ev.reason}"[:200])  # fmt: skip
            except Exception:  # one bad event must not end the watch (a per-message boundary)
                log.exception("helppoint_event_failed", event=type(ev).__name__)

    async def _timers(self) -> None:
        """Escalate what nobody acknowledged in time; flag buttons held too long."""
        while True:
            await asyncio.sleep(0.2)
            try:
                self.check_timers(self._clock.now())
            except Exception:  # the next pass tries again; escalations must not stop for good
                log.exception("helppoint_timers_failed")

    # ----- readings ---------------------------------------------------------------------------

    def reading(self, hp: str, values: Mapping[str, Value], ts: float) -> None:
        """One reading of a help point: presses, cancels and its status alarms."""
        self._heard[hp] = self._clock.now()
        pressed = values.get("pressed") is True
        count = values.get("press_count")
        count_i = int(count) if isinstance(count, int | float) and not isinstance(count, bool) else None
        was_pressed, last_count = self._last.get(hp, (False, None))
        self._last[hp] = (pressed, count_i)
        counted = count_i is not None and last_count is not None and count_i != last_count
        if hp in self._lorawan:
            # A LoRaWAN button's `pressed` marks the uplink that reports a press (it sends again
            # only on a cancel or its heartbeat): an event, never a button held down.
            if (pressed and (counted or last_count is None or not was_pressed)) or counted:
                self.stats.presses += 1
                self.press(hp, ts)
            self._status_alarms(hp, values, ts)
            return
        new_press = (pressed and not was_pressed) or counted
        if pressed:
            self._held_since.setdefault(hp, ts)
        else:
            self._held_since.pop(hp, None)
            self._blocked.discard(hp)
            self._alarms.set(hp, "button_stuck", False, Severity.MAJOR)
        if new_press:
            self.stats.presses += 1
            if hp not in self._blocked:
                self.press(hp, ts)
        self._status_alarms(hp, values, ts)

    def _status_alarms(self, hp: str, values: Mapping[str, Value], ts: float) -> None:
        """A caller's cancel on the open call, and the help point's own state as alarms."""
        inc = self._open_incident(hp)
        if values.get("cancelled") is True and inc is not None and not inc.caller_cancelled:
            inc.caller_cancelled = True
            self._note(inc, ts, "caller", "the caller cancelled the call at the post")
        for key, (code, sev) in STATUS_ALARMS.items():
            if key in values:
                self._alarms.set(hp, code, values[key] is True, sev)
        battery = values.get("battery")
        if isinstance(battery, int | float) and not isinstance(battery, bool):
            self._alarms.set(hp, "battery_low", battery < self.cfg.battery_low_pct, Severity.MINOR,
                             f"battery {battery:.0f} %")  # fmt: skip

    def press(self, hp: str, ts: float) -> Incident:
        """A press: counts on the post's open incident, or opens one and acts on it."""
        inc = self._open_incident(hp)
        if inc is not None:
            inc.presses += 1
            self._changed.set()
            return inc
        site = self.sites[hp]
        now = self._clock.now()
        inc = Incident(
            f"inc-{int(now)}-{next(self._seq)}", hp, site.post, site.street, site.lat, site.lon, ts
        )
        self.incidents[inc.id] = inc
        self._of_post[hp] = inc.id
        self.stats.calls += 1
        self._alarms.set(hp, ALARM_CALL, True, Severity.CRITICAL,
                         f"{inc.id}: help point at {site.street}, post {site.post} ({site.lat:.6f}, {site.lon:.6f})")  # fmt: skip
        self._act(inc, now)
        self._describe(hp)
        log.warning("helppoint_call", incident=inc.id, helppoint=hp, street=site.street, lamps=len(inc.lamps))
        self._changed.set()
        return inc

    def _act(self, inc: Incident, now: float) -> None:
        """Lamps up and the notice on, for an incident that is (again) open."""
        self._raised_at[inc.id] = now
        inc.lamps = self.lamps_near(inc.helppoint)
        if self._raise is not None:
            for lamp in inc.lamps:
                self._raise(lamp, HOLD_S, inc.id)
        if self._notice is not None and self.cfg.notice_displays > 0:
            near = sorted(
                (haversine_m(inc.lat, inc.lon, lat, lon), d) for d, (lat, lon) in self._display_pos.items()
            )
            shown = [d for dist, d in near if dist <= self.cfg.notice_radius_m][: self.cfg.notice_displays]
            inc.displays = shown
            if shown:
                self._notice(inc.id, frozenset(shown), now, now + HOLD_S)

    def lamps_near(self, hp: str) -> list[str]:
        """The lamps within `radius_m` of the help point (its own post included)."""
        if hp not in self._near:
            site, r = self.sites[hp], self.cfg.radius_m
            near = [
                x
                for x, (lat, lon) in self._lamp_pos.items()
                if haversine_m(site.lat, site.lon, lat, lon) <= r
            ]
            self._near[hp] = sorted(set(near) | ({site.post} if site.post in self._lamp_pos else set()))
        return self._near[hp]

    def _describe(self, hp: str) -> None:
        """The help point's place and open call into the state store (derived: it never makes the
        help point look reachable), so its retained state says where it is and what is going on."""
        site, inc = self.sites[hp], self._of_post.get(hp)
        values: dict[str, Value] = {"post": site.post, "street": site.street, "lat": site.lat, "lon": site.lon,
                                    "incident": inc or ""}  # fmt: skip
        self._bus.publish(Telemetry(hp, self._clock.now(), values, derived=True))

    def _open_incident(self, hp: str) -> Incident | None:
        inc_id = self._of_post.get(hp)
        return None if inc_id is None else self.incidents.get(inc_id)

    # ----- operator ---------------------------------------------------------------------------

    def acknowledge(self, incident_id: str, by: str, comment: str = "") -> Incident:
        inc = self._get(incident_id)
        now = self._clock.now()
        if inc.acked_at is None:
            inc.acked_by, inc.acked_at, inc.status = by, now, "acknowledged"
            self.stats.acknowledged += 1
            self.stats.ack_total_s += max(0.0, now - inc.opened_at)
        if comment:
            self._note(inc, now, by, comment)
        self._changed.set()
        return inc

    def note(self, incident_id: str, by: str, comment: str) -> Incident:
        inc = self._get(incident_id)
        self._note(inc, self._clock.now(), by, comment)
        return inc

    def close(self, incident_id: str, by: str, comment: str) -> Incident:
        """Close with a comment: alarms clear, the lamps go back to their plan, the notice goes."""
        inc = self._get(incident_id)
        now = self._clock.now()
        inc.status, inc.closed_by, inc.closed_at, inc.close_comment = "closed", by, now, comment
        del self.incidents[inc.id]
        self._raised_at.pop(inc.id, None)
        self._of_post.pop(inc.helppoint, None)
        self.closed.append(inc)
        self.stats.closed += 1
        if self._last.get(inc.helppoint, (False, None))[0]:
            self._blocked.add(inc.helppoint)  # still held down: a new call needs a release first
        self._alarms.set(inc.helppoint, ALARM_CALL, False, Severity.CRITICAL)
        self._alarms.set(inc.helppoint, ALARM_ESCALATED, False, Severity.CRITICAL)
        if self._release is not None:
            for lamp in inc.lamps:
                self._release(lamp, inc.id)
        if self._clear_notice is not None and inc.displays:
            self._clear_notice(inc.id)
        self._describe(inc.helppoint)
        log.info("helppoint_closed", incident=inc.id, by=by)
        self._changed.set()
        return inc

    def _get(self, incident_id: str) -> Incident:
        inc = self.incidents.get(incident_id)
        if inc is None:
            closed = any(c.id == incident_id for c in self.closed)
            raise IncidentError("incident_closed" if closed else "unknown_incident", incident_id)
        return inc

    def _note(self, inc: Incident, ts: float, by: str, text: str) -> None:
        inc.notes.append({"ts": ts, "by": by, "text": text[:500]})
        del inc.notes[:-50]  # a bounded record: the audit keeps every request
        self._changed.set()

    # ----- time -------------------------------------------------------------------------------

    def check_timers(self, now: float) -> None:
        """Escalate open incidents past `ack_timeout_s`; flag buttons held past `stuck_after_s`."""
        for inc in list(self.incidents.values()):
            if (
                inc.acked_at is None
                and inc.escalated_at is None
                and now - inc.opened_at >= self.cfg.ack_timeout_s
            ):
                inc.escalated_at = now
                self.stats.escalated += 1
                self._alarms.set(inc.helppoint, ALARM_ESCALATED, True, Severity.CRITICAL,
                                 f"{inc.id} not acknowledged in {self.cfg.ack_timeout_s:.0f} s: "
                                 f"escalated to {self.cfg.escalation_target}")  # fmt: skip
                log.warning("helppoint_escalated", incident=inc.id, target=self.cfg.escalation_target)
                self._changed.set()
            if now - self._raised_at.get(inc.id, now) >= HOLD_S / 2:
                self._act(inc, now)  # a week-long incident: its lamps' hold is renewed
        for hp in self._lorawan:
            heard = self._heard.get(hp, self._started)
            self._alarms.set(hp, "unavailable", now - heard > self.cfg.lorawan_silent_after_s, Severity.MAJOR,
                             f"help point unavailable: no uplink for {now - heard:.0f} s")  # fmt: skip
        for hp, since in self._held_since.items():
            if now - since >= self.cfg.stuck_after_s:
                self._alarms.set(hp, "button_stuck", True, Severity.MAJOR,
                                 f"pressed for {now - since:.0f} s")  # fmt: skip

    # ----- north and restart ------------------------------------------------------------------

    def publish(self) -> None:
        """The open incidents and the escalations as a `PlanEvent` (stored, so a restart brings
        them back; the API publishes each incident retained until it is closed)."""
        escalated = [i.id for i in self.incidents.values() if i.escalated_at is not None]
        body: dict[str, object] = {
            "incidents": [i.as_dict() for i in self.incidents.values()],
            "closed": [i.as_dict() for i in list(self.closed)[-20:]],
            "escalations": {self.cfg.escalation_target: escalated},
            "stats": {"calls": self.stats.calls, "acknowledged": self.stats.acknowledged,
                      "closed": self.stats.closed, "escalated": self.stats.escalated},
        }  # fmt: skip
        self._bus.publish(PlanEvent(DOMAIN, self._clock.now(), body))

    def restore(self, body: Mapping[str, Any]) -> int:
        """Bring back the incidents open at a restart (before `run`, which raises their lamps and
        notices again: the dispatcher's layers do not outlive the process)."""
        n = 0
        records = body.get("incidents")
        for raw in records if isinstance(records, list) else []:
            if (
                not isinstance(raw, dict)
                or not isinstance(raw.get("id"), str)
                or not isinstance(raw.get("helppoint"), str)
                or raw["helppoint"] not in self.sites
                or raw.get("id") in self.incidents
            ):
                continue
            try:
                inc = _incident_of(raw)
            except (TypeError, ValueError, KeyError) as exc:  # an older or damaged record: skipped, said
                log.error("helppoint_restore_skipped", record=str(raw.get("id"))[:80], error=str(exc)[:200])
                continue
            self.incidents[inc.id] = inc
            self._of_post[inc.helppoint] = inc.id
            self._restored.append(inc.id)
            n += 1
        if n:
            self._changed.set()
        return n


def _incident_of(raw: Mapping[str, Any]) -> Incident:
    """A stored incident record, checked field by field (TypeError/ValueError/KeyError if not one)."""
    keys = Incident.__dataclass_fields__.keys() - {"lamps", "displays"}
    inc = Incident(**{k: raw[k] for k in keys if k in raw})
    text = (inc.id, inc.helppoint, inc.post, inc.street)
    if not all(isinstance(x, str) for x in text) or inc.status not in {"open", "acknowledged"}:
        raise ValueError("not an open incident")
    inc.opened_at, inc.lat, inc.lon = float(inc.opened_at), float(inc.lat), float(inc.lon)
    for name in ("acked_at", "escalated_at"):
        v = getattr(inc, name)
        setattr(inc, name, None if v is None else float(v))
    inc.presses = int(inc.presses)
    inc.notes = [n for n in inc.notes if isinstance(n, dict)] if isinstance(inc.notes, list) else []
    return inc
