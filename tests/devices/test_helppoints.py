"""Help-point driver against the real lamp and help-point simulators over Modbus TCP on 127.0.0.1.

A press reaches the driver's telemetry within a poll, a press shorter than a poll still counts
through `press_count`, unchanged values wait for `report_every_s`, a silent controller takes its
help points offline (and back), and the reads are planned within Modbus's 125-register limit.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest
from waiting import Recorder

from devices.helppoints import HelpPointDriver, HelpPointEndpoint, plan_spans
from devices.profiles.helppoints import DEFAULT_PATH, HelpPointProfile, default_profile, parse_profile
from devices.profiles.modbus_map import MODBUS_MAX_READ
from edge.clock import ManualClock
from edge.events import Availability
from edge.tomlfile import read_toml
from simulators.helppoints import HelpPointSimulator, SimHelpPoint, block_ranges
from simulators.lighting import LightingSimulator, SimController, SimLamp

START = 1_795_000_000.0
CTL = "lc-1"
LINK = f"{CTL}:helppoints"  # the endpoint the driver's Availability names
REPORT_EVERY_S = 60.0
PRESS_WITHIN_S = 1.0  # the driver's promise: a press reaches the operator within a second


@dataclass
class Rig:
    lights: LightingSimulator
    sim: HelpPointSimulator
    driver: HelpPointDriver
    clock: ManualClock
    rec: Recorder


def wide_profile(stride: int = 60) -> HelpPointProfile:
    """The shipped block with slots `stride` registers apart (so a few slots exceed one read)."""
    data = read_toml(DEFAULT_PATH)
    data["block"] = {**data["block"], "stride": stride, "max_points": 8}
    return parse_profile(data, "wide")


@contextlib.asynccontextmanager
async def rig(
    slots: Sequence[tuple[int, str]] = ((0, "HP-A"), (1, "HP-B")),
    *,
    press_hold_s: float = 5.0,
    poll_s: float = 0.05,
    profile: HelpPointProfile | None = None,
) -> AsyncIterator[Rig]:
    """A lamp controller serving help points in `slots`, the simulator pressing them, the driver
    polling them; yields once every help point has reported."""
    clock = ManualClock(START)
    rec = Recorder(wait_s=3.0)
    points = [SimHelpPoint(hp, CTL, slot) for slot, hp in slots]
    extra = block_ranges(points, profile)[CTL]
    ctl = SimController(CTL, "127.0.0.1", 0, 1, (SimLamp(f"{CTL}-001", 0),), extra=extra)
    async with (
        LightingSimulator([ctl], clock, seed=1) as lights,
        HelpPointSimulator(points, lights, clock, profile=profile, press_hold_s=press_hold_s) as sim,
    ):
        ep = lights.endpoints()[0]
        hep = HelpPointEndpoint(CTL, ep.host, ep.port, ep.unit, tuple(slots))
        driver = HelpPointDriver(
            [hep], rec, clock, profile=profile, poll_interval_s=poll_s, timeout_s=0.5, backoff_max_s=0.2,
            report_every_s=REPORT_EVERY_S,
        )  # fmt: skip
        async with driver:
            await rec.wait(lambda: all(rec.latest(hp) for _, hp in slots), "every help point's first reading")
            yield Rig(lights, sim, driver, clock, rec)


def pressed_readings(r: Rig, hp: str) -> list[tuple[bool, int]]:
    return [(t.values["pressed"] is True, int(t.values["press_count"])) for t in r.rec.telemetry(hp)]


async def test_a_press_shows_up_within_the_poll() -> None:
    """A press is Telemetry with pressed true and press_count one up, well within a second."""
    async with rig() as r:
        first = r.rec.latest("HP-A")
        assert first is not None
        assert first.values["pressed"] is False
        assert first.values["press_count"] == 0
        assert r.driver.online(CTL) is True
        r.sim.press("HP-A")
        await r.rec.wait(
            lambda: (t := r.rec.latest("HP-A")) is not None and t.values["pressed"] is True,
            "the press in the driver's telemetry",
            timeout_s=PRESS_WITHIN_S,
        )
        latest = r.rec.latest("HP-A")
        assert latest is not None
        assert latest.values["press_count"] == 1
        assert dict(latest.values) == dict(r.sim.values("HP-A"))
        assert pressed_readings(r, "HP-B") == [(False, 0)]  # the neighbour in slot 1 is not pressed


async def test_a_press_shorter_than_a_poll_still_counts() -> None:
    """The latch falls before the next poll: the press shows only in press_count, and is seen."""
    async with rig(press_hold_s=0.0, poll_s=1.0) as r:
        # a periodic report marks the end of a poll (the read counter moves before the reply)
        r.clock.advance(REPORT_EVERY_S)
        await r.rec.wait(lambda: len(r.rec.telemetry("HP-A")) == 2, "a poll's periodic report")
        r.sim.press("HP-A")  # the next poll is about a second away
        await r.rec.wait(lambda: r.sim.values("HP-A")["pressed"] is False, "the latch to fall", timeout_s=0.5)
        await r.rec.wait(
            lambda: (t := r.rec.latest("HP-A")) is not None and t.values["press_count"] == 1,
            "the press counted in the driver's telemetry",
        )
        assert pressed_readings(r, "HP-A") == [(False, 0), (False, 0), (False, 1)]  # never seen held


async def test_unchanged_values_wait_for_report_every_s() -> None:
    """Polls that read the same block publish nothing until report_every_s clock seconds passed."""
    async with rig() as r:
        assert len(r.rec.telemetry("HP-A")) == 1
        reads = r.driver.stats.reads
        await r.rec.wait(lambda: r.driver.stats.reads >= reads + 10, "ten more polls")
        assert len(r.rec.telemetry("HP-A")) == 1
        assert len(r.rec.telemetry("HP-B")) == 1
        r.clock.advance(REPORT_EVERY_S - 1)
        reads = r.driver.stats.reads
        await r.rec.wait(lambda: r.driver.stats.reads >= reads + 5, "five more polls")
        assert len(r.rec.telemetry("HP-A")) == 1
        r.clock.advance(1)
        await r.rec.wait(lambda: len(r.rec.telemetry("HP-A")) == 2, "the periodic report")
        old, new = r.rec.telemetry("HP-A")
        assert new.values == old.values
        assert new.ts - old.ts == REPORT_EVERY_S


async def test_controller_comm_loss_takes_its_help_points_offline_and_back() -> None:
    """A silent lamp controller: Availability offline for its help points; recovery: online."""
    async with rig() as r:
        assert r.rec.availability(LINK) == [True]
        r.lights.inject(CTL, "comm_loss")
        await r.rec.wait(lambda: r.rec.availability(LINK) == [True, False], "the help points offline")
        down = [e for e in r.rec.events if isinstance(e, Availability) and not e.online]
        assert len(down) == 1
        assert down[0].device_ids == ("HP-A", "HP-B")
        assert down[0].reason  # says why, for the "help point unavailable" alarm
        assert r.driver.online(CTL) is False
        r.lights.clear(CTL, "comm_loss")
        await r.rec.wait(lambda: r.rec.availability(LINK) == [True, False, True], "the help points online")
        assert r.driver.online(CTL) is True
        r.sim.press("HP-B")  # and presses come through again
        await r.rec.wait(
            lambda: (t := r.rec.latest("HP-B")) is not None and t.values["pressed"] is True,
            "a press after the recovery",
            timeout_s=PRESS_WITHIN_S,
        )


def test_plan_spans_keeps_every_block_within_one_read() -> None:
    """Blocks coalesce while the read stays within 125 registers; each point's offset is its block."""
    profile = default_profile()
    every = [(slot, f"HP{slot}") for slot in reversed(range(profile.max_points))]
    (only,) = plan_spans(profile, every)  # the shipped 16 x 8-register map fits one read
    assert only.address == profile.base(0)
    assert only.count == profile.base(15) + profile.block.span - profile.base(0) <= MODBUS_MAX_READ
    assert only.points == tuple((profile.base(s) - profile.base(0), f"HP{s}") for s in range(16))

    wide = wide_profile(60)
    spans = plan_spans(wide, [(3, "D"), (0, "A"), (2, "C"), (1, "B"), (7, "H")])
    assert [(s.address, s.count) for s in spans] == [(4000, 124), (4180, 4), (4420, 4)]
    assert [s.points for s in spans] == [((0, "A"), (60, "B"), (120, "C")), ((0, "D"),), ((0, "H"),)]
    for s in spans:
        assert s.count <= MODBUS_MAX_READ
        for off, hp in s.points:
            slot = "ABCDEFGH".index(hp)
            assert s.address + off == wide.base(slot)
            assert off + wide.block.span <= s.count
    assert plan_spans(wide, []) == []


async def test_help_points_across_several_reads_each_report_their_own_block() -> None:
    """Over TCP with a map of two reads: a press on each slot reaches the right help point."""
    wide = wide_profile(60)
    slots = ((0, "HP-A"), (1, "HP-B"), (2, "HP-C"), (3, "HP-D"))
    assert len(plan_spans(wide, slots)) == 2
    async with rig(slots, profile=wide) as r:
        for n, (_, hp) in enumerate(slots):
            for _ in range(n + 1):  # press_count tells the help points apart
                r.sim.press(hp)
        await r.rec.wait(
            lambda: all(r.rec.value(hp, "press_count") == n + 1 for n, (_, hp) in enumerate(slots)),
            "every help point's own count",
        )
        for _, hp in slots:
            latest = r.rec.latest(hp)
            assert latest is not None
            assert dict(latest.values) == dict(r.sim.values(hp))
        assert r.driver.stats.read_errors == 0


@pytest.mark.parametrize(
    ("points", "match"),
    [
        ([(16, "HP-A")], "slot 16 outside 0..15"),
        ([(-1, "HP-A")], "slot -1"),
        ([(0, "HP-A"), (1, "HP-A")], "appears twice"),
    ],
)
def test_bad_points_are_refused_at_construction(points: list[tuple[int, str]], match: str) -> None:
    """A slot the map cannot hold or a help point listed twice fails now, not at the first poll."""
    ep = HelpPointEndpoint(CTL, "127.0.0.1", 1, 1, tuple(points))
    with pytest.raises(ValueError, match=match):
        HelpPointDriver([ep], Recorder(), ManualClock(START))


def test_a_poll_interval_must_be_positive() -> None:
    ep = HelpPointEndpoint(CTL, "127.0.0.1", 1, 1, ((0, "HP-A"),))
    with pytest.raises(ValueError, match="poll_interval_s"):
        HelpPointDriver([ep], Recorder(), ManualClock(START), poll_interval_s=0)


async def test_help_points_in_non_adjacent_slots_are_polled() -> None:
    """A controller with help points in slots 0 and 2 (slot 1 empty) reports both."""
    async with rig(((0, "HP-A"), (2, "HP-C"))) as r:
        r.sim.press("HP-C")
        await r.rec.wait(lambda: r.rec.value("HP-C", "pressed") is True, "the press on slot 2")
