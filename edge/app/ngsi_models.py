"""The site's devices as NGSI-LD entities of the FIWARE Smart Data Models (pure functions, no I/O).

Each builder takes what the daemon knows of one device (its `DeviceState`, and what the site's
settings and inventory say about it) and returns an `Entity` in the key-values form, which is
what the Smart Data Models JSON Schemas describe (the tests validate every one against them);
`normalized` turns it into the NGSI-LD normalized form a context broker takes (Property,
GeoProperty and Relationship, with `unitCode` and `observedAt`). Only what the daemon knows goes
in: an attribute with no reading yet is left out, never guessed.

| our device | entity type | from |
|---|---|---|
| lamp | `Streetlight` | state (levels, power, failure bits), inventory (position, feeder, cabinet, controller) |
| lamp controller, cabinet with lamps | `StreetlightControlCabinet` | inventory (its lamps' centroid and groups), `[charging] cabinets` |
| charge point | `EVChargingStation` | state (OCPP status, power, session), inventory (position, max current) |
| bin | `WasteContainer` | the waste controller's view (fill, status, alarms, prediction), bin inventory |
| truck | `Vehicle` | the waste controller's view (position, status, load, odometer) |
| car park | `OffStreetParking` | the displays controller's view (free, open), `[displays] car_parks` |
| rain, wind, water level sensor | `WeatherObserved` | the sensor's newest reading and status, `[environment] sensors` |

Entity ids are `urn:ngsi-ld:{type}:{site}:{device id}`: a city's platform takes several sites,
whose device ids may repeat. docs/ngsi-ld.md explains each attribute's source and unit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel

from controllers.environment_rules import metric_value
from devices.inventory import Bin, Inventory, Lamp
from edge.app.north import derived_state
from edge.payloads import BinState, ParkingState, TruckState
from edge.settings import CarParkSettings, Settings
from edge.settings_environment import SensorSettings
from edge.state import DeviceState

SDM = "https://raw.githubusercontent.com/smart-data-models"
CONTEXTS: dict[str, str] = {
    "Streetlight": f"{SDM}/dataModel.Streetlighting/master/context.jsonld",
    "StreetlightControlCabinet": f"{SDM}/dataModel.Streetlighting/master/context.jsonld",
    "EVChargingStation": f"{SDM}/dataModel.Transportation/master/context.jsonld",
    "Vehicle": f"{SDM}/dataModel.Transportation/master/context.jsonld",
    "WasteContainer": f"{SDM}/dataModel.WasteManagement/master/context.jsonld",
    "OffStreetParking": f"{SDM}/dataModel.Parking/master/context.jsonld",
    "WeatherObserved": f"{SDM}/dataModel.Weather/master/context.jsonld",
}
"""Each type's Smart Data Models @context (a URL the broker resolves; nothing is fetched here)."""

# UN/CEFACT common codes of the attributes whose unit the models leave open.
UNITS: dict[str, dict[str, str]] = {
    "Streetlight": {"powerConsumption": "WTT"},
    "StreetlightControlCabinet": {"maximumPowerAvailable": "KWT"},
    "EVChargingStation": {"powerConsumption": "KWT", "amperage": "AMP"},
    "WasteContainer": {"binCapacity": "LTR", "temperature": "CEL", "binFullnessThreshold": "P1"},
    "Vehicle": {"cargoWeight": "KGM", "mileageFromOdometer": "KMT"},
    "WeatherObserved": {"precipitation": "H67", "windSpeed": "MTS", "gustSpeed": "MTS",
                        "windDirection": "DD", "streamGauge": "CMT"},
}  # fmt: skip
MEASURED = frozenset(
    {"status", "powerState", "illuminanceLevel", "powerConsumption", "availableCapacity", "transactionId",
     "fillingLevel", "temperature", "serviceStatus", "cargoWeight", "mileageFromOdometer",
     "availableSpotNumber", "occupiedSpotNumber", "occupancy", "precipitation", "windSpeed", "gustSpeed",
     "windDirection", "streamGauge"}
)  # fmt: skip
"""Attributes that are observations: in the normalized form they carry `observedAt`."""

LAMP_DEFECTS = frozenset({"lamp_failure", "driver_failure", "power_high", "power_low"})
OCPP_WORKING = frozenset({"Available", "Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing"})
VOLTS = 230.0  # phase voltage: a cabinet's per-phase limit on three phases as power
WEATHER_PROFILES = frozenset({"rain_gauge", "wind", "water_level_ultrasonic"})
TRUCK_SERVICE = {"idle": "parked", "driving": "onRoute", "collecting": "onRoute", "unloading": "onRoute",
                 "returning": "outOfService", "broken": "broken"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Entity:
    """One entity in key-values form; `observed_at`: when its observations were made (epoch s)."""

    id: str
    type: str
    attrs: dict[str, Any]
    observed_at: float | None = None

    def key_values(self) -> dict[str, Any]:
        """The entity as the Smart Data Models schemas describe it."""
        return {"id": self.id, "type": self.type, **self.attrs}


@dataclass(frozen=True, slots=True)
class Place:
    """Where a group of lamps is (their centroid) and the planning groups they form."""

    lat: float
    lon: float
    groups: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Catalog:
    """What the settings and inventories say about every exported device, built once at start."""

    site: str
    inventory: Inventory
    bins: Mapping[str, Bin] = field(default_factory=dict)
    controllers: Mapping[str, Place] = field(default_factory=dict)
    cabinets: Mapping[str, tuple[Place, float | None]] = field(default_factory=dict)  # place, limit_a
    car_parks: Mapping[str, CarParkSettings] = field(default_factory=dict)
    trucks: frozenset[str] = frozenset()
    sensors: Mapping[str, SensorSettings] = field(default_factory=dict)
    threshold: float = 0.8
    provider: str = ""

    @classmethod
    def build(cls, settings: Settings, inventory: Inventory, bins: list[Bin]) -> Catalog:
        """The catalog of a site: its lamps' controllers and cabinets placed at their lamps."""
        by_controller: dict[str, list[Lamp]] = {}
        by_cabinet: dict[str, list[Lamp]] = {}
        for lamp in inventory.lamps.values():
            by_controller.setdefault(lamp.controller, []).append(lamp)
            if lamp.cabinet:
                by_cabinet.setdefault(lamp.cabinet, []).append(lamp)
        limits = {c.id: c.limit_a for c in settings.charging.cabinets}
        return cls(
            site=settings.site.id,
            inventory=inventory,
            bins={b.id: b for b in bins},
            controllers={c: _place(ls) for c, ls in by_controller.items()},
            cabinets={c: (_place(ls), limits.get(c)) for c, ls in by_cabinet.items()},
            car_parks={cp.id: cp for cp in settings.displays.car_parks},
            trucks=frozenset(t.id for t in settings.waste.trucks) if bins else frozenset(),
            sensors={s.id: s for s in settings.environment.sensors if s.profile in WEATHER_PROFILES},
            threshold=settings.waste.threshold,
            provider=f"dos-edge/{settings.site.id}",
        )

    def exports(self, device_id: str) -> bool:
        """Whether the device has an entity (every other state change is none of the exporter's)."""
        return (
            device_id in self.inventory.lamps
            or device_id in self.inventory.chargers
            or device_id in self.controllers
            or device_id in self.cabinets
            or device_id in self.bins
            or device_id in self.trucks
            or device_id in self.car_parks
            or device_id in self.sensors
        )

    def urn(self, entity_type: str, device_id: str) -> str:
        """The entity id of one of this site's devices."""
        return f"urn:ngsi-ld:{entity_type}:{self.site}:{device_id}"


def entity_of(c: Catalog, dev: DeviceState) -> Entity | None:
    """The entity of a device, or None if it has none (yet: a truck that never reported)."""
    d = dev.device_id
    if d in c.inventory.lamps:
        return streetlight(c, dev)
    if d in c.inventory.chargers:
        return charging_station(c, dev)
    if d in c.controllers or d in c.cabinets:
        return control_cabinet(c, d)
    if d in c.bins:
        return waste_container(c, dev)
    if d in c.trucks:
        return vehicle(c, dev)
    if d in c.car_parks:
        return parking(c, dev)
    if d in c.sensors:
        return weather_observed(c, dev)
    return None


def streetlight(c: Catalog, dev: DeviceState) -> Entity | None:
    """A lamp: status from its failure bits, illuminanceLevel the commanded level (0..1), powerState
    from the level it reports, powerConsumption in W; its controller is the cabinet in charge."""
    lamp = c.inventory.lamps.get(dev.device_id)
    if lamp is None:
        return None
    v = dev.values
    attrs: dict[str, Any] = {
        "location": point(lamp.lat, lamp.lon),
        "status": "defectiveLamp" if any(v.get(b) for b in LAMP_DEFECTS) else "ok",
        "circuit": lamp.feeder,
        "controllingMethod": "individual",
        "refStreetlightControlCabinet": c.urn("StreetlightControlCabinet", lamp.controller),
    }
    if lamp.cabinet:
        attrs["feederPillarNum"] = lamp.cabinet
    if (level := _num(v.get("level_cmd"))) is not None:
        attrs["illuminanceLevel"] = min(1.0, max(0.0, level / 100.0))
    if (actual := _num(v.get("level_actual"))) is not None:
        attrs["powerState"] = "on" if actual > 0 else "off"
    if (power := _num(v.get("power_w"))) is not None:
        attrs["powerConsumption"] = power
    return _with_common(c, Entity(c.urn("Streetlight", lamp.id), "Streetlight", attrs), dev.updated_at)


def control_cabinet(c: Catalog, device_id: str) -> Entity | None:
    """A lamp controller or a street cabinet with lamps: where its lamps are, the groups they are
    planned in; a cabinet's limit as the power available on its three phases (kW)."""
    limit: float | None = None
    if device_id in c.controllers:
        place = c.controllers[device_id]
    elif device_id in c.cabinets:
        place, limit = c.cabinets[device_id]
    else:
        return None
    attrs: dict[str, Any] = {
        "location": point(place.lat, place.lon),
        "refStreetlightGroup": [c.urn("StreetlightGroup", g) for g in place.groups],
        "workingMode": "automatic",
        "features": ["astronomicalClock", "individualControl"],
    }
    if limit is not None:
        attrs["maximumPowerAvailable"] = round(3 * VOLTS * limit / 1000.0, 3)
    return _with_common(
        c, Entity(c.urn("StreetlightControlCabinet", device_id), "StreetlightControlCabinet", attrs)
    )


def charging_station(c: Catalog, dev: DeviceState) -> Entity | None:
    """A charge point (one Type 2 socket, one car): status from its OCPP status and link,
    availableCapacity 1 while it is free, powerConsumption in kW, the session as transactionId."""
    cp = c.inventory.chargers.get(dev.device_id)
    if cp is None:
        return None
    v = dev.values
    attrs: dict[str, Any] = {
        "location": point(cp.lat, cp.lon),
        "socketType": ["Type2"],
        "socketNumber": 1,
        "capacity": 1,
        "allowedVehicleType": ["car"],
        "chargingUnitId": cp.id,
        "amperage": cp.max_current_a,
    }
    status = v.get("status")
    if dev.online is False or status == "Unavailable":
        attrs["status"] = "outOfService"
    elif status == "Faulted":
        attrs["status"] = "withIncidence"
    elif status in OCPP_WORKING:
        attrs["status"] = "working"
    if isinstance(status, str):
        attrs["availableCapacity"] = 1 if status == "Available" and dev.online is not False else 0
    if (power := _num(v.get("power_kw"))) is not None:
        attrs["powerConsumption"] = power
    if isinstance(session := v.get("session_id"), str) and session:
        attrs["transactionId"] = session
    return _with_common(
        c, Entity(c.urn("EVChargingStation", cp.id), "EVChargingStation", attrs), dev.updated_at
    )


def waste_container(c: Catalog, dev: DeviceState) -> Entity | None:
    """A bin: fillingLevel (0..1), status from its alarms (fire: burning, lid open, tilt: dropped;
    a stale or faulty sensor: unknown), the predicted threshold time as nextActuationDeadline."""
    b = c.bins.get(dev.device_id)
    if b is None:
        return None
    attrs: dict[str, Any] = {
        "location": point(b.lat, b.lon),
        "binCapacity": b.volume_l,
        "binFullnessThreshold": round(c.threshold * 100, 1),
        "status": "unknown",
    }
    view = derived_state(dev)
    s = view[2] if view is not None else None
    seen: float | None = None
    if isinstance(s, BinState):
        alarms = set(s.alarms)
        attrs["status"] = (
            "burning" if "fire" in alarms
            else "lidOpen" if "lid_open" in alarms
            else "dropped" if "tilt" in alarms
            else "unknown" if s.status != "ok"
            else "ok"
        )  # fmt: skip
        if s.fill is not None:
            attrs["fillingLevel"] = s.fill
        if s.temperature is not None:
            attrs["temperature"] = s.temperature
        if s.last_emptied_ts is not None:
            attrs["dateLastEmptying"] = iso(s.last_emptied_ts)
        if s.full_ts is not None:
            attrs["nextActuationDeadline"] = iso(s.full_ts)
        if s.last_seen_ts is not None:
            attrs["binLoggedTime"] = iso(s.last_seen_ts)
            seen = s.last_seen_ts
    return _with_common(c, Entity(c.urn("WasteContainer", b.id), "WasteContainer", attrs, seen))


def vehicle(c: Catalog, dev: DeviceState) -> Entity | None:
    """A collection truck, once its position is known: a tracked municipal lorry collecting
    garbage; serviceStatus from its status, cargoWeight in kg, the odometer in km."""
    view = derived_state(dev)
    t = view[2] if view is not None else None
    if not isinstance(t, TruckState):
        return None
    attrs: dict[str, Any] = {
        "location": point(t.lat, t.lon),
        "vehicleType": "lorry",
        "category": ["municipalServices", "tracked"],
        "serviceProvided": ["garbageCollection"],
        "vehicleSpecialUsage": "trashManagement",
        "fleetVehicleId": t.id,
        "mileageFromOdometer": t.odometer_km,
    }
    if t.status in TRUCK_SERVICE:
        attrs["serviceStatus"] = TRUCK_SERVICE[t.status]
    if t.load_kg > 0:  # the model's cargoWeight is exclusively positive
        attrs["cargoWeight"] = t.load_kg
    return _with_common(c, Entity(c.urn("Vehicle", t.id), "Vehicle", attrs), t.last_seen_ts or 0.0)


def parking(c: Catalog, dev: DeviceState) -> Entity | None:
    """A car park: its spots and, once it has counted, the free and occupied ones and the status
    (closed, full, spacesAvailable); occupancyModified says how old the count is."""
    cp = c.car_parks.get(dev.device_id)
    if cp is None:
        return None
    attrs: dict[str, Any] = {
        "location": point(cp.lat, cp.lon),
        "name": cp.name,
        "totalSpotNumber": cp.capacity,
        "allowedVehicleType": ["car"],
        "occupancyDetectionType": ["singleSpaceDetection"] if cp.sensors else ["balancing"],
    }
    view = derived_state(dev)
    p = view[2] if view is not None else None
    counted: float | None = None
    if isinstance(p, ParkingState):
        free = None if p.free is None else min(cp.capacity, max(0, p.free))
        if free is not None:
            attrs["availableSpotNumber"] = free
            attrs["occupiedSpotNumber"] = cp.capacity - free
            attrs["occupancy"] = round((cp.capacity - free) / cp.capacity, 4)
        if p.open is not None:
            attrs["status"] = ["closed"] if not p.open else ["full"] if free == 0 else ["spacesAvailable"]
        if p.ts is not None:
            attrs["occupancyModified"] = iso(p.ts)
            counted = p.ts
    return _with_common(c, Entity(c.urn("OffStreetParking", cp.id), "OffStreetParking", attrs), counted)


def weather_observed(c: Catalog, dev: DeviceState) -> Entity | None:
    """A rain, wind or water level sensor's newest reading (none before the first, none while the
    rules hold it implausible): precipitation (the gauge's rate, mm/h), wind in m/s and degrees,
    the water level in cm (streamGauge; a level below the gauge's zero is left out)."""
    cfg = c.sensors.get(dev.device_id)
    if cfg is None or not dev.updated_at or dev.values.get("status") == "implausible":
        return None
    v = dev.values
    attrs: dict[str, Any] = {"location": point(cfg.lat, cfg.lon), "dateObserved": iso(dev.updated_at)}
    for ours, theirs in (("rain_mm_h", "precipitation"), ("wind_speed_ms", "windSpeed"),
                         ("wind_gust_ms", "gustSpeed"), ("wind_dir_deg", "windDirection")):  # fmt: skip
        if (x := _num(v.get(ours))) is not None and x >= 0:
            attrs[theirs] = x
    level = metric_value(cfg, v, "level_cm")
    if level is not None and level >= 0:
        attrs["streamGauge"] = round(level, 1)
    return _with_common(c, Entity(c.urn("WeatherObserved", cfg.id), "WeatherObserved", attrs), dev.updated_at)


# ----- the normalized form ------------------------------------------------------------------


def normalized(e: Entity, context: str = "") -> dict[str, Any]:
    """The NGSI-LD normalized form: GeoProperty `location`, Relationships for `ref*`, Properties
    (with the UN/CEFACT `unitCode` where the model leaves the unit open, `observedAt` on
    observations), and the @context (`context`, else the type's Smart Data Models context)."""
    out: dict[str, Any] = {"id": e.id, "type": e.type}
    units = UNITS.get(e.type, {})
    observed = iso(e.observed_at) if e.observed_at else None
    for key, value in e.attrs.items():
        if key == "location":
            out[key] = {"type": "GeoProperty", "value": value}
        elif key.startswith("ref"):
            out[key] = {"type": "Relationship", "object": value}
        else:
            attr: dict[str, Any] = {"type": "Property", "value": value}
            if key in units:
                attr["unitCode"] = units[key]
            if observed is not None and key in MEASURED:
                attr["observedAt"] = observed
            out[key] = attr
    out["@context"] = context or CONTEXTS[e.type]
    return out


class NgsiEntity(BaseModel):
    """An NGSI-LD entity in the normalized form (its attributes as the Smart Data Models say)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str = Field(description="urn:ngsi-ld:{type}:{site}:{device id}")
    type: str = Field(description="the Smart Data Models type (Streetlight, EVChargingStation, ...)")
    context: str = Field(alias="@context", description="the type's Smart Data Models @context")


class NgsiBatch(RootModel[list[NgsiEntity]]):
    """A batch of NGSI-LD entities, as the exporter upserts them (`ngsi/entities` in mqtt mode)."""


# ----- helpers ------------------------------------------------------------------------------


def point(lat: float, lon: float) -> dict[str, Any]:
    """A GeoJSON Point (longitude first)."""
    return {"type": "Point", "coordinates": [lon, lat]}


def iso(ts: float) -> str:
    """Epoch seconds as an ISO 8601 UTC date-time (milliseconds, `Z`)."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _with_common(c: Catalog, e: Entity, observed: float | None = None) -> Entity:
    """The entity with its data provider and, when it has one, the time of its newest observation."""
    attrs = dict(e.attrs)
    if c.provider:
        attrs["dataProvider"] = c.provider
    if observed and e.type in {"Streetlight", "EVChargingStation", "Vehicle"}:
        attrs["observationDateTime"] = iso(observed)
    return Entity(e.id, e.type, attrs, observed or None)


def _place(lamps: list[Lamp]) -> Place:
    return Place(
        lat=round(math.fsum(x.lat for x in lamps) / len(lamps), 7),
        lon=round(math.fsum(x.lon for x in lamps) / len(lamps), 7),
        groups=tuple(sorted({x.group for x in lamps})),
    )


def _num(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None
