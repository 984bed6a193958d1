"""LoRaWAN sensor payload profiles: how a model's uplink bytes become named values, as data.

One TOML file per sensor model (devices/profiles/lorawan_*.toml) lists the fields of the
application payload: byte offset, wire type (u8/i8/u16/i16/u32/i32), byte order, scale,
unit, plausible range, and named bit flags. The ingest (devices/protocols/lorawan.py) decodes with
it and the simulator (simulators/lorawan.py) encodes with it, so the two cannot drift.
The profile is validated by pydantic models through the one TOML loader (`edge.tomlfile`);
a bad profile fails at load with a `ConfigError` that names the key and the file.

A network server may have decoded the payload already (ChirpStack `object`, TTS
`decoded_payload`); that result is used only when the profile says `[decoded] use = true`,
and only if it carries every value with the right type: otherwise the raw bytes are
decoded, so a changed codec on the network server cannot silently feed wrong values.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import Field as PydField
from pydantic import ValidationInfo, field_validator

from devices.profiles import Identifier, NonEmpty, StrictModel, choice
from edge.errors import ConfigError, PayloadError
from edge.events import Value
from edge.tomlfile import parse_model, read_toml

PROFILE_DIR = Path(__file__).parent
PROFILE_GLOB = "lorawan_*.toml"
MAX_PAYLOAD = 242  # largest LoRaWAN application payload (EU868 DR5..7)


class FieldType(StrEnum):
    """Wire type of a field: unsigned or two's complement integers of 1, 2 or 4 bytes."""

    U8 = "u8"
    I8 = "i8"
    U16 = "u16"
    I16 = "i16"
    U32 = "u32"
    I32 = "i32"

    @property
    def size(self) -> int:
        """Bytes the type occupies."""
        return {"8": 1, "16": 2, "32": 4}[self.value[1:]]

    @property
    def signed(self) -> bool:
        """Whether the raw value is two's complement."""
        return self.value.startswith("i")

    @property
    def raw_min(self) -> int:
        """Smallest raw integer the type holds."""
        return -(1 << (8 * self.size - 1)) if self.signed else 0

    @property
    def raw_max(self) -> int:
        """Largest raw integer the type holds."""
        bits = 8 * self.size
        return (1 << (bits - 1)) - 1 if self.signed else (1 << bits) - 1

    def struct_format(self, little: bool) -> str:
        """The `struct` format of the type in the given byte order."""
        code = {"u8": "B", "i8": "b", "u16": "H", "i16": "h", "u32": "I", "i32": "i"}[self.value]
        return ("<" if little else ">") + code


@dataclass(frozen=True, slots=True)
class Field:
    """One value in the payload: where it sits and how it is encoded.

    value = raw * scale. A field with `bits` is a flag byte/word: it yields one bool per
    named bit (name, bit number) and no number of its own. `min`/`max` bound the decoded
    value in engineering units; a value outside them is left out (a sensor's "unknown"
    sentinel such as battery 255 must not reach a controller).
    """

    name: str
    offset: int
    type: FieldType
    little_endian: bool = False
    scale: float = 1.0
    unit: str = ""
    min: float | None = None
    max: float | None = None
    bits: tuple[tuple[str, int], ...] = ()

    @property
    def end(self) -> int:
        """One past the field's last byte."""
        return self.offset + self.type.size

    @property
    def value_names(self) -> tuple[str, ...]:
        """Names this field contributes to the decoded values."""
        return tuple(n for n, _ in self.bits) if self.bits else (self.name,)


@dataclass(frozen=True)  # no slots: the prepared decoding plan is a cached_property
class LorawanProfile:
    """Payload layout of one LoRaWAN sensor model.

    `f_ports` are the application ports that carry this layout (others are ignored by the
    ingest). `use_decoded` trusts the network server's decoder; `decoded_keys` maps a
    value name to the key in its output where the names differ (default: the same name).
    """

    name: str
    version: int
    f_ports: tuple[int, ...]
    fields: tuple[Field, ...]
    use_decoded: bool = False
    decoded_keys: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    source: str = ""

    @functools.cached_property
    def length(self) -> int:
        """Smallest payload that holds every field."""
        return max(f.end for f in self.fields)

    @functools.cached_property
    def value_names(self) -> tuple[str, ...]:
        """Every name decoding yields, in field order."""
        return tuple(n for f in self.fields for n in f.value_names)

    @functools.cached_property
    def _plan(self) -> tuple[_Step, ...]:
        return tuple(_Step.of(f) for f in self.fields)

    @functools.cached_property
    def _decoded_plan(self) -> tuple[tuple[str, str, bool, Field], ...]:
        # (value name, key in the network server's output, is a flag, field)
        out = []
        for f in self.fields:
            for n in f.value_names:
                out.append((n, self.decoded_keys.get(n, n), bool(f.bits), f))
        return tuple(out)

    def decode(self, payload: bytes) -> tuple[dict[str, Value], tuple[str, ...]]:
        """Decode raw bytes into values; also return the names left out as out of range.

        Raises PayloadError `short_payload` when the payload is shorter than the layout.
        """
        if len(payload) < self.length:
            raise PayloadError("short_payload", f"{self.name} needs {self.length} bytes, got {len(payload)}")
        values: dict[str, Value] = {}
        dropped: list[str] = []
        for step in self._plan:
            raw: int = step.struct.unpack_from(payload, step.field.offset)[0]
            if step.bits:
                for name, bit in step.bits:
                    values[name] = bool((raw >> bit) & 1)
                continue
            value: float | int = raw if step.integer else round(raw * step.scale, step.ndigits)
            f = step.field
            if (f.min is not None and value < f.min) or (f.max is not None and value > f.max):
                dropped.append(f.name)
                continue
            values[f.name] = value
        return values, tuple(dropped)

    def from_decoded(self, decoded: Mapping[str, Any]) -> dict[str, Value] | None:
        """Values from the network server's decoder output, or None if it does not fit.

        Every value must be present with the right type (bool for flags, a finite number
        within range otherwise); one missing or wrong value makes the whole output unfit,
        and the caller decodes the raw bytes instead.
        """
        values: dict[str, Value] = {}
        for name, key, is_flag, f in self._decoded_plan:
            v = decoded.get(key)
            if is_flag:
                if isinstance(v, bool):
                    values[name] = v
                elif isinstance(v, int) and v in (0, 1):
                    values[name] = bool(v)
                else:
                    return None
                continue
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                return None
            if (f.min is not None and v < f.min) or (f.max is not None and v > f.max):
                return None
            values[name] = v
        return values

    def encode(self, values: Mapping[str, Value]) -> bytes:
        """Bytes for `values` (the inverse of `decode`); missing values and flags encode as 0.

        Raises ValueError when a value cannot be encoded in its field.
        """
        buf = bytearray(self.length)
        for step in self._plan:
            f = step.field
            if step.bits:
                raw = 0
                for name, bit in step.bits:
                    if values.get(name, False):
                        raw |= 1 << bit
                step.struct.pack_into(buf, f.offset, raw)
                continue
            v = values.get(f.name, 0)
            try:
                raw = round(float(v) / f.scale)
            except (TypeError, ValueError, OverflowError) as exc:
                raise ValueError(f"{f.name}: cannot encode {v!r}") from exc
            if not f.type.raw_min <= raw <= f.type.raw_max:
                raise ValueError(f"{f.name}: raw {raw} does not fit {f.type.value}")
            step.struct.pack_into(buf, f.offset, raw)
        return bytes(buf)


@dataclass(frozen=True, slots=True)
class _Step:
    """A field prepared for fast decoding: its compiled struct and rounding."""

    field: Field
    struct: struct.Struct
    bits: tuple[tuple[str, int], ...]
    integer: bool
    scale: float
    ndigits: int

    @classmethod
    def of(cls, f: Field) -> _Step:
        fmt = f.type.struct_format(f.little_endian)
        if f.bits:
            fmt = fmt.upper()  # flags are bits, never a sign: the word is read unsigned
        return cls(
            f,
            struct.Struct(fmt),
            f.bits,
            f.scale == 1.0,
            f.scale,
            _ndigits(f.scale),
        )


def _ndigits(scale: float) -> int:
    """Decimal places a scaled value needs, so 3 * 0.1 decodes as 0.3, not 0.30000000000000004."""
    exponent = Decimal(repr(scale)).normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


Port = Annotated[int, PydField(ge=1, le=223)]  # LoRaWAN application ports
Number = Annotated[float, PydField(allow_inf_nan=False)]


class Endian(StrEnum):
    """Byte order of multi-byte fields."""

    BIG = "big"
    LITTLE = "little"


class _Head(StrictModel):
    name: NonEmpty
    version: int = PydField(ge=1, le=1_000_000)
    f_ports: list[Port] = PydField(min_length=1)
    endian: Annotated[Endian, choice(Endian)] = Endian.BIG


class _FieldSpec(StrictModel):
    """One `[[fields]]` table (field order matters: later checks read earlier fields)."""

    name: Identifier
    type: Annotated[FieldType, choice(FieldType)]
    offset: int = PydField(ge=0, le=MAX_PAYLOAD - 1)
    endian: Annotated[Endian, choice(Endian)] | None = None  # None: the profile's
    scale: Number = PydField(default=1.0, gt=0)
    unit: str = ""
    max: Number | None = None
    min: Number | None = None
    bits: dict[str, int] = PydField(default_factory=dict)

    @field_validator("offset")
    @classmethod
    def _offset(cls, v: int, info: ValidationInfo) -> int:
        t = info.data.get("type")
        if isinstance(t, FieldType) and v + t.size > MAX_PAYLOAD:
            raise ValueError(f"field ends past byte {MAX_PAYLOAD}")
        return v

    @field_validator("min")
    @classmethod
    def _min(cls, v: float | None, info: ValidationInfo) -> float | None:
        hi = info.data.get("max")
        if v is not None and hi is not None and v > hi:
            raise ValueError(f"min {v} is above max {hi}")
        return v

    @field_validator("bits")
    @classmethod
    def _flags(cls, v: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        d = info.data
        plain = (
            d.get("scale", 1.0) == 1.0 and not d.get("unit") and d.get("min") is None and d.get("max") is None
        )
        if v and not plain:
            raise ValueError("a flag field has no scale, unit, min or max")
        return v


class _Decoded(StrictModel):
    """`[decoded]`: whether to trust the network server's decoder, and its key names."""

    use: bool = False
    keys: dict[str, NonEmpty] = PydField(default_factory=dict)


class _ProfileSpec(StrictModel):
    """The profile file: `[profile]`, one `[[fields]]` table per field and `[decoded]`."""

    profile: _Head
    fields: list[_FieldSpec] = PydField(min_length=1)
    decoded: _Decoded = PydField(default_factory=_Decoded)


def _build_field(spec: _FieldSpec, key: str, little_default: bool, file: str) -> Field:
    """The runtime field; ConfigError (naming the bit's key) for bad bit names and numbers."""
    width = 8 * spec.type.size
    seen: dict[int, str] = {}
    for name, bit in spec.bits.items():
        bit_key = f"{key}.bits.{name}"
        if not name.isidentifier():
            raise ConfigError("must be an identifier", key=bit_key, file=file)
        if not 0 <= bit < width:
            raise ConfigError(f"must be in 0..{width - 1}, got {bit}", key=bit_key, file=file)
        if bit in seen:
            raise ConfigError(f"bit {bit} already used by {seen[bit]}", key=bit_key, file=file)
        seen[bit] = name
    little = little_default if spec.endian is None else spec.endian is Endian.LITTLE
    bits = tuple(sorted(spec.bits.items(), key=lambda nb: nb[1]))
    return Field(spec.name, spec.offset, spec.type, little, spec.scale, spec.unit, spec.min, spec.max, bits)


def parse_profile(data: Mapping[str, Any], file: str = "<memory>") -> LorawanProfile:
    """Validate already-parsed TOML data (tests build variants of a profile this way).

    Pydantic checks each table's shape; the relations between fields that pydantic cannot
    name one key for (overlapping bytes, a value name used twice, bits, `decoded.keys`)
    are checked here, and their errors name the exact key the same way ("fields.1.offset").
    """
    spec = parse_model(_ProfileSpec, data, file)
    little = spec.profile.endian is Endian.LITTLE
    fields = tuple(_build_field(f, f"fields.{i}", little, file) for i, f in enumerate(spec.fields))
    used: dict[int, str] = {}
    names: dict[str, int] = {}
    for i, f in enumerate(fields):
        for byte in range(f.offset, f.end):
            if byte in used:
                raise ConfigError(
                    f"byte {byte} overlaps field {used[byte]!r}", key=f"fields.{i}.offset", file=file
                )
            used[byte] = f.name
        for n in (f.name, *f.value_names):
            if n in names and names[n] != i:
                raise ConfigError(f"value name {n!r} is used twice", key=f"fields.{i}.name", file=file)
            names[n] = i
    values = {n for f in fields for n in f.value_names}
    for name in spec.decoded.keys:
        if name not in values:
            raise ConfigError("is not a value of this profile", key=f"decoded.keys.{name}", file=file)
    keys = MappingProxyType(dict(spec.decoded.keys))
    return LorawanProfile(
        spec.profile.name,
        spec.profile.version,
        tuple(spec.profile.f_ports),
        fields,
        spec.decoded.use,
        keys,
        file,
    )


def load_profile(path: str | Path) -> LorawanProfile:
    """Read and validate one LoRaWAN profile from a TOML file."""
    return parse_profile(read_toml(path), str(path))


def load_profiles(directory: str | Path = PROFILE_DIR) -> Mapping[str, LorawanProfile]:
    """Every `lorawan_*.toml` in `directory`, by profile name; a name used twice is an error."""
    out: dict[str, LorawanProfile] = {}
    for path in sorted(Path(directory).glob(PROFILE_GLOB)):
        profile = load_profile(path)
        if profile.name in out:
            raise ConfigError(
                f"profile name {profile.name!r} also used in {out[profile.name].source}",
                key="profile.name",
                file=str(path),
            )
        out[profile.name] = profile
    return MappingProxyType(out)


@functools.cache
def default_profiles() -> Mapping[str, LorawanProfile]:
    """The shipped LoRaWAN profiles, loaded once."""
    return load_profiles(PROFILE_DIR)
