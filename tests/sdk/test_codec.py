"""Value conversion: every raw type and order round-trips; model types and wire text."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mapper_sdk import codec
from mapper_sdk.codec import RawType
from mapper_sdk.model import PropertyType

INT_TYPES = [t for t in RawType if t.is_integer]


def _int_values(raw: RawType) -> st.SearchStrategy[int]:
    lo, hi = codec.int_range(raw)
    return st.integers(lo, hi)


@st.composite
def int_cases(draw: st.DrawFn) -> tuple[RawType, int]:
    raw = draw(st.sampled_from(INT_TYPES))
    return raw, draw(_int_values(raw))


@given(int_cases(), st.booleans(), st.booleans())
def test_integer_registers_round_trip(case: tuple[RawType, int], bswap: bool, wswap: bool) -> None:
    raw, value = case
    regs = codec.encode_registers(value, raw, byte_swap=bswap, word_swap=wswap)
    assert len(regs) == codec.register_count(raw)
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert codec.decode_registers(regs, raw, byte_swap=bswap, word_swap=wswap) == value


@given(st.floats(allow_nan=False, width=32), st.booleans(), st.booleans())
def test_float32_registers_round_trip(value: float, bswap: bool, wswap: bool) -> None:
    regs = codec.encode_registers(value, RawType.FLOAT32, byte_swap=bswap, word_swap=wswap)
    back = codec.decode_registers(regs, RawType.FLOAT32, byte_swap=bswap, word_swap=wswap)
    assert struct.pack(">f", back) == struct.pack(">f", value)


@given(st.floats(allow_nan=False), st.booleans(), st.booleans())
def test_float64_registers_round_trip(value: float, bswap: bool, wswap: bool) -> None:
    regs = codec.encode_registers(value, RawType.FLOAT64, byte_swap=bswap, word_swap=wswap)
    assert codec.decode_registers(regs, RawType.FLOAT64, byte_swap=bswap, word_swap=wswap) == value


@given(st.text(st.characters(min_codepoint=1, max_codepoint=0x7F), max_size=16), st.booleans())
def test_string_registers_round_trip(value: str, bswap: bool) -> None:
    regs = codec.encode_registers(value, RawType.STRING, byte_swap=bswap, count=8)
    assert len(regs) == 8
    assert codec.decode_registers(regs, RawType.STRING, byte_swap=bswap, count=8) == value


@given(int_cases(), st.sampled_from(["little", "big"]))
def test_integer_bytes_round_trip(case: tuple[RawType, int], order: str) -> None:
    raw, value = case
    data = codec.encode_bytes(value, raw, order)  # type: ignore[arg-type]
    assert len(data) == raw.size
    assert codec.decode_bytes(data, raw, order) == value  # type: ignore[arg-type]


@given(st.floats(allow_nan=False), st.sampled_from(["little", "big"]))
def test_float64_bytes_round_trip(value: float, order: str) -> None:
    data = codec.encode_bytes(value, RawType.FLOAT64, order)  # type: ignore[arg-type]
    assert codec.decode_bytes(data, RawType.FLOAT64, order) == value  # type: ignore[arg-type]


@given(st.binary(max_size=20))
def test_bytes_round_trip(value: bytes) -> None:
    assert codec.decode_bytes(codec.encode_bytes(value, RawType.BYTES), RawType.BYTES) == value


def test_documented_layouts() -> None:
    # Big-endian registers, most significant word first.
    assert codec.encode_registers(0x12345678, RawType.UINT32) == [0x1234, 0x5678]
    assert codec.encode_registers(0x12345678, RawType.UINT32, word_swap=True) == [0x5678, 0x1234]
    assert codec.encode_registers(0x12345678, RawType.UINT32, byte_swap=True) == [0x3412, 0x7856]
    assert codec.decode_registers([0x4148, 0], RawType.FLOAT32) == 12.5
    assert codec.decode_registers([0x4142, 0x4300], RawType.STRING, count=2) == "ABC"
    assert codec.decode_registers([0x4241], RawType.STRING, byte_swap=True, count=1) == "AB"
    assert codec.decode_registers([0xFFFE], RawType.INT16) == -2
    assert codec.decode_bytes(b"\x34\x12", RawType.UINT16) == 0x1234  # GATT: little-endian


def test_float32_shortest_decimal() -> None:
    regs = codec.encode_registers(0.1, RawType.FLOAT32)
    assert codec.decode_registers(regs, RawType.FLOAT32) == 0.1
    assert codec.shortest_float32(230.1) == 230.1


@given(st.integers(0, 0xFFFF), st.integers(0, 15), st.booleans())
def test_bits(register: int, bit: int, on: bool) -> None:
    changed = codec.set_bit(register, bit, on)
    assert codec.get_bit(changed, bit) is on
    assert changed & ~(1 << bit) == register & ~(1 << bit)


@given(
    st.integers(-1000, 1000),
    st.sampled_from([0.1, 0.5, 1.0, 2.0, 10.0]),
    st.sampled_from([0.0, -40.0, 3.5]),
)
def test_scale_round_trip(raw: int, scale: float, offset: float) -> None:
    value = codec.scale_in(raw, scale, offset)
    assert codec.scale_out(value, RawType.INT32, scale, offset) == raw


def test_scale_out_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range for uint16"):
        codec.scale_out(7000.0, RawType.UINT16, 0.1)
    with pytest.raises(ValueError, match="out of range for int16"):
        codec.encode_registers(40000, RawType.INT16)


@pytest.mark.parametrize(
    ("text", "ptype", "value"),
    [
        ("42", PropertyType.INT, 42),
        ("-7", PropertyType.INT, -7),
        ("23", PropertyType.FLOAT, 23.0),
        ("2.5e3", PropertyType.DOUBLE, 2500.0),
        ("true", PropertyType.BOOLEAN, True),
        ("false", PropertyType.BOOLEAN, False),
        ("", PropertyType.STRING, ""),
        ("aGk=", PropertyType.BYTES, b"hi"),
    ],
)
def test_parse_text(text: str, ptype: PropertyType, value: object) -> None:
    assert codec.parse_text(text, ptype) == value
    assert codec.parse_text(codec.format_text(value, ptype), ptype) == value


@pytest.mark.parametrize(
    ("text", "ptype", "message"),
    [
        ("4.5", PropertyType.INT, "not an integer"),
        ("9223372036854775808", PropertyType.INT, "outside the int64 range"),
        ("NaN", PropertyType.FLOAT, "not a decimal number"),
        ("inf", PropertyType.FLOAT, "not a decimal number"),
        ("1e999", PropertyType.FLOAT, "not a finite number"),
        ("True", PropertyType.BOOLEAN, "not a boolean"),
        ("x" * 513, PropertyType.STRING, "longer than 512"),
        ("a\nb", PropertyType.STRING, "control characters"),
        ("aGk", PropertyType.BYTES, "not base64"),
    ],
)
def test_parse_text_rejects(text: str, ptype: PropertyType, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        codec.parse_text(text, ptype)


def test_coerce_and_range() -> None:
    assert codec.coerce(3, PropertyType.FLOAT) == 3.0
    assert codec.coerce(2.6, PropertyType.INT) == 3
    assert codec.coerce(1, PropertyType.BOOLEAN) is True
    assert codec.coerce(b"ab", PropertyType.STRING) == "ab"
    with pytest.raises(ValueError, match="not a finite number"):
        codec.coerce(math.inf, PropertyType.INT)
    with pytest.raises(ValueError, match="above the maximum 30"):
        codec.check_range(31.0, 5, 30)
    with pytest.raises(ValueError, match="below the minimum 5"):
        codec.check_range(4, 5, 30)
    codec.check_range("text", 5, 30)  # non-numeric values have no range


def test_values_equal_is_typed() -> None:
    assert codec.values_equal(23, 23.0, PropertyType.FLOAT)
    assert not codec.values_equal(None, 0, PropertyType.INT)
