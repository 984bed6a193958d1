"""Display profiles from TOML: pydantic models through `edge.tomlfile`, then the relations.

The shape of each table (keys, types, ranges) is checked by pydantic; what pydantic
cannot name a key for (topics that must differ, JSON keys that must be distinct, the
points and bits a sign needs, register overlaps) is checked after it, and every error
names the key and the file.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import BaseModel, Field, field_validator

from devices.profiles import NonEmpty, StrictModel, choice
from devices.profiles.display_types import (
    ARROWS,
    DEFAULT_LEVELS,
    LED_BOARD_PROFILE_PATH,
    VMS_CONTROL_POINTS,
    VMS_PROFILE_PATH,
    VMS_SLOT_POINTS,
    VMS_STATUS_BITS,
    BrightnessLevels,
    Charset,
    DisplayKind,
    DisplayProfile,
    LedBoardProfile,
    TextSpec,
    VmsProfile,
)
from devices.profiles.modbus_map import (
    ADDRESS_SPACE,
    MODBUS_MAX_READ,
    Block,
    BlockSpec,
    PointType,
    build_block,
)
from edge.errors import ConfigError
from edge.tomlfile import parse_model, read_toml

__all__ = [
    "default_led_board_profile",
    "default_vms_profile",
    "load_display_profile",
    "parse_led_board_profile",
    "parse_vms_profile",
]


_TOPIC_KEYS = ("content_topic", "brightness_topic", "status_topic")


class _Head(StrictModel):
    name: NonEmpty
    kind: str
    version: int = Field(ge=1, le=1_000_000)
    max_read_registers: int | None = Field(default=None, ge=1, le=MODBUS_MAX_READ)


class _Text(StrictModel):
    """`[text]` (field order matters: later checks read earlier fields)."""

    lines: int = Field(ge=1, le=16)
    chars_per_line: int = Field(ge=1, le=128)
    charset: Annotated[Charset, choice(Charset)]
    arrows: list[str]
    offset: int | None = Field(default=None, ge=0, le=MODBUS_MAX_READ)  # a sign's slot: where text starts

    @field_validator("arrows")
    @classmethod
    def _arrows(cls, v: list[str]) -> list[str]:
        if not v or v[0] != "none" or any(a not in ARROWS for a in v) or len(set(v)) != len(v):
            raise ValueError(f"must list distinct arrows of {ARROWS}, starting with 'none'")
        return v

    def spec(self) -> TextSpec:
        return TextSpec(self.lines, self.chars_per_line, self.charset, tuple(self.arrows))


class _Brightness(StrictModel):
    min: int | None = Field(default=None, ge=0, le=100)
    max: int | None = Field(default=None, ge=0, le=100)
    night: int = DEFAULT_LEVELS.night
    day: int = DEFAULT_LEVELS.day


class _Mqtt(StrictModel):
    content_topic: str
    brightness_topic: str
    status_topic: str
    qos: int = Field(ge=0, le=2)
    retain: bool = False
    status_interval_s: float = Field(gt=0, le=3600)
    offline_after_missed: int = Field(ge=1, le=1000)
    failsafe_after_s: float = Field(ge=0)

    @field_validator(*_TOPIC_KEYS)
    @classmethod
    def _topic(cls, v: str) -> str:
        if v.count("{id}") != 1 or any(c in v for c in "+#"):
            raise ValueError("must hold {id} once and no wildcards")
        return v


class _ContentKeys(StrictModel):
    message_id: NonEmpty
    lines: NonEmpty
    arrow: NonEmpty
    brightness: NonEmpty
    expires_at: NonEmpty


class _StatusKeys(StrictModel):
    online: NonEmpty
    brightness: NonEmpty
    pixel_faults: NonEmpty
    message_id: NonEmpty
    text: NonEmpty
    arrow: NonEmpty
    ts: NonEmpty


class _ContentTable(StrictModel):
    keys: _ContentKeys


class _StatusTable(StrictModel):
    keys: _StatusKeys


class _LedBoardSpec(StrictModel):
    profile: _Head
    mqtt: _Mqtt
    text: _Text
    brightness: _Brightness
    content: _ContentTable
    status: _StatusTable


class _SlotsBlock(BlockSpec):
    stride: int = Field(ge=1, le=MODBUS_MAX_READ)
    count: int = Field(ge=1, le=255)


class _VmsSpec(StrictModel):
    profile: _Head
    control: BlockSpec
    slots: _SlotsBlock
    text: _Text
    brightness: _Brightness = _Brightness()


class _Checks:
    """What pydantic cannot name a key for: relations between tables, each with its key."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, key=key, file=self.file)

    def kind(self, head: _Head, kind: DisplayKind) -> None:
        if head.kind != kind.value:
            raise self.fail("profile.kind", f"must be {kind.value!r}, got {head.kind!r}")

    def keys(self, table: str, keys: BaseModel) -> Mapping[str, str]:
        out = {k: str(v) for k, v in keys.model_dump().items()}
        if len(set(out.values())) != len(out):
            raise self.fail(f"{table}.keys", "two fields share a JSON key")
        return MappingProxyType(out)

    def levels(self, b: _Brightness, lo: int, hi: int) -> BrightnessLevels:
        """`[brightness] night` and `day` (optional: 40 and 100), within what the display takes."""
        for key, value in (("night", b.night), ("day", b.day)):
            if not lo <= value <= hi:
                raise self.fail(f"brightness.{key}", f"must be in {lo}..{hi}, got {value}")
        if b.night > b.day:
            raise self.fail("brightness.night", f"night {b.night} is above day {b.day}")
        return BrightnessLevels(night=b.night, day=b.day)

    def vms_points(self, control: Block, slot: Block, count: int) -> None:
        for names, block in ((VMS_CONTROL_POINTS, control), (VMS_SLOT_POINTS, slot)):
            for point in names:
                if point not in block.by_name:
                    raise self.fail(f"{block.name}.points", f"needs a point named {point!r}")
        for point in ("active_slot", "brightness"):
            if not control.point(point).writable:
                raise self.fail(f"control.points.{point}", "must be writable")
        for point in VMS_SLOT_POINTS:
            if not slot.point(point).writable:
                raise self.fail(f"slots.points.{point}", "must be writable")
        active = control.point("active_slot")
        if active.min != 0 or active.max != count:
            raise self.fail(
                "control.points.active_slot", f"must have min = 0 and max = slots.count ({count})"
            )
        bits = {b for b, _ in control.point("status").bits}
        for bit in VMS_STATUS_BITS:
            if bit not in bits:
                raise self.fail("control.points.status.bits", f"needs a bit named {bit!r}")
        if slot.point("message_id").type is not PointType.U32:
            raise self.fail("slots.points.message_id", "must be u32")
        if slot.point("expires_at").type is not PointType.U32:
            raise self.fail("slots.points.expires_at", "must be u32 (epoch seconds)")


def parse_led_board_profile(data: Mapping[str, Any], file: str = "<memory>") -> LedBoardProfile:
    """Validate already-parsed TOML data of an LED board profile (pydantic, then relations)."""
    spec = parse_model(_LedBoardSpec, data, file)
    c = _Checks(file)
    c.kind(spec.profile, DisplayKind.LED_BOARD)
    m = spec.mqtt
    if len({m.content_topic, m.brightness_topic, m.status_topic}) != len(_TOPIC_KEYS):
        raise c.fail("mqtt.status_topic", "content, brightness and status topics must differ")
    b = spec.brightness
    for key in ("min", "max"):
        if getattr(b, key) is None:
            raise c.fail(f"brightness.{key}", "must be an integer, got None")
    b_min, b_max = int(b.min or 0), int(b.max or 0)
    if b_min > b_max:
        raise c.fail("brightness.min", f"min {b_min} is above max {b_max}")
    return LedBoardProfile(
        name=spec.profile.name,
        version=spec.profile.version,
        content_topic=m.content_topic,
        brightness_topic=m.brightness_topic,
        status_topic=m.status_topic,
        qos=m.qos,
        retain=m.retain,
        status_interval_s=m.status_interval_s,
        offline_after_missed=m.offline_after_missed,
        failsafe_after_s=m.failsafe_after_s,
        text=spec.text.spec(),
        brightness_min=b_min,
        brightness_max=b_max,
        content_keys=c.keys("content", spec.content.keys),
        status_keys=c.keys("status", spec.status.keys),
        source=file,
        levels=c.levels(b, b_min, b_max),
    )


def parse_vms_profile(data: Mapping[str, Any], file: str = "<memory>") -> VmsProfile:
    """Validate already-parsed TOML data of a VMS profile (pydantic, then relations)."""
    spec = parse_model(_VmsSpec, data, file)
    c = _Checks(file)
    c.kind(spec.profile, DisplayKind.VMS)
    max_read = spec.profile.max_read_registers
    if max_read is None:
        raise c.fail("profile.max_read_registers", "must be an integer, got None")
    control = build_block(spec.control, "control", file)
    slot = build_block(spec.slots, "slots", file)
    stride, count = spec.slots.stride, spec.slots.count
    c.vms_points(control, slot, count)
    t = spec.text
    if t.offset is None:
        raise c.fail("text.offset", "must be an integer, got None")
    if t.chars_per_line % 2:
        raise c.fail("text.chars_per_line", f"must be even (2 characters a register), got {t.chars_per_line}")
    if t.charset is not Charset.ASCII:
        raise c.fail("text.charset", "a VMS slot holds ASCII (2 characters a register)")
    arrow = slot.point("arrow")
    if arrow.max is None or arrow.max < len(t.arrows) - 1:
        raise c.fail("slots.points.arrow", "max must cover every arrow in text.arrows")
    if t.offset < slot.span:
        raise c.fail("text.offset", f"overlaps the slot points (they end at {slot.span})")
    bright = control.point("brightness")
    profile = VmsProfile(
        name=spec.profile.name,
        version=spec.profile.version,
        max_read_registers=max_read,
        control=control,
        slot=slot,
        slot_stride=stride,
        slot_count=count,
        text_offset=t.offset,
        text=t.spec(),
        source=file,
        levels=c.levels(spec.brightness, int(bright.min or 0), int(bright.max or 100)),
    )
    if profile.slot_span > stride:
        raise c.fail("slots.stride", f"{stride} is shorter than a slot ({profile.slot_span})")
    if profile.slot_span > max_read:
        raise c.fail("text.lines", f"a slot ({profile.slot_span} registers) exceeds one read")
    if control.span > max_read:
        raise c.fail("control.points", "the control block exceeds one read")
    if control.base < profile.register_end and slot.base < control.base + control.span:
        raise c.fail("slots.base", "slots overlap the control block")
    if profile.register_end > ADDRESS_SPACE:
        raise c.fail("slots.count", "slots run past register 65535")
    return profile


def load_display_profile(path: str | Path) -> DisplayProfile:
    """Read and validate a display profile of either kind (by its `profile.kind`)."""
    data = read_toml(path)
    head = data.get("profile")
    kind = head.get("kind") if isinstance(head, dict) else None
    if kind == DisplayKind.VMS.value:
        return parse_vms_profile(data, str(path))
    if kind == DisplayKind.LED_BOARD.value:
        return parse_led_board_profile(data, str(path))
    choices = ", ".join(k.value for k in DisplayKind)
    raise ConfigError(f"must be one of {choices}, got {kind!r}", key="profile.kind", file=str(path))


@functools.cache
def default_led_board_profile() -> LedBoardProfile:
    """The shipped LED board profile, loaded once."""
    return parse_led_board_profile(read_toml(LED_BOARD_PROFILE_PATH), str(LED_BOARD_PROFILE_PATH))


@functools.cache
def default_vms_profile() -> VmsProfile:
    """The shipped VMS profile, loaded once."""
    return parse_vms_profile(read_toml(VMS_PROFILE_PATH), str(VMS_PROFILE_PATH))
