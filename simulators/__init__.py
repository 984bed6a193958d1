"""DOS Edge: simulators package.

Every simulator that takes faults at run time over MQTT listens on `fault_topic(domain)`,
where `domain` is its `edge simulate` command name (lights, chargers, displays, waste), so
the topic a user reads in docs/devices.md is the one the command serves.
"""

SIM_TOPIC_PREFIX = "dos/sim"
MIN_REAL_TICK_S = 0.05  # physics never ticks faster than this in real time, whatever the clock speed


def fault_topic(domain: str) -> str:
    """The MQTT topic a simulator of `domain` (`edge simulate {domain}`) takes faults on."""
    return f"{SIM_TOPIC_PREFIX}/{domain}/faults"
