"""The site's domains, in build order: each module's `kinds` (the devices it configures) and `build`.

The daemon loops over `BUILDS`; a later build may use what an earlier one returned
(charging and displays read the lighting plan, the LoRaWAN ingest feeds bay sensors to
displays and late uplinks to waste).
"""

from __future__ import annotations

from devices.inventory import Bin, Inventory
from edge.alarms import DAEMON_DEVICE
from edge.app.domains import charging, displays, environment, helppoints, lighting, lorawan, waste
from edge.app.domains.base import DomainSpec, Site, site_bins, wait_ready
from edge.kernel import Domain, Kernel
from edge.settings import Settings

__all__ = ["BUILDS", "DomainSpec", "Site", "build_all", "device_kinds", "site_bins", "wait_ready"]

BUILDS: tuple[DomainSpec, ...] = (
    DomainSpec("lighting", lighting.kinds, lighting.build),
    DomainSpec("charging", charging.kinds, charging.build),
    DomainSpec("displays", displays.kinds, displays.build),
    DomainSpec("waste", waste.kinds, waste.build),
    DomainSpec("helppoints", helppoints.kinds, helppoints.build),
    DomainSpec("environment", environment.kinds, environment.build),
    DomainSpec("lorawan", lorawan.kinds, lorawan.build),
)


def device_kinds(settings: Settings, inventory: Inventory, bins: list[Bin]) -> dict[str, str]:
    """Every device the site configures, by id, with its kind: what the domains register.

    One list for every domain, so that telemetry, availability and alarms about a configured
    device (a feeder near its limit, a car park whose count is stale) always find it; only
    ids no configuration names are unknown.
    """
    kinds: dict[str, str] = {}
    for spec in BUILDS:
        kinds |= spec.kinds(settings, inventory, bins)
    kinds[DAEMON_DEVICE] = "daemon"  # storage alarms (unreachable, backlog, dead letters)
    return kinds


async def build_all(kernel: Kernel, site: Site) -> dict[str, Domain]:
    """Build every domain the site has, in order; returns them by name."""
    for spec in BUILDS:
        dom = await spec.build(kernel, site)
        if dom is not None:
            site.built[spec.name] = dom
    return site.built
