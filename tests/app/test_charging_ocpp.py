"""End to end for a mixed fleet: an OPC UA and an OCPP 1.6J charge point on one feeder, one
controller and one interlock for both.

Real parts: the OPC UA server and the OCPP charge point of the simulator (one physics: the
feeder's ground truth counts both cars), the daemon's central system over websockets with
basic auth (security profile 1), the Modbus lamps, a broker, a database.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import aiomqtt
from harness import Site, wait_for

from controllers.charging import POINT
from devices.inventory import load_inventory
from edge.app.daemon import running
from edge.app.demo import sim_chargers, sim_controllers
from edge.app.validation import check_file
from edge.clock import SimClock
from edge.events import Outcome, Priority
from edge.net import free_port
from edge.settings import load_settings
from simulators.charging import ChargingSimulator
from simulators.lighting import LightingSimulator

LIMIT_A = 20.0
FAILSAFE_A = 6.0
PASSWORD = "mixed-fleet-secret"


def _write_site(tmp: Path, mqtt_url: str, db_url: str, opc_port: int, ocpp_port: int) -> Path:
    """Two lamps and two three-phase charge points (OPC UA CPA, OCPP CPB) on a 24/7 feeder of 20 A."""
    site_id = "mix" + os.urandom(3).hex()
    lamp_port = free_port()
    with (tmp / "inventory.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "kind", "lat", "lon", "segment", "order", "lighting_class",
                                           "cabinet", "feeder", "controller", "port", "index", "p_max_w", "post",
                                           "url", "max_current_a", "phases", "failsafe_current_a",
                                           "protocol"])  # fmt: skip
        w.writeheader()
        for i in range(2):
            w.writerow({"id": f"L{i}", "kind": "lamp", "lat": 51.51, "lon": 7.45 + i * 1e-4, "segment": "s",
                        "order": i, "lighting_class": "P4", "cabinet": "cab", "feeder": "f", "controller": "c1",
                        "port": lamp_port, "index": i, "p_max_w": 60})  # fmt: skip
        w.writerow({"id": "CPA", "kind": "charger", "lat": 51.51, "lon": 7.45, "cabinet": "cab", "feeder": "f",
                    "controller": "chargers", "post": "L0", "max_current_a": 16, "phases": 3,
                    "url": f"opc.tcp://127.0.0.1:{opc_port}/dos-edge/chargers"})  # fmt: skip
        w.writerow({"id": "CPB", "kind": "charger", "lat": 51.51, "lon": 7.4501, "cabinet": "cab", "feeder": "f",
                    "post": "L1", "max_current_a": 16, "phases": 3, "protocol": "ocpp"})  # fmt: skip
    (tmp / "ocpp_passwords.toml").write_text(f'CPB = "{PASSWORD}"\n', encoding="utf-8")
    (tmp / "site.toml").write_text(
        f"""
[site]
id = "{site_id}"
[storage]
url = "{db_url}"
flush_interval_s = 0.05
[mqtt]
url = "{mqtt_url}"
client_id = "edge-{site_id}"
[lighting]
poll_interval_s = 0.1
timeout_s = 0.5
[dispatcher]
write_timeout_s = 2
reconcile_interval_s = 1
[charging]
allow_no_security = true
failsafe_current_a = {FAILSAFE_A}
lease_s = 20
replan_interval_s = 300
cabinets = [{{ id = "cab", limit_a = 100 }}]
feeders = [{{ id = "f", cabinet = "cab", limit_a = {LIMIT_A} }}]
[charging.ocpp]
port = {ocpp_port}
security_profile = 1
passwords_file = "ocpp_passwords.toml"
heartbeat_interval_s = 30
meter_interval_s = 30
failsafe_timeout_s = 120
[logging]
level = "warning"
""",
        encoding="utf-8",
    )
    return tmp / "site.toml"


async def test_ocpp_and_opcua_chargers_share_a_feeder_within_its_limit(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    """Two cars that want 16 A each on a 20 A feeder: the plan's setpoints reach both chargers (the
    OCPP one confirms by its response and its next MeterValues) and their sum fits the feeder. The
    OCPP charger's link drops: the daemon sees it offline and counts it at its fail-safe, the
    charger falls to that fail-safe on its own, and an operator's 16 A for the other charger is
    clamped to what is left. The link comes back and the charger is driven again. The simulator,
    which sums both chargers' real draw on the feeder, never sees it over the limit."""
    opc_port, ocpp_port = free_port(), free_port()
    settings = load_settings(_write_site(tmp_path, mqtt_url, database_url, opc_port, ocpp_port))
    inv = load_inventory(settings.inventory_path())
    assert {c.id: c.protocol for c in inv.chargers.values()} == {"CPA": "opcua", "CPB": "ocpp"}
    clock = SimClock(start=time.time() - time.time() % 86_400 + 12 * 3600, speed=20)  # midday, 20x
    cps, feeders = sim_chargers(inv, settings)
    cps = [
        c.__class__(**{**{f: getattr(c, f) for f in c.__dataclass_fields__}, "sessions_per_day": 0})
        for c in cps
    ]
    async with (
        LightingSimulator(sim_controllers(inv), clock, seed=3) as lsim,
        ChargingSimulator(
            cps,
            clock,
            feeders=feeders,
            port=opc_port,
            seed=3,
            ocpp_url=f"ws://127.0.0.1:{ocpp_port}/ocpp",
            ocpp_passwords={"CPB": PASSWORD},
        ) as csim,
        running(settings, inv, clock) as d,
    ):
        assert d.charging is not None
        assert d.ocpp is not None
        marks = {"start": clock.now()}
        await wait_for(
            lambda: d.state.value("CPB", "failsafe_current_a") == FAILSAFE_A, "CPB's fail-safe read back"
        )
        await wait_for(  # the daemon in control first (a charger boots at its own limit)
            lambda: all(d.dispatcher.effective(cp, POINT) is not None and d.state.value(cp, POINT)
                        == d.dispatcher.effective(cp, POINT).value for cp in ("CPA", "CPB")),  # type: ignore[union-attr]
            "the daemon's first setpoints confirmed", timeout_s=30)  # fmt: skip
        marks["arrive"] = clock.now()
        for cp in ("CPA", "CPB"):
            # leaving in 90 min, wanting more than either can get: the plan must run both at once
            await csim.arrive(cp, 40.0, clock.now() + 5400, phases=3)
        d.charging.request_replan()

        def both_confirmed() -> bool:
            values = []
            for cp in ("CPA", "CPB"):
                eff = d.dispatcher.effective(cp, POINT)
                got = d.state.value(cp, POINT)
                if eff is None or eff.value < 6 or not isinstance(got, float) or abs(got - eff.value) > 0.1:
                    return False
                values.append(eff.value)
            return abs(float(csim.cp("CPB")["current_limit_a"]) - values[1]) <= 0.1

        await wait_for(both_confirmed, "both chargers charging on confirmed setpoints", timeout_s=60)
        safety, view = d.charging.safety, d.dispatcher.view
        room = LIMIT_A - safety.lighting_a("f", clock.now(), view)
        assert safety.setpoints_a("f", view) <= room + 1e-6
        await wait_for(lambda: float(csim.cp("CPB")["current_l1_a"]) > 0, "CPB's car draws current")

        # the OCPP charger's link is lost: offline, counted at its fail-safe, and on its own at it
        marks["disconnect"] = clock.now()
        await csim.inject("CPB", "disconnect")
        await wait_for(lambda: d.state.get("CPB") is not None and d.state.get("CPB").online is False,  # type: ignore[union-attr]
                       "CPB offline")  # fmt: skip
        assert safety.committed_a(inv.chargers["CPB"], view) >= FAILSAFE_A
        await wait_for(lambda: float(csim.cp("CPB")["current_limit_a"]) == FAILSAFE_A,
                       "CPB falls to its fail-safe on its own", timeout_s=30)  # fmt: skip
        op = d.charging.submit("CPA", 16.0, Priority.OPERATOR, "operator:test")
        if op.outcome is not Outcome.REFUSED:  # refused outright while a charger is unseen: also safe
            assert op.value + safety.committed_a(inv.chargers["CPB"], view) <= room + 1e-6

        # back: online again, and driven by the plan again (no longer on its fail-safe)
        marks["clear"] = clock.now()
        await csim.clear("CPB", "disconnect")
        await wait_for(lambda: d.state.get("CPB") is not None and d.state.get("CPB").online is True,  # type: ignore[union-attr]
                       "CPB back online", timeout_s=30)  # fmt: skip
        d.dispatcher.release("CPA", POINT, Priority.OPERATOR, "operator:test")
        d.charging.request_replan()
        await wait_for(both_confirmed, "CPB driven by the plan again", timeout_s=60)

        # an operator pauses CPB over the API and ends the car's session (RemoteStopTransaction)
        assert d.state.value("CPB", "session_id") not in (None, "")
        host, port = mqtt_url.split("://")[1].split(":")
        v5 = d.link.protocol == "5"
        proto = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
        async with aiomqtt.Client(
            host, int(port), identifier=f"op-{settings.site.id}", protocol=proto
        ) as client:
            site = Site(d, lsim, client, settings, inv, v5)
            ack = await site.request("cmd/chargers/CPB", {"action": "pause", "stop_session": True})
        assert ack["ok"] is True, ack
        assert ack["counts"]["sessions_stopped"] == 1
        assert float(csim.cp("CPB")["current_limit_a"]) == 0.0
        await wait_for(lambda: d.state.value("CPB", "session_id") == "", "CPB's transaction stopped")
        assert csim.overloads == 0, (marks, list(csim.events))
        assert csim.trips == 0


def test_check_config_names_what_an_ocpp_site_lacks(tmp_path: Path) -> None:
    """`edge check-config`: a password missing for an OCPP charge point, or no [charging.ocpp] at
    all, is named with its key; a complete site passes."""
    cfg = _write_site(
        tmp_path, "mqtt://127.0.0.1:1883", f"sqlite:///{tmp_path / 'r.db'}", free_port(), free_port()
    )
    assert check_file(cfg) == []
    (tmp_path / "ocpp_passwords.toml").write_text('CPX = "some-other-secret"\n', encoding="utf-8")
    problems = check_file(cfg)
    assert len(problems) == 1
    assert problems[0].startswith("charging.ocpp.passwords_file:")
    assert "no password for CPB" in problems[0]
    assert "some-other-secret" not in problems[0]
    text = cfg.read_text(encoding="utf-8")
    cfg.write_text(text[: text.index("[charging.ocpp]")] + text[text.index("[logging]") :], encoding="utf-8")
    assert check_file(cfg) == ["charging.ocpp: missing; 1 charge point(s) speak OCPP (CPB ...)"]
