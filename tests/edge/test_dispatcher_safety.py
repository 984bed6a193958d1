"""Regressions from the safety review: checks that must hold at the moment of every write.

The device side is a recording stand-in: what matters is which values the dispatcher
sends, and these cases are about the order of checks and writes, not about a protocol.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from waiting import wait_until

from controllers.charging import POINT, ChargingSafety
from controllers.lighting import LightingSafety
from devices.inventory import Charger, Inventory, Lamp
from edge.bus import EventBus
from edge.clock import ManualClock
from edge.dispatcher import AuditRecord, Dispatcher, make_command
from edge.events import Outcome, Priority, Telemetry
from edge.policy import DispatcherView
from edge.settings import CabinetSettings, ChargingSettings, FeederSettings, LightingSettings, SiteSettings
from edge.state import StateStore

TZ = ZoneInfo("Europe/Berlin")
NOON = datetime(2026, 11, 26, 12, tzinfo=TZ).timestamp()


class Recording:
    """Applies every write at once and remembers the last value per device."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self.history: list[dict[str, float]] = []

    def handles(self, device_id: str) -> bool:
        return True

    async def write(self, device_id: str, point: str, value: float, timeout: float) -> float:  # noqa: ASYNC109
        self.last[device_id] = value
        self.history.append(dict(self.last))
        return value


async def test_daytime_override_under_a_floor_does_not_hold_into_the_night() -> None:
    """An operator may turn a never-dim lamp off by day; when night starts the floor wins again."""
    clock = ManualClock(NOON)
    lamp = Lamp(
        "J1", 51.51, 7.45, "main", 0, "M3", "", "", frozenset({"never_dim"}), "c", "h", 1, 1, 0, 70, 7
    )
    inv = Inventory.build([lamp])
    bus = EventBus()
    state = StateStore(bus, {"J1": "lamp"})
    safety = LightingSafety(inv, SiteSettings(), LightingSettings())
    dev = Recording()
    async with Dispatcher(
        bus=bus, clock=clock, state=state, drivers=[dev], policies={"lamp": safety}, audit=lambda _r: None
    ) as disp:
        op = make_command("J1", "level_cmd", 0, Priority.OPERATOR, "operator:x", now=NOON, ttl_s=60)
        assert (await disp.submit_and_wait(op, 3)).outcome.value == "confirmed"
        disp.submit(make_command("J1", "level_cmd", 100, Priority.PLAN, "plan", now=NOON, ttl_s=60))
        assert dev.last["J1"] == 0
        clock.advance(11 * 3600)  # 23:00: the lamp must be at its floor
        assert await disp.recheck_all() == 1
        await wait_until(lambda: dev.last["J1"] == 100, what="the floor restored at night")
        eff = disp.effective("J1", "level_cmd")
        assert eff is not None
        assert eff.priority is Priority.PLAN


class _NoLamps:
    """No lamps on the feeder, and its circuit always live."""

    def amps(self, feeder: str, t: float, view: DispatcherView) -> float:
        return 0.0

    def live(self, feeder: str, t: float) -> bool:
        return True


async def test_a_layer_that_surfaces_after_a_hold_is_checked_before_it_is_written() -> None:
    """A plan setpoint hidden under an operator pause may no longer fit when the pause ends."""
    clock = ManualClock(NOON)
    chargers = [
        Charger(f"cp{i}", 51.5, 7.4, "", "cab", "f1", f"cp{i}", "s", "opc.tcp://x", 32, 3) for i in range(2)
    ]
    inv = Inventory(lamps={}).with_chargers(chargers)
    cfg = ChargingSettings(
        feeders=[FeederSettings(id="f1", cabinet="cab", limit_a=32)],
        cabinets=[CabinetSettings(id="cab", limit_a=99)],
    )
    bus = EventBus()
    state = StateStore(bus, {c.id: "charger" for c in chargers})
    safety = ChargingSafety(inv, cfg, lighting=_NoLamps(), lagging=lambda: False)
    for c in chargers:  # both answer and read back their fail-safe, as the OPC UA driver reports
        state.apply(Telemetry(c.id, NOON, {"failsafe_current_a": 0.0}))
    dev = Recording()
    audit: list[AuditRecord] = []
    async with Dispatcher(
        bus=bus, clock=clock, state=state, drivers=[dev], policies={"charger": safety}, audit=audit.append
    ) as disp:
        plan0 = make_command("cp0", POINT, 32, Priority.PLAN, "plan", now=NOON, ttl_s=60)
        await disp.submit_and_wait(plan0, 3)
        pause = make_command("cp0", POINT, 0, Priority.OPERATOR, "operator", now=NOON, ttl_s=60, hold_s=30)
        await disp.submit_and_wait(pause, 3)
        plan1 = make_command("cp1", POINT, 32, Priority.PLAN, "plan", now=NOON, ttl_s=60)
        await disp.submit_and_wait(plan1, 3)
        clock.advance(31)  # the pause ends: cp0's old 32 A plan surfaces
        # The surfacing layer is re-checked (clamped to what the feeder leaves) and its write confirmed.
        await wait_until(
            lambda: (
                disp.pending() == 0
                and any(
                    r.command.id == plan0.id and r.outcome is Outcome.CONFIRMED and r.ts > NOON for r in audit
                )
            ),
            what="the surfaced plan layer written",
        )
        assert any(r.command.id == plan0.id and r.outcome is Outcome.CLAMPED and r.ts > NOON for r in audit)
        for snapshot in dev.history:
            assert sum(snapshot.values()) <= 32 + 1e-9, snapshot
