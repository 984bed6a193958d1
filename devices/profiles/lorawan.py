"""LoRaWAN sensor payload profiles: how a model's uplink bytes become named values, as data.

One TOML file per sensor model (devices/profiles/lorawan_*.toml) lists the fields of the
application payload: byte offset, wire type (u8/i8/u16/i16/u32/i32), byte order, scale,
unit, plausible range, and named bit flags. The ingest (devices/protocols/lorawan.py) decodes with
it and the simulator (simulators/lorawan.py) encodes with it, so the two cannot drift.
A bad profile fails at load with a `ConfigError` that names the key and the file.

A network server may have decoded the payload already (ChirpStack `object`, TTS
`decoded_payload`); that result is used only when the profile says `[decoded] use = true`,
and only if it carries every value with the right type: otherwise the raw bytes are
decoded, so a changed codec on the network server cannot silently feed wrong values.
"""

from __future__ import annotations

import functools
import math
import struct
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from edge.errors import ConfigError, PayloadError
from edge.events import Value

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


_PROFILE_KEYS = frozenset({"name", "version", "f_ports", "endian"})
_FIELD_KEYS = frozenset({"name", "offset", "type", "endian", "scale", "unit", "min", "max", "bits"})
_DECODED_KEYS = frozenset({"use", "keys"})
_TOP_KEYS = frozenset({"profile", "fields", "decoded"})


class _Loader:
    """Validates raw TOML data; every error names the key and the file."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, key=key, file=self.file)

    def unknown(self, raw: Mapping[str, Any], allowed: frozenset[str], path: str) -> None:
        extra = sorted(set(raw) - allowed)
        if extra:
            raise self.fail(f"{path}{extra[0]}", "unknown key")

    def integer(self, raw: Mapping[str, Any], key: str, path: str, *, lo: int, hi: int) -> int:
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{path}{key}", f"must be an integer, got {value!r}")
        if not lo <= value <= hi:
            raise self.fail(f"{path}{key}", f"must be in {lo}..{hi}, got {value}")
        return value

    def number(self, raw: Mapping[str, Any], key: str, path: str) -> float | None:
        value = raw.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(f"{path}{key}", f"must be a number, got {value!r}")
        return float(value)

    def endian(self, raw: Mapping[str, Any], path: str, default: bool) -> bool:
        value = raw.get("endian")
        if value is None:
            return default
        if value not in ("big", "little"):
            raise self.fail(f"{path}endian", f"must be big or little, got {value!r}")
        return bool(value == "little")

    def field(self, raw: Any, path: str, little_default: bool) -> Field:
        if not isinstance(raw, dict):
            raise self.fail(path, "must be a table")
        self.unknown(raw, _FIELD_KEYS, f"{path}.")
        name = raw.get("name")
        if not isinstance(name, str) or not name.isidentifier():
            raise self.fail(f"{path}.name", f"must be an identifier, got {name!r}")
        offset = self.integer(raw, "offset", f"{path}.", lo=0, hi=MAX_PAYLOAD - 1)
        try:
            ftype = FieldType(str(raw.get("type")))
        except ValueError:
            choices = ", ".join(t.value for t in FieldType)
            raise self.fail(f"{path}.type", f"must be one of {choices}, got {raw.get('type')!r}") from None
        if offset + ftype.size > MAX_PAYLOAD:
            raise self.fail(f"{path}.offset", f"field ends past byte {MAX_PAYLOAD}")
        little = self.endian(raw, f"{path}.", little_default)
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
        bits = self.bits(raw.get("bits", {}), f"{path}.bits", ftype)
        if bits and (scale != 1.0 or lo is not None or hi is not None or unit):
            raise self.fail(f"{path}.bits", "a flag field has no scale, unit, min or max")
        return Field(name, offset, ftype, little, scale, unit, lo, hi, bits)

    def bits(self, raw: Any, path: str, ftype: FieldType) -> tuple[tuple[str, int], ...]:
        if not isinstance(raw, dict):
            raise self.fail(path, "must be a table of name = bit number")
        seen: dict[int, str] = {}
        for name in raw:
            if not name.isidentifier():
                raise self.fail(f"{path}.{name}", "must be an identifier")
            bit = self.integer(raw, name, f"{path}.", lo=0, hi=8 * ftype.size - 1)
            if bit in seen:
                raise self.fail(f"{path}.{name}", f"bit {bit} already used by {seen[bit]}")
            seen[bit] = name
        return tuple(sorted(((n, b) for b, n in seen.items()), key=lambda nb: nb[1]))

    def f_ports(self, raw: Any) -> tuple[int, ...]:
        if not isinstance(raw, list) or not raw:
            raise self.fail("profile.f_ports", "must be a non-empty array of ports 1..223")
        ports = []
        for i, p in enumerate(raw):
            if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 223:
                raise self.fail(f"profile.f_ports[{i}]", f"must be an application port 1..223, got {p!r}")
            ports.append(p)
        return tuple(ports)

    def decoded(self, raw: Any, names: Iterable[str]) -> tuple[bool, Mapping[str, str]]:
        if raw is None:
            return False, MappingProxyType({})
        if not isinstance(raw, dict):
            raise self.fail("decoded", "must be a table")
        self.unknown(raw, _DECODED_KEYS, "decoded.")
        use = raw.get("use", False)
        if not isinstance(use, bool):
            raise self.fail("decoded.use", "must be true or false")
        keys = raw.get("keys", {})
        if not isinstance(keys, dict):
            raise self.fail("decoded.keys", "must be a table of value name = decoder key")
        known = set(names)
        for name, key in keys.items():
            if name not in known:
                raise self.fail(f"decoded.keys.{name}", "is not a value of this profile")
            if not isinstance(key, str) or not key:
                raise self.fail(f"decoded.keys.{name}", "must be a non-empty string")
        return use, MappingProxyType(dict(keys))

    def profile(self, data: Mapping[str, Any]) -> LorawanProfile:
        self.unknown(data, _TOP_KEYS, "")
        head = data.get("profile")
        if not isinstance(head, dict):
            raise self.fail("profile", "missing or not a table")
        self.unknown(head, _PROFILE_KEYS, "profile.")
        pname = head.get("name")
        if not isinstance(pname, str) or not pname:
            raise self.fail("profile.name", "must be a non-empty string")
        version = self.integer(head, "version", "profile.", lo=1, hi=1_000_000)
        ports = self.f_ports(head.get("f_ports"))
        little = self.endian(head, "profile.", False)
        raw_fields = data.get("fields")
        if not isinstance(raw_fields, list) or not raw_fields:
            raise self.fail("fields", "must be a non-empty array of tables")
        fields = tuple(self.field(f, f"fields[{i}]", little) for i, f in enumerate(raw_fields))
        used: dict[int, str] = {}
        names: dict[str, int] = {}
        for i, f in enumerate(fields):
            for byte in range(f.offset, f.end):
                if byte in used:
                    raise self.fail(f"fields[{i}].offset", f"byte {byte} overlaps field {used[byte]!r}")
                used[byte] = f.name
            for n in (f.name, *f.value_names):
                if n in names and names[n] != i:
                    raise self.fail(f"fields[{i}].name", f"value name {n!r} is used twice")
                names[n] = i
        use, keys = self.decoded(data.get("decoded"), (n for f in fields for n in f.value_names))
        return LorawanProfile(pname, version, ports, fields, use, keys, self.file)


def parse_profile(data: Mapping[str, Any], file: str = "<memory>") -> LorawanProfile:
    """Validate already-parsed TOML data (tests build variants of a profile this way)."""
    return _Loader(file).profile(data)


def load_profile(path: str | Path) -> LorawanProfile:
    """Read and validate one LoRaWAN profile from a TOML file."""
    file = str(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read profile: {exc.strerror}", file=file) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=file) from exc
    return parse_profile(data, file)


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
