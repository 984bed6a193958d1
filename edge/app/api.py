"""Northbound MQTT API: retained state, telemetry, alarms, plans, and acknowledged commands.

Topic tree (`{prefix}` = `dos/v1`, `{site}` = the site id), documented in docs/asyncapi.yaml:

    {prefix}/{site}/status                          retained DaemonStatus (last will: offline)
    {prefix}/{site}/lights/{id}/state               retained LampState (QoS 1, via the outbox)
    {prefix}/{site}/lights/{id}/telemetry           LampTelemetry (QoS 0, periodic)
    {prefix}/{site}/controllers/{id}/state          retained ControllerState
    {prefix}/{site}/alarms/events                   AlarmMessage, raised and cleared
    {prefix}/{site}/alarms/active/{device}/{code}   retained while active (with the ack, once acked)
    {prefix}/{site}/alarms/history                  retained AlarmHistory: the latest raises, acks, clears
    {prefix}/{site}/plans/lighting                  retained PlanMessage
    {prefix}/{site}/commands/results                CommandResultMessage (operator, motion, failures)
    {prefix}/{site}/cmd/alarms/ack                  request: AlarmAck (an active alarm, with a comment)
    {prefix}/{site}/cmd/...                         a domain's requests (`edge.app.routes`)
    {prefix}/{site}/utility/{utility}/...           a utility's limits and signals (charging)

The incoming half is `edge.app.router.Router`: it checks every request once and hands it to
the route its domain's `build` returned; the API itself routes only alarm acknowledgements.
Field input (motion, car-park counters, LoRaWAN uplinks) is read by drivers, never here.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import orjson
import structlog
from pydantic import BaseModel, ValidationError

from controllers.charging import ChargingController
from controllers.displays import DisplayController
from controllers.waste import OPERATOR_DOMAIN, WasteController
from devices.inventory import Inventory
from edge.app.router import ACK_TOPIC_CHARS, Router
from edge.app.routes.base import Incoming, Request, Route
from edge.app.routes.base import errors as _errors
from edge.decode import check_id
from edge.errors import PayloadError
from edge.events import (
    AlarmEvent,
    CommandResult,
    Outcome,
    PlanEvent,
    Priority,
    StateChanged,
)
from edge.kernel import Controller, Kernel
from edge.payloads import (
    Ack,
    AlarmAck,
    AlarmHistory,
    AlarmMessage,
    BinState,
    ChargerState,
    CommandResultMessage,
    ControllerState,
    DisplayState,
    FeederState,
    LampState,
    LampTelemetry,
    ParkingState,
    PlanMessage,
    TruckState,
    WastePlanMessage,
    WasteSummary,
    new_event_id,
)

__all__ = ["ACK_TOPIC_CHARS", "Incoming", "MqttApi", "Publisher", "result_message"]

log = structlog.get_logger(__name__)

FAILURE_BITS = ("lamp_failure", "driver_failure", "power_high", "power_low", "comm_loss")
STATE_KEYS = frozenset(
    {"online", "level_cmd", "level_actual", "alarms", "last_command", *FAILURE_BITS}
    | {"status", "car_connected", "current_limit_a", "session_id", "energy_needed_kwh"}
    | {"shown", "message_id", "brightness", "pixel_faults"}
)
YIELD_EVERY = 200  # work items between yields to the event loop in bulk loops
ALARM_HISTORY = 100  # alarm events kept in the retained history
CONTROLLER_KEYS = frozenset({"online", "failsafe_active", "alarms"})


class Publisher(Protocol):
    """The part of MqttLink the API publishes through."""

    async def publish_reliable(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        content_type: str | None = "application/json",
    ) -> None: ...

    def publish_fast(self, topic: str, payload: bytes, retain: bool = False) -> None: ...


def dump(model: BaseModel) -> bytes:
    return orjson.dumps(model.model_dump(mode="json"))


def _one(controllers: Mapping[str, Controller], name: str, cls: type[Any]) -> Any:
    """The domain's controller if the site built that domain (the retained views read it)."""
    c = controllers.get(name)
    return c if isinstance(c, cls) else None


class MqttApi:
    """Publishes the state store north; routes requests to the domains' routes (`Router`)."""

    def __init__(
        self,
        kernel: Kernel,
        routes: Sequence[Route],
        *,
        inventory: Inventory,
        controllers: Mapping[str, Controller],
        waste_interval_s: float = 1.0,
    ) -> None:
        """`routes`: what the domains' builds returned; `controllers`: theirs by domain name (what
        the retained views of charging, displays and waste read)."""
        mq = kernel.settings.mqtt
        self.base = f"{mq.topic_prefix}/{kernel.settings.site.id}"
        self._clock = kernel.clock
        self._state = kernel.state
        self._inv = inventory
        self._telemetry_interval = mq.telemetry_interval_s
        self._pub: Publisher | None = None
        self._charging: ChargingController | None = _one(controllers, "charging", ChargingController)
        self._displays: DisplayController | None = _one(controllers, "displays", DisplayController)
        self._waste: WasteController | None = _one(controllers, "waste", WasteController)
        self._waste_interval = waste_interval_s
        # (device, code, by, comment, ts) to storage; the API itself keeps the active alarms.
        self._alarm_ack = kernel.storage.ack_alarm
        self._alarms: dict[tuple[str, str], AlarmMessage] = {}
        self._alarm_history: deque[AlarmMessage] = deque(maxlen=ALARM_HISTORY)
        self._history_dirty = False
        self._sub = kernel.bus.subscribe("api", StateChanged, AlarmEvent, PlanEvent, CommandResult)
        self._dirty: set[str] = set()
        alarms = Route(("cmd", "alarms", "+"), self._alarm_route)
        self.router = Router(base=self.base, clock=kernel.clock, routes=[*routes, alarms],
                             publisher=lambda: self._pub, max_payload_bytes=mq.max_payload_bytes,
                             reply_prefix=mq.reply_prefix)  # fmt: skip
        self.on_message = self.router.on_message
        self.handle = self.router.handle
        self.close = self.router.close

    @property
    def refused(self) -> Counter[str]:
        """Refused requests by reason (the router counts them)."""
        return self.router.refused

    @property
    def subscriptions(self) -> list[str]:
        return [f"{self.base}/cmd/#", f"{self.base}/utility/+/+"]

    def status_topic(self) -> str:
        return f"{self.base}/status"

    async def _alarm_route(self, r: Request) -> Ack:
        return await self._alarm_command(r.parts[2], r.raw, r.msg)

    def _who(self, msg: Incoming) -> str:
        return Request(msg, (), None).who()

    # ----- outgoing -----------------------------------------------------------------------------

    async def run(self, pub: Publisher) -> None:
        """Publish state, alarms, plans and results until cancelled."""
        self._pub = pub
        for dev in self._state.devices():
            self._dirty.add(dev.device_id)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._flush_loop(pub), name="api.state")
            tg.create_task(self._telemetry_loop(pub), name="api.telemetry")
            if self._charging is not None:
                tg.create_task(self._feeder_loop(pub, self._charging), name="api.feeders")
            if self._displays is not None:
                tg.create_task(self._parking_loop(pub), name="api.parking")
            if self._waste is not None:
                tg.create_task(self._waste_loop(pub, self._waste), name="api.waste")
            async for ev in self._sub:
                await self._publish_event(pub, ev)

    async def _publish_event(self, pub: Publisher, ev: object) -> None:
        if isinstance(ev, StateChanged):
            if not STATE_KEYS.isdisjoint(ev.changed):
                self._dirty.add(ev.device_id)
        elif isinstance(ev, AlarmEvent):
            key = (ev.device_id, ev.code)
            msg = AlarmMessage(
                device_id=ev.device_id,
                code=ev.code,
                severity=str(ev.severity),
                active=ev.active,
                detail=ev.detail,
                ts=ev.ts,
            )
            if ev.restored:
                # Open before a restart: republish the retained topic only; it was raised before.
                if ev.acked_by is not None:
                    msg = msg.model_copy(
                        update={"acked": True, "acked_by": ev.acked_by, "ack_comment": ev.ack_comment}
                    )
                self._alarms[key] = msg
                active_topic = f"{self.base}/alarms/active/{msg.device_id}/{msg.code}"
                await pub.publish_reliable(active_topic, dump(msg), retain=True)
                return
            before = self._alarms.pop(key, None)
            if ev.active:
                self._alarms[key] = msg
            elif before is not None and before.acked:
                # The clear carries the ack, so the history shows who handled it.
                msg = msg.model_copy(
                    update={"acked": True, "acked_by": before.acked_by,
                            "ack_comment": before.ack_comment, "ack_ts": before.ack_ts}
                )  # fmt: skip
            await self._publish_alarm(pub, msg)
        elif isinstance(ev, PlanEvent):
            if ev.domain in {"waste", OPERATOR_DOMAIN}:
                return  # waste/plan comes from the waste loop; operator flags are for storage only
            plan = PlanMessage(domain=ev.domain, ts=ev.ts, plan=dict(ev.plan))
            await pub.publish_reliable(f"{self.base}/plans/{ev.domain}", dump(plan), retain=True)
        elif isinstance(ev, CommandResult):
            quiet = ev.command.priority is Priority.PLAN and ev.outcome is Outcome.CONFIRMED
            if not quiet and ev.outcome is not Outcome.SUPERSEDED:
                await pub.publish_reliable(f"{self.base}/commands/results", dump(result_message(ev)))

    async def _publish_alarm(self, pub: Publisher, msg: AlarmMessage) -> None:
        """An alarm event, its retained active topic, and a note for the history."""
        self._alarm_history.appendleft(msg)
        self._history_dirty = True
        await pub.publish_reliable(f"{self.base}/alarms/events", dump(msg))
        active_topic = f"{self.base}/alarms/active/{msg.device_id}/{msg.code}"
        await pub.publish_reliable(active_topic, dump(msg) if msg.active else b"", retain=True)

    async def _alarm_command(self, name: str, raw: Any, msg: Incoming) -> Ack:
        if name != "ack":
            raise PayloadError("unknown_topic", f"alarm requests go to {self.base}/cmd/alarms/ack")
        try:
            req = AlarmAck.model_validate(raw)
        except ValidationError as exc:
            raise PayloadError("invalid_payload", _errors(exc)) from None
        alarm = self._alarms.get((req.device, req.code))
        if alarm is None:
            raise PayloadError("unknown_alarm", f"no active alarm {req.code} on {req.device}")
        now = self._clock.now()
        by = self._who(msg)
        if by == "mqtt" and req.by:
            if (bad := check_id(req.by, "by")) is not None:
                raise PayloadError(bad.reason, bad.detail)
            by = req.by
        acked = alarm.model_copy(
            update={"acked": True, "acked_by": by, "ack_comment": req.comment, "ack_ts": now,
                    "event_id": new_event_id()}  # the ack is a transition of its own
        )  # fmt: skip
        self._alarms[(req.device, req.code)] = acked
        if self._alarm_ack is not None:
            self._alarm_ack(req.device, req.code, by, req.comment, now)
        if self._pub is not None:
            await self._publish_alarm(self._pub, acked)
        note = f"acknowledged by {by}" + (" (again)" if alarm.acked else "")
        return Ack(ok=True, status="accepted", reason=note, request_topic=msg.topic, ts=now)

    def alarm_history(self) -> AlarmHistory:
        """The latest alarm events, newest first, as retained on `alarms/history`."""
        return AlarmHistory(events=list(self._alarm_history), ts=self._clock.now())

    async def _flush_loop(self, pub: Publisher) -> None:
        while True:
            await asyncio.sleep(0.2)
            if self._history_dirty:
                self._history_dirty = False
                await pub.publish_reliable(
                    f"{self.base}/alarms/history", dump(self.alarm_history()), retain=True
                )
            dirty, self._dirty = self._dirty, set()
            messages = []
            for i, dev_id in enumerate(sorted(dirty)):
                if i % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)
                topic, payload = self.state_message(dev_id)
                if topic:
                    messages.append((topic, payload))
            # Appended concurrently, so the outbox commits them as one batch (one disk sync).
            for i in range(0, len(messages), 500):
                await asyncio.gather(
                    *(pub.publish_reliable(t, p, retain=True) for t, p in messages[i : i + 500])
                )

    def state_message(self, dev_id: str) -> tuple[str, bytes]:
        """The retained state topic and payload of a device ('' for an unknown one)."""
        dev = self._state.get(dev_id)
        if dev is None:
            return "", b""
        v = dev.values
        ts = dev.updated_at or self._clock.now()
        if dev.kind in {"bin", "truck"}:
            return "", b""  # published by the waste loop (waste/bins/..., waste/trucks/...)
        lamp = self._inv.lamps.get(dev_id)
        if lamp is not None:
            msg: BaseModel = LampState(
                device_id=dev_id,
                online=dev.online,
                level_cmd=_num(v.get("level_cmd")),
                level_actual=_num(v.get("level_actual")),
                power_w=_num(v.get("power_w")),
                failures=[b for b in FAILURE_BITS if v.get(b)],
                alarms=sorted(dev.alarms),
                source=dev.last_command,
                segment=lamp.segment,
                group=lamp.group,
                ts=ts,
            )
            return f"{self.base}/lights/{dev_id}/state", dump(msg)
        if dev.kind == "display":
            msg = DisplayState(
                device_id=dev_id, online=dev.online, shown=str(v.get("shown", "")),
                message_id=_int(v.get("message_id")), brightness=_num(v.get("brightness")),
                pixel_faults=_int(v.get("pixel_faults")), alarms=sorted(dev.alarms), ts=ts,
            )  # fmt: skip
            return f"{self.base}/displays/{dev_id}/state", dump(msg)
        charger = self._inv.chargers.get(dev_id)
        if charger is not None:
            planned = self._charging.planned_current(dev_id, self._clock.now()) if self._charging else None
            msg = ChargerState(
                device_id=dev_id,
                online=dev.online,
                status=_str(v.get("status")),
                car_connected=None if v.get("car_connected") is None else bool(v.get("car_connected")),
                current_limit_a=_num(v.get("current_limit_a")),
                power_kw=_num(v.get("power_kw")),
                session_id=_str(v.get("session_id")),
                session_energy_kwh=_num(v.get("session_energy_kwh")),
                energy_needed_kwh=_num(v.get("energy_needed_kwh")),
                departure_ts=_num(v.get("departure_ts")),
                planned_a=planned,
                feeder=charger.feeder,
                alarms=sorted(dev.alarms),
                source=dev.last_command,
                ts=ts,
            )
            return f"{self.base}/chargers/{dev_id}/state", dump(msg)
        failsafe = v.get("failsafe_active")
        msg = ControllerState(
            device_id=dev_id,
            online=dev.online,
            failsafe_active=None if failsafe is None else bool(failsafe),
            alarms=sorted(dev.alarms),
            ts=ts,
        )
        return f"{self.base}/controllers/{dev_id}/state", dump(msg)

    async def _feeder_loop(self, pub: Publisher, charging: ChargingController) -> None:
        """Feeder load against limit, refreshed every 2 s (retained, QoS 0)."""
        s = charging.safety
        while True:
            now = self._clock.now()
            for feeder in s.feeder_ids():
                msg = FeederState.model_validate(
                    {"feeder": feeder, "ts": now, **charging.feeder_state(feeder, now)}
                )
                pub.publish_fast(f"{self.base}/feeders/{feeder}/state", dump(msg), retain=True)
            await asyncio.sleep(2.0)

    async def _parking_loop(self, pub: Publisher) -> None:
        """Car park occupancy, guidance decisions and active warnings (retained), every 5 s."""
        d = self._displays
        assert d is not None
        while True:
            for topic, payload in self.parking_messages():
                pub.publish_fast(topic, payload, retain=True)
            if d.plan is not None:
                pub.publish_fast(
                    f"{self.base}/guidance", orjson.dumps(d.plan.model_dump(mode="json")), retain=True
                )
            warnings = [
                {
                    "id": w.id,
                    "severity": w.severity,
                    "lines": list(w.lines),
                    "displays": sorted(w.displays),
                    "start": w.start,
                    "end": w.end,
                }
                for w in d.warnings.values()
            ]
            pub.publish_fast(f"{self.base}/warnings/active", orjson.dumps(warnings), retain=True)
            await asyncio.sleep(5.0)

    async def _waste_loop(self, pub: Publisher, waste: WasteController) -> None:
        """Bins, trucks, the plan and the day's summary (retained, QoS 1), as they change."""
        waste.dirty_bins.update(waste.bins)
        waste.dirty_trucks.update(waste.trucks)
        waste.dirty_plan = True
        last_summary: dict[str, object] = {}
        summary_at = -math.inf
        while True:
            now = self._clock.now()
            bins, waste.dirty_bins = waste.dirty_bins, set()
            trucks, waste.dirty_trucks = waste.dirty_trucks, set()
            messages = []
            for i, b in enumerate(sorted(bins)):
                if i % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)
                msg: BaseModel = BinState.model_validate(waste.bin_state(b, now))
                messages.append((f"{self.base}/waste/bins/{b}/state", dump(msg)))
            for t in sorted(trucks):
                msg = TruckState.model_validate(waste.truck_state(t, now))
                messages.append((f"{self.base}/waste/trucks/{t}/state", dump(msg)))
            if waste.dirty_plan:
                waste.dirty_plan = False
                plan = waste.plan_message()
                if plan is not None:
                    messages.append((f"{self.base}/waste/plan", dump(WastePlanMessage.model_validate(plan))))
            summary = waste.summary(now)
            changed = {k: v for k, v in summary.items() if k != "ts"} != last_summary
            if changed or self._clock.now() - summary_at >= 60 * self._clock.speed:
                last_summary = {k: v for k, v in summary.items() if k != "ts"}
                summary_at = self._clock.now()
                messages.append((f"{self.base}/waste/summary", dump(WasteSummary.model_validate(summary))))
            for i in range(0, len(messages), 500):
                await asyncio.gather(
                    *(pub.publish_reliable(t, p, retain=True) for t, p in messages[i : i + 500])
                )
            await asyncio.sleep(self._waste_interval)

    async def _telemetry_loop(self, pub: Publisher) -> None:
        while True:
            await asyncio.sleep(self._telemetry_interval)
            for i, dev in enumerate(list(self._state.devices("lamp"))):
                if i % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)  # thousands of lamps: let commands through between chunks
                v = dev.values
                if not v:
                    continue
                msg = LampTelemetry(
                    device_id=dev.device_id,
                    level_actual=_num(v.get("level_actual")),
                    power_w=_num(v.get("power_w")),
                    energy_kwh=_num(v.get("energy_kwh")),
                    hours=_num(v.get("hours")),
                    switch_count=_int(v.get("switch_count")),
                    ts=dev.updated_at,
                )
                pub.publish_fast(f"{self.base}/lights/{dev.device_id}/telemetry", dump(msg))

    def parking_messages(self) -> list[tuple[str, bytes]]:
        """Retained occupancy per car park, as the displays controller sees it."""
        d = self._displays
        if d is None:
            return []
        now = self._clock.now()
        out = []
        for cp in d.car_parks.values():
            occ = d.occupancy.get(cp.id)
            msg = ParkingState(
                car_park=cp.id, name=cp.name, capacity=cp.capacity, free=occ.free if occ else None,
                open=occ.open if occ else None, fresh=occ is not None and now - occ.ts <= d.freshness_s,
                ts=occ.ts if occ else None,
            )  # fmt: skip
            out.append((f"{self.base}/parking/{cp.id}/state", dump(msg)))
        return out


def result_message(ev: CommandResult) -> CommandResultMessage:
    c = ev.command
    return CommandResultMessage(
        command_id=c.id,
        device_id=c.device_id,
        point=c.point,
        requested=c.requested if c.requested is not None else c.value,  # what was asked, not the clamp
        applied=ev.applied_value,
        outcome=str(ev.outcome),
        reason=ev.reason,
        source=c.source,
        priority=c.priority.name.lower(),
        ts=ev.ts,
    )


def _num(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _int(v: object) -> int | None:
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _str(v: object) -> str | None:
    return v if isinstance(v, str) and v else None
