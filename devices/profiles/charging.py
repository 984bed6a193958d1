"""Charge point OPC UA information model, loaded from TOML into frozen dataclasses.

The model is data (devices/profiles/charge_point.toml) so that the driver and the
simulator build and read the same address space; a bad profile fails at load with a
`ConfigError` that names the key and the file.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from edge.errors import ConfigError
from edge.events import Value
from edge.tomlfile import read_toml as read_profile_toml

DEFAULT_PROFILE_PATH = Path(__file__).parent / "charge_point.toml"
MIN_CHARGE_CURRENT_A = 6.0  # IEC 61851: a PWM duty below 6 A means "do not charge"


class VariantKind(StrEnum):
    """OPC UA built-in type of a variable (the names of asyncua's `ua.VariantType`)."""

    DOUBLE = "Double"
    INT32 = "Int32"
    BOOLEAN = "Boolean"
    STRING = "String"

    @property
    def default(self) -> Value:
        """The value a fresh variable holds."""
        defaults: dict[str, Value] = {"Double": 0.0, "Int32": 0, "Boolean": False, "String": ""}
        return defaults[self.value]

    def coerce(self, value: object) -> Value:
        """`value` as this type's Python value; TypeError/ValueError if it cannot be one."""
        if self is VariantKind.STRING:
            if not isinstance(value, str):
                raise TypeError(f"expected a string, got {value!r}")
            return value
        if self is VariantKind.BOOLEAN:
            if not isinstance(value, bool):
                raise TypeError(f"expected a boolean, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {value!r}")
        if self is VariantKind.INT32:
            if value != int(value):
                raise ValueError(f"expected an integer, got {value!r}")
            return int(value)
        return float(value)


@dataclass(frozen=True, slots=True)
class OpcUaPoint:
    """One variable of a charge point: type, unit, plausible range, writability.

    `values` lists the allowed strings of an enumerated string point (status).
    `subscribe` says whether the driver monitors it (False: read on connect only).
    """

    name: str
    type: VariantKind
    unit: str = ""
    min: float | None = None
    max: float | None = None
    writable: bool = False
    subscribe: bool = True
    values: tuple[str, ...] = ()
    description: str = ""

    def check(self, value: object) -> Value:
        """`value` coerced to the point's type; ValueError/TypeError if implausible."""
        v = self.type.coerce(value)
        if isinstance(v, str):
            if self.values and v not in self.values:
                raise ValueError(f"{self.name}: {v!r} is not one of {', '.join(self.values)}")
            return v
        if isinstance(v, bool):
            return v
        if self.min is not None and v < self.min:
            raise ValueError(f"{self.name}: {v} is below {self.min}")
        if self.max is not None and v > self.max:
            raise ValueError(f"{self.name}: {v} is above {self.max}")
        return v


@dataclass(frozen=True, slots=True)
class ChargePointProfile:
    """The information model: namespace, folder and the variables of every charge point.

    Node ids are strings `{cp_id}.{point}` in `namespace`; the variables sit in the
    object `{folder}/{cp_id}` under the Objects folder.
    """

    name: str
    version: int
    namespace: str
    folder: str
    connectors: int
    points: tuple[OpcUaPoint, ...]
    by_name: Mapping[str, OpcUaPoint]
    source: str = ""

    def point(self, name: str) -> OpcUaPoint:
        """The point called `name`; KeyError names the profile if there is none."""
        try:
            return self.by_name[name]
        except KeyError:
            raise KeyError(f"{self.name} has no point {name!r}") from None

    @staticmethod
    def node_id(cp_id: str, point: str) -> str:
        """String identifier of a variable (without the namespace index)."""
        return f"{cp_id}.{point}"

    @staticmethod
    def check_cp_id(cp_id: str) -> str:
        """`cp_id` if it can be part of a node id; ValueError otherwise."""
        if not cp_id or "." in cp_id or any(c.isspace() for c in cp_id):
            raise ValueError(f"charge point id {cp_id!r} must be non-empty, without dots or spaces")
        return cp_id

    @property
    def writable(self) -> tuple[OpcUaPoint, ...]:
        """Points a client may write."""
        return tuple(p for p in self.points if p.writable)

    @property
    def subscribed(self) -> tuple[OpcUaPoint, ...]:
        """Points the driver monitors."""
        return tuple(p for p in self.points if p.subscribe)


_POINT_KEYS = frozenset(
    {"name", "type", "unit", "min", "max", "writable", "subscribe", "values", "description"}
)
_REQUIRED_POINTS = {
    "status": VariantKind.STRING,
    "current_limit_a": VariantKind.DOUBLE,
    "max_current_a": VariantKind.DOUBLE,
    "failsafe_current_a": VariantKind.DOUBLE,
    "watchdog_s": VariantKind.DOUBLE,
    "heartbeat": VariantKind.INT32,
}


class _Loader:
    """Validates raw TOML data; every error names the key and the file."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, key=key, file=self.file)

    def string(self, data: Mapping[str, Any], key: str, path: str, *, default: str | None = None) -> str:
        value = data.get(key, default)
        if not isinstance(value, str) or (default is None and not value):
            raise self.fail(f"{path}{key}", f"must be a non-empty string, got {value!r}")
        return value

    def integer(self, data: Mapping[str, Any], key: str, path: str, *, lo: int, hi: int) -> int:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{path}{key}", f"must be an integer, got {value!r}")
        if not lo <= value <= hi:
            raise self.fail(f"{path}{key}", f"must be in {lo}..{hi}, got {value}")
        return value

    def number(self, data: Mapping[str, Any], key: str, path: str) -> float | None:
        value = data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(f"{path}{key}", f"must be a number, got {value!r}")
        return float(value)

    def flag(self, data: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(f"{path}{key}", "must be true or false")
        return value

    def point(self, raw: Any, path: str) -> OpcUaPoint:
        if not isinstance(raw, dict):
            raise self.fail(path, "must be a table")
        unknown = sorted(set(raw) - _POINT_KEYS)
        if unknown:
            raise self.fail(f"{path}.{unknown[0]}", "unknown key")
        name = raw.get("name")
        if not isinstance(name, str) or not name.isidentifier():
            raise self.fail(f"{path}.name", f"must be an identifier, got {name!r}")
        try:
            kind = VariantKind(str(raw.get("type")))
        except ValueError:
            choices = ", ".join(t.value for t in VariantKind)
            raise self.fail(f"{path}.type", f"must be one of {choices}, got {raw.get('type')!r}") from None
        lo = self.number(raw, "min", f"{path}.")
        hi = self.number(raw, "max", f"{path}.")
        numeric = kind in (VariantKind.DOUBLE, VariantKind.INT32)
        if (lo is not None or hi is not None) and not numeric:
            raise self.fail(f"{path}.{'min' if lo is not None else 'max'}", f"a {kind.value} has no range")
        if lo is not None and hi is not None and lo > hi:
            raise self.fail(f"{path}.min", f"min {lo} is above max {hi}")
        values = raw.get("values", [])
        if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
            raise self.fail(f"{path}.values", "must be an array of non-empty strings")
        if values and kind is not VariantKind.STRING:
            raise self.fail(f"{path}.values", "only a String point can list values")
        if len(set(values)) != len(values):
            raise self.fail(f"{path}.values", "has duplicates")
        return OpcUaPoint(
            name=name,
            type=kind,
            unit=self.string(raw, "unit", f"{path}.", default=""),
            min=lo,
            max=hi,
            writable=self.flag(raw, "writable", f"{path}.", False),
            subscribe=self.flag(raw, "subscribe", f"{path}.", True),
            values=tuple(values),
            description=self.string(raw, "description", f"{path}.", default=""),
        )

    def profile(self, data: Mapping[str, Any]) -> ChargePointProfile:
        head = data.get("profile")
        if not isinstance(head, dict):
            raise self.fail("profile", "missing or not a table")
        name = self.string(head, "name", "profile.")
        version = self.integer(head, "version", "profile.", lo=1, hi=1_000_000)
        namespace = self.string(head, "namespace", "profile.")
        if ":" not in namespace:
            raise self.fail("profile.namespace", f"must be a URI, got {namespace!r}")
        folder = self.string(head, "folder", "profile.")
        if not folder.isidentifier():
            raise self.fail("profile.folder", f"must be an identifier, got {folder!r}")
        connectors = self.integer(head, "connectors", "profile.", lo=1, hi=1)
        raw_points = data.get("points")
        if not isinstance(raw_points, list) or not raw_points:
            raise self.fail("points", "must be a non-empty array of tables")
        points = tuple(self.point(p, f"points[{i}]") for i, p in enumerate(raw_points))
        by_name: dict[str, OpcUaPoint] = {}
        for i, p in enumerate(points):
            if p.name in by_name:
                raise self.fail(f"points[{i}].name", f"duplicate point {p.name!r}")
            by_name[p.name] = p
        for required, kind in _REQUIRED_POINTS.items():
            p_or_none = by_name.get(required)
            if p_or_none is None:
                raise self.fail("points", f"the model needs a point {required!r}")
            if p_or_none.type is not kind:
                i = points.index(p_or_none)
                raise self.fail(f"points[{i}].type", f"{required} must be {kind.value}")
        for required in ("current_limit_a", "heartbeat", "failsafe_current_a"):
            if not by_name[required].writable:
                i = points.index(by_name[required])
                raise self.fail(f"points[{i}].writable", f"{required} must be writable")
        return ChargePointProfile(
            name=name,
            version=version,
            namespace=namespace,
            folder=folder,
            connectors=connectors,
            points=points,
            by_name=MappingProxyType(by_name),
            source=self.file,
        )


def parse_profile(data: Mapping[str, Any], file: str = "<memory>") -> ChargePointProfile:
    """Validate already-parsed TOML data (tests build variants of the profile this way)."""
    return _Loader(file).profile(data)


def load_profile(path: str | Path = DEFAULT_PROFILE_PATH) -> ChargePointProfile:
    """Read and validate a charge point profile from a TOML file."""
    return parse_profile(read_profile_toml(path), str(path))


@functools.cache
def default_profile() -> ChargePointProfile:
    """The shipped charge point profile, loaded once."""
    return load_profile(DEFAULT_PROFILE_PATH)
