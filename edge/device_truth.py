"""What the device reports, against the command in force: the dispatcher's two questions.

`in_force`: may a command be confirmed without a write (the device reports its value already)?
`drifted`: must a confirmed command be written again (the device reports something else, or sits
in its fail-safe)? Both read only the state store's `DeviceState`, so they are pure and small.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

from edge.events import Command
from edge.state import DeviceState

__all__ = ["FAILSAFE_POINT", "IN_FORCE", "READBACK_TOLERANCE", "drifted", "in_force", "reconcile_copy"]

IN_FORCE = "in force already: the device reports this value"  # a confirmation without a write
FAILSAFE_POINT = "failsafe_active"
"""A device reporting this point true fell to its fail-safe (its watchdog expired) and holds it
until it is written again, even where the fail-safe value equals the command's: its commands
are written, never taken as in force, and the reconcile re-writes them."""
READBACK_TOLERANCE = 0.5  # a read-back this close to the command confirms it


def in_force(written: float | None, cmd: Command, dev: DeviceState | None) -> bool:
    """Whether `cmd` asks for the value last confirmed by read-back (`written`), which the device
    (online, not in its fail-safe) still reports: a lease refresh or a plan re-sent unchanged
    needs no write. A city's charge points re-sent every lease were 680 writes every 40 s, and an
    operator's command waited behind them."""
    if cmd.payload or written is None or not math.isclose(written, cmd.value, abs_tol=READBACK_TOLERANCE):
        return False
    if dev is None or dev.online is not True or dev.values.get(FAILSAFE_POINT):
        return False
    reported = dev.values.get(cmd.point)
    return isinstance(reported, int | float) and math.isclose(reported, cmd.value, abs_tol=READBACK_TOLERANCE)


def drifted(cmd: Command, dev: DeviceState | None) -> bool:
    """Whether the device reports another value than the confirmed `cmd` (a reboot, a local panel)
    or sits in its fail-safe: then the command is written again."""
    reported = None if dev is None else dev.values.get(cmd.point)
    if not isinstance(reported, int | float):
        return False  # nothing reported (yet): no evidence of drift
    failsafe = bool(dev is not None and dev.values.get(FAILSAFE_POINT))
    return failsafe or not math.isclose(reported, cmd.value, abs_tol=READBACK_TOLERANCE)


def reconcile_copy(cmd: Command, now: float, counter: itertools.count[int]) -> Command:
    """The command that re-writes `cmd`, with a fresh time to live. Its id suffixes the original
    id, not the last re-write's: a device that keeps drifting must not grow the id past the
    audit column (64 characters)."""
    return replace(
        cmd,
        id=f"{cmd.id.split('.r', 1)[0]}.r{next(counter)}",
        issued_at=now,
        expires_at=now + max(60.0, cmd.expires_at - cmd.issued_at),
        reason="reconcile",
    )
