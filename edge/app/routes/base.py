"""What every route module shares: the route and request shapes, and the answers they build.

A domain's `build` returns its routes (`Route(pattern, handler)`); the API's router matches a
request topic (relative to `{prefix}/{site}/`) against the patterns (`+` is one segment), runs
the shared checks (response topic, retain flag, decode, ids) and hands the handler a `Request`.
A handler raises `PayloadError` to refuse; it never publishes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from edge.app.north import requester
from edge.clock import Clock
from edge.decode import check_id
from edge.dispatcher import AuditRecord, Dispatcher, new_command_id
from edge.errors import PayloadError
from edge.events import Command, CommandResult, Outcome, Priority
from edge.kernel import Kernel
from edge.payloads import Ack, DeviceResult
from edge.records import CommandAudit

__all__ = [
    "Incoming",
    "Request",
    "Route",
    "RouteKit",
    "audit_data",
    "audit_row",
    "errors",
    "limit_ack",
    "parse",
    "summarize",
]

M = TypeVar("M", bound=BaseModel)


class Incoming(Protocol):
    """What the API needs of a received MQTT message (edge.mqtt.IncomingMessage)."""

    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def response_topic(self) -> str | None: ...
    @property
    def correlation_data(self) -> bytes | None: ...
    @property
    def user_properties(self) -> tuple[tuple[str, str], ...]: ...
    @property
    def retain(self) -> bool:
        """The MQTT retain flag as delivered: set for a message the broker kept (a replay)."""
        ...


@dataclass(frozen=True, slots=True)
class Request:
    """One checked request as a handler sees it: its topic parts (after `{prefix}/{site}/`) and
    its decoded payload (without the MQTT 3.1.1 reply fields)."""

    msg: Incoming
    parts: tuple[str, ...]
    raw: Any

    @property
    def topic(self) -> str:
        return self.msg.topic

    def who(self) -> str:
        """The broker user named in the MQTT 5 user property `user` (`edge.app.north.requester`)."""
        return requester(self.msg)

    def operator(self, declared: str = "") -> str:
        """`operator:<who>`: the broker user, or for a client the broker does not name (MQTT 3.1.1)
        the `by` it declares in the payload (an id, else an `invalid_id` refusal)."""
        who = self.who()
        if who == "mqtt" and declared:
            if (bad := check_id(declared, "by")) is not None:
                raise PayloadError(bad.reason, bad.detail)
            who = declared
        return f"operator:{who}"


Handler = Callable[[Request], Awaitable[Ack]]


@dataclass(frozen=True, slots=True)
class Route:
    """A request topic pattern (segments after `{prefix}/{site}/`, `+` = any one) and its handler."""

    pattern: tuple[str, ...]
    handler: Handler

    def matches(self, parts: Sequence[str]) -> bool:
        return len(parts) == len(self.pattern) and all(
            p in {"+", x} for p, x in zip(self.pattern, parts, strict=True)
        )


@dataclass(frozen=True, slots=True)
class RouteKit:
    """What handlers need of the kernel: the clock, the dispatcher, command lifetimes and the audit."""

    clock: Clock
    dispatcher: Dispatcher
    base: str
    ttl_s: float
    result_timeout_s: float
    audit: Callable[[AuditRecord], None]

    @classmethod
    def of(cls, kernel: Kernel) -> RouteKit:
        s = kernel.settings
        storage = kernel.storage
        return cls(
            clock=kernel.clock,
            dispatcher=kernel.dispatcher,
            base=f"{s.mqtt.topic_prefix}/{s.site.id}",
            ttl_s=s.dispatcher.command_ttl_s,
            result_timeout_s=s.dispatcher.write_timeout_s * 2 + 1,
            audit=lambda rec: storage.add_data("command_audit", audit_data(rec)),
        )

    def accepted(self, req: Request, **fields: Any) -> Ack:
        """A plain `accepted` answer to `req`, stamped now."""
        return Ack(ok=True, status="accepted", request_topic=req.topic, ts=self.clock.now(), **fields)

    def audit_signal(
        self, target: str, value: float, source: str, reason: str, *, point: str = "limit_a"
    ) -> None:
        """Audit a decision that is not a device write (a limit, a curve, a warning) like a command."""
        now = self.clock.now()
        cmd = Command(new_command_id(), target, point, value, Priority.SAFETY, source, now, now)
        self.audit(AuditRecord(cmd, Outcome.ACCEPTED, value, reason[:500], now))


def parse(model: type[M], raw: Any) -> M:
    """`raw` as `model`, or an `invalid_payload` refusal naming the first problems."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise PayloadError("invalid_payload", errors(exc)) from None


def errors(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:3]:
        loc = ".".join(str(x) for x in e["loc"]) or "payload"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def audit_data(rec: AuditRecord) -> dict[str, Any]:
    """An audit record as its storage row's column values (`Storage.add_data`; the dispatcher
    audits twice per command, 100,000 rows when a city's first plan goes out)."""
    c = rec.command
    return {
        "command_id": c.id,
        "device_id": c.device_id,
        "point": c.point,
        "requested": c.requested if c.requested is not None else c.value,  # what was asked
        "applied": rec.value,
        "priority": c.priority.name.lower(),
        "source": c.source,
        "outcome": str(rec.outcome),
        "reason": rec.reason[:500],
        "ts": rec.ts,
    }


def audit_row(rec: AuditRecord) -> CommandAudit:
    """An audit record as its storage row."""
    c = rec.command
    return CommandAudit(
        command_id=c.id,
        device_id=c.device_id,
        point=c.point,
        requested=c.requested if c.requested is not None else c.value,  # what was asked, even once clamped
        applied=rec.value,
        priority=c.priority.name.lower(),
        source=c.source,
        outcome=str(rec.outcome),
        reason=rec.reason[:500],
        ts=rec.ts,
    )


def summarize(results: list[CommandResult], topic: str, ts: float) -> Ack:
    """One ack for many device results: confirmed, clamped, partial, refused or failed.

    "clamped" is data, not a reason text: a safety policy that changed the value left the asked
    one in `Command.requested`. A single device's ack carries `requested`, `effective` and `note`.
    """
    counts = Counter(str(r.outcome) for r in results)
    clamped = [r for r in results if r.command.requested is not None and r.outcome is Outcome.CONFIRMED]
    counts["clamped"] = len(clamped)
    n = len(results)
    reasons = sorted({r.reason for r in results if r.reason and r.outcome is not Outcome.CONFIRMED})
    if counts[Outcome.CONFIRMED] == n:
        status = "clamped" if clamped else "confirmed"
    elif counts[Outcome.REFUSED] == n:
        status = "refused"
    elif counts[Outcome.CONFIRMED] == 0 and counts[Outcome.REFUSED] == 0:
        status = "failed"
    else:
        status = "partial"
    ok = status in {"confirmed", "clamped"}
    one: dict[str, Any] = {}
    if n == 1:
        r = results[0]
        c = r.command
        one = {
            "requested": c.requested if c.requested is not None else c.value,
            "effective": r.applied_value,
            "note": c.reason[:500] if c.requested is not None else "",
        }
    return Ack(
        ok=ok,
        status=status,
        reason="; ".join(reasons)[:500],
        **one,
        request_topic=topic,
        counts={k: v for k, v in counts.items() if v},
        results=[
            DeviceResult(
                device_id=r.command.device_id,
                outcome=str(r.outcome),
                value=r.applied_value,
                requested=r.command.requested,
                reason=r.reason or (r.command.reason if r.command.requested is not None else ""),
            )
            for r in results[:100]
        ],
        ts=ts,
    )


def limit_ack(
    rating: float, target: str, requested: float, used: float, note: str, topic: str, ts: float
) -> Ack:
    """The answer to a feeder or cabinet limit: what is in force, and why it is not what was asked.

    The supply's own rating always applies (5,000 A asked on a 40 A feeder leaves 40 A), and a
    limit under the §14a floor is raised to it: both are `clamped`, with the effective value.
    """
    effective = min(used, rating)
    notes = [note] if note else []
    if used > rating:
        notes.append(f"the rating of {target} ({rating:g} A) applies")
    clamped = not math.isclose(effective, requested, rel_tol=0, abs_tol=1e-6)
    return Ack(
        ok=True,
        status="clamped" if clamped else "accepted",
        reason="; ".join(notes)[:500],
        requested=round(requested, 3),
        effective=round(effective, 3),
        note="; ".join(notes)[:500] if clamped else "",
        request_topic=topic,
        ts=ts,
    )
