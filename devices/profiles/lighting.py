"""Lamp controller profile: the register map of a Modbus lamp controller, loaded from TOML.

The profile is data (devices/profiles/lamp_controller.toml) so that the driver and the
simulator read the same map and cannot drift. It is validated by pydantic models through
the one TOML loader (`edge.tomlfile`) and the generic Modbus map checks
(`devices.profiles.modbus_map`); a bad profile fails at load with a `ConfigError` that
names the key and the file.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
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


class _Head(StrictModel):
    name: str = Field(min_length=1)
    version: int = Field(ge=1, le=1_000_000)
    max_read_registers: int = Field(ge=1, le=MODBUS_MAX_READ)


class _LampBlock(BlockSpec):
    stride: int = Field(ge=1, le=ADDRESS_SPACE)
    max_lamps: int = Field(ge=1, le=ADDRESS_SPACE)


class _ProfileSpec(StrictModel):
    """The profile file: `[profile]`, `[controller]` and `[lamp]` with their points."""

    profile: _Head
    controller: BlockSpec
    lamp: _LampBlock


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
    return LampControllerProfile(
        name=spec.profile.name,
        version=spec.profile.version,
        max_read_registers=max_read,
        controller=controller,
        lamp=lamp,
        lamp_stride=stride,
        max_lamps=max_lamps,
        source=file,
    )


def load_profile(path: str | Path = DEFAULT_PROFILE_PATH) -> LampControllerProfile:
    """Read and validate a lamp controller profile from a TOML file."""
    return parse_profile(read_toml(path), str(path))


@functools.cache
def default_profile() -> LampControllerProfile:
    """The shipped lamp controller profile, loaded once."""
    return load_profile(DEFAULT_PROFILE_PATH)
