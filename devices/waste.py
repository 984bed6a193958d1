"""Collection trucks over MQTT (docs/fleet-protocol.md): state and events in, routes out.

`FleetDriver` keeps one session on the fleet broker. `fleet/{truck}/state` becomes
`Telemetry(truck, ts, {lat, lon, load_l, load_kg, status, route_id, stop_index,
odometer_km, speed_kmh})`, and each `fleet/{truck}/event` becomes `Telemetry(truck, ts,
{"event": type, "seq": n, ...})` (the waste controller tells them apart by `event`).
Payloads are validated here, at the trust boundary: a bad one is counted and logged with
what is wrong, never passed on. That includes a `ts` more than `MAX_SKEW_S` from the
daemon's clock behind, or more than `max_clock_skew_s` ahead (milliseconds, a truck whose
clock never synced): the controller keys de-duplication, ETAs and the day's counters on it.
Every payload goes through `edge.decode` (size, depth, JSON, model); one bad message never
ends the receive loop.

Routes go through the dispatcher like any command (`PayloadDriver`): `write_payload`
publishes the route retained with QoS 1 (a truck that reconnects gets it) and returns the
route's number once the truck reports `route_accepted` for it (or a state naming it);
`route_rejected` is a `DeviceReplyError`, silence a `DeviceTimeout` (the dispatcher
retries until the command's time to live). When the truck reports `route_done` for the
route that is retained on its topic, the driver clears it (an empty retained message), so
a truck that restarts the next morning does not drive yesterday's route again.
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

import aiomqtt
import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field

from edge.clock import Clock
from edge.decode import Refusal, Refusals, check_id, check_ts, decode, is_id, shown_id
from edge.driver import Driver
from edge.errors import ConfigError, DeviceReplyError, DeviceTimeout, DeviceUnavailable
from edge.events import Event, Telemetry, Value
from edge.mqtt import BrokerAddress, TlsFiles
from edge.tasks import close_task_group

log = structlog.get_logger(__name__)

MAX_FLEET_BYTES = 256 * 1024  # a route of a few hundred stops is ~60 kB
MAX_SKEW_S = 86_400.0  # a truck's `ts` further than this behind the daemon's clock is refused
# Upper bounds well above any refuse truck (the largest carry ~40 m3 and ~15 t) but far below
# what would overflow a sum or a percentage: a value beyond them is a broken unit.
MAX_LOAD_L = 200_000.0
MAX_LOAD_KG = 100_000.0
MAX_ODOMETER_KM = 10_000.0  # per shift
MAX_STOP_INDEX = 100_000
LOG_EVERY = 100  # a misbehaving truck is named on its first bad message and every 100th after
MAX_UNKNOWN_LOGGED = 1_000  # distinct unknown truck ids remembered (and logged once each)

_FLEET_MODEL = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


class TruckStateMessage(BaseModel):
    """`fleet/{truck}/state`."""

    model_config = _FLEET_MODEL

    ts: float = Field(gt=0)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    speed_kmh: float = Field(default=0.0, ge=0, le=200)
    load_l: float = Field(default=0.0, ge=0, le=MAX_LOAD_L)
    load_kg: float = Field(default=0.0, ge=0, le=MAX_LOAD_KG)
    status: Literal["idle", "driving", "collecting", "unloading", "returning", "broken"]
    route_id: str | None = Field(default=None, max_length=200)
    stop_index: int = Field(default=0, ge=0, le=MAX_STOP_INDEX)
    odometer_km: float = Field(default=0.0, ge=0, le=MAX_ODOMETER_KM)


class TruckEventMessage(BaseModel):
    """`fleet/{truck}/event`: one happening, with `seq` for de-duplication."""

    model_config = _FLEET_MODEL

    type: Literal[
        "route_accepted", "route_rejected", "emptied", "skipped", "unloaded", "route_done", "breakdown"
    ]
    ts: float = Field(gt=0)
    seq: int = Field(ge=0, le=2**53)
    route_id: str | None = Field(default=None, max_length=200)
    bin: str | None = Field(default=None, max_length=128)
    reason: str | None = Field(default=None, max_length=200)
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    load_l: float | None = Field(default=None, ge=0, le=MAX_LOAD_L)
    load_kg: float | None = Field(default=None, ge=0, le=MAX_LOAD_KG)


@dataclass(slots=True)
class FleetStats:
    states: int = 0
    events: int = 0
    bad: int = 0
    unknown_truck: int = 0
    unknown_bin: int = 0
    routes_sent: int = 0
    routes_accepted: int = 0
    routes_rejected: int = 0
    routes_cleared: int = 0


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


def route_number(route_id: str) -> int:
    """The number a route id ends in ("...-r12" -> 12), -1 if none: a route command's read-back value."""
    _, sep, n = route_id.rpartition("-r")
    return int(n) if sep and n.isdigit() else -1


class FleetDriver:
    """The trucks' MQTT link: Telemetry out to the bus, routes in from the dispatcher; async CM."""

    def __init__(
        self,
        publish: Callable[[Event], None],
        clock: Clock,
        trucks: Sequence[str],
        *,
        mqtt_url: str,
        tls: TlsFiles | None = None,
        bins: Collection[str] | None = None,
        timeout_s: float = 5.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_clock_skew_s: float = 300.0,
    ) -> None:
        """`bins`, when given, are the known bin ids: an `emptied`/`skipped` naming another is logged.
        A `ts` more than `max_clock_skew_s` (real seconds) ahead of the clock is refused.

        Raises ConfigError (key `waste.fleet_mqtt_url`) for a URL that is not mqtt:// or mqtts://.
        """
        for t in trucks:
            if not t or any(c in t for c in "/+#"):
                raise ValueError(f"truck id {t!r} cannot be part of a topic")
        if len(set(trucks)) != len(trucks):
            raise ValueError("truck ids must be unique")
        self.publish = publish
        self.clock = clock
        self.trucks = frozenset(trucks)
        try:
            self.address = BrokerAddress.parse(mqtt_url, tls=tls)
        except ConfigError as exc:
            raise ConfigError(str(exc.args[0]), key="waste.fleet_mqtt_url") from None
        self.broker = self.address.where
        self.bins = frozenset(bins) if bins is not None else None
        self.timeout_s = timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.stats = FleetStats()
        self.refused: Counter[str] = Counter()
        self._crashes = Refusals("fleet")
        self.max_ahead_s = max_clock_skew_s * max(1.0, clock.speed)
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._answers: dict[tuple[str, str], asyncio.Future[float]] = {}
        self._bad_by_truck: dict[str, int] = {}
        self._unknown_seen: set[str] = set()
        self._unknown_bins_seen: set[tuple[str, str]] = set()
        self._retained: dict[str, str] = {}  # truck -> route id last published retained
        self._state = _State.UNOPENED
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Self:
        if self._state is not _State.UNOPENED:
            raise RuntimeError(f"fleet driver is {self._state.value}; it cannot be opened again")
        self._state = _State.OPENED
        tg = asyncio.TaskGroup()
        await tg.__aenter__()
        self._tg = tg
        self._tasks.append(tg.create_task(self._mqtt_loop(), name="fleet.mqtt"))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._state = _State.CLOSED
        for fut in self._answers.values():
            if not fut.done():
                fut.cancel()
        await close_task_group(self._tg, self._tasks, exc_type, exc, tb)

    async def wait_connected(self, timeout: float) -> None:  # noqa: ASYNC109 - a bounded wait is the API
        """Wait until subscribed on the fleet broker (tests and the demo)."""
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    def _new_client(self) -> aiomqtt.Client:
        return self.address.client(
            "edge-fleet", timeout_s=self.timeout_s, pending=max(64, 4 * len(self.trucks))
        )

    async def _mqtt_loop(self) -> None:
        """One session for every truck; reconnect with capped, jittered backoff."""
        attempt = 0
        while True:
            try:
                async with self._new_client() as client:
                    await client.subscribe(
                        [("fleet/+/state", 0), ("fleet/+/event", 1)], timeout=self.timeout_s
                    )
                    self._client = client
                    self._connected.set()
                    if attempt:
                        log.info("fleet_mqtt_up", broker=self.broker)
                    attempt = 0
                    async for message in client.messages:
                        try:
                            self.on_message(message.topic.value, message.payload)
                        except Exception as exc:  # a bug in one message's handling must not end the loop
                            self.refused["internal_error"] += 1
                            self._crashes.crashed(message.topic.value, exc)
            except aiomqtt.MqttError as exc:
                if attempt == 0:
                    log.warning("fleet_mqtt_down", broker=self.broker, error=str(exc))
                delay = random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2**attempt))
                attempt = min(attempt + 1, 30)
                await asyncio.sleep(delay)
            finally:
                self._client = None
                self._connected.clear()

    def _bad(self, truck: str, what: str, refusal: Refusal) -> None:
        """Count a refused message by reason; name the truck on its first and every LOG_EVERY-th one."""
        self.stats.bad += 1
        self.refused[refusal.reason] += 1
        n = self._bad_by_truck.get(truck, 0) + 1
        self._bad_by_truck[truck] = n
        if n == 1 or n % LOG_EVERY == 0:
            log.warning(
                "fleet_bad_message",
                truck=truck,
                topic=what,
                reason=refusal.reason,
                error=refusal.detail,
                count=n,
            )

    def bad_count(self, truck: str) -> int:
        """Messages refused from one truck so far."""
        return self._bad_by_truck.get(truck, 0)

    def _unknown(self, truck: str) -> None:
        self.stats.unknown_truck += 1
        if not is_id(truck):
            self.refused["invalid_id"] += 1
            truck = shown_id(truck)  # never remembered or logged in full
        if truck not in self._unknown_seen and len(self._unknown_seen) < MAX_UNKNOWN_LOGGED:
            self._unknown_seen.add(truck)
            log.warning("fleet_unknown_truck", truck=truck, known=len(self.trucks))

    def _check_ts(self, ts: float) -> Refusal | None:
        """Why `ts` is refused: ahead of the daemon's clock (the one rule of edge.decode), or more
        than MAX_SKEW_S behind it (a truck whose clock never synced); None if it is usable."""
        now = self.clock.now()
        future = check_ts(ts, now, self.max_ahead_s)
        if future is not None:
            return Refusal(future.reason, f"ts: {future.detail} (Unix seconds)")
        if now - ts > MAX_SKEW_S:
            return Refusal(
                "stale_ts",
                f"ts: {ts!r} is {now - ts:.0f} s behind the daemon's clock (at most {MAX_SKEW_S:.0f} s)",
            )
        return None

    def _check_bin(self, truck: str, ev: TruckEventMessage) -> None:
        """Log (once per truck and bin) an emptied/skipped event for a bin that is not in the inventory."""
        if self.bins is None or ev.type not in {"emptied", "skipped"} or ev.bin in self.bins:
            return
        self.stats.unknown_bin += 1
        key = (truck, ev.bin or "")
        if key not in self._unknown_bins_seen and len(self._unknown_bins_seen) < MAX_UNKNOWN_LOGGED:
            self._unknown_bins_seen.add(key)
            log.warning("fleet_unknown_bin", truck=truck, kind=ev.type, bin=ev.bin, route_id=ev.route_id)

    def on_message(self, topic: str, payload: Any) -> Telemetry | None:
        """Take one fleet message; return the Telemetry published for it (None if refused)."""
        parts = topic.split("/")
        if len(parts) != 3 or parts[0] != "fleet" or parts[2] not in {"state", "event"}:
            return None
        truck, kind = parts[1], parts[2]
        if truck not in self.trucks:
            self._unknown(truck)
            return None
        if not isinstance(payload, bytes | bytearray | str) or not payload:
            return None  # a cleared retained state
        msg: TruckStateMessage | TruckEventMessage | Refusal
        if kind == "state":
            msg = decode(payload, TruckStateMessage, max_bytes=MAX_FLEET_BYTES, max_depth=4)
        else:
            msg = decode(payload, TruckEventMessage, max_bytes=MAX_FLEET_BYTES, max_depth=4)
        if not isinstance(msg, Refusal):
            msg = self._check_ts(msg.ts) or msg
        if isinstance(msg, TruckEventMessage) and msg.bin is not None and (bad := check_id(msg.bin, "bin")):
            msg = bad
        if isinstance(msg, Refusal):
            self._bad(truck, kind, msg)
            return None
        if isinstance(msg, TruckStateMessage):
            st = msg
            values: dict[str, Value] = {
                "lat": st.lat, "lon": st.lon, "speed_kmh": st.speed_kmh, "load_l": st.load_l,
                "load_kg": st.load_kg, "status": st.status, "route_id": st.route_id or "",
                "stop_index": st.stop_index, "odometer_km": st.odometer_km,
            }  # fmt: skip
            self.stats.states += 1
            if st.route_id:
                self._answer(truck, st.route_id, None)
        else:
            ev = msg
            self._check_bin(truck, ev)
            values = {"event": ev.type, "seq": ev.seq}
            for key in ("route_id", "bin", "reason", "lat", "lon", "load_l", "load_kg"):
                v = getattr(ev, key)
                if v is not None:
                    values[key] = v
            self.stats.events += 1
            if ev.type == "route_done" and ev.route_id and self._retained.get(truck) == ev.route_id:
                self._clear_route(truck, ev.route_id)
            if ev.type in {"route_accepted", "route_rejected"} and ev.route_id:
                self._answer(
                    truck, ev.route_id, ev.reason or "rejected" if ev.type == "route_rejected" else None
                )
        event = Telemetry(truck, msg.ts, values)
        self.publish(event)
        return event

    def _clear_route(self, truck: str, route_id: str) -> None:
        """Clear a finished route's retained message (in the background: on_message is synchronous)."""
        if self._tg is None or self._state is not _State.OPENED:
            return
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(
            self._tg.create_task(self._publish_clear(truck, route_id), name=f"fleet[{truck}].clear")
        )

    async def _publish_clear(self, truck: str, route_id: str) -> None:
        client = self._client
        if client is None or self._retained.get(truck) != route_id:
            return  # offline: the route stays until the next one replaces it; or a new one came
        try:
            async with asyncio.timeout(self.timeout_s):
                await client.publish(f"fleet/{truck}/route", b"", qos=1, retain=True)
            if self._retained.get(truck) == route_id:
                del self._retained[truck]
                self.stats.routes_cleared += 1
        except (TimeoutError, aiomqtt.MqttError) as exc:
            log.warning("fleet_route_not_cleared", truck=truck, route_id=route_id, error=str(exc))

    def _answer(self, truck: str, route_id: str, rejected: str | None) -> None:
        fut = self._answers.get((truck, route_id))
        if fut is None or fut.done():
            return
        if rejected is None:
            self.stats.routes_accepted += 1
            fut.set_result(float(route_number(route_id)))
        else:
            self.stats.routes_rejected += 1
            fut.set_exception(DeviceReplyError(f"route {route_id} rejected: {rejected}", endpoint=truck))

    # -- Driver ----------------------------------------------------------------------

    def handles(self, device_id: str) -> bool:
        return device_id in self.trucks

    async def write(self, device_id: str, point: str, value: float, timeout: float) -> float:  # noqa: ASYNC109
        """Trucks take structured routes only (see `write_payload`)."""
        raise DeviceReplyError(f"{point!r} takes a route payload, not a number", endpoint=device_id)

    async def write_payload(self, device_id: str, point: str, payload: str, timeout: float) -> float:  # noqa: ASYNC109
        """Publish a route (retained, QoS 1) and wait until the truck accepts it; its number back."""
        if point != "route":
            raise DeviceReplyError(f"{point!r} is not a truck point (route)", endpoint=device_id)
        try:
            route_id = orjson.loads(payload)["route_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise DeviceReplyError(f"route payload without route_id: {exc}", endpoint=device_id) from None
        client = self._client
        if client is None:
            raise DeviceUnavailable("fleet broker not connected", endpoint=device_id)
        key = (device_id, str(route_id))
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._answers[key] = fut
        try:
            async with asyncio.timeout(timeout):
                await client.publish(f"fleet/{device_id}/route", payload.encode(), qos=1, retain=True)
                self._retained[device_id] = str(route_id)
                self.stats.routes_sent += 1
                return await fut
        except TimeoutError as exc:
            raise DeviceTimeout(
                f"route {route_id} not accepted within {timeout} s", endpoint=device_id
            ) from exc
        except aiomqtt.MqttError as exc:
            raise DeviceUnavailable(f"fleet broker: {exc}", endpoint=device_id) from exc
        finally:
            self._answers.pop(key, None)


if TYPE_CHECKING:  # the seam, checked by mypy: FleetDriver is a Driver

    def _is_driver(driver: FleetDriver) -> Driver:
        return driver
