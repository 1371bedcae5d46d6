"""The SDK's driver conformance kit, run on the Modbus driver and its simulator."""

from __future__ import annotations

import pytest

from mapper_sdk.testing import ConformanceCase, DriverConformance, free_port
from mappers.modbus import ModbusDriver
from simulators.modbus import ModbusSimulator

from .conftest import make_device, prop, tcp

PROPS = [
    prop("a", "int", register="HoldingRegister", offset=0),
    prop("b", "int", register="HoldingRegister", offset=1),
    prop("setpoint", "float", register="HoldingRegister", offset=5, limit=2, rawType="float32"),
    prop("ghost", "int", register="HoldingRegister", offset=3),
]


class TestModbusConformance(DriverConformance):
    @pytest.fixture
    async def conformance_case(self, plant: ModbusSimulator) -> ConformanceCase:
        # Unit 4 is strict: address 3 is not implemented, so "ghost" fails alone;
        # "setpoint" is a writable float32 in registers 5-6.
        device = make_device(tcp(plant, unit=4), PROPS)
        unreachable = make_device(
            {"ip": "127.0.0.1", "port": free_port(), "slaveID": 4, "timeout": 500}, PROPS
        )
        return ConformanceCase(
            driver=ModbusDriver,
            device=device,
            unreachable=unreachable,
            bad_property="ghost",
            write=("setpoint", 21.5),
        )
