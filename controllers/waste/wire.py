"""The truck wire format as the controller sees it: the one place that encodes and decodes it.

Inbound, the fleet driver (devices/waste.py) has already validated `fleet/{truck}/state` and
`fleet/{truck}/event` and turned them into `Telemetry` values; `truck_state` and
`truck_event` read those values into small typed records. Outbound, `route_body` and
`route_payload` write a route with the protocol's shared models (devices/profiles/waste.py,
the ones the driver and the simulated trucks use), and `route_problem` is the dispatcher's
check of one, through the same decode the trucks use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from devices.profiles.waste import Route, RouteStop, decode_route, route_number
from edge.decode import Refusal
from edge.events import Value
from optimizer.waste import TruckRoute

from .state import TRUCK_STATUSES

ROUTE_POINT = "route"
"""The dispatcher point a truck's route is written to (a structured payload)."""


def num(v: Value | None) -> float | None:
    """A number from a Telemetry value (a bool is not one)."""
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


@dataclass(frozen=True, slots=True)
class TruckReport:
    """One `fleet/{truck}/state`: where the truck is, what it carries, what it is doing."""

    lat: float | None
    lon: float | None
    load_l: float
    load_kg: float
    status: str | None  # one of TRUCK_STATUSES, None when absent or unknown
    route_id: str | None
    stop_index: int | None
    odometer_km: float | None


@dataclass(frozen=True, slots=True)
class TruckEvent:
    """One `fleet/{truck}/event`: emptied, skipped, breakdown, route_accepted/rejected/done."""

    kind: str
    seq: int | None
    bin: str | None
    route_id: str | None
    reason: str


def is_truck_event(values: Mapping[str, Value]) -> bool:
    """The fleet driver marks events with an `event` key; a state has none."""
    return "event" in values


def truck_state(v: Mapping[str, Value]) -> TruckReport:
    status = v.get("status")
    route = v.get("route_id")
    idx = num(v.get("stop_index"))
    return TruckReport(
        lat=num(v.get("lat")),
        lon=num(v.get("lon")),
        load_l=num(v.get("load_l")) or 0.0,
        load_kg=num(v.get("load_kg")) or 0.0,
        status=status if isinstance(status, str) and status in TRUCK_STATUSES else None,
        route_id=route if isinstance(route, str) and route else None,
        stop_index=None if idx is None else int(idx),
        odometer_km=num(v.get("odometer_km")),
    )


def truck_event(v: Mapping[str, Value]) -> TruckEvent:
    seq = num(v.get("seq"))
    kind, bin_id, route = v.get("event"), v.get("bin"), v.get("route_id")
    reason = v.get("reason")
    return TruckEvent(
        kind=kind if isinstance(kind, str) else "",
        seq=None if seq is None else int(seq),
        bin=bin_id if isinstance(bin_id, str) else None,
        route_id=route if isinstance(route, str) else None,
        reason="" if reason is None else str(reason),
    )


def route(r: TruckRoute, route_id: str, issued_ts: float, start_ts: float | None = None) -> Route:
    """A planned route as the fleet protocol's `Route` (the model the driver and trucks share)."""
    return Route(
        route_id=route_id,
        issued_ts=round(issued_ts, 1),
        start_ts=None if start_ts is None else round(start_ts, 1),
        stops=[
            RouteStop(
                seq=s.seq,
                kind=s.kind,
                id=s.id,
                lat=s.lat,
                lon=s.lon,
                eta_ts=round(s.eta_ts, 1),
                window=None if s.window is None else (s.window[0], s.window[1]),
            )
            for s in r.stops
        ],
    )


def route_body(r: TruckRoute, route_id: str, issued_ts: float) -> dict[str, object]:
    """A route as docs/fleet-protocol.md describes it, as plain data (for the plan message)."""
    return route(r, route_id, issued_ts).model_dump(mode="json", exclude_none=True)


def route_payload(r: TruckRoute, route_id: str, issued_ts: float, start_ts: float | None) -> str:
    """The route command's JSON payload (with the shift start when the route is for a later shift)."""
    return route(r, route_id, issued_ts, start_ts).payload().decode()


def route_problem(payload: str, value: float) -> str | None:
    """Why a route command's payload may not reach a truck (None: it may)."""
    got = decode_route(payload)
    if isinstance(got, Refusal):
        return f"{got.reason}: {got.detail}"
    if route_number(got.route_id) != int(value):
        return "value is not the route's number"
    return None
