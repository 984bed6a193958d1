"""What a display is, as data: the two profile kinds (LED board, message sign) and their parts.

Shared by the profile loader (`devices.profiles.display_loader`), the content and payload
coding (`devices.profiles.displays`), the drivers and the simulators.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from devices.profiles.modbus_map import Block

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
