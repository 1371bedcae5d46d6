"""Every converter and raw type, property-tested against independent references."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mapper_sdk.codec import RawType, shortest_float32
from mapper_sdk.model import PropertyType
from mappers.ble import BleVisitorConfig, DataConverter, compile_codec, make_converter
from mappers.ble.convert import ALLOWED_RAW_TYPES

UUID = "2A19"
STRUCT = {
    RawType.INT8: "b",
    RawType.UINT8: "B",
    RawType.INT16: "h",
    RawType.UINT16: "H",
    RawType.INT32: "i",
    RawType.UINT32: "I",
    RawType.INT64: "q",
    RawType.UINT64: "Q",
    RawType.FLOAT32: "f",
    RawType.FLOAT64: "d",
}
OPS = ("Add", "Subtract", "Multiply", "Divide")


def visitor(**data: Any) -> BleVisitorConfig:
    return BleVisitorConfig.model_validate({"characteristicUUID": UUID, **data})


def numbers_for(raw: RawType) -> st.SearchStrategy[Any]:
    if raw.is_integer:
        bits = raw.size * 8
        if raw.value.startswith("u"):
            return st.integers(0, 2**bits - 1)
        return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if raw is RawType.FLOAT32:
        return st.floats(width=32, allow_nan=False, allow_infinity=False)
    return st.floats(allow_nan=False, allow_infinity=False)


# ---------------------------------------------------------------------------- raw types
@pytest.mark.parametrize("raw", sorted(STRUCT, key=str))
@pytest.mark.parametrize("order", ["little", "big"])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_numeric_raw_types_round_trip_in_both_byte_orders(
    raw: RawType, order: str, data: st.DataObject
) -> None:
    ptype = PropertyType.INT if raw.is_integer else PropertyType.DOUBLE
    codec = compile_codec(visitor(rawType=raw.value, byteOrder=order), ptype)
    value = data.draw(numbers_for(raw))
    assert codec.encode is not None
    wire = codec.encode(value)
    # Independent reference: the struct module with the GATT byte order.
    prefix = "<" if order == "little" else ">"
    assert wire == struct.pack(prefix + STRUCT[raw], value)
    decoded = codec.decode(bytearray(wire))
    expected = shortest_float32(value) if raw is RawType.FLOAT32 else value
    assert decoded == expected


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(
        alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]),
        max_size=60,
    )
)
def test_string_round_trips_as_utf8(text: str) -> None:
    codec = compile_codec(visitor(rawType="string"), PropertyType.STRING)
    assert codec.encode is not None
    assert codec.encode(text) == text.encode("utf-8")
    assert codec.decode(text.encode("utf-8") + b"\x00\x00") == text  # trailing NULs dropped


def test_a_lone_surrogate_cannot_be_written() -> None:
    # JSON may carry "\ud800"; UTF-8 cannot, so the write is rejected as a bad value.
    codec = compile_codec(visitor(rawType="string"), PropertyType.STRING)
    assert codec.encode is not None
    with pytest.raises(ValueError, match="surrogates not allowed"):
        codec.encode("\ud800")


@settings(max_examples=60, deadline=None)
@given(blob=st.binary(max_size=64))
def test_bytes_round_trip_as_is(blob: bytes) -> None:
    codec = compile_codec(visitor(rawType="bytes"), PropertyType.BYTES)
    assert codec.encode is not None
    assert codec.encode(blob) == blob
    assert codec.decode(bytearray(blob)) == blob


@settings(max_examples=40, deadline=None)
@given(blob=st.binary(min_size=1, max_size=8))
def test_bool_is_any_byte_set(blob: bytes) -> None:
    codec = compile_codec(visitor(rawType="bool"), PropertyType.BOOLEAN)
    assert codec.decode(blob) is any(blob)
    assert codec.encode is not None
    assert codec.encode(True) == b"\x01" and codec.encode(False) == b"\x00"


def test_every_raw_type_is_allowed_for_some_model_type() -> None:
    allowed = set().union(*ALLOWED_RAW_TYPES.values())
    assert allowed == set(RawType)


@pytest.mark.parametrize(
    ("raw", "data", "message"),
    [
        (RawType.INT16, b"\x01", "int16 needs 2 bytes, got 1"),
        (RawType.UINT8, b"", "uint8 needs 1 byte"),
        (RawType.FLOAT64, b"\x00" * 7, "float64 needs 8 bytes"),
    ],
)
def test_short_values_are_decode_errors(raw: RawType, data: bytes, message: str) -> None:
    ptype = PropertyType.DOUBLE if raw.is_float else PropertyType.INT
    with pytest.raises(ValueError, match=message):
        compile_codec(visitor(rawType=raw.value), ptype).decode(data)


def test_values_out_of_range_are_encode_errors() -> None:
    codec = compile_codec(visitor(rawType="uint8"), PropertyType.INT)
    assert codec.encode is not None
    with pytest.raises(ValueError, match=r"256 is out of range for uint8"):
        codec.encode(256)
    with pytest.raises(ValueError, match="needs an integer"):
        codec.encode(1.5)


# ---------------------------------------------------------------------------- defaults
@pytest.mark.parametrize(
    ("ptype", "data", "value"),
    [
        (PropertyType.INT, b"\x61\x62", 0x61),  # KubeEdge without a converter: byte 0
        (PropertyType.FLOAT, b"\x61\x62", 0x61),
        (PropertyType.BOOLEAN, b"\x00\x02", True),
        (PropertyType.STRING, b"ab\x00", "ab"),
        (PropertyType.BYTES, b"ab\x00", b"ab\x00"),
    ],
)
def test_defaults_by_model_type(ptype: PropertyType, data: bytes, value: Any) -> None:
    codec = compile_codec(visitor(), ptype)
    assert codec.decode(data) == value
    assert codec.encode is not None


# ---------------------------------------------------------------------------- dataConverter
def reference_convert(
    data: bytes, start: int, end: int, left: int, right: int, ops: list[tuple[str, float]]
) -> float:
    """KubeEdge's algorithm, spelled out loop by loop as its Go mapper does it."""
    picked = []
    if start <= end:
        for i in range(start, end + 1):
            picked.append(data[i])
    else:
        i = start
        while i >= end:
            picked.append(data[i])
            i -= 1
    number = 0
    for b in picked:
        number = number * 256 + b
    if left:
        number = (number * 2**left) % 2**64
    if right:
        number = number // 2**right
    result = float(number)
    for kind, operand in ops:
        result = {
            "Add": result + operand,
            "Subtract": result - operand,
            "Multiply": result * operand,
            "Divide": result / operand if operand else math.inf,
        }[kind]
    return result


operations = st.lists(
    st.tuples(
        st.sampled_from(OPS),
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).filter(lambda v: abs(v) > 1e-3),
    ),
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=16),
    start=st.integers(0, 15),
    width=st.integers(0, 7),
    reverse=st.booleans(),
    left=st.integers(0, 63),
    right=st.integers(0, 63),
    ops=operations,
)
def test_data_converter_matches_the_reference(
    data: bytes,
    start: int,
    width: int,
    reverse: bool,
    left: int,
    right: int,
    ops: list[tuple[str, float]],
) -> None:
    end = start + width
    if reverse:
        start, end = end, start
    conv = DataConverter.model_validate(
        {
            "startIndex": start,
            "endIndex": end,
            "shiftLeft": left,
            "shiftRight": right,
            "orderOfOperations": [{"operationType": k, "operationValue": v} for k, v in ops],
        }
    )
    convert = make_converter(conv)
    if max(start, end) >= len(data):
        with pytest.raises(ValueError, match=f"reads byte {max(start, end)}"):
            convert(data)
        return
    expected = reference_convert(data, start, end, left, right, ops)
    if not math.isfinite(expected):
        with pytest.raises(ValueError, match="not a number"):
            convert(data)
        return
    got = convert(data)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)
    if not ops:
        assert isinstance(got, int)


def test_reverse_slice_reads_little_endian_words() -> None:
    conv = DataConverter(startIndex=1, endIndex=0)
    assert make_converter(conv)(b"\x34\x12\xff") == 0x1234


def test_legacy_converter_joins_decimal_text_like_kubeedge() -> None:
    conv = DataConverter.model_validate(
        {
            "startIndex": 0,
            "endIndex": 1,
            "orderOfOperations": [{"operationType": "Divide", "operationValue": 10}],
        }
    )
    legacy = make_converter(conv, legacy=True)
    # bytes 0x0A, 0x05 -> "10" + "5" -> 105 -> / 10
    assert legacy(b"\x0a\x05") == pytest.approx(10.5)
    assert make_converter(conv)(b"\x0a\x05") == pytest.approx(0x0A05 / 10)


def test_legacy_converter_applies_only_one_shift_and_saturates() -> None:
    both = DataConverter(startIndex=0, endIndex=0, shiftLeft=1, shiftRight=1)
    assert make_converter(both, legacy=True)(b"\x03") == 6.0  # left wins, as in Go
    assert make_converter(both)(b"\x03") == 3  # Mapperkit applies both, in order
    huge = DataConverter(startIndex=0, endIndex=11)
    assert make_converter(huge, legacy=True)(b"\xff" * 12) == float(2**64 - 1)


@settings(max_examples=100, deadline=None)
@given(
    raw=st.sampled_from([RawType.INT16, RawType.UINT16, RawType.INT32, RawType.FLOAT32]),
    scale=st.sampled_from([10.0, 100.0, 0.5]),
    offset=st.floats(-100, 100, allow_nan=False),
    data=st.data(),
)
def test_raw_type_with_arithmetic_round_trips(
    raw: RawType, scale: float, offset: float, data: st.DataObject
) -> None:
    v = visitor(
        rawType=raw.value,
        dataConverter={
            "orderOfOperations": [
                {"operationType": "Divide", "operationValue": scale},
                {"operationType": "Add", "operationValue": offset},
            ]
        },
    )
    codec = compile_codec(v, PropertyType.DOUBLE)
    assert codec.encode is not None
    lo, hi = (-1000, 1000) if raw is not RawType.UINT16 else (0, 2000)
    raw_value = data.draw(st.integers(lo, hi))
    wire = struct.pack("<" + STRUCT[raw], raw_value)
    value = codec.decode(wire)
    assert value == pytest.approx(raw_value / scale + offset)
    assert codec.decode(codec.encode(value)) == pytest.approx(value, abs=1e-4)


def test_signed_temperature_in_hundredths() -> None:
    v = visitor(
        rawType="int16",
        dataConverter={"orderOfOperations": [{"operationType": "Divide", "operationValue": 100}]},
    )
    codec = compile_codec(v, PropertyType.FLOAT)
    assert codec.decode(struct.pack("<h", -1234)) == pytest.approx(-12.34)
    assert codec.encode is not None
    assert codec.encode(21.5) == struct.pack("<h", 2150)


# ---------------------------------------------------------------------------- dataWrite
def test_data_write_maps_typed_values_and_reads_back_by_bytes() -> None:
    codec = compile_codec(visitor(dataWrite={"true": [1], "false": [0]}), PropertyType.BOOLEAN)
    assert codec.encode is not None
    assert codec.encode(True) == b"\x01"
    assert codec.decode(b"\x00") is False
    with pytest.raises(ValueError, match="match none of the dataWrite values"):
        codec.decode(b"\x02")

    codec = compile_codec(visitor(dataWrite={"ON": [1], "OFF": [0]}), PropertyType.STRING)
    assert codec.encode is not None
    assert codec.encode("ON") == b"\x01"
    assert codec.encode("off") == b"\x00"  # case-insensitive as a fallback
    assert codec.decode(b"\x01") == "ON"

    codec = compile_codec(visitor(dataWrite={"1": [1], "2": "0x0200"}), PropertyType.FLOAT)
    assert codec.encode is not None
    assert codec.encode(2.0) == b"\x02\x00"
    with pytest.raises(ValueError, match=r"3\.5 is not one of the dataWrite keys \('1', '2'\)"):
        codec.encode(3.5)


def test_data_write_wins_for_writes_and_the_raw_type_reads() -> None:
    codec = compile_codec(visitor(rawType="uint16", dataWrite={"7": [9, 9]}), PropertyType.INT)
    assert codec.encode is not None
    assert codec.encode(7) == b"\x09\x09"
    assert codec.decode(b"\x09\x09") == 0x0909


def test_a_plain_data_converter_cannot_write() -> None:
    codec = compile_codec(visitor(dataConverter={"startIndex": 1}), PropertyType.INT)
    assert codec.encode is None
    assert codec.cannot_write is not None and "dataWrite" in codec.cannot_write
