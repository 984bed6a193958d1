"""The lighting domain: lamp controllers over Modbus, bike-path motion, the lighting controller."""

from __future__ import annotations

import asyncio
from typing import Any

from controllers.lighting import LightingController, LightingSafety
from devices.field import motion_sensors
from devices.inventory import Bin, Inventory
from devices.lighting import ModbusEndpoint, ModbusLightingDriver
from devices.profiles.lighting import default_profile
from edge.app.domains.base import Site, base_topic
from edge.app.routes import lighting as lighting_routes
from edge.app.routes.base import RouteKit
from edge.kernel import Domain, Kernel
from edge.settings import Settings


def kinds(settings: Settings, inventory: Inventory, bins: list[Bin]) -> dict[str, str]:
    """Lamps and their controllers."""
    return dict.fromkeys(inventory.lamps, "lamp") | dict.fromkeys(inventory.controllers, "controller")


def endpoints_of(inv: Inventory) -> list[ModbusEndpoint]:
    return [
        ModbusEndpoint(
            endpoint_id=c.id,
            host=c.host,
            port=c.port,
            unit=c.unit,
            lamps=tuple((lamp.index, lamp.id) for lamp in c.lamps),
        )
        for c in inv.controllers.values()
    ]


def device_rows(inv: Inventory) -> list[dict[str, Any]]:
    """The lamps as device rows (storage keeps where each stands and what it belongs to)."""
    return [
        {
            "id": lamp.id,
            "kind": "lamp",
            "segment": lamp.segment,
            "group": lamp.group,
            "controller": lamp.controller,
            "lat": lamp.lat,
            "lon": lamp.lon,
            "attrs": {"class": lamp.lighting_class, "flags": sorted(lamp.flags), "feeder": lamp.feeder},
        }
        for lamp in inv.lamps.values()
    ]


async def build(kernel: Kernel, site: Site) -> Domain:
    """Lamps, their driver and safety, motion sensors and the lighting controller (always built)."""
    s, inv, clock = kernel.settings, site.inventory, kernel.clock
    kernel.state.register(kinds(s, inv, site.bins))
    await asyncio.to_thread(kernel.storage.upsert_devices, device_rows(inv))
    lc = s.lighting
    driver = ModbusLightingDriver(
        endpoints_of(inv),
        default_profile(),
        kernel.bus.publish,
        clock,
        poll_interval_s=lc.poll_interval_s,
        report_every_s=lc.report_every_s,
        timeout_s=lc.timeout_s,
        backoff_max_s=lc.backoff_max_s,
    )
    kernel.dispatcher.add_driver(driver)
    kernel.dispatcher.register_policy("lamp", LightingSafety(inv, s.site, lc))
    lighting = LightingController(kernel, lc, inv=inv)
    motion = motion_sensors(
        kernel.bus.publish,
        clock,
        inv.lamps.keys(),
        mqtt_url=s.mqtt.url,
        base=base_topic(s),
        tls=s.mqtt_link().files(),
        max_clock_skew_s=s.mqtt.max_clock_skew_s,
    )
    site.ready.append(motion)
    return Domain(
        "lighting",
        services=(driver, motion),
        controllers=(lighting,),
        routes=lighting_routes.routes(RouteKit.of(kernel), lighting),
        handles={"driver": driver, "motion": motion},
    )
