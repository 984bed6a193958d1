"""The displays domain: LED boards and VMS signs, car-park counters, the displays controller."""

from __future__ import annotations

from controllers.displays import DisplayController, DisplaySafety, bay_id
from controllers.lighting import LightingController
from devices.displays import DisplayDriver, SignEndpoint
from devices.field import car_park_counters
from devices.inventory import Bin, Inventory
from devices.profiles.displays import default_led_board_profile, default_vms_profile
from edge.app.domains.base import Site, base_topic, controller
from edge.app.routes import displays as display_routes
from edge.app.routes.base import RouteKit
from edge.kernel import Domain, Kernel
from edge.settings import Settings


def kinds(settings: Settings, inventory: Inventory, bins: list[Bin]) -> dict[str, str]:
    """Displays, car parks and their bay sensors."""
    dcfg = settings.displays
    return (
        {d.id: "display" for d in dcfg.displays}
        | {cp.id: "car_park" for cp in dcfg.car_parks}
        | {bay_id(e): "sensor" for cp in dcfg.car_parks for e in cp.sensors}
    )


async def build(kernel: Kernel, site: Site) -> Domain | None:
    """The display driver and safety, car-park counters and the displays controller (which
    dims with the lighting plan and raises lamps for warnings); None without displays."""
    s, clock = kernel.settings, kernel.clock
    dcfg, mq = s.displays, s.mqtt
    found = kinds(s, site.inventory, site.bins)
    kernel.state.register(found)
    # LoRaWAN bay sensors report every 10-60 min: their restored alarms settle at the 2nd uplink.
    kernel.alarms.confirm_after([d for d, k in found.items() if k == "sensor"], 2)
    if not dcfg.displays:
        return None
    lighting = controller(site.built, "lighting", LightingController)
    if lighting is None:
        raise RuntimeError("the displays domain is built after the lighting domain")
    profiles = {
        x.id: default_led_board_profile() if x.kind == "board" else default_vms_profile()
        for x in dcfg.displays
    }
    driver = DisplayDriver(
        kernel.bus.publish,
        clock,
        boards=[x.id for x in dcfg.displays if x.kind == "board"],
        signs=[SignEndpoint(x.id, x.host, x.port, x.unit) for x in dcfg.displays if x.kind == "sign"],
        mqtt_url=dcfg.board_mqtt_url or mq.url,
        tls=s.board_link().files(),
        max_clock_skew_s=mq.max_clock_skew_s,
    )
    kernel.dispatcher.add_driver(driver)
    kernel.dispatcher.register_policy("display", DisplaySafety(profiles))
    displays = DisplayController(
        kernel,
        dcfg,
        lighting=lighting,
        profiles=profiles,
        silent=lambda x: driver.health(x).alarm_due,
        raise_lamps=lighting.raise_for_warning,
        release_lamps=lighting.release_warning,
    )
    counters = car_park_counters(
        kernel.bus.publish,
        clock,
        [cp.id for cp in dcfg.car_parks],
        mqtt_url=mq.url,
        base=base_topic(s),
        tls=s.mqtt_link().files(),
        max_clock_skew_s=mq.max_clock_skew_s,
    )
    site.ready.append(counters)
    return Domain(
        "displays",
        services=(driver, counters),
        controllers=(displays,),
        routes=display_routes.routes(RouteKit.of(kernel), displays),
        handles={"driver": driver, "car_parks": counters},
    )
