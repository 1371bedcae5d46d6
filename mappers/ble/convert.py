"""Value conversion for GATT characteristics, compiled once per property.

A property's visitor picks how the characteristic's bytes become a value and
back, in this order:

1. ``rawType`` (with ``byteOrder``, little-endian by default): the codec's byte
   layouts (:func:`mapper_sdk.codec.decode_bytes`), both ways; a
   ``dataConverter`` next to it gives only ``orderOfOperations``, applied to the
   decoded number and undone (in reverse order) before a write.
2. ``dataConverter``: KubeEdge's slice, shifts and ordered arithmetic on read.
   It cannot be inverted in general (the other bytes of the value are unknown),
   so such a property writes only through ``dataWrite``.
3. ``dataWrite`` alone: writes the mapped bytes and reads back by finding the
   read bytes among the mapping's values.
4. none of these: by the model type, as KubeEdge reads a property without a
   converter: STRING as UTF-8 text, BYTES as is, BOOLEAN as "any byte set", and
   numbers as the first byte, unsigned (``uint8``).

``dataWrite`` always takes precedence for writes when present.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from mapper_sdk.codec import RawType, decode_bytes, encode_bytes, format_text, parse_text
from mapper_sdk.model import PropertyType, Value

from .config import BleVisitorConfig, DataConverter, OperationType

__all__ = [
    "ALLOWED_RAW_TYPES",
    "Codec",
    "compile_codec",
    "default_raw_type",
    "make_converter",
]

ByteOrder = Literal["little", "big"]
MASK64 = (1 << 64) - 1
UINT64_MAX = MASK64

Buffer = bytes | bytearray
Decoder = Callable[[Buffer], Value]
Encoder = Callable[[Value], bytes]

_INTEGER_RAW = frozenset(r for r in RawType if r.is_integer)
_NUMERIC_RAW = _INTEGER_RAW | {RawType.FLOAT32, RawType.FLOAT64}

ALLOWED_RAW_TYPES: dict[PropertyType, frozenset[RawType]] = {
    PropertyType.INT: _INTEGER_RAW | {RawType.BOOL},
    PropertyType.FLOAT: _NUMERIC_RAW,
    PropertyType.DOUBLE: _NUMERIC_RAW,
    PropertyType.BOOLEAN: _INTEGER_RAW | {RawType.BOOL},
    PropertyType.STRING: frozenset({RawType.STRING, RawType.BYTES}),
    PropertyType.BYTES: frozenset({RawType.BYTES, RawType.STRING}),
}
"""Which ``rawType`` each model type accepts; one table, checked at load time."""

CONVERTER_TYPES = frozenset(
    {PropertyType.INT, PropertyType.FLOAT, PropertyType.DOUBLE, PropertyType.BOOLEAN}
)
"""Model types a ``dataConverter`` (which yields a number) can feed."""


def default_raw_type(ptype: PropertyType) -> RawType:
    """The raw type used when a visitor names neither ``rawType`` nor ``dataConverter``."""
    if ptype is PropertyType.STRING:
        return RawType.STRING
    if ptype is PropertyType.BYTES:
        return RawType.BYTES
    if ptype is PropertyType.BOOLEAN:
        return RawType.BOOL
    return RawType.UINT8


def _arithmetic(conv: DataConverter) -> Callable[[float], float]:
    steps = tuple((op.operationType, op.operationValue) for op in conv.orderOfOperations)

    def arithmetic(number: float) -> float:
        for kind, operand in steps:
            if kind is OperationType.ADD:
                number += operand
            elif kind is OperationType.SUBTRACT:
                number -= operand
            elif kind is OperationType.MULTIPLY:
                number *= operand
            else:
                number /= operand
        if not math.isfinite(number):
            raise ValueError(f"the dataConverter's arithmetic gives {number!r}, not a number")
        return number

    return arithmetic


def _inverse_arithmetic(conv: DataConverter) -> Callable[[float], float]:
    steps = tuple((op.operationType, op.operationValue) for op in reversed(conv.orderOfOperations))

    def inverse(number: float) -> float:
        for kind, operand in steps:
            if kind is OperationType.ADD:
                number -= operand
            elif kind is OperationType.SUBTRACT:
                number += operand
            elif kind is OperationType.MULTIPLY:
                if operand == 0:
                    raise ValueError("Multiply by 0 cannot be undone to write a value")
                number /= operand
            else:
                number *= operand
        if not math.isfinite(number):
            raise ValueError(f"undoing the dataConverter's arithmetic gives {number!r}")
        return number

    return inverse


def make_converter(conv: DataConverter, *, legacy: bool = False) -> Callable[[Buffer], int | float]:
    """Compile KubeEdge's ``dataConverter`` into ``bytes -> number``.

    Raises ``ValueError`` (from the returned function) when the value is too
    short for the slice.
    """
    start, end = conv.startIndex, conv.endIndex
    need = max(start, end) + 1
    if start <= end:
        part_slice = slice(start, end + 1)
    else:
        part_slice = slice(start, end - 1 if end > 0 else None, -1)
    shift_left, shift_right = conv.shiftLeft, conv.shiftRight
    arithmetic = _arithmetic(conv)
    steps = conv.orderOfOperations

    if legacy:

        def legacy_convert(data: Buffer) -> int | float:
            if len(data) < need:
                raise ValueError(
                    f"the value has {len(data)} bytes; the dataConverter reads byte {need - 1}"
                )
            # KubeEdge's Go mapper joins the decimal text of each byte and parses
            # it as uint64 (saturating on overflow), then applies one shift.
            number = min(int("".join(str(b) for b in data[part_slice])), UINT64_MAX)
            if shift_left:
                number = (number << shift_left) & MASK64
            elif shift_right:
                number >>= shift_right
            return arithmetic(float(number))

        return legacy_convert

    def convert(data: Buffer) -> int | float:
        if len(data) < need:
            raise ValueError(
                f"the value has {len(data)} bytes; the dataConverter reads byte {need - 1}"
            )
        number = int.from_bytes(data[part_slice], "big")
        if shift_left:
            number = (number << shift_left) & MASK64
        if shift_right:
            number >>= shift_right
        if not steps:
            return number
        return arithmetic(float(number))

    return convert


@dataclass(frozen=True, slots=True)
class Codec:
    """How one property's value crosses the GATT boundary.

    Attributes:
        decode: characteristic bytes to a Python value (``ValueError`` when they
            do not fit).
        encode: a typed value to the bytes to write (``ValueError`` when it does
            not fit), or ``None`` when the property cannot be written.
        cannot_write: why ``encode`` is ``None``.
    """

    decode: Decoder
    encode: Encoder | None
    cannot_write: str | None = None


def _raw_decoder(raw: RawType, order: ByteOrder, ptype: PropertyType) -> Decoder:
    if raw is RawType.BYTES and ptype is PropertyType.STRING:
        return lambda data: bytes(data).decode("utf-8", errors="replace")
    if raw is RawType.STRING and ptype is PropertyType.BYTES:
        return lambda data: bytes(data).rstrip(b"\x00")
    if raw is RawType.STRING:
        return lambda data: bytes(data).rstrip(b"\x00").decode("utf-8", errors="replace")
    if raw is RawType.BYTES:
        return bytes
    if raw is RawType.UINT8:

        def dec_u8(data: Buffer) -> Value:
            if not data:
                raise ValueError("uint8 needs 1 byte, got 0")
            return data[0]

        return dec_u8
    return lambda data: decode_bytes(bytes(data), raw, order)


def _raw_encoder(raw: RawType, order: ByteOrder) -> Encoder:
    if raw is RawType.STRING:

        def enc_str(value: Value) -> bytes:
            if isinstance(value, bytes):
                return value
            return encode_bytes(value if isinstance(value, str) else str(value), raw)

        return enc_str
    if raw is RawType.BYTES:

        def enc_bytes(value: Value) -> bytes:
            if isinstance(value, str):
                return value.encode("utf-8")
            return encode_bytes(value, raw)

        return enc_bytes
    return lambda value: encode_bytes(value, raw, order)


def _data_write_tables(mapping: dict[str, bytes], ptype: PropertyType) -> tuple[Encoder, Decoder]:
    by_value: dict[Value, bytes] = {}
    by_text: dict[str, bytes] = {}
    reverse: dict[bytes, Value] = {}
    for key, data in mapping.items():
        typed: Value = key if ptype is PropertyType.STRING else parse_text(key, ptype)
        by_value[typed] = data
        by_text[key.casefold()] = data
        reverse.setdefault(data, typed)
    keys = ", ".join(repr(k) for k in mapping)

    def lookup(value: Value) -> bytes:
        data = by_value.get(value)
        if data is None and not isinstance(value, float | bool):
            data = by_text.get(format_text(value, ptype).casefold())
        if data is None and isinstance(value, float) and value.is_integer():
            data = by_value.get(int(value))
        if data is None:
            raise ValueError(f"{value!r} is not one of the dataWrite keys ({keys})")
        return data

    def reverse_lookup(data: Buffer) -> Value:
        value = reverse.get(bytes(data))
        if value is None:
            raise ValueError(f"bytes {bytes(data).hex()} match none of the dataWrite values")
        return value

    return lookup, reverse_lookup


def _with_arithmetic(
    decode: Decoder, encode: Encoder, raw: RawType, conv: DataConverter
) -> tuple[Decoder, Encoder]:
    forward, inverse = _arithmetic(conv), _inverse_arithmetic(conv)
    integer = raw.is_integer

    def decode_scaled(data: Buffer) -> Value:
        number = decode(data)
        assert isinstance(number, int | float)
        return forward(float(number))

    def encode_scaled(value: Value) -> bytes:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        raw_value = inverse(float(value))
        return encode(round(raw_value) if integer else raw_value)

    return decode_scaled, encode_scaled


def compile_codec(visitor: BleVisitorConfig, ptype: PropertyType) -> Codec:
    """Compile the decoder and encoder of one property (see the module docstring).

    Raises ``ValueError`` for a combination that cannot work with ``ptype``
    (the driver reports it as a configuration error at load time).
    """
    lookup: Callable[[Value], bytes] | None = None
    reverse: Decoder | None = None
    if visitor.dataWrite is not None:
        lookup, reverse = _data_write_tables(visitor.dataWrite, ptype)

    decode: Decoder
    encode: Encoder | None = None
    cannot_write: str | None = None
    if visitor.rawType is not None:
        raw = visitor.rawType
        if raw not in ALLOWED_RAW_TYPES[ptype]:
            allowed = ", ".join(sorted(r.value for r in ALLOWED_RAW_TYPES[ptype]))
            raise ValueError(f"rawType {raw} cannot hold a {ptype.value.upper()} ({allowed} can)")
        decode = _raw_decoder(raw, visitor.order, ptype)
        encode = _raw_encoder(raw, visitor.order)
        if visitor.dataConverter is not None and visitor.dataConverter.orderOfOperations:
            if raw not in _NUMERIC_RAW:
                raise ValueError(f"orderOfOperations needs a numeric rawType, not {raw}")
            decode, encode = _with_arithmetic(decode, encode, raw, visitor.dataConverter)
    elif visitor.dataConverter is not None or visitor.legacyConverter:
        if ptype not in CONVERTER_TYPES:
            raise ValueError(
                f"a dataConverter yields a number; a {ptype.value.upper()} property needs rawType"
            )
        conv = visitor.dataConverter or DataConverter()
        decode = make_converter(conv, legacy=visitor.legacyConverter)
        cannot_write = (
            "a dataConverter cannot be inverted to bytes; give this property a dataWrite "
            "mapping or a rawType to write it"
        )
    elif reverse is not None:
        decode = reverse
    else:
        raw = default_raw_type(ptype)
        decode = _raw_decoder(raw, visitor.order, ptype)
        encode = _raw_encoder(raw, visitor.order)

    if lookup is not None:
        encode, cannot_write = lookup, None
    return Codec(decode=decode, encode=encode, cannot_write=cannot_write)
