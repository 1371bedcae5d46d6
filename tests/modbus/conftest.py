"""Fixtures of the Modbus tests: simulators on free ports and devices pointing at them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest
import yaml

from mapper_sdk.model import DeviceSpec, load_text
from mappers.modbus import ModbusDriver
from simulators.modbus import ModbusSimulator


def make_device(
    connection: Mapping[str, Any],
    properties: Sequence[Mapping[str, Any]],
    name: str = "dev",
) -> DeviceSpec[Any, Any]:
    """A device in the native compact form, validated by the Modbus driver."""
    doc = {
        "devices": [
            {
                "name": name,
                "protocol": "modbus",
                "connection": dict(connection),
                "properties": [dict(p) for p in properties],
            }
        ]
    }
    return load_text(yaml.safe_dump(doc), drivers={"modbus": ModbusDriver}).devices[0]


def prop(name: str, ptype: str, access: str = "ReadWrite", **visitor: Any) -> dict[str, Any]:
    """One native-form property."""
    return {"name": name, "type": ptype, "accessMode": access, "visitor": visitor}


def tcp(sim: ModbusSimulator, unit: int = 1, **extra: Any) -> dict[str, Any]:
    """The connection of a device on ``sim``."""
    mode = "RTUOverTCP" if sim.framing == "rtu" else "TCP"
    return {"communicateMode": mode, "ip": sim.host, "port": sim.port, "slaveID": unit, **extra}


def _words(base: int, count: int, value: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "name": f"h{base + i}",
            "table": "holding",
            "address": base + i,
            "value": value + i,
            "behaviour": "setpoint",
        }
        for i in range(count)
    ]


# Unit 1: a lenient device with all four tables. Unit 2: a strict device whose
# addresses 3, 4 and 7.. are not implemented. Unit 3: a second lenient unit.
# Unit 4: the conformance kit's device (strict: 2..4 are not implemented).
PLANT: dict[str, Any] = {
    "name": "plant",
    "units": [
        {
            "id": 1,
            "points": [
                *_words(0, 10, 100),
                {
                    "name": "f32",
                    "table": "holding",
                    "address": 12,
                    "type": "float32",
                    "value": 1.5,
                    "behaviour": "setpoint",
                },
                {"name": "far", "table": "holding", "address": 40, "value": 7},
                {
                    "name": "flags",
                    "table": "holding",
                    "address": 41,
                    "value": 0b1010,
                    "writable": True,
                },
                {
                    "name": "label",
                    "table": "holding",
                    "address": 50,
                    "type": "string",
                    "length": 4,
                    "value": "pump",
                    "behaviour": "setpoint",
                },
                {"name": "ro", "table": "holding", "address": 60, "value": 9},
                {"name": "in0", "table": "input", "address": 0, "type": "int16", "value": -5},
                {"name": "in1", "table": "input", "address": 1, "value": 65535},
                *[
                    {
                        "name": f"c{i}",
                        "table": "coil",
                        "address": i,
                        "value": i % 2 == 1,
                        "behaviour": "setpoint",
                    }
                    for i in range(8)
                ],
                {"name": "d0", "table": "discrete", "address": 0, "value": True},
            ],
        },
        {
            "id": 2,
            "strict": True,
            "points": [
                *_words(0, 3, 200),
                *_words(5, 2, 205),
            ],
        },
        {"id": 3, "points": _words(0, 4, 300)},
        {
            "id": 4,
            "strict": True,
            "points": [
                *_words(0, 2, 400),
                {
                    "name": "setpoint",
                    "table": "holding",
                    "address": 5,
                    "type": "float32",
                    "value": 20.0,
                    "behaviour": "setpoint",
                },
            ],
        },
    ],
}


@pytest.fixture(scope="session")
async def plant() -> AsyncIterator[ModbusSimulator]:
    """The shared TCP simulator. Tests clear the faults and counters they use."""
    async with ModbusSimulator(PLANT) as sim:
        yield sim


@pytest.fixture(scope="session")
async def plant_rtu() -> AsyncIterator[ModbusSimulator]:
    """The same plant with RTU framing over TCP."""
    async with ModbusSimulator(PLANT, framing="rtu") as sim:
        yield sim


@pytest.fixture
async def sim(plant: ModbusSimulator) -> AsyncIterator[ModbusSimulator]:
    """The shared simulator with its counters reset and its faults cleared afterwards."""
    plant.reset_counts()
    yield plant
    plant.clear_faults()


@pytest.fixture
async def private_sim() -> AsyncIterator[ModbusSimulator]:
    """A simulator of the test's own, which it may stop and start."""
    async with ModbusSimulator(PLANT) as sim:
        yield sim
