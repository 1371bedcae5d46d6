"""The SDK's driver conformance kit, run on the BLE driver against the simulator."""

from __future__ import annotations

import pytest

from mapper_sdk.driver import Resources
from mapper_sdk.testing import ConformanceCase, DriverConformance
from mappers.ble import BleDriver
from simulators.ble import SimPeripheral

from .conftest import PeripheralFactory, actuator_device, peripheral_spec


@pytest.fixture
async def conformance_actuator(add_peripheral: PeripheralFactory) -> SimPeripheral:
    return await add_peripheral(peripheral_spec("actuator"))


class TestBleConformance(DriverConformance):
    @pytest.fixture
    async def conformance_case(
        self, conformance_actuator: SimPeripheral, resources: Resources
    ) -> ConformanceCase:
        # Both devices name the simulator's backend in their configData, so the
        # kit's own fresh Resources() reach the virtual radio too.
        backend = "simulators.ble:current_backend"
        return ConformanceCase(
            driver=BleDriver,
            device=actuator_device(name=conformance_actuator.name, backend=backend),
            unreachable=actuator_device(
                name="nobody-advertises-this", scanTimeout=0.3, backend=backend
            ),
            bad_property="status",
            write=("colour", 0x00FF8800),
            resources=resources,
            connect_timeout=5.0,
        )
