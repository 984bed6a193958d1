"""What a safety policy decides and what it may read: the contract between the dispatcher
and each domain's rules (floors, ranges, feeder limits).

Kept apart from the dispatcher so a domain's policy depends on this contract only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from edge.events import Command, Outcome, Value


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a safety policy makes of a command: the value to use, or a refusal, and why.

    `limit` names the limit that bound the value ("feeder:F1", "lighting_floor"), or "" when
    none did: a clamp is data, never recognised from the reason's wording. Every clamp names
    one, so a CLAMPED verdict without a limit is a bug in the policy.
    """

    outcome: Outcome
    value: float
    reason: str = ""
    limit: str = ""

    def __post_init__(self) -> None:
        if self.outcome is Outcome.CLAMPED and not self.limit:
            raise ValueError(f"a clamp names its binding limit ({self.reason!r})")


class DispatcherView(Protocol):
    """What a safety policy may read at check time, and nothing it could change.

    The dispatcher hands it to every `check`, so a policy is never built with stand-ins for
    state it cannot see yet (no late bind, no permissive default until then).
    """

    def effective_value(self, device_id: str, point: str) -> float | None:
        """The value of the command that wins on a point now (None: no command)."""
        ...

    def in_flight_value(self, device_id: str, point: str) -> float | None:
        """The value being written to a point right now (None: no write in flight)."""
        ...

    def value(self, device_id: str, point: str) -> Value | None:
        """A device's last reported value of a point, as the state store holds it."""
        ...

    def online(self, device_id: str) -> bool | None:
        """Whether the device answers (None: not known yet, or not a registered device)."""
        ...

    def updated_at(self, device_id: str) -> float | None:
        """When the device last reported (clock s; None: not a registered device)."""
        ...


class SafetyPolicy(Protocol):
    """Domain rules that hold whoever asks: floors, ranges, feeder limits."""

    def check(self, cmd: Command, now: float, view: DispatcherView) -> Verdict: ...
