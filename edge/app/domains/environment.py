"""The environment domain: LoRaWAN sensors (water level, rain, wind, soil, air) read by the shared
ingest, and the controller whose rules propose or issue storm, flood and air warnings."""

from __future__ import annotations

import asyncio

from controllers.displays import DisplayController
from controllers.displays import Warning as DisplayWarning
from controllers.environment import DOMAIN, EnvironmentController, EnvWarning
from devices.inventory import Bin, Inventory
from devices.profiles.lorawan import default_profiles
from edge.app.domains.base import Site, controller
from edge.app.routes import environment as environment_routes
from edge.app.routes.base import RouteKit
from edge.errors import ConfigError
from edge.kernel import Domain, Kernel
from edge.settings import Settings
from edge.settings_environment import EnvironmentSettings


def kinds(settings: Settings, inventory: Inventory, bins: list[Bin]) -> dict[str, str]:
    """The site's environmental sensors, and its rules (a proposal's alarm is the rule's)."""
    env = settings.environment
    return {s.id: "env_sensor" for s in env.sensors} | {r.id: "env_rule" for r in env.rules}


class DisplaySink:
    """Issued warnings go to the displays in their area (and lamps, if the rule says so), as an
    operator's warning does."""

    def __init__(self, displays: DisplayController, raise_lamps: dict[str, bool]) -> None:
        self._displays = displays
        self._raise = raise_lamps

    def issue(self, w: EnvWarning) -> int:
        lat, lon, radius = w.area
        shown = self._displays.displays_within(lat, lon, radius)
        dw = DisplayWarning(w.id, frozenset(shown), w.severity, tuple(w.lines), w.start, w.end,
                            source=w.source, area=(lat, lon, radius))  # fmt: skip
        self._displays.warn(dw, raise_lamps=self._raise.get(w.rule, False), area=(lat, lon, radius))
        return len(shown)

    def withdraw(self, warning_id: str) -> None:
        self._displays.clear_warning(warning_id)


def check_rules(cfg: EnvironmentSettings) -> None:
    """Every sensor's profile is known and every rule's metric is one its group's sensors report:
    a typo would otherwise leave a warning that can never fire (ConfigError naming it)."""
    profiles = default_profiles()
    for x in cfg.sensors:
        if x.profile not in profiles:
            raise ConfigError(f"sensor {x.id!r}: unknown profile {x.profile!r}; known: {', '.join(sorted(profiles))}",
                              key="environment.sensors")  # fmt: skip
    for r in cfg.rules:
        for x in (x for x in cfg.sensors if x.group == r.group):
            names = set(profiles[x.profile].value_names)
            if x.zero_mm is not None and "distance_mm" in names:
                names.add("level_cm")
            if r.metric not in names:
                raise ConfigError(f"rule {r.id!r}: sensor {x.id!r} ({x.profile}) does not report {r.metric!r}; "
                                  f"it reports {', '.join(sorted(names))}", key="environment.rules")  # fmt: skip


async def build(kernel: Kernel, site: Site) -> Domain | None:
    """The environment controller; its sensors' uplinks come through the LoRaWAN domain's ingest.
    None for a site without sensors."""
    s = kernel.settings
    cfg = s.environment
    found = kinds(s, site.inventory, site.bins)
    kernel.state.register(found)
    # Sensors report every few minutes to an hour: restored alarms settle at the 2nd uplink.
    kernel.alarms.confirm_after([d for d, k in found.items() if k == "env_sensor"], 2)
    if not cfg.sensors:
        return None
    check_rules(cfg)
    displays = controller(site.built, "displays", DisplayController)
    sink = None if displays is None else DisplaySink(displays, {r.id: r.raise_lamps for r in cfg.rules})
    env = EnvironmentController(kernel, cfg, sink=sink)
    records = await asyncio.to_thread(kernel.storage.plans, DOMAIN)
    if records:
        env.restore(dict(records[-1].body), kernel.clock.now())
    return Domain(DOMAIN, controllers=(env,), routes=environment_routes.routes(RouteKit.of(kernel), env))
