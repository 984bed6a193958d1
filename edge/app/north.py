"""The one path north: everything the daemon publishes, from the state store and the bus.

`North` subscribes to the bus (state changes, alarms, plans, command results) and publishes
on the topics of `edge.topics.TOPICS`, with each topic's retain flag and QoS (QoS 1 through
the outbox, QoS 0 straight out). Device state comes from the state store: lamps, chargers,
displays and controllers when one of their state keys changes (a lamp's power too, once it
moved by more than `POWER_DEADBAND`); what controllers derive (feeders, car parks, bins,
trucks, the waste plan and the day's summary) when they put a new view of it into the store
as derived `Telemetry`. No loop asks a controller for anything: the only timer is the
periodic lamp telemetry, read from the state store. It also keeps the active alarms and their
history, and acknowledges an alarm (`ack_alarm`) for the API's router.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, get_args, get_origin

import orjson
import structlog
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import SQLAlchemyError

from controllers.waste import OPERATOR_DOMAIN, PLANNER_ID, SUMMARY_ID
from devices.inventory import Inventory
from edge.app.north_safety import SafetyNorth
from edge.bus import EventBus
from edge.clock import Clock
from edge.decode import Refusal, check_id, encode_json, validate
from edge.errors import PayloadError
from edge.events import AlarmEvent, CommandResult, Outcome, PlanEvent, Priority, StateChanged, Value
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
from edge.payloads_safety import HelpPointState, SensorState
from edge.state import DeviceState, StateStore
from edge.tasks import TimeSlice
from edge.topics import TOPICS, Topic

log = structlog.get_logger(__name__)
# What a publish can fail with (outbox closing or giving up on a busy database, a refused topic).
_PUBLISH_ERRORS = (RuntimeError, OSError, PayloadError, SQLAlchemyError)

FAILURE_BITS = ("lamp_failure", "driver_failure", "power_high", "power_low", "comm_loss")
STATE_KEYS = frozenset(
    {"online", "level_cmd", "level_actual", "alarms", "last_command", *FAILURE_BITS}
    | {"status", "car_connected", "current_limit_a", "session_id", "energy_needed_kwh"}
    | {"shown", "message_id", "brightness", "pixel_faults"}
)
"""Keys whose change republishes a device's retained state (lamps, chargers, displays, controllers)."""
CHARGER_KEYS = STATE_KEYS | {"planned_a"}  # the charging controller's plan for the point (derived)
POWER_DEADBAND = 0.05
JSON = "application/json"
"""A lamp's retained state follows its power once it moved this share (or 1 W) from what was last
published: fresh for the dashboard's W column and site total, without an outbox write per noisy reading."""
YIELD_EVERY = 200  # work items between yields to the event loop in bulk loops
ALARM_HISTORY = 100  # alarm events kept in the retained history
MAX_BATCH = 5000  # bus events folded before the dirty state is flushed (a busy bus still flushes)
RELIABLE_BATCH = 500  # QoS 1 messages appended at once: the outbox commits them as one batch

# What a controller derives about a device of this kind: (topic name, payload model, its id field).
DERIVED: dict[str, tuple[str, type[BaseModel], str]] = {
    "feeder": ("feeder_state", FeederState, "feeder"),
    "car_park": ("parking_state", ParkingState, "car_park"),
    "bin": ("bin_state", BinState, "bin"),
    "truck": ("truck_state", TruckState, "truck"),
}
# Help points and environmental sensors: every change is published (they change seldom), their
# place and status come as derived values from their controllers.
SAFETY_STATES: dict[str, tuple[str, type[BaseModel]]] = {
    "helppoint": ("helppoint_state", HelpPointState),
    "env_sensor": ("sensor_state", SensorState),
}
DERIVED_IDS: dict[str, tuple[str, type[BaseModel]]] = {
    SUMMARY_ID: ("waste_summary", WasteSummary),
    PLANNER_ID: ("waste_plan", WastePlanMessage),
}


class Publisher(Protocol):
    """The part of MqttLink the publisher needs."""

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

    async def publish_reliable_many(self, messages: Sequence[tuple[str, bytes, bool]]) -> None:
        """(topic, payload, retain) JSON messages at QoS 1, committed together."""
        ...

    def publish_fast(self, topic: str, payload: bytes, retain: bool = False) -> None: ...

    def publish_reply(self, topic: str, payload: bytes, *, correlation_data: bytes | None = None) -> None:
        """An answer to a request at QoS 1, ahead of everything else, kept until acknowledged."""
        ...

    def publish_state(self, topic: str, payload: bytes) -> None:
        """A device's retained state at QoS 1: the newest per topic, kept until acknowledged."""
        ...

    async def fast_room(self) -> None:
        """Until the QoS 0 queue has room (bulk senders pace themselves with it)."""
        ...


class Requester(Protocol):
    """What `ack_alarm` needs of a request (edge.mqtt.IncomingMessage)."""

    @property
    def topic(self) -> str: ...
    @property
    def user_properties(self) -> tuple[tuple[str, str], ...]: ...


Message = tuple[Topic, str, bytes]  # (table entry, concrete topic, payload)


def dump(model: BaseModel) -> bytes:
    return encode_json(model.model_dump(mode="json"))


def requester(msg: Requester) -> str:
    """The broker user named in the MQTT 5 user property `user`, checked like any id ('mqtt' if none)."""
    user = dict(msg.user_properties).get("user")
    if not user:
        return "mqtt"
    if (bad := check_id(user, "user property")) is not None:
        raise PayloadError(bad.reason, bad.detail)
    return user


@functools.cache
def _json_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields of a payload model that hold a list or dict (a JSON string in the state store)."""
    out = set()
    for name, field in model.model_fields.items():
        kinds = {get_origin(a) or a for a in (field.annotation, *get_args(field.annotation))}
        if kinds & {list, dict}:
            out.add(name)
    return frozenset(out)


def from_values(
    model: type[BaseModel], values: Mapping[str, Value | None], **fixed: object
) -> BaseModel | None:
    """A payload from state-store values (contract C-north: keys are the field names, a list goes as
    a JSON string); None while the values do not make a valid one (a view not derived yet)."""
    data: dict[str, object] = {}
    as_json = _json_fields(model)
    for name, field in model.model_fields.items():
        if name in fixed:
            data[name] = fixed[name]
        elif name in values:
            v = values[name]
            data[name] = orjson.loads(v) if name in as_json and isinstance(v, str) else v
        elif field.is_required():
            data[name] = None  # an optional value not known yet (a car park that never reported)
    try:
        return model.model_validate(data)
    except (ValidationError, orjson.JSONDecodeError):
        return None


def _num(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _int(v: object) -> int | None:
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _str(v: object) -> str | None:
    return v if isinstance(v, str) and v else None


def device_state(dev: DeviceState, inv: Inventory, now: float) -> tuple[str, BaseModel] | None:
    """The retained state of a lamp, display, charger or controller (any other device kind with no
    view of its own: feeders, car parks, cabinets...) as (topic name, payload); None for bins and trucks."""
    if dev.kind in {"bin", "truck", "helppoint_link", "env_rule"}:
        return None  # their state is what the waste controller derives (waste/bins/..., waste/trucks/...)
    v, dev_id = dev.values, dev.device_id
    ts = dev.updated_at or now
    lamp = inv.lamps.get(dev_id)
    if lamp is not None:
        return "lamp_state", LampState(
            device_id=dev_id, online=dev.online, level_cmd=_num(v.get("level_cmd")),
            level_actual=_num(v.get("level_actual")), power_w=_num(v.get("power_w")),
            failures=[b for b in FAILURE_BITS if v.get(b)], alarms=sorted(dev.alarms),
            source=dev.last_command, segment=lamp.segment, group=lamp.group, ts=ts,
        )  # fmt: skip
    if dev.kind == "display":
        return "display_state", DisplayState(
            device_id=dev_id, online=dev.online, shown=str(v.get("shown", "")),
            message_id=_int(v.get("message_id")), brightness=_num(v.get("brightness")),
            pixel_faults=_int(v.get("pixel_faults")), alarms=sorted(dev.alarms), ts=ts,
        )  # fmt: skip
    charger = inv.chargers.get(dev_id)
    if charger is not None:
        return "charger_state", ChargerState(
            device_id=dev_id, online=dev.online, status=_str(v.get("status")),
            car_connected=None if v.get("car_connected") is None else bool(v.get("car_connected")),
            current_limit_a=_num(v.get("current_limit_a")), power_kw=_num(v.get("power_kw")),
            session_id=_str(v.get("session_id")), session_energy_kwh=_num(v.get("session_energy_kwh")),
            energy_needed_kwh=_num(v.get("energy_needed_kwh")), departure_ts=_num(v.get("departure_ts")),
            planned_a=_num(v.get("planned_a")), feeder=charger.feeder, alarms=sorted(dev.alarms),
            source=dev.last_command, ts=ts,
        )  # fmt: skip
    if dev.kind in SAFETY_STATES:
        name, model = SAFETY_STATES[dev.kind]
        msg = from_values(model, v, device_id=dev_id, online=dev.online, alarms=sorted(dev.alarms), ts=ts)
        return None if msg is None else (name, msg)
    failsafe = v.get("failsafe_active")
    return "controller_state", ControllerState(
        device_id=dev_id, online=dev.online, failsafe_active=None if failsafe is None else bool(failsafe),
        alarms=sorted(dev.alarms), ts=ts,
    )  # fmt: skip


def derived_state(dev: DeviceState) -> tuple[str, dict[str, str], BaseModel] | None:
    """What a controller derived about the device, as (topic name, topic parameters, payload);
    None for a device with no derived view, or one whose view is not (completely) there yet."""
    if dev.device_id in DERIVED_IDS:
        name, model = DERIVED_IDS[dev.device_id]
        msg = from_values(model, dev.values)
        return None if msg is None else (name, {}, msg)
    if dev.kind not in DERIVED:
        return None
    name, model, param = DERIVED[dev.kind]
    fixed: dict[str, object] = {"feeder": dev.device_id, "ts": dev.derived_at} if dev.kind == "feeder" else {}
    msg = from_values(model, dev.values, **fixed)
    return None if msg is None else (name, {param: dev.device_id}, msg)


def lamp_telemetry(dev: DeviceState) -> LampTelemetry:
    v = dev.values
    return LampTelemetry(
        device_id=dev.device_id, level_actual=_num(v.get("level_actual")), power_w=_num(v.get("power_w")),
        energy_kwh=_num(v.get("energy_kwh")), hours=_num(v.get("hours")),
        switch_count=_int(v.get("switch_count")), ts=dev.updated_at,
    )  # fmt: skip


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


class North:
    """Publishes the state store, alarms, plans and command results on the topic table's topics."""

    def __init__(
        self,
        *,
        state: StateStore,
        bus: EventBus,
        clock: Clock,
        base: str,
        inventory: Inventory,
        topics: Iterable[Topic] = TOPICS,
        telemetry_interval_s: float = 60.0,
        alarm_ack: Callable[[str, str, str, str, float], None] | None = None,
        sender: str = "",
        site_name: str = "",
    ) -> None:
        """`base`: `{prefix}/{site}`; `alarm_ack`: stores an ack (device, code, by, comment, ts).
        Subscribes at once, so what happens before `run` (restored alarms) is published by it."""
        self.base = base
        self._state = state
        self._clock = clock
        self._inv = inventory
        self._topics = {t.name: t for t in topics}
        self._telemetry_interval = telemetry_interval_s
        self._alarm_ack = alarm_ack
        self._pub: Publisher | None = None
        self._sub = bus.subscribe("north", StateChanged, AlarmEvent, PlanEvent, CommandResult)
        self._dirty: set[str] = set()  # devices whose retained state is to be published
        self._derived: set[str] = set()  # devices whose derived view is to be published
        self.failed_events = 0  # events or flushes whose messages could not be handed to the link
        self._power: dict[str, float | None] = {}  # a lamp's power as last published
        self._alarms: dict[tuple[str, str], AlarmMessage] = {}
        self._history: deque[AlarmMessage] = deque(maxlen=ALARM_HISTORY)
        self._history_dirty = False
        self.safety = SafetyNorth(self._send, clock, sender=sender or f"{base.rsplit('/', 1)[-1]}@dos-edge",
                                  site_name=site_name or base.rsplit("/", 1)[-1])  # fmt: skip

    def topic(self, name: str, **params: str) -> str:
        """The concrete topic of a table entry under this site's base."""
        return self._topics[name].topic(self.base, **params)

    async def run(self, pub: Publisher) -> None:
        """Publish every device's state once, then what changes, until cancelled or the bus closes."""
        self._pub = pub
        for dev in self._state.devices():
            self._dirty.add(dev.device_id)
            self._derived.add(dev.device_id)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._telemetry_loop(pub), name="north.telemetry")
            await self.flush()
            async for ev in self._sub:
                await self.on_event(ev)
                await self.drain()

    async def drain(self) -> None:
        """Fold the events already queued (at most MAX_BATCH), then publish the state they changed."""
        for _ in range(MAX_BATCH):
            nxt = self._sub.get_nowait()
            if nxt is None:
                break
            await self.on_event(nxt)
        await self.flush()

    async def on_event(self, ev: object) -> None:
        """One event north; a failure (the outbox gave up on a busy database) costs this event's
        messages, logged and counted, never the publisher and with it the daemon."""
        try:
            await self._on_event(ev)
        except _PUBLISH_ERRORS:
            self.failed_events += 1
            log.exception("north_event_failed", event=type(ev).__name__)

    async def _on_event(self, ev: object) -> None:
        if isinstance(ev, StateChanged):
            self._changed(ev)
        elif isinstance(ev, AlarmEvent):
            await self._alarm(ev)
        elif isinstance(ev, PlanEvent):
            await self._plan(ev)
        elif isinstance(ev, CommandResult):
            quiet = ev.command.priority is Priority.PLAN and ev.outcome is Outcome.CONFIRMED
            if not quiet and ev.outcome is not Outcome.SUPERSEDED:
                await self._send("command_results", dump(result_message(ev)))

    def _changed(self, ev: StateChanged) -> None:
        dev = self._state.get(ev.device_id)
        if dev is None:
            return
        if ev.derived and (dev.kind in DERIVED or dev.device_id in DERIVED_IDS):
            self._derived.add(dev.device_id)
        # A derived change of another kind (a waste summary's alarm count) is not its device's state.
        keys = CHARGER_KEYS if dev.kind == "charger" else STATE_KEYS
        own = dev.kind in {"lamp", "display", "charger"} or not ev.derived
        if dev.kind in SAFETY_STATES or (own and not keys.isdisjoint(ev.changed)):
            self._dirty.add(dev.device_id)
        if dev.kind == "lamp" and "power_w" in ev.changed and dev.device_id in self._power:
            last, now = self._power[dev.device_id], _num(ev.changed["power_w"])
            if last is None or now is None or abs(now - last) >= max(1.0, POWER_DEADBAND * abs(last)):
                self._dirty.add(dev.device_id)

    async def flush(self) -> None:
        """Publish the alarm history and every dirty state (QoS 1 ones appended as a batch)."""
        await self._flush_history()
        dirty, self._dirty = self._dirty, set()
        derived, self._derived = self._derived, set()
        messages: list[Message] = []
        slice_ = TimeSlice()
        for dev_id in sorted(dirty | derived):
            await slice_.tick()
            messages += self.messages(dev_id, derived=dev_id in derived, state=dev_id in dirty)
        try:
            await self._publish_all(messages, states=True)
        except _PUBLISH_ERRORS:  # kept dirty: the next flush sends the states again
            self._dirty |= dirty
            self._derived |= derived
            self.failed_events += 1
            log.exception("north_flush_failed", messages=len(messages))

    async def _flush_history(self) -> None:
        if self._history_dirty:
            self._history_dirty = False
            await self._send("alarm_history", dump(self.alarm_history()))

    def messages(self, dev_id: str, *, state: bool = True, derived: bool = True) -> list[Message]:
        """What is published about a device: its retained state and/or its derived view ([] if unknown)."""
        dev = self._state.get(dev_id)
        if dev is None:
            return []
        out: list[Message] = []
        if state and (got := device_state(dev, self._inv, self._clock.now())) is not None:
            name, msg = got
            if isinstance(msg, LampState):
                self._power[dev_id] = msg.power_w
            param = self._topics[name].params[0]
            out.append((self._topics[name], self.topic(name, **{param: dev_id}), dump(msg)))
        if derived and (view := derived_state(dev)) is not None:
            name, params, msg = view
            out.append((self._topics[name], self.topic(name, **params), dump(msg)))
        return out

    def state_message(self, dev_id: str) -> tuple[str, bytes]:
        """The retained state topic and payload of a device ('' for an unknown one or a bin or truck)."""
        got = self.messages(dev_id, derived=False)
        return (got[0][1], got[0][2]) if got else ("", b"")

    async def _publish_all(self, messages: list[Message], *, states: bool = False) -> None:
        """QoS 0 messages to the fast queue; with `states` (devices' retained states and views,
        published again whole at every start) QoS 1 retained ones as the newest per topic,
        without the disk outbox; everything else through the outbox."""
        pub = self._pub
        if pub is None:
            return
        reliable = []
        for t, topic, payload in messages:
            if t.qos == 0:
                pub.publish_fast(topic, payload, retain=t.retained)
            elif states and t.retained:
                pub.publish_state(topic, payload)
            elif t.content_type != JSON:  # CAP's XML: one at a time, with its own content type
                await pub.publish_reliable(topic, payload, retain=t.retained, content_type=t.content_type)
            else:
                reliable.append((topic, payload, t.retained))
        # Appended together, so the outbox commits them as one batch (one disk sync), and
        # without a task per message.
        for i in range(0, len(reliable), RELIABLE_BATCH):
            await pub.publish_reliable_many(reliable[i : i + RELIABLE_BATCH])

    async def _send(self, name: str, payload: bytes, **params: str) -> None:
        """One message on a table topic, with its retain flag and QoS."""
        t = self._topics[name]
        await self._publish_all([(t, self.topic(name, **params), payload)])

    # ----- plans ---------------------------------------------------------------------------------

    async def _plan(self, ev: PlanEvent) -> None:
        """A domain's plan on `plans/{domain}`; guidance and warnings also on their own topics.

        The waste planner's PlanEvent is the stored record (with `day` and `selection`): the plan
        in force goes north from the state store (`waste/plan`); operator flags are for storage.
        """
        if ev.domain in {"waste", OPERATOR_DOMAIN}:
            return
        await self._send(
            "plan", dump(PlanMessage(domain=ev.domain, ts=ev.ts, plan=dict(ev.plan))), domain=ev.domain
        )
        if ev.domain == "guidance":
            await self._send("guidance", encode_json(dict(ev.plan)))
        elif ev.domain == "warnings":
            await self._send("warnings", encode_json(ev.plan.get("warnings", [])))
        try:
            await self.safety.plan(ev)
        except _PUBLISH_ERRORS:
            raise
        except Exception:  # a record it cannot read costs its own topics, never the publisher
            self.failed_events += 1
            log.exception("north_safety_failed", domain=ev.domain)

    # ----- alarms --------------------------------------------------------------------------------

    async def _alarm(self, ev: AlarmEvent) -> None:
        key = (ev.device_id, ev.code)
        msg = AlarmMessage(
            device_id=ev.device_id, code=ev.code, severity=str(ev.severity), active=ev.active,
            detail=ev.detail, ts=ev.ts,
        )  # fmt: skip
        if ev.restored:
            # Open before a restart: republish the retained topic only; it was raised before.
            if ev.acked_by is not None:
                msg = msg.model_copy(
                    update={"acked": True, "acked_by": ev.acked_by, "ack_comment": ev.ack_comment}
                )
            self._alarms[key] = msg
            await self._send("alarm_active", dump(msg), device=msg.device_id, code=msg.code)
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
        await self._publish_alarm(msg)

    async def _publish_alarm(self, msg: AlarmMessage) -> None:
        """An alarm event, its retained active topic, and a note for the history."""
        self._history.appendleft(msg)
        self._history_dirty = True
        await self._send("alarm_events", dump(msg))
        await self._send(
            "alarm_active", dump(msg) if msg.active else b"", device=msg.device_id, code=msg.code
        )

    async def ack_alarm(self, raw: Any, msg: Requester) -> Ack:
        """`cmd/alarms/ack`: acknowledge an active alarm with a comment (PayloadError if refused)."""
        req = validate(raw, AlarmAck)
        if isinstance(req, Refusal):
            raise PayloadError(req.reason, req.detail)
        alarm = self._alarms.get((req.device, req.code))
        if alarm is None:
            raise PayloadError("unknown_alarm", f"no active alarm {req.code} on {req.device}")
        now = self._clock.now()
        by = requester(msg)
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
        await self._publish_alarm(acked)
        await self._flush_history()  # before the answer: the router's task is not the bus's
        note = f"acknowledged by {by}" + (" (again)" if alarm.acked else "")
        return Ack(ok=True, status="accepted", reason=note, request_topic=msg.topic, ts=now)

    def alarm_history(self) -> AlarmHistory:
        """The latest alarm events, newest first, as retained on `alarms/history`."""
        return AlarmHistory(events=list(self._history), ts=self._clock.now())

    # ----- telemetry -----------------------------------------------------------------------------

    async def _telemetry_loop(self, pub: Publisher) -> None:
        """Lamp counters every `telemetry_interval_s` (real seconds), read from the state store."""
        t = self._topics["lamp_telemetry"]
        while True:
            await asyncio.sleep(self._telemetry_interval)
            slice_ = TimeSlice()  # thousands of lamps: let commands through every few ms
            for i, dev in enumerate(list(self._state.devices("lamp"))):
                await slice_.tick()
                if i % YIELD_EVERY == 0:
                    # Go at the link's pace (a city's counters overflowed the QoS 0 queue: 54,000 at once).
                    await pub.fast_room()
                if dev.values:
                    payload = dump(lamp_telemetry(dev))
                    pub.publish_fast(t.topic(self.base, lamp=dev.device_id), payload, retain=t.retained)
