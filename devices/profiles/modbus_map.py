"""Generic Modbus register maps: point types, points and blocks, validated from TOML tables.

Shared by every Modbus profile (lamp controllers, message signs) and by the register codec
(`devices.protocols.registers`). A block's TOML table is checked in two steps: its shape
(keys, types, ranges) by pydantic models through `edge.tomlfile`, then the relations
pydantic cannot name a key for (overlapping registers, duplicate names, bit numbers) by
`build_block`, whose errors name the exact key the same way ("lamp.points.1.offset").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, TypeVar

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from devices.profiles import Identifier, StrictModel, choice
from edge.errors import ConfigError

__all__ = [
    "ADDRESS_SPACE",
    "MODBUS_MAX_READ",
    "Block",
    "BlockSpec",
    "Point",
    "PointSpec",
    "PointType",
    "build_block",
]

MODBUS_MAX_READ = 125
ADDRESS_SPACE = 65536
Address = Annotated[int, Field(ge=0, le=ADDRESS_SPACE - 1)]
M = TypeVar("M", bound=BaseModel)


class PointType(StrEnum):
    """Wire type of a point; multi-register types are big-endian, high word first."""

    U16 = "u16"
    I16 = "i16"
    U32 = "u32"
    I32 = "i32"

    @property
    def registers(self) -> int:
        """Registers the type occupies."""
        return 1 if self in (PointType.U16, PointType.I16) else 2

    @property
    def signed(self) -> bool:
        """Whether the raw value is two's complement."""
        return self in (PointType.I16, PointType.I32)

    @property
    def raw_min(self) -> int:
        """Smallest raw integer the type holds."""
        return -(1 << (16 * self.registers - 1)) if self.signed else 0

    @property
    def raw_max(self) -> int:
        """Largest raw integer the type holds."""
        bits = 16 * self.registers
        return (1 << (bits - 1)) - 1 if self.signed else (1 << bits) - 1


@dataclass(frozen=True, slots=True)
class Point:
    """One value in a block: where it sits, how it is encoded, which values are plausible.

    `min`/`max` are in engineering units (after scaling); a decoded value outside them
    is a device fault, an encoded one a caller's mistake. `bits` names single bits of a
    status register (name, bit number). `deadband` (engineering units, 0 = none): a change
    no larger is not reported, so sensor noise and slow counters do not cost an event a poll.
    """

    name: str
    offset: int
    type: PointType
    scale: float = 1.0
    unit: str = ""
    min: float | None = None
    max: float | None = None
    writable: bool = False
    bits: tuple[tuple[str, int], ...] = ()
    deadband: float = 0.0

    @property
    def count(self) -> int:
        """Registers the point occupies."""
        return self.type.registers

    @property
    def is_integer(self) -> bool:
        """Whether the decoded value is an int (scale 1) rather than a float."""
        return self.scale == 1.0


@dataclass(frozen=True, slots=True)
class Block:
    """A group of points at a base address: the controller block or one lamp block."""

    name: str
    base: int
    points: tuple[Point, ...]
    by_name: Mapping[str, Point]

    @property
    def span(self) -> int:
        """Registers from the block's first address to the end of its last point."""
        return max(p.offset + p.count for p in self.points)

    def point(self, name: str) -> Point:
        """The point called `name`; KeyError names the block if there is none."""
        try:
            return self.by_name[name]
        except KeyError:
            raise KeyError(f"{self.name} has no point {name!r}") from None


class PointSpec(StrictModel):
    """One `[[block.points]]` table (field order matters: later checks read earlier fields)."""

    name: Identifier
    offset: Address
    type: Annotated[PointType, choice(PointType)]
    scale: float = Field(default=1.0, gt=0)
    unit: str = ""
    max: float | None = None
    min: float | None = None
    writable: bool = False
    bits: dict[str, int] = Field(default_factory=dict)
    deadband: float = Field(default=0.0, ge=0)

    @field_validator("max")
    @classmethod
    def _max(cls, v: float | None, info: ValidationInfo) -> float | None:
        t, scale = info.data.get("type"), info.data.get("scale", 1.0)
        if v is not None and isinstance(t, PointType) and v > t.raw_max * scale:
            raise ValueError(f"{v} cannot be encoded as {t.value}")
        return v

    @field_validator("min")
    @classmethod
    def _min(cls, v: float | None, info: ValidationInfo) -> float | None:
        t, scale, hi = info.data.get("type"), info.data.get("scale", 1.0), info.data.get("max")
        if v is not None and hi is not None and v > hi:
            raise ValueError(f"min {v} is above max {hi}")
        if v is not None and isinstance(t, PointType) and v < t.raw_min * scale:
            raise ValueError(f"{v} cannot be encoded as {t.value}")
        return v

    def to_point(self) -> Point:
        """The frozen point the codec uses (bits sorted by bit number)."""
        bits = tuple(sorted(self.bits.items(), key=lambda nb: nb[1]))
        return Point(
            self.name,
            self.offset,
            self.type,
            self.scale,
            self.unit,
            self.min,
            self.max,
            self.writable,
            bits,
            self.deadband,
        )


class BlockSpec(StrictModel):
    """A block table: its base address and at least one point."""

    base: Address
    points: list[PointSpec] = Field(min_length=1)


def build_block(spec: BlockSpec, name: str, file: str) -> Block:
    """The frozen block; ConfigError (naming the key) for overlaps, duplicates and bad bits."""

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(message, key=f"{name}.{key}", file=file)

    points = tuple(p.to_point() for p in spec.points)
    by_name: dict[str, Point] = {}
    used: dict[int, str] = {}
    names = {p.name for p in points}
    for i, p in enumerate(points):
        if p.name in by_name:
            raise fail(f"points.{i}.name", f"duplicate point {p.name!r}")
        by_name[p.name] = p
        for reg in range(p.offset, p.offset + p.count):
            if reg in used:
                raise fail(f"points.{i}.offset", f"register {reg} overlaps point {used[reg]!r}")
            used[reg] = p.name
        width = 16 * p.type.registers
        seen: dict[int, str] = {}
        for bit_name, bit in spec.points[i].bits.items():
            key = f"points.{i}.bits.{bit_name}"
            if not bit_name.isidentifier():
                raise fail(key, "must be an identifier")
            if not 0 <= bit < width:
                raise fail(key, f"must be in 0..{width - 1}, got {bit}")
            if bit in seen:
                raise fail(key, f"bit {bit} already used by {seen[bit]}")
            seen[bit] = bit_name
            if bit_name in names:  # bit names become telemetry keys beside the point names
                raise fail(key, "clashes with a point")
    return Block(name, spec.base, points, MappingProxyType(by_name))
