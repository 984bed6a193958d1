"""The dashboard's picture of one site, folded from MQTT messages (pure: no I/O, no clock).

`SiteModel.apply(topic, payload)` takes every message published under `dos/v1/{site}/`
and updates lamps, controllers, charge points, feeders, alarms, the lighting and charging
plans and the daemon's status. The
payloads are parsed with the API's own pydantic models (`edge.payloads`); a payload that
does not parse is counted in `bad_payloads` and otherwise ignored, so nothing a broker
delivers can crash the dashboard.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from edge.payloads import (
    API_VERSION,
    AlarmHistory,
    AlarmMessage,
    ChargerState,
    CommandResultMessage,
    ControllerState,
    DaemonStatus,
    DisplayState,
    FeederState,
    LampState,
    LampTelemetry,
    ParkingState,
    PlanMessage,
)

PREFIX = f"dos/{API_VERSION}"
SEVERITIES = ("critical", "major", "minor", "warning")
MAX_EVENTS = 200
MAX_RESULTS = 50
VOLTS = 230.0  # phase voltage: charging power against a feeder limit assumes three phases
FEEDER_HIGH = 0.9  # a feeder above this fraction of its limit is flagged
FEEDER_SAMPLE_S = 30.0  # one load sample per feeder per this many seconds (clock time) ...
FEEDER_SAMPLES = 40  # ... kept for the load-over-time chart: 20 minutes


class Change(enum.StrEnum):
    """What a message changed, so the app refreshes only the views that show it."""

    LAMP = "lamp"
    CONTROLLER = "controller"
    ALARM = "alarm"
    PLAN = "plan"
    STATUS = "status"
    CHARGING = "charging"
    DISPLAYS = "displays"
    WASTE = "waste"
    RESULT = "result"
    IGNORED = "ignored"
    BAD = "bad"


class LampStatus(enum.StrEnum):
    """A lamp's condition in words (the dashboard never relies on colour alone)."""

    ON = "on"
    DIMMED = "dimmed"
    OFF = "off"
    FAILED = "FAILED"
    OFFLINE = "offline"
    UNKNOWN = "unknown"


def lamp_status(state: LampState) -> LampStatus:
    """Offline beats failed beats the level: what an operator must act on comes first."""
    if state.online is False:
        return LampStatus.OFFLINE
    if state.failures:
        return LampStatus.FAILED
    level = state.level_actual if state.level_actual is not None else state.level_cmd
    if level is None:
        return LampStatus.UNKNOWN
    if level <= 0:
        return LampStatus.OFF
    if level < 100:
        return LampStatus.DIMMED
    return LampStatus.ON


def alarm_event(alarm: AlarmMessage) -> str:
    """What an alarm message says happened: `raised`, `acked` (active and acknowledged) or `cleared`."""
    if not alarm.active:
        return "cleared"
    return "acked" if alarm.acked else "raised"


def alarm_event_ts(alarm: AlarmMessage) -> float:
    """When that happened: the ack's time for an acknowledgement, else the message's."""
    if alarm.active and alarm.acked and alarm.ack_ts is not None:
        return alarm.ack_ts
    return alarm.ts


def severity_rank(severity: str) -> int:
    """0 for the most severe; unknown severities sort last."""
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        return len(SEVERITIES)


class PlanGroup(BaseModel):
    """One planning group's level per slot (`plan.groups[]` of a lighting PlanMessage)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    levels: list[int]
    energy_kwh: float = 0.0


class LightingPlan(BaseModel):
    """The parts of the lighting plan body the dashboard shows (unknown keys are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: str = ""
    reason: str = ""
    groups: list[PlanGroup] = []
    energy_kwh: float = 0.0
    baseline_static_kwh: float = 0.0
    baseline_dortmund_kwh: float = 0.0
    slot_starts: list[float] = []
    on: float | None = None
    off: float | None = None
    ts: float = 0.0

    def saving(self, baseline_kwh: float) -> float | None:
        """Fraction saved against a baseline (None without one)."""
        if baseline_kwh <= 0:
            return None
        return 1.0 - self.energy_kwh / baseline_kwh


class PlanSession(BaseModel):
    """One car's current per slot (`plan.sessions[]` of a charging PlanMessage)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    current_a: list[float] = []
    energy_kwh: float = 0.0
    unmet_kwh: float = 0.0


class ChargingPlan(BaseModel):
    """The parts of the charging plan body the dashboard shows (unknown keys are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: str = ""
    reason: str = ""
    sessions: list[PlanSession] = []
    delivered_kwh: float = 0.0
    requested_kwh: float = 0.0
    start: float = 0.0
    slot_s: float = 900.0
    ts: float = 0.0

    def current_at(self, session_id: str, ts: float) -> float | None:
        """The planned current of a session in the slot holding `ts` (None: not planned)."""
        if self.slot_s <= 0:
            return None
        i = int((ts - self.start) // self.slot_s)
        for s in self.sessions:
            if s.id == session_id:
                return s.current_a[i] if 0 <= i < len(s.current_a) else 0.0
        return None

    def session(self, session_id: str) -> PlanSession | None:
        return next((s for s in self.sessions if s.id == session_id), None)


class Recommendation(BaseModel):
    """One sign's guidance: which car park it sends its approach to (`guidance.recommendations[]`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    sign_id: str
    car_park: str | None = None
    free: int | None = None
    minutes: float | None = None
    hint: str = ""


class GuidancePlan(BaseModel):
    """The retained `guidance` topic (unknown keys are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    recommendations: list[Recommendation] = []


class ActiveWarning(BaseModel):
    """One warning in force (an element of the retained `warnings/active` list)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    severity: str
    lines: list[str] = []
    displays: list[str] = []
    start: float | None = None
    end: float | None = None


WARNING_SEVERITIES = ("extreme", "severe", "warning", "info")


class _View(BaseModel):
    """The dashboard's reading of a payload: the fields it shows, unknown ones ignored.

    The waste payloads are read this way (not with strict API models) so that a daemon that
    adds a field does not blank the Waste view of an older dashboard.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)


class BinView(_View):
    """A bin's retained state (`waste/bins/{bin}/state`)."""

    id: str
    lat: float | None = None
    lon: float | None = None
    kind: str = ""
    zone: str = ""
    fill: float | None = None
    rate_per_h: float | None = None
    full_ts: float | None = None
    battery: float | None = None
    temperature: float | None = None
    alarms: list[str] = []
    status: str = "ok"
    last_seen_ts: float | None = None
    last_emptied_ts: float | None = None
    plan: str = "none"
    forced: bool = False
    excluded: bool = False
    ts: float = 0.0


class TruckView(_View):
    """A truck's retained state (`waste/trucks/{truck}/state`)."""

    id: str
    online: bool | None = None
    status: str = ""
    lat: float | None = None
    lon: float | None = None
    load_l: float | None = None
    load_kg: float | None = None
    load_pct: float | None = None
    route_id: str | None = None
    stop_index: int = 0
    stops_total: int = 0
    bins_done: int = 0
    bins_total: int = 0
    odometer_km: float | None = None
    last_seen_ts: float | None = None
    ts: float = 0.0

    @property
    def on_route(self) -> bool:
        return self.online is not False and self.status in ("driving", "collecting", "unloading", "returning")


class StopView(_View):
    seq: int = 0
    kind: str = "bin"
    id: str = ""
    eta_ts: float | None = None
    done: bool = False


class RouteView(_View):
    truck: str
    route_id: str = ""
    distance_km: float = 0.0
    stops: list[StopView] = []

    @property
    def bins(self) -> list[StopView]:
        return [s for s in self.stops if s.kind == "bin"]


class WastePlanView(_View):
    """Today's collection plan (`waste/plan`)."""

    plan_id: str = ""
    made_ts: float | None = None
    reason: str = ""
    status: str = ""
    solver: str = ""
    distance_km: float = 0.0
    mandatory: int = 0
    optional: int = 0
    dropped: list[str] = []
    routes: list[RouteView] = []
    violations: list[str] = []
    ts: float = 0.0

    def route_of(self, truck: str) -> RouteView | None:
        return next((r for r in self.routes if r.truck == truck), None)


class WasteSummaryView(_View):
    """The daemon's waste counters (`waste/summary`)."""

    bins: int = 0
    reporting: int = 0
    above_threshold: int = 0
    alarms: int = 0
    trucks: int = 0
    trucks_on_route: int = 0
    emptied_today: int = 0
    overflows_today: int = 0
    km_today: float = 0.0
    ts: float = 0.0


@dataclass(frozen=True, slots=True)
class TruckRow:
    """One truck with its route as the routes table shows it."""

    id: str
    online: bool | None
    status: str
    route_id: str | None
    stops_done: int
    stops_total: int
    bins_done: int
    bins_total: int
    load_pct: float | None
    km: float | None
    next_stop: str | None
    next_eta: float | None
    planned_km: float | None

    @property
    def status_word(self) -> str:
        return "offline" if self.online is False else (self.status or "unknown")

    @property
    def progress(self) -> float | None:
        """Share of the route's stops done (None: no route)."""
        return self.stops_done / self.stops_total if self.stops_total else None


def shown_text(shown: str) -> str:
    """What a display shows as one line: its lines joined by ` / ` (empty: blank)."""
    lines = [ln.strip() for ln in shown.replace("\r", "").split("\n") if ln.strip()]
    return " / ".join(lines)


@dataclass(frozen=True, slots=True)
class DisplaysSummary:
    """The Overview's displays line."""

    online: int
    total: int
    warnings: int
    car_parks: int
    stale: int


@dataclass(frozen=True, slots=True)
class ChargerRow:
    """One charge point as the sessions table shows it."""

    id: str
    feeder: str
    online: bool | None
    status: str | None
    car_connected: bool | None
    setpoint_a: float | None
    planned_a: float | None
    power_kw: float | None
    session_id: str | None
    session_kwh: float | None
    needed_kwh: float | None
    departure_ts: float | None
    unmet_kwh: float | None
    alarms: tuple[str, ...]

    @property
    def status_word(self) -> str:
        """The status, with offline first (an offline charger's last status is stale)."""
        if self.online is False:
            return "offline"
        return self.status or "unknown"

    @property
    def charging(self) -> bool:
        return self.online is not False and self.status == "Charging"


@dataclass(frozen=True, slots=True)
class FeederRow:
    """One feeder's load against its limit."""

    id: str
    limit_a: float
    lighting_a: float
    setpoints_a: float
    measured_a: float
    chargers: int
    history: tuple[float, ...] = ()  # load fractions, oldest first, one per FEEDER_SAMPLE_S
    tripped: bool = False

    @property
    def load(self) -> float | None:
        """Lighting plus measured charging current as a fraction of the limit (None: no limit)."""
        if self.limit_a <= 0:
            return None
        return (self.lighting_a + self.measured_a) / self.limit_a

    @property
    def high(self) -> bool:
        load = self.load
        return self.tripped or (load is not None and load > FEEDER_HIGH)


@dataclass(frozen=True, slots=True)
class ChargingSummary:
    """The Overview's charging line."""

    online: int
    offline: int
    unknown: int
    cars: int
    charging: int
    power_kw: float
    limit_a: float
    measured_a: float
    high: tuple[FeederRow, ...]

    @property
    def limit_kw(self) -> float:
        """The feeders' limits as three-phase power."""
        return self.limit_a * 3 * VOLTS / 1000


@dataclass(frozen=True, slots=True)
class LampRow:
    """One lamp as the lights table shows it."""

    id: str
    segment: str
    group: str
    level_cmd: float | None
    level_actual: float | None
    power_w: float | None
    hours: float | None
    status: LampStatus
    alarms: tuple[str, ...]
    source: str

    @property
    def lighting_class(self) -> str:
        """`M3 std` from the group id `{segment}:{class}:{std,nd,fs}`."""
        parts = self.group.split(":")
        return " ".join(parts[1:]) if len(parts) >= 3 else self.group


@dataclass(frozen=True, slots=True)
class OnlineCount:
    """Devices of one kind by connectivity."""

    online: int = 0
    offline: int = 0
    unknown: int = 0

    @property
    def total(self) -> int:
        return self.online + self.offline + self.unknown


@dataclass(slots=True)
class SiteModel:
    """Everything the dashboard knows about one site; see the module docstring."""

    site: str
    lamps: dict[str, LampState] = field(default_factory=dict)
    telemetry: dict[str, LampTelemetry] = field(default_factory=dict)
    controllers: dict[str, ControllerState] = field(default_factory=dict)
    active_alarms: dict[tuple[str, str], AlarmMessage] = field(default_factory=dict)
    events: deque[AlarmMessage] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    results: deque[CommandResultMessage] = field(default_factory=lambda: deque(maxlen=MAX_RESULTS))
    plan: LightingPlan | None = None
    plans: dict[str, PlanMessage] = field(default_factory=dict)
    chargers: dict[str, ChargerState] = field(default_factory=dict)
    feeders: dict[str, FeederState] = field(default_factory=dict)
    feeder_history: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)
    charging_plan: ChargingPlan | None = None
    displays: dict[str, DisplayState] = field(default_factory=dict)
    parking: dict[str, ParkingState] = field(default_factory=dict)
    guidance: GuidancePlan | None = None
    warnings: list[ActiveWarning] = field(default_factory=list)
    bins: dict[str, BinView] = field(default_factory=dict)
    trucks: dict[str, TruckView] = field(default_factory=dict)
    waste_plan: WastePlanView | None = None
    waste_summary: WasteSummaryView | None = None
    daemon: DaemonStatus | None = None
    messages: int = 0
    bad_payloads: Counter[str] = field(default_factory=Counter)
    version: int = 0
    # The model version at which each lamp last changed (or went), so a big table can take
    # just the lamps that changed since it last looked.
    lamp_seq: dict[str, int] = field(default_factory=dict)
    lamps_gone: dict[str, int] = field(default_factory=dict)
    bin_seq: dict[str, int] = field(default_factory=dict)
    bins_gone: dict[str, int] = field(default_factory=dict)

    @property
    def base(self) -> str:
        """The topic prefix of this site, without the trailing slash."""
        return f"{PREFIX}/{self.site}"

    # ----- folding messages ------------------------------------------------------------------

    def apply(self, topic: str, payload: bytes) -> Change:
        """Fold one message into the model; never raises for a bad payload or topic."""
        self.messages += 1
        if not topic.startswith(self.base + "/"):
            return Change.IGNORED
        parts = topic[len(self.base) + 1 :].split("/")
        try:
            change = self._dispatch(parts, payload)
        except (ValidationError, orjson.JSONDecodeError, ValueError, TypeError):
            self.bad_payloads[parts[0]] += 1
            return Change.BAD
        if change is not Change.IGNORED:
            self.version += 1
        return change

    def apply_all(self, messages: Iterable[tuple[str, bytes]]) -> set[Change]:
        """Fold a batch; returns the kinds of change it made."""
        return {self.apply(t, p) for t, p in messages}

    @property
    def bad_total(self) -> int:
        return sum(self.bad_payloads.values())

    def _dispatch(self, parts: list[str], payload: bytes) -> Change:
        match parts:
            case ["status"]:
                self.daemon = DaemonStatus.model_validate_json(payload)
                return Change.STATUS
            case ["lights", lamp_id, "state"]:
                if not payload:
                    if self.lamps.pop(lamp_id, None) is not None:
                        self.lamp_seq.pop(lamp_id, None)
                        self.lamps_gone[lamp_id] = self.version + 1
                else:
                    self.lamps[lamp_id] = LampState.model_validate_json(payload)
                    self.lamp_seq[lamp_id] = self.version + 1
                    self.lamps_gone.pop(lamp_id, None)
                return Change.LAMP
            case ["lights", lamp_id, "telemetry"]:
                self.telemetry[lamp_id] = LampTelemetry.model_validate_json(payload)
                if lamp_id in self.lamps:
                    self.lamp_seq[lamp_id] = self.version + 1
                return Change.LAMP
            case ["controllers", dev_id, "state"]:
                if not payload:
                    self.controllers.pop(dev_id, None)
                else:
                    self.controllers[dev_id] = ControllerState.model_validate_json(payload)
                return Change.CONTROLLER
            case ["alarms", "events"]:
                alarm = AlarmMessage.model_validate_json(payload)
                if any(e.event_id == alarm.event_id for e in self.events):
                    return Change.IGNORED  # a QoS 1 redelivery of a transition already shown
                self.events.appendleft(alarm)
                key = (alarm.device_id, alarm.code)
                if alarm.active:
                    self.active_alarms[key] = alarm
                else:
                    self.active_alarms.pop(key, None)
                return Change.ALARM
            case ["alarms", "history"]:
                # The daemon's own record (raises, acks, clears) replaces what this client saw
                # live: it also covers the time before the dashboard connected.
                history = AlarmHistory.model_validate_json(payload) if payload else None
                self.events = deque(history.events if history else (), maxlen=MAX_EVENTS)
                return Change.ALARM
            case ["alarms", "active", device_id, code]:
                if not payload:
                    self.active_alarms.pop((device_id, code), None)
                else:
                    alarm = AlarmMessage.model_validate_json(payload)
                    if alarm.active:
                        self.active_alarms[(device_id, code)] = alarm
                    else:
                        self.active_alarms.pop((device_id, code), None)
                return Change.ALARM
            case ["chargers", dev_id, "state"]:
                if not payload:
                    self.chargers.pop(dev_id, None)
                else:
                    self.chargers[dev_id] = ChargerState.model_validate_json(payload)
                return Change.CHARGING
            case ["feeders", feeder_id, "state"]:
                if not payload:
                    self.feeders.pop(feeder_id, None)
                else:
                    f = self.feeders[feeder_id] = FeederState.model_validate_json(payload)
                    self._sample_feeder(f)
                return Change.CHARGING
            case ["plans", domain]:
                msg = PlanMessage.model_validate_json(payload)
                if domain == "lighting":
                    self.plan = LightingPlan.model_validate({**msg.plan, "ts": msg.ts})
                elif domain == "charging":
                    self.charging_plan = ChargingPlan.model_validate({**msg.plan, "ts": msg.ts})
                    self.plans[domain] = msg
                    return Change.CHARGING
                self.plans[domain] = msg
                return Change.PLAN
            case ["displays", dev_id, "state"]:
                if not payload:
                    self.displays.pop(dev_id, None)
                else:
                    self.displays[dev_id] = DisplayState.model_validate_json(payload)
                return Change.DISPLAYS
            case ["parking", park_id, "state"]:
                if not payload:
                    self.parking.pop(park_id, None)
                else:
                    self.parking[park_id] = ParkingState.model_validate_json(payload)
                return Change.DISPLAYS
            case ["guidance"]:
                self.guidance = GuidancePlan.model_validate_json(payload) if payload else None
                return Change.DISPLAYS
            case ["warnings", "active"]:
                raw = orjson.loads(payload) if payload else []
                if not isinstance(raw, list):
                    raise TypeError("warnings/active: expected a list")
                self.warnings = [ActiveWarning.model_validate(w) for w in raw]
                return Change.DISPLAYS
            case ["waste", "bins", bin_id, "state"]:
                if not payload:
                    if self.bins.pop(bin_id, None) is not None:
                        self.bin_seq.pop(bin_id, None)
                        self.bins_gone[bin_id] = self.version + 1
                else:
                    self.bins[bin_id] = BinView.model_validate_json(payload)
                    self.bin_seq[bin_id] = self.version + 1
                    self.bins_gone.pop(bin_id, None)
                return Change.WASTE
            case ["waste", "trucks", truck_id, "state"]:
                if not payload:
                    self.trucks.pop(truck_id, None)
                else:
                    self.trucks[truck_id] = TruckView.model_validate_json(payload)
                return Change.WASTE
            case ["waste", "plan"]:
                self.waste_plan = WastePlanView.model_validate_json(payload) if payload else None
                return Change.WASTE
            case ["waste", "summary"]:
                self.waste_summary = WasteSummaryView.model_validate_json(payload) if payload else None
                return Change.WASTE
            case ["commands", "results"]:
                self.results.appendleft(CommandResultMessage.model_validate_json(payload))
                return Change.RESULT
        return Change.IGNORED

    # ----- views of the state ----------------------------------------------------------------

    def lamp_rows(self) -> list[LampRow]:
        """Every lamp with its telemetry, sorted by id."""
        return [self.lamp_row(lamp_id) for lamp_id in sorted(self.lamps)]

    def lamp_row(self, lamp_id: str) -> LampRow:
        """One lamp with its telemetry (KeyError for an unknown lamp)."""
        s = self.lamps[lamp_id]
        tel = self.telemetry.get(lamp_id)
        return LampRow(
            id=lamp_id,
            segment=s.segment,
            group=s.group,
            level_cmd=s.level_cmd,
            level_actual=s.level_actual,
            power_w=s.power_w if s.power_w is not None else (tel.power_w if tel else None),
            hours=tel.hours if tel else None,
            status=lamp_status(s),
            alarms=tuple(s.alarms),
            source=s.source,
        )

    def lamps_since(self, version: int) -> tuple[list[str], list[str]]:
        """Lamps changed and lamps gone after model version `version`."""
        changed = [k for k, v in self.lamp_seq.items() if v > version]
        gone = [k for k, v in self.lamps_gone.items() if v > version]
        return changed, gone

    def statuses(self) -> dict[str, LampStatus]:
        """Each lamp's status by id."""
        return {lamp_id: lamp_status(s) for lamp_id, s in self.lamps.items()}

    def lamp_counts(self) -> Counter[LampStatus]:
        """Lamps by status."""
        return Counter(lamp_status(s) for s in self.lamps.values())

    def online_counts(self) -> dict[str, OnlineCount]:
        """Lamps and controllers by connectivity."""
        out: dict[str, OnlineCount] = {}
        for kind, states in (("lamps", self.lamps.values()), ("controllers", self.controllers.values())):
            c = Counter(s.online for s in states)
            out[kind] = OnlineCount(online=c[True], offline=c[False], unknown=c[None])
        return out

    def alarm_counts(self) -> Counter[str]:
        """Open alarms by severity."""
        return Counter(a.severity for a in self.active_alarms.values())

    def unacked(self) -> int:
        """Open alarms nobody has acknowledged yet."""
        return sum(1 for a in self.active_alarms.values() if not a.acked)

    def alarms_sorted(self) -> list[AlarmMessage]:
        """Open alarms, most severe first, then newest first."""
        return sorted(
            self.active_alarms.values(), key=lambda a: (severity_rank(a.severity), -a.ts, a.device_id)
        )

    def segments(self) -> dict[str, list[str]]:
        """Lamp ids per road segment (from the lamps' own state)."""
        out: dict[str, list[str]] = {}
        for lamp_id in sorted(self.lamps):
            out.setdefault(self.lamps[lamp_id].segment, []).append(lamp_id)
        return out

    def groups(self) -> dict[str, list[str]]:
        """Lamp ids per planning group."""
        out: dict[str, list[str]] = {}
        for lamp_id in sorted(self.lamps):
            out.setdefault(self.lamps[lamp_id].group, []).append(lamp_id)
        return out

    def total_power_w(self) -> float:
        """Sum of the lamps' reported power."""
        return sum(s.power_w or 0.0 for s in self.lamps.values())

    # ----- charging ----------------------------------------------------------------------------

    def charger_rows(self) -> list[ChargerRow]:
        """Every charge point with its session and the plan's current, sorted by id."""
        plan = self.charging_plan
        rows = []
        for cid in sorted(self.chargers):
            c = self.chargers[cid]
            planned = c.planned_a
            unmet = None
            if plan is not None and c.car_connected:
                sid = c.session_id or cid
                if planned is None:
                    planned = plan.current_at(sid, c.ts)
                sp = plan.session(sid)
                unmet = sp.unmet_kwh if sp is not None else None
            rows.append(
                ChargerRow(
                    id=cid,
                    feeder=c.feeder,
                    online=c.online,
                    status=c.status,
                    car_connected=c.car_connected,
                    setpoint_a=c.current_limit_a,
                    planned_a=planned,
                    power_kw=c.power_kw,
                    session_id=c.session_id,
                    session_kwh=c.session_energy_kwh,
                    needed_kwh=c.energy_needed_kwh,
                    departure_ts=c.departure_ts,
                    unmet_kwh=unmet,
                    alarms=tuple(c.alarms),
                )
            )
        return rows

    def _sample_feeder(self, f: FeederState) -> None:
        """Keep one load sample per FEEDER_SAMPLE_S of the feeder's own clock (it reports every 2 s)."""
        samples = self.feeder_history.setdefault(f.feeder, deque(maxlen=FEEDER_SAMPLES))
        if f.limit_a <= 0:
            return
        load = (f.lighting_a + f.measured_a) / f.limit_a
        if samples and f.ts - samples[-1][0] < FEEDER_SAMPLE_S:
            if f.ts >= samples[-1][0]:
                samples[-1] = (samples[-1][0], max(samples[-1][1], load))  # the slot's peak
            return
        samples.append((f.ts, load))

    def feeder_rows(self) -> list[FeederRow]:
        """Every feeder's load (and its recent history), sorted by id."""
        return [
            FeederRow(
                id=f.feeder,
                limit_a=f.limit_a,
                lighting_a=f.lighting_a,
                setpoints_a=f.setpoints_a,
                measured_a=f.measured_a,
                chargers=f.chargers,
                history=tuple(load for _, load in self.feeder_history.get(f.feeder, ())),
                tripped=f.tripped,
            )
            for _, f in sorted(self.feeders.items())
        ]

    def charging_summary(self) -> ChargingSummary:
        """Charge points by connectivity, cars, power against the feeders' limits."""
        rows = self.charger_rows()
        online = Counter(r.online for r in rows)
        feeders = self.feeder_rows()
        return ChargingSummary(
            online=online[True],
            offline=online[False],
            unknown=online[None],
            cars=sum(1 for r in rows if r.car_connected and r.online is not False),
            charging=sum(1 for r in rows if r.charging),
            power_kw=sum(r.power_kw or 0.0 for r in rows if r.online is not False),
            limit_a=sum(f.limit_a for f in feeders),
            measured_a=sum(f.measured_a for f in feeders),
            high=tuple(f for f in feeders if f.high),
        )

    # ----- displays and parking ----------------------------------------------------------------

    def warnings_sorted(self) -> list[ActiveWarning]:
        """Warnings in force, most severe first, then by end."""

        def rank(w: ActiveWarning) -> int:
            sev = w.severity
            return WARNING_SEVERITIES.index(sev) if sev in WARNING_SEVERITIES else len(WARNING_SEVERITIES)

        return sorted(self.warnings, key=lambda w: (rank(w), w.end or 0.0, w.id))

    def guidance_for(self, sign_id: str) -> Recommendation | None:
        """The guidance recommendation for one sign (None: no guidance for it)."""
        if self.guidance is None:
            return None
        return next((r for r in self.guidance.recommendations if r.sign_id == sign_id), None)

    def displays_summary(self) -> DisplaysSummary:
        """Displays by connectivity, warnings in force, car parks whose number is stale."""
        return DisplaysSummary(
            online=sum(1 for d in self.displays.values() if d.online),
            total=len(self.displays),
            warnings=len(self.warnings),
            car_parks=len(self.parking),
            stale=sum(1 for p in self.parking.values() if not p.fresh),
        )

    # ----- waste -------------------------------------------------------------------------------

    def clock_ts(self) -> float | None:
        """The daemon's clock as last seen (its latest waste or truck timestamp); None before any.

        "Today" on the dashboard is the site's day by the daemon's clock (which may run fast in a
        demo), not the day of the laptop the dashboard runs on.
        """
        seen = [
            x.ts
            for x in (self.waste_summary, self.waste_plan, *self.trucks.values())
            if x is not None and x.ts
        ]
        return max(seen) if seen else None

    def truck_rows(self) -> list[TruckRow]:
        """Every truck (and every route of today's plan without a truck state yet), by id."""
        plan = self.waste_plan
        ids = set(self.trucks) | ({r.truck for r in plan.routes} if plan else set())
        rows = []
        for tid in sorted(ids):
            t = self.trucks.get(tid)
            route = plan.route_of(tid) if plan else None
            stops = route.stops if route else []
            nxt = next((x for x in stops if not x.done), None)
            if route is not None and t is not None and t.route_id == route.route_id and t.stops_total:
                # the truck's own count of the plan's route: live, but never above its total
                done, total = min(t.stop_index, t.stops_total), t.stops_total
            elif route is not None:
                # the truck still reports an older route (a re-plan): count the current plan's stops
                done, total = sum(1 for x in stops if x.done), len(stops)
            elif t is not None and t.stops_total:
                done, total = min(t.stop_index, t.stops_total), t.stops_total
            else:
                done, total = 0, 0
            own = t is not None and (route is None or t.route_id == route.route_id)
            if own and t is not None and t.bins_total:
                bins_done, bins_total = t.bins_done, t.bins_total
            else:
                bins_done = sum(1 for x in stops if x.done and x.kind == "bin")
                bins_total = len(route.bins) if route else 0
            rows.append(
                TruckRow(
                    id=tid,
                    online=t.online if t else None,
                    status=t.status if t else "",
                    route_id=(t.route_id if t else None) or (route.route_id if route else None),
                    stops_done=done,
                    stops_total=total,
                    bins_done=min(bins_done, bins_total),
                    bins_total=bins_total,
                    load_pct=t.load_pct if t else None,
                    km=t.odometer_km if t else None,
                    next_stop=f"{nxt.kind} {nxt.id}" if nxt else None,
                    next_eta=nxt.eta_ts if nxt else None,
                    planned_km=route.distance_km if route else None,
                )
            )
        return rows

    def bins_since(self, version: int) -> tuple[list[str], list[str]]:
        """Bins changed and bins gone after model version `version`."""
        changed = [k for k, v in self.bin_seq.items() if v > version]
        gone = [k for k, v in self.bins_gone.items() if v > version]
        return changed, gone

    def bins_above(self, threshold: float) -> int:
        """Bins at or above a fill (as the daemon's summary does when it has none)."""
        return sum(1 for b in self.bins.values() if b.fill is not None and b.fill >= threshold)
