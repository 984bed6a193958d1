"""The help-points domain: emergency call buttons in lamp posts (Modbus blocks in the post's
lamp controller, or LoRaWAN buttons read by the shared ingest) and the incident controller."""

from __future__ import annotations

import asyncio

from controllers.displays import DisplayController
from controllers.displays import Warning as DisplayWarning
from controllers.helppoints import DOMAIN, SOURCE, HelpPointController, HelpPointSite
from controllers.lighting import LightingController
from devices.helppoints import HelpPointDriver, HelpPointEndpoint
from devices.inventory import Bin, Inventory
from devices.profiles.helppoints import default_profile
from edge.app.domains.base import Site, controller
from edge.app.routes import helppoints as helppoint_routes
from edge.app.routes.base import RouteKit
from edge.errors import ConfigError
from edge.kernel import Domain, Kernel
from edge.settings import Settings
from edge.storage import Storage

NOTICE_PREFIX = "helppoint-"  # a notice's warning id on the displays: NOTICE_PREFIX + incident id


def kinds(settings: Settings, inventory: Inventory, bins: list[Bin]) -> dict[str, str]:
    """The site's help points, and the links to the controllers of the Modbus ones."""
    cfg = settings.helppoints
    links = {f"{inventory.lamps[p.post].controller}:helppoints" for p in cfg.points
             if p.via == "modbus" and p.post in inventory.lamps}  # fmt: skip
    return {p.id: "helppoint" for p in cfg.points} | dict.fromkeys(links, "helppoint_link")


def sites_of(settings: Settings, inventory: Inventory) -> dict[str, HelpPointSite]:
    """Each help point's place and street, from its post (a lamp of the inventory)."""
    out: dict[str, HelpPointSite] = {}
    for p in settings.helppoints.points:
        lamp = inventory.lamps.get(p.post)
        if lamp is None:
            raise ConfigError(f"help point {p.id!r}: post {p.post!r} is not a lamp of the inventory",
                              key="helppoints.points")  # fmt: skip
        out[p.id] = HelpPointSite(p.id, p.post, lamp.lat, lamp.lon, lamp.segment)
    return out


def endpoints_of(settings: Settings, inventory: Inventory) -> list[HelpPointEndpoint]:
    """The lamp controllers that hold Modbus help points, with (slot, id) of each."""
    by_ctl: dict[str, list[tuple[int, str]]] = {}
    for p in settings.helppoints.points:
        if p.via == "modbus" and p.post in inventory.lamps:  # an unknown post: `sites_of` says so
            by_ctl.setdefault(inventory.lamps[p.post].controller, []).append((p.slot, p.id))
    eps = []
    for ctl_id, points in by_ctl.items():
        ctl = inventory.controllers[ctl_id]
        slots = [s for s, _ in points]
        if len(set(slots)) != len(slots):
            raise ConfigError(
                f"two help points of controller {ctl_id!r} share a slot", key="helppoints.points"
            )
        top = default_profile().max_points
        if bad := [hp for s, hp in points if s >= top]:
            raise ConfigError(f"help points {bad}: slot outside 0..{top - 1} (the block holds {top})",
                              key="helppoints.points")  # fmt: skip
        eps.append(HelpPointEndpoint(ctl_id, ctl.host, ctl.port, ctl.unit, tuple(points)))
    return eps


async def build(kernel: Kernel, site: Site) -> Domain | None:
    """The Modbus help-point driver and the incident controller, acting through the lighting
    and displays domains; None for a site without help points."""
    s, inv = kernel.settings, site.inventory
    cfg = s.helppoints
    kernel.state.register(kinds(s, inv, site.bins))
    if not cfg.points:
        return None
    lora = [p.id for p in cfg.points if p.via == "lorawan"]
    kernel.alarms.confirm_after(lora, 2)  # hourly heartbeats: restored alarms settle at the 2nd
    lighting = controller(site.built, "lighting", LightingController)
    displays = controller(site.built, "displays", DisplayController)

    def raise_lamp(lamp: str, hold_s: float, incident: str) -> None:
        if lighting is not None:
            lighting.holds.hold(lamp, f"{SOURCE}:{incident}", hold_s, "help_call")

    def release_lamp(lamp: str, incident: str) -> bool:
        return lighting is not None and lighting.holds.let_go(lamp, f"{SOURCE}:{incident}")

    def notice(incident: str, shown: frozenset[str], start: float, end: float) -> None:
        if displays is not None:
            w = DisplayWarning(NOTICE_PREFIX + incident, shown, "info", tuple(cfg.notice_lines), start, end,
                               source=f"{SOURCE}:{incident}", public=False)  # fmt: skip
            displays.warn(w)

    def clear_notice(incident: str) -> None:
        if displays is not None:
            displays.clear_warning(NOTICE_PREFIX + incident)

    hp = HelpPointController(
        kernel,
        cfg,
        sites=sites_of(s, inv),
        lamps={x.id: (x.lat, x.lon) for x in inv.lamps.values()},
        raise_lamp=raise_lamp,
        release_lamp=release_lamp,
        displays={d.id: (d.lat, d.lon) for d in s.displays.displays} if displays is not None else None,
        notice=notice,
        clear_notice=clear_notice,
        lorawan=frozenset(lora),
    )
    await asyncio.to_thread(restore_incidents, hp, kernel.storage)
    eps = endpoints_of(s, inv)
    services = []
    driver = None
    if eps:
        driver = HelpPointDriver(
            eps,
            kernel.bus.publish,
            kernel.clock,
            poll_interval_s=cfg.poll_interval_s,
            timeout_s=min(1.0, s.dispatcher.write_timeout_s),
        )
        services.append(driver)
    return Domain(
        DOMAIN,
        services=tuple(services),
        controllers=(hp,),
        routes=helppoint_routes.routes(RouteKit.of(kernel), hp),
        handles={"driver": driver} if driver is not None else {},
    )


def restore_incidents(hp: HelpPointController, storage: Storage) -> int:
    """The incidents open when the daemon stopped (the newest stored record; runs in a thread)."""
    records = storage.plans(DOMAIN)
    return hp.restore(dict(records[-1].body)) if records else 0
