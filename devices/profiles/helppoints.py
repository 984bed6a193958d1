"""Help-point profile: the register block of an emergency call button in a lamp controller.

Data (devices/profiles/helppoint_modbus.toml), read by the driver and served by the
simulator, so the two cannot drift; validated through the one TOML loader and the generic
Modbus map checks (`devices.profiles.modbus_map`). A LoRaWAN help point is a LoRaWAN profile
(`lorawan_helppoint_button.toml`) read by the shared uplink ingest instead.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from devices.profiles import StrictModel
from devices.profiles.modbus_map import ADDRESS_SPACE, MODBUS_MAX_READ, Block, BlockSpec, build_block
from edge.errors import ConfigError
from edge.tomlfile import parse_model, read_toml

DEFAULT_PATH = Path(__file__).parent / "helppoint_modbus.toml"


@dataclass(frozen=True, slots=True)
class HelpPointProfile:
    """Where help point `slot` of a controller sits: `base + slot * stride`, `block.span` long."""

    name: str
    version: int
    block: Block
    stride: int
    max_points: int

    def base(self, slot: int) -> int:
        """First register of the help point in `slot`."""
        if not 0 <= slot < self.max_points:
            raise ValueError(f"help point slot {slot} outside 0..{self.max_points - 1}")
        return self.block.base + slot * self.stride


class _Head(StrictModel):
    name: str = Field(min_length=1)
    version: int = Field(ge=1, le=1_000_000)


class _Block(BlockSpec):
    stride: int = Field(ge=1, le=MODBUS_MAX_READ)
    max_points: int = Field(ge=1, le=256)


class _Spec(StrictModel):
    profile: _Head
    block: _Block


def parse_profile(data: Mapping[str, Any], file: str = "<memory>") -> HelpPointProfile:
    """Validate parsed TOML data; a bad map fails with a `ConfigError` naming key and file."""
    spec = parse_model(_Spec, data, file)
    block = build_block(spec.block, "block", file)
    if block.span > spec.block.stride:
        raise ConfigError(f"{spec.block.stride} is shorter than the block ({block.span})", key="block.stride",
                          file=file)  # fmt: skip
    if block.base + spec.block.max_points * spec.block.stride > ADDRESS_SPACE:
        raise ConfigError("the blocks run past register 65535", key="block.max_points", file=file)
    return HelpPointProfile(spec.profile.name, spec.profile.version, block, spec.block.stride,
                            spec.block.max_points)  # fmt: skip


@functools.cache
def default_profile() -> HelpPointProfile:
    """The shipped help-point block, loaded once."""
    return parse_profile(read_toml(DEFAULT_PATH), str(DEFAULT_PATH))
