"""The feeder interlock: whatever the plan, an operator or a utility asks, no feeder is overloaded.

These property tests drive the real dispatcher and the real interlock with random sequences
of requests. The device side is a stand-in that confirms every write, because the
invariant is about what may be commanded at all; the OPC UA path is tested against the
simulator elsewhere.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_kit import make_kernel

from controllers import charging_alarms
from controllers.charging import FEEDER_REFRESH_S, POINT, ChargingController, ChargingSafety, PlannedLighting
from controllers.lighting import NightPlan
from devices.inventory import Charger, Inventory, Lamp
from edge.bus import EventBus
from edge.clock import ManualClock
from edge.dispatcher import Dispatcher
from edge.events import Availability, Command, Outcome, Priority, Telemetry, Value
from edge.policy import DispatcherView
from edge.settings import CabinetSettings, ChargingSettings, FeederSettings
from edge.state import StateStore

T0 = 1_795_000_000.0
FEEDERS = {"f1": 32.0, "f2": 20.0, "f3": 16.0}
CHARGERS = [(f"cp{i}", f"f{1 + i % 3}", 16.0 if i % 2 else 32.0) for i in range(9)]
OCPP = frozenset(cid for cid, _, _ in CHARGERS[1::2])
"""A mixed fleet: every other charger speaks OCPP, the rest OPC UA; on every feeder both kinds."""


class Confirming:
    """Device stand-in for one protocol's driver: every write is applied and read back unchanged."""

    def __init__(self, ids: frozenset[str]) -> None:
        self.ids = ids

    def handles(self, device_id: str) -> bool:
        return device_id in self.ids

    async def write(self, device_id: str, point: str, value: float, timeout: float) -> float:  # noqa: ASYNC109 - the Driver seam
        return value


class FixedLighting:
    """The lamps' load per feeder as the test sets it; every circuit live."""

    def __init__(self, amps: dict[str, float]) -> None:
        self._amps = amps

    def amps(self, feeder: str, t: float, view: DispatcherView) -> float:
        return self._amps.get(feeder, 0.0)

    def live(self, feeder: str, t: float) -> bool:
        return True


def rig(lighting: dict[str, float]) -> tuple[ManualClock, Dispatcher, ChargingSafety, ChargingController]:
    clock = ManualClock(T0)
    inv = Inventory(lamps={}).with_chargers(
        Charger(cid, 51.5, 7.4, "s", "cab1", feeder, cid, "srv", "opc.tcp://127.0.0.1:4840", max_a, 3)
        if cid not in OCPP
        else Charger(cid, 51.5, 7.4, "s", "cab1", feeder, cid, "", "", max_a, 3, protocol="ocpp")
        for cid, feeder, max_a in CHARGERS
    )
    cfg = ChargingSettings(
        feeders=[FeederSettings(id=f, cabinet="cab1", limit_a=lim) for f, lim in FEEDERS.items()],
        cabinets=[CabinetSettings(id="cab1", limit_a=60.0)],
    )
    bus = EventBus()
    state = StateStore(bus, {cid: "charger" for cid, _, _ in CHARGERS})
    safety = ChargingSafety(inv, cfg, lighting=FixedLighting(lighting), lagging=lambda: False)
    disp = Dispatcher(
        bus=bus,
        clock=clock,
        state=state,
        drivers=[Confirming(frozenset(c for c, _, _ in CHARGERS) - OCPP), Confirming(OCPP)],
        policies={"charger": safety},
        audit=lambda _r: None,
    )
    # Every charger answers and has read back its fail-safe (what the OPC UA driver reports).
    for cid, _, _ in CHARGERS:
        state.apply(Telemetry(cid, T0, {"failsafe_current_a": 0.0}))
    ctl = ChargingController(make_kernel(clock, bus, state, disp), cfg, inv=inv, safety=safety)
    return clock, disp, safety, ctl


def assert_within_limits(clock: ManualClock, disp: Dispatcher, safety: ChargingSafety) -> None:
    """Charger setpoints never take more than what the limit leaves after the lighting load."""
    now = clock.now()
    view = disp.view
    total = 0.0
    for f in FEEDERS:
        chargers, lights = safety.setpoints_a(f, view), safety.lighting_a(f, now, view)
        room = max(0.0, safety.feeder_limit(f, now) - lights)
        assert chargers <= room + 1e-6, f"{f}: chargers {chargers:.2f} A > room {room:.2f} A"
        total += chargers + lights
    cab_room = max(
        0.0, safety.cabinet_limit("cab1", now) - sum(safety.lighting_a(f, now, view) for f in FEEDERS)
    )
    assert sum(safety.setpoints_a(f, view) for f in FEEDERS) <= cab_room + 1e-6


action = st.one_of(
    st.tuples(
        st.just("cmd"),
        st.sampled_from([c for c, _, _ in CHARGERS]),
        st.floats(min_value=-5, max_value=40, allow_nan=False),
        st.sampled_from(list(Priority)),
    ),
    st.tuples(st.just("curtail"), st.sampled_from([*FEEDERS, "cab1"]), st.floats(min_value=0, max_value=40)),
    st.tuples(st.just("lighting"), st.sampled_from(list(FEEDERS)), st.floats(min_value=0, max_value=12)),
    st.tuples(st.just("tick"), st.floats(min_value=1, max_value=3600)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(action, min_size=1, max_size=40))
def test_no_sequence_of_requests_overloads_a_feeder(actions: list[tuple[object, ...]]) -> None:
    """Random plans, operator commands, curtailments, lighting load and time, on a mixed fleet
    (OPC UA and OCPP chargers on every feeder, each kind behind its own driver): limits always hold."""
    lighting: dict[str, float] = {}
    clock, disp, safety, ctl = rig(lighting)
    for a in actions:
        now = clock.now()
        if a[0] == "cmd":
            _, cid, amps, prio = a
            assert isinstance(cid, str)
            assert isinstance(amps, float)
            assert isinstance(prio, Priority)
            cmd = Command(f"c{now}{cid}", cid, POINT, amps, prio, prio.name, now, now + 60)
            verdict = disp.submit(cmd)
            if verdict.outcome is not Outcome.REFUSED:
                assert verdict.value == 0 or verdict.value >= 6, "IEC 61851: 0 or at least 6 A"
        elif a[0] == "curtail":
            _, target, amps = a
            assert isinstance(target, str)
            assert isinstance(amps, float)
            ctl.set_limit(target, amps, now, now + 1800, "utility:test")
        elif a[0] == "lighting":
            _, feeder, amps = a
            assert isinstance(feeder, str)
            assert isinstance(amps, float)
            lighting[feeder] = amps
            ctl._enforce(now)  # the controller's loop does this every turn
        else:
            assert isinstance(a[1], float)
            clock.advance(a[1])
            ctl._enforce(clock.now())
        assert_within_limits(clock, disp, safety)


def test_clamp_names_the_binding_limit() -> None:
    """A request over the feeder's headroom is clamped with the reason; under 6 A it becomes 0."""
    _clock, disp, _safety, _ = rig({"f2": 4.0})
    first = disp.submit(
        Command("a", "cp1", POINT, 16, Priority.OPERATOR, "op", T0, T0 + 60)
    )  # f2: 20 A - 4 A lights
    assert first.outcome is Outcome.ACCEPTED
    assert first.value == 16.0
    v = disp.submit(Command("b", "cp4", POINT, 16, Priority.OPERATOR, "op", T0, T0 + 60))
    assert v.outcome is Outcome.CLAMPED
    assert v.value == 0.0
    assert "feeder f2 leaves" in v.reason
    assert v.limit == "feeder:f2"  # the binding limit is data, not read from the reason
    assert disp.submit(Command("c", "cp2", POINT, 3, Priority.PLAN, "plan", T0, T0 + 60)).value == 0.0


def test_a_dropped_limit_sheds_once_not_every_turn() -> None:
    """A charger still reporting its old current after a limit dropped is asked to come down
    once; the interlock's next turns see that request in force and do not send it again."""
    clock, disp, _safety, ctl = rig({})
    disp.submit(Command("a", "cp0", POINT, 16, Priority.PLAN, "plan", T0, T0 + 60))  # f1
    ctl._state.apply(Telemetry("cp0", T0, {POINT: 16.0}))  # the device still reports 16 A
    ctl.set_limit("f1", 5.0, T0, T0 + 900, "utility:dso")
    shed = disp.effective("cp0", POINT)
    assert shed is not None
    assert shed.value < 16
    assert shed.source == "safety:interlock"
    sent = disp.stats.submitted
    for _ in range(5):
        clock.advance(0.5)
        ctl._enforce(clock.now())
    assert disp.stats.submitted == sent
    assert disp.effective("cp0", POINT) is shed


def test_curtailment_never_below_the_14a_floor() -> None:
    """A utility may curtail, but every charging car keeps 4.2 kW."""
    clock, disp, safety, ctl = rig({})
    disp.submit(Command("a", "cp0", POINT, 10, Priority.PLAN, "plan", T0, T0 + 60))  # f1
    disp.submit(Command("b", "cp3", POINT, 10, Priority.PLAN, "plan", T0, T0 + 60))  # f1
    used, note = ctl.set_limit("f1", 0.0, T0, T0 + 900, "utility:dso")
    floor_a = 4200 / (230 * 3)
    assert used >= 2 * floor_a - 1e-6
    assert "§14a" in note
    assert_within_limits(clock, disp, safety)


def test_stale_measurements_allow_only_less_load() -> None:
    """A charger on the feeder that no longer answers: cp0 may go down, not up."""
    _clock, disp, _safety, _ = rig({})
    disp.submit(Command("a", "cp0", POINT, 10, Priority.PLAN, "plan", T0, T0 + 60))
    disp._store.apply(Availability("srv", ("cp3",), False, T0))  # cp3 shares feeder f1 with cp0
    up = disp.submit(Command("b", "cp0", POINT, 16, Priority.PLAN, "plan", T0, T0 + 60))
    assert up.outcome is Outcome.REFUSED
    assert up.reason.startswith("stale_measurements")
    down = disp.submit(Command("c", "cp0", POINT, 6, Priority.PLAN, "plan", T0, T0 + 60))
    assert down.outcome is Outcome.ACCEPTED


def test_a_charger_never_heard_from_counts_at_its_maximum() -> None:
    """No permissive default: a charger the dispatcher's view knows nothing about draws its
    maximum and its feeder's measurements are not fresh, so nothing on that feeder may go up."""
    clock = ManualClock(T0)
    inv = Inventory(lamps={}).with_chargers(
        Charger(cid, 51.5, 7.4, "s", "cab1", "f1", cid, "srv", "opc.tcp://127.0.0.1:4840", max_a, 3)
        for cid, max_a in (("cp0", 16.0), ("cpx", 32.0))
    )
    cfg = ChargingSettings(feeders=[FeederSettings(id="f1", cabinet="cab1", limit_a=40.0)])
    bus = EventBus()
    state = StateStore(bus, {"cp0": "charger", "cpx": "charger"})
    safety = ChargingSafety(inv, cfg, lighting=FixedLighting({}), lagging=lambda: False)
    disp = Dispatcher(
        bus=bus, clock=clock, state=state, drivers=[Confirming(frozenset(c for c, _, _ in CHARGERS))], policies={"charger": safety}, audit=lambda _r: None
    )  # fmt: skip
    state.apply(Telemetry("cp0", T0, {"failsafe_current_a": 0.0}))  # cp0 answers; cpx never did
    assert safety.setpoints_a("f1", disp.view) == 32.0
    assert safety.headroom(inv.chargers["cp0"], T0, disp.view) == (8.0, "feeder:f1")
    up = disp.submit(Command("a", "cp0", POINT, 16, Priority.OPERATOR, "op", T0, T0 + 60))
    assert up.outcome is Outcome.REFUSED
    assert up.reason.startswith("stale_measurements")


class NoPlan:
    """A lighting controller that has not planned yet."""

    plan: NightPlan | None = None


def test_without_a_lighting_plan_lamps_burn_at_full_power_and_night_circuits_are_dead() -> None:
    """No permissive default: before the lighting controller has a plan, every lamp counts at full
    power (a lamp nobody measured included) and a night-only circuit carries nothing."""
    lamps = [
        Lamp(id=f"L{i}", lat=51.5, lon=7.4, segment="s", order=i, lighting_class="P4", cabinet="cab1",
             feeder="f1", flags=frozenset(), controller="c1", host="127.0.0.1", port=1502, unit=1, index=i,
             p_max_w=115.0, p_min_w=2.0)
        for i in range(4)
    ]  # fmt: skip
    inv = Inventory.build(lamps).with_chargers(
        [Charger("cp0", 51.5, 7.4, "s", "cab1", "f1", "cp0", "srv", "opc.tcp://127.0.0.1:4840", 16.0, 3)]
    )
    cfg = ChargingSettings(feeders=[FeederSettings(id="f1", cabinet="cab1", limit_a=40.0, live="night")])
    clock = ManualClock(T0)
    bus = EventBus()
    state = StateStore(bus, {"cp0": "charger", **{x.id: "lamp" for x in lamps}})
    lighting = PlannedLighting(inv, NoPlan(), clock, stale_s=120.0)
    safety = ChargingSafety(inv, cfg, lighting=lighting, lagging=lambda: False)
    disp = Dispatcher(
        bus=bus, clock=clock, state=state, drivers=[Confirming(frozenset(c for c, _, _ in CHARGERS))], policies={"charger": safety}, audit=lambda _r: None
    )  # fmt: skip
    state.apply(Telemetry("cp0", T0, {"failsafe_current_a": 0.0}))
    assert lighting.amps("f1", T0, disp.view) == 4 * 115.0 / 230
    assert not lighting.live("f1", T0)
    assert safety.feeder_limit("f1", T0) == 0.0
    v = disp.submit(Command("a", "cp0", POINT, 16, Priority.OPERATOR, "op", T0, T0 + 60))
    assert (v.outcome, v.value, v.limit) == (Outcome.CLAMPED, 0.0, "feeder:f1")


def test_feeder_state_and_planned_current_go_out_as_derived_telemetry_when_they_change() -> None:
    """C-north: the controller publishes each feeder's state (the FeederState fields) and each
    charger's planned current once, then again only when something changed."""
    clock, disp, _safety, ctl = rig({"f1": 2.5})
    seen = disp._bus.subscribe("test", Telemetry)
    assert ctl.publish_state(clock.now()) == len(FEEDERS) + len(CHARGERS)
    out = {}
    while (ev := seen.get_nowait()) is not None:
        assert isinstance(ev, Telemetry)
        assert ev.derived
        out[ev.device_id] = dict(ev.values)
    assert out["f1"] == {"limit_a": 32.0, "lighting_a": 2.5, "setpoints_a": 0.0, "measured_a": 0.0,
                         "chargers": 3, "tripped": False}  # fmt: skip
    assert out["cp0"] == {"planned_a": 0.0}
    assert ctl.publish_state(clock.now()) == 0  # nothing changed
    disp.submit(Command("a", "cp0", POINT, 10, Priority.OPERATOR, "op", T0, T0 + 60))
    assert ctl.publish_state(clock.now()) == 1  # f1's setpoints


def test_a_feeders_small_moves_wait_a_refresh_larger_ones_go_at_once() -> None:
    """A feeder's lamps drawing a little more (within the dead band) is published only after
    the refresh interval, a larger move or a trip at once: the retained feeder states follow
    the load without a message every turn."""
    lights = {"f1": 2.5}
    clock, _disp, _safety, ctl = rig(lights)
    seen = ctl._bus.subscribe("test", Telemetry)
    ctl.publish_state(clock.now())

    def feeders() -> list[tuple[str, Value]]:
        out = []
        while (ev := seen.get_nowait()) is not None:
            if isinstance(ev, Telemetry) and "lighting_a" in ev.values:
                out.append((ev.device_id, ev.values["lighting_a"]))
        return out

    feeders()
    lights["f1"] = 2.7  # 0.2 A: within max(0.5 A, 1 % of 32 A)
    clock.advance(1.0)
    assert ctl.publish_state(clock.now()) == 0
    clock.advance(FEEDER_REFRESH_S)
    assert ctl.publish_state(clock.now()) == 1
    assert feeders() == [("f1", 2.7)]
    lights["f1"] = 3.5  # 0.8 A: beyond the band
    clock.advance(1.0)
    assert ctl.publish_state(clock.now()) == 1
    assert feeders() == [("f1", 3.5)]
    lights["f1"] = 3.6
    ctl.tripped["f1"] = True  # not a measured current: at once
    clock.advance(1.0)
    assert ctl.publish_state(clock.now()) == 1


def test_derived_state_never_makes_an_unreachable_charger_look_reachable() -> None:
    """A planned current published for a charger that went offline leaves it offline: its
    feeder stays decreases-only."""
    _clock, disp, _safety, _ = rig({})
    state = disp._store
    state.apply(Availability("srv", ("cp3",), False, T0))
    state.apply(Telemetry("cp3", T0 + 1, {"planned_a": 16.0}, derived=True))
    assert state.value("cp3", "planned_a") == 16.0
    dev = state.get("cp3")
    assert dev is not None
    assert dev.online is False
    assert dev.updated_at == T0
    up = disp.submit(Command("a", "cp0", POINT, 16, Priority.PLAN, "plan", T0, T0 + 60))  # cp0 shares f1
    assert up.outcome is Outcome.REFUSED
    assert up.reason.startswith("stale_measurements")


def test_every_controller_has_the_one_controller_shape() -> None:
    """Lighting, charging and displays controllers are built from a kernel and satisfy Controller."""
    from controllers.displays import DisplayController
    from controllers.lighting import LightingController
    from edge.kernel import Controller
    from edge.settings import DisplaysSettings, LightingSettings

    clock, disp, _safety, charging = rig({})
    kernel = make_kernel(clock, disp._bus, disp._store, disp)
    lighting = LightingController(kernel, LightingSettings(), inv=Inventory(lamps={}))
    displays = DisplayController(kernel, DisplaysSettings(), lighting=lighting)
    for ctl in (lighting, charging, displays):
        assert isinstance(ctl, Controller)
    assert [c.name for c in (lighting, charging, displays)] == ["lighting", "charging", "displays"]
    assert charging.amps_for_kw("f1", 11.04) == 16.0  # kW to A on the feeder's three phases


def _all_dark(state: StateStore, feeder: str) -> None:
    for cid, f, _ in CHARGERS:
        if f == feeder:
            state.apply(Availability("srv", (cid,), True, T0))
            state.apply(Telemetry(cid, T0, {"status": "Unavailable"}))


def test_a_stalled_loop_is_no_evidence_of_a_tripped_feeder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every charge point of a live feeder dark reads as a tripped fuse only after the clock hold
    AND enough real seconds of looking: a loop that stalled while the (fast) clock ran on saw
    nothing, so one look before and one after the stall raise no alarm; steady looks do."""
    real = [1000.0]
    monkeypatch.setattr(charging_alarms.time, "monotonic", lambda: real[0])
    clock, _disp, _safety, ctl = rig({})
    _all_dark(ctl._state, "f1")
    watch = ctl.watch
    watch.observe_feeder("f1", clock.now())
    real[0] += 30.0  # a 30 s stall, 10 clock minutes
    clock.advance(600)
    watch.observe_feeder("f1", clock.now())
    assert watch.tripped.get("f1") is False
    assert not any(a.code == "feeder_tripped" for a in watch._alarms.active())
    for _ in range(int(charging_alarms.TRIP_EVIDENCE_S / 0.5) + 1):  # now watched, twice a second
        real[0] += 0.5
        clock.advance(0.5)
        watch.observe_feeder("f1", clock.now())
    assert watch.tripped.get("f1") is True
    assert any(a.device_id == "f1" and a.code == "feeder_tripped" for a in watch._alarms.active())
    # power back on one charger: the alarm clears at once
    ctl._state.apply(Telemetry("cp0", clock.now(), {"status": "Available"}))
    watch.observe_feeder("f1", clock.now())
    assert watch.tripped.get("f1") is False
