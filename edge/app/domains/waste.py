"""The waste domain: bins (read by the LoRaWAN domain), trucks over MQTT, the waste controller."""

from __future__ import annotations

import asyncio

from controllers.waste import (
    OPERATOR_DOMAIN,
    PLANNER_ID,
    SUMMARY_ID,
    WasteController,
    WastePorts,
    WasteSafety,
)
from devices.inventory import Bin, Inventory
from devices.waste import FleetDriver
from edge.app.domains.base import Site
from edge.app.routes import waste as waste_routes
from edge.app.routes.base import RouteKit
from edge.kernel import Domain, Kernel
from edge.settings import Settings
from edge.storage import Storage


def kinds(settings: Settings, inventory: Inventory, bins: list[Bin]) -> dict[str, str]:
    """Bins; with bins, the trucks and the planner's own ids."""
    found = {b.id: "bin" for b in bins}
    if bins:
        found |= {t.id: "truck" for t in settings.waste.trucks} | {
            PLANNER_ID: "planner",
            SUMMARY_ID: "planner",
        }
    return found


async def build(kernel: Kernel, site: Site) -> Domain | None:
    """The fleet driver and its safety, and the waste controller brought back from storage;
    None for a site without bins."""
    s, clock, bins = kernel.settings, kernel.clock, site.bins
    kernel.state.register(kinds(s, site.inventory, bins))
    # LoRaWAN bins report every 10-60 min: their restored alarms settle at the 2nd uplink.
    kernel.alarms.confirm_after([b.id for b in bins], 2)
    if not bins:
        return None
    wcfg, mq, ds = s.waste, s.mqtt, s.dispatcher
    fleet = FleetDriver(
        kernel.bus.publish,
        clock,
        [t.id for t in wcfg.trucks],
        mqtt_url=wcfg.fleet_mqtt_url or mq.url,
        tls=s.fleet_link().files(),
        max_clock_skew_s=mq.max_clock_skew_s,
    )
    kernel.dispatcher.add_driver(fleet)
    kernel.dispatcher.register_policy("truck", WasteSafety())
    waste = WasteController(
        WastePorts.of(kernel),
        wcfg,
        bins=bins,
        # a route must survive the truck's answer in real seconds, whatever the clock speed
        command_ttl_s=max(ds.command_ttl_s, 900.0, 10 * ds.write_timeout_s * clock.speed),
    )
    await asyncio.to_thread(restore_waste, waste, kernel.storage, clock.now())
    return Domain(
        "waste",
        services=(fleet,),
        controllers=(waste,),
        routes=waste_routes.routes(RouteKit.of(kernel), waste),
        handles={"driver": fleet},
    )


def restore_waste(waste: WasteController, storage: Storage, now: float) -> None:
    """Bring the waste controller back after a restart: fill history from the stored state
    samples, operator flags and today's plan from the plans table (runs in a thread)."""
    since = now - 14 * 86400
    for bin_id in waste.bins:
        samples = [(s.ts, s.values) for s in storage.history(bin_id) if s.ts >= since]
        waste.restore_history(bin_id, samples)
    flags = storage.plans(OPERATOR_DOMAIN)
    if flags:
        waste.restore_flags(dict(flags[-1].body))
    # The newest usable plan: a failed re-plan is stored too (for the record) but never restored.
    usable = [p for p in storage.plans("waste") if not dict(p.body).get("violations")]
    if usable:
        waste.restore_plan(dict(usable[-1].body), now)
