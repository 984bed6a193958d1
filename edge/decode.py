"""One decode for every inbound message: size, UTF-8, depth, JSON, model; a value or a `Refusal`.

Whatever arrives from outside (API requests, board status, truck state and events,
LoRaWAN uplinks, car-park counters, motion) goes through `decode` (or `decode_json` where
the shape is checked by hand, as for the two uplink formats). The checks run cheapest
first, and the nesting depth is measured by a byte scan *before* the parser runs, so no
payload can drive any code into deep recursion. Nothing here raises for bad input: the
caller gets the model or a `Refusal` with a reason code and a short detail.

Also here, because every receive path needs them: the one id grammar (`check_id`), the one
rule for device timestamps ahead of the daemon's clock (`check_ts`), and `Refusals`, the
per-source counter that logs transitions (first refusal, recovery), not every message.
"""

from __future__ import annotations

import array
import itertools
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import orjson
import structlog
from pydantic import BaseModel, TypeAdapter, ValidationError

log = structlog.get_logger(__name__)

M = TypeVar("M")

MAX_BYTES: Final = 65_536
MAX_DEPTH: Final = 32
"""Nesting of arrays and objects; the deepest message we take (an uplink) has 4 levels."""

ID_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}"
"""Every id the daemon takes from a topic or payload: the inventory's grammar, 1-64 characters."""
_ID = re.compile(ID_PATTERN)

# A JSON string, escapes included; possessive, so it scans each byte once.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_SIGN = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # as signed bytes: +1 open, -1 close

REASONS: Final = (
    "payload_too_large",
    "invalid_utf8",
    "too_deep",
    "malformed_json",
    "invalid_payload",
    "invalid_id",
    "future_ts",
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an inbound message was not taken: a reason code (see `REASONS`) and a short detail."""

    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


def depth_exceeds(payload: bytes, limit: int) -> bool:
    """Whether arrays/objects nest deeper than `limit`, by a byte scan (strings skipped).

    Most messages have fewer brackets than the limit in all, which one C-level count shows.
    Otherwise strings are cut out, every bracket becomes +1 or -1 (everything else is
    dropped), and the largest running sum is the depth: C-level passes over at most
    `max_bytes`, whatever the nesting (about 2 ms for 64 kB of brackets).
    """
    if payload.count(b"[") + payload.count(b"{") <= limit:
        return False
    steps = array.array("b", _STRING.sub(b"", payload).translate(_SIGN, _NOT_BRACKET))
    return max(itertools.accumulate(steps), default=0) > limit


def encode_json(obj: Any) -> bytes:
    """`obj` as compact JSON, in a bytes object of its own size.

    orjson hands back its 4 KiB working buffer however short the text: a 200-byte lamp
    state kept until the broker acknowledges it would hold 4 KiB, and a city keeps tens of
    thousands of them in flight (measured: 9.9 MiB for 2,528 payloads at a tenth of the city).
    """
    return bytes(memoryview(orjson.dumps(obj)))


def decode_json(
    payload: bytes | bytearray | memoryview | str, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH
) -> Any | Refusal:
    """Parsed JSON (orjson), or a Refusal: too large, not UTF-8, too deep, or not JSON."""
    data = payload.encode() if isinstance(payload, str) else bytes(payload)
    if len(data) > max_bytes:
        return Refusal("payload_too_large", f"{len(data)} bytes > {max_bytes}")
    if depth_exceeds(data, max_depth):
        return Refusal("too_deep", f"arrays/objects nested deeper than {max_depth}")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        try:
            data.decode()
        except UnicodeDecodeError as uexc:
            return Refusal("invalid_utf8", f"byte {uexc.start}: {uexc.reason}")
        return Refusal("malformed_json", str(exc)[:200])


def decode(
    payload: bytes | bytearray | memoryview | str,
    model: type[M] | TypeAdapter[M],
    *,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
) -> M | Refusal:
    """The validated model (a pydantic model class or a TypeAdapter), or a Refusal; never raises."""
    raw = decode_json(payload, max_bytes=max_bytes, max_depth=max_depth)
    if isinstance(raw, Refusal):
        return raw
    return validate(raw, model)


def validate(raw: Any, model: type[M] | TypeAdapter[M]) -> M | Refusal:
    """Validate already decoded JSON against `model`; a Refusal (`invalid_payload`) naming the field."""
    try:
        if isinstance(model, TypeAdapter):
            return model.validate_python(raw)
        if isinstance(model, type) and issubclass(model, BaseModel):
            return model.model_validate(raw)
        return TypeAdapter(model).validate_python(raw)
    except ValidationError as exc:
        return Refusal("invalid_payload", errors_text(exc))


def errors_text(exc: ValidationError) -> str:
    """The first few validation errors as `field: message`, short enough for a log line or an ack."""
    parts = []
    for e in exc.errors()[:3]:
        loc = ".".join(str(x) for x in e["loc"]) or "payload"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)[:300]


def is_id(text: object) -> bool:
    """Whether `text` is a well-formed id (`ID_PATTERN`)."""
    return isinstance(text, str) and _ID.fullmatch(text) is not None


def shown_id(text: str) -> str:
    """A possibly hostile id, cut for a log line or a refusal (never for storage)."""
    return repr(text[:40]) + (f"... ({len(text)} characters)" if len(text) > 40 else "")


def check_id(text: str, what: str = "id") -> Refusal | None:
    """None for a well-formed id, else an `invalid_id` Refusal that does not repeat it in full."""
    if is_id(text):
        return None
    return Refusal(
        "invalid_id", f"{what} {shown_id(text)} is not 1-64 of A-Z a-z 0-9 _ . : - (first alphanumeric)"
    )


def check_ts(ts: float, now: float, max_ahead_s: float) -> Refusal | None:
    """None unless `ts` lies more than `max_ahead_s` ahead of `now`: a device cannot report the future.

    A timestamp from the future would keep a reading "fresh" until that time comes, so it is
    refused (reason `future_ts`) rather than trusted. Timestamps in the past are the caller's
    business (late frames, history).
    """
    ahead = ts - now
    if ahead > max_ahead_s:
        return Refusal(
            "future_ts",
            f"ts {ts:.0f} is {ahead:.0f} s ahead of the daemon's clock (at most {max_ahead_s:.0f})",
        )
    return None


class Refusals:
    """Refused messages of one receive loop: counted per reason, logged per source on transitions.

    `refuse(source, refusal)` logs a source's first refusal (and every reason change);
    `accepted(source)` logs once when a source that was refused sends a good message again.
    Sources remembered are bounded, so a flood of distinct fake sources cannot grow memory.
    """

    def __init__(self, loop: str, *, max_sources: int = 4096) -> None:
        self.loop = loop
        self.by_reason: Counter[str] = Counter()
        self._failing: dict[str, str] = {}
        self._max = max_sources

    @property
    def total(self) -> int:
        """Messages refused for any reason."""
        return sum(self.by_reason.values())

    def refuse(self, source: str, refusal: Refusal) -> None:
        """Count one refused message; log it if `source` was not already failing for this reason."""
        self.by_reason[refusal.reason] += 1
        src = source if len(source) <= 120 else shown_id(source)
        if self._failing.get(src) == refusal.reason:
            return
        if src not in self._failing and len(self._failing) >= self._max:
            return  # counted, not remembered: logging stays bounded under a flood of sources
        self._failing[src] = refusal.reason
        log.warning(
            "inbound_refused",
            loop=self.loop,
            source=src,
            reason=refusal.reason,
            detail=refusal.detail[:200],
            count=self.by_reason[refusal.reason],
        )

    def accepted(self, source: str) -> None:
        """A good message from `source`: log the recovery if it was failing."""
        if self._failing and self._failing.pop(source, None) is not None:
            log.info("inbound_recovered", loop=self.loop, source=source)

    def crashed(self, source: str, exc: BaseException) -> None:
        """A message whose handling raised (a bug): counted as `internal_error`, its trace logged once per source."""
        self.by_reason["internal_error"] += 1
        src = source if len(source) <= 120 else shown_id(source)
        if self._failing.get(src) == "internal_error" or (
            src not in self._failing and len(self._failing) >= self._max
        ):
            return
        self._failing[src] = "internal_error"
        log.error("inbound_handler_failed", loop=self.loop, source=src, error=repr(exc)[:300], exc_info=exc)
