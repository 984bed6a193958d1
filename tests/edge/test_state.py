"""The state store folds a confirmed write's read-back into the device's values."""

from __future__ import annotations

from edge.bus import EventBus
from edge.events import Command, CommandResult, Outcome, Priority, StateChanged, Telemetry
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

    state.apply(CommandResult(_cmd("sign-1", "content", 7), Outcome.CONFIRMED, 7.0, "", 103.0))
    assert state.value("sign-1", "content") == "Frei 120"
