"""The state store folds a confirmed write's read-back into the device's values."""

from __future__ import annotations

from dataclasses import replace

from edge.bus import EventBus
from edge.events import (
    AlarmEvent,
    Command,
    CommandResult,
    Outcome,
    Priority,
    Severity,
    StateChanged,
    Telemetry,
)
from edge.state import StateStore


def _cmd(device_id: str, point: str, value: float) -> Command:
    return Command("c-1", device_id, point, value, Priority.OPERATOR, "operator", 100.0, 200.0, None)


def test_a_confirmed_write_shows_its_read_back_at_once() -> None:
    """The level an operator set is in the state when the write is confirmed (read back from
    the device), not a poll interval later; a failed write changes no value; a point whose
    state is not a number (a display's content) keeps what the device last reported."""
    bus = EventBus()
    changes = bus.subscribe("test", StateChanged)
    state = StateStore(bus, {"lamp-1": "lamp", "sign-1": "display"})
    state.apply(Telemetry("lamp-1", 100.0, {"level_cmd": 10, "level_actual": 10}))
    state.apply(Telemetry("sign-1", 100.0, {"content": "Frei 120"}))
    while changes.get_nowait() is not None:
        pass

    state.apply(CommandResult(_cmd("lamp-1", "level_cmd", 60), Outcome.FAILED, None, "timeout", 101.0))
    assert state.value("lamp-1", "level_cmd") == 10

    state.apply(CommandResult(_cmd("lamp-1", "level_cmd", 40), Outcome.CONFIRMED, 40.0, "", 102.0))
    level = state.value("lamp-1", "level_cmd")
    assert level == 40
    assert isinstance(level, int)  # the type the polls report
    assert state.value("lamp-1", "level_actual") == 10  # what the lamp does is the poll's to say
    ev = changes.get_nowait()
    assert isinstance(ev, StateChanged)
    assert ev.changed == {"last_command": "operator", "level_cmd": 40}

    # The same value confirmed again by the same source changes nothing and announces nothing;
    # another source at the same value is a change of who commands the lamp.
    state.apply(CommandResult(_cmd("lamp-1", "level_cmd", 40), Outcome.CONFIRMED, 40.0, "", 102.5))
    assert changes.get_nowait() is None
    plan = replace(_cmd("lamp-1", "level_cmd", 40), source="plan", priority=Priority.PLAN)
    state.apply(CommandResult(plan, Outcome.CONFIRMED, 40.0, "", 102.6))
    ev = changes.get_nowait()
    assert isinstance(ev, StateChanged)
    assert ev.changed == {"last_command": "plan"}

    state.apply(CommandResult(_cmd("sign-1", "content", 7), Outcome.CONFIRMED, 7.0, "", 103.0))
    assert state.value("sign-1", "content") == "Frei 120"


def test_an_alarm_changes_the_state_when_its_set_of_codes_changes() -> None:
    """A device's alarms are a set: raising one that is active, or clearing one that is not,
    announces nothing (every re-raise republished the device's retained state)."""
    bus = EventBus()
    changes = bus.subscribe("test", StateChanged)
    state = StateStore(bus, {"lamp-1": "lamp"})

    def raised(code: str, active: bool, ts: float) -> list[object]:
        state.apply(AlarmEvent("lamp-1", code, Severity.WARNING, active, ts))
        out: list[object] = []
        while (ev := changes.get_nowait()) is not None:
            out.append(ev)
        return out

    first = raised("lamp_failure", True, 1.0)
    assert [e.changed for e in first if isinstance(e, StateChanged)] == [{"alarms": "lamp_failure"}]
    assert raised("lamp_failure", True, 2.0) == []
    assert [e.changed for e in raised("power_high", True, 3.0) if isinstance(e, StateChanged)] == [
        {"alarms": "lamp_failure,power_high"}
    ]
    assert raised("comm_loss", False, 4.0) == []
    cleared = raised("lamp_failure", False, 5.0)
    assert [e.changed for e in cleared if isinstance(e, StateChanged)] == [{"alarms": "power_high"}]
