"""THE truck wire format of the simulator (docs/fleet-protocol.md), in one place.

Everything the simulated trucks read from or write to the fleet broker is built or parsed
here and nowhere else: the route a truck takes (`fleet/{truck}/route`), the fault a
dispatcher sends it (`fleet/{truck}/fault`), the retained state it publishes
(`fleet/{truck}/state`) and its events (`fleet/{truck}/event`).

SWITCH POINT: when the shared pydantic models land in `devices/profiles/waste.py` (the
driver and the controller speak them too), replace `StopMessage`/`RouteMessage` below by
imports of those models (the state machine reads only `kind`, `id`, `lat`, `lon`, `window`
of a stop and `route_id`, `start_ts`, `stops` of a route) and let `state_message` and
`event_message` validate and dump the shared state and event models instead of
`orjson.dumps`. The truck state machine (`simulators.waste_trucks`) hands events over as
(type, fields) pairs with the field names of docs/fleet-protocol.md; the simulator
(`simulators.waste`) only calls the names defined here.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "MAX_MESSAGE_BYTES",
    "RouteError",
    "RouteMessage",
    "StopMessage",
    "TruckState",
    "event_message",
    "parse_route",
    "parse_truck_fault",
    "state_message",
]

MAX_MESSAGE_BYTES = 1 << 20  # a route of 5000 stops is about 700 kB


class StopMessage(BaseModel):
    """One stop of a route (docs/fleet-protocol.md)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    seq: int | None = None
    kind: Literal["bin", "disposal", "depot"]
    id: str = Field(min_length=1, max_length=128)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    eta_ts: float | None = None
    window: tuple[float, float] | None = None


class RouteMessage(BaseModel):
    """`fleet/{truck}/route`: the stops to drive, replacing any earlier route."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    route_id: str = Field(min_length=1, max_length=200)
    issued_ts: float | None = None
    start_ts: float | None = None  # do not start before (the shift start); absent: at once
    stops: list[StopMessage] = Field(max_length=5000)


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
    """The `fleet/{truck}/state` payload on the wire."""
    return orjson.dumps(state_fields(truck, ts))


def event_message(kind: str, fields: dict[str, Any], seq: int) -> bytes:
    """A `fleet/{truck}/event` payload: its type, its fields (with `ts`) and the truck's `seq`."""
    return orjson.dumps({"type": kind, **fields, "seq": seq})


def parse_route(payload: bytes | bytearray | str) -> RouteMessage:
    """A route, or RouteError saying why (and which route, for the `route_rejected` event)."""
    try:
        return RouteMessage.model_validate_json(payload)
    except ValidationError as exc:
        raise RouteError(f"malformed: {_first_error(exc)}", _route_id(payload)) from exc


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


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "<root>"
    return f"{loc}: {err['msg']}"
