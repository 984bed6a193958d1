"""Lamp controller register map, loaded from TOML into frozen dataclasses.

The profile is data (devices/profiles/lamp_controller.toml) so that the driver and the
simulator read the same map and cannot drift; a bad profile fails at load with a
`ConfigError` that names the key and the file.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from edge.errors import ConfigError

DEFAULT_PROFILE_PATH = Path(__file__).parent / "lamp_controller.toml"
MODBUS_MAX_READ = 125
_ADDRESS_SPACE = 65536


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
    status register (name, bit number).
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


@dataclass(frozen=True, slots=True)
class LampControllerProfile:
    """Register map of a Modbus lamp controller: a controller block and N lamp blocks.

    Lamp `i` (0-based) starts at `lamp.base + i * lamp_stride`.
    """

    name: str
    version: int
    max_read_registers: int
    controller: Block
    lamp: Block
    lamp_stride: int
    max_lamps: int
    source: str = ""

    def lamp_base(self, index: int) -> int:
        """First register of lamp `index`."""
        if not 0 <= index < self.max_lamps:
            raise ValueError(f"lamp index {index} outside 0..{self.max_lamps - 1}")
        return self.lamp.base + index * self.lamp_stride

    def lamp_address(self, index: int, point: str) -> int:
        """Register address of `point` of lamp `index`."""
        return self.lamp_base(index) + self.lamp.point(point).offset

    def controller_address(self, point: str) -> int:
        """Register address of a controller point."""
        return self.controller.base + self.controller.point(point).offset

    def locate(self, address: int) -> tuple[int | None, Point] | None:
        """Which point covers `address`: (lamp index or None for the controller, point).

        None when the address is in no point (a gap or outside the map).
        """
        for p in self.controller.points:
            start = self.controller.base + p.offset
            if start <= address < start + p.count:
                return None, p
        rel = address - self.lamp.base
        if rel < 0:
            return None
        index, off = divmod(rel, self.lamp_stride)
        if index >= self.max_lamps:
            return None
        for p in self.lamp.points:
            if p.offset <= off < p.offset + p.count:
                return index, p
        return None

    @property
    def register_end(self) -> int:
        """One past the last register any lamp can use."""
        return self.lamp.base + self.max_lamps * self.lamp_stride


_POINT_KEYS = frozenset({"name", "offset", "type", "scale", "unit", "min", "max", "writable", "bits"})


class _Loader:
    """Validates raw TOML data; every error names the key and the file."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, key=key, file=self.file)

    def table(self, data: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
        value = data.get(key)
        if not isinstance(value, dict):
            raise self.fail(f"{path}{key}", "missing or not a table")
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

    def point(self, raw: Any, path: str) -> Point:
        if not isinstance(raw, dict):
            raise self.fail(path, "must be a table")
        unknown = sorted(set(raw) - _POINT_KEYS)
        if unknown:
            raise self.fail(f"{path}.{unknown[0]}", "unknown key")
        name = raw.get("name")
        if not isinstance(name, str) or not name.isidentifier():
            raise self.fail(f"{path}.name", f"must be an identifier, got {name!r}")
        offset = self.integer(raw, "offset", f"{path}.", lo=0, hi=_ADDRESS_SPACE - 1)
        try:
            ptype = PointType(str(raw.get("type")))
        except ValueError:
            choices = ", ".join(t.value for t in PointType)
            raise self.fail(f"{path}.type", f"must be one of {choices}, got {raw.get('type')!r}") from None
        scale = self.number(raw, "scale", f"{path}.")
        if scale is None:
            scale = 1.0
        if scale <= 0:
            raise self.fail(f"{path}.scale", f"must be positive, got {scale}")
        unit = raw.get("unit", "")
        if not isinstance(unit, str):
            raise self.fail(f"{path}.unit", "must be a string")
        lo = self.number(raw, "min", f"{path}.")
        hi = self.number(raw, "max", f"{path}.")
        if lo is not None and hi is not None and lo > hi:
            raise self.fail(f"{path}.min", f"min {lo} is above max {hi}")
        if lo is not None and lo < ptype.raw_min * scale:
            raise self.fail(f"{path}.min", f"{lo} cannot be encoded as {ptype.value}")
        if hi is not None and hi > ptype.raw_max * scale:
            raise self.fail(f"{path}.max", f"{hi} cannot be encoded as {ptype.value}")
        writable = raw.get("writable", False)
        if not isinstance(writable, bool):
            raise self.fail(f"{path}.writable", "must be true or false")
        bits = self.bits(raw.get("bits", {}), f"{path}.bits", ptype)
        return Point(name, offset, ptype, scale, unit, lo, hi, writable, bits)

    def bits(self, raw: Any, path: str, ptype: PointType) -> tuple[tuple[str, int], ...]:
        if not isinstance(raw, dict):
            raise self.fail(path, "must be a table of name = bit number")
        width = 16 * ptype.registers
        seen: dict[int, str] = {}
        for name, bit in raw.items():
            if not name.isidentifier():
                raise self.fail(f"{path}.{name}", "must be an identifier")
            self.integer(raw, name, f"{path}.", lo=0, hi=width - 1)
            if bit in seen:
                raise self.fail(f"{path}.{name}", f"bit {bit} already used by {seen[bit]}")
            seen[bit] = name
        return tuple(sorted(((n, b) for n, b in raw.items()), key=lambda nb: nb[1]))

    def block(self, raw: Mapping[str, Any], name: str) -> Block:
        base = self.integer(raw, "base", f"{name}.", lo=0, hi=_ADDRESS_SPACE - 1)
        raw_points = raw.get("points")
        if not isinstance(raw_points, list) or not raw_points:
            raise self.fail(f"{name}.points", "must be a non-empty array of tables")
        points = tuple(self.point(p, f"{name}.points[{i}]") for i, p in enumerate(raw_points))
        by_name: dict[str, Point] = {}
        used: dict[int, str] = {}
        for i, p in enumerate(points):
            if p.name in by_name:
                raise self.fail(f"{name}.points[{i}].name", f"duplicate point {p.name!r}")
            by_name[p.name] = p
            for reg in range(p.offset, p.offset + p.count):
                if reg in used:
                    raise self.fail(
                        f"{name}.points[{i}].offset",
                        f"register {reg} overlaps point {used[reg]!r}",
                    )
                used[reg] = p.name
            # bit names become telemetry keys beside the point names
            for bit_name, _ in p.bits:
                if bit_name in by_name or any(bit_name == q.name for q in points):
                    raise self.fail(f"{name}.points[{i}].bits.{bit_name}", "clashes with a point")
        return Block(name, base, points, MappingProxyType(by_name))

    def profile(self, data: Mapping[str, Any]) -> LampControllerProfile:
        head = self.table(data, "profile", "")
        pname = head.get("name")
        if not isinstance(pname, str) or not pname:
            raise self.fail("profile.name", "must be a non-empty string")
        version = self.integer(head, "version", "profile.", lo=1, hi=1_000_000)
        max_read = self.integer(head, "max_read_registers", "profile.", lo=1, hi=MODBUS_MAX_READ)
        controller = self.block(self.table(data, "controller", ""), "controller")
        raw_lamp = self.table(data, "lamp", "")
        lamp = self.block(raw_lamp, "lamp")
        stride = self.integer(raw_lamp, "stride", "lamp.", lo=1, hi=_ADDRESS_SPACE)
        max_lamps = self.integer(raw_lamp, "max_lamps", "lamp.", lo=1, hi=_ADDRESS_SPACE)
        if lamp.span > stride:
            raise self.fail("lamp.stride", f"{stride} is shorter than the lamp block ({lamp.span})")
        if lamp.span > max_read:
            raise self.fail("lamp.points", f"a lamp block ({lamp.span}) exceeds one read")
        if controller.span > max_read:
            raise self.fail("controller.points", "the controller block exceeds one read")
        c_end = controller.base + controller.span
        if controller.base < lamp.base + max_lamps * stride and lamp.base < c_end:
            raise self.fail("lamp.base", "lamp blocks overlap the controller block")
        if lamp.base + max_lamps * stride > _ADDRESS_SPACE:
            raise self.fail("lamp.max_lamps", "lamp blocks run past register 65535")
        return LampControllerProfile(
            name=pname,
            version=version,
            max_read_registers=max_read,
            controller=controller,
            lamp=lamp,
            lamp_stride=stride,
            max_lamps=max_lamps,
            source=self.file,
        )


def parse_profile(data: Mapping[str, Any], file: str = "<memory>") -> LampControllerProfile:
    """Validate already-parsed TOML data (tests build variants of the profile this way)."""
    return _Loader(file).profile(data)


def read_profile_toml(path: str | Path) -> dict[str, Any]:
    """A profile file's TOML data; unreadable or invalid files raise ConfigError naming the file."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read profile: {exc.strerror}", file=str(path)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=str(path)) from exc


def load_profile(path: str | Path = DEFAULT_PROFILE_PATH) -> LampControllerProfile:
    """Read and validate a lamp controller profile from a TOML file."""
    return parse_profile(read_profile_toml(path), str(path))


@functools.cache
def default_profile() -> LampControllerProfile:
    """The shipped lamp controller profile, loaded once."""
    return load_profile(DEFAULT_PROFILE_PATH)
