"""Typed handles to the built domains' parts, for the daemon's users (demo, TUI tests, tests).

`Daemon` inherits these, so `d.lighting`, `d.charging`, `d.fleet`, `d.ingest` ... read the
domains a run built; the daemon itself names no domain and imports no controller class.
"""

from __future__ import annotations

from typing import TypeVar

from controllers.charging import ChargingController
from controllers.displays import DisplayController
from controllers.environment import EnvironmentController
from controllers.helppoints import HelpPointController
from controllers.lighting import LightingController
from controllers.waste import WasteController
from devices.charging_ocpp import OcppCentralSystem
from devices.displays import DisplayDriver
from devices.field import FieldInput
from devices.lighting import ModbusLightingDriver
from devices.protocols.lorawan import UplinkIngest
from devices.waste import FleetDriver
from edge.kernel import Domain

__all__ = ["DomainHandles"]

T = TypeVar("T")


class DomainHandles:
    """Properties over `self.domains` (what `edge.app.domains.build_all` returned)."""

    __slots__ = ()
    domains: dict[str, Domain]

    def handle_of(self, domain: str, name: str, cls: type[T]) -> T | None:
        """A built domain's part by name, if it is a `cls` (None if the site lacks the domain)."""
        dom = self.domains.get(domain)
        part = None if dom is None else dom.handles.get(name)
        return part if isinstance(part, cls) else None

    def controller_of(self, domain: str, cls: type[T]) -> T | None:
        """A built domain's controller, if it is a `cls` (None if the site lacks the domain)."""
        dom = self.domains.get(domain)
        found = [c for c in dom.controllers if isinstance(c, cls)] if dom is not None else []
        return found[0] if found else None

    @property
    def lighting(self) -> LightingController:
        found = self.controller_of("lighting", LightingController)
        assert found is not None, "the lighting domain is always built"
        return found

    @property
    def driver(self) -> ModbusLightingDriver:
        found = self.handle_of("lighting", "driver", ModbusLightingDriver)
        assert found is not None, "the lighting domain is always built"
        return found

    @property
    def motion(self) -> FieldInput | None:
        return self.handle_of("lighting", "motion", FieldInput)

    @property
    def charging(self) -> ChargingController | None:
        return self.controller_of("charging", ChargingController)

    @property
    def ocpp(self) -> OcppCentralSystem | None:
        """The OCPP central system (None for a site without OCPP charge points)."""
        return self.handle_of("charging", "ocpp", OcppCentralSystem)

    @property
    def displays(self) -> DisplayController | None:
        return self.controller_of("displays", DisplayController)

    @property
    def display_driver(self) -> DisplayDriver | None:
        return self.handle_of("displays", "driver", DisplayDriver)

    @property
    def car_parks(self) -> FieldInput | None:
        return self.handle_of("displays", "car_parks", FieldInput)

    @property
    def ingest(self) -> UplinkIngest | None:
        return self.handle_of("lorawan", "ingest", UplinkIngest)

    @property
    def waste(self) -> WasteController | None:
        return self.controller_of("waste", WasteController)

    @property
    def fleet(self) -> FleetDriver | None:
        return self.handle_of("waste", "driver", FleetDriver)

    @property
    def helppoints(self) -> HelpPointController | None:
        return self.controller_of("helppoints", HelpPointController)

    @property
    def environment(self) -> EnvironmentController | None:
        return self.controller_of("environment", EnvironmentController)
