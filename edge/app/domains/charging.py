"""The charging domain: charge points over OPC UA and over OCPP 1.6J (the daemon is their central
system), one feeder interlock and one charging controller for both."""

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
from devices.charging_ocpp import OcppCentralSystem, OcppSecurity
from devices.inventory import Bin, Inventory
from edge import redact
from edge.app.domains.base import Site, controller
from edge.app.routes import charging as charging_routes
from edge.app.routes.base import RouteKit
from edge.clock import Clock
from edge.errors import ConfigError
from edge.events import Event
from edge.kernel import Domain, Kernel
from edge.settings import Settings
from edge.tomlfile import read_toml


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


def _check_failsafe(settings: Settings, inv: Inventory) -> None:
    problems = failsafe_problems(settings.charging, inv)
    if problems:  # the same rule check-config applies: a gone daemon must not blow a fuse
        error = ConfigError("\n".join(problems), key="charging.failsafe_current_a")
        error.lines = problems
        raise error


def ocpp_passwords(settings: Settings, file: str, ids: list[str]) -> dict[str, str]:
    """The charge points' basic-auth passwords (a TOML table id = password); each id needs one."""
    path = settings.resolve(file)
    data = read_toml(path)
    bad = [k for k, v in data.items() if not isinstance(v, str) or len(v) < 8]
    if bad:
        raise ConfigError(
            f"passwords must be strings of 8+ characters: {', '.join(sorted(bad))}", file=str(path)
        )
    redact.remember(*data.values())
    missing = [i for i in ids if i not in data]
    if missing:
        raise ConfigError(
            f"no password for {', '.join(missing)}", file=str(path), key="charging.ocpp.passwords_file"
        )
    return {i: data[i] for i in ids}


def ocpp_central_system(
    settings: Settings,
    inv: Inventory,
    publish: Callable[[Event], None],
    clock: Clock,
    on_late: Callable[[float], None] | None = None,
) -> OcppCentralSystem | None:
    """The OCPP central system for the site's OCPP charge points (None when it has none)."""
    ids = [c.id for c in inv.chargers.values() if c.protocol == "ocpp"]
    if not ids:
        return None
    cs = settings.charging
    oc = cs.ocpp
    if oc is None:
        raise ConfigError(
            f"{len(ids)} charge points speak OCPP ({ids[0]} ...) but [charging.ocpp] is missing",
            key="charging.ocpp",
        )
    _check_failsafe(settings, inv)
    security = OcppSecurity(
        profile=oc.security_profile,
        passwords=ocpp_passwords(settings, oc.passwords_file, ids) if oc.security_profile >= 1 else {},
        cert_file=settings.resolve(oc.cert_file) if oc.cert_file else None,
        key_file=settings.resolve(oc.key_file) if oc.key_file else None,
        allow_profile_0=oc.allow_profile_0,
    )
    return OcppCentralSystem(
        ids,
        publish,
        clock,
        host=oc.host,
        port=oc.port,
        path=oc.path,
        security=security,
        timeout_s=oc.timeout_s,
        heartbeat_interval_s=oc.heartbeat_interval_s,
        meter_interval_s=oc.meter_interval_s,
        failsafe={c: failsafe_a(inv.chargers[c], cs) for c in ids},
        failsafe_timeout_s=oc.failsafe_timeout_s,
        max_current={c: inv.chargers[c].max_current_a for c in ids},
        id_tags=tuple(oc.id_tags),
        on_late=on_late,
    )


def opcua_driver(
    settings: Settings,
    inv: Inventory,
    publish: Callable[[Event], None],
    clock: Clock,
    on_late: Callable[[float], None] | None = None,
) -> OpcUaChargingDriver | None:
    """The OPC UA driver for the site's charge points (None when it has none)."""
    if not inv.charger_servers:
        return None
    cs = settings.charging
    _check_failsafe(settings, inv)
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
    drivers = [
        d
        for d in (
            opcua_driver(s, inv, kernel.bus.publish, clock, on_late=kernel.lag.record),
            ocpp_central_system(s, inv, kernel.bus.publish, clock, on_late=kernel.lag.record),
        )
        if d is not None
    ]
    lamps = PlannedLighting(inv, lighting, clock, s.charging.stale_after_s)
    lamps.follow(kernel.state, kernel.dispatcher)
    safety = ChargingSafety(inv, s.charging, lighting=lamps, lagging=kernel.lag.lagging)
    kernel.dispatcher.register_policy("charger", safety)
    if not drivers:
        return None
    for driver in drivers:
        kernel.dispatcher.add_driver(driver)
    charging = ChargingController(kernel, s.charging, inv=inv, safety=safety)
    ocpp = [d for d in drivers if isinstance(d, OcppCentralSystem)]
    stop_session = ocpp[0].remote_stop if ocpp else None
    handles: dict[str, object] = {
        "driver" if isinstance(d, OpcUaChargingDriver) else "ocpp": d for d in drivers
    }
    return Domain(
        "charging",
        services=tuple(drivers),
        controllers=(charging,),
        routes=charging_routes.routes(RouteKit.of(kernel), charging, stop_session),
        handles=handles,
    )
