"""MQTT API payloads (pydantic): the versioned contract utilities and the dashboard rely on.

Every model forbids unknown fields, so a typo in a request is refused with a reason
instead of being silently ignored. `docs/schemas/*.json` and `docs/asyncapi.yaml`
are generated from these models (`edge docs`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

API_VERSION = "v1"
MAX_DURATION_S = 7 * 86400


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


class Motion(_Model):
    """A motion sensor at a bike-path lamp saw someone."""

    detected: bool = True
    ts: float | None = None


# ----- responses and publications -----------------------------------------------------------


class DeviceResult(_Model):
    device_id: str
    outcome: str
    value: float | None = None
    reason: str = ""


class Ack(_Model):
    """The answer to a request: ok or not, with the reason, per-device outcomes and counts."""

    ok: bool
    status: Literal["confirmed", "accepted", "clamped", "partial", "refused", "failed"]
    reason: str = ""
    request_topic: str
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


class AlarmMessage(_Model):
    """An alarm raised or cleared (`alarms/events`; active ones retained under `alarms/active/...`)."""

    device_id: str
    code: str
    severity: str
    active: bool
    detail: str = ""
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


class PlanMessage(_Model):
    """The current plan of a domain (`plans/{domain}`, retained)."""

    domain: str
    ts: float
    plan: dict[str, object]


PUBLISHED_MODELS: dict[str, type[BaseModel]] = {
    "ack": Ack,
    "lamp_state": LampState,
    "lamp_telemetry": LampTelemetry,
    "controller_state": ControllerState,
    "alarm": AlarmMessage,
    "command_result": CommandResultMessage,
    "daemon_status": DaemonStatus,
    "plan": PlanMessage,
    "motion": Motion,
    "set_level": SetLevel,
    "resume_schedule": ResumeSchedule,
    "replan": Replan,
}
