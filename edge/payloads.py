"""MQTT API payloads (pydantic): the versioned contract utilities and the dashboard rely on.

Every model forbids unknown fields, so a typo in a request is refused with a reason
instead of being silently ignored. `docs/schemas/*.json` and `docs/asyncapi.yaml`
are generated from these models (`edge docs`).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StringConstraints, model_validator

from edge.decode import ID_PATTERN
from edge.payloads_safety import SAFETY_MODELS

API_VERSION = "v1"
MAX_DURATION_S = 7 * 86400
Id = Annotated[str, StringConstraints(pattern=f"^{ID_PATTERN}$")]
"""An id taken from a payload: 1-64 of A-Z a-z 0-9 _ . : -, starting with a letter or digit."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----- requests -----------------------------------------------------------------------------


class SetLevel(_Model):
    """Set the dim level of one lamp, a group or a segment, for a duration or until replaced."""

    action: Literal["set_level"]
    level: Annotated[float, Field(allow_inf_nan=False, description="0-100 %; floors are enforced")]
    duration_s: Annotated[float | None, Field(gt=0, le=MAX_DURATION_S)] = None
    ttl_s: Annotated[float | None, Field(gt=0, le=3600, description="drop if not applied by then")] = None
    reason: Annotated[str, Field(max_length=200)] = ""


class ResumeSchedule(_Model):
    """Drop the operator override: the lamps go back to the plan."""

    action: Literal["resume_schedule"]
    reason: Annotated[str, Field(max_length=200)] = ""


class Replan(_Model):
    """Compute the night's dimming plan again now."""

    action: Literal["replan"]
    reason: Annotated[str, Field(max_length=200)] = ""


class LightingRequest(
    RootModel[Annotated[SetLevel | ResumeSchedule | Replan, Field(discriminator="action")]]
):
    """Any lighting request, told apart by its `action`."""


class ChargerPause(_Model):
    """Pause a charge point (setpoint 0 A) for a duration or until released."""

    action: Literal["pause"]
    duration_s: Annotated[float | None, Field(gt=0, le=MAX_DURATION_S)] = None
    reason: Annotated[str, Field(max_length=200)] = ""
    stop_session: bool = Field(default=False, description="also end the session (OCPP RemoteStopTransaction)")


class ChargerLimit(_Model):
    """Cap a charge point's current (A per phase); the feeder interlock still applies."""

    action: Literal["limit"]
    current_a: Annotated[float, Field(allow_inf_nan=False)]
    duration_s: Annotated[float | None, Field(gt=0, le=MAX_DURATION_S)] = None
    reason: Annotated[str, Field(max_length=200)] = ""


class ChargerRelease(_Model):
    """Drop the operator's pause or limit: the plan takes over."""

    action: Literal["release"]
    reason: Annotated[str, Field(max_length=200)] = ""


class FeederLimitRequest(_Model):
    """An operator limit on a feeder (A per phase) for a duration."""

    action: Literal["set_limit"]
    limit_a: Annotated[float, Field(ge=0, le=5000, allow_inf_nan=False)]
    duration_s: Annotated[float, Field(gt=0, le=MAX_DURATION_S)] = 3600.0
    reason: Annotated[str, Field(max_length=200)] = ""


class ChargingReplan(_Model):
    action: Literal["replan"]
    reason: Annotated[str, Field(max_length=200)] = ""


class ChargingRequest(
    RootModel[
        Annotated[
            ChargerPause | ChargerLimit | ChargerRelease | FeederLimitRequest | ChargingReplan,
            Field(discriminator="action"),
        ]
    ]
):
    """Any charging request, told apart by its `action`."""


class Curtailment(_Model):
    """A grid operator's limit on a feeder or cabinet for a time window (§14a EnWG)."""

    action: Literal["curtail"]
    target: Id
    limit_kw: Annotated[float | None, Field(ge=0, le=10_000, allow_inf_nan=False)] = None
    limit_a: Annotated[float | None, Field(ge=0, le=5000, allow_inf_nan=False)] = None
    start: Annotated[float, Field(ge=0, allow_inf_nan=False, description="epoch seconds")]
    end: Annotated[float, Field(ge=0, allow_inf_nan=False)]

    @model_validator(mode="after")
    def _one_limit(self) -> Curtailment:
        if (self.limit_kw is None) == (self.limit_a is None):
            raise ValueError("give exactly one of limit_kw or limit_a")
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class PriceCurve(_Model):
    """A price or CO2 curve: flexible energy moves to the cheap or clean slots."""

    action: Literal["price_curve"]
    kind: Literal["price", "co2"]
    start: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    slot_minutes: Annotated[int, Field(ge=5, le=60)] = 15
    values: Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], Field(min_length=1, max_length=672)]


class UtilitySignal(RootModel[Annotated[Curtailment | PriceCurve, Field(discriminator="action")]]):
    """Any utility signal, told apart by its `action`."""


class ChargerState(_Model):
    """Retained state of one charge point (`chargers/{id}/state`)."""

    device_id: str
    online: bool | None
    status: str | None = None
    car_connected: bool | None = None
    current_limit_a: float | None = None
    power_kw: float | None = None
    session_id: str | None = None
    session_energy_kwh: float | None = None
    energy_needed_kwh: float | None = None
    departure_ts: float | None = None
    planned_a: float | None = None
    feeder: str
    alarms: list[str] = Field(default_factory=list)
    source: str = ""
    ts: float


class FeederState(_Model):
    """Load of one feeder against its limit (`feeders/{id}/state`, retained, refreshed)."""

    feeder: str
    limit_a: float
    lighting_a: float
    setpoints_a: float
    measured_a: float
    chargers: int
    ts: float
    tripped: bool = False  # the feeder lost its supply (fuse): a critical alarm is raised too


class WarningArea(_Model):
    """A warning's area: a circle around a point."""

    lat: Annotated[float, Field(ge=-90, le=90)]
    lon: Annotated[float, Field(ge=-180, le=180)]
    radius_m: Annotated[float, Field(gt=0, le=100_000)]


class WarningRequest(_Model):
    """A storm or disaster warning for some displays (or all), for a time window."""

    action: Literal["warn"]
    id: Id
    severity: Literal["info", "warning", "severe", "extreme"]
    lines: Annotated[list[Annotated[str, Field(max_length=40)]], Field(min_length=1, max_length=4)]
    displays: Annotated[list[Id], Field(max_length=1000)] = Field(
        default_factory=list, description="these displays (with `area`: added to it)"
    )
    area: WarningArea | None = Field(
        default=None, description="a circle; no displays and no area: every display"
    )
    start: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    end: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    raise_lamps: bool = False

    @model_validator(mode="after")
    def _window(self) -> WarningRequest:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class WarningClear(_Model):
    action: Literal["clear"]
    id: Id


class WarningRequests(RootModel[Annotated[WarningRequest | WarningClear, Field(discriminator="action")]]):
    """A warning or its withdrawal."""


class DisplayMessage(_Model):
    """An operator's message on one display for a duration (it outranks guidance and warnings)."""

    action: Literal["message"]
    lines: Annotated[list[Annotated[str, Field(max_length=40)]], Field(min_length=1, max_length=4)]
    arrow: Literal["none", "left", "right", "up"] = "none"
    duration_s: Annotated[float, Field(gt=0, le=MAX_DURATION_S)] = 3600.0


class DisplayClear(_Model):
    """Drop the operator's message: the display goes back to guidance or warnings."""

    action: Literal["clear"]


class DisplayRequest(RootModel[Annotated[DisplayMessage | DisplayClear, Field(discriminator="action")]]):
    """Any operator request for a display."""


class CarParkReport(_Model):
    """A car park's own counter (`field/carparks/{id}`)."""

    free: Annotated[int, Field(ge=0)]
    open: bool = True
    ts: float | None = None


class DisplayState(_Model):
    """Retained state of a display (`displays/{id}/state`): what it shows right now."""

    device_id: str
    online: bool | None
    shown: str = ""
    message_id: int | None = None
    brightness: float | None = None
    pixel_faults: int | None = None
    alarms: list[str] = Field(default_factory=list)
    ts: float


class ParkingState(_Model):
    """Occupancy of one car park (`parking/{id}/state`, retained)."""

    car_park: str
    name: str
    capacity: int
    free: int | None
    open: bool | None
    fresh: bool
    ts: float | None


class Motion(_Model):
    """A motion sensor at a bike-path lamp saw someone."""

    detected: bool = True
    ts: float | None = None


# ----- responses and publications -----------------------------------------------------------


class DeviceResult(_Model):
    """One device's outcome; `value` is what it holds now, `requested` what was asked when a policy clamped it."""

    device_id: str
    outcome: str
    value: float | None = None
    requested: float | None = Field(default=None, description="set when a safety policy changed the value")
    reason: str = ""


class Ack(_Model):
    """The answer to a request: ok or not, with the reason, per-device outcomes and counts."""

    ok: bool
    status: Annotated[
        Literal["confirmed", "accepted", "clamped", "partial", "refused", "failed"],
        Field(description="clamped: done, but with another value than asked (see `effective` and `note`)"),
    ]
    reason: str = ""
    requested: float | None = Field(default=None, description="the value asked for (limits, levels)")
    effective: float | None = Field(
        default=None, description="the value in force after ratings, floors and interlocks"
    )
    note: str = Field(default="", description="why `effective` differs from `requested`")
    request_topic: str = Field(
        description="the request's topic; in a refusal its first 300 characters (a topic may be 64 kB)"
    )
    counts: dict[str, int] = Field(default_factory=dict)
    results: list[DeviceResult] = Field(default_factory=list)
    ts: float
    correlation_id: str | None = Field(
        default=None, description="echoed for MQTT 3.1.1 clients that sent it in the request JSON"
    )


class LampState(_Model):
    """Retained state of one lamp (`lights/{id}/state`)."""

    device_id: str
    online: bool | None
    level_cmd: float | None = None
    level_actual: float | None = None
    power_w: float | None = None
    failures: list[str] = Field(default_factory=list)
    alarms: list[str] = Field(default_factory=list)
    source: str = ""
    segment: str
    group: str
    ts: float


class LampTelemetry(_Model):
    """Periodic counters of one lamp (`lights/{id}/telemetry`, QoS 0)."""

    device_id: str
    level_actual: float | None = None
    power_w: float | None = None
    energy_kwh: float | None = None
    hours: float | None = None
    switch_count: int | None = None
    ts: float


class ControllerState(_Model):
    """Retained state of one lamp controller (`controllers/{id}/state`)."""

    device_id: str
    online: bool | None
    failsafe_active: bool | None = None
    alarms: list[str] = Field(default_factory=list)
    ts: float


def new_event_id() -> str:
    """A fresh id for one alarm transition (random: unique across restarts and daemons)."""
    return uuid.uuid4().hex


class AlarmMessage(_Model):
    """An alarm raised, acknowledged or cleared (`alarms/events`; active ones retained under `alarms/active/...`).

    The ack fields travel with the alarm (also in the clear that follows an ack), so every client
    sees who took responsibility for it and why without a separate lookup.
    """

    event_id: str = Field(
        default_factory=new_event_id,
        description="unique per transition (raise, ack, clear); a QoS 1 redelivery carries the same id, "
        "so a subscriber counts each transition once by it",
    )
    device_id: str
    code: str
    severity: str
    active: bool
    detail: str = ""
    ts: float
    acked: bool = False
    acked_by: str | None = Field(default=None, description="who acknowledged it (broker user or client id)")
    ack_comment: str = ""
    ack_ts: float | None = None


class AlarmAck(_Model):
    """Acknowledge an active alarm with a comment (`cmd/alarms/ack`): someone is on it."""

    action: Literal["ack"]
    device: Id
    code: Id
    comment: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=500),
        Field(description="what is being done about it"),
    ]
    by: Annotated[
        str,
        Field(
            max_length=64,
            description="who acknowledges (self-declared; the MQTT 5 user property `user` wins)",
        ),
    ] = ""


class AlarmHistory(_Model):
    """The latest alarm events, newest first (`alarms/history`, retained): raises, acks and clears."""

    events: list[AlarmMessage]
    ts: float


class CommandResultMessage(_Model):
    """The final outcome of one device command (`commands/results`)."""

    command_id: str
    device_id: str
    point: str
    requested: float
    applied: float | None
    outcome: str
    reason: str
    source: str
    priority: str
    ts: float


class DaemonStatus(_Model):
    """Retained daemon status (`status`); the broker publishes `online: false` as the last will."""

    online: bool
    site: str
    version: str
    ts: float | None = None
    timezone: str | None = Field(
        default=None, description="the site's IANA zone: dashboards show every time in it, not their own"
    )


class PlanMessage(_Model):
    """The current plan of a domain (`plans/{domain}`, retained)."""

    domain: str
    ts: float
    plan: dict[str, object]


# ----- waste collection ---------------------------------------------------------------------

BinAlarm = Literal["fire", "tilt", "lid_open", "overflow", "battery_low", "stale", "sensor_fault"]


class BinState(_Model):
    """Retained state of a waste bin (`waste/bins/{bin}/state`): fill, prediction, alarms, plan."""

    id: str
    lat: float
    lon: float
    kind: Literal["residential", "shopping", "park"]
    zone: str = ""
    fill: Annotated[float | None, Field(ge=0, le=1, description="0..1; null until the sensor is heard")] = (
        None
    )
    rate_per_h: Annotated[float | None, Field(description="predicted fill rate now, fraction per hour")] = (
        None
    )
    full_ts: Annotated[float | None, Field(description="when the threshold is predicted to be reached")] = (
        None
    )
    battery: Annotated[float | None, Field(description="%")] = None
    temperature: Annotated[float | None, Field(description="degC")] = None
    alarms: list[BinAlarm] = Field(default_factory=list)
    status: Literal["ok", "stale", "fault"]
    last_seen_ts: float | None = None
    last_emptied_ts: Annotated[float | None, Field(description="the last emptying the sensor saw")] = None
    plan: Literal["mandatory", "optional", "none"] = "none"
    forced: bool = False
    excluded: bool = False
    ts: float


class TruckState(_Model):
    """Retained state of a collection truck (`waste/trucks/{truck}/state`)."""

    id: str
    online: bool
    status: Literal["idle", "driving", "collecting", "unloading", "returning", "broken", "offline"]
    lat: float
    lon: float
    load_l: float
    load_kg: float
    load_pct: Annotated[float, Field(ge=0, le=100, description="the larger of volume and weight share")]
    route_id: str | None = None
    stop_index: int = 0
    stops_total: int = 0
    bins_done: int = 0
    bins_total: int = 0
    odometer_km: float = 0.0
    last_seen_ts: float | None = None
    ts: float


class WasteStop(_Model):
    """One stop of a truck's route; `done` for a bin only once its sensor confirmed the emptying."""

    seq: int
    kind: Literal["bin", "disposal", "depot"]
    id: str
    eta_ts: float
    done: bool = False


class WasteRoute(_Model):
    truck: str
    route_id: str
    distance_km: float
    stops: list[WasteStop] = Field(default_factory=list)


class WastePlanMessage(_Model):
    """Today's collection plan (`waste/plan`, retained): routes per truck and what was left out."""

    plan_id: str
    made_ts: float
    reason: Literal["scheduled", "replan", "breakdown", "alarm", "operator"]
    status: Literal["optimal", "feasible", "fallback", "infeasible"]
    solver: str
    distance_km: float
    mandatory: Annotated[int, Field(description="bins that had to be collected")]
    optional: Annotated[int, Field(description="bins collected because they were worth the detour")]
    dropped: list[str] = Field(default_factory=list)
    routes: list[WasteRoute] = Field(default_factory=list)
    violations: list[str] = Field(default_factory=list)
    ts: float


class WasteSummary(_Model):
    """Waste numbers of the day (`waste/summary`, retained)."""

    bins: int
    reporting: int
    above_threshold: int
    alarms: int
    trucks: int
    trucks_on_route: int
    emptied_today: Annotated[int, Field(description="emptyings confirmed by the bins' sensors")]
    overflows_today: int
    km_today: float
    ts: float


class WasteBinRequest(_Model):
    """Force a bin into today's plan (re-plans), exclude it from planning, or clear either."""

    action: Literal["force", "exclude", "clear"]
    reason: Annotated[str, Field(max_length=200)] = ""


class WasteReplan(_Model):
    """Plan the collection again now, keeping what is done."""

    action: Literal["replan"]
    reason: Annotated[str, Field(max_length=200)] = ""


PUBLISHED_MODELS: dict[str, type[BaseModel]] = {
    "ack": Ack,
    "lamp_state": LampState,
    "lamp_telemetry": LampTelemetry,
    "controller_state": ControllerState,
    "alarm": AlarmMessage,
    "alarm_ack": AlarmAck,
    "alarm_history": AlarmHistory,
    "command_result": CommandResultMessage,
    "daemon_status": DaemonStatus,
    "plan": PlanMessage,
    "motion": Motion,
    "charger_state": ChargerState,
    "feeder_state": FeederState,
    "charger_pause": ChargerPause,
    "charger_limit": ChargerLimit,
    "charger_release": ChargerRelease,
    "feeder_limit": FeederLimitRequest,
    "curtailment": Curtailment,
    "price_curve": PriceCurve,
    "warning": WarningRequest,
    "warning_clear": WarningClear,
    "display_message": DisplayMessage,
    "display_clear": DisplayClear,
    "carpark_report": CarParkReport,
    "display_state": DisplayState,
    "parking_state": ParkingState,
    "set_level": SetLevel,
    "resume_schedule": ResumeSchedule,
    "replan": Replan,
    "bin_state": BinState,
    "truck_state": TruckState,
    "waste_plan": WastePlanMessage,
    "waste_summary": WasteSummary,
    "waste_bin_request": WasteBinRequest,
    "waste_replan": WasteReplan,
    **SAFETY_MODELS,
}
