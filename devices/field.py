"""Field inputs as drivers: bike-path motion and car-park counters from the site broker.

They used to enter through the northbound API, which called controllers directly and
skipped the state store and history. Now each is a driver like any other (contract C-in):
it keeps its own session on the site broker (`devices.protocols.mqtt`), checks every
message at the trust boundary and publishes `Telemetry` on the bus:

- `motion_sensors`: `{base}/field/motion/{lamp}` -> `Telemetry(lamp, ts, {"motion": True},
  derived=True)` (the sensor stands by the lamp; it does not make the lamp online) for `{"detected": true, "ts": ...}` (both optional; `detected: false` publishes nothing).
  A retained motion is refused: it is a replay, not someone on the path now.
- `car_park_counters`: `{base}/field/carparks/{id}` -> `Telemetry(id, ts, {"free": n,
  "open": bool})`. A retained count is taken only with its own `ts`: without it, a count
  replayed at our reconnect would look fresh.

The checks are those the API made: the id grammar, a known device, the payload model
through `edge.decode`, and a `ts` no more than `max_clock_skew_s` ahead of the clock (`ts`
absent: the clock's now). Refused messages are counted per reason in `refused` (and
logged per source on transitions, `edge.decode.Refusals`); they never end the session.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from devices.protocols.mqtt import MqttDeviceClient, MqttDriver
from edge.clock import Clock
from edge.decode import Refusal, Refusals, check_id, check_ts, decode
from edge.events import Event, Telemetry, Value
from edge.mqtt import TlsFiles
from edge.payloads import CarParkReport, Motion

__all__ = ["FieldInput", "FieldKind", "car_park_counters", "motion_sensors"]

MAX_FIELD_BYTES = 4096  # a reading is a few dozen bytes


@dataclass(frozen=True, slots=True)
class FieldKind:
    """One kind of field input: its topic segment, its model and how a reading becomes values."""

    segment: str  # field/{segment}/{id}
    model: type[BaseModel]
    unknown: str  # the refusal reason for an id not in the inventory
    values: Callable[[Any], dict[str, Value] | None]  # None: nothing to publish
    retained: Callable[[Any], Refusal | None]  # why a retained message is refused, if it is
    # A reading about the device, not from it (a motion sensor by a lamp): it says nothing of
    # whether the device itself is online (`Telemetry.derived`).
    derived: bool = False


def _motion_values(m: Motion) -> dict[str, Value] | None:
    return {"motion": True} if m.detected else None


def _carpark_values(r: CarParkReport) -> dict[str, Value] | None:
    return {"free": r.free, "open": r.open}


MOTION = FieldKind(
    "motion",
    Motion,
    "unknown_device",
    _motion_values,
    lambda _m: Refusal("retained_request", "a retained motion is a replay, not someone on the path now"),
    derived=True,
)
CAR_PARKS = FieldKind(
    "carparks",
    CarParkReport,
    "unknown_car_park",
    _carpark_values,
    lambda r: (
        None if r.ts is not None else Refusal("retained_request", "a retained car-park count needs its ts")
    ),
)


class FieldInput(MqttDriver):
    """One kind of field input from the site broker, published as Telemetry; a Service."""

    service_name = "field"

    def __init__(
        self,
        kind: FieldKind,
        publish: Callable[[Event], None],
        clock: Clock,
        devices: Collection[str],
        *,
        mqtt_url: str,
        base: str,
        tls: TlsFiles | None = None,
        max_clock_skew_s: float = 300.0,
        timeout_s: float = 5.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        """`base` is `{prefix}/{site}`; `devices` the ids this input may name (lamps, car parks)."""
        super().__init__()
        self.service_name = f"field.{kind.segment}"
        self.kind = kind
        self.publish = publish
        self.clock = clock
        # a set or a dict's keys as given: a copy of a city's 54,000 lamp ids was 2 MB
        self.devices: Collection[str] = devices if isinstance(devices, AbstractSet) else frozenset(devices)
        self.prefix = f"{base}/field/{kind.segment}/"
        self.max_ahead_s = max_clock_skew_s * max(1.0, clock.speed)
        self.refused: Counter[str] = Counter()
        self.accepted = 0
        self._refusals = Refusals(self.service_name)
        self.link = MqttDeviceClient(
            mqtt_url,
            name=f"edge-field-{kind.segment}",
            subscriptions=[(self.prefix + "+", 1)],
            on_message=self.on_message,
            tls=tls,
            timeout_s=timeout_s,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
        )

    def on_message(self, topic: str, payload: bytes, retained: bool) -> Telemetry | None:
        """Take one reading; return the Telemetry published for it (None if refused or nothing to say)."""
        if not topic.startswith(self.prefix):
            return None
        device = topic.removeprefix(self.prefix)
        reading = self._check(device, payload, retained)
        if isinstance(reading, Refusal):
            self.refused[reading.reason] += 1
            self._refusals.refuse(device if reading.reason != "invalid_id" else "?", reading)
            return None
        self._refusals.accepted(device)
        values = self.kind.values(reading)
        if values is None:
            return None
        ts = getattr(reading, "ts", None)
        event = Telemetry(
            device, ts if ts is not None else self.clock.now(), values, derived=self.kind.derived
        )
        self.accepted += 1
        self.publish(event)
        return event

    def _check(self, device: str, payload: bytes, retained: bool) -> Any:
        """The reading, or why it is refused (in the order the API checked)."""
        if (bad := check_id(device, "topic id")) is not None:
            return bad
        reading = decode(payload or b"{}", self.kind.model, max_bytes=MAX_FIELD_BYTES)
        if isinstance(reading, Refusal):
            return reading
        if device not in self.devices:
            return Refusal(self.kind.unknown, device)
        if retained and (why := self.kind.retained(reading)) is not None:
            return why
        ts = getattr(reading, "ts", None)
        if ts is not None and (future := check_ts(ts, self.clock.now(), self.max_ahead_s)) is not None:
            return future
        return reading


def motion_sensors(
    publish: Callable[[Event], None], clock: Clock, lamps: Collection[str], **kw: Any
) -> FieldInput:
    """Bike-path motion at `lamps` (the lighting domain's field input)."""
    return FieldInput(MOTION, publish, clock, lamps, **kw)


def car_park_counters(
    publish: Callable[[Event], None], clock: Clock, car_parks: Collection[str], **kw: Any
) -> FieldInput:
    """Car parks' own counters (the displays domain's field input)."""
    return FieldInput(CAR_PARKS, publish, clock, car_parks, **kw)
