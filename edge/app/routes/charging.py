"""Charging requests and utility signals: `cmd/chargers/{id}` (limit, pause, release),
`cmd/feeders/{id}` (an operator limit), `cmd/charging/replan`, and `utility/{utility}/limits`
or `utility/{utility}/signals` (curtailments, price and CO2 curves)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from controllers.charging import POINT as CHARGE_POINT
from controllers.charging import ChargingController
from edge.app.routes.base import Request, Route, RouteKit, limit_ack, parse, summarize
from edge.decode import check_id
from edge.dispatcher import make_command
from edge.errors import DeviceError, PayloadError
from edge.events import CommandResult, Outcome, Priority
from edge.payloads import (
    Ack,
    ChargerLimit,
    ChargerPause,
    ChargerRelease,
    ChargingReplan,
    ChargingRequest,
    Curtailment,
    FeederLimitRequest,
    UtilitySignal,
)


def routes(
    kit: RouteKit,
    charging: ChargingController,
    stop_session: Callable[[str, float], Awaitable[bool]] | None = None,
) -> list[Route]:
    """The charging domain's request and utility topics; `stop_session` ends an OCPP charge point's
    transaction (RemoteStopTransaction) for a pause that asks for it."""
    chargers = charging.inv.chargers

    def answer_limit(target: str, asked: float, used: float, note: str, r: Request) -> Ack:
        return limit_ack(
            charging.safety.rating_a(target), target, asked, used, note, r.topic, kit.clock.now()
        )

    async def command(r: Request) -> Ack:
        scope, name = r.parts[1], r.parts[2]
        req = parse(ChargingRequest, r.raw).root
        source = "operator:" + r.who()
        if isinstance(req, ChargingReplan):
            if (scope, name) != ("charging", "replan"):
                raise PayloadError("unknown_topic", f"replan goes to {kit.base}/cmd/charging/replan")
            charging.request_replan()
            return kit.accepted(r)
        now = kit.clock.now()
        if isinstance(req, FeederLimitRequest):
            if scope != "feeders" or name not in charging.safety.feeder_ids():
                raise PayloadError("unknown_feeder", name)
            used, note = charging.set_limit(name, req.limit_a, now, now + req.duration_s, source)
            kit.audit_signal(name, used, source, note or req.reason)
            return answer_limit(name, req.limit_a, used, note, r)
        if scope != "chargers":
            raise PayloadError("unknown_topic", f"{req.action} goes to cmd/chargers/{{id}}")
        if name not in chargers:
            raise PayloadError("unknown_device", name)
        if isinstance(req, ChargerRelease):
            released = kit.dispatcher.release(name, CHARGE_POINT, Priority.OPERATOR, source)
            return kit.accepted(r, counts={"released": int(released)})
        assert isinstance(req, ChargerPause | ChargerLimit)
        amps = 0.0 if isinstance(req, ChargerPause) else req.current_a
        cmd = make_command(
            name, CHARGE_POINT, amps, Priority.OPERATOR, source,
            now=now, ttl_s=kit.ttl_s * kit.clock.speed, hold_s=req.duration_s, reason=req.reason or req.action,
        )  # fmt: skip
        result = await kit.dispatcher.submit_and_wait(cmd, kit.result_timeout_s)
        ack = summarize([result], r.topic, kit.clock.now())
        if isinstance(req, ChargerPause) and req.stop_session:
            return await _end_session(kit, chargers[name].protocol, result, ack, stop_session)
        return ack

    async def utility(r: Request) -> Ack:
        if (bad := check_id(r.parts[1], "utility")) is not None:
            raise PayloadError(bad.reason, bad.detail)
        sig = parse(UtilitySignal, r.raw).root
        source = f"utility:{r.parts[1]}"
        if isinstance(sig, Curtailment):
            cabinets = {c.cabinet for c in chargers.values()}
            if sig.target not in charging.safety.feeder_ids() and sig.target not in cabinets:
                raise PayloadError("unknown_target", sig.target)
            limit_a = charging.curtailment_a(sig.target, sig.limit_a, sig.limit_kw)
            used, note = charging.set_limit(sig.target, limit_a, sig.start, sig.end, source)
            kit.audit_signal(sig.target, used, source, note or "curtailment")
            return answer_limit(sig.target, limit_a, used, note, r)
        charging.set_price(sig.start, sig.slot_minutes, list(sig.values))
        kit.audit_signal(sig.kind, float(len(sig.values)), source, f"{sig.kind} curve", point="curve")
        return kit.accepted(r)

    return [
        *(Route(("cmd", scope, "+"), command) for scope in ("chargers", "feeders", "charging")),
        Route(("utility", "+", "limits"), utility),
        Route(("utility", "+", "signals"), utility),
    ]


async def _end_session(
    kit: RouteKit,
    protocol: str,
    paused: CommandResult,
    ack: Ack,
    stop_session: Callable[[str, float], Awaitable[bool]] | None,
) -> Ack:
    """After a pause holds (0 A through the interlock), end an OCPP charger's session: that only
    lowers. An OPC UA charge point only pauses."""
    stopped = 0
    name = paused.command.device_id
    if paused.outcome is Outcome.CONFIRMED and stop_session is not None and protocol == "ocpp":
        try:
            stopped = int(await stop_session(name, kit.result_timeout_s))
        except DeviceError as exc:
            ack = ack.model_copy(update={"note": f"paused; session not stopped: {exc}"})
    return ack.model_copy(update={"counts": {**ack.counts, "sessions_stopped": stopped}})
