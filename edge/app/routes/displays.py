"""Display requests: `cmd/displays/{id}` (an operator message, or release it) and
`cmd/warnings/{id}` (raise or clear a warning on displays, optionally raising the lamps)."""

from __future__ import annotations

from controllers.displays import CONTENT, DisplayController
from controllers.displays import Warning as DisplayWarning
from edge.app.routes.base import Request, Route, RouteKit, parse, summarize
from edge.errors import PayloadError
from edge.events import Priority
from edge.payloads import Ack, DisplayMessage, DisplayRequest, WarningClear, WarningRequests


def routes(kit: RouteKit, displays: DisplayController) -> list[Route]:
    """The displays domain's request topics."""

    async def warning(r: Request) -> Ack:
        source = "operator:" + r.who()
        req = parse(WarningRequests, r.raw).root
        if isinstance(req, WarningClear):
            found = displays.clear_warning(req.id)
            return Ack(ok=found, status="accepted" if found else "refused",
                       reason="" if found else f"unknown_warning: {req.id}", request_topic=r.topic,
                       ts=kit.clock.now())  # fmt: skip
        unknown = [d for d in req.displays if d not in displays.displays]
        if unknown:
            raise PayloadError("unknown_device", ", ".join(unknown))
        targets = set(req.displays)
        if req.area is not None:
            targets |= displays.displays_within(req.area.lat, req.area.lon, req.area.radius_m)
        elif not targets:
            targets = set(displays.displays)
        if not targets:
            raise PayloadError("no_display_in_area", f"{req.area}")
        area = None if req.area is None else (req.area.lat, req.area.lon, req.area.radius_m)
        raised = displays.warn(
            DisplayWarning(
                req.id,
                frozenset(targets),
                req.severity,
                tuple(req.lines),
                req.start,
                req.end,
                source=source,
                area=area,
            ),
            raise_lamps=req.raise_lamps,
            area=area,
        )
        # The warning's own id names the row (point "warning"): "warning:" + a 64-character id
        # would not fit the audit table's device_id.
        kit.audit_signal(req.id, float(len(targets)), source, req.severity, point="warning")
        return kit.accepted(r, counts={"displays": len(targets), "lamps_raised": raised})

    async def display(r: Request) -> Ack:
        name = r.parts[2]
        source = "operator:" + r.who()
        if name not in displays.displays:
            raise PayloadError("unknown_device", name)
        dreq = parse(DisplayRequest, r.raw).root
        if not isinstance(dreq, DisplayMessage):
            released = kit.dispatcher.release(name, CONTENT, Priority.OPERATOR, source)
            return kit.accepted(r, counts={"released": int(released)})
        cmd = displays.operator_message(name, tuple(dreq.lines), dreq.arrow, dreq.duration_s, source)
        result = await kit.dispatcher.submit_and_wait(cmd, kit.result_timeout_s)
        return summarize([result], r.topic, kit.clock.now())

    return [Route(("cmd", "warnings", "+"), warning), Route(("cmd", "displays", "+"), display)]
