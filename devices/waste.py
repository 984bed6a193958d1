"""Collection trucks over MQTT (docs/fleet-protocol.md): state and events in, routes out.

`FleetDriver` keeps one session on the fleet broker (`devices.protocols.mqtt`, the MQTT
device client every MQTT driver shares); the wire format is `devices.profiles.waste`, the
one definition the controller and simulator share too. `fleet/{truck}/state` becomes
`Telemetry(truck, ts, {lat, lon, load_l, load_kg, status, route_id, stop_index,
odometer_km, speed_kmh})`, and each `fleet/{truck}/event` becomes `Telemetry(truck, ts,
{"event": type, "seq": n, ...})` (the waste controller tells them apart by `event`).
Payloads are validated here, at the trust boundary: a bad one is counted and logged with
what is wrong, never passed on. That includes a `ts` more than `MAX_SKEW_S` from the
daemon's clock behind, or more than `max_clock_skew_s` ahead (milliseconds, a truck whose
clock never synced): the controller keys de-duplication, ETAs and the day's counters on it.
Every payload goes through `edge.decode` (size, depth, JSON, model); one bad message never
ends the receive loop. A route the dispatcher hands over is checked against the `Route`
model before it is sent, and sent as the exact text the controller made.

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
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from devices.profiles.waste import (
    FLEET_SUBSCRIPTIONS,
    TruckEvent,
    TruckState,
    decode_event,
    decode_route,
    decode_state,
    fleet_topic,
    parse_fleet_topic,
    route_number,
)
from devices.protocols.mqtt import MqttDeviceClient, MqttDriver
from edge.clock import Clock
from edge.decode import Refusal, check_id, check_ts, is_id, shown_id
from edge.driver import Driver
from edge.errors import DeviceError, DeviceReplyError, DeviceTimeout
from edge.events import Event, Telemetry, Value
from edge.lifecycle import ServiceState
from edge.mqtt import TlsFiles

__all__ = ["FleetDriver", "FleetStats", "route_number"]

log = structlog.get_logger(__name__)

MAX_SKEW_S = 86_400.0  # a truck's `ts` further than this behind the daemon's clock is refused
LOG_EVERY = 100  # a misbehaving truck is named on its first bad message and every 100th after
MAX_UNKNOWN_LOGGED = 1_000  # distinct unknown truck ids remembered (and logged once each)


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


class FleetDriver(MqttDriver):
    """The trucks' MQTT link: Telemetry out to the bus, routes in from the dispatcher; a Service."""

    service_name = "fleet"

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
        super().__init__()
        self.publish = publish
        self.clock = clock
        self.trucks = frozenset(trucks)
        self.link = MqttDeviceClient(
            mqtt_url,
            name="edge-fleet",
            subscriptions=FLEET_SUBSCRIPTIONS,
            on_message=self._receive,
            tls=tls,
            settings_key="waste.fleet_mqtt_url",
            timeout_s=timeout_s,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
            pending_calls=max(64, 4 * len(trucks)),
        )
        self.broker = self.link.where
        self.bins = frozenset(bins) if bins is not None else None
        self.timeout_s = timeout_s
        self.stats = FleetStats()
        self.refused: Counter[str] = Counter()
        self.max_ahead_s = max_clock_skew_s * max(1.0, clock.speed)
        self._answers: dict[tuple[str, str], asyncio.Future[float]] = {}
        self._bad_by_truck: dict[str, int] = {}
        self._unknown_seen: set[str] = set()
        self._unknown_bins_seen: set[tuple[str, str]] = set()
        self._retained: dict[str, str] = {}  # truck -> route id last published retained

    async def _stop(self) -> None:
        for fut in self._answers.values():
            if not fut.done():
                fut.cancel()
        await super()._stop()

    def _receive(self, topic: str, payload: bytes, retained: bool) -> None:
        """The session's callback; a message that crashes this is counted as `internal_error`."""
        try:
            self.on_message(topic, payload)
        except Exception:
            self.refused["internal_error"] += 1
            raise

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

    def _check_bin(self, truck: str, ev: TruckEvent) -> None:
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
        parsed = parse_fleet_topic(topic)
        if parsed is None:
            return None
        truck, kind = parsed
        if truck not in self.trucks:
            self._unknown(truck)
            return None
        if not isinstance(payload, bytes | bytearray | str) or not payload:
            return None  # a cleared retained state
        msg: TruckState | TruckEvent | Refusal = (
            decode_state(payload) if kind == "state" else decode_event(payload)
        )
        if not isinstance(msg, Refusal):
            msg = self._check_ts(msg.ts) or msg
        if isinstance(msg, TruckEvent) and msg.bin is not None and (bad := check_id(msg.bin, "bin")):
            msg = bad
        if isinstance(msg, Refusal):
            self._bad(truck, kind, msg)
            return None
        if isinstance(msg, TruckState):
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
        if self.state is not ServiceState.OPENED:
            return
        self.spawn(self._publish_clear(truck, route_id), f"clear[{truck}]")

    async def _publish_clear(self, truck: str, route_id: str) -> None:
        if not self.link.is_connected or self._retained.get(truck) != route_id:
            return  # offline: the route stays until the next one replaces it; or a new one came
        try:
            await self.link.publish(fleet_topic(truck, "route"), b"", qos=1, retain=True, endpoint=truck)
            if self._retained.get(truck) == route_id:
                del self._retained[truck]
                self.stats.routes_cleared += 1
        except DeviceError as exc:
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
        route = decode_route(payload)
        if isinstance(route, Refusal):
            raise DeviceReplyError(f"not a route ({route.reason}): {route.detail}", endpoint=device_id)
        key = (device_id, route.route_id)
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._answers[key] = fut
        try:
            async with asyncio.timeout(timeout):
                # the text as the controller made it: a truck sees exactly what was commanded
                await self.link.publish(
                    fleet_topic(device_id, "route"), payload.encode(), qos=1, retain=True, endpoint=device_id
                )
                self._retained[device_id] = route.route_id
                self.stats.routes_sent += 1
                return await fut
        except TimeoutError as exc:
            raise DeviceTimeout(
                f"route {route.route_id} not accepted within {timeout} s", endpoint=device_id
            ) from exc
        finally:
            self._answers.pop(key, None)


if TYPE_CHECKING:  # the seam, checked by mypy: FleetDriver is a Driver

    def _is_driver(driver: FleetDriver) -> Driver:
        return driver
