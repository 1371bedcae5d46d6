"""The SDK's driver conformance kit, run on the OPC-UA driver against the simulator."""

from __future__ import annotations

import pytest

from mapper_sdk.testing import ConformanceCase, DriverConformance, free_port
from mappers.opcua import OpcUaDriver
from simulators.opcua import OpcUaSimulator

from .conftest import make_device

pytestmark = pytest.mark.timeout(60)

PROPERTIES = ["temperature", "setpoint", "heating", "mode", "runtimeHours", "firmware", "serial"]


class TestOpcUaConformance(DriverConformance):
    @pytest.fixture
    async def conformance_case(self, sim: OpcUaSimulator) -> ConformanceCase:
        missing = [{"name": "missing", "type": "double", "visitor": {"nodeID": "ns=2;s=Missing"}}]
        closed = f"opc.tcp://127.0.0.1:{free_port()}/mapperkit/thermostat"
        return ConformanceCase(
            driver=OpcUaDriver,
            device=make_device(sim, PROPERTIES, extra=missing),
            unreachable=make_device(sim, PROPERTIES, connection={"url": closed, "timeout": 2}),
            bad_property="missing",
            write=("setpoint", 22.0),
        )
