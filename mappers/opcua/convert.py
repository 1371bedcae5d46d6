"""Conversions between OPC-UA values and the typed values that cross the driver boundary.

Reading (server to Mapperkit):

* numbers, booleans, strings and ``ByteString`` pass through as ``int``,
  ``float``, ``bool``, ``str`` and ``bytes``;
* ``LocalizedText`` becomes its text, ``QualifiedName`` and ``NodeId`` their
  text form, ``Guid`` its canonical text, a ``StatusCode`` its name;
* ``DateTime`` becomes milliseconds since the epoch (an ``int``, KubeEdge's
  unit for time) unless the property's type is ``STRING``, which gets ISO 8601
  text in UTC (``2024-05-01T12:00:00.000Z``);
* an array becomes JSON text for a ``STRING`` property, and ``bytes`` for a
  ``BYTES`` property when it holds bytes (an array of ``Byte``); any other
  array, a structure or a ``Null`` value is a bad reading that says why.

The StatusCode decides the quality: Good values are good, Uncertain values keep
their value with :attr:`~mapper_sdk.driver.Quality.UNCERTAIN`, Bad values
become bad readings carrying the status name (``BadSensorFailure``). The
reading's ``source_timestamp`` is the value's SourceTimestamp, or its
ServerTimestamp when the server sends no source timestamp; ``server_timestamp``
is the ServerTimestamp.

Writing (Mapperkit to server): the value is encoded as the node's own
VariantType (the type of its DataType), with integer ranges checked before any
I/O; a value that does not fit raises
:class:`~mapper_sdk.errors.WriteRejected` with ``BadTypeMismatch`` or
``BadOutOfRange``.
"""

from __future__ import annotations

import base64
import json
import math
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from asyncua import ua

from mapper_sdk.codec import shortest_float32
from mapper_sdk.driver import Quality, Reading
from mapper_sdk.errors import WriteRejected
from mapper_sdk.model import PropertyType, Value

__all__ = [
    "datetime_ms",
    "decode_value",
    "encode_value",
    "reading_from_datavalue",
    "status_name",
    "variant_type_of",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_PLAIN = (int, float, bool, str, bytes)
_FLOAT32_MAX = 3.4028234663852886e38

_INT_RANGES: dict[ua.VariantType, tuple[int, int]] = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1),
    ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-(2**15), 2**15 - 1),
    ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1),
    ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1),
    ua.VariantType.UInt64: (0, 2**64 - 1),
}


def status_name(code: int | ua.StatusCode) -> str:
    """The symbolic name of a StatusCode (``BadNotWritable``), or its hex value if unknown."""
    value = code.value if isinstance(code, ua.StatusCode) else int(code)
    try:
        return ua.StatusCode(ua.UInt32(value)).name
    except Exception:  # noqa: BLE001 - an unknown code has no name
        return f"0x{value:08X}"


def datetime_ms(moment: datetime) -> int:
    """Milliseconds since the epoch; a naive ``datetime`` is taken as UTC (OPC-UA's clock)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MS


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def decode_value(value: Any, ptype: PropertyType) -> Value:
    """Convert a Variant's Python value to a Mapperkit value; ``ValueError`` when it cannot."""
    if type(value) in _PLAIN:
        return value  # type: ignore[no-any-return]
    return _decode_other(value, ptype)


def _decode_other(value: Any, ptype: PropertyType) -> Value:
    if value is None:
        raise ValueError("the node holds no value (Null)")
    if isinstance(value, datetime):
        return _iso(value) if ptype is PropertyType.STRING else datetime_ms(value)
    if isinstance(value, ua.LocalizedText):
        return value.Text or ""
    if isinstance(value, ua.XmlElement):
        return value.Value or ""
    if isinstance(value, bool | int | float | str | bytes):
        # Subclasses: IntEnum values of enumerations, asyncua's String and friends.
        if isinstance(value, bool):
            return bool(value)
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return float(value)
        if isinstance(value, str):
            return str(value)
        return bytes(value)
    if isinstance(value, ua.QualifiedName | ua.NodeId):
        return value.to_string()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, ua.StatusCode):
        return value.name
    if isinstance(value, list):
        return _decode_array(value, ptype)
    raise ValueError(f"values of type {type(value).__name__} are not supported")


def _json_item(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, list):
        return [_json_item(v) for v in value]
    return decode_value(value, PropertyType.STRING)


def _decode_array(values: list[Any], ptype: PropertyType) -> Value:
    if ptype is PropertyType.STRING:
        return json.dumps([_json_item(v) for v in values], separators=(",", ":"))
    if ptype is PropertyType.BYTES and all(type(v) is int and 0 <= v <= 255 for v in values):
        return bytes(values)
    raise ValueError(
        f"an array of {len(values)} values cannot be a {ptype.value.upper()} property "
        "(use STRING for JSON text)"
    )


def reading_from_datavalue(dv: ua.DataValue, ptype: PropertyType, now: int) -> Reading:
    """Turn one DataValue (from Read or a data change) into a :class:`Reading`."""
    status = dv.StatusCode
    code = status.value if status is not None else 0
    moment = dv.SourceTimestamp or dv.ServerTimestamp
    server = datetime_ms(dv.ServerTimestamp) if dv.ServerTimestamp is not None else None
    variant = dv.Value
    # The common case, kept short: a Good plain value with a timestamp from the wire.
    if code == 0 and variant is not None and type(variant.Value) in _PLAIN:
        plain = variant.Value
        if variant.VariantType is ua.VariantType.Float and type(plain) is float:
            # A Float travels as float32: report the decimal it was written as.
            plain = shortest_float32(plain)
        return Reading(
            plain,
            Quality.GOOD,
            now,
            datetime_ms(moment) if moment is not None else None,
            server_timestamp=server,
        )
    source = datetime_ms(moment) if moment is not None else None
    severity = code >> 30
    if severity >= 2:
        name = status_name(code)
        return Reading(
            None,
            Quality.BAD,
            now,
            source,
            error=f"the server reports {name}",
            error_code=name,
            server_timestamp=server,
        )
    raw = variant.Value if variant is not None else None
    try:
        value = decode_value(raw, ptype)
    except ValueError as exc:
        return Reading(None, Quality.BAD, now, source, error=str(exc), server_timestamp=server)
    if severity == 1:
        name = status_name(code)
        return Reading(
            value,
            Quality.UNCERTAIN,
            now,
            source,
            error=name,
            error_code=name,
            server_timestamp=server,
        )
    return Reading(value, Quality.GOOD, now, source, server_timestamp=server)


# --------------------------------------------------------------------------- writing
def variant_type_of(
    data_type: ua.NodeId | None, current: ua.Variant | None
) -> ua.VariantType | None:
    """The VariantType that encodes a node's values, when it can be told without browsing.

    A built-in DataType (namespace 0, ids 1-25) names it directly; otherwise the
    type of the node's current value does. ``None`` means the DataType's
    supertypes must be browsed.
    """
    if (
        data_type is not None
        and data_type.NamespaceIndex == 0
        and isinstance(data_type.Identifier, int)
        and 1 <= data_type.Identifier <= 25
    ):
        return ua.VariantType(data_type.Identifier)
    if current is not None and current.VariantType is not ua.VariantType.Null:
        return current.VariantType
    return None


def _reject(reason: str, code: str = "BadTypeMismatch") -> WriteRejected:
    return WriteRejected(reason, code=code)


def _to_int(value: Value, vtype: ua.VariantType) -> int:
    if isinstance(value, bool):
        number = int(value)
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            raise _reject(f"{value!r} is not an integer; the node holds {vtype.name}") from None
    else:
        raise _reject(f"{value!r} is not an integer; the node holds {vtype.name}")
    low, high = _INT_RANGES[vtype]
    if not low <= number <= high:
        raise _reject(f"{number} is outside the {vtype.name} range {low}..{high}", "BadOutOfRange")
    return number


def _to_float(value: Value, vtype: ua.VariantType) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _reject(f"{value!r} is not a number; the node holds {vtype.name}")
    try:
        number = float(value)
    except ValueError:
        raise _reject(f"{value!r} is not a number; the node holds {vtype.name}") from None
    if vtype is ua.VariantType.Float and math.isfinite(number) and abs(number) > _FLOAT32_MAX:
        raise _reject(f"{number!r} is outside the Float range", "BadOutOfRange")
    return number


def _to_bool(value: Value, vtype: ua.VariantType) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _reject(f"{value!r} is not a boolean; the node holds Boolean")


def _to_text(value: Value, vtype: ua.VariantType) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise _reject(f"the bytes are not UTF-8 text; the node holds {vtype.name}") from None
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _to_bytes(value: Value, vtype: ua.VariantType) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise _reject(f"{value!r} is not bytes; the node holds ByteString")


def _to_datetime(value: Value, vtype: ua.VariantType) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _EPOCH + timedelta(milliseconds=value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise _reject(
                f"{value!r} is neither ISO 8601 text nor milliseconds; the node holds DateTime"
            ) from None
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    raise _reject(f"{value!r} is not a time; the node holds DateTime")


def _encode_any(value: Value) -> ua.Variant:
    # A BaseDataType node takes any built-in type; pick the natural one.
    if isinstance(value, bool):
        return ua.Variant(value, ua.VariantType.Boolean)
    if isinstance(value, int):
        return ua.Variant(_to_int(value, ua.VariantType.Int64), ua.VariantType.Int64)
    if isinstance(value, float):
        return ua.Variant(value, ua.VariantType.Double)
    if isinstance(value, str):
        return ua.Variant(value, ua.VariantType.String)
    return ua.Variant(value, ua.VariantType.ByteString)


_ENCODERS: dict[ua.VariantType, Callable[[Value, ua.VariantType], Any]] = {
    **dict.fromkeys(_INT_RANGES, _to_int),
    ua.VariantType.Float: _to_float,
    ua.VariantType.Double: _to_float,
    ua.VariantType.Boolean: _to_bool,
    ua.VariantType.String: _to_text,
    ua.VariantType.XmlElement: lambda v, vt: ua.XmlElement(Value=ua.String(_to_text(v, vt))),
    ua.VariantType.ByteString: _to_bytes,
    ua.VariantType.DateTime: _to_datetime,
    ua.VariantType.LocalizedText: lambda v, vt: ua.LocalizedText(_to_text(v, vt)),
}


def encode_value(value: Value, vtype: ua.VariantType) -> ua.Variant:
    """Encode ``value`` as a Variant of ``vtype``; :class:`WriteRejected` if it does not fit."""
    if vtype is ua.VariantType.Variant:
        return _encode_any(value)
    encoder = _ENCODERS.get(vtype)
    if encoder is None:
        raise _reject(f"writing {vtype.name} values is not supported")
    return ua.Variant(encoder(value, vtype), vtype)
