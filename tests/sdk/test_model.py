"""Loading KubeEdge v1beta1 and native YAML, and precise errors for broken files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mapper_sdk.errors import ConfigError
from mapper_sdk.model import AccessMode, PropertyType, load_files, load_text

from .memdriver import MemDriver, MemVisitor

DATA = Path(__file__).parent / "data"
BROKEN = DATA / "broken"
DRIVERS = {"mem": MemDriver}


def test_kubeedge_modbus_file_loads_as_is() -> None:
    inv = load_files([DATA / "kubeedge-modbus.yaml"])
    assert [d.id for d in inv.devices] == ["default/thermostat-1"]
    dev = inv.devices[0]
    assert dev.model == "thermostat-model"
    assert dev.node_name == "edge-node-1"
    assert dev.protocol == "modbus"
    assert dev.protocol_config == {
        "communicateMode": "TCP",
        "ip": "127.0.0.1",
        "port": "5020",
        "slaveID": 1,
    }
    assert not dev.validated  # no driver given: raw configData is kept
    temp, setpoint, heating = dev.properties
    assert temp.type is PropertyType.FLOAT
    assert temp.access_mode is AccessMode.READ_ONLY
    assert (temp.minimum, temp.maximum, temp.unit) == (-40.0, 85.0, "Celsius")
    assert (temp.collect_cycle_ms, temp.report_cycle_ms) == (2000, 5000)
    assert temp.visitor["scale"] == 0.1
    assert setpoint.desired == "21.5"
    assert setpoint.writable
    # Absent cycles default to 1000 ms; absent reportToCloud means true.
    assert (heating.collect_cycle_ms, heating.report_cycle_ms) == (1000, 1000)
    assert heating.report_to_cloud is True
    assert heating.push_method is not None
    assert heating.push_method.mqtt is not None
    assert heating.push_method.mqtt["topic"] == "telemetry/heating"
    assert dev.state_report.report_to_cloud
    assert dev.state_report.report_cycle_ms == 10000


def test_kubeedge_opcua_file_with_namespace_methods_and_legacy_status() -> None:
    inv = load_files([DATA / "kubeedge-opcua.yaml"])
    dev = inv.device("plant/boiler-7")
    assert dev.namespace == "plant"
    assert ("plant", "boiler-model") in inv.models
    pressure, valve, label = dev.properties
    assert pressure.type is PropertyType.DOUBLE
    assert valve.type is PropertyType.INT
    assert (valve.minimum, valve.maximum) == (0, 100)
    assert valve.desired == "40"
    assert label.report_to_cloud is False
    assert dev.methods[0].name == "open-valve"
    assert dev.methods[0].property_names == ("valve",)
    # KubeEdge before 1.23 kept state reporting under status.
    assert dev.state_report.report_cycle_ms == 3000


def test_kubeedge_ble_file() -> None:
    inv = load_files([DATA / "kubeedge-ble.yaml"])
    dev = inv.device("sensortag-1")
    assert dev.protocol_config["macAddress"] == "A0:E6:F8:C3:2D:06"
    conv = dev.property("temperature").visitor["dataConverter"]
    assert conv["orderOfOperations"][0]["operationType"] == "Multiply"
    assert dev.property("io-config").visitor["dataWrite"]["ON"] == [1]


def test_several_files_together() -> None:
    inv = load_files(
        [DATA / "kubeedge-modbus.yaml", DATA / "kubeedge-opcua.yaml", DATA / "kubeedge-ble.yaml"]
    )
    assert {d.id for d in inv.devices} == {
        "default/thermostat-1",
        "plant/boiler-7",
        "default/sensortag-1",
    }


def test_model_and_device_in_separate_files(tmp_path: Path) -> None:
    text = (DATA / "kubeedge-modbus.yaml").read_text()
    model, device = text.split("\n---\n")
    (tmp_path / "model.yaml").write_text(model)
    (tmp_path / "device.yaml").write_text(device)
    inv = load_files([tmp_path / "device.yaml", tmp_path / "model.yaml"])
    assert inv.devices[0].id == "default/thermostat-1"


def test_native_form_validated_by_driver() -> None:
    inv = load_files([DATA / "native-mem.yaml"], DRIVERS)
    dev = inv.devices[0]
    assert dev.validated
    assert dev.protocol_config.device == "rig-1"
    temp, setpoint = dev.properties
    assert isinstance(temp.visitor, MemVisitor)
    assert temp.visitor.address == "t"
    assert temp.collect_cycle_ms == 100  # device-level default
    assert setpoint.desired == "21"
    assert (setpoint.minimum, setpoint.maximum) == (5, 30)
    assert inv.models[("default", "rig-1-model")].properties["temp"].type is PropertyType.FLOAT


def test_missing_driver_modes() -> None:
    text = (DATA / "kubeedge-modbus.yaml").read_text()
    assert load_text(text, drivers=DRIVERS, missing_driver="keep").devices
    skipped = load_text(text, drivers=DRIVERS, missing_driver="skip")
    assert skipped.devices == []
    assert skipped.skipped == [("default/thermostat-1", "modbus")]
    with pytest.raises(
        ConfigError, match=r"protocol 'modbus' has no installed driver \(installed: mem\)"
    ):
        load_text(text, drivers=DRIVERS, missing_driver="error")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("bad-yaml.yaml", r"bad-yaml.yaml:5:\d+: invalid YAML"),
        (
            "wrong-kind.yaml",
            r"document 1 \(DeviceTwin x\): kind: expected Device or DeviceModel, got 'DeviceTwin'",
        ),
        (
            "wrong-api.yaml",
            r"apiVersion: expected 'devices.kubeedge.io/v1beta1', "
            r"got 'devices.kubeedge.io/v1alpha2'",
        ),
        (
            "missing-model.yaml",
            r"\(Device d1\): spec.deviceModelRef.name: DeviceModel default/nowhere is not defined",
        ),
        (
            "unknown-property.yaml",
            r"document 2 \(Device d1\): spec.properties\[0\].name: property 'b' is not in "
            r"DeviceModel m \(it has: a\)",
        ),
        ("bad-type.yaml", r"spec.properties\[0\].type: unknown property type 'NUMBER'"),
        ("bad-range.yaml", r"spec.properties\[0\]: minimum 10 is greater than maximum 1"),
        (
            "duplicate-device.yaml",
            r"document 2 \(devices\[0\] d1\): device default/d1 is defined twice",
        ),
        (
            "bad-visitor.yaml",
            r"properties\[0\].visitor.address: required field is missing; "
            r"properties\[0\].visitor.adress: unknown field",
        ),
        (
            "negative-cycle.yaml",
            r"devices\[0\].properties\[0\].collectCycle: Input should be "
            r"greater than or equal to 0 \(got -5\)",
        ),
        (
            "driver-rule.yaml",
            r"spec.properties\[1\].visitors.configData.address: address 'x' "
            r"is also used by a",
        ),
        ("not-a-mapping.yaml", r"document 1: expected a mapping"),
        ("bad-name.yaml", r"devices\[0\].name: name 'bad/name' must be"),
    ],
)
def test_broken_files_name_file_document_field_and_expectation(name: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_files([BROKEN / name], DRIVERS)
    message = str(info.value)
    assert name in message
    assert re.search(expected, message), message


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"nope.yaml: file not found"):
        load_files(["nope.yaml"])


def test_desired_numbers_become_strings() -> None:
    inv = load_text(
        "devices:\n- name: d\n  protocol: mem\n  properties:\n"
        "  - {name: a, type: boolean, desired: true}\n  - {name: b, type: float, desired: 2.5}\n"
    )
    assert [p.desired for p in inv.devices[0].properties] == ["true", "2.5"]
