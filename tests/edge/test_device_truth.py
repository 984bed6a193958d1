"""The dispatcher's device-truth rules: when a command needs no write, and when a confirmed one
must be written again."""

from __future__ import annotations

import itertools

from edge.device_truth import FAILSAFE_POINT, drifted, in_force, reconcile_copy
from edge.events import Command, Priority
from edge.state import DeviceState, Values

NOW = 1_795_000_000.0


def cmd(value: float, *, payload: str = "") -> Command:
    return Command(
        "plan-1", "CP1", "current_limit_a", value, Priority.PLAN, "plan", NOW, NOW + 40, payload=payload
    )


def dev(online: bool | None = True, **values: float | bool) -> DeviceState:
    return DeviceState("CP1", "charger", online=online, values=Values.of(values))


def test_a_value_confirmed_and_still_reported_is_in_force() -> None:
    assert in_force(16.0, cmd(16.0), dev(current_limit_a=16.0))
    assert in_force(16.0, cmd(16.2), dev(current_limit_a=16.0))  # within the read-back tolerance


def test_anything_else_is_written() -> None:
    assert not in_force(None, cmd(16.0), dev(current_limit_a=16.0))  # never confirmed by read-back
    assert not in_force(10.0, cmd(16.0), dev(current_limit_a=16.0))  # confirmed at another value
    assert not in_force(16.0, cmd(16.0), dev(current_limit_a=6.0))  # the device drifted
    assert not in_force(16.0, cmd(16.0), dev(online=None, current_limit_a=16.0))  # not known online
    assert not in_force(16.0, cmd(16.0), dev(online=False, current_limit_a=16.0))
    assert not in_force(16.0, cmd(16.0), None)  # an unknown device
    assert not in_force(16.0, cmd(16.0), dev())  # nothing reported
    assert not in_force(16.0, cmd(16.0, payload='{"m": 1}'), dev(current_limit_a=16.0))  # structured


def test_a_device_in_its_failsafe_is_never_in_force_and_always_drifted() -> None:
    """A charger's fail-safe current may equal the setpoint; it still waits for a write."""
    failsafe = dev(current_limit_a=6.0, **{FAILSAFE_POINT: True})
    assert not in_force(6.0, cmd(6.0), failsafe)
    assert drifted(cmd(6.0), failsafe)


def test_drift_needs_evidence() -> None:
    assert drifted(cmd(16.0), dev(current_limit_a=6.0))
    assert not drifted(cmd(16.0), dev(current_limit_a=16.4))
    assert not drifted(cmd(16.0), dev())  # nothing reported yet
    assert not drifted(cmd(16.0), None)


def test_reconcile_copies_keep_the_original_id_and_a_fresh_ttl() -> None:
    counter = itertools.count()
    first = reconcile_copy(cmd(16.0), NOW + 100, counter)
    second = reconcile_copy(first, NOW + 200, counter)
    assert (first.id, second.id) == ("plan-1.r0", "plan-1.r1")
    assert second.expires_at == NOW + 200 + 60  # at least a minute to be written
    assert second.reason == "reconcile"
    assert second.value == 16.0
