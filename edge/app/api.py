"""Northbound MQTT API: retained state, telemetry, alarms, plans, and acknowledged commands.

The topic tree (`{prefix}` = `dos/v1`, `{site}` = the site id) is `edge.topics.TOPICS`, the one
table the AsyncAPI document (docs/asyncapi.json), these subscriptions and the dashboard's come from.
What the daemon publishes goes out through `edge.app.north.North`, from the state store.

Requests are answered on the MQTT 5 response topic with the correlation data (or,
for MQTT 3.1.1 clients, `response_topic`/`correlation_id` inside the JSON), else on
`{prefix}/{site}/acks`. A response topic must lie under the reply prefix
(`{prefix}/{site}/replies/`): the daemon never writes an answer onto a device's or its own
topics for a client. Every payload goes through `edge.decode` (size, depth, JSON, model) and
every id through its grammar; malformed, unknown, oversized or retained requests get a nack
with the reason and are counted; nothing a client sends can crash the daemon.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

import structlog
from paho.mqtt.client import topic_matches_sub
from pydantic import ValidationError

from controllers.charging import POINT as CHARGE_POINT
from controllers.charging import ChargingController
from controllers.displays import CONTENT, DisplayController
from controllers.displays import Warning as DisplayWarning
from controllers.lighting import LEVEL_POINT, LightingController
from controllers.waste import WasteController
from edge.app.north import North, Publisher, dump, requester
from edge.bus import EventBus
from edge.clock import Clock
from edge.decode import Refusal, Refusals, check_id, check_ts, decode_json, shown_id
from edge.dispatcher import AuditRecord, Dispatcher, make_command, new_command_id
from edge.errors import PayloadError
from edge.events import (
    Command,
    CommandResult,
    Outcome,
    Priority,
    Telemetry,
)
from edge.payloads import (
    Ack,
    CarParkReport,
    ChargerLimit,
    ChargerPause,
    ChargerRelease,
    ChargingReplan,
    ChargingRequest,
    Curtailment,
    DeviceResult,
    DisplayMessage,
    DisplayRequest,
    FeederLimitRequest,
    LightingRequest,
    Motion,
    Replan,
    ResumeSchedule,
    SetLevel,
    UtilitySignal,
    WarningClear,
    WarningRequests,
    WasteBinRequest,
    WasteReplan,
)
from edge.state import StateStore
from edge.topics import request_filters

log = structlog.get_logger(__name__)

MAX_REPLY_TOPIC = 256  # bytes of a response topic; the reply prefix plus a client's own name
ACK_TOPIC_CHARS = 300  # a refusal names a (possibly 64 kB, hostile) request topic by its first 300 characters


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


class MqttApi:
    """Translates between the MQTT topic tree and the state store / dispatcher."""

    def __init__(
        self,
        *,
        site: str,
        prefix: str,
        bus: EventBus,
        clock: Clock,
        state: StateStore,
        dispatcher: Dispatcher,
        lighting: LightingController,
        max_payload_bytes: int = 65_536,
        command_ttl_s: float = 30.0,
        result_timeout_s: float = 5.0,
        telemetry_interval_s: float = 60.0,
        charging: ChargingController | None = None,
        audit: Callable[[AuditRecord], None] | None = None,
        displays: DisplayController | None = None,
        uplinks: Callable[[str, bytes], object] | None = None,
        uplink_topics: Sequence[str] = (),
        alarm_ack: Callable[[str, str, str, str, float], None] | None = None,
        waste: WasteController | None = None,
        waste_interval_s: float = 1.0,
        reply_prefix: str = "",
        max_clock_skew_s: float = 300.0,
    ) -> None:
        """`reply_prefix`: where answers may go ("" = `{prefix}/{site}/replies/`); `max_clock_skew_s`
        (real seconds): a car-park count or motion stamped further ahead of the clock is refused."""
        self.base = f"{prefix}/{site}"
        self._reply_prefix = reply_prefix or f"{self.base}/replies/"
        self._max_ahead = max_clock_skew_s * max(1.0, clock.speed)
        self._refusals = Refusals("api")
        self._site = site
        self._bus = bus
        self._clock = clock
        self._state = state
        self._dispatcher = dispatcher
        self._lighting = lighting
        self._inv = lighting.inv
        self._max_payload = max_payload_bytes
        self._ttl = command_ttl_s
        self._result_timeout = result_timeout_s
        self._pub: Publisher | None = None
        self._charging = charging
        self._audit = audit
        self._displays = displays
        self._uplinks = uplinks
        self._uplink_topics = list(uplink_topics)
        self._waste = waste
        self._waste_interval = waste_interval_s
        # What the daemon publishes, from the state store; it keeps the active alarms and stores
        # an ack with `alarm_ack` (device, code, by, comment, ts).
        self.north = North(
            state=state, bus=bus, clock=clock, base=self.base, inventory=lighting.inv,
            telemetry_interval_s=telemetry_interval_s, alarm_ack=alarm_ack,
        )  # fmt: skip
        self._slots = asyncio.Semaphore(64)
        self._handlers: set[asyncio.Task[None]] = set()
        self.refused: Counter[str] = Counter()
        self.requests = 0
        self.acks = 0
        self.nacks = 0

    @property
    def subscriptions(self) -> list[str]:
        subs = request_filters(self.base, ["displays"] if self._displays is not None else [])
        if self._uplinks is not None:  # LoRaWAN sensors: parking bays, waste bins
            subs.extend(self._uplink_topics)
        return subs

    def status_topic(self) -> str:
        return f"{self.base}/status"

    # ----- outgoing -----------------------------------------------------------------------------

    async def run(self, pub: Publisher) -> None:
        """Publish state, alarms, plans and results until cancelled (`North`, from the state store)."""
        self._pub = pub
        await self.north.run(pub)

    # ----- incoming -----------------------------------------------------------------------------

    async def on_message(self, msg: Incoming) -> None:
        """Handle one request without blocking the link's receive loop."""
        await self._slots.acquire()
        task = asyncio.create_task(self._handle_guarded(msg), name=f"api.request[{msg.topic}]")
        self._handlers.add(task)
        task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self._handlers.discard(task)
        self._slots.release()

    async def close(self) -> None:
        """Wait briefly for requests in progress, then cancel the rest."""
        if self._handlers:
            _, pending = await asyncio.wait(set(self._handlers), timeout=2.0)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _handle_guarded(self, msg: Incoming) -> None:
        """The per-message boundary: a bug in one request's handling is logged (once per topic)
        and answered `internal_error`; it never ends the receive loop."""
        try:
            await self.handle(msg)
        except Exception as exc:
            self.refused["internal_error"] += 1
            self._refusals.crashed(_shown_topic(msg.topic, 80), exc)
            if self._pub is None or not msg.topic.startswith(self.base + "/cmd/"):
                return
            reply = msg.response_topic
            try:
                if reply is not None:
                    self._check_reply(reply)
            except PayloadError:
                reply = None
            ack = Ack(ok=False, status="failed", reason="internal_error: see the daemon's log",
                      request_topic=msg.topic[:ACK_TOPIC_CHARS], ts=self._clock.now())  # fmt: skip
            with contextlib.suppress(PayloadError):
                await self._pub.publish_reliable(
                    reply or f"{self.base}/acks", dump(ack), correlation_data=msg.correlation_data
                )

    async def handle(self, msg: Incoming) -> Ack | None:
        """Validate, execute and answer one request; returns the ack sent (None for sensor input).

        Order of the checks: the response topic (an answer goes only under the reply prefix,
        else to `acks`), the retain flag (a retained request would run again at every
        reconnect), then the one decode (size, depth, JSON), the ids, and the model.
        """
        self.requests += 1
        if self._uplinks is not None and not msg.topic.startswith(self.base + "/"):
            # LoRaWAN uplinks from the network server: sensors want no answer; bad ones are
            # counted by the ingest (its stats) and never raise here. Other device topics on a
            # shared broker (LED boards, trucks) belong to their drivers, not to the ingest.
            if not any(topic_matches_sub(f, msg.topic) for f in self._uplink_topics):
                return None
            try:
                self._uplinks(msg.topic, msg.payload)
            except PayloadError as exc:
                self.refused[f"uplink_{exc.reason}"] += 1
            return None
        rel = msg.topic.removeprefix(self.base + "/")
        reply_to: str | None = None
        corr = msg.correlation_data
        corr_json: str | None = None
        sensor = rel.startswith("field/")
        try:
            if msg.response_topic is not None:
                self._check_reply(msg.response_topic)
                reply_to = msg.response_topic
            if msg.retain and not rel.startswith("field/carparks/"):
                # A retained request would run again at every reconnect of the daemon; a retained
                # motion is a replay, not someone on the path now.
                raise PayloadError(
                    "retained_request", "requests must not be retained: it would run again at every reconnect"
                )
            raw: Any = None
            if msg.payload:
                decoded = decode_json(msg.payload, max_bytes=self._max_payload)
                if isinstance(decoded, Refusal):
                    raise PayloadError(decoded.reason, decoded.detail)
                raw = decoded
            if isinstance(raw, dict):
                # MQTT 3.1.1 clients carry request/response inside the payload.
                reply_in = raw.pop("response_topic", None)
                if reply_to is None and reply_in is not None:
                    if not isinstance(reply_in, str):
                        raise PayloadError("response_topic_refused", "response_topic must be a string")
                    self._check_reply(reply_in)
                    reply_to = reply_in
                corr_in = raw.pop("correlation_id", None)
                if corr_in is not None:
                    corr_json = str(corr_in)[:200]
                    corr = corr or corr_json.encode()
            parts = rel.split("/")
            named = parts[:2] not in (["cmd", "segments"], ["cmd", "groups"])  # inventory names, looked up
            if named and len(parts) >= 3 and (bad := check_id(parts[-1], "topic id")) is not None:
                raise PayloadError(bad.reason, bad.detail)
            if parts[0] == "field" and len(parts) == 3 and parts[1] == "motion":
                self._motion(parts[2], raw)
                return None
            if parts[0] == "field" and len(parts) == 3 and parts[1] == "carparks":
                self._carpark(parts[2], raw, retained=msg.retain)
                return None
            if parts[0] == "utility" and len(parts) == 3 and parts[2] in {"limits", "signals"}:
                if (bad := check_id(parts[1], "utility")) is not None:
                    raise PayloadError(bad.reason, bad.detail)
                ack = self._utility(parts[1], raw, msg.topic)
            elif parts[0] == "cmd" and len(parts) in {3, 4} and parts[1] == "waste":
                ack = self._waste_command(parts[2:], raw, msg)
            elif parts[0] != "cmd" or len(parts) != 3:
                raise PayloadError("unknown_topic", _shown_topic(msg.topic))
            elif parts[1] in {"chargers", "feeders", "charging"}:
                ack = await self._charging_command(parts[1], parts[2], raw, msg)
            elif parts[1] == "alarms":
                if parts[2] != "ack":
                    raise PayloadError("unknown_topic", f"alarm requests go to {self.base}/cmd/alarms/ack")
                ack = await self.north.ack_alarm(raw, msg)
            elif parts[1] in {"displays", "warnings"}:
                ack = await self._display_command(parts[1], parts[2], raw, msg)
            else:
                ack = await self._command(parts[1], parts[2], raw, msg)
        except PayloadError as exc:
            self.refused[exc.reason] += 1
            source = "sensor" if sensor else "request"
            self._refusals.refuse(f"{source}:{_shown_topic(msg.topic, 80)}", Refusal(exc.reason, exc.detail))
            if sensor:
                return None  # sensors want no answer; counted and logged above
            ack = Ack(
                ok=False,
                status="refused",
                reason=str(exc)[:500],
                request_topic=msg.topic[:ACK_TOPIC_CHARS],
                ts=self._clock.now(),
            )
        if sensor:
            return None
        if corr_json is not None:
            ack = ack.model_copy(update={"correlation_id": corr_json})
        if ack.ok:
            self.acks += 1
        else:
            self.nacks += 1
        if self._pub is not None:
            await self._pub.publish_reliable(
                reply_to or f"{self.base}/acks", dump(ack), correlation_data=corr
            )
        return ack

    def _check_reply(self, topic: str) -> None:
        """Answers go only under the reply prefix: never to a device's or the daemon's own topics."""
        if not topic.startswith(self._reply_prefix) or len(topic) == len(self._reply_prefix):
            raise PayloadError(
                "response_topic_refused",
                f"{_shown_topic(topic, 80)} is not under {self._reply_prefix}",
            )
        if "+" in topic or "#" in topic or "\x00" in topic or len(topic.encode()) > MAX_REPLY_TOPIC:
            raise PayloadError(
                "response_topic_refused",
                f"{_shown_topic(topic, 80)}: no wildcards, no NUL, at most {MAX_REPLY_TOPIC} bytes",
            )

    def _who(self, msg: Incoming) -> str:
        """The broker user named in the MQTT 5 user property `user`, checked like any id ('mqtt' if none)."""
        return requester(msg)

    def _motion(self, lamp_id: str, raw: Any) -> None:
        try:
            motion = Motion.model_validate(raw if raw is not None else {})
        except ValidationError as exc:
            raise PayloadError("invalid_payload", _errors(exc)) from None
        if lamp_id not in self._inv.lamps:
            raise PayloadError("unknown_device", lamp_id)
        if motion.ts is not None and (future := check_ts(motion.ts, self._clock.now(), self._max_ahead)):
            raise PayloadError(future.reason, future.detail)
        if motion.detected:  # the lighting controller reacts to it on the bus (C-in)
            self._bus.publish(Telemetry(lamp_id, self._clock.now(), {"motion": True}, derived=True))

    async def _command(self, scope: str, name: str, raw: Any, msg: Incoming) -> Ack:
        try:
            req = LightingRequest.model_validate(raw).root
        except ValidationError as exc:
            raise PayloadError("invalid_payload", _errors(exc)) from None
        if isinstance(req, Replan):
            if (scope, name) != ("lighting", "replan"):
                raise PayloadError("unknown_topic", f"replan goes to {self.base}/cmd/lighting/replan")
            self._lighting.request_replan()
            return Ack(ok=True, status="accepted", request_topic=msg.topic, ts=self._clock.now())
        targets = self._targets(scope, name)
        source = "operator:" + self._who(msg)
        if isinstance(req, ResumeSchedule):
            released = sum(
                self._dispatcher.release(t, LEVEL_POINT, Priority.OPERATOR, source) for t in targets
            )
            return Ack(
                ok=True,
                status="accepted",
                reason=f"{released} override(s) released",
                counts={"released": released},
                request_topic=msg.topic,
                ts=self._clock.now(),
            )
        return await self._set_level(req, targets, source, msg.topic)

    def _need_displays(self) -> DisplayController:
        if self._displays is None:
            raise PayloadError("unknown_topic", "this site has no displays")
        return self._displays

    def _carpark(self, car_park: str, raw: Any, *, retained: bool = False) -> None:
        displays = self._need_displays()
        try:
            rep = CarParkReport.model_validate(raw)
        except ValidationError as exc:
            raise PayloadError("invalid_payload", _errors(exc)) from None
        if car_park not in displays.car_parks:
            raise PayloadError("unknown_car_park", car_park)
        now = self._clock.now()
        if retained and rep.ts is None:
            # A counter's retained last value, replayed at our reconnect: without its own time it
            # would be taken as counted now, and a stale number would look fresh.
            raise PayloadError("retained_request", "a retained car-park count needs its ts")
        if rep.ts is not None and (future := check_ts(rep.ts, now, self._max_ahead)) is not None:
            raise PayloadError(future.reason, future.detail)
        # The displays controller reads the counter from the bus (C-in).
        self._bus.publish(
            Telemetry(car_park, rep.ts if rep.ts is not None else now, {"free": rep.free, "open": rep.open})
        )

    async def _display_command(self, scope: str, name: str, raw: Any, msg: Incoming) -> Ack:
        displays = self._need_displays()
        now = self._clock.now()
        source = "operator:" + self._who(msg)
        if scope == "warnings":
            try:
                req = WarningRequests.model_validate(raw).root
            except ValidationError as exc:
                raise PayloadError("invalid_payload", _errors(exc)) from None
            if isinstance(req, WarningClear):
                found = displays.clear_warning(req.id)
                return Ack(ok=found, status="accepted" if found else "refused",
                           reason="" if found else f"unknown_warning: {req.id}", request_topic=msg.topic, ts=now)  # fmt: skip
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
            displays.warn(
                DisplayWarning(req.id, frozenset(targets), req.severity, tuple(req.lines), req.start, req.end)
            )
            raised = 0
            if req.raise_lamps:
                area = None if req.area is None else (req.area.lat, req.area.lon, req.area.radius_m)
                raised = self._lighting.raise_for_warning(req.id, req.end, area)
            # The warning's own id names the row (point "warning"): "warning:" + a 64-character id
            # would not fit the audit table's device_id.
            self._audit_signal(req.id, float(len(targets)), source, req.severity, point="warning")
            return Ack(ok=True, status="accepted", counts={"displays": len(targets), "lamps_raised": raised},
                       request_topic=msg.topic, ts=now)  # fmt: skip
        if name not in displays.displays:
            raise PayloadError("unknown_device", name)
        try:
            dreq = DisplayRequest.model_validate(raw).root
        except ValidationError as exc:
            raise PayloadError("invalid_payload", _errors(exc)) from None
        if not isinstance(dreq, DisplayMessage):
            released = self._dispatcher.release(name, CONTENT, Priority.OPERATOR, source)
            return Ack(
                ok=True,
                status="accepted",
                counts={"released": int(released)},
                request_topic=msg.topic,
                ts=now,
            )
        cmd = displays.operator_message(name, tuple(dreq.lines), dreq.arrow, dreq.duration_s, source)
        result = await self._dispatcher.submit_and_wait(cmd, self._result_timeout)
        return summarize([result], msg.topic, self._clock.now())

    def _waste_command(self, parts: list[str], raw: Any, msg: Incoming) -> Ack:
        """cmd/waste/bins/{bin} (force, exclude, clear) and cmd/waste/replan."""
        waste = self._waste
        if waste is None:
            raise PayloadError("unknown_topic", "this site has no waste collection")
        now = self._clock.now()
        who = self._who(msg)
        if parts == ["replan"]:
            try:
                rp = WasteReplan.model_validate(raw)
            except ValidationError as exc:
                raise PayloadError("invalid_payload", _errors(exc)) from None
            waste.request_plan("operator")
            log.info("waste_replan_requested", by=who, reason=rp.reason)
            return Ack(ok=True, status="accepted", request_topic=msg.topic, ts=now)
        if len(parts) != 2 or parts[0] != "bins":
            raise PayloadError(
                "unknown_topic", "waste requests go to cmd/waste/bins/{bin} or cmd/waste/replan"
            )
        try:
            req = WasteBinRequest.model_validate(raw)
        except ValidationError as exc:
            raise PayloadError("invalid_payload", _errors(exc)) from None
        ok, why = waste.operator(parts[1], req.action)
        if not ok:
            code, _, detail = why.partition(":")
            raise PayloadError(code.strip() or "refused", detail.strip() or parts[1])
        if self._audit is not None:  # operator decisions on bins are audited like commands
            cmd = Command(new_command_id(), parts[1], f"waste_{req.action}", 1.0, Priority.OPERATOR,
                          f"operator:{who}", now, now, reason=req.reason)  # fmt: skip
            self._audit(AuditRecord(cmd, Outcome.ACCEPTED, 1.0, req.reason[:500] or req.action, now))
        return Ack(ok=True, status="accepted", reason=req.action, request_topic=msg.topic, ts=now)

    def _need_charging(self) -> ChargingController:
        if self._charging is None:
            raise PayloadError("unknown_topic", "this site has no charge points")
        return self._charging

    async def _charging_command(self, scope: str, name: str, raw: Any, msg: Incoming) -> Ack:
        charging = self._need_charging()
        try:
            req = ChargingRequest.model_validate(raw).root
        except ValidationError as exc:
            raise PayloadError("invalid_payload", _errors(exc)) from None
        now = self._clock.now()
        source = "operator:" + self._who(msg)
        if isinstance(req, ChargingReplan):
            if (scope, name) != ("charging", "replan"):
                raise PayloadError("unknown_topic", f"replan goes to {self.base}/cmd/charging/replan")
            charging.request_replan()
            return Ack(ok=True, status="accepted", request_topic=msg.topic, ts=now)
        if isinstance(req, FeederLimitRequest):
            if scope != "feeders" or name not in charging.safety.feeder_ids():
                raise PayloadError("unknown_feeder", name)
            used, note = charging.set_limit(name, req.limit_a, now, now + req.duration_s, source)
            self._audit_signal(name, used, source, note or req.reason)
            return limit_ack(charging, name, req.limit_a, used, note, msg.topic, now)
        if scope != "chargers":
            raise PayloadError("unknown_topic", f"{req.action} goes to cmd/chargers/{{id}}")
        if name not in self._inv.chargers:
            raise PayloadError("unknown_device", name)
        if isinstance(req, ChargerRelease):
            released = self._dispatcher.release(name, CHARGE_POINT, Priority.OPERATOR, source)
            return Ack(
                ok=True,
                status="accepted",
                counts={"released": int(released)},
                request_topic=msg.topic,
                ts=now,
            )
        amps = 0.0 if isinstance(req, ChargerPause) else req.current_a
        assert isinstance(req, ChargerPause | ChargerLimit)
        cmd = make_command(
            name, CHARGE_POINT, amps, Priority.OPERATOR, source,
            now=now, ttl_s=self._ttl * self._clock.speed, hold_s=req.duration_s, reason=req.reason or req.action,
        )  # fmt: skip
        result = await self._dispatcher.submit_and_wait(cmd, self._result_timeout)
        return summarize([result], msg.topic, self._clock.now())

    def _utility(self, utility: str, raw: Any, topic: str) -> Ack:
        charging = self._need_charging()
        try:
            sig = UtilitySignal.model_validate(raw).root
        except ValidationError as exc:
            raise PayloadError("invalid_payload", _errors(exc)) from None
        now = self._clock.now()
        source = f"utility:{utility}"
        if isinstance(sig, Curtailment):
            feeders = {f: f for f in charging.safety.feeder_ids()}
            cabinets = {c.cabinet for c in self._inv.chargers.values()}
            if sig.target not in feeders and sig.target not in cabinets:
                raise PayloadError("unknown_target", sig.target)
            limit_a = (
                sig.limit_a
                if sig.limit_a is not None
                else charging.amps_for_kw(sig.target, sig.limit_kw or 0.0)
            )
            used, note = charging.set_limit(sig.target, limit_a, sig.start, sig.end, source)
            self._audit_signal(sig.target, used, source, note or "curtailment")
            return limit_ack(charging, sig.target, limit_a, used, note, topic, now)
        charging.set_price(sig.start, sig.slot_minutes, list(sig.values))
        self._audit_signal(sig.kind, float(len(sig.values)), source, f"{sig.kind} curve", point="curve")
        return Ack(ok=True, status="accepted", request_topic=topic, ts=now)

    def _audit_signal(
        self, target: str, value: float, source: str, reason: str, *, point: str = "limit_a"
    ) -> None:
        if self._audit is None:
            return
        now = self._clock.now()
        cmd = Command(new_command_id(), target, point, value, Priority.SAFETY, source, now, now)
        self._audit(AuditRecord(cmd, Outcome.ACCEPTED, value, reason[:500], now))

    def _targets(self, scope: str, name: str) -> list[str]:
        if scope == "lights":
            # Refused here, not by the dispatcher: an id that is not ours is never audited or stored.
            if name not in self._inv.lamps:
                raise PayloadError("unknown_device", name)
            return [name]
        if scope == "groups":
            if name not in self._inv.groups:
                raise PayloadError("unknown_group", shown_id(name))
            return list(self._inv.groups[name])
        if scope == "segments":
            if name not in self._inv.segments:
                raise PayloadError("unknown_segment", shown_id(name))
            return list(self._inv.segments[name])
        raise PayloadError("unknown_topic", f"cmd/{scope}/{shown_id(name)}")

    async def _set_level(self, req: SetLevel, targets: Iterable[str], source: str, topic: str) -> Ack:
        now = self._clock.now()
        ttl = (req.ttl_s or self._ttl) * self._clock.speed
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
                reason=req.reason or "operator override",
            )
            for t in targets
        ]
        results = await asyncio.gather(
            *(self._dispatcher.submit_and_wait(c, self._result_timeout) for c in commands)
        )
        return summarize(results, topic, self._clock.now())


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
    charging: ChargingController, target: str, requested: float, used: float, note: str, topic: str, ts: float
) -> Ack:
    """The answer to a feeder or cabinet limit: what is in force, and why it is not what was asked.

    The supply's own rating always applies (5,000 A asked on a 40 A feeder leaves 40 A), and a
    limit under the §14a floor is raised to it: both are `clamped`, with the effective value.
    """
    rating = charging.safety.rating_a(target)
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


def _errors(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:3]:
        loc = ".".join(str(x) for x in e["loc"]) or "payload"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def _shown_topic(topic: str, limit: int = 200) -> str:
    """A topic cut for a log line or an ack reason (a hostile one may be 64 kB long)."""
    return topic if len(topic) <= limit else f"{topic[:limit]}... ({len(topic)} characters)"


def corr_text(data: bytes | None) -> str:
    return "" if data is None else base64.b64encode(data).decode()


Handler = Callable[[Incoming], Awaitable[None]]
