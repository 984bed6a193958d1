"""Fail-safe currents, lag and the lighting reserve: a daemon that is gone, late or about to switch
the lamps on must not let a feeder go over its limit.

- check-config (and `run`) refuse a supply tree whose fail-safe currents plus the lamps at full
  power exceed a feeder or cabinet limit; the demo district passes.
- While the event loop lags, the interlock allows decreases only (the lag monitor is driven by
  blocking the loop and by an injected monotonic clock: no sleep-based timing).
- A charger whose fail-safe did not read back as configured gets no more than that fail-safe.
- While the lamps are on or come on within a slot, they count at full power.
- End to end (real OPC UA and Modbus simulators, broker, database, daemon): a charger that ignores
  the fail-safe write raises an alarm and is held at its fail-safe; a tripped fuse is a critical
  alarm, shows in the feeder state, and the demo summary counts it from the simulator's record.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import os
import shutil
import time
from pathlib import Path

import aiomqtt
import pytest
from harness import wait_for

from controllers.charging import POINT, ChargingSafety, failsafe_problems, worst_lighting_a
from devices.inventory import Charger, Inventory, Lamp, load_inventory
from edge.app.cli import main as cli_main
from edge.app.daemon import running
from edge.app.demo import SITE_DIR, sim_chargers, sim_controllers
from edge.app.demo_summary import charging_summary
from edge.app.domains.charging import opcua_driver
from edge.app.validation import check_file
from edge.clock import ManualClock, SimClock
from edge.errors import ConfigError
from edge.events import Command, Outcome, Priority, Severity
from edge.lag import LagMonitor
from edge.net import free_port
from edge.payloads import FeederState
from edge.policy import DispatcherView
from edge.settings import CabinetSettings, ChargingSettings, FeederSettings, load_settings
from simulators.charging import ChargingSimulator
from simulators.lighting import LightingSimulator

T0 = 1_795_000_000.0


def _charger(cid: str, feeder: str, failsafe: float | None = None, cabinet: str = "cab") -> Charger:
    return Charger(
        cid, 51.5, 7.4, "s", cabinet, feeder, cid, "srv", "opc.tcp://127.0.0.1:4840", 16, 3, failsafe
    )


def _lamp(lid: str, feeder: str, watts: float) -> Lamp:
    return Lamp(
        id=lid, lat=51.5, lon=7.4, segment="s", order=0, lighting_class="P4", cabinet="cab", feeder=feeder,
        flags=frozenset(), controller="c1", host="127.0.0.1", port=1502, unit=1, index=0, p_max_w=watts, p_min_w=2,
    )  # fmt: skip


# ----- the config rule ------------------------------------------------------------------------


def _demo_copy(tmp: Path, *, site_failsafe: float | None, blank_column: bool) -> Path:
    for name in ("site.toml", "inventory.csv", "bins.csv"):
        shutil.copy(SITE_DIR / name, tmp / name)
    if site_failsafe is not None:
        text = (tmp / "site.toml").read_text(encoding="utf-8")
        text = text.replace("[charging]\n", f"[charging]\nfailsafe_current_a = {site_failsafe:g}\n", 1)
        (tmp / "site.toml").write_text(text, encoding="utf-8")
    if blank_column:
        with (tmp / "inventory.csv").open(encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        for r in rows:
            r["failsafe_current_a"] = ""
        with (tmp / "inventory.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return tmp / "site.toml"


def test_demo_district_fits_its_failsafe_budget() -> None:
    """The shipped demo site passes: each feeder's fail-safe split (6 A for some, 0 A for the rest) fits."""
    assert check_file(SITE_DIR / "site.toml") == []
    inv = load_inventory(SITE_DIR / "inventory.csv")
    assert {c.failsafe_current_a for c in inv.chargers.values()} == {0.0, 6.0}


def test_check_config_refuses_failsafe_over_the_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The chargers' factory 6 A everywhere (the demo's old state): feeder-3 would carry 54 A of
    fail-safe plus 8.3 A of lamps on 40 A. check-config names the feeder, cabinet and numbers."""
    cfg = _demo_copy(tmp_path, site_failsafe=6.0, blank_column=True)
    assert cli_main(["check-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "feeder feeder-3: fail-safe 54 A (9 charge points) + lamps at full power 8.3 A = 62.3 A" in err
    assert "exceeds its limit of 40 A" in err
    assert "cabinet cab-2: fail-safe 114 A (19 charge points)" in err
    settings = load_settings(cfg)
    with pytest.raises(ConfigError, match="feeder-3"):  # `run` refuses it the same way
        opcua_driver(settings, load_inventory(settings.inventory_path()), lambda _e: None, ManualClock(T0))


def test_cabinet_limit_counts_every_feeder_below_it() -> None:
    """Two feeders that fit on their own can still overload their cabinet together."""
    inv = Inventory(lamps={}).with_chargers(
        [_charger(f"cp{i}", f"f{i % 2}", 6.0) for i in range(6)] + [_charger("cp9", "f1", 3.0)]
    )
    cfg = ChargingSettings(
        feeders=[FeederSettings(id=f"f{i}", cabinet="cab", limit_a=21) for i in range(2)],
        cabinets=[CabinetSettings(id="cab", limit_a=30)],
    )
    problems = failsafe_problems(cfg, inv)
    assert problems == [
        "charger cp9: fail-safe 3 A is not 0 or at least 6 A (IEC 61851)",
        "cabinet cab: fail-safe 39 A (7 charge points) + lamps at full power 0.0 A = 39.0 A "
        "exceeds its limit of 30 A",
    ]  # f0 carries 18 A and f1 21 A: each fits its own 21 A
    with pytest.raises(ValueError, match=r"0 \(stop charging\) or at least 6 A"):
        ChargingSettings(failsafe_current_a=3)


# ----- the interlock --------------------------------------------------------------------------


class _Mono:
    """An injected monotonic clock for the lag monitor."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class _View:
    """The dispatcher's view as these tests set it: chargers' setpoints, every device answering,
    and each charger's fail-safe read back as `reported` says (None: as configured)."""

    def __init__(self, setpoints: dict[str, float], reported: dict[str, float]) -> None:
        self.setpoints = setpoints
        self.reported = reported

    def effective_value(self, device_id: str, point: str) -> float | None:
        return self.setpoints.get(device_id) if point == POINT else None

    def in_flight_value(self, device_id: str, point: str) -> float | None:
        return None

    def value(self, device_id: str, point: str) -> float | None:
        return self.reported.get(device_id) if point == "failsafe_current_a" else None

    def online(self, device_id: str) -> bool | None:
        return True

    def updated_at(self, device_id: str) -> float | None:
        return T0


class _Lighting:
    """The lamps' planned load (A) and whether their circuit is live at t."""

    def __init__(self, planned_a: float, live: bool) -> None:
        self._planned_a = planned_a
        self._live = live

    def amps(self, feeder: str, t: float, view: DispatcherView) -> float:
        return self._planned_a

    def live(self, feeder: str, t: float) -> bool:
        return self._live and t >= T0


def _safety(
    lagging: LagMonitor | None = None,
    reported: dict[str, float] | None = None,
    lamps_w: float = 0.0,
    live: bool = True,
    planned_a: float = 0.0,
) -> tuple[ChargingSafety, dict[str, float], _View]:
    inv = Inventory.build([_lamp(f"L{i}", "f1", lamps_w / 10) for i in range(10)] if lamps_w else []).with_chargers(
        [_charger("cp0", "f1", 0.0), _charger("cp1", "f1", 6.0)]
    )  # fmt: skip
    cfg = ChargingSettings(
        feeders=[FeederSettings(id="f1", cabinet="cab", limit_a=32)],
        cabinets=[CabinetSettings(id="cab", limit_a=60)],
    )
    safety = ChargingSafety(
        inv, cfg, lighting=_Lighting(planned_a, live),
        lagging=lagging.lagging if lagging is not None else lambda: False,
    )  # fmt: skip
    setpoints: dict[str, float] = {"cp0": 10.0, "cp1": 6.0}
    view = _View(setpoints, {"cp0": 0.0, "cp1": 6.0} if reported is None else reported)
    return safety, setpoints, view


def _cmd(cid: str, amps: float) -> Command:
    return Command("x", cid, POINT, amps, Priority.PLAN, "plan", T0, T0 + 60)


async def test_lag_from_a_blocked_loop_allows_decreases_only() -> None:
    """A loop blocked longer than the limit makes the very next check decreases-only."""
    async with LagMonitor(limit_s=0.05, hold_s=3600, interval_s=0.01) as lag:
        safety, _, view = _safety(lagging=lag)
        assert safety.check(_cmd("cp0", 12.0), T0, view).outcome is Outcome.ACCEPTED
        time.sleep(0.2)  # noqa: ASYNC251 - the point: block the event loop as a CPU hog or a long computation would
        up = safety.check(_cmd("cp0", 12.0), T0, view)
        assert up.outcome is Outcome.REFUSED
        assert up.reason.startswith("daemon_lagging")
        assert safety.check(_cmd("cp0", 8.0), T0, view).outcome is Outcome.ACCEPTED
        assert (
            safety.check(_cmd("cp0", 10.0), T0, view).outcome is Outcome.ACCEPTED
        )  # no change is no increase
        assert lag.episodes == 1
        assert lag.max_lag_s >= 0.15


def test_lag_hold_ends_and_increases_pass_again() -> None:
    """Driven by an injected monotonic clock: lagging from the first late probe for hold_s, then not."""
    mono = _Mono()
    lag = LagMonitor(limit_s=0.5, hold_s=5.0, interval_s=0.1, monotonic=mono)
    safety, _, view = _safety(lagging=lag)
    mono.t += 0.3  # the probe is 0.2 s late: under the limit
    assert not lag.lagging()
    lag.probed(0.9)  # a probe that woke 0.9 s late
    assert safety.check(_cmd("cp0", 16.0), T0, view).outcome is Outcome.REFUSED
    for _ in range(48):  # then 4.8 s of a healthy loop: still held
        mono.t += 0.1
        lag.probed(0.0)
    assert safety.check(_cmd("cp0", 16.0), T0, view).outcome is Outcome.REFUSED
    for _ in range(3):
        mono.t += 0.1
        lag.probed(0.0)
    assert safety.check(_cmd("cp0", 16.0), T0, view).outcome is Outcome.ACCEPTED
    mono.t += 0.7  # the probe has not run for 0.7 s: the loop is late right now, before it wakes
    assert safety.check(_cmd("cp0", 16.0), T0, view).outcome is Outcome.REFUSED
    assert lag.episodes == 2


def test_unverified_failsafe_caps_the_charger_at_its_failsafe() -> None:
    """cp0 is configured to 0 A fail-safe but reads back 6 A: it is given nothing above 0 A; cp1 reads
    back as configured and is not capped."""
    safety, _, view = _safety(reported={"cp0": 6.0, "cp1": 6.0})
    v = safety.check(_cmd("cp0", 12.0), T0, view)
    assert v.outcome is Outcome.CLAMPED
    assert v.value == 0.0
    assert "failsafe_unverified" in v.reason
    assert v.limit == "failsafe:cp0"
    assert safety.check(_cmd("cp1", 12.0), T0, view).outcome is Outcome.ACCEPTED
    unknown, _, unknown_view = _safety(reported={})
    assert (
        unknown.check(_cmd("cp1", 12.0), T0, unknown_view).value == 6.0
    )  # never read back: its fail-safe at most


def test_lamps_count_at_full_power_whenever_their_circuit_carries_power() -> None:
    """Lamps of 2,300 W (10 A) planned at 30 %: at night, a slot before sunset, and by day on a 24/7
    feeder, the chargers get the limit minus the lamps at full power (a warning or an emergency
    call raises lamps to 100 % by day too, faster than chargers can be lowered)."""
    assert worst_lighting_a(Inventory.build([_lamp("L0", "f1", 2300)]), "f1") == pytest.approx(10.0)
    night, _, view = _safety(lamps_w=2300, planned_a=3.0, live=True)
    room, _ = night.headroom(night._inv.chargers["cp0"], T0, view)
    assert room == pytest.approx(32 - 10 - 6)  # limit - lamps at full power - cp1's 6 A
    dusk, _, view = _safety(lamps_w=2300, planned_a=3.0, live=True)
    room, _ = dusk.headroom(dusk._inv.chargers["cp0"], T0 - 600, view)  # lights on in 10 minutes
    assert room == pytest.approx(32 - 10 - 6)
    day, _, view = _safety(lamps_w=2300, planned_a=0.0, live=False)
    room, _ = day.headroom(day._inv.chargers["cp0"], T0, view)
    assert room == pytest.approx(32 - 10 - 6)


# ----- end to end -----------------------------------------------------------------------------


def _write_site(tmp: Path, mqtt_url: str, db_url: str, opc_port: int) -> Path:
    """Six lamps and three charge points (fail-safe 6/0/0 A) on a 24/7 feeder of 30 A."""
    port = free_port()
    with (tmp / "inventory.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "kind", "lat", "lon", "segment", "order", "lighting_class",
                                           "cabinet", "feeder", "controller", "port", "index", "p_max_w", "post",
                                           "url", "max_current_a", "phases", "failsafe_current_a"])  # fmt: skip
        w.writeheader()
        for i in range(6):
            w.writerow({"id": f"L{i}", "kind": "lamp", "lat": 51.51, "lon": 7.45 + i * 1e-4, "segment": "s",
                        "order": i, "lighting_class": "P4", "cabinet": "cab", "feeder": "f1", "controller": "c1",
                        "port": port, "index": i, "p_max_w": 60})  # fmt: skip
        for i, fs in enumerate((6, 0, 0)):
            w.writerow({"id": f"CP{i}", "kind": "charger", "lat": 51.51, "lon": 7.45, "cabinet": "cab",
                        "feeder": "f1", "controller": "chargers", "post": f"L{i}", "max_current_a": 16, "phases": 3,
                        "url": f"opc.tcp://127.0.0.1:{opc_port}/dos-edge/chargers", "failsafe_current_a": fs})  # fmt: skip
    (tmp / "site.toml").write_text(
        f"""
[site]
id = "fs{os.urandom(3).hex()}"
[storage]
url = "{db_url}"
flush_interval_s = 0.05
[mqtt]
url = "{mqtt_url}"
[lighting]
poll_interval_s = 0.1
timeout_s = 0.5
[dispatcher]
write_timeout_s = 1
reconcile_interval_s = 0.5
[charging]
allow_no_security = true
lease_s = 20
cabinets = [{{ id = "cab", limit_a = 100 }}]
feeders = [{{ id = "f1", cabinet = "cab", limit_a = 30 }}]
[logging]
level = "warning"
""",
        encoding="utf-8",
    )
    return tmp / "site.toml"


async def test_ignored_failsafe_alarms_and_a_tripped_fuse_is_critical_and_counted(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    """CP1 ignores the fail-safe write: failsafe_mismatch alarm, and it is never given current (its
    configured fail-safe is 0 A). Then the feeder is overloaded until its fuse trips: the daemon
    raises feeder_tripped (critical), the feeder state says tripped, and the demo summary counts
    the trip and the overload from the simulator's record."""
    opc_port = free_port()
    settings = load_settings(_write_site(tmp_path, mqtt_url, database_url, opc_port))
    inv = load_inventory(settings.inventory_path())
    clock = SimClock(start=T0, speed=20)
    cps, feeders = sim_chargers(inv, settings)
    cps = [dataclasses.replace(c, sessions_per_day=0) for c in cps]
    async with (
        LightingSimulator(sim_controllers(inv), clock, seed=4),
        ChargingSimulator(cps, clock, feeders=feeders, port=opc_port, seed=4) as csim,
    ):
        await csim.inject("CP1", "failsafe_ignored")
        async with running(settings, inv, clock, drain_s=1.0) as d:
            assert d.charging is not None
            await wait_for(lambda: d.state.value("CP2", "failsafe_current_a") == 0.0, "fail-safe read back")
            # CP0 took its configured 6 A, or 0 A if the daemon's first setpoint (no car: 0 A) came
            # already: a fail-safe goes with each setpoint and is never above it
            assert csim.cp("CP0")["failsafe_current_a"] in {6.0, min(6.0, csim.cp("CP0")["current_limit_a"])}
            assert csim.cp("CP1")["failsafe_current_a"] == 6.0  # its own value, not ours
            await wait_for(
                lambda: any(
                    a.device_id == "CP1" and a.code == "failsafe_mismatch" for a in d.alarms.active()
                ),
                "failsafe_mismatch alarm",
            )
            await wait_for(
                lambda: all(csim.cp(cp)["current_limit_a"] == 0.0 for cp in ("CP0", "CP1", "CP2")),
                "the daemon's first setpoints (no car: 0 A)",
                timeout_s=30,
            )
            for cp in ("CP0", "CP1"):
                await csim.arrive(cp, 20.0, clock.now() + 8 * 3600, phases=3)

            def cp1_held() -> bool:  # the plan knows: it gives CP1 nothing
                eff = d.dispatcher.effective("CP1", POINT)
                return eff is not None and eff.value == 0.0 and eff.source == "plan"

            await wait_for(
                lambda: float(str(csim.cp("CP0")["current_limit_a"])) >= 6 and cp1_held(),
                "CP0 charging, CP1 held at its 0 A fail-safe",
                timeout_s=30,
            )
            assert csim.cp("CP1")["current_limit_a"] == 0.0
            assert csim.cp("CP1")["current_l1_a"] == 0.0
            op = d.charging.submit("CP1", 16.0, Priority.OPERATOR, "operator:test")  # nor may anyone else
            assert op.outcome is Outcome.CLAMPED
            assert op.value == 0.0
            assert "failsafe_unverified" in op.reason
            # a fuse blows: the lamps (or anything) overload the feeder past trip_after_s
            csim.set_lighting_load("f1", 200.0)
            await wait_for(lambda: csim.trips == 1, "the simulated fuse trips")
            await wait_for(lambda: d.charging is not None and d.charging.tripped.get("f1") is True,
                           "the daemon sees the feeder tripped", timeout_s=20)  # fmt: skip
            alarm = next(a for a in d.alarms.active() if a.device_id == "f1" and a.code == "feeder_tripped")
            assert alarm.severity is Severity.CRITICAL
            summary = charging_summary(d, csim)
            assert summary["feeder_trips"] == 1
            assert summary["tripped_feeders"] == ["f1"]
            assert summary["limit_violations"] == 1
            assert summary["trips_alarmed"] == 1
            assert [e["kind"] for e in summary["grid_events"]] == ["overload", "trip"]
            host, port = mqtt_url.split("://")[1].split(":")
            proto = aiomqtt.ProtocolVersion.V5 if d.link.protocol == "5" else aiomqtt.ProtocolVersion.V311
            async with aiomqtt.Client(
                host, int(port), identifier=f"fs-{settings.site.id}", protocol=proto
            ) as c:
                await c.subscribe(f"{d.api.base}/feeders/f1/state", qos=0)
                async with asyncio.timeout(15):
                    async for msg in c.messages:  # retained, refreshed every 2 s
                        state = FeederState.model_validate_json(bytes(msg.payload))  # type: ignore[arg-type]
                        if state.tripped:
                            break


def test_a_charger_at_0_a_counts_with_its_failsafe() -> None:
    """cp1 is set to 0 A but falls back to 6 A when its watchdog fires, which may be before cp0's:
    cp0 may only take what leaves room for that (the long freeze run caught 16 + 6 A on 20 A)."""
    safety, setpoints, view = _safety(lamps_w=3450)  # 15 A at full power
    setpoints["cp1"] = 0.0
    room, _ = safety.headroom(safety._inv.chargers["cp0"], T0, view)
    assert room == pytest.approx(32 - 15 - 6)
    v = safety.check(_cmd("cp0", 16.0), T0, view)
    assert v.outcome is Outcome.CLAMPED
    assert v.value == pytest.approx(11.0)
    setpoints["cp0"] = 0.0
    room, _ = safety.headroom(safety._inv.chargers["cp1"], T0, view)
    assert room == pytest.approx(32 - 15)  # cp0's fail-safe is 0 A
    kept, setpoints, kept_view = _safety(lamps_w=3450, reported={"cp0": 0.0, "cp1": 0.0})
    setpoints["cp1"] = 0.0  # the driver wrote cp1's fail-safe down with its 0 A setpoint
    assert kept.headroom(kept._inv.chargers["cp0"], T0, kept_view)[0] == pytest.approx(32 - 15)
