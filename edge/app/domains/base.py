"""What every domain's `build` shares: the site beyond the kernel, and a few helpers.

`build(kernel, site)` registers its devices with the state store and its drivers and safety
policies with the dispatcher (all before anything starts), and returns a `Domain` (or None
when the site does not have it). A domain that needs another reads what that one's build
returned, from `site.built`: builds run in `BUILDS` order, so charging sees lighting, and
the LoRaWAN ingest sees displays and waste.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from devices.inventory import Bin, Inventory, load_bins
from devices.protocols.mqtt import MqttDriver
from edge.kernel import Domain, Kernel
from edge.settings import Settings

__all__ = ["Build", "DomainSpec", "Site", "controller", "site_bins", "wait_ready"]

T = TypeVar("T")


@dataclass(slots=True)
class Site:
    """The site beyond the kernel: its inventories, the domains built so far (by name), and the
    services fed by a broker (field inputs, uplinks) the daemon waits for before going online."""

    inventory: Inventory
    bins: list[Bin]
    built: dict[str, Domain] = field(default_factory=dict)
    ready: list[MqttDriver] = field(default_factory=list)


Build = Callable[[Kernel, Site], Awaitable[Domain | None]]
Kinds = Callable[[Settings, Inventory, list[Bin]], dict[str, str]]


@dataclass(frozen=True, slots=True)
class DomainSpec:
    """A domain as the daemon sees it: its name, the device kinds it configures, its build."""

    name: str
    kinds: Kinds
    build: Build


def controller(built: Mapping[str, Domain], domain: str, cls: type[T]) -> T | None:
    """The controller of type `cls` that `domain`'s build returned (None if it was not built)."""
    dom = built.get(domain)
    found = [c for c in dom.controllers if isinstance(c, cls)] if dom is not None else []
    return found[0] if found else None


async def wait_ready(services: Sequence[MqttDriver], timeout_s: float = 10.0) -> None:
    """Wait (bounded, all at once) until the broker-fed services have subscribed, so a message
    sent right after the daemon is up is not missed; a broker that is down is retried behind."""

    async def one(service: MqttDriver) -> None:
        with contextlib.suppress(TimeoutError):
            await service.wait_connected(timeout_s)

    await asyncio.gather(*(one(s) for s in services))


def site_bins(settings: Settings) -> list[Bin]:
    """The site's bin inventory ([waste] bins), empty when the site has no waste domain."""
    path = settings.bins_path()
    if path is None:
        return []
    return load_bins(path, [z.id for z in settings.waste.zones])


def base_topic(settings: Settings) -> str:
    """`{prefix}/{site}`: the root of the site's topics on the site broker."""
    return f"{settings.mqtt.topic_prefix}/{settings.site.id}"
