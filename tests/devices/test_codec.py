"""Codec and profile: round trips, implausible values, profile errors that name the key."""

from __future__ import annotations

import copy
import tomllib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.lighting import within_deadband
from devices.profiles.lighting import DEFAULT_PROFILE_PATH, default_profile, load_profile, parse_profile
from devices.profiles.modbus_map import Point, PointType
from devices.protocols.registers import (
    BlockDecoder,
    PointValueError,
    RawBands,
    bits_of,
    decode,
    encode,
    pack_bits,
    raw_to_registers,
    registers_to_raw,
)
from edge.errors import ConfigError, DeviceReplyError

PROFILE = default_profile()
LAMP_POINTS = PROFILE.lamp.points
REG = st.integers(0, 0xFFFF)


@given(ptype=st.sampled_from(list(PointType)), data=st.data())
def test_raw_round_trip(ptype: PointType, data: st.DataObject) -> None:
    """Every raw value a type holds survives registers and back."""
    raw = data.draw(st.integers(ptype.raw_min, ptype.raw_max))
    regs = raw_to_registers(raw, ptype)
    assert len(regs) == ptype.registers
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert registers_to_raw(regs, ptype) == raw


def test_word_order_is_big_endian() -> None:
    """The high word comes first, as the profile promises."""
    assert raw_to_registers(0x12345678, PointType.U32) == [0x1234, 0x5678]
    assert raw_to_registers(-2, PointType.I32) == [0xFFFF, 0xFFFE]
    assert raw_to_registers(-1, PointType.I16) == [0xFFFF]


@given(point=st.sampled_from(LAMP_POINTS + PROFILE.controller.points), data=st.data())
def test_value_round_trip(point: Point, data: st.DataObject) -> None:
    """A plausible value encodes, decodes to itself (to the scale) and re-encodes the same."""
    lo = point.min if point.min is not None else point.type.raw_min * point.scale
    hi = point.max if point.max is not None else point.type.raw_max * point.scale
    value = data.draw(st.floats(lo, hi, allow_nan=False))
    regs = encode(point, value)
    back = decode(point, regs)
    assert abs(back - value) <= point.scale / 2 + 1e-9 * max(1.0, abs(value))
    assert encode(point, back) == regs


@given(regs=st.lists(REG, min_size=PROFILE.lamp.span, max_size=PROFILE.lamp.span))
def test_block_decoder_matches_point_decode(regs: list[int]) -> None:
    """The compiled block decoder agrees with decoding point by point, or both refuse."""
    expected: dict[str, object] = {}
    try:
        for p in LAMP_POINTS:
            expected[p.name] = decode(p, regs, p.offset)
            if p.bits:
                expected.update(bits_of(p, registers_to_raw(regs, p.type, p.offset)))
    except PointValueError:
        with pytest.raises(PointValueError):
            BlockDecoder(PROFILE.lamp).decode(regs)
        return
    assert BlockDecoder(PROFILE.lamp).decode(regs) == expected


def _lamp_block(data: st.DataObject) -> tuple[int, ...]:
    """A lamp block of plausible registers (every point within its range)."""
    regs = [0] * PROFILE.lamp.span
    for p in LAMP_POINTS:
        hi = p.type.raw_max if p.max is None else min(p.type.raw_max, int(p.max / p.scale))
        regs[p.offset : p.offset + p.count] = raw_to_registers(data.draw(st.integers(0, hi)), p.type)
    return tuple(regs)


@given(data=st.data())
def test_raw_bands_agree_with_the_decoded_dead_bands(data: st.DataObject) -> None:
    """Judging a lamp's reading on its registers says what decoding both and comparing them
    within the profile's bands says (a raw step exactly at a band is within it)."""
    bands = {p.name: p.deadband for p in LAMP_POINTS if p.deadband > 0}
    raw = RawBands(PROFILE.lamp, bands)
    old = _lamp_block(data)
    new = list(old)
    for p in data.draw(st.lists(st.sampled_from(LAMP_POINTS), max_size=3)):
        was = registers_to_raw(old, p.type, p.offset)
        step = data.draw(st.integers(-30, 30) | st.integers(-p.type.raw_max, p.type.raw_max))
        hi = p.type.raw_max if p.max is None else int(p.max / p.scale)
        new[p.offset : p.offset + p.count] = raw_to_registers(min(hi, max(0, was + step)), p.type)
    at_band = any(
        abs(registers_to_raw(new, p.type, p.offset) - registers_to_raw(old, p.type, p.offset))
        == round(p.deadband / p.scale)
        for p in LAMP_POINTS
        if p.deadband > 0
    )
    decoder = BlockDecoder(PROFILE.lamp)
    decoded = within_deadband(decoder.decode(old), decoder.decode(new), bands)
    assert raw.within(old, tuple(new)) == decoded or at_band
    assert raw.within(old, old)


def test_raw_bands_see_a_banded_value_out_of_range_and_every_unbanded_change() -> None:
    """A banded point that moved within its band to an implausible value is a change (the
    decoder reports the fault); without bands any register that moved is a change."""
    regs = list(encode(PROFILE.lamp.point("level_cmd"), 50)) + [0] * (PROFILE.lamp.span - 1)
    power = PROFILE.lamp.point("power_w")
    regs[power.offset] = 19_995  # 1,999.5 W: the top of the range
    old = tuple(regs)
    regs[power.offset] = 20_005  # 2,000.5 W: 1 W more, within the 2 W band, past the maximum
    assert not RawBands(PROFILE.lamp, {"power_w": 2.0}).within(old, tuple(regs))
    regs[power.offset] = 19_990
    assert RawBands(PROFILE.lamp, {"power_w": 2.0}).within(old, tuple(regs))
    assert not RawBands(PROFILE.lamp, {}).within(old, tuple(regs))


@pytest.mark.parametrize(
    ("point", "value"),
    [
        ("level_cmd", 101),
        ("level_cmd", -1),
        ("level_cmd", float("nan")),
        ("level_cmd", float("inf")),
        ("power_w", 2000.1),
        ("energy_kwh", -0.5),
        ("switch_count", 2**32),
    ],
)
def test_encode_refuses_values_that_cannot_be_right(point: str, value: float) -> None:
    """Out-of-range or non-finite values raise a DeviceReplyError naming the point."""
    with pytest.raises(DeviceReplyError) as info:
        encode(PROFILE.lamp.point(point), value)
    assert isinstance(info.value, PointValueError)
    assert info.value.point == point


def test_decode_refuses_implausible_register() -> None:
    """A level of 250 % from the device is a reply error, not telemetry."""
    with pytest.raises(PointValueError) as info:
        decode(PROFILE.lamp.point("level_actual"), [250])
    assert info.value.point == "level_actual"
    regs = [0] * PROFILE.lamp.span
    regs[PROFILE.lamp.point("level_actual").offset] = 250
    with pytest.raises(PointValueError):
        BlockDecoder(PROFILE.lamp).decode(regs)


def test_decode_refuses_short_register_list() -> None:
    """Too few registers is a reply error, not an IndexError."""
    with pytest.raises(PointValueError):
        decode(PROFILE.lamp.point("energy_kwh"), [0])
    with pytest.raises(PointValueError):
        BlockDecoder(PROFILE.lamp).decode([0] * 3)


def test_status_bits_round_trip() -> None:
    """Named status bits pack into the status register and come back out."""
    status = PROFILE.lamp.point("status")
    flags = {"lamp_failure": True, "comm_loss": True, "power_low": False}
    raw = pack_bits(status, flags)
    assert raw == 0b10001
    assert bits_of(status, raw) == {
        "lamp_failure": True,
        "driver_failure": False,
        "power_high": False,
        "power_low": False,
        "comm_loss": True,
    }


def test_profile_addresses() -> None:
    """Lamp blocks sit at base + index * stride and `locate` inverts that."""
    assert PROFILE.lamp_base(0) == PROFILE.lamp.base
    addr = PROFILE.lamp_address(7, "status")
    assert PROFILE.locate(addr) == (7, PROFILE.lamp.point("status"))
    assert PROFILE.locate(PROFILE.controller_address("heartbeat")) == (
        None,
        PROFILE.controller.point("heartbeat"),
    )
    assert PROFILE.locate(PROFILE.register_end) is None
    with pytest.raises(ValueError, match="lamp index"):
        PROFILE.lamp_base(PROFILE.max_lamps)
    assert PROFILE.lamp.span <= PROFILE.max_read_registers


def _raw_profile() -> dict[str, Any]:
    with open(DEFAULT_PROFILE_PATH, "rb") as fh:
        return tomllib.load(fh)


def _set(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node: Any = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        (("lamp", "points", 1, "type"), "u64", "lamp.points.1.type"),
        (("lamp", "points", 1, "offset"), 0, "lamp.points.1.offset"),
        (("lamp", "points", 1, "colour"), "red", "lamp.points.1.colour"),
        (("lamp", "points", 0, "min"), 200, "lamp.points.0.min"),
        (("lamp", "points", 0, "max"), 70000, "lamp.points.0.max"),
        (("lamp", "stride"), 4, "lamp.stride"),
        (("lamp", "base"), 2, "lamp.base"),
        (("profile", "max_read_registers"), 126, "profile.max_read_registers"),
        (("lamp", "points", 6, "bits", "lamp_failure"), 16, "lamp.points.6.bits.lamp_failure"),
        (("lamp", "points", 6, "bits", "comm_loss"), 0, "lamp.points.6.bits.comm_loss"),
        (("controller",), None, "controller"),
        (("table", "point"), "power_w", "table.point"),  # read-only
        (("table", "point"), "energy_kwh", "table.point"),  # two registers
        (("table", "point"), "colour", "table.point"),  # no such point
        (("table", "base"), 150, "table.base"),  # inside the lamp blocks
        (("table", "base"), 65400, "table.base"),  # past the address space
    ],
)
def test_bad_profile_names_the_key(path: tuple[Any, ...], value: Any, key: str) -> None:
    """Each kind of mistake in the profile is reported with its key and file."""
    data = copy.deepcopy(_raw_profile())
    _set(data, path, value)
    with pytest.raises(ConfigError) as info:
        parse_profile(data, "test.toml")
    assert info.value.key == key
    assert "test.toml" in str(info.value)


def test_load_profile_reports_unreadable_file(tmp_path: Any) -> None:
    """A missing or broken file is a ConfigError naming the file."""
    with pytest.raises(ConfigError, match="file not found"):
        load_profile(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[profile\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_profile(broken)
    assert info.value.file == str(broken)
