"""Lighting requests: `cmd/lights/{id}`, `cmd/groups/{group}`, `cmd/segments/{segment}` (set a
level or resume the schedule) and `cmd/lighting/replan`."""

from __future__ import annotations

import asyncio

from controllers.lighting import LEVEL_POINT, LightingController
from edge.app.routes.base import Request, Route, RouteKit, parse, summarize
from edge.decode import shown_id
from edge.dispatcher import make_command
from edge.errors import PayloadError
from edge.events import Priority
from edge.payloads import Ack, LightingRequest, Replan, ResumeSchedule, SetLevel


def routes(kit: RouteKit, lighting: LightingController) -> list[Route]:
    """The lighting domain's request topics."""
    inv = lighting.inv

    def targets(scope: str, name: str) -> list[str]:
        if scope == "lights":
            # Refused here, not by the dispatcher: an id that is not ours is never audited or stored.
            if name not in inv.lamps:
                raise PayloadError("unknown_device", name)
            return [name]
        if scope == "groups":
            if name not in inv.groups:
                raise PayloadError("unknown_group", shown_id(name))
            return list(inv.groups[name])
        if scope == "segments":
            if name not in inv.segments:
                raise PayloadError("unknown_segment", shown_id(name))
            return list(inv.segments[name])
        raise PayloadError("unknown_topic", f"cmd/{scope}/{shown_id(name)}")

    async def handle(r: Request) -> Ack:
        scope, name = r.parts[1], r.parts[2]
        req = parse(LightingRequest, r.raw).root
        if isinstance(req, Replan):
            if (scope, name) != ("lighting", "replan"):
                raise PayloadError("unknown_topic", f"replan goes to {kit.base}/cmd/lighting/replan")
            lighting.request_replan()
            return kit.accepted(r)
        lamps = targets(scope, name)
        source = "operator:" + r.who()
        if isinstance(req, ResumeSchedule):
            released = sum(kit.dispatcher.release(t, LEVEL_POINT, Priority.OPERATOR, source) for t in lamps)
            return kit.accepted(r, reason=f"{released} override(s) released", counts={"released": released})
        return await set_level(kit, req, lamps, source, r.topic)

    return [Route(("cmd", scope, "+"), handle) for scope in ("lights", "groups", "segments", "lighting")]


async def set_level(kit: RouteKit, req: SetLevel, targets: list[str], source: str, topic: str) -> Ack:
    """An operator level on every target, answered once every device has (or the wait ran out)."""
    now = kit.clock.now()
    ttl = (req.ttl_s or kit.ttl_s) * kit.clock.speed
    reason = req.reason or "operator override"
    commands = [
        make_command(
            t,
            LEVEL_POINT,
            req.level,
            Priority.OPERATOR,
            source,
            now=now,
            ttl_s=ttl,
            hold_s=req.duration_s,
            reason=reason,
        )
        for t in targets
    ]
    results = await asyncio.gather(
        *(kit.dispatcher.submit_and_wait(c, kit.result_timeout_s) for c in commands)
    )
    return summarize(results, topic, kit.clock.now())
