"""Point values to and from Modbus registers, shared by the driver and the simulator.

Big-endian byte and word order (high word first), value = raw * scale. A value that
cannot be right (outside the point's min/max, or not encodable) raises
`PointValueError`, a `DeviceReplyError` that carries the point and the value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableSequence, Sequence
from decimal import Decimal
from operator import itemgetter

from devices.profiles.modbus_map import Block, Point, PointType
from edge.errors import DeviceReplyError
from edge.events import Value


class PointValueError(DeviceReplyError):
    """A point value that cannot be right: outside its range or not encodable."""

    def __init__(self, message: str, *, point: str, value: float) -> None:
        super().__init__(message)
        self.point = point
        self.value = value


def _ndigits(scale: float) -> int:
    """Decimal places a scaled value needs, so 3 * 0.1 decodes as 0.3, not 0.30000000000000004."""
    exponent = Decimal(repr(scale)).normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _check_range(point: Point, value: float) -> None:
    if (point.min is not None and value < point.min) or (point.max is not None and value > point.max):
        raise PointValueError(
            f"{point.name}={value} outside {point.min}..{point.max}",
            point=point.name,
            value=value,
        )


def raw_to_registers(raw: int, ptype: PointType) -> list[int]:
    """Split a raw integer into registers (two's complement for signed types)."""
    if not ptype.raw_min <= raw <= ptype.raw_max:
        raise ValueError(f"raw {raw} does not fit {ptype.value}")
    if raw < 0:
        raw += 1 << (16 * ptype.registers)
    if ptype.registers == 1:
        return [raw]
    return [(raw >> 16) & 0xFFFF, raw & 0xFFFF]


def registers_to_raw(regs: Sequence[int], ptype: PointType, offset: int = 0) -> int:
    """Join registers into a raw integer (two's complement for signed types)."""
    raw = regs[offset] if ptype.registers == 1 else (regs[offset] << 16) | regs[offset + 1]
    if ptype.signed and raw > ptype.raw_max:
        raw -= 1 << (16 * ptype.registers)
    return raw


def to_raw(point: Point, value: float) -> int:
    """Engineering value to raw integer, with the point's range check."""
    if isinstance(value, bool) or not math.isfinite(value):
        raise PointValueError(
            f"{point.name}={value!r} is not a finite number", point=point.name, value=float("nan")
        )
    _check_range(point, value)
    raw = round(value / point.scale)
    if not point.type.raw_min <= raw <= point.type.raw_max:
        raise PointValueError(
            f"{point.name}={value} does not fit {point.type.value}", point=point.name, value=value
        )
    return raw


def from_raw(point: Point, raw: int) -> int | float:
    """Raw integer to engineering value, with the point's range check."""
    value: int | float = raw if point.is_integer else round(raw * point.scale, _ndigits(point.scale))
    _check_range(point, value)
    return value


def encode(point: Point, value: float) -> list[int]:
    """Registers that carry `value` for `point`; PointValueError if it cannot be right."""
    return raw_to_registers(to_raw(point, value), point.type)


def encode_into(point: Point, value: float, regs: MutableSequence[int], index: int) -> None:
    """Write `value` into `regs` at `index` (the simulator's live register list)."""
    regs[index : index + point.count] = encode(point, value)


def decode(point: Point, regs: Sequence[int], offset: int = 0) -> int | float:
    """The value of `point` read from `regs` at `offset`; PointValueError if implausible."""
    if offset < 0 or offset + point.count > len(regs):
        raise PointValueError(
            f"{point.name}: {len(regs)} registers do not cover offset {offset}",
            point=point.name,
            value=float("nan"),
        )
    return from_raw(point, registers_to_raw(regs, point.type, offset))


def bits_of(point: Point, raw: int) -> dict[str, bool]:
    """Named status bits of a raw status value."""
    return {name: bool(raw >> bit & 1) for name, bit in point.bits}


def pack_bits(point: Point, flags: dict[str, bool]) -> int:
    """Raw status value from named bits; unknown names raise KeyError."""
    positions = dict(point.bits)
    raw = 0
    for name, on in flags.items():
        if on:
            raw |= 1 << positions[name]
    return raw


class BlockDecoder:
    """Decodes a whole block in one pass; compiled once because it runs per lamp per poll.

    The result holds every point by name plus each status bit as a bool.
    """

    __slots__ = ("_plan", "keys", "span")

    def __init__(self, block: Block) -> None:
        self.span = block.span
        self._plan = tuple(
            (
                p.name,
                p.offset,
                p.count,
                p.type.signed,
                p.type.raw_max,
                1 << (16 * p.count),
                None if p.is_integer else p.scale,
                _ndigits(p.scale),
                p.min,
                p.max,
                p.bits,
                p,
            )
            for p in block.points
        )
        # the result's keys, in order: each point, then its status bits
        self.keys = tuple(k for p in block.points for k in (p.name, *(b for b, _ in p.bits)))

    def decode(self, regs: Sequence[int], start: int = 0) -> dict[str, Value]:
        """Values of the block whose first register is `regs[start]`."""
        if start < 0 or start + self.span > len(regs):
            raise PointValueError(
                f"{len(regs)} registers do not cover a block at {start}",
                point="",
                value=float("nan"),
            )
        out: dict[str, Value] = {}
        for name, off, count, signed, raw_max, wrap, scale, nd, lo, hi, bits, point in self._plan:
            i = start + off
            raw = regs[i] if count == 1 else (regs[i] << 16) | regs[i + 1]
            if signed and raw > raw_max:
                raw -= wrap
            value: int | float = raw if scale is None else round(raw * scale, nd)
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                _check_range(point, value)
            out[name] = value
            for bit_name, bit in bits:
                out[bit_name] = bool(raw >> bit & 1)
        return out


class RawBands:
    """Whether a block's registers moved beyond its points' dead bands, judged on the raw registers.

    A city's lamps are compared 5,400 times a second, and a lamp's hour counter moves at every
    poll: decoding each reading only to find it within its bands was most of a poll's cost.
    Points without a band (`bands` has no entry, or 0) must not change at all. A banded value
    outside its point's range is a change, so the decoder sees it and reports the fault.
    """

    __slots__ = ("_banded", "_exact")

    def __init__(self, block: Block, bands: Mapping[str, float]) -> None:
        exact: list[int] = []
        banded: list[tuple[int, int, bool, int, int, int, float, float]] = []
        for p in block.points:
            band = bands.get(p.name, 0.0)
            if band <= 0:
                exact.extend(range(p.offset, p.offset + p.count))
                continue
            lo = -math.inf if p.min is None else p.min / p.scale
            hi = math.inf if p.max is None else p.max / p.scale
            # raw steps are whole: a band of 2 W at 0.1 W a step allows 20 of them
            steps = math.floor(band / p.scale + 1e-9)
            banded.append(
                (p.offset, p.count, p.type.signed, p.type.raw_max, 1 << (16 * p.count), steps, lo, hi)
            )
        self._exact = itemgetter(*exact) if exact else None
        self._banded = tuple(banded)

    def within(self, old: Sequence[int], new: Sequence[int]) -> bool:
        """Whether `new` (a block's registers) is `old` give or take the bands."""
        exact = self._exact
        if exact is not None and exact(old) != exact(new):
            return False
        for off, count, signed, raw_max, wrap, steps, lo, hi in self._banded:
            if count == 1:
                a, b = old[off], new[off]
            else:
                a, b = (old[off] << 16) | old[off + 1], (new[off] << 16) | new[off + 1]
            if signed:
                a, b = (a - wrap if a > raw_max else a), (b - wrap if b > raw_max else b)
            if abs(b - a) > steps or not lo <= b <= hi:
                return False
        return True
