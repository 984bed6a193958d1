"""The demo's summary: what the district did, per domain, as the CLI prints it when headless."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import structlog

from edge.app.daemon import Daemon
from edge.state import DeviceState
from simulators.charging import ChargingSimulator
from simulators.displays import DisplaySimulator
from simulators.lighting import LightingSimulator
from simulators.waste import WasteSimulator

log = structlog.get_logger(__name__)


def summary(d: Daemon, sim: LightingSimulator) -> dict[str, Any]:
    """The headless demo's one JSON object: a section per domain."""
    lamps = list(d.state.devices("lamp"))
    failed = [
        x
        for x in lamps
        if any(x.values.get(b) for b in ("lamp_failure", "driver_failure", "power_high", "power_low"))
    ]
    lit = [x for x in lamps if _level(x.values.get("level_actual")) > 0]
    st = d.dispatcher.stats
    ls = d.lighting.stats
    return {
        "site": d.settings.site.id,
        "clock": {"speed": d.clock.speed, "now": round(d.clock.now())},
        "lamps": {
            "total": len(lamps),
            "online": sum(1 for x in lamps if x.online),
            "failed": len(failed),
            "lit": len(lit),
            "dimmed": sum(1 for x in lit if _level(x.values.get("level_actual")) < 100),
            "by_level": dict(
                sorted(Counter(str(round(_level(x.values.get("level_actual")))) for x in lamps).items())
            ),
        },
        "commands": {
            "submitted": st.submitted,
            "sent": st.sent,
            "confirmed": st.confirmed,
            "clamped": st.clamped,
            "refused": st.refused,
            "failed": st.failed,
            "expired": st.expired,
        },
        "alarms": {"raised": d.alarms.raised, "cleared": d.alarms.cleared, "active": len(d.alarms.active())},
        "lighting_plan": {
            "plans": ls.plans,
            "fallbacks": ls.fallbacks,
            "energy_kwh": round(ls.energy_kwh, 2),
            "baseline_static_kwh": round(ls.baseline_static_kwh, 2),
            "baseline_dortmund_kwh": round(ls.baseline_dortmund_kwh, 2),
            "saving_vs_static_pct": _pct(ls.energy_kwh, ls.baseline_static_kwh),
            "saving_vs_dortmund_pct": _pct(ls.energy_kwh, ls.baseline_dortmund_kwh),
            "motion_events": ls.motion_events,
        },
        "mqtt": {
            "requests": d.api.router.requests,
            "acks": d.api.router.acks,
            "nacks": d.api.router.nacks,
            "refused_payloads": dict(d.api.refused),
            "refused_field": {
                f.service_name: dict(f.refused) for f in (d.motion, d.car_parks) if f is not None
            },
            **{k: v for k, v in d.link.stats.items() if isinstance(v, int | float | bool)},
        },
        "storage": {"rows_written": d.storage.written, "write_errors": d.storage.write_errors},
    }


def displays_summary(d: Daemon, dsim: DisplaySimulator) -> dict[str, Any]:
    """The demo's displays section: what every display shows, updates, fallbacks and warnings."""
    ctl = d.displays
    if ctl is None:
        return {}
    return {
        "displays": len(ctl.displays),
        "online": sum(1 for x in ctl.displays if (dev := d.state.get(x)) is not None and dev.online),
        "shown": {x: dsim.shown(x) for x in ctl.displays},
        "updates": ctl.stats.updates,
        "held_back_by_rate_limit": ctl.stats.held_back,
        "stale_fallbacks": ctl.stats.stale_fallbacks,
        "warnings_shown": ctl.stats.warnings_shown,
        "car_parks": {
            cp: {"free": o.free, "age_s": round(d.clock.now() - o.ts)} for cp, o in ctl.occupancy.items()
        },
        "uplinks": (
            {
                "received": d.ingest.stats.received,
                "duplicates": d.ingest.stats.duplicates,
                "late": d.ingest.stats.late,
                "refused": d.ingest.stats.refused_total,
            }
            if d.ingest is not None
            else {}
        ),
    }


def waste_summary(d: Daemon, wsim: WasteSimulator | None) -> dict[str, Any]:
    """The demo's waste section: bins emptied (sensor-confirmed), overflows, kilometres driven."""
    ctl = d.waste
    if ctl is None or wsim is None:
        return {}
    now = d.clock.now()
    s = ctl.summary(now)
    plan = ctl.active
    return {
        "bins": s["bins"],
        "reporting": s["reporting"],
        "above_threshold": s["above_threshold"],
        "plans": ctl.plans_made,
        "plan": None
        if plan is None
        else {
            "reason": plan.reason,
            "status": plan.plan.status,
            "solver": plan.plan.solver,
            "bins_planned": sum(len(r.bins) for r in plan.plan.routes),
            "distance_km": round(plan.plan.distance_m / 1000, 2),
        },
        "routes_sent": ctl.routes_sent,
        "bins_emptied": s["emptied_today"],
        "emptied_unconfirmed": ctl.counters.reported,
        "overflows": s["overflows_today"],
        "km_driven": s["km_today"],
        "trucks_on_route": s["trucks_on_route"],
        "alarms": dict(
            Counter(a.code for a in d.alarms.active() if a.device_id in ctl.bins or a.device_id in ctl.trucks)
        ),
        "fleet": dataclasses.asdict(d.fleet.stats) if d.fleet is not None else {},
        "simulator": {
            "uplinks": wsim.stats.uplinks,
            "truck_events": wsim.stats.events,
            "bins_emptied": wsim.emptied,
            "overflow_events": wsim.overflow_events,
            "km_driven": round(wsim.km_driven, 2),
        },
    }


def charging_summary(d: Daemon, csim: ChargingSimulator) -> dict[str, Any]:
    """The demo's charging section: energy delivered and requested, and the grid's ground truth
    from the simulator's own records (every physics tick, not samples): the peak feeder load,
    every overload episode (`limit_violations`) and every fuse trip, with when and where."""
    chargers = list(d.state.devices("charger"))
    delivered = sum(_level(x.values.get("session_energy_kwh")) for x in chargers)
    cs = d.charging.stats if d.charging is not None else None
    peak_pct, peak_feeder = 0.0, ""
    for f in d.settings.charging.feeders:
        view = csim.feeder(f.id)
        pct = 100 * _level(view["peak_a"]) / f.limit_a
        if pct > peak_pct:
            peak_pct, peak_feeder = pct, f.id
    events = list(csim.events)
    return {
        "charge_points": len(chargers),
        "online": sum(1 for x in chargers if x.online),
        "cars_connected": sum(1 for x in chargers if x.values.get("car_connected")),
        "charging_now": sum(1 for x in chargers if x.values.get("status") == "Charging"),
        "sessions": sum(csim.sessions(x.device_id) for x in chargers),
        "energy_delivered_kwh": round(delivered, 2),
        "energy_requested_kwh": round(cs.requested_kwh, 2) if cs else 0.0,
        "plans": cs.plans if cs else 0,
        "fallbacks": cs.fallbacks if cs else 0,
        "clamped_commands": cs.clamped if cs else 0,
        "peak_feeder_load_pct": round(peak_pct, 1),
        "peak_feeder": peak_feeder,
        "limit_violations": csim.overloads,
        "feeder_trips": csim.trips,
        "tripped_feeders": sorted({e.feeder for e in events if e.kind == "trip"}),
        "trips_alarmed": cs.trips if cs else 0,
        "grid_events": [
            {"feeder": e.feeder, "kind": e.kind, "ts": round(e.ts), "load_a": e.load_a, "limit_a": e.limit_a}
            for e in events[:20]
        ],
        "utility_signals": cs.signals if cs else 0,
        **_protocols(d, chargers),
    }


def _protocols(d: Daemon, chargers: list[DeviceState]) -> dict[str, Any]:
    """Charge points per protocol (online, with a car, which are offline), and the feeders that
    carry both kinds: the one interlock and the simulator's ground truth span them."""
    if d.charging is None:
        return {}
    inv = d.charging.inv.chargers
    by: dict[str, dict[str, Any]] = {}
    for x in chargers:
        c = inv.get(x.device_id)
        if c is None:
            continue
        row = by.setdefault(c.protocol, {"charge_points": 0, "online": 0, "cars_connected": 0, "offline": []})
        row["charge_points"] += 1
        row["online"] += bool(x.online)
        row["cars_connected"] += bool(x.values.get("car_connected"))
        if not x.online:
            row["offline"].append(x.device_id)
    kinds: dict[str, set[str]] = {}
    for c in inv.values():
        kinds.setdefault(c.feeder, set()).add(c.protocol)
    return {"by_protocol": by, "mixed_feeders": sorted(f for f, k in kinds.items() if len(k) > 1)}


def _level(v: object) -> float:
    return float(v) if isinstance(v, int | float) else 0.0


def _pct(x: float, base: float) -> float:
    return round(100 * (1 - x / base), 1) if base > 0 else 0.0
