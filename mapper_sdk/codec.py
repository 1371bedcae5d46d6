"""Value conversion shared by drivers, the runtime and the twin. Pure functions.

Three groups:

* **raw layouts**: :class:`RawType` values packed into 16-bit registers (Modbus:
  big-endian registers, most significant word first unless swapped) or into a
  byte string (BLE: little-endian by default, as the GATT specifications use).
  ``make_register_decoder``/``make_register_encoder`` compile a layout once, so a
  driver's hot path is one call per value.
* **scaling**: ``value = raw * scale + offset`` on read, the inverse on write,
  with the raw type's range checked before any I/O.
* **model types**: coercing driver values to a property's :class:`PropertyType`,
  checking the model's ``minimum``/``maximum``, and the twin's wire text
  (``parse_text``/``format_text``), whose rules are in the twin protocol.
"""

from __future__ import annotations

import base64
import binascii
import enum
import math
import re
import struct
from collections.abc import Callable, Sequence
from typing import Literal

from .model import PropertyType, Value

__all__ = [
    "RawType",
    "check_range",
    "coerce",
    "decode_bytes",
    "decode_registers",
    "encode_bytes",
    "encode_registers",
    "format_text",
    "get_bit",
    "int_range",
    "make_coercer",
    "make_register_decoder",
    "make_register_encoder",
    "parse_text",
    "raw_range",
    "register_count",
    "scale_in",
    "scale_out",
    "set_bit",
    "shortest_float32",
    "values_equal",
]

ByteOrder = Literal["big", "little"]
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_STRING = 512


class RawType(enum.StrEnum):
    """How a value is laid out on the wire."""

    BOOL = "bool"
    INT8 = "int8"
    UINT8 = "uint8"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"
    BYTES = "bytes"

    @property
    def size(self) -> int:
        """Bytes taken by a fixed-size type; 0 for ``string`` and ``bytes``."""
        return _SIZES[self]

    @property
    def is_integer(self) -> bool:
        return self in _INT_RANGES

    @property
    def is_float(self) -> bool:
        return self in (RawType.FLOAT32, RawType.FLOAT64)


_SIZES: dict[RawType, int] = {
    RawType.BOOL: 1,
    RawType.INT8: 1,
    RawType.UINT8: 1,
    RawType.INT16: 2,
    RawType.UINT16: 2,
    RawType.INT32: 4,
    RawType.UINT32: 4,
    RawType.INT64: 8,
    RawType.UINT64: 8,
    RawType.FLOAT32: 4,
    RawType.FLOAT64: 8,
    RawType.STRING: 0,
    RawType.BYTES: 0,
}
_STRUCT: dict[RawType, str] = {
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
_INT_RANGES: dict[RawType, tuple[int, int]] = {
    RawType.INT8: (-(2**7), 2**7 - 1),
    RawType.UINT8: (0, 2**8 - 1),
    RawType.INT16: (-(2**15), 2**15 - 1),
    RawType.UINT16: (0, 2**16 - 1),
    RawType.INT32: (-(2**31), 2**31 - 1),
    RawType.UINT32: (0, 2**32 - 1),
    RawType.INT64: (-(2**63), 2**63 - 1),
    RawType.UINT64: (0, 2**64 - 1),
}


def int_range(raw: RawType) -> tuple[int, int]:
    """The exact inclusive range of an integer raw type."""
    if raw not in _INT_RANGES:
        raise ValueError(f"{raw} is not an integer type")
    return _INT_RANGES[raw]


def raw_range(raw: RawType) -> tuple[float, float]:
    """The inclusive range a raw type can hold (floats: the finite range)."""
    if raw in _INT_RANGES:
        lo, hi = _INT_RANGES[raw]
        return float(lo), float(hi)
    if raw is RawType.FLOAT32:
        return -3.4028234663852886e38, 3.4028234663852886e38
    if raw is RawType.FLOAT64:
        return -math.inf, math.inf
    if raw is RawType.BOOL:
        return 0.0, 1.0
    raise ValueError(f"{raw} has no numeric range")


def register_count(raw: RawType, limit: int | None = None) -> int:
    """How many 16-bit registers a value of ``raw`` takes (``limit`` for strings/bytes)."""
    if raw in (RawType.STRING, RawType.BYTES):
        if not limit or limit < 1:
            raise ValueError(f"{raw} needs a register count (limit >= 1)")
        return limit
    if raw in (RawType.BOOL, RawType.INT8, RawType.UINT8):
        return 1
    return raw.size // 2


def shortest_float32(value: float) -> float:
    """The shortest decimal that reads back as the same float32 (``0.1f`` -> ``0.1``)."""
    if not math.isfinite(value):
        return value
    packed = struct.pack(">f", value)
    for digits in (7, 8, 9):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack(">f", candidate) == packed:
            return candidate
    return value


# --------------------------------------------------------------------------- registers
def _regs_to_bytes(regs: Sequence[int], byte_swap: bool, word_swap: bool) -> bytes:
    if word_swap:
        regs = regs[::-1]
    return struct.pack(f"{'<' if byte_swap else '>'}{len(regs)}H", *regs)


def _bytes_to_regs(data: bytes, byte_swap: bool, word_swap: bool) -> list[int]:
    if len(data) % 2:
        data += b"\x00"
    regs = list(struct.unpack(f"{'<' if byte_swap else '>'}{len(data) // 2}H", data))
    if word_swap:
        regs.reverse()
    return regs


def make_register_decoder(
    raw: RawType, *, byte_swap: bool = False, word_swap: bool = False, count: int | None = None
) -> Callable[[Sequence[int]], Value]:
    """Compile a decoder from registers (each 0..65535) to a Python value.

    Registers are big-endian (high byte first) and the first register is the
    most significant word; ``byte_swap`` swaps the bytes of each register,
    ``word_swap`` reverses the order of the registers. Strings take two
    characters per register and drop trailing NULs; ``bool`` is "first register
    non-zero". ``count`` is the register count for strings and bytes.
    """
    n = register_count(raw, count)
    if raw is RawType.BOOL:
        return lambda regs: regs[0] != 0
    if raw is RawType.STRING:

        def dec_str(regs: Sequence[int]) -> Value:
            data = _regs_to_bytes(regs[:n], byte_swap, word_swap)
            return data.rstrip(b"\x00").decode("utf-8", errors="replace")

        return dec_str
    if raw is RawType.BYTES:
        return lambda regs: _regs_to_bytes(regs[:n], byte_swap, word_swap)
    if raw in (RawType.INT8, RawType.UINT8):
        lo_signed = raw is RawType.INT8

        def dec_8(regs: Sequence[int]) -> Value:
            reg = regs[0]
            if byte_swap:
                reg = ((reg & 0xFF) << 8) | (reg >> 8)
            low = reg & 0xFF
            return low - 256 if lo_signed and low > 127 else low

        return dec_8
    fmt = _STRUCT[raw]
    if n == 1:
        if raw is RawType.UINT16:
            if byte_swap:
                return lambda regs: ((regs[0] & 0xFF) << 8) | (regs[0] >> 8)
            return lambda regs: regs[0]
        if raw is RawType.INT16:

            def dec_i16(regs: Sequence[int]) -> Value:
                reg = regs[0]
                if byte_swap:
                    reg = ((reg & 0xFF) << 8) | (reg >> 8)
                return reg - 0x10000 if reg & 0x8000 else reg

            return dec_i16
    unpack = struct.Struct(">" + fmt).unpack
    reg_struct = struct.Struct(f"{'<' if byte_swap else '>'}{n}H")
    if raw is RawType.FLOAT32:

        def dec_f32(regs: Sequence[int]) -> Value:
            r = regs[:n]
            if word_swap:
                r = r[::-1]
            return shortest_float32(unpack(reg_struct.pack(*r))[0])

        return dec_f32

    def dec(regs: Sequence[int]) -> Value:
        r = regs[:n]
        if word_swap:
            r = r[::-1]
        result: Value = unpack(reg_struct.pack(*r))[0]
        return result

    return dec


def make_register_encoder(
    raw: RawType, *, byte_swap: bool = False, word_swap: bool = False, count: int | None = None
) -> Callable[[Value], list[int]]:
    """Compile the inverse of :func:`make_register_decoder`.

    Raises ``ValueError`` for a value out of the raw type's range or of the wrong kind.
    """
    n = register_count(raw, count)
    if raw is RawType.BOOL:
        return lambda value: [1 if value else 0]
    if raw is RawType.STRING:

        def enc_str(value: Value) -> list[int]:
            data = value.encode("utf-8") if isinstance(value, str) else bytes(value)  # type: ignore[arg-type]
            if len(data) > 2 * n:
                raise ValueError(f"string of {len(data)} bytes does not fit in {n} registers")
            return _bytes_to_regs(data.ljust(2 * n, b"\x00"), byte_swap, word_swap)

        return enc_str
    if raw is RawType.BYTES:

        def enc_bytes(value: Value) -> list[int]:
            if not isinstance(value, bytes | bytearray):
                raise ValueError(f"expected bytes, got {type(value).__name__}")
            if len(value) > 2 * n:
                raise ValueError(f"{len(value)} bytes do not fit in {n} registers")
            return _bytes_to_regs(bytes(value).ljust(2 * n, b"\x00"), byte_swap, word_swap)

        return enc_bytes
    if raw in (RawType.INT8, RawType.UINT8):
        # An 8-bit value sits in the low byte of its register.
        return lambda value: _bytes_to_regs(
            b"\x00" + encode_bytes(value, raw, "big"), byte_swap, word_swap
        )
    return lambda value: _bytes_to_regs(encode_bytes(value, raw, "big"), byte_swap, word_swap)


def decode_registers(
    regs: Sequence[int],
    raw: RawType,
    *,
    byte_swap: bool = False,
    word_swap: bool = False,
    count: int | None = None,
) -> Value:
    """Decode one value from registers (see :func:`make_register_decoder`)."""
    return make_register_decoder(raw, byte_swap=byte_swap, word_swap=word_swap, count=count)(regs)


def encode_registers(
    value: Value,
    raw: RawType,
    *,
    byte_swap: bool = False,
    word_swap: bool = False,
    count: int | None = None,
) -> list[int]:
    """Encode one value into registers (see :func:`make_register_encoder`)."""
    return make_register_encoder(raw, byte_swap=byte_swap, word_swap=word_swap, count=count)(value)


def get_bit(register: int, bit: int) -> bool:
    """``(register >> bit) & 1`` as a boolean; bit 0 is the least significant."""
    if not 0 <= bit <= 15:
        raise ValueError(f"bit must be 0..15, got {bit}")
    return bool((register >> bit) & 1)


def set_bit(register: int, bit: int, on: bool) -> int:
    """``register`` with ``bit`` set or cleared (for read-modify-write)."""
    if not 0 <= bit <= 15:
        raise ValueError(f"bit must be 0..15, got {bit}")
    return (register | (1 << bit)) if on else (register & ~(1 << bit) & 0xFFFF)


# --------------------------------------------------------------------------- bytes
def decode_bytes(data: bytes, raw: RawType, byteorder: ByteOrder = "little") -> Value:
    """Decode a byte string (a GATT characteristic value, say) as ``raw``.

    Fixed-size types need at least their size in bytes and use the first ones.
    """
    if raw is RawType.STRING:
        return data.rstrip(b"\x00").decode("utf-8", errors="replace")
    if raw is RawType.BYTES:
        return bytes(data)
    if raw is RawType.BOOL:
        if not data:
            raise ValueError("no bytes to decode a bool from")
        return any(data)
    size = raw.size
    if len(data) < size:
        raise ValueError(f"{raw} needs {size} bytes, got {len(data)}")
    prefix = "<" if byteorder == "little" else ">"
    value: Value = struct.unpack(prefix + _STRUCT[raw], data[:size])[0]
    if raw is RawType.FLOAT32:
        return shortest_float32(float(value))
    return value


def encode_bytes(value: Value, raw: RawType, byteorder: ByteOrder = "little") -> bytes:
    """Encode ``value`` as ``raw``; ``ValueError`` when it does not fit."""
    if raw is RawType.STRING:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        return value.encode("utf-8")
    if raw is RawType.BYTES:
        if not isinstance(value, bytes | bytearray):
            raise ValueError(f"expected bytes, got {type(value).__name__}")
        return bytes(value)
    if raw is RawType.BOOL:
        return b"\x01" if value else b"\x00"
    prefix = "<" if byteorder == "little" else ">"
    if raw.is_integer:
        if isinstance(value, bool):
            number = int(value)
        elif isinstance(value, int):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        else:
            raise ValueError(f"{raw} needs an integer, got {value!r}")
        lo, hi = _INT_RANGES[raw]
        if not lo <= number <= hi:
            raise ValueError(f"{number} is out of range for {raw} ({lo}..{hi})")
        return struct.pack(prefix + _STRUCT[raw], number)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{raw} needs a number, got {value!r}")
    number_f = float(value)
    if raw is RawType.FLOAT32 and math.isfinite(number_f) and abs(number_f) > 3.4028234663852886e38:
        raise ValueError(f"{number_f} is out of range for float32")
    return struct.pack(prefix + _STRUCT[raw], number_f)


# --------------------------------------------------------------------------- scaling
def scale_in(raw: int | float, scale: float = 1.0, offset: float = 0.0) -> int | float:
    """``raw * scale + offset``; stays an int when both are identity."""
    if scale == 1 and offset == 0:
        return raw
    return raw * scale + offset


def scale_out(value: float, raw: RawType, scale: float = 1.0, offset: float = 0.0) -> int | float:
    """Invert :func:`scale_in` for a write: ``(value - offset) / scale``.

    Integer raw types round to the nearest integer; a result outside the raw
    type's range raises ``ValueError`` (so nothing is written).
    """
    if scale == 0:
        raise ValueError("scale is 0; the value cannot be written")
    result = (value - offset) / scale if (scale != 1 or offset != 0) else value
    if raw.is_integer or raw is RawType.BOOL:
        if isinstance(result, float):
            if not math.isfinite(result):
                raise ValueError(f"{value!r} cannot be written as {raw}")
            result = round(result)
        lo, hi = (0, 1) if raw is RawType.BOOL else _INT_RANGES[raw]
        if not lo <= result <= hi:
            raise ValueError(
                f"{value!r} needs raw value {result} which is out of range for {raw} ({lo}..{hi})"
            )
        return int(result)
    if raw is RawType.FLOAT32 and abs(result) > 3.4028234663852886e38:
        raise ValueError(f"{value!r} is out of range for float32")
    return float(result)


# --------------------------------------------------------------------------- model types
_INT_TEXT = re.compile(r"^[+-]?[0-9]+$")
_FLOAT_TEXT = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def coerce(value: Value, ptype: PropertyType) -> Value:
    """Convert a driver value to the model type; ``ValueError`` if it cannot be."""
    return make_coercer(ptype)(value)


def make_coercer(ptype: PropertyType) -> Callable[[Value], Value]:
    """Compile :func:`coerce` for one type (called once per property, used per reading)."""
    if ptype is PropertyType.INT:

        def to_int(value: Value) -> Value:
            if type(value) is int:
                return value
            if isinstance(value, bool):
                return int(value)
            if isinstance(value, float):
                if not math.isfinite(value):
                    raise ValueError(f"{value!r} is not a finite number")
                return round(value)
            if isinstance(value, str):
                return parse_text(value, PropertyType.INT)
            raise ValueError(f"cannot convert {type(value).__name__} to int")

        return to_int
    if ptype in (PropertyType.FLOAT, PropertyType.DOUBLE):

        def to_float(value: Value) -> Value:
            if type(value) is float:
                return value
            if isinstance(value, int):  # bool included
                return float(value)
            if isinstance(value, str):
                return parse_text(value, ptype)
            raise ValueError(f"cannot convert {type(value).__name__} to float")

        return to_float
    if ptype is PropertyType.BOOLEAN:

        def to_bool(value: Value) -> Value:
            if type(value) is bool:
                return value
            if isinstance(value, int | float):
                return value != 0
            if isinstance(value, str):
                return parse_text(value.lower(), PropertyType.BOOLEAN)
            if isinstance(value, bytes):
                return any(value)
            raise ValueError(f"cannot convert {type(value).__name__} to boolean")

        return to_bool
    if ptype is PropertyType.STRING:

        def to_str(value: Value) -> Value:
            if type(value) is str:
                return value
            if isinstance(value, bytes):
                return value.decode("utf-8", errors="replace")
            return format_text(value, PropertyType.STRING)

        return to_str

    def to_bytes(value: Value) -> Value:
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):
            return value.encode("utf-8")
        raise ValueError(f"cannot convert {type(value).__name__} to bytes")

    return to_bytes


def check_range(value: Value, minimum: float | None, maximum: float | None) -> None:
    """``ValueError`` when a numeric ``value`` is outside ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if minimum is not None and value < minimum:
        raise ValueError(f"{value!r} is below the minimum {minimum:g}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{value!r} is above the maximum {maximum:g}")


def parse_text(text: str, ptype: PropertyType) -> Value:
    """Parse a twin wire value (a JSON string) as ``ptype``; ``ValueError`` with the rule broken."""
    if ptype is PropertyType.INT:
        if not _INT_TEXT.match(text):
            raise ValueError(f"{text!r} is not an integer")
        number = int(text)
        if not INT64_MIN <= number <= INT64_MAX:
            raise ValueError(f"{text!r} is outside the int64 range")
        return number
    if ptype in (PropertyType.FLOAT, PropertyType.DOUBLE):
        if not _FLOAT_TEXT.match(text):
            raise ValueError(f"{text!r} is not a decimal number")
        result = float(text)
        if not math.isfinite(result):
            raise ValueError(f"{text!r} is not a finite number")
        return result
    if ptype is PropertyType.BOOLEAN:
        if text == "true":
            return True
        if text == "false":
            return False
        raise ValueError(f"{text!r} is not a boolean (true or false)")
    if ptype is PropertyType.STRING:
        if len(text) > MAX_STRING:
            raise ValueError(f"string of {len(text)} characters is longer than {MAX_STRING}")
        if _CONTROL.search(text):
            raise ValueError("string contains control characters")
        return text
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError(f"{text[:40]!r} is not base64 with padding") from None


def format_text(value: Value, ptype: PropertyType) -> str:
    """Format a typed value as twin wire text (the inverse of :func:`parse_text`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, float):
        if ptype is PropertyType.INT and value.is_integer():
            return str(int(value))
        return repr(value)
    return str(value)


def values_equal(a: Value | None, b: Value | None, ptype: PropertyType) -> bool:
    """Typed equality (``23`` equals ``23.0`` for a float property)."""
    if a is None or b is None:
        return a is b
    if ptype.numeric:
        if isinstance(a, bool) or isinstance(b, bool):
            return a == b
        return bool(a == b)
    return a == b
