"""Lamp controller profile: the register map of a Modbus lamp controller, loaded from TOML.

The profile is data (devices/profiles/lamp_controller.toml) so that the driver and the
simulator read the same map and cannot drift. It is validated by pydantic models through
the one TOML loader (`edge.tomlfile`) and the generic Modbus map checks
(`devices.profiles.modbus_map`); a bad profile fails at load with a `ConfigError` that
names the key and the file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from devices.profiles import StrictModel
from devices.profiles.modbus_map import (
    ADDRESS_SPACE,
    MODBUS_MAX_READ,
    Block,
    BlockSpec,
    Point,
    build_block,
)
from edge.errors import ConfigError
from edge.tomlfile import parse_model, read_toml

DEFAULT_PROFILE_PATH = Path(__file__).parent / "lamp_controller.toml"


@dataclass(frozen=True, slots=True)
class LampControllerProfile:
    """Register map of a Modbus lamp controller: a controller block and N lamp blocks.

    Lamp `i` (0-based) starts at `lamp.base + i * lamp_stride`. `table` (optional): the
    register of one lamp point for every lamp in a row, `table.base + i` (a DALI gateway's
    arc-level table), so many lamps are written with one write-multiple and read back with
    one read instead of a request per lamp.
    """

    name: str
    version: int
    max_read_registers: int
    controller: Block
    lamp: Block
    lamp_stride: int
    max_lamps: int
    source: str = ""
    table: LampTable | None = None

    def lamp_base(self, index: int) -> int:
        """First register of lamp `index`."""
        if not 0 <= index < self.max_lamps:
            raise ValueError(f"lamp index {index} outside 0..{self.max_lamps - 1}")
        return self.lamp.base + index * self.lamp_stride

    def lamp_address(self, index: int, point: str) -> int:
        """Register address of `point` of lamp `index`."""
        return self.lamp_base(index) + self.lamp.point(point).offset

    def table_index(self, address: int) -> int | None:
        """The lamp index whose table register `address` is (None: not in the table)."""
        t = self.table
        if t is None or not t.base <= address < t.base + self.max_lamps:
            return None
        return address - t.base

    def controller_address(self, point: str) -> int:
        """Register address of a controller point."""
        return self.controller.base + self.controller.point(point).offset

    def locate(self, address: int) -> tuple[int | None, Point] | None:
        """Which point covers `address`: (lamp index or None for the controller, point).

        None when the address is in no point (a gap or outside the map). A table register
        is the table's point of its lamp.
        """
        if self.table is not None and (index := self.table_index(address)) is not None:
            return index, self.lamp.point(self.table.point)
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
        end = self.lamp.base + self.max_lamps * self.lamp_stride
        return end if self.table is None else max(end, self.table.base + self.max_lamps)


@dataclass(frozen=True, slots=True)
class LampTable:
    """One writable single-register lamp point for every lamp in a row: lamp `i` at `base + i`.

    `read_write`: the gateway answers function 23 (read/write multiple registers), so a run of
    lamps is written and read back in one request instead of two."""

    base: int
    point: str
    read_write: bool = False


class _Head(StrictModel):
    name: str = Field(min_length=1)
    version: int = Field(ge=1, le=1_000_000)
    max_read_registers: int = Field(ge=1, le=MODBUS_MAX_READ)


class _LampBlock(BlockSpec):
    stride: int = Field(ge=1, le=ADDRESS_SPACE)
    max_lamps: int = Field(ge=1, le=ADDRESS_SPACE)


class _TableSpec(StrictModel):
    base: int = Field(ge=0, lt=ADDRESS_SPACE)
    point: str = Field(min_length=1)
    read_write: bool = False


class _ProfileSpec(StrictModel):
    """The profile file: `[profile]`, `[controller]`, `[lamp]` with their points, and `[table]`."""

    profile: _Head
    controller: BlockSpec
    lamp: _LampBlock
    table: _TableSpec | None = None


def parse_profile(data: Mapping[str, Any], file: str = "<memory>") -> LampControllerProfile:
    """Validate already-parsed TOML data (tests build variants of the profile this way)."""
    spec = parse_model(_ProfileSpec, data, file)
    controller = build_block(spec.controller, "controller", file)
    lamp = build_block(spec.lamp, "lamp", file)
    stride, max_lamps, max_read = spec.lamp.stride, spec.lamp.max_lamps, spec.profile.max_read_registers

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(message, key=key, file=file)

    if lamp.span > stride:
        raise fail("lamp.stride", f"{stride} is shorter than the lamp block ({lamp.span})")
    if lamp.span > max_read:
        raise fail("lamp.points", f"a lamp block ({lamp.span}) exceeds one read")
    if controller.span > max_read:
        raise fail("controller.points", "the controller block exceeds one read")
    c_end = controller.base + controller.span
    if controller.base < lamp.base + max_lamps * stride and lamp.base < c_end:
        raise fail("lamp.base", "lamp blocks overlap the controller block")
    if lamp.base + max_lamps * stride > ADDRESS_SPACE:
        raise fail("lamp.max_lamps", "lamp blocks run past register 65535")
    table = None if spec.table is None else _table(spec.table, controller, lamp, stride, max_lamps, fail)
    return LampControllerProfile(
        name=spec.profile.name,
        version=spec.profile.version,
        max_read_registers=max_read,
        controller=controller,
        lamp=lamp,
        lamp_stride=stride,
        max_lamps=max_lamps,
        source=file,
        table=table,
    )


def _table(
    spec: _TableSpec,
    controller: Block,
    lamp: Block,
    stride: int,
    max_lamps: int,
    fail: Callable[[str, str], ConfigError],
) -> LampTable:
    """The lamp table, checked: a writable one-register lamp point, clear of every block."""
    pt = lamp.by_name.get(spec.point)
    if pt is None:
        raise fail("table.point", f"{spec.point!r} is not a lamp point")
    if not pt.writable or pt.count != 1:
        raise fail("table.point", f"{spec.point!r} must be writable and one register wide")
    start, end = spec.base, spec.base + max_lamps
    if end > ADDRESS_SPACE:
        raise fail("table.base", "the table runs past register 65535")
    blocks = (
        (controller.base, controller.base + controller.span),
        (lamp.base, lamp.base + max_lamps * stride),
    )
    if any(start < b_end and b_start < end for b_start, b_end in blocks):
        raise fail("table.base", f"registers {start}..{end - 1} overlap the controller or lamp blocks")
    return LampTable(spec.base, spec.point, spec.read_write)


def load_profile(path: str | Path = DEFAULT_PROFILE_PATH) -> LampControllerProfile:
    """Read and validate a lamp controller profile from a TOML file."""
    return parse_profile(read_toml(path), str(path))


@functools.cache
def default_profile() -> LampControllerProfile:
    """The shipped lamp controller profile, loaded once."""
    return load_profile(DEFAULT_PROFILE_PATH)
