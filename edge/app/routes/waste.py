"""Waste requests: `cmd/waste/bins/{bin}` (force, exclude, clear an operator flag) and
`cmd/waste/replan`."""

from __future__ import annotations

import structlog

from controllers.waste import WasteController
from edge.app.routes.base import Request, Route, RouteKit, parse
from edge.dispatcher import AuditRecord, new_command_id
from edge.errors import PayloadError
from edge.events import Command, Outcome, Priority
from edge.payloads import Ack, WasteBinRequest, WasteReplan

log = structlog.get_logger(__name__)


def routes(kit: RouteKit, waste: WasteController) -> list[Route]:
    """The waste domain's request topics."""

    async def replan(r: Request) -> Ack:
        who = r.who()
        rp = parse(WasteReplan, r.raw)
        waste.request_plan("operator")
        log.info("waste_replan_requested", by=who, reason=rp.reason)
        return kit.accepted(r)

    async def bin_flag(r: Request) -> Ack:
        who = r.who()
        bin_id = r.parts[3]
        req = parse(WasteBinRequest, r.raw)
        ok, why = waste.operator(bin_id, req.action)
        if not ok:
            code, _, detail = why.partition(":")
            raise PayloadError(code.strip() or "refused", detail.strip() or bin_id)
        now = kit.clock.now()
        # Operator decisions on bins are audited like commands.
        cmd = Command(new_command_id(), bin_id, f"waste_{req.action}", 1.0, Priority.OPERATOR,
                      f"operator:{who}", now, now, reason=req.reason)  # fmt: skip
        kit.audit(AuditRecord(cmd, Outcome.ACCEPTED, 1.0, req.reason[:500] or req.action, now))
        return kit.accepted(r, reason=req.action)

    return [Route(("cmd", "waste", "replan"), replan), Route(("cmd", "waste", "bins", "+"), bin_flag)]
