"""Display profiles (LED guidance boards over MQTT, variable message signs over Modbus) and content.

Both kinds are data (devices/profiles/display_*.toml) so that the driver and the
simulator read the same topics, JSON keys and register maps and cannot drift; a bad
profile fails at load with a `ConfigError` that names the key and the file.

`DisplayContent` is what a display is asked to show, whichever the kind; `check_content`
refuses what a given profile cannot show (too many lines, too long, a character or an
arrow it lacks) before anything is sent. `render` is the text a display shows for it.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from devices.profiles.modbus_map import MODBUS_MAX_READ, Block, PointType, parse_block
from devices.protocols.registers import PointValueError
from edge.decode import Refusal, decode_json
from edge.errors import ConfigError
from edge.tomlfile import read_toml

PROFILES_DIR = Path(__file__).parent
LED_BOARD_PROFILE_PATH = PROFILES_DIR / "display_led_board.toml"
VMS_PROFILE_PATH = PROFILES_DIR / "display_vms.toml"
ARROWS = ("none", "left", "right", "up")
MESSAGE_ID_MAX = 0xFFFF_FFFF  # a VMS slot holds it in a u32
CONTENT_FIELDS = ("message_id", "lines", "arrow", "brightness", "expires_at")
STATUS_FIELDS = ("online", "brightness", "pixel_faults", "message_id", "text", "arrow", "ts")
VMS_CONTROL_POINTS = ("active_slot", "brightness", "status", "pixel_faults", "shown_message_id", "shown_crc")
VMS_SLOT_POINTS = ("message_id", "arrow", "expires_at")
VMS_STATUS_BITS = ("pixel_fault", "power_loss", "door_open", "comm_fault")
_MAX_CONTENT_JSON = 8192
MAX_STATUS_BYTES = 16_384  # a status is a few hundred bytes: lines of text and a few numbers


class DisplayKind(StrEnum):
    """How a display is reached."""

    LED_BOARD = "led_board"
    VMS = "vms"


class Charset(StrEnum):
    """Characters a display can render."""

    ASCII = "ascii"  # printable ASCII, 0x20-0x7e
    UNICODE = "unicode"  # any printable character

    def accepts(self, text: str) -> bool:
        """Whether every character of `text` can be shown."""
        if not text.isprintable():
            return False
        return self is Charset.UNICODE or all(0x20 <= ord(c) <= 0x7E for c in text)


@dataclass(frozen=True, slots=True)
class TextSpec:
    """What text a display can show: lines x characters, charset, arrows."""

    lines: int
    chars_per_line: int
    charset: Charset
    arrows: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BrightnessLevels:
    """Brightness (%) the controller commands: `night` while the lights are on (reduced, so a
    display does not glare), `day` otherwise. From the profile's `[brightness]` table."""

    night: int = 40
    day: int = 100


DEFAULT_LEVELS = BrightnessLevels()


@dataclass(frozen=True, slots=True)
class LedBoardProfile:
    """Topics, JSON keys and limits of an MQTT LED guidance board."""

    name: str
    version: int
    content_topic: str
    brightness_topic: str
    status_topic: str
    qos: int
    retain: bool
    status_interval_s: float
    offline_after_missed: int
    failsafe_after_s: float  # blank after this long (clock seconds) without the broker; 0: never
    text: TextSpec
    brightness_min: int
    brightness_max: int
    content_keys: Mapping[str, str]
    status_keys: Mapping[str, str]
    source: str = ""
    kind: DisplayKind = DisplayKind.LED_BOARD
    levels: BrightnessLevels = field(default_factory=lambda: DEFAULT_LEVELS)

    def topic(self, template: str, display_id: str) -> str:
        """A topic template with the display id filled in."""
        return template.replace("{id}", display_id)


@dataclass(frozen=True, slots=True)
class VmsProfile:
    """Register map of a Modbus variable message sign: a control block and message slots.

    Slot `n` (1-based; 0 in active_slot means blank) starts at `slots.base + (n - 1) * slot_stride`;
    its text follows the slot points at `text_offset`, 2 ASCII characters per register.
    An optional control point `failsafe_after_s` blanks the sign after that many clock
    seconds without a request (0: never).
    """

    name: str
    version: int
    max_read_registers: int
    control: Block
    slot: Block
    slot_stride: int
    slot_count: int
    text_offset: int
    text: TextSpec
    source: str = ""
    kind: DisplayKind = DisplayKind.VMS
    levels: BrightnessLevels = field(default_factory=lambda: DEFAULT_LEVELS)

    @property
    def line_registers(self) -> int:
        """Registers one line of text occupies."""
        return self.text.chars_per_line // 2

    @property
    def slot_span(self) -> int:
        """Registers of one slot that carry data (points and text)."""
        return self.text_offset + self.text.lines * self.line_registers

    def slot_base(self, slot: int) -> int:
        """First register of slot `slot` (1-based)."""
        if not 1 <= slot <= self.slot_count:
            raise ValueError(f"slot {slot} outside 1..{self.slot_count}")
        return self.slot.base + (slot - 1) * self.slot_stride

    def control_address(self, point: str) -> int:
        """Register address of a control point."""
        return self.control.base + self.control.point(point).offset

    @property
    def register_end(self) -> int:
        """One past the last register of the last slot."""
        return self.slot.base + self.slot_count * self.slot_stride


DisplayProfile = LedBoardProfile | VmsProfile


class DisplayContent(BaseModel):
    """What a display is asked to show (the `content` point's value).

    As a dict or its JSON text: {"message_id": 42, "lines": ["P1 Stadthaus", "frei 123"],
    "arrow": "left", "brightness": 80, "expires_at": 1795000600}. `message_id` (1..2^32-1)
    is echoed by the display as its read-back; `arrow` one of none/left/right/up;
    `brightness` in % or null to keep the current one; `expires_at` in epoch seconds
    (clock time) or null for "until replaced". No lines (or only blank ones) is a blank message.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    message_id: int = Field(ge=1, le=MESSAGE_ID_MAX)
    lines: tuple[str, ...] = ()
    arrow: Literal["none", "left", "right", "up"] = "none"
    brightness: int | None = Field(default=None, ge=0, le=100)
    expires_at: float | None = None

    @property
    def text(self) -> str:
        """The text a display shows for this content (see `render`)."""
        return render(self.lines)


def render(lines: Sequence[str]) -> str:
    """Shown text: each line without trailing blanks, trailing empty lines dropped, joined by "\\n"."""
    out = [line.rstrip() for line in lines]
    while out and not out[-1]:
        out.pop()
    return "\n".join(out)


def crc16(text: str) -> int:
    """CRC-16/CCITT-FALSE of `text` as UTF-8 (what a VMS reports as shown_crc)."""
    crc = 0xFFFF
    for byte in text.encode():
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _refuse(message: str) -> PointValueError:
    return PointValueError(message, point="content", value=math.nan)


def parse_content(value: object) -> DisplayContent:
    """A `DisplayContent` from a dict, its JSON text or an instance; PointValueError if malformed."""
    if isinstance(value, DisplayContent):
        return value
    if isinstance(value, str | bytes):
        decoded = decode_json(value, max_bytes=_MAX_CONTENT_JSON, max_depth=4)
        if isinstance(decoded, Refusal):
            raise _refuse(f"content is not usable JSON: {decoded}")
        value = decoded
    if not isinstance(value, Mapping):
        raise _refuse(f"content must be a JSON object, got {type(value).__name__}")
    data = dict(value)
    if isinstance(data.get("lines"), list):
        data["lines"] = tuple(data["lines"])  # JSON arrays arrive as lists; strict mode wants the tuple
    if isinstance(data.get("expires_at"), int) and not isinstance(data.get("expires_at"), bool):
        data["expires_at"] = float(data["expires_at"])
    try:
        return DisplayContent.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _refuse(f"content.{where}: {first['msg']}") from None


def check_content(profile: DisplayProfile, content: DisplayContent, now: float) -> None:
    """Refuse (PointValueError) content this display cannot show, or that has expired at `now`."""
    spec = profile.text
    if len(content.lines) > spec.lines:
        raise _refuse(f"{len(content.lines)} lines; {profile.name} shows {spec.lines}")
    for i, line in enumerate(content.lines):
        if len(line) > spec.chars_per_line:
            raise _refuse(f"line {i} has {len(line)} characters; at most {spec.chars_per_line}")
        if not spec.charset.accepts(line):
            raise _refuse(f"line {i} has characters outside {spec.charset.value}: {line!r}")
    if content.arrow not in spec.arrows:
        raise _refuse(f"arrow {content.arrow!r} not one of {', '.join(spec.arrows)}")
    if content.expires_at is not None:
        if not math.isfinite(content.expires_at):
            raise _refuse("expires_at is not finite")
        if content.expires_at <= now:
            raise _refuse(f"expired at {content.expires_at}, now {now}")
        if isinstance(profile, VmsProfile) and content.expires_at > 0xFFFF_FFFF:
            raise _refuse("expires_at does not fit a u32")
    lo, hi = brightness_range(profile)
    if content.brightness is not None and not lo <= content.brightness <= hi:
        raise _refuse(f"brightness {content.brightness} outside {lo}..{hi}")


def brightness_range(profile: DisplayProfile) -> tuple[int, int]:
    """Lowest and highest brightness (%) the display accepts."""
    if isinstance(profile, LedBoardProfile):
        return profile.brightness_min, profile.brightness_max
    point = profile.control.point("brightness")
    return int(point.min or 0), int(100 if point.max is None else point.max)


# -- VMS text coding -------------------------------------------------------------


def encode_line(text: str, registers: int) -> list[int]:
    """An ASCII line as registers, 2 characters each (high byte first), NUL-padded."""
    raw = text.encode("ascii").ljust(2 * registers, b"\0")
    if len(raw) > 2 * registers:
        raise ValueError(f"{text!r} longer than {2 * registers} characters")
    return [raw[i] << 8 | raw[i + 1] for i in range(0, len(raw), 2)]


def decode_line(regs: Sequence[int]) -> str:
    """Registers back to text; stops at the first NUL, drops what is not printable ASCII."""
    raw = bytearray()
    for reg in regs:
        raw += bytes((reg >> 8 & 0xFF, reg & 0xFF))
    text = raw.split(b"\0", 1)[0].decode("ascii", errors="replace")
    return "".join(c if 0x20 <= ord(c) <= 0x7E else "?" for c in text)


def encode_text(profile: VmsProfile, lines: Sequence[str]) -> list[int]:
    """All text registers of a slot for `lines` (missing lines blank)."""
    regs: list[int] = []
    for i in range(profile.text.lines):
        regs += encode_line(lines[i] if i < len(lines) else "", profile.line_registers)
    return regs


def decode_text(profile: VmsProfile, regs: Sequence[int], offset: int = 0) -> str:
    """The rendered text of a slot's text registers starting at `regs[offset]`."""
    n = profile.line_registers
    return render(
        [decode_line(regs[offset + i * n : offset + (i + 1) * n]) for i in range(profile.text.lines)]
    )


# -- loading ---------------------------------------------------------------------


class _Loader:
    """Validates raw TOML data; every error names the key and the file.

    The register blocks go through the generic Modbus map validation (pydantic,
    `devices.profiles.modbus_map`); the display-specific tables are still checked here.
    """

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

    def block(self, raw: Mapping[str, Any], name: str) -> Block:
        """A register block (its base and points; the table's other keys are read by the caller)."""
        return parse_block({k: v for k, v in raw.items() if k in ("base", "points")}, name, self.file)

    def string(self, data: Mapping[str, Any], key: str, path: str) -> str:
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise self.fail(f"{path}{key}", f"must be a non-empty string, got {value!r}")
        return value

    def head(self, data: Mapping[str, Any], kind: DisplayKind) -> tuple[str, int]:
        head = self.table(data, "profile", "")
        name = self.string(head, "name", "profile.")
        if head.get("kind") != kind.value:
            raise self.fail("profile.kind", f"must be {kind.value!r}, got {head.get('kind')!r}")
        return name, self.integer(head, "version", "profile.", lo=1, hi=1_000_000)

    def text(self, raw: Mapping[str, Any], *, even: bool) -> TextSpec:
        lines = self.integer(raw, "lines", "text.", lo=1, hi=16)
        chars = self.integer(raw, "chars_per_line", "text.", lo=1, hi=128)
        if even and chars % 2:
            raise self.fail("text.chars_per_line", f"must be even (2 characters a register), got {chars}")
        try:
            charset = Charset(str(raw.get("charset")))
        except ValueError:
            choices = ", ".join(c.value for c in Charset)
            raise self.fail("text.charset", f"must be one of {choices}, got {raw.get('charset')!r}") from None
        arrows = raw.get("arrows")
        if (
            not isinstance(arrows, list)
            or not arrows
            or arrows[0] != "none"
            or any(a not in ARROWS for a in arrows)
            or len(set(arrows)) != len(arrows)
        ):
            raise self.fail("text.arrows", f"must list distinct arrows of {ARROWS}, starting with 'none'")
        return TextSpec(lines, chars, charset, tuple(arrows))

    def keys(self, data: Mapping[str, Any], table: str, fields: Sequence[str]) -> Mapping[str, str]:
        raw = self.table(self.table(data, table, ""), "keys", f"{table}.")
        for name in sorted(set(raw) - set(fields)):
            raise self.fail(f"{table}.keys.{name}", "unknown field")
        out: dict[str, str] = {}
        for name in fields:
            out[name] = self.string(raw, name, f"{table}.keys.")
        values = list(out.values())
        if len(set(values)) != len(values):
            raise self.fail(f"{table}.keys", "two fields share a JSON key")
        return MappingProxyType(out)

    def topic(self, raw: Mapping[str, Any], key: str) -> str:
        topic = self.string(raw, key, "mqtt.")
        if topic.count("{id}") != 1 or any(c in topic for c in "+#"):
            raise self.fail(f"mqtt.{key}", "must hold {id} once and no wildcards")
        return topic

    def levels(self, data: Mapping[str, Any], lo: int, hi: int) -> BrightnessLevels:
        """`[brightness] night` and `day` (optional: 40 and 100), within what the display takes."""
        raw = data.get("brightness", {})
        if not isinstance(raw, Mapping):
            raise self.fail("brightness", "must be a table")
        out = {}
        for key, default in (("night", DEFAULT_LEVELS.night), ("day", DEFAULT_LEVELS.day)):
            out[key] = self.integer(raw, key, "brightness.", lo=lo, hi=hi) if key in raw else default
        if out["night"] > out["day"]:
            raise self.fail("brightness.night", f"night {out['night']} is above day {out['day']}")
        return BrightnessLevels(**out)

    def led_board(self, data: Mapping[str, Any]) -> LedBoardProfile:
        name, version = self.head(data, DisplayKind.LED_BOARD)
        mqtt = self.table(data, "mqtt", "")
        topics = {k: self.topic(mqtt, k) for k in ("content_topic", "brightness_topic", "status_topic")}
        if len(set(topics.values())) != len(topics):
            raise self.fail("mqtt.status_topic", "content, brightness and status topics must differ")
        qos = self.integer(mqtt, "qos", "mqtt.", lo=0, hi=2)
        retain = mqtt.get("retain", False)
        if not isinstance(retain, bool):
            raise self.fail("mqtt.retain", "must be true or false")
        interval = self.number(mqtt, "status_interval_s", "mqtt.")
        if interval is None or not 0 < interval <= 3600:
            raise self.fail("mqtt.status_interval_s", f"must be in (0, 3600], got {interval}")
        missed = self.integer(mqtt, "offline_after_missed", "mqtt.", lo=1, hi=1000)
        failsafe = self.number(mqtt, "failsafe_after_s", "mqtt.")
        if failsafe is None or failsafe < 0:
            raise self.fail("mqtt.failsafe_after_s", f"must be a number >= 0, got {failsafe}")
        text = self.text(self.table(data, "text", ""), even=False)
        bright = self.table(data, "brightness", "")
        b_min = self.integer(bright, "min", "brightness.", lo=0, hi=100)
        b_max = self.integer(bright, "max", "brightness.", lo=0, hi=100)
        if b_min > b_max:
            raise self.fail("brightness.min", f"min {b_min} is above max {b_max}")
        levels = self.levels(data, b_min, b_max)
        return LedBoardProfile(
            name=name,
            version=version,
            content_topic=topics["content_topic"],
            brightness_topic=topics["brightness_topic"],
            status_topic=topics["status_topic"],
            qos=qos,
            retain=retain,
            status_interval_s=interval,
            offline_after_missed=missed,
            failsafe_after_s=failsafe,
            text=text,
            brightness_min=b_min,
            brightness_max=b_max,
            content_keys=self.keys(data, "content", CONTENT_FIELDS),
            status_keys=self.keys(data, "status", STATUS_FIELDS),
            source=self.file,
            levels=levels,
        )

    def vms(self, data: Mapping[str, Any]) -> VmsProfile:
        name, version = self.head(data, DisplayKind.VMS)
        head = self.table(data, "profile", "")
        max_read = self.integer(head, "max_read_registers", "profile.", lo=1, hi=MODBUS_MAX_READ)
        control = self.block(self.table(data, "control", ""), "control")
        raw_slots = self.table(data, "slots", "")
        slot = self.block(raw_slots, "slots")
        stride = self.integer(raw_slots, "stride", "slots.", lo=1, hi=MODBUS_MAX_READ)
        count = self.integer(raw_slots, "count", "slots.", lo=1, hi=255)
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
        raw_text = self.table(data, "text", "")
        text_offset = self.integer(raw_text, "offset", "text.", lo=0, hi=MODBUS_MAX_READ)
        text = self.text(raw_text, even=True)
        if text.charset is not Charset.ASCII:
            raise self.fail("text.charset", "a VMS slot holds ASCII (2 characters a register)")
        arrow = slot.point("arrow")
        if arrow.max is None or arrow.max < len(text.arrows) - 1:
            raise self.fail("slots.points.arrow", "max must cover every arrow in text.arrows")
        if text_offset < slot.span:
            raise self.fail("text.offset", f"overlaps the slot points (they end at {slot.span})")
        profile = VmsProfile(
            name=name,
            version=version,
            max_read_registers=max_read,
            control=control,
            slot=slot,
            slot_stride=stride,
            slot_count=count,
            text_offset=text_offset,
            text=text,
            source=self.file,
            levels=self.levels(
                data, int(control.point("brightness").min or 0), int(control.point("brightness").max or 100)
            ),
        )
        if profile.slot_span > stride:
            raise self.fail("slots.stride", f"{stride} is shorter than a slot ({profile.slot_span})")
        if profile.slot_span > max_read:
            raise self.fail("text.lines", f"a slot ({profile.slot_span} registers) exceeds one read")
        if control.span > max_read:
            raise self.fail("control.points", "the control block exceeds one read")
        if control.base < profile.register_end and slot.base < control.base + control.span:
            raise self.fail("slots.base", "slots overlap the control block")
        if profile.register_end > 65536:
            raise self.fail("slots.count", "slots run past register 65535")
        return profile


def parse_led_board_profile(data: Mapping[str, Any], file: str = "<memory>") -> LedBoardProfile:
    """Validate already-parsed TOML data of an LED board profile."""
    return _Loader(file).led_board(data)


def parse_vms_profile(data: Mapping[str, Any], file: str = "<memory>") -> VmsProfile:
    """Validate already-parsed TOML data of a VMS profile."""
    return _Loader(file).vms(data)


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


# -- LED board JSON coding -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BoardStatus:
    """One status message of an LED board (fields by name, whatever the JSON keys)."""

    online: bool
    brightness: int | None = None
    pixel_faults: int | None = None
    message_id: int = 0  # 0: blank
    text: str = ""
    arrow: str = "none"
    ts: float | None = None


def content_payload(profile: LedBoardProfile, content: DisplayContent) -> bytes:
    """The content topic's JSON for `content`, under the profile's keys."""
    k = profile.content_keys
    body = {
        k["message_id"]: content.message_id,
        k["lines"]: list(content.lines),
        k["arrow"]: content.arrow,
        k["brightness"]: content.brightness,
        k["expires_at"]: content.expires_at,
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def parse_content_payload(profile: LedBoardProfile, payload: bytes | str) -> DisplayContent:
    """A content topic's JSON back to `DisplayContent`; PointValueError if malformed."""
    raw = decode_json(payload, max_bytes=_MAX_CONTENT_JSON, max_depth=4)
    if isinstance(raw, Refusal):
        raise _refuse(f"content is not usable JSON: {raw}")
    if not isinstance(raw, dict):
        raise _refuse("content must be a JSON object")
    by_key = {key: name for name, key in profile.content_keys.items()}
    unknown = sorted(set(raw) - set(by_key))
    if unknown:
        raise _refuse(f"unknown content key {unknown[0]!r}")
    return parse_content({by_key[key]: value for key, value in raw.items() if value is not None})


def brightness_payload(profile: LedBoardProfile, brightness: int) -> bytes:
    """The brightness topic's JSON."""
    return json.dumps({profile.content_keys["brightness"]: brightness}).encode()


def status_payload(profile: LedBoardProfile, status: BoardStatus) -> bytes:
    """The status topic's JSON for `status`, under the profile's keys."""
    k = profile.status_keys
    body: dict[str, object] = {k["online"]: status.online}
    if status.online:
        body |= {
            k["brightness"]: status.brightness,
            k["pixel_faults"]: status.pixel_faults,
            k["message_id"]: status.message_id,
            k["text"]: status.text,
            k["arrow"]: status.arrow,
            k["ts"]: status.ts,
        }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _malformed(message: str) -> ValueError:
    """A status payload that is not what the profile describes (data, not a caller's type error)."""
    return ValueError(message)


def _int_or_none(raw: Mapping[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _malformed(f"{key} must be an integer in {lo}..{hi}, got {value!r}"[:200])
    return int(value)


def parse_status_payload(profile: LedBoardProfile, payload: bytes | str) -> BoardStatus | Refusal:
    """A status topic's JSON, or a Refusal (edge.decode) saying why it is not a status of this profile.

    Never raises for bad input: the board driver's receive loop must survive any payload.
    """
    raw = decode_json(payload, max_bytes=MAX_STATUS_BYTES, max_depth=4)
    if isinstance(raw, Refusal):
        return raw
    try:
        return _status(profile, raw)
    except ValueError as exc:
        return Refusal("invalid_payload", str(exc))


def _status(profile: LedBoardProfile, raw: Any) -> BoardStatus:
    if not isinstance(raw, dict):
        raise _malformed("status must be a JSON object")
    k = profile.status_keys
    online = raw.get(k["online"])
    if not isinstance(online, bool):
        raise _malformed(f"{k['online']} must be true or false, got {online!r}"[:200])
    if not online:
        return BoardStatus(online=False)
    text = raw.get(k["text"], "")
    arrow = raw.get(k["arrow"], "none")
    ts = raw.get(k["ts"])
    if text is None:
        text = ""
    if not isinstance(text, str) or len(text) > 1024:
        raise _malformed(f"{k['text']} must be a string of at most 1024 characters")
    if arrow is None:
        arrow = "none"
    if arrow not in ARROWS:
        raise _malformed(f"{k['arrow']} must be one of {ARROWS}, got {arrow!r}"[:200])
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts)):
        raise _malformed(f"{k['ts']} must be a number")
    return BoardStatus(
        online=True,
        brightness=_int_or_none(raw, k["brightness"], 0, 100),
        pixel_faults=_int_or_none(raw, k["pixel_faults"], 0, 1 << 31),
        message_id=_int_or_none(raw, k["message_id"], 0, MESSAGE_ID_MAX) or 0,
        text=text,
        arrow=arrow,
        ts=None if ts is None else float(ts),
    )
