"""Configuration: KubeEdge's keys, defaults, and precise errors for bad combinations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mapper_sdk.codec import RawType
from mapper_sdk.errors import ConfigError
from mapper_sdk.model import load_files, load_text
from mapper_sdk.registry import Registry
from mappers.modbus import CommunicateMode, ModbusDriver, ModbusProtocolConfig, Table
from mappers.modbus.driver import compile_reader

from .conftest import make_device, prop

EXAMPLES = Path(__file__).parents[2] / "examples" / "modbus"
TCP = {"ip": "10.0.0.5"}


def layout(ptype: str, **visitor: Any) -> Any:
    drv = ModbusDriver(make_device(TCP, [prop("p", ptype, **visitor)]))
    return drv._points["p"].layout


def test_registered_as_a_plugin() -> None:
    assert Registry().get_driver("modbus") is ModbusDriver


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_load(path: Path) -> None:
    inventory = load_files([path], drivers={"modbus": ModbusDriver})
    assert len(inventory.devices) == 1
    ModbusDriver(inventory.devices[0])  # compiles every property


def test_kubeedge_device_as_written() -> None:
    text = """
apiVersion: devices.kubeedge.io/v1beta1
kind: DeviceModel
metadata: {name: beta1-model}
spec:
  properties:
    - name: temp
      type: INT
      accessMode: ReadWrite
      maximum: "100"
---
apiVersion: devices.kubeedge.io/v1beta1
kind: Device
metadata: {name: beta1-device}
spec:
  deviceModelRef: {name: beta1-model}
  nodeName: worker-node1
  properties:
    - name: temp
      collectCycle: 2000
      reportCycle: 2000
      desired: {value: "30"}
      reportToCloud: true
      visitors:
        protocolName: modbus
        configData:
          register: "HoldingRegister"
          offset: 2
          limit: 1
          scale: 1
          isSwap: true
          isRegisterSwap: true
  protocol:
    protocolName: modbus
    configData:
      ip: 172.17.0.3
      port: "1502"
      slaveID: "1"
"""
    device = load_text(text, drivers={"modbus": ModbusDriver}).devices[0]
    cfg = device.protocol_config
    assert isinstance(cfg, ModbusProtocolConfig)
    assert (cfg.communicateMode, cfg.ip, cfg.port, cfg.slaveID) == (
        CommunicateMode.TCP,
        "172.17.0.3",
        1502,
        1,
    )
    lay = ModbusDriver(device)._points["temp"].layout
    assert (lay.table, lay.address, lay.count, lay.raw) == (Table.HOLDING, 2, 1, RawType.UINT16)
    assert lay.byte_swap and lay.word_swap


def test_protocol_defaults() -> None:
    cfg = ModbusProtocolConfig.model_validate({"ip": "h"})
    assert (cfg.port, cfg.slaveID, cfg.timeout, cfg.maxRegistersPerRequest, cfg.maxGap) == (
        502,
        1,
        1000,
        125,
        8,
    )
    serial = ModbusProtocolConfig.model_validate({"serialName": "/dev/ttyUSB0", "parity": "even"})
    assert serial.communicateMode is CommunicateMode.RTU
    assert (serial.baudRate, serial.dataBits, serial.stopBits, serial.parity) == (
        19200,
        8,
        1,
        "Even",
    )
    gateway = ModbusProtocolConfig.model_validate({"ip": "h", "communicateMode": "rtuovertcp"})
    assert gateway.communicateMode is CommunicateMode.RTU_OVER_TCP


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "ip is required when communicateMode is TCP"),
        ({"communicateMode": "RTU"}, "serialName is required"),
        ({"serialName": "/dev/ttyS0", "slaveID": 0}, "slaveID must be 1..247"),
        ({"ip": "h", "port": "http"}, "port"),
        ({"ip": "h", "port": 70000}, "port"),
        ({"ip": "h", "communicateMode": "UDP"}, "expected TCP, RTU or RTUOverTCP"),
        ({"ip": "h", "maxRegistersPerRequest": 200}, "maxRegistersPerRequest"),
        ({"ip": "h", "parity": "mark"}, "parity"),
        ({"ip": "h", "stopBits": 3}, "stopBits"),
        ({"ip": "h", "baudrate": 9600}, "baudrate: unknown field"),
    ],
)
def test_protocol_errors(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        make_device(config, [prop("p", "int", register="HoldingRegister")])
    assert "connection" in str(info.value)


@pytest.mark.parametrize(
    ("ptype", "visitor", "raw", "count"),
    [
        ("int", {}, RawType.UINT16, 1),
        ("int", {"limit": 2}, RawType.UINT32, 2),
        ("int", {"limit": 4}, RawType.UINT64, 4),
        ("int", {"limit": 0}, RawType.UINT16, 1),  # KubeEdge's "natural size"
        ("float", {}, RawType.UINT16, 1),
        ("float", {"limit": 2}, RawType.FLOAT32, 2),
        ("double", {"limit": 4}, RawType.FLOAT64, 4),
        ("boolean", {}, RawType.BOOL, 1),
        ("string", {"limit": 6}, RawType.STRING, 6),
        ("bytes", {"limit": 3}, RawType.BYTES, 3),
        ("int", {"rawType": "Int32"}, RawType.INT32, 2),
        ("float", {"rawType": "float64", "limit": 4}, RawType.FLOAT64, 4),
        ("boolean", {"rawType": "uint16"}, RawType.UINT16, 1),
    ],
)
def test_default_and_explicit_raw_types(
    ptype: str, visitor: dict[str, Any], raw: RawType, count: int
) -> None:
    lay = layout(ptype, register="HoldingRegister", offset=7, **visitor)
    assert (lay.raw, lay.count, lay.address) == (raw, count, 7)


def test_bit_tables() -> None:
    coil = layout("boolean", register="coilregister", offset=3)
    assert (coil.table, coil.count, coil.raw) == (Table.COIL, 1, None)
    mask = layout("int", register="DiscreteInputRegister", limit=12)
    assert mask.count == 12
    assert compile_reader(mask)([True, False, True] + [False] * 9) == 0b101


@pytest.mark.parametrize(
    ("ptype", "visitor", "field", "message"),
    [
        ("int", {"limit": 3}, "limit", "spans 1, 2 or 4 registers, limit is 3"),
        ("int", {"rawType": "float32", "limit": 1}, "limit", "float32 takes 2 registers"),
        ("int", {"rawType": "string"}, "rawType", "cannot be read as string"),
        ("float", {"rawType": "bool"}, "rawType", "cannot be read as bool"),
        ("string", {"rawType": "int16"}, "rawType", "cannot be read as int16"),
        ("string", {"scale": 2}, "scale", "scale applies to numbers"),
        ("boolean", {"limit": 2}, "limit", "rawType bool reads one register"),
        ("boolean", {"bit": 3, "limit": 2}, "limit", "one bit of one register"),
        ("boolean", {"bit": 3, "rawType": "float32"}, "rawType", "one bit of a 16-bit"),
        ("float", {"bit": 3}, "bit", "BOOLEAN or INT"),
        ("boolean", {"bit": 3, "scale": 2}, "scale", "do not apply to a bit"),
        ("int", {"dataType": "float"}, "dataType", "differs from the model's type INT"),
        ("string", {"limit": 126}, "limit", "exceed maxRegistersPerRequest"),
        ("int", {"offset": 65535, "limit": 2}, "offset", "past address 65535"),
        ("float", {"register": "CoilRegister"}, "register", "reads as BOOLEAN .* or INT"),
        ("boolean", {"register": "CoilRegister", "bit": 1}, "bit", "does not apply"),
        ("boolean", {"register": "CoilRegister", "isSwap": True}, "isSwap", "does not apply"),
        ("boolean", {"register": "CoilRegister", "limit": 2}, "limit", "reads one coil"),
        ("int", {"register": "CoilRegister", "limit": 65}, "limit", "at most 64 coils"),
        ("int", {"register": "CoilRegister", "rawType": "uint16"}, "rawType", "holds bits"),
    ],
)
def test_layout_errors_name_the_field(
    ptype: str, visitor: dict[str, Any], field: str, message: str
) -> None:
    full = {"register": "HoldingRegister", **visitor}
    with pytest.raises(ConfigError, match=message) as info:
        make_device(TCP, [prop("p", ptype, **full)])
    assert f"spec.properties[p].visitors.configData.{field}" in str(info.value)


@pytest.mark.parametrize(
    ("visitor", "message"),
    [
        ({"register": "Holding"}, "expected CoilRegister, DiscreteInputRegister"),
        ({"register": "HoldingRegister", "scale": 0}, "scale must not be 0"),
        ({"register": "HoldingRegister", "rawType": "int8"}, "expected one of int16"),
        ({"register": "HoldingRegister", "bit": 16}, "bit"),
        ({"register": "HoldingRegister", "offset": -1}, "offset"),
        ({"register": "HoldingRegister", "dataType": "decimal"}, "unknown property type"),
        ({"register": "HoldingRegister", "swap": True}, "swap: unknown field"),
        ({"offset": 1}, "register"),
    ],
)
def test_visitor_field_errors(visitor: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        make_device(TCP, [prop("p", "int", **visitor)])
    assert "properties[0].visitor" in str(info.value)


def test_error_names_the_file_and_document() -> None:
    text = (EXAMPLES / "thermostat.yaml").read_text().replace("bit: 1}", "bit: 1, limit: 2}")
    with pytest.raises(ConfigError) as info:
        load_text(text, "thermostat.yaml", drivers={"modbus": ModbusDriver})
    message = str(info.value)
    assert "thermostat.yaml: document 2 (Device thermostat-living-room)" in message
    assert "spec.properties[fan].visitors.configData.limit" in message


@pytest.mark.parametrize(
    ("visitor", "regs", "value"),
    [
        ({"rawType": "int16", "scale": 0.1}, [214], 21.4),
        ({"rawType": "int16", "scale": 0.1}, [0xFFFD], -0.3),
        ({"rawType": "uint32", "scale": 0.001}, [0x0012, 0xD687], 1234.567),
        ({"scale": 0.1, "valueOffset": -40}, [614], 21.4),
        ({"rawType": "float32", "scale": 0.1}, [0x4300, 0x0000], 12.8),
    ],
)
def test_decimal_scaling_reads_cleanly(
    visitor: dict[str, Any], regs: list[int], value: float
) -> None:
    reader = compile_reader(layout("float", register="InputRegister", **visitor))
    assert reader(regs) == value
