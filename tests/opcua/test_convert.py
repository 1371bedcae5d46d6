"""Value conversion between OPC-UA Variants and Mapperkit values (pure functions)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from asyncua import ua

from mapper_sdk.driver import Quality
from mapper_sdk.errors import WriteRejected
from mapper_sdk.model import PropertyType
from mappers.opcua.convert import (
    datetime_ms,
    decode_value,
    encode_value,
    reading_from_datavalue,
    status_name,
    variant_type_of,
)

MOMENT = datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "ptype", "expected"),
    [
        (True, PropertyType.BOOLEAN, True),
        (7, PropertyType.INT, 7),
        (2.5, PropertyType.DOUBLE, 2.5),
        ("x", PropertyType.STRING, "x"),
        (b"\x00", PropertyType.BYTES, b"\x00"),
        (MOMENT, PropertyType.INT, 1714564800250),
        (MOMENT, PropertyType.STRING, "2024-05-01T12:00:00.250Z"),
        (ua.LocalizedText("hej", "sv"), PropertyType.STRING, "hej"),
        (ua.LocalizedText(None), PropertyType.STRING, ""),
        (ua.XmlElement("<a/>"), PropertyType.STRING, "<a/>"),
        (ua.QualifiedName("Pump", 2), PropertyType.STRING, "2:Pump"),
        (ua.NodeId(5, 2), PropertyType.STRING, "ns=2;i=5"),
        (uuid.UUID(int=1), PropertyType.STRING, "00000000-0000-0000-0000-000000000001"),
        (ua.StatusCode(ua.StatusCodes.BadTimeout), PropertyType.STRING, "BadTimeout"),
        ([1.0, 2.5], PropertyType.STRING, "[1.0,2.5]"),
        ([b"\x01", MOMENT], PropertyType.STRING, '["AQ==","2024-05-01T12:00:00.250Z"]'),
        ([0, 7, 255], PropertyType.BYTES, b"\x00\x07\xff"),
        (ua.VariantType.Double, PropertyType.INT, 11),  # an IntEnum is an int
    ],
)
def test_decode(value: Any, ptype: PropertyType, expected: Any) -> None:
    decoded = decode_value(value, ptype)
    assert decoded == expected
    assert type(decoded) is type(expected)


@pytest.mark.parametrize(
    ("value", "ptype", "message"),
    [
        (None, PropertyType.DOUBLE, "no value"),
        ([1, 2], PropertyType.INT, "array of 2 values cannot be a INT"),
        ([1, 300], PropertyType.BYTES, "cannot be a BYTES"),
        (ua.DiagnosticInfo(), PropertyType.STRING, "not supported"),
    ],
)
def test_decode_refuses(value: Any, ptype: PropertyType, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_value(value, ptype)


def test_reading_quality_follows_the_status() -> None:
    good = ua.DataValue(Value=ua.Variant(1.5), SourceTimestamp=MOMENT, ServerTimestamp=MOMENT)
    reading = reading_from_datavalue(good, PropertyType.DOUBLE, 99)
    assert (reading.value, reading.quality, reading.timestamp) == (1.5, Quality.GOOD, 99)
    assert reading.source_timestamp == datetime_ms(MOMENT)

    uncertain = ua.DataValue(
        Value=ua.Variant(3), StatusCode=ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue)
    )
    reading = reading_from_datavalue(uncertain, PropertyType.INT, 1)
    assert reading.quality is Quality.UNCERTAIN
    assert reading.value == 3
    assert reading.error_code == "UncertainLastUsableValue"

    bad = ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadSensorFailure))
    reading = reading_from_datavalue(bad, PropertyType.INT, 1)
    assert reading.quality is Quality.BAD
    assert reading.value is None
    assert reading.error_code == "BadSensorFailure"
    assert reading.source_timestamp is None

    # Only a server timestamp: it stands in for the source timestamp.
    server_only = ua.DataValue(Value=ua.Variant("x"), ServerTimestamp=MOMENT)
    assert reading_from_datavalue(server_only, PropertyType.STRING, 1).source_timestamp == (
        datetime_ms(MOMENT)
    )
    # A value that cannot be the property's type is a bad reading that says why.
    array = ua.DataValue(Value=ua.Variant([1, 2]))
    reading = reading_from_datavalue(array, PropertyType.INT, 1)
    assert reading.quality is Quality.BAD
    assert "array" in (reading.error or "")


@pytest.mark.parametrize(
    ("value", "vtype", "expected"),
    [
        (5, ua.VariantType.Byte, 5),
        (5.0, ua.VariantType.Int32, 5),
        (True, ua.VariantType.Int16, 1),
        ("12", ua.VariantType.UInt16, 12),
        (2**64 - 1, ua.VariantType.UInt64, 2**64 - 1),
        (3, ua.VariantType.Double, 3.0),
        ("2.5", ua.VariantType.Float, 2.5),
        (1, ua.VariantType.Boolean, True),
        ("false", ua.VariantType.Boolean, False),
        (b"abc", ua.VariantType.String, "abc"),
        (1.5, ua.VariantType.String, "1.5"),
        ("abc", ua.VariantType.ByteString, b"abc"),
        (1714564800250, ua.VariantType.DateTime, MOMENT),
        ("2024-05-01T12:00:00.250Z", ua.VariantType.DateTime, MOMENT),
    ],
)
def test_encode(value: Any, vtype: ua.VariantType, expected: Any) -> None:
    variant = encode_value(value, vtype)
    assert variant.VariantType is vtype
    assert variant.Value == expected
    assert type(variant.Value) is type(expected)


def test_encode_special_types() -> None:
    text = encode_value("hola", ua.VariantType.LocalizedText)
    assert text.Value == ua.LocalizedText("hola")
    assert encode_value("<a/>", ua.VariantType.XmlElement).Value == ua.XmlElement("<a/>")
    assert encode_value(7, ua.VariantType.Variant).VariantType is ua.VariantType.Int64
    assert encode_value(7.5, ua.VariantType.Variant).VariantType is ua.VariantType.Double
    assert encode_value("s", ua.VariantType.Variant).VariantType is ua.VariantType.String


@pytest.mark.parametrize(
    ("value", "vtype", "code"),
    [
        (256, ua.VariantType.Byte, "BadOutOfRange"),
        (-1, ua.VariantType.UInt32, "BadOutOfRange"),
        (2**63, ua.VariantType.Int64, "BadOutOfRange"),
        (1e39, ua.VariantType.Float, "BadOutOfRange"),
        (1.5, ua.VariantType.Int32, "BadTypeMismatch"),
        ("warm", ua.VariantType.Double, "BadTypeMismatch"),
        (True, ua.VariantType.Double, "BadTypeMismatch"),
        (2, ua.VariantType.Boolean, "BadTypeMismatch"),
        (b"\xff", ua.VariantType.String, "BadTypeMismatch"),
        (3, ua.VariantType.ByteString, "BadTypeMismatch"),
        ("yesterday", ua.VariantType.DateTime, "BadTypeMismatch"),
        ("x", ua.VariantType.ExtensionObject, "BadTypeMismatch"),
    ],
)
def test_encode_refuses_before_io(value: Any, vtype: ua.VariantType, code: str) -> None:
    with pytest.raises(WriteRejected) as info:
        encode_value(value, vtype)
    assert info.value.code == code


def test_variant_type_from_data_type() -> None:
    assert variant_type_of(ua.NodeId(11), None) is ua.VariantType.Double
    # UtcTime (ns=0;i=294) is not built in: the current value's type decides.
    assert variant_type_of(ua.NodeId(294), ua.Variant(MOMENT)) is ua.VariantType.DateTime
    assert variant_type_of(ua.NodeId(294), ua.Variant(None)) is None
    assert variant_type_of(ua.NodeId(5, 3), ua.Variant(1, ua.VariantType.Int32)) is (
        ua.VariantType.Int32
    )


def test_status_names() -> None:
    assert status_name(ua.StatusCodes.BadNotWritable) == "BadNotWritable"
    assert status_name(ua.StatusCode(ua.StatusCodes.Good)) == "Good"
    assert status_name(0x80FF0000).startswith(("0x", "Bad"))
