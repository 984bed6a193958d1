"""Display profiles (LED guidance boards over MQTT, variable message signs over Modbus) and content.

Both kinds are data (devices/profiles/display_*.toml) so that the driver and the
simulator read the same topics, JSON keys and register maps and cannot drift; the types
are in `display_types`, the pydantic loading in `display_loader` (a bad profile fails
at load with a `ConfigError` that names the key and the file); this module re-exports
both and holds the content and payload coding.

`DisplayContent` is what a display is asked to show, whichever the kind; `check_content`
refuses what a given profile cannot show (too many lines, too long, a character or an
arrow it lacks) before anything is sent. `render` is the text a display shows for it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from devices.profiles.display_loader import (
    default_led_board_profile,
    default_vms_profile,
    load_display_profile,
    parse_led_board_profile,
    parse_vms_profile,
)
from devices.profiles.display_types import (
    _MAX_CONTENT_JSON,
    ARROWS,
    CONTENT_FIELDS,
    DEFAULT_LEVELS,
    LED_BOARD_PROFILE_PATH,
    MAX_STATUS_BYTES,
    MESSAGE_ID_MAX,
    PROFILES_DIR,
    STATUS_FIELDS,
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
from devices.protocols.registers import PointValueError
from edge.decode import Refusal, decode_json

# the profile types and loaders live in display_types and display_loader; importers find them here
__all__ = [
    "ARROWS",
    "CONTENT_FIELDS",
    "DEFAULT_LEVELS",
    "LED_BOARD_PROFILE_PATH",
    "MAX_STATUS_BYTES",
    "MESSAGE_ID_MAX",
    "PROFILES_DIR",
    "STATUS_FIELDS",
    "VMS_CONTROL_POINTS",
    "VMS_PROFILE_PATH",
    "VMS_SLOT_POINTS",
    "VMS_STATUS_BITS",
    "BrightnessLevels",
    "Charset",
    "DisplayKind",
    "DisplayProfile",
    "LedBoardProfile",
    "TextSpec",
    "VmsProfile",
    "default_led_board_profile",
    "default_vms_profile",
    "load_display_profile",
    "parse_led_board_profile",
    "parse_vms_profile",
]


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
