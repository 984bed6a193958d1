"""Charge point OPC UA information model, loaded from TOML into frozen dataclasses.

The model is data (devices/profiles/charge_point.toml) so that the driver and the
simulator build and read the same address space. It is validated by pydantic models
through the one TOML loader (`edge.tomlfile`); a bad profile fails at load with a
`ConfigError` that names the key and the file.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator

from devices.profiles import Identifier, NonEmpty, StrictModel, choice
from edge.errors import ConfigError
from edge.events import Value
from edge.tomlfile import parse_model, read_toml

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

    name: Identifier
    type: Annotated[VariantKind, choice(VariantKind)]
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


_REQUIRED_POINTS = {
    "status": VariantKind.STRING,
    "current_limit_a": VariantKind.DOUBLE,
    "max_current_a": VariantKind.DOUBLE,
    "failsafe_current_a": VariantKind.DOUBLE,
    "watchdog_s": VariantKind.DOUBLE,
    "heartbeat": VariantKind.INT32,
}


class _PointSpec(StrictModel):
    """One `[[points]]` table (field order matters: later checks read earlier fields)."""

    name: Identifier
    type: Annotated[VariantKind, choice(VariantKind)]
    unit: str = ""
    max: float | None = None
    min: float | None = None
    writable: bool = False
    subscribe: bool = True
    values: list[NonEmpty] = Field(default_factory=list)
    description: str = ""

    @field_validator("max", "min")
    @classmethod
    def _range(cls, v: float | None, info: ValidationInfo) -> float | None:
        kind, hi = info.data.get("type"), info.data.get("max")
        if v is not None and kind not in (VariantKind.DOUBLE, VariantKind.INT32, None):
            raise ValueError(f"a {kind} has no range")
        if info.field_name == "min" and v is not None and hi is not None and v > hi:
            raise ValueError(f"min {v} is above max {hi}")
        return v

    @field_validator("values")
    @classmethod
    def _values(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if v and info.data.get("type") is not VariantKind.STRING:
            raise ValueError("only a String point can list values")
        if len(set(v)) != len(v):
            raise ValueError("has duplicates")
        return v

    def to_point(self) -> OpcUaPoint:
        return OpcUaPoint(
            name=self.name,
            type=self.type,
            unit=self.unit,
            min=self.min,
            max=self.max,
            writable=self.writable,
            subscribe=self.subscribe,
            values=tuple(self.values),
            description=self.description,
        )


class _Head(StrictModel):
    name: NonEmpty
    version: int = Field(ge=1, le=1_000_000)
    namespace: NonEmpty
    folder: Identifier
    connectors: int = Field(ge=1, le=1)

    @field_validator("namespace")
    @classmethod
    def _uri(cls, v: str) -> str:
        if ":" not in v:
            raise ValueError(f"must be a URI, got {v!r}")
        return v


class _ProfileSpec(StrictModel):
    """The profile file: `[profile]` and the `[[points]]` of one charge point."""

    profile: _Head
    points: list[_PointSpec] = Field(min_length=1)


def parse_profile(data: Mapping[str, Any], file: str = "<memory>") -> ChargePointProfile:
    """Validate already-parsed TOML data (tests build variants of the profile this way).

    The shape goes through pydantic (`edge.tomlfile`); what the driver needs of the model
    (required points, their types, writability) is checked here, naming the point's key.
    """
    spec = parse_model(_ProfileSpec, data, file)

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(message, key=key, file=file)

    points = tuple(p.to_point() for p in spec.points)
    by_name: dict[str, OpcUaPoint] = {}
    for i, p in enumerate(points):
        if p.name in by_name:
            raise fail(f"points.{i}.name", f"duplicate point {p.name!r}")
        by_name[p.name] = p
    for required, kind in _REQUIRED_POINTS.items():
        p_or_none = by_name.get(required)
        if p_or_none is None:
            raise fail("points", f"the model needs a point {required!r}")
        if p_or_none.type is not kind:
            raise fail(f"points.{points.index(p_or_none)}.type", f"{required} must be {kind.value}")
    for required in ("current_limit_a", "heartbeat", "failsafe_current_a"):
        if not by_name[required].writable:
            raise fail(f"points.{points.index(by_name[required])}.writable", f"{required} must be writable")
    head = spec.profile
    return ChargePointProfile(
        name=head.name,
        version=head.version,
        namespace=head.namespace,
        folder=head.folder,
        connectors=head.connectors,
        points=points,
        by_name=MappingProxyType(by_name),
        source=file,
    )


def load_profile(path: str | Path = DEFAULT_PROFILE_PATH) -> ChargePointProfile:
    """Read and validate a charge point profile from a TOML file."""
    return parse_profile(read_toml(path), str(path))


@functools.cache
def default_profile() -> ChargePointProfile:
    """The shipped charge point profile, loaded once."""
    return load_profile(DEFAULT_PROFILE_PATH)
