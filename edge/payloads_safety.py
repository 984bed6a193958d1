"""Payloads of the safety services: help points (emergency calls) and environmental warnings.

Apart from `edge.payloads` so each file reads as one contract; `edge.payloads.PUBLISHED_MODELS`
takes these in, so the AsyncAPI document, the router and the dashboard see one table.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    StringConstraints,
    field_validator,
    model_validator,
)

Comment = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----- help points --------------------------------------------------------------------------


class IncidentRequest(_Model):
    """Acknowledge, note or close an emergency call (`cmd/helppoints/incidents/{incident}`).

    A close needs a comment (what happened); the lamps around the post go back to their plan then.
    """

    action: Literal["ack", "note", "close"]
    comment: Comment = ""
    by: Annotated[
        str, Field(max_length=64, description="who (self-declared; the MQTT 5 user property `user` wins)")
    ] = ""

    @model_validator(mode="after")
    def _comment(self) -> IncidentRequest:
        if self.action in {"note", "close"} and not self.comment:
            raise ValueError(f"{self.action} needs a comment")
        return self


class IncidentNote(_Model):
    ts: float
    by: str
    text: str


class IncidentMessage(_Model):
    """An emergency call, retained on `helppoints/incidents/{incident}` until it is closed (then
    emptied; the closed record goes once on `helppoints/events`)."""

    id: str
    helppoint: str
    post: str = Field(description="the lamp post (lamp id) the help point is in")
    street: str
    lat: float
    lon: float
    opened_at: float
    status: Literal["open", "acknowledged", "closed"]
    presses: int
    caller_cancelled: bool
    acked_by: str | None
    acked_at: float | None
    escalated_at: float | None
    closed_by: str | None
    closed_at: float | None
    close_comment: str
    notes: list[IncidentNote]
    lamps: int = Field(description="lamps raised to 100 % around the post")
    displays: list[str] = Field(description="displays showing a notice")


class Escalation(_Model):
    """Retained on `helppoints/escalations/{target}`: the calls nobody acknowledged in time."""

    target: str
    incidents: list[IncidentMessage]
    ts: float


class HelpPointState(_Model):
    """A help point's retained state: reachable, button and self-test status, its open call."""

    device_id: str
    online: bool = Field(description="false: the post's controller does not answer (help point unavailable)")
    pressed: bool | None = None
    cancelled: bool | None = None
    tamper: bool | None = None
    selftest_failed: bool | None = None
    battery: float | None = None
    post: str | None = None
    street: str | None = None
    lat: float | None = None
    lon: float | None = None
    incident: str | None = Field(default=None, description="its open call, if any")
    alarms: list[str]
    ts: float

    @field_validator("incident", mode="before")
    @classmethod
    def _none(cls, v: object) -> object:
        return None if v == "" else v


# ----- environment --------------------------------------------------------------------------


class SensorState(_Model):
    """An environmental sensor's retained state: its readings, and whether the rules may use them."""

    device_id: str
    profile: str
    group: str
    online: bool
    status: Literal["ok", "stale", "implausible", "unknown"]
    values: dict[str, float | bool]
    alarms: list[str]
    ts: float


class RuleStatus(_Model):
    id: str
    group: str
    metric: str
    firing: bool
    since: float | None
    warning: str | None = Field(description="the warning the rule issued or proposed")


class RulesMessage(_Model):
    """Retained on `environment/rules`: every rule and whether it is firing."""

    rules: list[RuleStatus]
    ts: float


class EnvWarning(_Model):
    """A warning a rule issued or proposed, retained on `environment/warnings/{warning}` while it
    is proposed or in force (then emptied)."""

    id: str
    rule: str
    status: Literal["proposed", "issued", "withdrawn", "rejected", "expired"]
    severity: Literal["info", "warning", "severe", "extreme"]
    lines: list[str]
    start: float
    end: float
    area: list[float] = Field(description="lat, lon, radius_m")
    sensors: list[str]
    value: float
    event: str = Field(default="Warning", description="what it warns of (CAP event): Flood, Storm ...")
    source: str = Field(default="", description="rule:<id>")
    decided_by: str | None = None
    issued_at: float | None = None
    finished_at: float | None = None


class EnvWarningRequest(_Model):
    """Confirm or reject a proposed warning, or withdraw one in force
    (`cmd/environment/warnings/{warning}`)."""

    action: Literal["confirm", "reject", "withdraw"]
    comment: Comment = ""
    by: Annotated[str, Field(max_length=64)] = ""


class CapAlert(RootModel[str]):
    """A CAP 1.2 alert (XML, urn:oasis:names:tc:emergency:cap:1.2), retained per warning on
    `alerts/cap/{warning}`: Alert, then Update on a change, Cancel when withdrawn or ended."""


SAFETY_MODELS: dict[str, type[BaseModel]] = {
    "incident_request": IncidentRequest,
    "incident": IncidentMessage,
    "escalation": Escalation,
    "helppoint_state": HelpPointState,
    "sensor_state": SensorState,
    "rules": RulesMessage,
    "env_warning": EnvWarning,
    "env_warning_request": EnvWarningRequest,
    "cap": CapAlert,
}
