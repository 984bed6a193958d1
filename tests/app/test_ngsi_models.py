"""NGSI-LD entities of the demo district validate against the FIWARE Smart Data Models' JSON Schemas.

The schemas are vendored, with their licence, in tests/fixtures/smartdatamodels/ (see its README);
`ngsi_schemas` resolves their references offline. The state is the demo site's (500 lamps, 63
charge points, 150 bins, 2 trucks, 3 car parks, 7 sensors) with readings of every kind a device can
report, the odd ones included (failed lamps, faulted and offline chargers, a burning bin, a closed
car park, a gauge below its zero).
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from ngsi_schemas import SCHEMAS, errors, readme_hashes, sha256

from controllers.waste.views import telemetry_values
from devices.inventory import load_inventory
from edge.app.domains import device_kinds, site_bins
from edge.app.ngsi_models import CONTEXTS, Catalog, Entity, entity_of, normalized
from edge.bus import EventBus
from edge.events import Availability, Telemetry
from edge.payloads import BinState, TruckState
from edge.settings import Settings, load_settings
from edge.state import StateStore

SITE = Path(__file__).parents[2] / "edge" / "app" / "sites" / "kreuzviertel" / "site.toml"
T0 = 1_796_000_000.0  # 2026-11-30
OCPP = [
    "Available",
    "Preparing",
    "Charging",
    "SuspendedEV",
    "SuspendedEVSE",
    "Finishing",
    "Faulted",
    "Unavailable",
]


def demo_state() -> tuple[Settings, Catalog, StateStore]:
    """The demo site with a reading of every kind for every device the exporter maps."""
    settings = load_settings(SITE)
    inv = load_inventory(settings.inventory_path())
    bins = site_bins(settings)
    state = StateStore(EventBus(), device_kinds(settings, inv, bins))
    catalog = Catalog.build(settings, inv, bins)
    for i, lamp in enumerate(sorted(inv.lamps)):
        level = [0, 40, 60, 100][i % 4]
        values: dict[str, Any] = {"level_cmd": level, "level_actual": level, "power_w": 0.7 * level,
                                  "lamp_failure": i % 50 == 7, "driver_failure": False, "comm_loss": False}  # fmt: skip
        if i % 97 == 3:
            values = {"level_cmd": 100}  # commanded, never read back yet
        state.apply(Telemetry(lamp, T0 + i, values))
    for i, cp in enumerate(sorted(inv.chargers)):
        status = OCPP[i % len(OCPP)]
        values = {"status": status, "power_kw": 7.4 if status == "Charging" else 0.0,
                  "session_id": f"s-{i}" if status in {"Charging", "SuspendedEV"} else "", "car_connected": True}  # fmt: skip
        state.apply(Telemetry(cp, T0 + i, values))
    state.apply(Availability(sorted(inv.chargers)[1], (), False, T0))  # one charge point gone offline
    alarms: list[list[Any]] = [[], ["fire"], ["lid_open"], ["tilt"], ["overflow", "battery_low"], []]
    for i, b in enumerate(bins):
        s = BinState(id=b.id, lat=b.lat, lon=b.lon, kind=b.kind, zone=b.zone, fill=None if i % 11 == 0 else (i % 10) / 10,
                     rate_per_h=0.01, full_ts=T0 + 3600 * i if i % 3 else None, battery=80.0,
                     temperature=None if i % 4 else 12.5, alarms=alarms[i % len(alarms)],
                     status=["ok", "stale", "fault"][i % 3], last_seen_ts=T0 - 60 if i % 7 else None,
                     last_emptied_ts=T0 - 86400 if i % 2 else None, ts=T0)  # fmt: skip
        if i % 13 != 5:  # and a few the waste controller has no view of yet
            state.apply(Telemetry(b.id, T0, telemetry_values(s.model_dump(mode="json")), derived=True))
    for i, truck in enumerate(settings.waste.trucks):
        t = TruckState(id=truck.id, online=True, status=["driving", "idle"][i % 2], lat=51.51, lon=7.45,
                       load_l=1200.0 * (1 - i), load_kg=150.0 * (1 - i), load_pct=10.0 * (1 - i),
                       odometer_km=12345.6, last_seen_ts=T0, ts=T0)  # fmt: skip
        state.apply(Telemetry(truck.id, T0, telemetry_values(t.model_dump(mode="json")), derived=True))
    parks = settings.displays.car_parks
    counts: list[dict[str, Any]] = [
        {"free": 37, "open": True, "ts": T0},
        {"free": 0, "open": True, "ts": T0},
        {},
    ]
    for cp, extra in zip(parks, counts, strict=True):
        values = {"car_park": cp.id, "name": cp.name, "capacity": cp.capacity, "fresh": bool(extra)} | extra
        state.apply(Telemetry(cp.id, T0, values, derived=True))
    readings: dict[str, dict[str, Any]] = {
        "water_level_ultrasonic": {
            "distance_mm": 2900.0,
            "battery": 90.0,
            "probe_fault": False,
            "temperature": 8.0,
        },
        "rain_gauge": {"rain_mm_h": 4.2, "rain_total_mm": 120.4, "battery": 80.0},
        "wind": {"wind_speed_ms": 7.5, "wind_gust_ms": 14.1, "wind_dir_deg": 250.0, "battery": 70.0},
        "soil_moisture": {"soil_moisture": 31.0},
        "air_quality": {"pm2_5": 12.0},
    }
    for s in settings.environment.sensors:
        state.apply(Telemetry(s.id, T0, readings[s.profile]))
        state.apply(
            Telemetry(s.id, T0, {"profile": s.profile, "group": s.group, "status": "ok"}, derived=True)
        )
    # the drain's level sensor reads below its zero (2100 mm)
    state.apply(Telemetry("drain-kreuzviertel-1", T0 + 1, {"distance_mm": 2600.0}))
    return settings, catalog, state


def demo_entities() -> list[Entity]:
    _, catalog, state = demo_state()
    return [e for dev in state.devices() if (e := entity_of(catalog, dev)) is not None]


def test_the_vendored_schemas_are_the_ones_the_readme_names() -> None:
    """Each vendored file has the SHA-256 its README records (no silent edit of third-party data)."""
    table = readme_hashes()
    assert set(table) >= {*SCHEMAS.values(), "data-models/common-schema.json", "LICENSE.md"}
    for name, digest in table.items():
        assert sha256(name) == digest, name


def test_every_entity_of_the_demo_site_validates_against_its_smart_data_model() -> None:
    """Every device the exporter maps makes an entity that its model's JSON Schema accepts, for
    every model the exporter uses."""
    entities = demo_entities()
    problems = {e.id: errs for e in entities if (errs := errors(e.key_values()))}
    assert problems == {}
    kinds = Counter(e.type for e in entities)
    assert set(kinds) == set(SCHEMAS)
    assert kinds["Streetlight"] == 500
    assert kinds["EVChargingStation"] == 63
    assert kinds["WasteContainer"] == 150
    assert kinds["Vehicle"] == 2
    assert kinds["OffStreetParking"] == 3
    assert kinds["WeatherObserved"] == 5  # gauges, rain and wind; soil and air are not exported
    assert kinds["StreetlightControlCabinet"] == 10 + 5  # the lamp controllers and the cabinets


def test_the_mapping_carries_what_the_daemon_knows() -> None:
    """Spot checks of the mapping: levels as 0..1, failures as defectiveLamp, OCPP statuses,
    alarms of bins, the car park's count, the gauge's level in cm (none below its zero)."""
    by_id = {e.id: e.key_values() for e in demo_entities()}
    lamp = by_id["urn:ngsi-ld:Streetlight:kreuzviertel:L0003"]
    assert lamp["illuminanceLevel"] == 0.6
    assert lamp["powerState"] == "on"
    assert lamp["refStreetlightControlCabinet"] == "urn:ngsi-ld:StreetlightControlCabinet:kreuzviertel:lc-01"
    assert lamp["circuit"] == "feeder-1"
    assert by_id["urn:ngsi-ld:Streetlight:kreuzviertel:L0008"]["status"] == "defectiveLamp"
    statuses = Counter(e["status"] for e in by_id.values() if e["type"] == "EVChargingStation")
    assert set(statuses) == {"working", "withIncidence", "outOfService"}
    assert Counter(e["status"] for e in by_id.values() if e["type"] == "WasteContainer").keys() >= {
        "ok", "burning", "lidOpen", "dropped", "unknown"
    }  # fmt: skip
    park = by_id["urn:ngsi-ld:OffStreetParking:kreuzviertel:p-stadthaus"]
    assert (park["availableSpotNumber"], park["occupiedSpotNumber"]) == (37, 83)
    assert park["status"] == ["spacesAvailable"]
    assert "availableSpotNumber" not in by_id["urn:ngsi-ld:OffStreetParking:kreuzviertel:p-kreuz"]
    gauge = by_id["urn:ngsi-ld:WeatherObserved:kreuzviertel:gauge-emscher-1"]
    assert gauge["streamGauge"] == 50.0  # (3400 mm - 2900 mm) / 10
    assert "streamGauge" not in by_id["urn:ngsi-ld:WeatherObserved:kreuzviertel:drain-kreuzviertel-1"]
    assert by_id["urn:ngsi-ld:Vehicle:kreuzviertel:truck-1"]["cargoWeight"] == 150.0
    empty = by_id["urn:ngsi-ld:Vehicle:kreuzviertel:truck-2"]
    assert "cargoWeight" not in empty  # the model wants a positive weight


def test_the_normalized_form_is_ngsi_ld() -> None:
    """Every attribute becomes a Property (with unitCode where the model leaves the unit open), the
    location a GeoProperty, references Relationships; the @context is the model's."""
    for e in demo_entities():
        n = normalized(e)
        assert n["@context"] == CONTEXTS[e.type]
        assert n["location"]["type"] == "GeoProperty"
        for key, attr in n.items():
            if key in {"id", "type", "@context"}:
                continue
            assert attr["type"] in {"Property", "GeoProperty", "Relationship"}, key
            assert ("object" in attr) == (attr["type"] == "Relationship"), key
        if e.type == "Streetlight" and "powerConsumption" in n:
            assert n["powerConsumption"]["unitCode"] == "WTT"
    own = "https://example.org/context.jsonld"
    assert normalized(demo_entities()[0], own)["@context"] == own


MUTATIONS = [
    ("Streetlight", "illuminanceLevel", 1.5),
    ("Streetlight", "status", "broken"),
    ("Streetlight", "location", None),
    ("Streetlight", "location", {"type": "Point", "coordinates": ["7.45", 51.5]}),  # common-schema's GeoJSON
    ("EVChargingStation", "capacity", 0),
    ("EVChargingStation", "socketType", ["Schuko"]),
    ("WasteContainer", "fillingLevel", -0.1),
    ("Vehicle", "vehicleType", "spaceship"),
    ("Vehicle", "category", None),
    ("OffStreetParking", "totalSpotNumber", 2.5),
    ("WeatherObserved", "dateObserved", "yesterday"),
    ("WeatherObserved", "windDirection", 400),
    ("StreetlightControlCabinet", "refStreetlightGroup", []),
]


@pytest.mark.parametrize(("entity_type", "key", "value"), MUTATIONS)
def test_a_broken_entity_fails_validation(entity_type: str, key: str, value: Any) -> None:
    """The check can fail: a value out of the model's range or enum, or a required attribute
    missing (None: removed), is reported."""
    entity = next(
        e for e in demo_entities() if e.type == entity_type and (key in e.attrs or value is None)
    ).key_values()
    assert errors(entity) == []
    broken = copy.deepcopy(entity)
    if value is None:
        del broken[key]
    else:
        broken[key] = value
    assert errors(broken), f"{entity_type}.{key} = {value!r} should not validate"
