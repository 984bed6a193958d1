"""Help-point requests: `cmd/helppoints/incidents/{incident}` (acknowledge, note, close)."""

from __future__ import annotations

from controllers.helppoints import HelpPointController, IncidentError
from edge.app.routes.base import Request, Route, RouteKit, parse
from edge.dispatcher import AuditRecord, new_command_id
from edge.errors import PayloadError
from edge.events import Command, Outcome, Priority
from edge.payloads import Ack
from edge.payloads_safety import IncidentRequest


def routes(kit: RouteKit, helppoints: HelpPointController) -> list[Route]:
    """The help-points domain's request topics."""

    async def incident(r: Request) -> Ack:
        incident_id = r.parts[3]
        req = parse(IncidentRequest, r.raw)
        source = r.operator(req.by)
        try:
            if req.action == "ack":
                inc = helppoints.acknowledge(incident_id, source, req.comment)
            elif req.action == "note":
                inc = helppoints.note(incident_id, source, req.comment)
            else:
                inc = helppoints.close(incident_id, source, req.comment)
        except IncidentError as exc:
            now = kit.clock.now()  # refused, and audited as such: who tried what on which call
            cmd = Command(new_command_id(), incident_id, f"incident_{req.action}", 1.0, Priority.OPERATOR,
                          source, now, now, reason=req.comment[:200])  # fmt: skip
            kit.audit(AuditRecord(cmd, Outcome.REFUSED, None, f"{exc.reason}: {exc.detail}"[:500], now))
            raise PayloadError(exc.reason, exc.detail) from None
        now = kit.clock.now()
        # An operator's handling of a call is audited like a command (the incident's id names the row).
        cmd = Command(new_command_id(), incident_id, f"incident_{req.action}", 1.0, Priority.OPERATOR, source,
                      now, now, reason=req.comment[:200])  # fmt: skip
        kit.audit(AuditRecord(cmd, Outcome.ACCEPTED, 1.0, (req.comment or req.action)[:500], now))
        return kit.accepted(r, reason=f"{req.action}: {inc.status}", counts={"lamps": len(inc.lamps)})

    return [Route(("cmd", "helppoints", "incidents", "+"), incident)]
