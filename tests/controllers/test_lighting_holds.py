"""Lamps held at full by several holders: the longest-lasting one is the command, and a lamp
falls to its plan only when nobody holds it any more."""

from __future__ import annotations

from controllers.lighting_holds import FullHolds
from edge.clock import ManualClock

T0 = 1_800_000_000.0
WEEK = 7 * 86400.0


class Rig:
    def __init__(self) -> None:
        self.clock = ManualClock(T0)
        self.sent: list[tuple[str, str, float]] = []  # (lamp, source, hold_s) submitted
        self.released: list[tuple[str, str]] = []
        self.holds = FullHolds(
            lambda lamp, src, hold_s, reason: self.sent.append((lamp, src, hold_s)),
            lambda lamp, src: self.released.append((lamp, src)) is None,
            self.clock,
        )


def test_a_cyclist_passing_an_open_call_does_not_end_it() -> None:
    r = Rig()
    r.holds.hold("L1", "helppoint:inc-1", WEEK, "help_call")
    r.holds.hold("L1", "motion", 120, "motion")  # shorter: the call's command stays
    assert r.sent == [("L1", "helppoint:inc-1", WEEK)]
    r.clock.advance(200)  # the motion hold has ended; the call's has not
    assert r.holds.holders("L1") == {"helppoint:inc-1": T0 + WEEK}
    assert r.holds.let_go("L1", "helppoint:inc-1")
    assert r.released == [("L1", "helppoint:inc-1")]


def test_a_warning_withdrawn_over_a_call_leaves_the_lamp_up_and_the_call_closed_under_a_warning_too() -> None:
    r = Rig()
    r.holds.hold("L1", "warning:flood", 3600, "warning")
    r.holds.hold("L1", "helppoint:inc-1", WEEK, "help_call")  # lasts longer: it takes the command
    assert [s for _, s, _ in r.sent] == ["warning:flood", "helppoint:inc-1"]
    r.holds.let_go("L1", "warning:flood")
    assert r.released == []  # the call still holds it
    r.clock.advance(600)
    r.holds.hold("L1", "warning:storm", 3600, "warning")  # shorter than the call: nothing sent
    assert len(r.sent) == 2
    r.holds.let_go("L1", "helppoint:inc-1")  # the call closes under the storm warning
    assert r.sent[-1] == ("L1", "warning:storm", 3600)  # the warning holds it again, to its end
    assert r.released == []
    r.holds.let_go("L1", "warning:storm")
    assert r.released == [("L1", "warning:storm")]
    assert r.holds.holders("L1") == {}


def test_two_calls_share_a_lamp_and_only_the_last_close_lets_it_go() -> None:
    r = Rig()
    r.holds.hold("L2", "helppoint:inc-1", WEEK, "help_call")
    r.clock.advance(10)
    r.holds.hold("L2", "helppoint:inc-2", WEEK, "help_call")
    assert not r.holds.let_go("L2", "helppoint:inc-9")  # not a holder: nothing happens
    r.holds.let_go("L2", "helppoint:inc-2")
    assert r.sent[-1][1] == "helppoint:inc-1"  # the first call holds it again
    assert r.released == []
    r.holds.let_go("L2", "helppoint:inc-1")
    assert r.released == [("L2", "helppoint:inc-1")]
