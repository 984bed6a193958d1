"""The truck protocol (docs/fleet-protocol.md) as pydantic models: the one definition of the wire.

The controller, the fleet driver and the simulator each used to spell it out; these models
are what they share. Trucks to edge: `TruckState` on `fleet/{truck}/state`, `TruckEvent` on
`fleet/{truck}/event`. Edge to truck: `Route` (of `RouteStop`s) on `fleet/{truck}/route`,
retained; a zero-byte retained message clears it. Inbound messages are decoded through
`edge.decode` (`decode_state`, `decode_event`: size, depth, JSON, model), never by hand.
Unknown fields are ignored, NaN and infinity refused, and every number is bounded: a
value beyond the limits below is a broken unit, not a big truck.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edge.decode import Refusal, decode, encode_json

__all__ = [
    "EVENT_TYPES",
    "FLEET_SUBSCRIPTIONS",
    "MAX_FLEET_BYTES",
    "MAX_FLEET_DEPTH",
    "MAX_LOAD_KG",
    "MAX_LOAD_L",
    "MAX_ODOMETER_KM",
    "MAX_STOP_INDEX",
    "Route",
    "RouteStop",
    "TruckEvent",
    "TruckState",
    "TruckStatus",
    "decode_event",
    "decode_route",
    "decode_state",
    "fleet_topic",
    "parse_fleet_topic",
    "route_number",
]

MAX_FLEET_BYTES = 256 * 1024  # a route of a few hundred stops is ~60 kB
MAX_FLEET_DEPTH = 4
# Upper bounds well above any refuse truck (the largest carry ~40 m3 and ~15 t) but far below
# what would overflow a sum or a percentage: a value beyond them is a broken unit.
MAX_LOAD_L = 200_000.0
MAX_LOAD_KG = 100_000.0
MAX_ODOMETER_KM = 10_000.0  # per shift
MAX_STOP_INDEX = 100_000
MAX_ROUTE_STOPS = 5_000

#: What the daemon subscribes on the fleet broker, with the QoS the protocol gives each.
FLEET_SUBSCRIPTIONS: tuple[tuple[str, int], ...] = (("fleet/+/state", 0), ("fleet/+/event", 1))

TruckStatus = Literal["idle", "driving", "collecting", "unloading", "returning", "broken"]
EventType = Literal[
    "route_accepted", "route_rejected", "emptied", "skipped", "unloaded", "route_done", "breakdown"
]
EVENT_TYPES: tuple[str, ...] = EventType.__args__  # type: ignore[attr-defined]

_WIRE = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


class TruckState(BaseModel):
    """`fleet/{truck}/state` (QoS 0, retained): where the truck is and what it carries."""

    model_config = _WIRE

    ts: float = Field(gt=0)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    speed_kmh: float = Field(default=0.0, ge=0, le=200)
    load_l: float = Field(default=0.0, ge=0, le=MAX_LOAD_L)
    load_kg: float = Field(default=0.0, ge=0, le=MAX_LOAD_KG)
    status: TruckStatus
    route_id: str | None = Field(default=None, max_length=200)
    stop_index: int = Field(default=0, ge=0, le=MAX_STOP_INDEX)
    odometer_km: float = Field(default=0.0, ge=0, le=MAX_ODOMETER_KM)


class TruckEvent(BaseModel):
    """`fleet/{truck}/event` (QoS 1): one happening, with `seq` for de-duplication."""

    model_config = _WIRE

    type: EventType
    ts: float = Field(gt=0)
    seq: int = Field(ge=0, le=2**53)
    route_id: str | None = Field(default=None, max_length=200)
    bin: str | None = Field(default=None, max_length=128)
    reason: str | None = Field(default=None, max_length=200)
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    load_l: float | None = Field(default=None, ge=0, le=MAX_LOAD_L)
    load_kg: float | None = Field(default=None, ge=0, le=MAX_LOAD_KG)


class RouteStop(BaseModel):
    """One stop of a route, in driving order; `window` [from, to] for bins in a restricted zone."""

    model_config = _WIRE

    seq: int | None = None
    kind: Literal["bin", "disposal", "depot"]
    id: str = Field(min_length=1, max_length=128)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    eta_ts: float | None = None
    window: tuple[float, float] | None = None


class Route(BaseModel):
    """`fleet/{truck}/route` (QoS 1, retained): the stops to drive, replacing any earlier route.

    `start_ts`: do not start before (the shift start); absent, start at once. No stops: go
    to (or stay at) the depot and wait.
    """

    model_config = _WIRE

    route_id: str = Field(min_length=1, max_length=200)
    issued_ts: float | None = None
    start_ts: float | None = None
    stops: list[RouteStop] = Field(max_length=MAX_ROUTE_STOPS)

    def payload(self) -> bytes:
        """The wire form: absent optional fields are left out, as the protocol shows them."""
        return encode_json(self.model_dump(exclude_none=True))


def fleet_topic(truck: str, kind: Literal["state", "event", "route"]) -> str:
    """`fleet/{truck}/{kind}`."""
    return f"fleet/{truck}/{kind}"


def parse_fleet_topic(topic: str) -> tuple[str, Literal["state", "event"]] | None:
    """(truck, "state" | "event") for an inbound fleet topic, None for any other topic."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != "fleet":
        return None
    if parts[2] == "state":
        return parts[1], "state"
    if parts[2] == "event":
        return parts[1], "event"
    return None


def decode_state(payload: bytes | bytearray | str) -> TruckState | Refusal:
    """A truck state through the one decode, or why it is refused."""
    return decode(payload, TruckState, max_bytes=MAX_FLEET_BYTES, max_depth=MAX_FLEET_DEPTH)


def decode_event(payload: bytes | bytearray | str) -> TruckEvent | Refusal:
    """A truck event through the one decode, or why it is refused."""
    return decode(payload, TruckEvent, max_bytes=MAX_FLEET_BYTES, max_depth=MAX_FLEET_DEPTH)


def decode_route(payload: bytes | bytearray | str) -> Route | Refusal:
    """A route (the simulator's truck reads it; the driver checks what it sends)."""
    return decode(payload, Route, max_bytes=MAX_FLEET_BYTES, max_depth=MAX_FLEET_DEPTH)


def route_number(route_id: str) -> int:
    """The number a route id ends in ("...-r12" -> 12), -1 if none: a route command's read-back value."""
    _, sep, n = route_id.rpartition("-r")
    return int(n) if sep and n.isdigit() else -1
