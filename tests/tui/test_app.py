"""The operator dashboard: SiteModel folding, rendering, Pilot flows, snapshots, one real-broker test."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from datetime import UTC
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
import structlog
from pydantic import BaseModel
from rich.text import Text
from textual.command import CommandList, CommandPalette
from textual.pilot import Pilot
from textual.widgets import ContentSwitcher, Footer, Input, Static

from edge.payloads import (
    Ack,
    AlarmHistory,
    AlarmMessage,
    ChargerState,
    CommandResultMessage,
    ControllerState,
    DaemonStatus,
    DisplayState,
    FeederState,
    LampState,
    LampTelemetry,
    ParkingState,
    PlanMessage,
)
from tui import cli, render
from tui.app import DashboardApp, MqttEvent, Role
from tui.client import (
    BrokerUrl,
    Connected,
    DashboardClient,
    Disconnected,
    Received,
    RequestError,
)
from tui.inventory import load_positions
from tui.model import Change, LampStatus, SiteModel, alarm_event, alarm_event_ts, lamp_status, shown_text
from tui.screens import ConfirmDialog, HelpScreen, parse_duration_min
from tui.views import REGISTRY
from tui.views.alarms import AckDialog
from tui.views.charging import LimitDialog, parse_amps
from tui.views.displays import MessageDialog
from tui.views.lighting import OverrideDialog, parse_level
from tui.widgets import Banner, FilterTable, VirtualTable, matches

# ----- a recorded site ---------------------------------------------------------------------------

SITE = "testsite"
BASE = f"dos/v1/{SITE}"
T0 = 1_790_028_000.0  # 2026-09-21 22:00 UTC, fixed: snapshots must not depend on the clock
NIGHT_ON = 1_790_012_700.0  # 17:45 UTC that evening
SLOTS = 56


def dump(model: BaseModel) -> bytes:
    return orjson.dumps(model.model_dump(mode="json"))


def lamp(
    lamp_id: str,
    segment: str,
    group: str,
    level: float | None,
    *,
    online: bool | None = True,
    failures: tuple[str, ...] = (),
    alarms: tuple[str, ...] = (),
    cmd: float | None = None,
) -> tuple[str, bytes]:
    state = LampState(
        device_id=lamp_id,
        online=online,
        level_cmd=level if cmd is None else cmd,
        level_actual=level,
        power_w=None if level is None else round(7 + 63 * level / 100, 1),
        failures=list(failures),
        alarms=list(alarms),
        source="plan",
        segment=segment,
        group=group,
        ts=T0,
    )
    return f"{BASE}/lights/{lamp_id}/state", dump(state)


LAMPS: list[tuple[str, bytes]] = [
    lamp("L0001", "hohe-strasse", "hohe-strasse:M3:nd", 100),
    lamp("L0002", "hohe-strasse", "hohe-strasse:M3:std", 60),
    lamp("L0003", "hohe-strasse", "hohe-strasse:M3:std", 60),
    lamp(
        "L0004",
        "hohe-strasse",
        "hohe-strasse:M3:std",
        0,
        failures=("lamp_failure",),
        alarms=("lamp_failure",),
        cmd=60,
    ),
    lamp("L0005", "sonnenstrasse", "sonnenstrasse:P4:std", 40),
    lamp("L0006", "sonnenstrasse", "sonnenstrasse:P4:std", 40),
    lamp("L0007", "sonnenstrasse", "sonnenstrasse:P4:std", None, online=False, alarms=("comm_loss",)),
    lamp("L0008", "sonnenstrasse", "sonnenstrasse:P4:fs", 80),
    lamp("L0009", "radweg-tremoniapark", "radweg-tremoniapark:P5:std", 0),
    lamp("L0010", "radweg-tremoniapark", "radweg-tremoniapark:P5:std", 20),
    lamp("L0011", "radweg-tremoniapark", "radweg-tremoniapark:P5:std", 20),
    lamp("L0012", "radweg-tremoniapark", "radweg-tremoniapark:P5:std", 100),
]

GROUP_LEVELS = {
    "hohe-strasse:M3:nd": [100] * SLOTS,
    "hohe-strasse:M3:std": [100] * 12 + [80] * 8 + [60] * 20 + [80] * 8 + [100] * 8,
    "sonnenstrasse:P4:std": [80] * 10 + [60] * 6 + [40] * 28 + [60] * 6 + [80] * 6,
    "sonnenstrasse:P4:fs": [100] * 16 + [80] * 30 + [100] * 10,
    "radweg-tremoniapark:P5:std": [60] * 8 + [20] * 40 + [60] * 8,
}


def plan_message() -> tuple[str, bytes]:
    groups = [
        {"id": gid, "levels": levels, "energy_kwh": round(sum(levels) / 100 * 0.07 / 4 * 3, 1)}
        for gid, levels in GROUP_LEVELS.items()
    ]
    body: dict[str, object] = {
        "status": "optimal",
        "reason": "",
        "groups": groups,
        "energy_kwh": 61.3,
        "baseline_static_kwh": 98.0,
        "baseline_dortmund_kwh": 74.5,
        "solve_seconds": 0.2,
        "lower_bound_kwh": 61.3,
        "stats": {"components": 3},
        "on": NIGHT_ON,
        "off": NIGHT_ON + SLOTS * 900,
        "slot_starts": [NIGHT_ON + i * 900 for i in range(SLOTS)],
    }
    return f"{BASE}/plans/lighting", dump(PlanMessage(domain="lighting", ts=NIGHT_ON - 600, plan=body))


def alarm(
    device: str, code: str, severity: str, ts: float, detail: str = "", active: bool = True
) -> AlarmMessage:
    return AlarmMessage(device_id=device, code=code, severity=severity, active=active, detail=detail, ts=ts)


ALARMS = [
    alarm("L0004", "lamp_failure", "major", T0 - 3600, "no current at 60 %"),
    alarm("L0007", "comm_loss", "minor", T0 - 1800, "no answer from lc-02"),
    alarm("lc-02", "controller_offline", "critical", T0 - 1800, "modbus timeout").model_copy(
        update={"acked": True, "acked_by": "alice", "ack_comment": "crew on the way", "ack_ts": T0 - 1200}
    ),
    alarm("L0008", "power_high", "warning", T0 - 600, "78 W at 80 %"),
]


def charger(
    cid: str,
    feeder: str,
    status: str | None,
    *,
    online: bool | None = True,
    car: bool | None = True,
    limit_a: float | None = None,
    power_kw: float | None = None,
    session: str | None = None,
    energy: float | None = None,
    needed: float | None = None,
    departure: float | None = None,
    planned: float | None = None,
    alarms: tuple[str, ...] = (),
) -> tuple[str, bytes]:
    state = ChargerState(
        device_id=cid, online=online, status=status, car_connected=car, current_limit_a=limit_a,
        power_kw=power_kw, session_id=session, session_energy_kwh=energy, energy_needed_kwh=needed,
        departure_ts=departure, planned_a=planned, feeder=feeder, alarms=list(alarms),
        source="plan", ts=T0,
    )  # fmt: skip
    return f"{BASE}/chargers/{cid}/state", dump(state)


CHARGERS: list[tuple[str, bytes]] = [
    charger(
        "CP-01",
        "feeder-1",
        "Charging",
        limit_a=16,
        power_kw=11.0,
        session="s-101",
        energy=8.4,
        needed=12.5,
        departure=T0 + 9 * 3600,
        planned=16,
    ),
    charger(
        "CP-02",
        "feeder-1",
        "SuspendedEVSE",
        limit_a=0,
        power_kw=0.0,
        session="s-102",
        energy=2.1,
        needed=20.0,
        departure=T0 + 10 * 3600,
    ),
    charger("CP-03", "feeder-2", "Available", car=False, limit_a=0, power_kw=0.0),
    charger(
        "CP-04",
        "feeder-2",
        "Charging",
        limit_a=10,
        power_kw=6.9,
        session="s-104",
        energy=15.2,
        needed=4.0,
        departure=T0 + 2 * 3600,
        planned=10,
    ),
    charger("CP-05", "feeder-2", "Faulted", online=False, car=None, alarms=("comm_loss",)),
]
# Feeder-2 over the last 20 minutes, one report every 30 s, climbing, once over its limit.
FEEDER_2_LOADS = [0.3, 0.35, 0.4, 0.5, 0.55, 0.6, 0.7, 0.75, 0.8, 1.05, 0.85, 0.88, 0.9]
FEEDERS: list[tuple[str, bytes]] = [
    (
        f"{BASE}/feeders/feeder-2/state",
        dump(
            FeederState(
                feeder="feeder-2",
                limit_a=20,
                lighting_a=8.2,
                setpoints_a=10,
                measured_a=round(load * 20 - 8.2, 2),
                chargers=3,
                ts=T0 - 30 * (len(FEEDER_2_LOADS) - i),
            )
        ),
    )
    for i, load in enumerate(FEEDER_2_LOADS)
] + [
    (
        f"{BASE}/feeders/{f.feeder}/state",
        dump(f),
    )
    for f in (
        FeederState(
            feeder="feeder-1", limit_a=32, lighting_a=3.5, setpoints_a=16, measured_a=15.8, chargers=2, ts=T0
        ),
        FeederState(
            feeder="feeder-2", limit_a=20, lighting_a=8.2, setpoints_a=10, measured_a=9.9, chargers=3, ts=T0
        ),
    )
]
CHARGE_START = T0 - 600  # the plan's first slot began ten minutes earlier


def charging_plan_message() -> tuple[str, bytes]:
    body: dict[str, object] = {
        "status": "optimal",
        "reason": "",
        "sessions": [
            {"id": "s-101", "current_a": [16.0] * 40 + [0.0] * 56, "energy_kwh": 12.5, "unmet_kwh": 0.0},
            {
                "id": "s-102",
                "current_a": [0.0] * 8 + [12.0] * 30 + [0.0] * 58,
                "energy_kwh": 18.0,
                "unmet_kwh": 2.0,
            },
            {"id": "s-104", "current_a": [10.0] * 8 + [0.0] * 88, "energy_kwh": 4.0, "unmet_kwh": 0.0},
        ],
        "delivered_kwh": 34.5,
        "requested_kwh": 36.5,
        "upper_bound_kwh": 36.0,
        "solve_seconds": 0.4,
        "fair_fraction": 0.9,
        "cost": 0.0,
        "start": CHARGE_START,
        "slot_s": 900,
    }
    return f"{BASE}/plans/charging", dump(PlanMessage(domain="charging", ts=CHARGE_START, plan=body))


DISPLAYS = [
    (f"{BASE}/displays/{d.device_id}/state", dump(d))
    for d in (
        DisplayState(device_id="led-1", online=True, shown="P1 Altstadt\nFREI 42", brightness=40, pixel_faults=0, ts=T0),
        DisplayState(device_id="led-2", online=True, shown="STURM\nVorsicht", brightness=40, pixel_faults=3,
                     alarms=["pixel_faults"], ts=T0),
        DisplayState(device_id="sign-1", online=False, shown="", alarms=["display_offline"], ts=T0 - 600),
    )
]  # fmt: skip
PARKING = [
    (f"{BASE}/parking/{p.car_park}/state", dump(p))
    for p in (
        ParkingState(car_park="P1", name="Altstadt", capacity=120, free=42, open=True, fresh=True, ts=T0),
        ParkingState(car_park="P2", name="Bahnhof", capacity=300, free=7, open=True, fresh=True, ts=T0),
        ParkingState(car_park="P3", name="Stadion", capacity=80, free=None, open=None, fresh=False, ts=T0 - 3600),
    )
]  # fmt: skip
GUIDANCE = {
    "recommendations": [
        {"sign_id": "led-1", "car_park": "P1", "free": 42, "minutes": 3.5, "hint": "left"},
        {"sign_id": "sign-1", "car_park": "P2", "free": 7, "minutes": 6.0, "hint": ""},
    ],
    "cost": 1.0,
}
WARNINGS = [
    {"id": "storm-1", "severity": "severe", "lines": ["STURM", "Vorsicht"], "displays": ["led-2"],
     "start": T0 - 1800, "end": T0 + 5400},
]  # fmt: skip


def display_messages() -> list[tuple[str, bytes]]:
    return [
        *DISPLAYS,
        *PARKING,
        (f"{BASE}/guidance", orjson.dumps(GUIDANCE)),
        (f"{BASE}/warnings/active", orjson.dumps(WARNINGS)),
    ]


def bin_state(
    bin_id: str,
    zone: str,
    kind: str,
    fill: float | None,
    *,
    plan: str = "none",
    forced: bool = False,
    excluded: bool = False,
    alarms: tuple[str, ...] = (),
    status: str = "ok",
    rate: float | None = 0.02,
) -> tuple[str, bytes]:
    """A bin's retained state as the waste API contract describes it (recorded JSON, not our model)."""
    full_ts = None if fill is None or rate is None else T0 + 3600 * max(0.0, 0.8 - fill) / rate
    body = {
        "id": bin_id, "lat": 51.506, "lon": 7.451, "kind": kind, "zone": zone, "fill": fill,
        "rate_per_h": rate, "full_ts": full_ts, "battery": 88.0, "temperature": 14.5, "alarms": list(alarms),
        "status": status, "last_seen_ts": T0 - 600, "last_emptied_ts": T0 - 86400 * 3, "plan": plan,
        "forced": forced, "excluded": excluded, "ts": T0,
    }  # fmt: skip
    return f"{BASE}/waste/bins/{bin_id}/state", orjson.dumps(body)


BINS = [
    bin_state("B0001", "z1", "shopping", 0.93, plan="mandatory", alarms=("overflow",)),
    bin_state("B0002", "z1", "residential", 0.55, plan="optional"),
    bin_state("B0003", "z2", "residential", 0.12),
    bin_state("B0004", "z2", "park", None, status="stale", alarms=("stale",), rate=None),
    bin_state("B0005", "z3", "park", 0.41, plan="mandatory", forced=True),
    bin_state("B0006", "z3", "residential", 0.30, excluded=True),
    bin_state("B0007", "z1", "shopping", 0.64, plan="mandatory", alarms=("fire",)),
]


def truck_state(truck: str, status: str, stop_index: int, *, online: bool = True) -> tuple[str, bytes]:
    body = {
        "id": truck, "online": online, "status": status, "lat": 51.507, "lon": 7.452, "load_l": 4200.0,
        "load_kg": 610.0, "load_pct": 38.0, "route_id": f"r-{truck}", "stop_index": stop_index, "stops_total": 6,
        "bins_done": stop_index, "bins_total": 4, "odometer_km": 12.4, "last_seen_ts": T0 - 20, "ts": T0,
    }  # fmt: skip
    return f"{BASE}/waste/trucks/{truck}/state", orjson.dumps(body)


def waste_messages() -> list[tuple[str, bytes]]:
    def stop(seq: int, kind: str, sid: str, done: bool) -> dict[str, object]:
        return {"seq": seq, "kind": kind, "id": sid, "eta_ts": T0 + 900 * seq, "done": done}

    plan = {
        "plan_id": "p-0921", "made_ts": T0 - 5400, "reason": "scheduled", "status": "optimal", "solver": "pyvrp",
        "distance_km": 23.4, "mandatory": 3, "optional": 1, "dropped": ["B0002"],
        "routes": [
            {"truck": "T1", "route_id": "r-T1", "distance_km": 14.1, "stops": [
                stop(0, "depot", "depot", True), stop(1, "bin", "B0001", True), stop(2, "bin", "B0007", False),
                stop(3, "disposal", "mva", False), stop(4, "bin", "B0005", False), stop(5, "depot", "depot", False)]},
            {"truck": "T2", "route_id": "r-T2", "distance_km": 9.3, "stops": [
                stop(0, "depot", "depot", True), stop(1, "bin", "B0003", False), stop(2, "depot", "depot", False)]},
        ],
        "violations": [], "ts": T0 - 5400,
    }  # fmt: skip
    summary = {
        "bins": 7, "reporting": 6, "above_threshold": 2, "alarms": 3, "trucks": 2, "trucks_on_route": 1,
        "emptied_today": 1, "overflows_today": 1, "km_today": 12.4, "ts": T0,
    }  # fmt: skip
    return [
        *BINS,
        truck_state("T1", "collecting", 2),
        truck_state("T2", "broken", 1),
        (f"{BASE}/waste/plan", orjson.dumps(plan)),
        (f"{BASE}/waste/summary", orjson.dumps(summary)),
    ]


def recorded() -> list[tuple[str, bytes]]:
    """Everything a dashboard would receive on connecting to the recorded site."""
    msgs: list[tuple[str, bytes]] = [
        (f"{BASE}/status", dump(DaemonStatus(online=True, site=SITE, version="0.1.0", ts=T0 - 7200))),
        *LAMPS,
        (
            f"{BASE}/lights/L0002/telemetry",
            dump(
                LampTelemetry(
                    device_id="L0002",
                    level_actual=60,
                    power_w=44.8,
                    energy_kwh=812.4,
                    hours=11604.5,
                    switch_count=3100,
                    ts=T0,
                )
            ),
        ),
        (
            f"{BASE}/controllers/lc-01/state",
            dump(ControllerState(device_id="lc-01", online=True, failsafe_active=False, ts=T0)),
        ),
        (
            f"{BASE}/controllers/lc-02/state",
            dump(ControllerState(device_id="lc-02", online=False, alarms=["controller_offline"], ts=T0)),
        ),
        plan_message(),
        *FEEDERS,
        *CHARGERS,
        charging_plan_message(),
        *display_messages(),
        *waste_messages(),
    ]
    for a in ALARMS:
        msgs.append((f"{BASE}/alarms/active/{a.device_id}/{a.code}", dump(a)))
    msgs.append(
        (f"{BASE}/alarms/events", dump(alarm("L0003", "power_low", "warning", T0 - 900, active=False)))
    )
    msgs.append((f"{BASE}/alarms/events", dump(ALARMS[3])))
    msgs.append(
        (
            f"{BASE}/commands/results",
            dump(
                CommandResultMessage(
                    command_id="c1",
                    device_id="L0002",
                    point="level",
                    requested=60,
                    applied=60,
                    outcome="confirmed",
                    reason="",
                    source="operator:mqtt",
                    priority="operator",
                    ts=T0,
                )
            ),
        )
    )
    return msgs


INVENTORY_CSV = "id,kind,lat,lon,segment,order\n" + "".join(
    f"L{i:04d},lamp,{51.5050 + 0.0004 * ((i - 1) % 4)},{7.4600 + 0.0012 * ((i - 1) // 4)},seg,{i}\n"
    for i in range(1, 13)
)


def recorded_model() -> SiteModel:
    model = SiteModel(SITE)
    model.apply_all(recorded())
    return model


def make_app(
    role: Role = "operator", *, inventory: Path | None = None, requester: Any = None
) -> DashboardApp:
    return DashboardApp(
        "mqtt://127.0.0.1:1",
        SITE,
        role,
        model=recorded_model(),
        inventory=load_positions(inventory) if inventory else None,
        requester=requester,
        connect=False,
        tz=UTC,
    )


def ack(status: str, reason: str = "", **counts: int) -> Ack:
    return Ack(
        ok=status in ("confirmed", "clamped", "accepted"),
        status=status,
        reason=reason,
        request_topic=f"{BASE}/cmd/lights/L0002",
        counts=counts,
        ts=T0,
    )


class FakeRequester:
    """The client seam: records requests and answers with a canned Ack (or raises)."""

    def __init__(self, answer: Ack | RequestError) -> None:
        self.answer = answer
        self.calls: list[tuple[str, dict[str, object]]] = []

    async def request(self, topic: str, payload: Mapping[str, object]) -> Ack:
        self.calls.append((topic, dict(payload)))
        if isinstance(self.answer, RequestError):
            raise self.answer
        return self.answer


def command_line(app: DashboardApp) -> str:
    content = app.query_one("#command", Static).render()
    return content.plain if isinstance(content, Text) else str(content)


# ----- SiteModel ---------------------------------------------------------------------------------


def test_model_folds_recorded_state() -> None:
    """Every kind of retained and live message lands in the model's state."""
    model = recorded_model()
    assert model.bad_total == 0
    assert len(model.lamps) == 12
    assert model.lamp_counts() == {
        LampStatus.ON: 2,
        LampStatus.DIMMED: 7,
        LampStatus.OFF: 1,
        LampStatus.FAILED: 1,
        LampStatus.OFFLINE: 1,
    }
    counts = model.online_counts()
    assert (counts["lamps"].online, counts["lamps"].offline) == (11, 1)
    assert (counts["controllers"].online, counts["controllers"].offline) == (1, 1)
    assert model.alarm_counts() == {"critical": 1, "major": 1, "minor": 1, "warning": 1}
    assert [a.severity for a in model.alarms_sorted()] == ["critical", "major", "minor", "warning"]
    assert model.plan is not None
    assert model.plan.energy_kwh == 61.3
    assert model.plan.saving(model.plan.baseline_static_kwh) == pytest.approx(1 - 61.3 / 98.0)
    assert [g.id for g in model.plan.groups] == list(GROUP_LEVELS)
    assert model.daemon is not None
    assert model.daemon.online
    assert len(model.events) == 2
    assert len(model.results) == 1
    row = next(r for r in model.lamp_rows() if r.id == "L0002")
    assert (row.hours, row.lighting_class) == (11604.5, "M3 std")


def test_model_counts_bad_payloads_and_keeps_state() -> None:
    """Malformed JSON, schema violations and a bad plan body are counted, never raised."""
    model = recorded_model()
    before = model.lamps["L0001"]
    bad = [
        (f"{BASE}/lights/L0001/state", b"{not json"),
        (f"{BASE}/lights/L0001/state", b'{"device_id": "L0001"}'),
        (f"{BASE}/status", b"[]"),
        (f"{BASE}/alarms/events", b'{"device_id": "x", "code": "y"}'),
        (f"{BASE}/plans/lighting", dump(PlanMessage(domain="lighting", ts=T0, plan={"groups": [{"id": 3}]}))),
        (f"{BASE}/lights/L0001/telemetry", b"\xff\xfe"),
    ]
    assert model.apply_all(bad) == {Change.BAD}
    assert model.bad_total == len(bad)
    assert model.bad_payloads["lights"] == 3
    assert model.lamps["L0001"] is before
    assert model.plan is not None
    assert model.plan.energy_kwh == 61.3


def test_model_clears_alarms_and_lamps_on_empty_retained() -> None:
    """An empty retained payload removes the alarm (or lamp); a cleared event does too."""
    model = recorded_model()
    assert model.apply(f"{BASE}/alarms/active/L0004/lamp_failure", b"") is Change.ALARM
    assert ("L0004", "lamp_failure") not in model.active_alarms
    cleared = AlarmMessage(device_id="L0008", code="power_high", severity="warning", active=False, ts=T0)
    model.apply(f"{BASE}/alarms/events", dump(cleared))
    assert ("L0008", "power_high") not in model.active_alarms
    assert model.events[0] == cleared
    model.apply(f"{BASE}/lights/L0012/state", b"")
    assert "L0012" not in model.lamps


def test_model_ignores_other_sites_and_requests() -> None:
    """Requests, acks and other sites' topics do not change the model."""
    model = recorded_model()
    version = model.version
    for topic in (f"{BASE}/cmd/lights/L0001", f"{BASE}/acks", "dos/v1/elsewhere/status", f"{BASE}/replies/x"):
        assert model.apply(topic, b'{"action": "set_level"}') is Change.IGNORED
    assert model.version == version
    assert model.bad_total == 0


def test_model_shows_last_will() -> None:
    """The broker's last will (online false) marks the daemon offline."""
    model = recorded_model()
    model.apply(f"{BASE}/status", dump(DaemonStatus(online=False, site=SITE, version="0.1.0")))
    assert model.daemon is not None
    assert not model.daemon.online
    assert "OFFLINE" in render.overview(model, UTC, REGISTRY).plain


def test_model_folds_charging() -> None:
    """Charge points, feeders and the charging plan land in the model and its views."""
    model = recorded_model()
    assert model.bad_total == 0
    assert sorted(model.chargers) == ["CP-01", "CP-02", "CP-03", "CP-04", "CP-05"]
    assert sorted(model.feeders) == ["feeder-1", "feeder-2"]
    plan = model.charging_plan
    assert plan is not None
    assert (plan.delivered_kwh, plan.requested_kwh, plan.slot_s) == (34.5, 36.5, 900)
    assert [s.id for s in plan.sessions] == ["s-101", "s-102", "s-104"]
    assert "charging" in model.plans
    rows = {r.id: r for r in model.charger_rows()}
    assert rows["CP-01"].planned_a == 16  # from the state
    assert rows["CP-02"].planned_a == 0.0  # from the plan's slot at the state's time (slot 0)
    assert rows["CP-02"].unmet_kwh == 2.0
    assert rows["CP-03"].planned_a is None  # no car, no plan
    assert rows["CP-05"].status_word == "offline"
    feeders = {f.id: f for f in model.feeder_rows()}
    assert feeders["feeder-1"].load == pytest.approx((3.5 + 15.8) / 32)
    assert feeders["feeder-2"].high  # (8.2 + 9.9) / 20 = 90.5 %
    assert not feeders["feeder-1"].high
    summary = model.charging_summary()
    assert (summary.online, summary.offline, summary.cars, summary.charging) == (4, 1, 3, 2)
    assert summary.power_kw == pytest.approx(17.9)
    assert summary.limit_a == 52
    assert [f.id for f in summary.high] == ["feeder-2"]
    text = render.overview(model, UTC, REGISTRY).plain
    assert "Charging    points 4 online, 1 offline · 3 cars connected · 2 charging" in text
    assert "17.9 kW now of 36 kW feeder limits (26 of 52 A)" in text
    assert "ABOVE 90 % feeder-2 at 90.5 % of 20 A" in text


def test_model_charging_bad_payloads_and_removal() -> None:
    """Bad charger, feeder and charging-plan payloads are counted; empty retained removes."""
    model = recorded_model()
    before = model.chargers["CP-01"]
    plan = model.charging_plan
    bad = [
        (f"{BASE}/chargers/CP-01/state", b"{not json"),
        (f"{BASE}/chargers/CP-01/state", b'{"device_id": "CP-01", "online": true}'),
        (f"{BASE}/feeders/feeder-1/state", b'{"feeder": "feeder-1", "limit_a": "lots"}'),
        (
            f"{BASE}/plans/charging",
            dump(PlanMessage(domain="charging", ts=T0, plan={"sessions": [{"current_a": [1]}]})),
        ),
    ]
    assert model.apply_all(bad) == {Change.BAD}
    assert model.bad_payloads["chargers"] == 2
    assert model.bad_payloads["feeders"] == 1
    assert model.bad_payloads["plans"] == 1
    assert model.chargers["CP-01"] is before
    assert model.charging_plan is plan
    assert model.apply(f"{BASE}/chargers/CP-03/state", b"") is Change.CHARGING
    assert model.apply(f"{BASE}/feeders/feeder-2/state", b"") is Change.CHARGING
    assert "CP-03" not in model.chargers
    assert "feeder-2" not in model.feeders
    assert model.charging_summary().high == ()
    empty = SiteModel(SITE)
    assert "no charge points" in render.overview(empty, UTC, REGISTRY).plain


def test_model_folds_displays_parking_guidance_warnings() -> None:
    """Displays, car parks, guidance and active warnings land in the model and the Overview."""
    model = recorded_model()
    assert model.bad_total == 0
    assert sorted(model.displays) == ["led-1", "led-2", "sign-1"]
    assert shown_text(model.displays["led-1"].shown) == "P1 Altstadt / FREI 42"
    assert shown_text(model.displays["sign-1"].shown) == ""
    assert sorted(model.parking) == ["P1", "P2", "P3"]
    rec = model.guidance_for("led-1")
    assert rec is not None
    assert (rec.car_park, rec.free, rec.minutes) == ("P1", 42, 3.5)
    assert model.guidance_for("led-2") is None
    assert [(w.id, w.severity, w.lines, w.end) for w in model.warnings_sorted()] == [
        ("storm-1", "severe", ["STURM", "Vorsicht"], T0 + 5400)
    ]
    summary = model.displays_summary()
    assert (summary.online, summary.total, summary.warnings, summary.car_parks, summary.stale) == (
        2,
        3,
        1,
        3,
        1,
    )
    text = render.overview(model, UTC, REGISTRY).plain
    assert "Displays    2/3 online · 1 warning active · car parks 3, 1 STALE" in text
    assert model.apply(f"{BASE}/warnings/active", b"[]") is Change.DISPLAYS
    assert model.warnings == []
    assert model.apply(f"{BASE}/displays/sign-1/state", b"") is Change.DISPLAYS
    assert "sign-1" not in model.displays
    assert "no displays or car parks" in render.overview(SiteModel(SITE), UTC, REGISTRY).plain


def test_model_display_bad_payloads_are_counted() -> None:
    """Bad display, parking, guidance and warnings payloads are counted and change nothing."""
    model = recorded_model()
    led1, p1, guidance, warnings = (
        model.displays["led-1"],
        model.parking["P1"],
        model.guidance,
        model.warnings,
    )
    bad = [
        (f"{BASE}/displays/led-1/state", b"{not json"),
        (f"{BASE}/displays/led-1/state", b'{"device_id": "led-1"}'),
        (f"{BASE}/parking/P1/state", b'{"car_park": "P1", "free": "many"}'),
        (f"{BASE}/guidance", b'{"recommendations": [{"free": 3}]}'),
        (f"{BASE}/warnings/active", b'{"id": "storm-1"}'),
        (f"{BASE}/warnings/active", b'[{"id": "x"}]'),
        (f"{BASE}/warnings/active", b"[1, 2"),
    ]
    assert model.apply_all(bad) == {Change.BAD}
    assert model.bad_payloads == {"displays": 2, "parking": 1, "guidance": 1, "warnings": 3}
    assert model.displays["led-1"] is led1
    assert model.parking["P1"] is p1
    assert model.guidance is guidance
    assert model.warnings is warnings


@pytest.mark.parametrize(
    ("online", "failures", "level", "expected"),
    [
        (False, ["lamp_failure"], 100.0, LampStatus.OFFLINE),
        (True, ["lamp_failure"], 100.0, LampStatus.FAILED),
        (True, [], 100.0, LampStatus.ON),
        (True, [], 30.0, LampStatus.DIMMED),
        (True, [], 0.0, LampStatus.OFF),
        (None, [], None, LampStatus.UNKNOWN),
    ],
)
def test_lamp_status_precedence(
    online: bool | None, failures: list[str], level: float | None, expected: LampStatus
) -> None:
    """Offline beats failed beats the level."""
    state = LampState(
        device_id="L", online=online, level_actual=level, failures=failures, segment="s", group="g", ts=T0
    )
    assert lamp_status(state) is expected


# ----- rendering and small pieces ----------------------------------------------------------------


@pytest.mark.parametrize("width", [30, 80, 160])
def test_plan_chart_fits_width(width: int) -> None:
    """The plan chart never draws wider than its view, whatever the slot count."""
    text = render.plan_chart(recorded_model().plan, width, UTC)
    assert max(len(line) for line in text.plain.splitlines()[3:]) <= width


@pytest.mark.parametrize(("width", "height"), [(20, 5), (80, 20), (160, 46)])
def test_district_map_fits_area(tmp_path: Path, width: int, height: int) -> None:
    """The map of inventory positions fits its area and shows a failed lamp as X."""
    path = tmp_path / "inv.csv"
    path.write_text(INVENTORY_CSV)
    statuses = {r.id: r.status for r in recorded_model().lamp_rows()}
    text = render.district_map(statuses, load_positions(path).positions, width, height).plain
    lines = text.splitlines()
    assert len(lines) <= height
    assert max(len(line) for line in lines) <= width
    assert "X" in text
    assert "?" in text


def test_level_blocks_and_form_parsing() -> None:
    """Levels map to eighth blocks; the form refuses levels and durations out of range."""
    assert [render.level_block(v) for v in (0, 1, 50, 100)] == ["·", "▁", "▄", "█"]
    assert parse_level("40 %") == 40.0
    assert parse_duration_min("") is None
    assert parse_duration_min("90") == 5400.0
    for bad in ("-1", "101", "nan", "x"):
        with pytest.raises(ValueError, match="level"):
            parse_level(bad)
    with pytest.raises(ValueError, match="duration"):
        parse_duration_min("0")
    assert parse_amps(" 16 A") == 16.0
    for bad in ("-1", "nan", "x", "1e9"):
        with pytest.raises(ValueError, match="current"):
            parse_amps(bad)
    assert render.load_bar(0.72).plain == "[#######...]  72.0 %"
    assert render.load_bar(0.95).plain == "[##########]  95.0 % !"
    assert render.load_bar(None).plain == "-"
    assert matches("l0007 sonnenstrasse ? offline", "SONNEN off")


def test_client_backoff_and_url() -> None:
    """Backoff is jittered and capped; broker URLs are checked before anything connects."""
    import random

    rng = random.Random(1)
    backoff = DashboardClient("mqtt://127.0.0.1:1", SITE, backoff_max_s=30.0, rng=rng)._backoff
    delays = [backoff.next_delay() for _ in range(1, 40)]
    assert all(0 <= d <= 30.0 for d in delays)
    assert max(delays) > 5
    url = BrokerUrl.parse("mqtt://op:s%40cret@broker.example:1884")
    assert (url.host, url.port, url.username, url.password) == ("broker.example", 1884, "op", "s@cret")
    assert url.safe() == "mqtt://broker.example:1884"
    with pytest.raises(ValueError, match="mqtt://"):
        BrokerUrl.parse("http://x")


async def test_client_refuses_request_while_disconnected() -> None:
    """A request without a session fails at once with reason `disconnected`."""
    client = DashboardClient("mqtt://127.0.0.1:1", SITE)
    with pytest.raises(RequestError) as info:
        await client.request(f"{BASE}/cmd/lighting/replan", {"action": "replan"})
    assert info.value.reason == "disconnected"


def test_cli_refuses_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad broker URL or inventory exits with 2 and a message, before any screen opens."""
    assert cli.main(["--site", SITE, "--broker", "http://x"]) == cli.EXIT_USAGE
    assert cli.main(["--site", SITE, "--inventory", str(tmp_path / "missing.csv")]) == cli.EXIT_USAGE
    bad = tmp_path / "bad.csv"
    bad.write_text("id,segment\nL1,s\n")
    assert cli.main(["--site", SITE, "--inventory", str(bad)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "mqtt://" in err
    assert "lat, lon" in err


def test_logs_go_to_the_file_not_the_screen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The dashboard's logging set-up writes structlog and stdlib records to the log file only."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    path = tmp_path / "tui.log"
    stream = cli._configure_logging(path, "info")
    try:
        structlog.get_logger("tui.test").warning("tui_test_event", lamp="L0001")
        logging.getLogger("aiomqtt").warning("paho says hello")
    finally:
        stream.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()
    text = path.read_text()
    assert '"event": "tui_test_event"' in text
    assert "paho says hello" in text
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == ""


# ----- Pilot: navigation, filtering, live updates -----------------------------------------------


async def test_keys_switch_views_and_help() -> None:
    """1-5 switch the views, the title marks the current one, ? opens and Esc closes the help."""
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        switcher = app.query_one(ContentSwitcher)
        for key, view in zip("23451", ("lights", "map", "plan", "alarms", "overview"), strict=True):
            await pilot.press(key)
            assert switcher.current == view
            assert app.view == view
            assert f"[{key} " in str(app.query_one("#title", Static).render())
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_lights_table_filters_as_you_type_and_sorts() -> None:
    """Typing narrows the lamps on every key; s sorts by the next column."""
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        table = app.query_one("#lights", FilterTable)
        assert len(table.shown_keys) == 12
        await pilot.press("slash", *"sonnen")
        assert table.shown_keys == ["L0005", "L0006", "L0007", "L0008"]
        await pilot.press(*" off")
        assert table.shown_keys == ["L0007"]
        await pilot.press("escape")
        assert app.focused is table.table
        assert table.shown_keys == ["L0007"]
        table.filter_input.value = "failed"
        await pilot.pause()
        assert table.shown_keys == ["L0004"]
        table.filter_input.value = ""
        await pilot.pause()
        for _ in range(7):  # Lamp -> ... -> Status
            await pilot.press("s")
        assert table.shown_keys[:2] == ["L0004", "L0007"]  # FAILED, then offline
        table.sort_by(4)  # actual level, ascending: unknown last
        assert table.shown_keys[-1] == "L0007"


async def test_live_update_changes_cell_and_banner() -> None:
    """A batch from the worker updates the visible table; disconnects show the banner."""
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        newer = LampState(
            device_id="L0009", online=True, level_cmd=100, level_actual=100, power_w=70,
            segment="radweg-tremoniapark", group="radweg-tremoniapark:P5:std", ts=T0 + 60,
        )  # fmt: skip
        app.post_message(MqttEvent(Received(((f"{BASE}/lights/L0009/state", dump(newer)),))))
        await pilot.pause()
        table = app.query_one("#lights", FilterTable).table
        assert str(table.get_cell("L0009", "4")) == "100"
        banner = app.query_one(Banner)
        assert not banner.display or banner.has_class("-hidden")
        app.post_message(MqttEvent(Disconnected("connection refused", attempt=3, retry_in_s=2.4)))
        await pilot.pause()
        assert banner.message.startswith("DISCONNECTED")
        assert "reconnecting" in banner.message
        assert not banner.has_class("-hidden")
        app.post_message(MqttEvent(Connected("5")))
        await pilot.pause()
        assert banner.has_class("-hidden")
        assert app.connected


# ----- Pilot: the override flow ------------------------------------------------------------------


async def _open_override_for_l0002(pilot: Pilot[int]) -> None:
    await pilot.press("2", "down", "o")
    assert isinstance(pilot.app.screen, OverrideDialog)


async def test_override_lamp_confirm_then_ack_shown() -> None:
    """o on a lamp, level and duration, the confirmation says what happens, y sends, the ack shows."""
    fake = FakeRequester(ack("confirmed", confirmed=1))
    app = make_app(requester=fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await _open_override_for_l0002(pilot)
        await pilot.press(*"40", "enter", *"60", "enter")
        assert isinstance(app.screen, ConfirmDialog)
        what = str(app.screen.query_one("#what", Static).render())
        assert "Set lamp L0002 to 40 % for 60 min, then the plan takes over again" in what
        assert fake.calls == []
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert fake.calls == [
            (
                f"{BASE}/cmd/lights/L0002",
                {"action": "set_level", "level": 40.0, "duration_s": 3600.0, "reason": "operator dashboard"},
            )
        ]
        assert app.last_ack is not None
        assert app.last_ack.ok
        assert "OK" in command_line(app)
        assert "confirmed 1" in command_line(app)


async def test_override_segment_refusal_reason_shown() -> None:
    """A refused segment override shows REFUSED and the daemon's reason."""
    reason = "under_lighting_floor: hohe-strasse:M3:nd needs 100 % at night"
    fake = FakeRequester(ack("refused", reason))
    app = make_app(requester=fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await _open_override_for_l0002(pilot)
        await pilot.click("#scope-segments")
        app.screen.query_one("#level").focus()
        await pilot.press(*"10", "enter", "enter")  # empty duration: until resumed
        assert isinstance(app.screen, ConfirmDialog)
        what = str(app.screen.query_one("#what", Static).render())
        assert "segment hohe-strasse (4 lamps) to 10 % until you resume" in what
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert fake.calls[0][0] == f"{BASE}/cmd/segments/hohe-strasse"
        assert "duration_s" not in fake.calls[0][1]
        assert "REFUSED" in command_line(app)
        assert reason in command_line(app)


async def test_override_cancel_and_bad_level_send_nothing() -> None:
    """A bad level stays in the form with its error; n at the confirmation sends nothing."""
    fake = FakeRequester(ack("confirmed"))
    app = make_app(requester=fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await _open_override_for_l0002(pilot)
        await pilot.press(*"150", "enter", "enter")
        assert isinstance(app.screen, OverrideDialog)
        assert "0 to 100" in str(app.screen.query_one("#error", Static).render())
        app.screen.query_one("#level", Input).value = "1"
        app.screen.query_one("#duration", Input).focus()
        await pilot.press("enter")
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("n")
        await pilot.pause()
        assert fake.calls == []
        assert "cancelled" in command_line(app)


async def test_resume_and_replan_go_through_confirmation() -> None:
    """r resumes the schedule of the chosen target, R re-plans; both after y."""
    fake = FakeRequester(ack("accepted", released=1))
    app = make_app(requester=fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2", "r")
        assert isinstance(app.screen, OverrideDialog)
        await pilot.press("enter")  # the Resume button has the focus
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("y")
        await pilot.press("R")
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("y")
        await app.workers.wait_for_complete()
        assert fake.calls == [
            (f"{BASE}/cmd/lights/L0001", {"action": "resume_schedule", "reason": "operator dashboard"}),
            (f"{BASE}/cmd/lighting/replan", {"action": "replan"}),
        ]


async def test_no_answer_is_shown() -> None:
    """A request that times out says so instead of hanging."""
    app = make_app(requester=FakeRequester(RequestError("timeout", "no answer within 15 s")))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("R", "y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert "NO ANSWER" in command_line(app)
        assert "timeout" in command_line(app)


async def test_viewer_sees_no_command_actions() -> None:
    """The viewer role hides override, resume and re-plan and ignores their keys."""
    fake = FakeRequester(ack("confirmed"))
    app = make_app("viewer", requester=fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2", "o", "r", "R")
        assert not isinstance(app.screen, OverrideDialog | ConfirmDialog)
        shown = {b.binding.action for b in app.active_bindings.values() if b.enabled}
        assert not {"override", "resume", "replan"} & shown
        assert fake.calls == []
        assert "viewer" in str(app.query_one("#title", Static).render())
        assert app.query_one(Footer) is not None


# ----- Pilot: charging ---------------------------------------------------------------------------


async def test_charging_view_tables_and_filter() -> None:
    """6 opens the Charging view: feeders and charge points, filterable like the lights."""
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("6")
        assert app.query_one(ContentSwitcher).current == "charging"
        assert "[6 Charging]" in str(app.query_one("#title", Static).render())
        feeders = app.query_one("#feeder-table", FilterTable)
        sessions = app.query_one("#session-table", FilterTable)
        assert feeders.shown_keys == ["feeder-1", "feeder-2"]
        assert sessions.shown_keys == ["CP-01", "CP-02", "CP-03", "CP-04", "CP-05"]
        assert app.focused is sessions.table
        assert "90.5 % !" in str(feeders.table.get_cell("feeder-2", "5"))
        await pilot.press("slash", *"feeder-2")
        assert sessions.shown_keys == ["CP-03", "CP-04", "CP-05"]
        await pilot.press(*" offline")
        assert sessions.shown_keys == ["CP-05"]
        await pilot.press("escape")
        assert app.focused is sessions.table
        feeders.table.focus()
        await pilot.press("slash", *"feeder-1")
        assert feeders.shown_keys == ["feeder-1"]
        sessions.filter_input.value = "charging"
        await pilot.pause()
        assert sessions.shown_keys == ["CP-01", "CP-04"]
        newer = ChargerState(
            device_id="CP-03", online=True, status="Charging", car_connected=True, current_limit_a=8,
            power_kw=5.5, feeder="feeder-2", ts=T0 + 60,
        )  # fmt: skip
        app.post_message(MqttEvent(Received(((f"{BASE}/chargers/CP-03/state", dump(newer)),))))
        await pilot.pause()
        assert app.model.chargers["CP-03"].status == "Charging"
        assert sessions.shown_keys == ["CP-01", "CP-03", "CP-04"]  # the filter stays, the row joins it
        assert str(sessions.table.get_cell("CP-03", "5")) == "5.5"
        await pilot.press("escape")  # from the feeders' filter line back to its table
        assert app.focused is feeders.table
        shown = {b.binding.action for b in app.active_bindings.values() if b.enabled}
        assert {"pause_charger", "limit_charger", "release_charger"} <= shown
        await pilot.press("1")
        shown = {b.binding.action for b in app.active_bindings.values() if b.enabled}
        assert not {"pause_charger", "limit_charger", "release_charger"} & shown


async def test_pause_charger_confirm_then_ack() -> None:
    """p pauses the selected charge point after y; the ack appears on the command line."""
    fake = FakeRequester(ack("confirmed", confirmed=1))
    app = make_app(requester=fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("6", "p")
        assert isinstance(app.screen, ConfirmDialog)
        what = str(app.screen.query_one("#what", Static).render())
        assert "Pause charge point CP-01 (Charging, car connected, 11.0 kW, feeder feeder-1)" in what
        assert f"Request: {BASE}/cmd/chargers/CP-01" in what
        assert fake.calls == []
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert fake.calls == [
            (f"{BASE}/cmd/chargers/CP-01", {"action": "pause", "reason": "operator dashboard"})
        ]
        assert "pause CP-01:  OK  confirmed · confirmed 1" in command_line(app)


async def test_limit_charger_clamped_then_refused() -> None:
    """l asks for amps; a clamped answer names the feeder limit, a refusal its reason."""
    clamp = "feeder_limit: feeder feeder-2 leaves 1.8 A, set 0 A"
    fake = FakeRequester(ack("clamped", clamp))
    app = make_app(requester=fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("6", "down", "down", "down", "l")
        assert isinstance(app.screen, LimitDialog)
        await pilot.press(*"abc", "enter", "enter")
        assert isinstance(app.screen, LimitDialog)
        assert "amperes" in str(app.screen.query_one("#error", Static).render())
        app.screen.query_one("#amps", Input).value = "16"
        app.screen.query_one("#amps", Input).focus()
        await pilot.press("enter", *"30", "enter")
        assert isinstance(app.screen, ConfirmDialog)
        what = str(app.screen.query_one("#what", Static).render())
        assert "Limit charge point CP-04 to 16 A for 30 min." in what
        assert "feeder interlock" in what
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert fake.calls == [
            (
                f"{BASE}/cmd/chargers/CP-04",
                {"action": "limit", "current_a": 16.0, "reason": "operator dashboard", "duration_s": 1800.0},
            )
        ]
        assert "OK (clamped)" in command_line(app)
        assert clamp in command_line(app)

        fake.answer = ack("refused", "out_of_range: current_a must be 0 or 6-32 A")
        await pilot.press("l", *"500", "enter", "enter", "y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert fake.calls[-1][1] == {"action": "limit", "current_a": 500.0, "reason": "operator dashboard"}
        assert "REFUSED" in command_line(app)
        assert "out_of_range: current_a must be 0 or 6-32 A" in command_line(app)

        await pilot.press("l", "escape")
        assert "limit: cancelled" in command_line(app)
        await pilot.press("u", "y")
        await app.workers.wait_for_complete()
        assert fake.calls[-1] == (
            f"{BASE}/cmd/chargers/CP-04",
            {"action": "release", "reason": "operator dashboard"},
        )
        assert len(fake.calls) == 3


async def test_viewer_sees_no_charger_actions() -> None:
    """The viewer role hides pause, limit and release and ignores their keys."""
    fake = FakeRequester(ack("confirmed"))
    app = make_app("viewer", requester=fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("6", "p", "l", "u")
        assert not isinstance(app.screen, ConfirmDialog | LimitDialog)
        shown = {b.binding.action for b in app.active_bindings.values() if b.enabled}
        assert not {"pause_charger", "limit_charger", "release_charger"} & shown
        assert fake.calls == []


# ----- Pilot: displays ---------------------------------------------------------------------------


async def test_displays_view_shows_displays_car_parks_warnings() -> None:
    """7 opens the Displays view: what each display shows, car parks (STALE in words), warnings."""
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("7")
        assert app.query_one(ContentSwitcher).current == "displays"
        assert "[7 Displays]" in str(app.query_one("#title", Static).render())
        displays = app.query_one("#display-table", FilterTable)
        parks = app.query_one("#parking-table", FilterTable)
        assert displays.shown_keys == ["led-1", "led-2", "sign-1"]
        assert app.focused is displays.table
        assert str(displays.table.get_cell("led-1", "4")).startswith("P1 Altstadt / FREI 42")
        assert str(displays.table.get_cell("sign-1", "1")) == "OFFLINE"
        assert str(displays.table.get_cell("led-2", "3")) == "3"
        assert parks.shown_keys == ["P1", "P2", "P3"]
        assert str(parks.table.get_cell("P1", "2")) == "42/120"
        assert "STALE" in str(parks.table.get_cell("P3", "4"))
        warnings = str(app.query_one("#warnings", Static).render())
        assert "SEVERE" in warnings
        assert "STURM / Vorsicht  until 23:30" in warnings
        await pilot.press("slash", *"offline")
        assert displays.shown_keys == ["sign-1"]
        await pilot.press("escape")
        assert app.focused is displays.table
        newer = DisplayState(device_id="led-1", online=True, shown="P1 FREI 41", ts=T0 + 5)
        app.post_message(MqttEvent(Received(((f"{BASE}/displays/led-1/state", dump(newer)),))))
        await pilot.pause()
        assert app.model.displays["led-1"].shown == "P1 FREI 41"
        shown = {b.binding.action for b in app.active_bindings.values() if b.enabled}
        assert {"display_message", "clear_display"} <= shown
        assert not {"override", "pause_charger"} & shown
        await pilot.press("1")
        shown = {b.binding.action for b in app.active_bindings.values() if b.enabled}
        assert not {"display_message", "clear_display"} & shown


async def test_display_message_confirm_then_ack() -> None:
    """m asks for lines and minutes, confirms, sends; the ack appears on the command line."""
    fake = FakeRequester(ack("accepted"))
    app = make_app(requester=fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("7", "down", "m")
        assert isinstance(app.screen, MessageDialog)
        await pilot.press("enter", "enter", "enter", "enter")
        assert isinstance(app.screen, MessageDialog)
        assert "at least one line" in str(app.screen.query_one("#error", Static).render())
        app.screen.query_one("#line1", Input).value = "UMLEITUNG"
        app.screen.query_one("#line2", Input).value = "Ring gesperrt"
        app.screen.query_one("#duration", Input).value = "30"
        app.screen.query_one("#duration", Input).focus()
        await pilot.press("enter")
        assert isinstance(app.screen, ConfirmDialog)
        what = str(app.screen.query_one("#what", Static).render())
        assert "Show on display led-2 for 30 min:" in what
        assert "UMLEITUNG / Ring gesperrt" in what
        assert f"Request: {BASE}/cmd/displays/led-2" in what
        assert fake.calls == []
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert fake.calls == [
            (
                f"{BASE}/cmd/displays/led-2",
                {"action": "message", "lines": ["UMLEITUNG", "Ring gesperrt"], "duration_s": 1800.0},
            )
        ]
        assert "message on led-2:" in command_line(app)
        assert "OK" in command_line(app)
        await pilot.press("c", "y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert fake.calls[-1] == (f"{BASE}/cmd/displays/led-2", {"action": "clear"})
        await pilot.press("m", "escape")
        assert "message: cancelled" in command_line(app)
        assert len(fake.calls) == 2


async def test_display_message_refused() -> None:
    """A refusal shows its reason; nothing else is sent."""
    fake = FakeRequester(ack("refused", "offline: display sign-1 does not answer"))
    app = make_app(requester=fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("7", "down", "down", "m", *"GESPERRT", "enter", "enter", "enter", "enter")
        assert isinstance(app.screen, ConfirmDialog)
        assert "for 60 min" in str(app.screen.query_one("#what", Static).render())
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert fake.calls == [(f"{BASE}/cmd/displays/sign-1", {"action": "message", "lines": ["GESPERRT"]})]
        assert "REFUSED" in command_line(app)
        assert "offline: display sign-1 does not answer" in command_line(app)


async def test_viewer_sees_no_display_actions() -> None:
    """The viewer role hides message and clear and ignores their keys."""
    fake = FakeRequester(ack("accepted"))
    app = make_app("viewer", requester=fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("7", "m", "c")
        assert not isinstance(app.screen, ConfirmDialog | MessageDialog)
        shown = {b.binding.action for b in app.active_bindings.values() if b.enabled}
        assert not {"display_message", "clear_display"} & shown
        assert fake.calls == []


# ----- alarms: acknowledge with a comment, history --------------------------------------------


def test_model_folds_ack_and_history() -> None:
    """An acked alarm stays open with who and why; the retained history replaces the live events."""
    model = recorded_model()
    assert model.unacked() == 3
    assert model.active_alarms[("lc-02", "controller_offline")].acked_by == "alice"
    acked = ALARMS[0].model_copy(update={"acked": True, "acked_by": "bob", "ack_comment": "x", "ack_ts": T0})
    model.apply(f"{BASE}/alarms/events", dump(acked))
    assert model.unacked() == 2
    assert alarm_event(model.events[0]) == "acked"
    assert alarm_event_ts(model.events[0]) == T0
    history = AlarmHistory(events=[acked, ALARMS[0], ALARMS[3]], ts=T0)
    assert model.apply(f"{BASE}/alarms/history", dump(history)) is Change.ALARM
    assert [alarm_event(e) for e in model.events] == ["acked", "raised", "raised"]
    assert model.apply(f"{BASE}/alarms/history", b'{"events": [{"code": 1}], "ts": 0}') is Change.BAD
    assert len(model.events) == 3


async def _open_ack_for_l0004(pilot: Pilot[int]) -> None:
    """The Alarms view, cursor on the major lamp failure (second row), a pressed."""
    await pilot.press("5", "down", "a")


async def test_ack_alarm_confirm_then_ack_shown() -> None:
    """a asks for a comment, refuses an empty one, confirms what it will send; the ack appears."""
    fake = FakeRequester(ack("accepted", "acknowledged by dashboard"))
    app = make_app(requester=fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await _open_ack_for_l0004(pilot)
        assert isinstance(app.screen, AckDialog)
        await pilot.press("enter")
        assert isinstance(app.screen, AckDialog)
        assert "say what is being done" in str(app.screen.query_one("#error", Static).render())
        await pilot.press(*"crew  sent", "enter")
        assert isinstance(app.screen, ConfirmDialog)
        what = str(app.screen.query_one("#what", Static).render())
        assert "Acknowledge lamp_failure on L0004 as dashboard:" in what
        assert "crew sent" in what
        assert f"Request: {BASE}/cmd/alarms/ack" in what
        assert fake.calls == []
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert fake.calls == [
            (
                f"{BASE}/cmd/alarms/ack",
                {
                    "action": "ack",
                    "device": "L0004",
                    "code": "lamp_failure",
                    "comment": "crew sent",
                    "by": "dashboard",
                },
            )
        ]
        assert "ack lamp_failure on L0004:" in command_line(app)
        assert "OK" in command_line(app)
        # The daemon's republished alarm shows who acknowledged it, in the table and the history.
        acked = ALARMS[0].model_copy(
            update={"acked": True, "acked_by": "dashboard", "ack_comment": "crew sent", "ack_ts": T0}
        )
        app.post_message(MqttEvent(Received(((f"{BASE}/alarms/events", dump(acked)),))))
        await pilot.pause()
        table = app.query_one("#alarm-table", FilterTable)
        assert table.table.get_row("L0004/lamp_failure")[4].plain == "dashboard"  # type: ignore[union-attr]
        history = app.query_one("#alarm-history", FilterTable)
        first = history.table.get_row(history.shown_keys[0])
        assert (first[1].plain, first[5]) == ("acked", "by dashboard: crew sent")  # type: ignore[union-attr]
        await pilot.press("a", "escape")
        assert "ack: cancelled" in command_line(app)
        await pilot.press("a", *"x", "enter", "n")
        assert "cancelled, nothing sent" in command_line(app)
        assert len(fake.calls) == 1


async def test_ack_alarm_refused_reason_shown() -> None:
    """An ack for an alarm that has cleared meanwhile comes back refused, with the daemon's reason."""
    fake = FakeRequester(ack("refused", "unknown_alarm: no active alarm lamp_failure on L0004"))
    app = make_app(requester=fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await _open_ack_for_l0004(pilot)
        await pilot.press(*"looking", "enter", "y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert len(fake.calls) == 1
        assert "REFUSED" in command_line(app)
        assert "unknown_alarm: no active alarm lamp_failure on L0004" in command_line(app)


async def test_alarm_history_filters_and_viewer_cannot_ack() -> None:
    """The history table filters as you type; a viewer sees alarms and history but no ack."""
    fake = FakeRequester(ack("accepted"))
    app = make_app("viewer", requester=fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("5")
        history = app.query_one("#alarm-history", FilterTable)
        assert len(history.shown_keys) == 2
        history.filter_input.focus()
        await pilot.press(*"cleared")
        assert [history.table.get_row(k)[4] for k in history.shown_keys] == ["power_low"]
        await pilot.press("enter", "a")
        assert not isinstance(app.screen, AckDialog | ConfirmDialog)
        shown = {b.binding.action for b in app.active_bindings.values() if b.enabled}
        assert "ack_alarm" not in shown
        assert fake.calls == []


def test_feeder_history_one_peak_per_slot() -> None:
    """Feeder reports every 2 s become one sample per 30 s (the slot's peak); the chart shows them."""
    model = SiteModel(SITE)

    def report(ts: float, measured: float) -> None:
        f = FeederState(
            feeder="f1", limit_a=10, lighting_a=0, setpoints_a=0, measured_a=measured, chargers=1, ts=ts
        )
        model.apply(f"{BASE}/feeders/f1/state", dump(f))

    for k in range(31):  # 60 s of reports every 2 s: slots at 0 s and 30 s (and the report at 60 s)
        report(T0 + 2 * k, 9.0 if k == 20 else 5.0)
    history = model.feeder_rows()[0].history
    assert history == pytest.approx((0.5, 0.9, 0.5))
    report(T0 + 90, 12.0)
    assert render.sparkline(model.feeder_rows()[0].history, 6).plain == "··▄▇▄!"


# ----- waste: bins, routes, force / exclude / automatic ------------------------------------------


def test_model_folds_waste_and_counts_bad_payloads() -> None:
    """Bins, trucks, the plan and the summary land in the model; a bad one is counted, not raised."""
    model = recorded_model()
    assert len(model.bins) == 7
    assert model.bins["B0005"].forced
    assert model.bins["B0006"].excluded
    assert model.bins["B0004"].fill is None
    assert model.waste_plan is not None
    assert model.waste_plan.dropped == ["B0002"]
    assert model.waste_summary is not None
    assert model.waste_summary.trucks_on_route == 1
    rows = {r.id: r for r in model.truck_rows()}
    assert (rows["T1"].stops_done, rows["T1"].stops_total, rows["T1"].next_stop) == (2, 6, "bin B0007")
    assert rows["T2"].status_word == "broken"
    assert model.bins_above(0.8) == 1
    # A field the dashboard does not know is ignored; a missing id or a wrong type is counted.
    extra = orjson.dumps({**orjson.loads(BINS[2][1]), "new_field": 1, "fill": 0.2})
    assert model.apply(f"{BASE}/waste/bins/B0003/state", extra) is Change.WASTE
    assert model.bins["B0003"].fill == 0.2
    assert model.apply(f"{BASE}/waste/bins/B0009/state", b'{"fill": 0.5}') is Change.BAD
    assert model.apply(f"{BASE}/waste/plan", b'{"routes": 3}') is Change.BAD
    assert model.bad_payloads["waste"] == 2
    assert model.apply(f"{BASE}/waste/bins/B0003/state", b"") is Change.WASTE
    assert "B0003" not in model.bins


async def test_waste_view_sorts_and_filters_bins() -> None:
    """8 shows bins and routes; bins filter as you type and sort by fill; trucks show their progress."""
    app = make_app()
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.press("8")
        bins = app.query_one("#bin-table", FilterTable)
        assert bins.shown_keys == [f"B000{i}" for i in range(1, 8)]
        assert "FORCED" in str(bins.table.get_cell("B0005", "6"))
        assert "EXCLUDED" in str(bins.table.get_cell("B0006", "6"))
        assert str(bins.table.get_cell("B0004", "3")) == "never heard"
        bins.sort_by(3, reverse=True)
        assert bins.shown_keys[:3] == ["B0001", "B0007", "B0002"]
        bins.filter_input.focus()
        await pilot.press(*"mandatory z1")
        assert sorted(bins.shown_keys) == ["B0001", "B0007"]
        trucks = app.query_one("#truck-table", FilterTable)
        assert trucks.shown_keys == ["T1", "T2"]
        assert str(trucks.table.get_cell("T1", "3")) == "[###.......] 2/6"
        assert str(trucks.table.get_cell("T2", "1")) == "broken"
        summary = str(app.query_one("#waste-summary", Static).render())
        assert "2 above threshold" in summary
        assert "trucks 1/2 on route" in summary
        route = str(app.query_one("#route", Static).render())
        assert route.startswith("T1 r-T1 (14.1 km): ✓depot ✓B0001 → B0007 22:30 · disposal mva 22:45")
        trucks.table.focus()
        await pilot.press("down")
        assert str(app.query_one("#route", Static).render()).startswith("T2 r-T2 (9.3 km): ✓depot → B0003")


async def test_force_bin_confirm_then_ack() -> None:
    """f on a bin says what it will do, y sends it, the ack shows; x, n and R go the same way."""
    fake = FakeRequester(ack("accepted", "re-planning"))
    app = make_app(requester=fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("8", "down", "down", "f")
        assert isinstance(app.screen, ConfirmDialog)
        what = str(app.screen.query_one("#what", Static).render())
        assert "Force bin B0003 into today's collection plan." in what
        assert "zone z2, 12 % full" in what
        assert f"Request: {BASE}/cmd/waste/bins/B0003" in what
        assert fake.calls == []
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert fake.calls == [
            (f"{BASE}/cmd/waste/bins/B0003", {"action": "force", "reason": "operator dashboard"})
        ]
        assert "force B0003:" in command_line(app)
        assert "OK" in command_line(app)
        for key in ("x", "n", "R"):
            await pilot.press(key, "y")
            await app.workers.wait_for_complete()
        await pilot.pause()
        assert [c[1]["action"] for c in fake.calls] == ["force", "exclude", "clear", "replan"]
        assert fake.calls[-1][0] == f"{BASE}/cmd/waste/replan"
        await pilot.press("f", "n")
        assert "cancelled, nothing sent" in command_line(app)
        assert len(fake.calls) == 4


async def test_force_excluded_bin_refused_reason_shown() -> None:
    """Forcing an excluded bin comes back refused with the daemon's reason."""
    fake = FakeRequester(ack("refused", "excluded: bin B0006 is excluded; clear it first"))
    app = make_app(requester=fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("8", *["down"] * 5, "f")
        assert "today: - EXCLUDED" in str(app.screen.query_one("#what", Static).render())
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert fake.calls[0][0] == f"{BASE}/cmd/waste/bins/B0006"
        assert "REFUSED" in command_line(app)
        assert "excluded: bin B0006 is excluded; clear it first" in command_line(app)


async def test_viewer_sees_no_waste_actions() -> None:
    """The viewer role sees bins and routes but cannot force, exclude or re-plan."""
    fake = FakeRequester(ack("accepted"))
    app = make_app("viewer", requester=fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("8", "f", "x", "n", "R")
        assert not isinstance(app.screen, ConfirmDialog)
        shown = {b.binding.action for b in app.active_bindings.values() if b.enabled}
        assert not {"force_bin", "exclude_bin", "auto_bin", "replan"} & shown
        assert fake.calls == []


async def test_virtual_table_mouse_and_keys() -> None:
    """A click on a header sorts by that column (again: reversed); a click on a row selects it; End/Home move."""
    app = make_app()
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("2")
        lights = app.query_one("#lights", FilterTable)
        table = lights.table
        act_x = table._spans(table.size.width)[4][0]  # the Act% column
        await pilot.click(VirtualTable, offset=(act_x, 0))
        levels = [lights.table.get_row(k)[4] for k in lights.shown_keys]
        assert levels[:3] == ["0", "0", "20"]
        assert levels[-1] == "-"  # the offline lamp has no level: last either way
        await pilot.click(VirtualTable, offset=(act_x, 0))
        levels = [lights.table.get_row(k)[4] for k in lights.shown_keys]
        assert levels[:2] == ["100", "100"]
        assert levels[-1] == "-"
        await pilot.click(VirtualTable, offset=(3, 3))  # the third row
        assert lights.selected_key == lights.shown_keys[2]
        await pilot.press("end")
        assert lights.selected_key == lights.shown_keys[-1]
        await pilot.press("home", "down")
        assert lights.selected_key == lights.shown_keys[1]


async def test_every_view_survives_a_tiny_terminal() -> None:
    """At 40x12 every view draws (cropped) without an error, and the keys still work."""
    app = make_app()
    async with app.run_test(size=(40, 12)) as pilot:
        for key in "2345678901":
            await pilot.press(key)
            await pilot.pause()
        await pilot.press("8", "end", "pagedown", "pageup", "question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert app.view == "waste"


# ----- the command palette -----------------------------------------------------------------------


async def _palette(pilot: Pilot[int], query: str, want: str) -> list[str]:
    """Open the palette, type, and return the prompts it offers once one starts with `want` (bounded)."""
    await pilot.press("ctrl+p")
    assert isinstance(pilot.app.screen, CommandPalette)
    await pilot.press(*query)
    commands = pilot.app.screen.query_one(CommandList)

    def prompts() -> list[str]:
        return [str(commands.get_option_at_index(i).prompt) for i in range(commands.option_count)]

    async with asyncio.timeout(5):
        while not any(p.startswith(want) for p in prompts()):
            await pilot.pause(0.02)
    return prompts()


async def test_palette_finds_an_action_and_runs_it_on_its_view() -> None:
    """ctrl+p, "force": the force action, from any view; Enter opens the Waste view's confirmation."""
    fake = FakeRequester(ack("accepted"))
    app = make_app(requester=fake)
    async with app.run_test(size=(120, 40)) as pilot:
        prompts = await _palette(pilot, "force", "Force a bin into today's plan")
        assert prompts[0].startswith("Force a bin into today's plan")
        await pilot.press("enter")
        await pilot.pause()
        assert app.view == "waste"
        assert isinstance(app.screen, ConfirmDialog)
        assert "Force bin B0001" in str(app.screen.query_one("#what", Static).render())


async def test_palette_finds_a_device_and_opens_it() -> None:
    """ctrl+p, a lamp id: Enter opens the Lights view with the cursor on that lamp (the filter cleared)."""
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2", "slash", *"sonnen", "enter")
        lights = app.query_one("#lights", FilterTable)
        assert "L0004" not in lights.shown_keys
        prompts = await _palette(pilot, "L0004", "Lamp L0004")
        assert prompts[0].startswith("Lamp L0004")
        await pilot.press("enter")
        await pilot.pause()
        assert app.view == "lights"
        assert lights.selected_key == "L0004"
        prompts = await _palette(pilot, "B0007", "Bin B0007")
        assert prompts[0].startswith("Bin B0007")
        await pilot.press("enter")
        await pilot.pause()
        assert (app.view, app.query_one("#bin-table", FilterTable).selected_key) == ("waste", "B0007")


async def test_palette_offers_a_viewer_no_commands() -> None:
    """A viewer's palette finds views and devices, never a command."""
    app = make_app("viewer")
    async with app.run_test(size=(120, 40)) as pilot:
        prompts = await _palette(pilot, "bin", "Bin B0007")  # devices come after the actions
        assert not any(p.startswith(("Force", "Exclude", "Set a bin")) for p in prompts)


# ----- snapshots ---------------------------------------------------------------------------------

VIEW_KEYS = {
    "overview": "1",
    "lights": "2",
    "map": "3",
    "plan": "4",
    "alarms": "5",
    "charging": "6",
    "displays": "7",
    "waste": "8",
}


@pytest.mark.parametrize("size", [(80, 24), (160, 50)], ids=["80x24", "160x50"])
@pytest.mark.parametrize(
    "view",
    [
        *VIEW_KEYS,
        "map-inventory",
        "help",
        "override",
        "confirm",
        "charging-limit",
        "display-message",
        "alarm-ack",
        "waste-force",
    ],
)
def test_snapshot(view: str, size: tuple[int, int], snap_compare: Any, tmp_path: Path) -> None:
    """Each screen of the recorded site, at the smallest and a comfortable size."""
    inventory = None
    if view == "map-inventory":
        inventory = tmp_path / "inv.csv"
        inventory.write_text(INVENTORY_CSV)
    press = {
        "map-inventory": ["3"],
        "help": ["question_mark"],
        "override": ["2", "down", "o"],
        "confirm": ["2", "down", "o", *"40", "enter", *"60", "enter"],
        "charging-limit": ["6", "down", "down", "down", "l"],
        "display-message": ["7", "m"],
        "alarm-ack": ["5", "down", "a", *"crew sent"],
        "waste-force": ["8", "down", "f"],
    }.get(view, [VIEW_KEYS.get(view, "1")])
    assert snap_compare(make_app(inventory=inventory), press=press, terminal_size=size)


# ----- the real broker ---------------------------------------------------------------------------


async def _responder(url: str, site: str, ready: asyncio.Event) -> None:
    """A stand-in daemon that speaks 3.1.1: answers each request in the JSON, like amqtt setups."""
    addr = BrokerUrl.parse(url)
    async with aiomqtt.Client(addr.host, addr.port, protocol=aiomqtt.ProtocolVersion.V311) as client:
        await client.subscribe(f"dos/v1/{site}/cmd/#", qos=1)
        ready.set()
        async for msg in client.messages:
            assert isinstance(msg.payload, bytes)
            req = orjson.loads(msg.payload)
            answer = Ack(
                ok=False,
                status="refused",
                reason="under_lighting_floor: test",
                request_topic=msg.topic.value,
                correlation_id=req["correlation_id"],
                ts=T0,
            )
            await client.publish(req["response_topic"], dump(answer), qos=1)


async def _publish_retained(url: str, messages: list[tuple[str, bytes]]) -> None:
    addr = BrokerUrl.parse(url)
    async with aiomqtt.Client(addr.host, addr.port, protocol=aiomqtt.ProtocolVersion.V311) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1, retain=True)


async def test_dashboard_against_real_broker(mqtt_url: str) -> None:
    """Retained LampState and DaemonStatus reach the model; a request gets its ack back."""
    site = f"tui-{uuid.uuid4().hex[:10]}"
    base = f"dos/v1/{site}"
    state = LampState(
        device_id="L0042", online=True, level_cmd=60, level_actual=60, power_w=45,
        segment="seg-a", group="seg-a:M3:std", ts=T0,
    )  # fmt: skip
    retained = [
        (f"{base}/lights/L0042/state", dump(state)),
        (f"{base}/status", dump(DaemonStatus(online=True, site=site, version="9.9", ts=T0))),
    ]
    await _publish_retained(mqtt_url, retained)
    client = DashboardClient(mqtt_url, site, request_timeout_s=10.0, flush_interval_s=0.02)
    app = DashboardApp(mqtt_url, site, client=client, tz=UTC)
    ready = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tg:
            responder = tg.create_task(_responder(mqtt_url, site, ready), name="test.responder")
            async with app.run_test(size=(80, 24)) as pilot:
                async with asyncio.timeout(15):
                    while "L0042" not in app.model.lamps or app.model.daemon is None or not app.connected:
                        await pilot.pause(0.02)
                    await ready.wait()
                assert app.model.lamps["L0042"].level_actual == 60
                assert app.model.daemon.version == "9.9"
                assert client.protocol in ("5", "3.1.1")
                assert app.query_one(Banner).has_class("-hidden")
                answer = await client.request(f"{base}/cmd/lights/L0042", {"action": "set_level", "level": 5})
                assert answer.status == "refused"
                assert answer.reason.startswith("under_lighting_floor")
                await pilot.press("2")
                assert app.query_one("#lights", FilterTable).shown_keys == ["L0042"]
            responder.cancel()
    finally:
        await _publish_retained(mqtt_url, [(t, b"") for t, _ in retained])
