"""The vendored Smart Data Models JSON Schemas (tests/fixtures/smartdatamodels/) as validators.

Every schema and the shared definitions they reference are registered under their
`https://smart-data-models.github.io/...` URLs, so `$ref`s resolve offline. Formats are checked
(`date-time`, `uri`): jsonschema only asserts formats it is given checkers for.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

FIXTURES = Path(__file__).parent / "fixtures" / "smartdatamodels"
BASE = "https://smart-data-models.github.io/"
SCHEMAS: dict[str, str] = {
    "Streetlight": "dataModel.Streetlighting/Streetlight/schema.json",
    "StreetlightControlCabinet": "dataModel.Streetlighting/StreetlightControlCabinet/schema.json",
    "EVChargingStation": "dataModel.Transportation/EVChargingStation/schema.json",
    "Vehicle": "dataModel.Transportation/Vehicle/schema.json",
    "WasteContainer": "dataModel.WasteManagement/WasteContainer/schema.json",
    "OffStreetParking": "dataModel.Parking/OffStreetParking/schema.json",
    "WeatherObserved": "dataModel.Weather/WeatherObserved/schema.json",
}
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
# An upstream reference to nothing, read as what it evidently means (see the fixtures' README).
REF_FIXES = {
    f"{BASE}dataModel.Weather/weather-schema.json#/definitions/Weather-Commons/allOf/properties": (
        f"{BASE}dataModel.Weather/weather-schema.json#/definitions/Weather-Commons"
    ),
}


def _fix_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: REF_FIXES.get(v, v) if k == "$ref" else _fix_refs(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fix_refs(x) for x in node]
    return node


@functools.cache
def registry() -> Registry[Any]:
    """Every vendored schema under its URL."""
    resources = []
    for path in sorted(FIXTURES.rglob("*.json")):
        contents = _fix_refs(json.loads(path.read_text(encoding="utf-8")))
        url = BASE + path.relative_to(FIXTURES).as_posix()
        resources.append((url, Resource.from_contents(contents, default_specification=DRAFT202012)))
    return Registry().with_resources(resources)


def _format_checker() -> FormatChecker:
    checker = FormatChecker(formats=())

    @checker.checks("date-time", raises=ValueError)
    def _date_time(value: object) -> bool:
        if not isinstance(value, str):
            return True
        if not RFC3339.fullmatch(value):
            return False
        return datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None

    @checker.checks("uri", raises=ValueError)
    def _uri(value: object) -> bool:
        return not isinstance(value, str) or bool(urlsplit(value).scheme)

    return checker


@functools.cache
def validator(entity_type: str) -> Draft202012Validator:
    """The validator of one model's schema (its references resolved from the fixtures)."""
    schema = registry().contents(BASE + SCHEMAS[entity_type])
    return Draft202012Validator(schema, registry=registry(), format_checker=_format_checker())


def errors(entity: dict[str, Any]) -> list[str]:
    """Why the key-values entity does not validate against its type's schema ([] if it does)."""
    found = validator(str(entity["type"])).iter_errors(entity)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<entity>'}: {e.message}" for e in found]


def sha256(relative: str) -> str:
    return hashlib.sha256((FIXTURES / relative).read_bytes()).hexdigest()


def readme_hashes() -> dict[str, str]:
    """The file -> SHA-256 table of the fixtures' README."""
    text = (FIXTURES / "README.md").read_text(encoding="utf-8")
    return dict(re.findall(r"^\| `([^`]+)` \|.*\| `([0-9a-f]{64})` \|$", text, flags=re.MULTILINE))
