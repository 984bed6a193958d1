"""The charging domain: charge points over OPC UA, the feeder interlock, the charging controller."""

from __future__ import annotations

from collections.abc import Callable

from controllers.charging import (
    ChargingController,
    ChargingSafety,
    PlannedLighting,
    failsafe_a,
    failsafe_problems,
)
from controllers.lighting import LightingController
from devices.charging import ClientSecurity, OpcUaChargingDriver, OpcUaEndpoint
from devices.inventory import Bin, Inventory
from edge.app.domains.base import Site, controller
from edge.app.routes import charging as charging_routes
from edge.app.routes.base import RouteKit
from edge.clock import Clock
from edge.errors import ConfigError
from edge.events import Event
from edge.kernel import Domain, Kernel
from edge.settings import Settings


def kinds(settings: Settings, inventory: Inventory, bins: list[Bin]) -> dict[str, str]:
    """Charge points, their OPC UA servers, cabinets and feeders."""
    ccfg = settings.charging
    return (
        dict.fromkeys(inventory.chargers, "charger")
        | dict.fromkeys(inventory.charger_servers, "charger_server")
        | {f.cabinet: "cabinet" for f in ccfg.feeders}
        | {c.id: "cabinet" for c in ccfg.cabinets}
        | {f.id: "feeder" for f in ccfg.feeders}
    )


def opcua_driver(
    settings: Settings,
    inv: Inventory,
    publish: Callable[[Event], None],
    clock: Clock,
    on_late: Callable[[float], None] | None = None,
) -> OpcUaChargingDriver | None:
    """The OPC UA driver for the site's charge points (None when it has none)."""
    if not inv.chargers:
        return None
    cs = settings.charging
    problems = failsafe_problems(cs, inv)
    if problems:  # the same rule check-config applies: a gone daemon must not blow a fuse
        error = ConfigError("\n".join(problems), key="charging.failsafe_current_a")
        error.lines = problems
        raise error
    security = None
    if cs.client_cert:
        security = ClientSecurity(
            settings.resolve(cs.client_cert),
            settings.resolve(cs.client_key),
            settings.resolve(cs.server_cert),
        )
    return OpcUaChargingDriver(
        [OpcUaEndpoint(sid, url, ids) for sid, (url, ids) in inv.charger_servers.items()],
        None,
        publish,
        clock,
        security=security,
        allow_no_security=cs.allow_no_security,
        timeout_s=cs.timeout_s,
        failsafe={c.id: failsafe_a(c, cs) for c in inv.chargers.values()},
        on_late=on_late,
    )


async def build(kernel: Kernel, site: Site) -> Domain | None:
    """The charge points' driver, the interlock (it sees the lighting plan from the start) and the
    charging controller; None for a site without charge points (the interlock is registered still)."""
    s, inv, clock = kernel.settings, site.inventory, kernel.clock
    kernel.state.register(kinds(s, inv, site.bins))
    lighting = controller(site.built, "lighting", LightingController)
    if lighting is None:
        raise RuntimeError("the charging domain is built after the lighting domain")
    chargers = opcua_driver(s, inv, kernel.bus.publish, clock, on_late=kernel.lag.record)
    lamps = PlannedLighting(inv, lighting, clock, s.charging.stale_after_s)
    lamps.follow(kernel.state, kernel.dispatcher)
    safety = ChargingSafety(inv, s.charging, lighting=lamps, lagging=kernel.lag.lagging)
    kernel.dispatcher.register_policy("charger", safety)
    if chargers is None:
        return None
    kernel.dispatcher.add_driver(chargers)
    charging = ChargingController(kernel, s.charging, inv=inv, safety=safety)
    return Domain(
        "charging",
        services=(chargers,),
        controllers=(charging,),
        routes=charging_routes.routes(RouteKit.of(kernel), charging),
        handles={"driver": chargers},
    )
