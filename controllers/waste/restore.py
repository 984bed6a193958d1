"""A stored plan (the body of a `PlanEvent("waste", ...)` row) read back into an `ActivePlan`.

The body is what `Planner.publish` wrote: the API's plan message plus `day` and `selection`.
Stops are rebuilt from the inventory (bins, depot, disposal), so a stop naming a bin that is
no longer configured is left out rather than trusted.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

import structlog

from optimizer.waste import PlannedStop, Selection, TruckRoute, WastePlan

from .state import ActivePlan, WasteState

log = structlog.get_logger(__name__)


def plan_from_body(st: WasteState, body: Mapping[str, object]) -> ActivePlan | None:
    """The plan a stored body describes, None (logged) when it is malformed."""
    try:
        day = date.fromisoformat(str(body["day"]))
        made = float(body["made_ts"])  # type: ignore[arg-type]
        raw_routes = body["routes"]
        assert isinstance(raw_routes, list)
    except (KeyError, ValueError, TypeError, AssertionError):
        log.warning("waste_plan_not_restored", reason="malformed stored plan")
        return None
    routes, route_ids = [], {}
    for r in raw_routes:
        truck = r.get("truck")
        if truck not in st.trucks:
            continue
        stops = _stops(st, r.get("stops", []), made)
        end = stops[-1].eta_ts if stops else made
        routes.append(TruckRoute(truck, tuple(stops), round(float(r.get("distance_km", 0)) * 1000), end))
        route_ids[truck] = str(r.get("route_id", ""))
    raw_sel = body.get("selection")
    selection = {
        b: Selection(k, "restored")
        for b, k in (raw_sel.items() if isinstance(raw_sel, dict) else [])
        if b in st.bins and k in {"mandatory", "optional"}
    }
    plan = WastePlan(
        made_ts=made,
        routes=tuple(routes),
        selection=selection,
        dropped=tuple(str(x) for x in body.get("dropped", []) or []),  # type: ignore[attr-defined]
        missed_mandatory=(),
        status=str(body.get("status", "feasible")),
        solver=str(body.get("solver", "")),
        distance_m=sum(r.distance_m for r in routes),
    )
    reason = body.get("reason", "scheduled")
    return ActivePlan(plan, str(body.get("plan_id", "")), reason, day, route_ids)  # type: ignore[arg-type]


def _stops(st: WasteState, raw: list[dict[str, object]], made: float) -> list[PlannedStop]:
    depot, disposal = st.cfg.depot, st.cfg.disposal
    assert depot is not None  # checked by WasteState
    assert disposal is not None
    stops: list[PlannedStop] = []
    for s in raw:
        kind, sid = s.get("kind"), s.get("id")
        if kind == "bin" and isinstance(sid, str) and sid in st.bins:
            lat, lon = st.bins[sid].bin.lat, st.bins[sid].bin.lon
        elif kind in {"disposal", "depot"}:
            p = disposal if kind == "disposal" else depot
            lat, lon = p.lat, p.lon
        else:
            continue
        eta = s.get("eta_ts", made)
        stops.append(PlannedStop(len(stops), kind, sid, lat, lon, float(eta)))  # type: ignore[arg-type]
    return stops
