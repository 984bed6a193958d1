"""North for the safety services: emergency calls, environmental warnings, rules and CAP alerts.

Everything here comes from bus events (`PlanEvent`s of the help-point and environment
controllers, and the displays' warning list), like the rest of north:
- an incident is retained on `helppoints/incidents/{id}` while open, emptied on close; every
  change also goes once on `helppoints/events`; escalations are retained per target;
- a rule's warning is retained on `environment/warnings/{id}` while proposed or in force;
- every public warning, from a person or a rule, is a CAP 1.2 message retained on
  `alerts/cap/{id}`: Alert when it is first issued (a proposal is a Draft), Update when it
  changes, Cancel when it is withdrawn or over; each one references the message before it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from edge.app.cap import CapWarning, cap_message_identifier, cap_reference, cap_xml
from edge.clock import Clock
from edge.decode import encode_json
from edge.events import PlanEvent

log = structlog.get_logger(__name__)

CANCELLED_KEPT = 50  # retained Cancels kept on alerts/cap/{id}; older ones are emptied

Send = Callable[..., Awaitable[None]]  # (topic name, payload, **topic parameters)


@dataclass(slots=True)
class _Sent:
    warning: CapWarning
    identifier: str
    sent: float


def _cap_of(w: Mapping[str, Any], status: str) -> CapWarning:
    area = w.get("area")
    return CapWarning(
        id=str(w["id"]),
        severity=str(w.get("severity", "warning")),
        lines=tuple(str(x) for x in w.get("lines", ())),
        start=float(w.get("start", 0.0)),
        end=float(w.get("end", 0.0)),
        source=str(w.get("source", "operator")),
        status=status,
        area=None if not area else (float(area[0]), float(area[1]), float(area[2])),
        event=str(w.get("event", "")),
    )


class SafetyNorth:
    """Publishes the safety services' topics from their plan events (see the module docstring)."""

    def __init__(self, send: Send, clock: Clock, *, sender: str, site_name: str) -> None:
        self._send = send
        self._clock = clock
        self.sender = sender
        self.site_name = site_name
        self._incidents: dict[str, dict[str, Any]] = {}
        self._escalations: dict[str, list[str]] = {}
        self._env: dict[str, dict[str, Any]] = {}
        self._rules: object = None
        self._sources: dict[str, dict[str, CapWarning]] = {"warnings": {}, "environment": {}}
        self._cap: dict[str, _Sent] = {}
        self._env_final: dict[str, str] = {}  # a finished rule warning's last status
        self._cancelled: deque[str] = deque()  # warnings whose Cancel is retained, oldest first
        self._env_ids: set[str] = set()  # every warning id a rule made (bounded by the rules' rate)
        self.cap_messages = 0
        self.cap_log: deque[tuple[float, str, str]] = deque(maxlen=200)  # (sent, msgType, warning id)
        self.cap_refused = 0

    async def plan(self, ev: PlanEvent) -> None:
        if ev.domain == "helppoints":
            await self._helppoints(ev)
        elif ev.domain == "environment":
            await self._environment(ev)
        if ev.domain in self._sources:
            await self._alerts(ev)

    # ----- help points --------------------------------------------------------------------

    async def _helppoints(self, ev: PlanEvent) -> None:
        open_now = {str(i["id"]): dict(i) for i in _dicts(ev.plan.get("incidents"))}
        closed = {str(i["id"]): dict(i) for i in _dicts(ev.plan.get("closed"))}
        for inc_id, inc in open_now.items():
            if self._incidents.get(inc_id) != inc:
                payload = encode_json(inc)
                await self._send("incidents", payload, incident=inc_id)
                await self._send("incident_events", payload)
        for inc_id in [i for i in self._incidents if i not in open_now]:
            if inc_id in closed:
                await self._send("incident_events", encode_json(closed[inc_id]))
            await self._send("incidents", b"", incident=inc_id)
        escalations = ev.plan.get("escalations")
        if isinstance(escalations, dict):
            for target, listed in escalations.items():
                ids = [str(i) for i in listed] if isinstance(listed, list) else []
                if self._escalations.get(target) != ids:
                    body = {"target": target, "incidents": [open_now[i] for i in ids if i in open_now],
                            "ts": ev.ts}  # fmt: skip
                    await self._send("escalations", encode_json(body), target=target)
                    self._escalations[target] = ids
        self._incidents = open_now

    # ----- environment ---------------------------------------------------------------------

    async def _environment(self, ev: PlanEvent) -> None:
        rules = ev.plan.get("rules")
        if rules is not None and rules != self._rules:
            self._rules = rules
            await self._send("rules", encode_json({"rules": rules, "ts": ev.ts}))
        live = {str(w["id"]): dict(w) for w in _dicts(ev.plan.get("warnings"))
                if w.get("status") in {"proposed", "issued"}}  # fmt: skip
        for wid, w in live.items():
            if self._env.get(wid) != w:
                await self._send("env_warnings", encode_json(w), warning=wid)
        for wid in [w for w in self._env if w not in live]:
            await self._send("env_warnings", b"", warning=wid)
        self._env = live

    # ----- CAP -----------------------------------------------------------------------------

    async def _alerts(self, ev: PlanEvent) -> None:
        """Diff the public warnings against what went out as CAP; send what changed."""
        if ev.domain == "warnings":
            self._sources["warnings"] = {
                str(w["id"]): _cap_of(w, "issued")
                for w in _dicts(ev.plan.get("warnings"))
                if w.get("public", True)
            }
        else:
            self._sources["environment"] = {
                str(w["id"]): _cap_of(w, str(w["status"]))
                for w in _dicts(ev.plan.get("warnings"))
                if w.get("status") in {"proposed", "issued"}
            }
            finished = _dicts(ev.plan.get("finished"))
            self._env_ids |= {str(w["id"]) for w in [*_dicts(ev.plan.get("warnings")), *finished]}
            self._env_final |= {str(w["id"]): str(w.get("status", "")) for w in finished}
        # A rule's warning is the environment's to tell (the displays show it, a step behind)
        env_ids = self._env_ids
        merged = {k: w for k, w in self._sources["warnings"].items() if k not in env_ids}
        merged |= self._sources["environment"]
        for wid, w in merged.items():
            before = self._cap.get(wid)
            if before is None or (before.warning.status == "proposed" and w.status == "issued"):
                await self._emit(w, "Alert", before)
            elif _differs(before.warning, w):
                # a proposal is a Draft: CAP updates only actionable alerts, so a changed one is drafted again
                await self._emit(w, "Alert" if w.status == "proposed" else "Update", before)
        for wid in [x for x in self._cap if x not in merged]:
            before = self._cap.pop(wid)
            if before.warning.status == "proposed":
                # never issued: its Drafts were not actionable, so no public Cancel; the topic empties
                await self._send("cap", b"", warning=wid)
                continue
            ended = "expired" if self._clock.now() >= before.warning.end else "withdrawn"
            final = "expired" if self._env_final.get(wid, ended) == "expired" else "withdrawn"
            gone = CapWarning(**{**_fields(before.warning), "status": final})
            await self._emit(gone, "Cancel", before, keep=False)
            # The Cancel stays retained for late subscribers; the oldest ones are emptied, so the
            # retained topics stay bounded (every rule warning has an id of its own).
            self._cancelled.append(wid)
            if len(self._cancelled) > CANCELLED_KEPT:
                await self._send("cap", b"", warning=self._cancelled.popleft())

    async def _emit(self, w: CapWarning, msg_type: str, before: _Sent | None, *, keep: bool = True) -> None:
        # Versions count on from the clock's second, so an identifier (sender.id.vN) is never used
        # twice, not even for a warning sent again after a restart (this state is not stored).
        version = max(int(self._clock.now()), 0 if before is None else before.warning.version + 1)
        w = CapWarning(**{**_fields(w), "version": version})
        refs = (
            ""
            if before is None or msg_type == "Alert"
            else cap_reference(self.sender, before.identifier, before.sent)
        )
        sent = float(int(self._clock.now()))  # CAP times are whole seconds
        try:
            xml = cap_xml(w, sender=self.sender, site_name=self.site_name, msg_type=msg_type, sent=sent,
                          references=refs)  # fmt: skip
        except ValueError as exc:  # a warning CAP cannot carry (e.g. it ends within its first second)
            self.cap_refused += 1
            log.warning("cap_refused", warning=w.id, error=str(exc)[:200])
            return
        if keep:
            self._cap[w.id] = _Sent(w, cap_message_identifier(w, sender=self.sender, msg_type=msg_type), sent)
        self.cap_messages += 1
        self.cap_log.append((self._clock.now(), msg_type, w.id))
        await self._send("cap", xml, warning=w.id)


def _dicts(v: object) -> list[Mapping[str, Any]]:
    return [x for x in v if isinstance(x, Mapping) and "id" in x] if isinstance(v, list) else []


def _fields(w: CapWarning) -> dict[str, Any]:
    return {f: getattr(w, f) for f in CapWarning.__dataclass_fields__}


def _differs(a: CapWarning, b: CapWarning) -> bool:
    keys = ("severity", "lines", "start", "end", "area", "status")
    return any(getattr(a, k) != getattr(b, k) for k in keys)
