"""End to end for charging: a car arrives in the OPC UA simulator, gets a plan and charges while
the lights come on, and the shared lighting circuit stays within its limit the whole time.

Real parts: the OPC UA and Modbus simulators over TCP, a broker, a database, the daemon.
"""

from __future__ import annotations

import asyncio
import csv
import os
from datetime import datetime
from pathlib import Path

import aiomqtt
from harness import Site, wait_for

from controllers.lighting import night_window
from devices.inventory import load_inventory
from edge.app.daemon import running
from edge.app.demo import sim_chargers, sim_controllers
from edge.clock import SimClock
from edge.net import free_port
from edge.settings import load_settings
from simulators.charging import ChargingSimulator
from simulators.lighting import LightingSimulator

LIMIT_A = 25.0


def write_site(tmp: Path, site_id: str, mqtt_url: str, db_url: str, opc_port: int) -> Path:
    """Six lamps and three single-phase charge points on one night-only lighting circuit."""
    port = free_port()
    with (tmp / "inventory.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "kind", "lat", "lon", "segment", "order", "lighting_class",
                                           "cabinet", "feeder", "controller", "port", "index", "p_max_w", "post",
                                           "url", "max_current_a", "phases"])  # fmt: skip
        w.writeheader()
        for i in range(6):
            w.writerow({"id": f"L{i}", "kind": "lamp", "lat": 51.51, "lon": 7.45 + i * 1e-4, "segment": "s",
                        "order": i, "lighting_class": "P4", "cabinet": "cab", "feeder": "lc", "controller": "c1",
                        "port": port, "index": i, "p_max_w": 60})  # fmt: skip
        for i in range(3):
            w.writerow({"id": f"CP{i}", "kind": "charger", "lat": 51.51, "lon": 7.45, "cabinet": "cab",
                        "feeder": "lc", "controller": "chargers", "post": f"L{i}", "max_current_a": 16, "phases": 1,
                        "url": f"opc.tcp://127.0.0.1:{opc_port}/dos-edge/chargers"})  # fmt: skip
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
poll_interval_s = 0.05
timeout_s = 0.5
[dispatcher]
write_timeout_s = 1
reconcile_interval_s = 0.5
[charging]
allow_no_security = true
lease_s = 20
replan_interval_s = 300
cabinets = [{{ id = "cab", limit_a = 100 }}]
feeders = [{{ id = "lc", cabinet = "cab", limit_a = {LIMIT_A}, phases = 1, live = "night" }}]
[logging]
level = "warning"
""",
        encoding="utf-8",
    )
    return tmp / "site.toml"


async def test_car_charges_within_the_circuit_limit_as_lights_come_on(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    """Before sunset the circuit is dead; at dusk the lamps take their share and the car gets the rest."""
    opc_port = free_port()
    cfg = write_site(tmp_path, "ev" + os.urandom(3).hex(), mqtt_url, database_url, opc_port)
    settings = load_settings(cfg)
    inv = load_inventory(settings.inventory_path())
    on, _ = night_window(
        settings.site, settings.lighting, datetime(2026, 11, 26, 12, tzinfo=None).timestamp()
    )
    clock = SimClock(start=on - 300, speed=60)  # five minutes before the lights come on, 60x
    cps, feeders = sim_chargers(inv, settings)
    cps = [
        c.__class__(**{**{f: getattr(c, f) for f in c.__dataclass_fields__}, "sessions_per_day": 0})
        for c in cps
    ]
    peak = 0.0
    violations: list[str] = []  # the first is the failure: deep in task groups its message is cut off
    try:
        async with (
            LightingSimulator(sim_controllers(inv), clock, seed=2) as lsim,
            ChargingSimulator(cps, clock, feeders=feeders, port=opc_port, seed=2) as csim,
            running(settings, inv, clock) as d,
        ):
            assert d.charging is not None
            csim.set_feeder_live("lc", None)

            def circuit(now: float) -> str:
                """What the simulator and the daemon's interlock each saw, for a failure's message."""
                assert d.charging is not None
                safety, view = d.charging.safety, d.dispatcher.view
                cps = {
                    c: {
                        k: csim.cp(c)[k]
                        for k in ("current_limit_a", "current_l1_a", "failsafe_active", "status")
                    }
                    for c in ("CP0", "CP1", "CP2")
                }
                seen = {c.id: round(safety.committed_a(c, view), 2) for c in safety.chargers_on("lc")}
                return (
                    f"sim {cps}, lamps {csim.feeder('lc')['lighting_a']} A; daemon counts chargers {seen}, "
                    f"lamps {safety.lighting_a('lc', now, view):.2f} A, limit {safety.feeder_limit('lc', now)} A"
                )

            def step() -> bool:
                nonlocal peak
                now = clock.now()
                live = d.charging is not None and d.charging.safety.feeder_limit("lc", now) > 0
                csim.set_feeder_live("lc", live)
                csim.set_lighting_load(
                    "lc",
                    d.charging.safety.lighting_now_a("lc", now, d.dispatcher.view) if d.charging else 0.0,
                )
                load = max(csim.feeder("lc")["load_a"])  # type: ignore[call-overload]
                peak = max(peak, load)
                if load > LIMIT_A + 0.5:
                    violations.append(f"circuit at {load:.1f} A > {LIMIT_A} A: {circuit(now)}")
                    raise AssertionError(violations[-1])
                return True

            await csim.arrive("CP0", 20.0, clock.now() + 10 * 3600, phases=1)
            await csim.arrive("CP1", 20.0, clock.now() + 10 * 3600, phases=1)
            await wait_for(
                lambda: step() and d.state.value("CP0", "car_connected") is True, "the car seen by the daemon"
            )
            assert csim.cp("CP0")["power_kw"] == 0  # the circuit is dead before dusk
            await wait_for(
                lambda: (
                    step() and lsim.lamp("L0")["level_actual"] > 0 and csim.cp("CP0")["status"] == "Charging"
                ),
                "lights on and the car charging",
                timeout_s=30,
            )
            # The lamps and two cars share 25 A: every step checks the circuit until the cars draw current.
            await wait_for(lambda: step() and peak > 6, "the cars drawing current", timeout_s=30)
            setpoint = float(csim.cp("CP0")["current_limit_a"])  # type: ignore[arg-type]
            assert 6 <= setpoint <= LIMIT_A

            def planned_sessions() -> bool:  # the planner has seen the cars (a plan is stored with sessions)
                rows = d.storage.plans("charging")
                return step() and bool(rows) and bool(rows[-1].body["sessions"])

            await wait_for(planned_sessions, "a stored plan with the cars' sessions", timeout_s=30)
            # The operator and the utility speak over MQTT; both are answered, and the limit still holds.
            host, port = mqtt_url.split("://")[1].split(":")
            v5 = d.link.protocol == "5"
            proto = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
            async with aiomqtt.Client(
                host, int(port), identifier=f"op-{settings.site.id}", protocol=proto
            ) as client:
                site = Site(d, lsim, client, settings, inv, v5)
                ack = await site.request("cmd/chargers/CP1", {"action": "limit", "current_a": 40})
                assert ack["ok"] is False
                assert "out_of_range" in ack["reason"]
                ack = await site.request("cmd/chargers/CP1", {"action": "limit", "current_a": 16})
                assert ack["ok"] is True, ack
                assert ack["status"] in {"confirmed", "clamped"}
                now = clock.now()
                ack = await site.request(
                    "utility/dso/limits",
                    {"action": "curtail", "target": "lc", "limit_a": 0, "start": now, "end": now + 3600},
                )
                assert ack["ok"] is True
                assert ack["status"] == "clamped", ack
                assert "§14a" in ack["reason"]  # never below 4.2 kW per charging car
                bad = await site.request(
                    "utility/dso/limits", {"action": "curtail", "target": "lc", "start": now, "end": 1}
                )
                assert bad["ok"] is False
                assert "invalid_payload" in bad["reason"]
            for _ in range(100):
                step()
                await asyncio.sleep(0.02)
            await asyncio.to_thread(lambda: None)
            await d.storage.flush()
            audit = await asyncio.to_thread(d.storage.audit, None, "lc")
            assert any(a.source == "utility:dso" for a in audit)
            # A charger fault raises an alarm; the repair clears it.
            await csim.inject("CP2", "faulted")
            await wait_for(
                lambda: step() and d.alarms.is_active("CP2", "charger_faulted"), "charger_faulted raised"
            )
            await csim.clear("CP2", "faulted")
            await wait_for(
                lambda: step() and not d.alarms.is_active("CP2", "charger_faulted"), "charger_faulted cleared"
            )
            # A meter that stands still while power flows is noticed after alarm_after_s (300 clock s = 5 s here).
            await wait_for(lambda: step() and csim.cp("CP1")["power_kw"] > 0, "CP1 charging")  # type: ignore[operator]
            await csim.inject("CP1", "meter_frozen")
            await wait_for(
                lambda: step() and d.alarms.is_active("CP1", "meter_frozen"), "meter_frozen", timeout_s=20
            )
    finally:
        assert not violations, violations[0]
