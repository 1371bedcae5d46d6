"""BLE configData validation: precise errors at load time, nothing lost."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from mapper_sdk.errors import ConfigError
from mapper_sdk.model import load_text
from mappers.ble import BleDriver, BleProtocolConfig, BleVisitorConfig, normalize_uuid

ENV_UUID = "0000181a-0000-1000-8000-00805f9b34fb"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("181A", ENV_UUID),
        ("0x181a", ENV_UUID),
        ("0000181A", ENV_UUID),
        ("0000181a-0000-1000-8000-00805f9b34fb", ENV_UUID),
        ("0000181A00001000800000805F9B34FB", ENV_UUID),
        (" 8E7F0001-5C3A-4B8E-9F1D-6D6170706B74 ", "8e7f0001-5c3a-4b8e-9f1d-6d6170706b74"),
    ],
)
def test_uuids_in_every_spelling_normalise_to_bleaks_form(text: str, expected: str) -> None:
    assert normalize_uuid(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not a UUID"),
        ("2A1", "has 3 hex digits"),
        ("zz19", "not a UUID"),
        ("2A-19", "no dashes"),
        ("0000181a00-00-1000-8000-00805f9b34fb", "8-4-4-4-12"),
    ],
)
def test_bad_uuids_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalize_uuid(text)


def test_protocol_config_normalises_the_address() -> None:
    cfg = BleProtocolConfig.model_validate({"macAddress": "c0-ff-ee-00-00-01"})
    assert cfg.macAddress == "C0:FF:EE:00:00:01"
    assert (cfg.scanTimeout, cfg.connectTimeout, cfg.backend) == (10.0, 20.0, None)
    apple = BleProtocolConfig.model_validate({"macAddress": "1e2a5c3d-0000-4000-8000-123456789abc"})
    assert apple.macAddress == "1E2A5C3D-0000-4000-8000-123456789ABC"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "give macAddress or name"),
        ({"macAddress": ""}, "give macAddress or name"),
        ({"macAddress": "C0:FF:EE:00:00"}, "not a Bluetooth address"),
        ({"name": "x", "scanTimeout": 0}, "greater than 0"),
        ({"name": "x", "backend": "not a path"}, "import path"),
        ({"name": "x", "adapter": "hci0"}, "Extra inputs are not permitted"),
    ],
)
def test_protocol_config_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        BleProtocolConfig.model_validate(data)


def test_visitor_accepts_kubeedge_keys_and_extensions() -> None:
    visitor = BleVisitorConfig.model_validate(
        {
            "characteristicUUID": 2902,  # YAML reads an unquoted 2902 as a number
            "dataWrite": {"ON": [1], "OFF": "0x00", "DIM": "AgM=", True: 7},
            "rawType": "UINT8",
            "byteOrder": "Big",
            "notify": True,
        }
    )
    assert visitor.characteristicUUID == "00002902-0000-1000-8000-00805f9b34fb"
    assert visitor.dataWrite == {"ON": b"\x01", "OFF": b"\x00", "DIM": b"\x02\x03", "true": b"\x07"}
    assert visitor.order == "big"
    assert BleVisitorConfig.model_validate({"characteristicUUID": "2A19"}).order == "little"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"dataWrite": {"ON": [256]}}, r"dataWrite\['ON'\]: byte list item 256"),
        ({"dataWrite": {"ON": []}}, "empty byte list"),
        ({"dataWrite": {"ON": "0x1"}}, "even number of hex digits"),
        ({"dataWrite": {"ON": "not base64!"}}, "neither 0x-prefixed hex nor base64"),
        ({"dataWrite": {}}, "empty dataWrite"),
        ({"rawType": "int24"}, "not a raw type"),
        (
            {"rawType": "int16", "dataConverter": {"startIndex": 1}},
            "may only give orderOfOperations",
        ),
        ({"byteOrder": "big"}, "byteOrder applies to rawType"),
        ({"legacyConverter": True, "rawType": "uint8"}, "legacyConverter applies"),
        ({"dataConverter": {"startIndex": 0, "endIndex": 8}}, "slices 9 bytes"),
        (
            {"dataConverter": {"orderOfOperations": [{"operationType": "Modulo"}]}},
            "not one of Add, Subtract",
        ),
        (
            {
                "dataConverter": {
                    "orderOfOperations": [{"operationType": "divide", "operationValue": 0}]
                }
            },
            "Divide by 0",
        ),
        ({"dataConverter": {"shiftLeft": 64}}, "less than or equal to 63"),
        ({"notify": True, "mode": "poll"}, "Extra inputs are not permitted"),
    ],
)
def test_visitor_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        BleVisitorConfig.model_validate({"characteristicUUID": "2A19", **data})


def test_a_long_legacy_slice_is_allowed() -> None:
    visitor = BleVisitorConfig.model_validate(
        {
            "characteristicUUID": "2A19",
            "legacyConverter": True,
            "dataConverter": {"startIndex": 0, "endIndex": 11},
        }
    )
    assert visitor.dataConverter is not None and visitor.dataConverter.width == 12


DEVICE = """
apiVersion: devices.kubeedge.io/v1beta1
kind: DeviceModel
metadata: {{name: m}}
spec:
  protocol: ble
  properties:
    - {{name: p, type: {ptype}}}
---
apiVersion: devices.kubeedge.io/v1beta1
kind: Device
metadata: {{name: d}}
spec:
  deviceModelRef: {{name: m}}
  protocol: {{protocolName: ble, configData: {{macAddress: "C0:FF:EE:00:00:01"}}}}
  properties:
    - name: p
      visitors: {{protocolName: ble, configData: {visitor}}}
"""


@pytest.mark.parametrize(
    ("ptype", "visitor", "message"),
    [
        ("INT", '{characteristicUUID: "2A19", rawType: string}', "cannot hold a INT"),
        ("STRING", '{characteristicUUID: "2A19", dataConverter: {}}', "needs rawType"),
        ("BOOLEAN", '{characteristicUUID: "2A19", dataWrite: {"ON": [1]}}', "not a boolean"),
        ("INT", '{characteristicUUID: "2A19", dataWrite: {"1.5": [1]}}', "not an integer"),
        (
            "FLOAT",
            '{characteristicUUID: "2A19", rawType: string, dataConverter: '
            "{orderOfOperations: [{operationType: Add, operationValue: 1}]}}",
            "cannot hold a FLOAT",
        ),
    ],
)
def test_visitor_is_checked_against_the_model_type_at_load_time(
    ptype: str, visitor: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_text(DEVICE.format(ptype=ptype, visitor=visitor), "dev.yaml", {"ble": BleDriver})
    assert "dev.yaml" in str(info.value)
    assert "spec.properties[p].visitors.configData" in str(info.value)


def test_unknown_visitor_key_names_the_field() -> None:
    text = DEVICE.format(ptype="INT", visitor='{characteristicUUID: "2A19", rawtype: uint8}')
    with pytest.raises(ConfigError, match=r"rawtype: unknown field"):
        load_text(text, "dev.yaml", {"ble": BleDriver})


def test_att_error_names_come_from_the_code() -> None:
    from bleak.exc import BleakGATTProtocolError

    from mappers.ble import att_error_name

    assert att_error_name(BleakGATTProtocolError(0x03)) == "WRITE_NOT_PERMITTED"
    assert att_error_name(BleakGATTProtocolError(0x0D)) == "INVALID_ATTRIBUTE_VALUE_LENGTH"
    assert att_error_name(BleakGATTProtocolError(0x80)) == "ATT_ERROR_0x80"  # application error
