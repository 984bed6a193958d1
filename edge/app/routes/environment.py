"""Environment requests: `cmd/environment/warnings/{warning}` (confirm, reject, withdraw)."""

from __future__ import annotations

from controllers.environment import EnvironmentController, EnvironmentError
from edge.app.routes.base import Request, Route, RouteKit, parse
from edge.errors import PayloadError
from edge.payloads import Ack
from edge.payloads_safety import EnvWarningRequest


def routes(kit: RouteKit, env: EnvironmentController) -> list[Route]:
    """The environment domain's request topics."""

    async def warning(r: Request) -> Ack:
        warning_id = r.parts[3]
        req = parse(EnvWarningRequest, r.raw)
        source = r.operator(req.by)
        try:
            w = env.decide(warning_id, req.action, source)
        except EnvironmentError as exc:
            raise PayloadError(exc.reason, exc.detail) from None
        # Audited like a warning set by hand (the warning's id names the row).
        kit.audit_signal(warning_id, 1.0, source, f"{req.action}: {req.comment}"[:500], point="warning")
        return kit.accepted(r, reason=f"{req.action}: {w.status}")

    return [Route(("cmd", "environment", "warnings", "+"), warning)]
