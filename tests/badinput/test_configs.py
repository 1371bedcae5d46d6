"""A corpus of broken Device/DeviceModel files, each with the exact message it must produce.

Each file in ``configs/`` is refused by the first stage that can see what is
wrong, with one message naming the file, the document, the field and what was
expected:

* ``load``: :func:`mapper_sdk.model.load_files` with the Modbus, OPC-UA and BLE
  drivers and ``missing_driver="error"`` (the schema, the models, and each
  driver's ``validate_device`` rules), as ``mapperkit run`` loads them;
* ``mapper``: entering a :class:`~mapper_sdk.runtime.Mapper` for the loaded
  devices, which validates each property's ``pushMethod`` sinks before it
  connects to anything;
* ``twin``: loading the twin service's devices (desired seeds against the
  model, the service's limits; here ``--max-properties 3``).

A file is accepted by every stage before its own, so each message is the one a
user sees first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest

from mapper_sdk.errors import ConfigError
from mapper_sdk.model import Inventory, load_files
from mapper_sdk.mqtt import MqttSettings
from mapper_sdk.registry import Registry
from mapper_sdk.runtime import Mapper, MapperOptions
from mappers.ble import BleDriver
from mappers.modbus import ModbusDriver
from mappers.opcua import OpcUaDriver
from twin.document import Options
from twin.service import TwinCore
from twin.store import Store

CONFIGS: Final = Path(__file__).parent / "configs"
DRIVERS: Final = Registry({"modbus": ModbusDriver, "opcua": OpcUaDriver, "ble": BleDriver})
# Nothing listens there: a mapper that got past its checks would only retry.
NOWHERE: Final = MqttSettings.from_url("mqtt://127.0.0.1:9")

# file, stage, message ({file} is the file's path)
CORPUS: Final = [
    # ---- wrong types
    (
        "wrong-type-property-type.yaml",
        "load",
        "{file}: document 1 (DeviceModel meter-model): spec.properties[0].type: "
        "expected a type name, got 3",
    ),
    (
        "wrong-type-cycle.yaml",
        "load",
        "{file}: document 1: devices[0].properties[0].collectCycle: Input should be a valid "
        "integer, unable to parse string as an integer (got 'fast')",
    ),
    (
        "wrong-type-minimum.yaml",
        "load",
        "{file}: document 1: devices[0].properties[0].minimum: expected a number, got 'hot'",
    ),
    (
        "wrong-type-port.yaml",
        "load",
        "{file}: document 1 (devices[0] meter-2): connection.port: Input should be a valid "
        "integer, unable to parse string as an integer (got 'five-oh-two')",
    ),
    (
        "unknown-field.yaml",
        "load",
        "{file}: document 1: devices[0].properties[0].colectCycle: unknown field",
    ),
    # ---- references and names
    (
        "unknown-protocol.yaml",
        "load",
        "{file}: document 1 (devices[0] bulb-1): protocol 'zigbee' has no installed driver "
        "(installed: ble, modbus, opcua)",
    ),
    (
        "missing-model.yaml",
        "load",
        "{file}: document 1 (Device pump-1): spec.deviceModelRef.name: DeviceModel "
        "default/pump-model is not defined in the files given",
    ),
    (
        "protocol-mismatch.yaml",
        "load",
        "{file}: document 2 (Device boiler-1): spec.protocol.protocolName: 'modbus' differs "
        "from the model's protocol 'opcua'",
    ),
    (
        "duplicate-device.yaml",
        "load",
        "{file}: document 3 (Device pump-1): device default/pump-1 is defined twice "
        "(first in {file}: document 2 (Device pump-1))",
    ),
    (
        "duplicate-model.yaml",
        "load",
        "{file}: document 2 (DeviceModel pump-model): DeviceModel default/pump-model is "
        "defined twice",
    ),
    (
        "duplicate-property-model.yaml",
        "load",
        "{file}: document 1 (DeviceModel pump-model): spec.properties: property 'speed' is "
        "listed twice",
    ),
    (
        "duplicate-property-device.yaml",
        "load",
        "{file}: document 1: devices[0].properties: property 'speed' is listed twice",
    ),
    # ---- ranges and unsafe values
    (
        "bad-range.yaml",
        "load",
        "{file}: document 1 (DeviceModel valve-model): spec.properties[0]: minimum 100 is "
        "greater than maximum 0",
    ),
    (
        "modbus-serial-10ms.yaml",
        "load",
        "{file}: document 2 (Device meter-rtu): spec.properties[energy].collectCycle: 10 ms is "
        "too short for a serial line: at 9600 baud one read of energy occupies the line for "
        "25.0 ms plus the slave's turnaround; use at least 50 ms",
    ),
    (
        "modbus-serial-long-read.yaml",
        "load",
        "{file}: document 1 (devices[0] display-1): spec.properties[banner].collectCycle: "
        "200 ms is too short for a serial line: at 9600 baud one read of banner occupies the "
        "line for 252.1 ms plus the slave's turnaround; use at least 505 ms",
    ),
    (
        "modbus-offset-too-big.yaml",
        "load",
        "{file}: document 1 (devices[0] meter-4): properties[0].visitor.offset: Input should "
        "be less than or equal to 65535 (got 70000)",
    ),
    (
        "modbus-offset-runs-past.yaml",
        "load",
        "{file}: document 1 (devices[0] meter-5): spec.properties[power].visitors.configData."
        "offset: offset 65535 + 2 registers run past address 65535",
    ),
    (
        "opcua-http-url.yaml",
        "load",
        "{file}: document 2 (Device boiler-2): spec.protocol.configData.url: expected an "
        "opc.tcp://host:port/path URL, got 'http://10.0.0.5:4840/plant'",
    ),
    (
        "ble-bad-uuid.yaml",
        "load",
        "{file}: document 1 (devices[0] env-2): properties[0].visitor.characteristicUUID: "
        "'temperature' is not a UUID (hex digits, 16- or 128-bit)",
    ),
    # ---- secrets
    (
        "pushmethod-password.yaml",
        "mapper",
        "{file}: document 2 (Device meter-6): spec.properties[0].pushMethod.mqtt: password: "
        "credentials never go in the device YAML; name where they are with passwordEnv (an "
        "environment variable) or passwordFile (a file)",
    ),
    (
        "pushmethod-url-credentials.yaml",
        "mapper",
        "{file}: document 1 (devices[0] meter-7): spec.properties[0].pushMethod.mqtt: "
        "address: credentials never go in the device YAML; use usernameEnv and passwordEnv "
        "or passwordFile",
    ),
    # ---- the twin's rules
    (
        "desired-out-of-range.yaml",
        "twin",
        "{file}: document 1 (devices[0] heater-2): device default/heater-2 property "
        "setpoint: desired value '55': 55.0 is above the maximum 30",
    ),
    (
        "too-many-properties.yaml",
        "twin",
        "{file}: document 1 (devices[0] rack-1): device default/rack-1 has 4 properties, "
        "more than the limit of 3 (--max-properties)",
    ),
]
STAGES: Final = ("load", "mapper", "twin")


def load(path: Path) -> Inventory:
    return load_files([path], DRIVERS, missing_driver="error")


async def enter_mapper(path: Path) -> None:
    async with Mapper(load(path).devices, DRIVERS, MapperOptions(mqtt=NOWHERE)):
        pass


def load_twin(path: Path, tmp_path: Path) -> None:
    store = Store.open(tmp_path / "twin.db")
    try:
        TwinCore(store, Options(max_properties=3), "edge-0").load(load_files([path]).devices)
    finally:
        store.close()


async def run_stage(stage: str, path: Path, tmp_path: Path) -> None:
    if stage == "load":
        load(path)
    elif stage == "mapper":
        await enter_mapper(path)
    else:
        load_twin(path, tmp_path)


def test_every_file_of_the_corpus_has_its_message() -> None:
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(c[0] for c in CORPUS)


@pytest.mark.parametrize(("name", "stage", "message"), CORPUS, ids=[c[0] for c in CORPUS])
async def test_broken_file_gets_its_exact_message(
    name: str, stage: str, message: str, tmp_path: Path
) -> None:
    path = CONFIGS / name
    expected = message.format(file=path)
    with pytest.raises(ConfigError) as info:
        await run_stage(stage, path, tmp_path)
    assert str(info.value) == expected
    # Every stage before this one accepts the file: the message is the first one seen.
    for earlier in STAGES[: STAGES.index(stage)]:
        await run_stage(earlier, path, tmp_path)
