"""THE truck wire format of the simulator (docs/fleet-protocol.md), in one place.

Everything the simulated trucks read from or write to the fleet broker is built or parsed
here and nowhere else: the route a truck takes (`fleet/{truck}/route`), the fault a
dispatcher sends it (`fleet/{truck}/fault`), the retained state it publishes
(`fleet/{truck}/state`) and its events (`fleet/{truck}/event`).

The messages are the protocol's shared pydantic models (`devices/profiles/waste.py`, which
the fleet driver and the waste controller speak too): a state or an event is validated by its
model before it is sent, and a route is read through the same one decode the driver uses to
check what it sends. The truck state machine (`simulators.waste_trucks`) hands events over as
(type, fields) pairs with the field names of docs/fleet-protocol.md; the simulator
(`simulators.waste`) only calls the names defined here.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import orjson

from devices.profiles.waste import Route, decode_route
from devices.profiles.waste import TruckEvent as WireEvent
from devices.profiles.waste import TruckState as WireState
from edge.decode import Refusal

__all__ = [
    "MAX_MESSAGE_BYTES",
    "RouteError",
    "TruckState",
    "event_message",
    "parse_route",
    "parse_truck_fault",
    "state_message",
]

MAX_MESSAGE_BYTES = 1 << 20  # a route of 5000 stops is about 700 kB


class TruckState(Protocol):
    """What a `fleet/{truck}/state` message is made of (a `TruckSim` has these)."""

    @property
    def lat(self) -> float: ...
    @property
    def lon(self) -> float: ...
    @property
    def speed_kmh(self) -> float: ...
    @property
    def load_l(self) -> float: ...
    @property
    def load_kg(self) -> float: ...
    @property
    def status(self) -> str: ...
    @property
    def route_id(self) -> str | None: ...
    @property
    def stop_index(self) -> int: ...
    @property
    def odometer_km(self) -> float: ...


class RouteError(ValueError):
    """A route that does not parse; `route_id` is set when the payload still names one."""

    def __init__(self, reason: str, route_id: str | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.route_id = route_id


def state_fields(truck: TruckState, ts: float) -> dict[str, Any]:
    """The `fleet/{truck}/state` payload as a dict."""
    return {
        "ts": ts,
        "lat": round(truck.lat, 6),
        "lon": round(truck.lon, 6),
        "speed_kmh": round(truck.speed_kmh, 1),
        "load_l": round(truck.load_l, 1),
        "load_kg": round(truck.load_kg, 1),
        "status": str(truck.status),
        "route_id": truck.route_id,
        "stop_index": truck.stop_index,
        "odometer_km": round(truck.odometer_km, 3),
    }


def state_message(truck: TruckState, ts: float) -> bytes:
    """The `fleet/{truck}/state` payload on the wire (checked against the protocol's model)."""
    return orjson.dumps(WireState.model_validate(state_fields(truck, ts)).model_dump())


def event_message(kind: str, fields: dict[str, Any], seq: int) -> bytes:
    """A `fleet/{truck}/event` payload: its type, its fields (with `ts`) and the truck's `seq`.

    Checked against the protocol's model; a field the model does not know is an error here,
    not a value the daemon silently never sees.
    """
    data = {"type": kind, **fields, "seq": seq}
    unknown = set(data) - set(WireEvent.model_fields)
    if unknown:
        raise ValueError(f"event {kind}: fields not in the fleet protocol: {sorted(unknown)}")
    return orjson.dumps(WireEvent.model_validate(data).model_dump(exclude_none=True))


def parse_route(payload: bytes | bytearray | str) -> Route:
    """A route, or RouteError saying why (and which route, for the `route_rejected` event)."""
    got = decode_route(payload)
    if isinstance(got, Refusal):
        raise RouteError(f"malformed: {got.reason}: {got.detail}", _route_id(payload))
    return got


def parse_truck_fault(payload: bytes | bytearray | str) -> Literal["breakdown", "repair"]:
    """The fault a dispatcher sends a truck; ValueError (or orjson's) for anything else."""
    data = orjson.loads(payload)
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "breakdown":
        return "breakdown"
    if kind == "repair":
        return "repair"
    raise ValueError(f"type {kind!r} is not breakdown or repair")


def _route_id(payload: bytes | bytearray | str) -> str | None:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    rid = data.get("route_id") if isinstance(data, dict) else None
    return rid if isinstance(rid, str) and 0 < len(rid) <= 200 else None
