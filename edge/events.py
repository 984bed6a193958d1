"""Internal events and commands: small frozen dataclasses passed on the event bus.

Drivers publish `Telemetry` and `Availability`; the state store is the only writer
of device state; the dispatcher publishes `CommandResult`; controllers publish
`AlarmEvent` and `PlanEvent`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

Value = float | int | bool | str


@dataclass(frozen=True, slots=True)
class Telemetry:
    """Point values read from one device at `ts` (clock seconds).

    `derived`: not a reading of the device itself: state a controller computed about it (a
    feeder's load, a bin's estimate, a charger's planned current) or a report about it from
    elsewhere (a motion sensor beside a lamp), published so that everything north comes from
    the state store. It neither marks the device online nor moves its `updated_at` (so it can
    never make an unreachable charger look reachable or a stale reading fresh), and no alarm
    counts it as the reading that confirms or clears it.
    """

    device_id: str
    ts: float
    values: Mapping[str, Value]
    derived: bool = False


@dataclass(frozen=True, slots=True)
class Availability:
    """A connection (endpoint) and the devices behind it became reachable or not."""

    endpoint: str
    device_ids: tuple[str, ...]
    online: bool
    ts: float
    reason: str = ""


class Priority(IntEnum):
    """Who asks: a higher priority wins while its command holds."""

    PLAN = 10
    SAFETY = 20
    OPERATOR = 30


class Outcome(StrEnum):
    """What the dispatcher did with a command."""

    ACCEPTED = "accepted"
    CLAMPED = "clamped"
    REFUSED = "refused"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"


@dataclass(frozen=True, slots=True)
class Command:
    """A request to set one point of one device.

    `expires_at` is the time-to-live: a command not applied by then is dropped.
    `hold_until` is how long the value should hold (an override's duration);
    None means until replaced.
    """

    id: str
    device_id: str
    point: str
    value: float
    priority: Priority
    source: str
    issued_at: float
    expires_at: float
    hold_until: float | None = None
    reason: str = ""
    payload: str = ""  # a structured value (display content as JSON); `value` is then its id
    requested: float | None = None  # what was asked when a safety policy clamped `value` (None: as asked)
    limit: str = ""  # the limit that clamped or refused it ("feeder:F1", "lighting_floor"; "": none)


@dataclass(frozen=True, slots=True)
class CommandResult:
    """The final word on a command: confirmed by read-back, or why not."""

    command: Command
    outcome: Outcome
    applied_value: float | None
    reason: str
    ts: float

    @property
    def limit(self) -> str:
        """The binding limit's name when a safety policy clamped or refused the command ("": none).

        Read this, not the reason's wording: the dispatcher stamps it on the command from the
        policy's `Verdict`, so every result of that command carries it.
        """
        return self.command.limit


class Severity(StrEnum):
    """Alarm severity, as operators sort them."""

    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """An alarm raised (active=True) or cleared (active=False) on a device."""

    device_id: str
    code: str
    severity: Severity
    active: bool
    ts: float
    detail: str = ""
    restored: bool = False  # re-announced after a restart: already stored and raised before
    acked_by: str | None = None  # a restored alarm's acknowledgement, as stored
    ack_comment: str = ""


@dataclass(frozen=True, slots=True)
class PlanEvent:
    """A new plan for a domain; `plan` is the optimizer's pydantic output as a dict."""

    domain: str
    ts: float
    plan: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The state store changed a device: `changed` holds the new values of changed keys.

    `derived`: the change came from derived `Telemetry` (a controller's view of the device), so
    the northbound publisher sends that view when the controller made it, not on a raw reading
    that shares its keys (a truck's own status, a counter's free spaces).
    """

    device_id: str
    ts: float
    changed: Mapping[str, Value | None]
    derived: bool = False


Event = Telemetry | Availability | CommandResult | AlarmEvent | PlanEvent | StateChanged
