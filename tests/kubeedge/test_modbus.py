"""KubeEdge mode with the real Modbus driver: a desired value from UpdateDevice reaches
the Modbus simulator."""

from __future__ import annotations

from pathlib import Path

from mapper_sdk.kubeedge import KubeEdgeMapper, KubeEdgeOptions
from mapper_sdk.kubeedge.v1beta1 import api_pb2
from mapper_sdk.registry import Registry
from mapper_sdk.runtime import MapperOptions, WorkerOptions
from simulators.modbus import ModbusSimulator

from .conftest import FAST
from .edgecore import FakeEdgecore, wait_for

THERMOSTAT = """
apiVersion: devices.kubeedge.io/v1beta1
kind: DeviceModel
metadata: {{name: thermostat-model, namespace: plant}}
spec:
  protocol: modbus
  properties:
    - {{name: temperature, type: FLOAT, accessMode: ReadOnly}}
    - {{name: setpoint, type: FLOAT, accessMode: ReadWrite, minimum: "5", maximum: "30"}}
    - {{name: mode, type: INT, accessMode: ReadWrite, minimum: "0", maximum: "2"}}
---
apiVersion: devices.kubeedge.io/v1beta1
kind: Device
metadata: {{name: thermostat-1, namespace: plant}}
spec:
  deviceModelRef: {{name: thermostat-model}}
  protocol:
    protocolName: modbus
    configData: {{communicateMode: TCP, ip: 127.0.0.1, port: {port}, slaveID: 1, timeout: 500}}
  properties:
    - name: temperature
      collectCycle: 200
      reportCycle: 200
      reportToCloud: true
      visitors:
        protocolName: modbus
        configData: {{register: InputRegister, offset: 0, limit: 1, rawType: int16, scale: 0.1}}
    - name: setpoint
      collectCycle: 200
      reportCycle: 200
      reportToCloud: true
      desired: {{value: "21.5"}}
      visitors:
        protocolName: modbus
        configData: {{register: HoldingRegister, offset: 0, limit: 2, rawType: float32,
                      isRegisterSwap: true}}
    - name: mode
      collectCycle: 200
      reportCycle: 200
      reportToCloud: true
      visitors:
        protocolName: modbus
        configData: {{register: HoldingRegister, offset: 2, limit: 1}}
  stateReport: {{reportToCloud: true, reportCycle: 500}}
"""


async def test_desired_value_through_update_device_reaches_the_modbus_simulator(
    sockets: Path,
) -> None:
    async with ModbusSimulator("thermostat", port=0) as sim:
        core = FakeEdgecore(sockets / "dmi.sock")
        (device,) = core.load(THERMOSTAT.format(port=sim.port))
        options = KubeEdgeOptions(
            protocol="modbus",
            dmi_socket=sockets / "dmi.sock",
            mapper_socket=sockets / "mapperkit-modbus.sock",
            budget=FAST,
            poll_interval=0.05,
            mapper=MapperOptions(
                mqtt=None, worker=WorkerOptions(backoff_initial=0.05, backoff_max=0.3)
            ),
        )
        driver = Registry().get_driver("modbus")
        async with core, KubeEdgeMapper(options, driver=driver) as km:
            await wait_for(lambda: km.ready, what="ready")
            twins = await wait_for(
                lambda: (
                    core.latest_twins("thermostat-1").get("setpoint") == ("21.5", "21.5")
                    and core.latest_twins("thermostat-1")
                ),
                what="first report",
            )
            assert twins["temperature"][0] == "21.5"  # 215 x 0.1 from the profile
            assert "online" in core.states("thermostat-1")

            updated = api_pb2.Device()
            updated.CopyFrom(device)
            updated.spec.properties[1].desired.value = "24.5"
            updated.spec.properties[2].desired.value = "2"
            await core.call_mapper("UpdateDevice", api_pb2.UpdateDeviceRequest(device=updated))
            await wait_for(lambda: sim.get(1, "setpoint") == 24.5, what="setpoint on the device")
            await wait_for(lambda: sim.get(1, "mode") == 2, what="mode on the device")
            twins = await wait_for(
                lambda: (
                    core.latest_twins("thermostat-1").get("setpoint") == ("24.5", "24.5")
                    and core.latest_twins("thermostat-1")
                ),
                what="read back and reported",
            )
            assert twins["mode"] == ("2", "2")
            assert km.mapper.worker("plant/thermostat-1").stats.connects == 1
