"""The lamps' load the feeder interlock counts, kept per feeder between changes.

The kept figure must never be below what counting every lamp again gives (the interlock
would let a charger take room the lamps use), and must come back to it once the kept
figure ages out. Random sequences of lamp commands, readings, outages and time steps drive
the real dispatcher and state store; a second `PlannedLighting` that keeps nothing is the
reference.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controllers.charging_lighting import MAX_AGE_S, PlannedLighting
from controllers.lighting import SLOT_S, NightPlan
from devices.inventory import Inventory, Lamp
from edge.bus import EventBus
from edge.clock import ManualClock
from edge.dispatcher import Dispatcher
from edge.events import Availability, Command, Outcome, Priority, Telemetry
from edge.policy import Verdict
from edge.state import StateStore
from optimizer.lighting_model import DimmingPlan

T0 = 1_795_000_000.0
STALE_S = 120.0
LAMPS = [
    Lamp(id=f"L{i}", lat=51.5, lon=7.4, segment=f"s{i % 2}", order=i, lighting_class="M4", cabinet="cab1",
         feeder=f"f{i % 3}", flags=frozenset(), controller=f"c{i % 2}", host="127.0.0.1", port=1502, unit=1,
         index=i, p_max_w=100.0, p_min_w=10.0)
    for i in range(9)
]  # fmt: skip


class Plans:
    """A lighting controller holding a night plan: group s0 at 30 %, s1 at 60 %, then 20 %."""

    def __init__(self) -> None:
        levels = {"s0:M4:std": [30, 20], "s1:M4:std": [60, 20]}
        self.plan: NightPlan | None = NightPlan(
            T0 - 60, T0 + 2 * SLOT_S, [T0 - 60, T0 - 60 + SLOT_S], DimmingPlan.model_construct(), levels
        )


class Accept:
    def check(self, cmd: Command, now: float, view: object) -> Verdict:
        return Verdict(Outcome.ACCEPTED, cmd.value)


class Confirming:
    def handles(self, device_id: str) -> bool:
        return True

    async def write(self, device_id: str, point: str, value: float, timeout: float) -> float:  # noqa: ASYNC109 - the Driver seam
        return value


def rig() -> tuple[ManualClock, StateStore, Dispatcher, PlannedLighting, PlannedLighting]:
    """A followed (keeping) and an unfollowed (reference) load over the same lamps."""
    clock = ManualClock(T0)
    bus = EventBus()
    state = StateStore(bus, {"c0": "controller", "c1": "controller", **{lamp.id: "lamp" for lamp in LAMPS}})
    disp = Dispatcher(
        bus=bus, clock=clock, state=state, drivers=[Confirming()], policies={"lamp": Accept()}, audit=lambda _r: None
    )  # fmt: skip
    inv, plans = Inventory.build(LAMPS), Plans()
    kept = PlannedLighting(inv, plans, clock, STALE_S)
    kept.follow(state, disp)
    fresh = PlannedLighting(inv, plans, clock, STALE_S)
    for lamp in LAMPS:
        state.apply(Telemetry(lamp.id, T0, {"power_w": 20.0}))
    return clock, state, disp, kept, fresh


steps = st.lists(
    st.one_of(
        st.tuples(st.just("command"), st.integers(0, 8), st.integers(0, 100)),
        st.tuples(st.just("power"), st.integers(0, 8), st.floats(0, 130)),
        st.tuples(st.just("energy"), st.integers(0, 8), st.floats(0, 5)),
        st.tuples(st.just("offline"), st.integers(0, 1), st.booleans()),
        st.tuples(st.just("wait"), st.integers(0, 0), st.floats(0.1, 200)),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_kept_load_is_never_below_a_fresh_count(ops: list[tuple[str, int, object]]) -> None:
    clock, state, disp, kept, fresh = rig()
    n = 0
    for op, i, arg in ops:
        now = clock.now()
        if op == "command":
            n += 1
            disp.submit(
                Command(f"k{n}", f"L{i}", "level_cmd", float(arg), Priority.OPERATOR, "op", now, now + 60)
            )  # type: ignore[arg-type]
        elif op in ("power", "energy"):
            key = "power_w" if op == "power" else "energy_kwh"
            state.apply(Telemetry(f"L{i}", now, {key: arg}))  # type: ignore[dict-item]
        elif op == "offline":
            ids = tuple(x.id for x in LAMPS if x.controller == f"c{i}")
            state.apply(Availability(f"c{i}", ids, bool(arg), now))
        else:
            clock.advance(float(arg))  # type: ignore[arg-type]
        now = clock.now()
        for f in ("f0", "f1", "f2"):
            assert kept.amps(f, now, disp.view) >= fresh.amps(f, now, disp.view) - 1e-9, (op, i, arg, f)
    clock.advance(MAX_AGE_S)
    now = clock.now()
    for f in ("f0", "f1", "f2"):
        assert abs(kept.amps(f, now, disp.view) - fresh.amps(f, now, disp.view)) < 1e-9


def test_rises_count_at_once_and_unrelated_readings_reuse_the_kept_load() -> None:
    _, state, disp, kept, fresh = rig()
    before = kept.amps("f0", T0, disp.view)
    counts = kept.recounts
    for _ in range(5):  # the energy counter moving, a reading as before: nothing to count again
        state.apply(Telemetry("L0", T0, {"energy_kwh": 1.0 + _}))
        assert kept.amps("f0", T0, disp.view) == before
    assert kept.recounts == counts
    disp.submit(Command("up", "L0", "level_cmd", 100.0, Priority.OPERATOR, "op", T0, T0 + 60))
    assert kept.amps("f0", T0, disp.view) == fresh.amps("f0", T0, disp.view) > before
    state.apply(Telemetry("L3", T0, {"power_w": 125.0}))  # a lamp drawing over its rating
    assert kept.amps("f0", T0, disp.view) == fresh.amps("f0", T0, disp.view)
    state.apply(Availability("c1", ("L3", "L1"), False, T0))  # its controller gone: full power
    assert kept.amps("f0", T0, disp.view) == fresh.amps("f0", T0, disp.view)


def test_a_reading_that_goes_stale_counts_at_full_power_when_it_does() -> None:
    """Readings taken at T0 go stale at T0 + 120 s: the load kept just before is not reused."""
    clock, _, disp, kept, fresh = rig()
    clock.advance(STALE_S - 1)
    before = kept.amps("f1", clock.now(), disp.view)
    clock.advance(2)
    after = kept.amps("f1", clock.now(), disp.view)
    assert after == fresh.amps("f1", clock.now(), disp.view) > before
