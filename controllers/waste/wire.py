"""The truck wire format as the controller sees it: the one place that encodes and decodes it.

Inbound, the fleet driver (devices/waste.py) has already validated `fleet/{truck}/state` and
`fleet/{truck}/event` and turned them into `Telemetry` values; `truck_state` and
`truck_event` read those values into small typed records. Outbound, `route_body` and
`route_payload` write a route as docs/fleet-protocol.md describes it, and `route_problem`
is the dispatcher's check of one. When the shared pydantic models of the truck protocol
land (devices/profiles/waste.py), this module is the only one to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from devices.waste import route_number
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


def route_body(r: TruckRoute, route_id: str, issued_ts: float) -> dict[str, object]:
    """A route as docs/fleet-protocol.md describes it."""
    stops: list[dict[str, object]] = []
    for s in r.stops:
        stop: dict[str, object] = {
            "seq": s.seq,
            "kind": s.kind,
            "id": s.id,
            "lat": s.lat,
            "lon": s.lon,
            "eta_ts": round(s.eta_ts, 1),
        }
        if s.window is not None:
            stop["window"] = [s.window[0], s.window[1]]
        stops.append(stop)
    return {"route_id": route_id, "issued_ts": round(issued_ts, 1), "stops": stops}


def route_payload(r: TruckRoute, route_id: str, issued_ts: float, start_ts: float | None) -> str:
    """The route command's JSON payload (with the shift start when the route is for a later shift)."""
    body = route_body(r, route_id, issued_ts)
    if start_ts is not None:
        body["start_ts"] = round(start_ts, 1)
    return orjson.dumps(body).decode()


def route_problem(payload: str, value: float) -> str | None:
    """Why a route command's payload may not reach a truck (None: it may)."""
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return "not JSON"
    if not isinstance(body, dict) or not isinstance(body.get("route_id"), str):
        return "no route_id"
    stops = body.get("stops")
    if not isinstance(stops, list) or not all(
        isinstance(s, dict) and s.get("kind") in {"bin", "disposal", "depot"} and "lat" in s and "lon" in s
        for s in stops
    ):
        return "malformed stops"
    if route_number(body["route_id"]) != int(value):
        return "value is not the route's number"
    return None
