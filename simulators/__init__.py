"""DOS Edge: simulators package.

Every simulator that takes faults at run time over MQTT listens on `fault_topic(domain)`,
where `domain` is its `edge simulate` command name (lights, chargers, displays, waste), so
the topic a user reads in docs/devices.md is the one the command serves.
"""

import gc
from collections.abc import Collection, Sequence

from edge.clock import Clock, SimClock, SystemClock

SIM_TOPIC_PREFIX = "dos/sim"
MIN_REAL_TICK_S = 0.05  # physics never ticks faster than this in real time, whatever the clock speed


def fault_topic(domain: str) -> str:
    """The MQTT topic a simulator of `domain` (`edge simulate {domain}`) takes faults on."""
    return f"{SIM_TOPIC_PREFIX}/{domain}/faults"


def parse_faults(items: Sequence[str], known: Collection[str]) -> list[tuple[str, str]]:
    """`edge simulate`'s "target:fault" strings as (target, fault); ValueError naming a bad one."""
    parsed: list[tuple[str, str]] = []
    for item in items:
        target, sep, fault = item.rpartition(":")
        if not sep or not target or fault not in known:
            raise ValueError(f"fault {item!r}: expected target:fault, fault one of {sorted(known)}")
        parsed.append((target, fault))
    return parsed


def sim_clock(speed: float, start: float | None) -> Clock:
    """The wall clock at speed 1 from now, else a `SimClock` from `start` (default: now).

    A daemon given the same start and speed shares the simulator's time.
    """
    if speed == 1.0 and start is None:
        return SystemClock()
    return SimClock(start=start if start is not None else SystemClock().now(), speed=speed)


def settle_heap() -> None:
    """For a process that serves simulated devices, once they are built: what it holds lives as
    long as it does, so it is frozen out of the garbage collector's sight. A full collection
    walked it all: a pause of ~100 ms in a process serving 27,000 lamps, during which none of its
    269 controllers answered (real controllers answer each on their own)."""
    gc.collect()
    gc.freeze()
