"""DOS Edge: simulators package.

Every simulator that takes faults at run time over MQTT listens on `fault_topic(domain)`,
where `domain` is its `edge simulate` command name (lights, chargers, displays, waste), so
the topic a user reads in docs/devices.md is the one the command serves.
"""

SIM_TOPIC_PREFIX = "dos/sim"


def fault_topic(domain: str) -> str:
    """The MQTT topic a simulator of `domain` (`edge simulate {domain}`) takes faults on."""
    return f"{SIM_TOPIC_PREFIX}/{domain}/faults"
