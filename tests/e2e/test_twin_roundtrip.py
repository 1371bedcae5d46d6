"""End to end, per protocol: KubeEdge Device YAML -> mapper -> twin service -> desired value
set by an application -> the simulated device changes -> the reported value follows.

Everything is real: Mosquitto, the twin service, the mapper runtime with the installed
drivers, and the Modbus, OPC-UA and BLE simulators; the device files are the ones in
examples/.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from mapper_sdk.driver import Resources
from mapper_sdk.errors import TwinRejected
from mapper_sdk.model import load_objects
from mapper_sdk.mqtt import MqttSettings
from mapper_sdk.registry import Registry
from mapper_sdk.runtime import Mapper, MapperOptions
from mapper_sdk.testing import Mosquitto
from simulators.demo.run import OPCUA_PROFILE, example_documents
from twin.client import TwinClient
from twin.service import ServiceConfig, TwinService


@contextlib.asynccontextmanager
async def stack(
    broker: Mosquitto,
    tmp_path: Path,
    ports: dict[str, Any],
    keep: set[str],
    resources: Resources | None = None,
) -> AsyncIterator[tuple[Mapper, TwinClient]]:
    """Twin service, mapper and a TwinClient for the example devices named in ``keep``."""
    settings = MqttSettings.from_url(broker.url)
    docs = [
        d
        for d in example_documents(ports)
        if d.get("kind") != "Device" or d["metadata"]["name"] in keep
    ]
    registry = Registry()
    devices = load_objects(docs, "examples", registry, missing_driver="error").devices
    service = TwinService(
        ServiceConfig(mqtt=settings, db_path=tmp_path / "twin.db", node="edge-node-1"),
        devices=load_objects(docs, "examples").devices,
    )
    mapper = Mapper(devices, registry, MapperOptions(mqtt=settings), resources=resources)
    async with service, TwinClient(settings) as client:
        # Subscribed before anything is asked of it: a request published earlier
        # would reach no subscriber (the service's test session is clean).
        async with asyncio.timeout(10):
            await service.wait_ready()
        serving = asyncio.create_task(service.serve_forever(), name="test.twin")
        try:
            async with mapper:
                yield mapper, client
        finally:
            service.stop()
            await serving


async def eventually(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(0.05)


async def reported(client: TwinClient, device: str, prop: str) -> Any:
    return (await client.get(device)).reported(prop)


async def test_modbus_desired_value_reaches_the_register(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    from simulators.modbus import ModbusSimulator

    sim = ModbusSimulator("thermostat", framing="rtu")
    await sim.start()
    device = "default/thermostat-living-room"
    try:
        async with stack(
            mosquitto,
            tmp_path,
            {"thermostat-living-room": {"port": sim.port}},
            {"thermostat-living-room"},
        ) as (_, client):
            # The seeded desired value from the Device YAML is applied first.
            await eventually(lambda: sim.get(1, "setpoint") == 21.5, "seeded setpoint written")
            result = await client.set_desired(device, {"setpoint": 24.5})
            assert result.version > 0
            await eventually(lambda: sim.get(1, "setpoint") == 24.5, "register written")
            await eventually(
                lambda: _equals(reported(client, device, "setpoint"), 24.5), "reported"
            )
            state = await client.get(device)
            assert state.state == "online"
            assert state.twins["setpoint"]["ack"]["status"] == "applied"
            # The register changes on the device side; the twin follows.
            sim.set(1, "mode", 2)
            await eventually(lambda: _equals(reported(client, device, "mode"), 2), "mode")
            with pytest.raises(TwinRejected) as info:
                await client.set_desired(device, {"setpoint": 31})
            assert info.value.code == 400
            assert sim.get(1, "setpoint") == 24.5
    finally:
        await sim.stop()


async def test_opcua_desired_value_reaches_the_node(mosquitto: Mosquitto, tmp_path: Path) -> None:
    from simulators.opcua.profile import load_profile
    from simulators.opcua.server import OpcUaSimulator

    device = "default/opcua-thermostat-hall"
    async with OpcUaSimulator(load_profile(OPCUA_PROFILE), port=0) as sim:
        async with stack(
            mosquitto,
            tmp_path,
            {"opcua-thermostat-hall": {"url": sim.url}},
            {"opcua-thermostat-hall"},
        ) as (_, client):
            await client.set_desired(device, {"setpoint": 19.25, "mode": "eco"})
            await eventually(lambda: sim.value("setpoint") == 19.25, "node written")
            await eventually(lambda: sim.value("mode") == "eco", "mode written")
            await eventually(
                lambda: _equals(reported(client, device, "setpoint"), 19.25), "reported"
            )
            # A device-side change arrives through the subscription.
            await sim.set_value("heating", False)
            await eventually(lambda: _is(reported(client, device, "heating"), False), "pushed")
            state = await client.get(device)
            assert state.twins["setpoint"]["ack"]["status"] == "applied"


async def test_ble_desired_value_reaches_the_characteristic(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    from simulators.ble.profile import load_profile

    device = "default/led-actuator-1"
    brightness = "8e7f0003-5c3a-4b8e-9f1d-6d6170706b74"
    async with demo_peripherals(load_profile("demo")) as (radio, peripherals):
        led = next(p for p in peripherals if p.name == "led-actuator-1")
        resources = Resources()
        radio.install(resources)
        async with stack(
            mosquitto, tmp_path, {}, {"led-actuator-1", "env-sensor-1"}, resources
        ) as (_, client):
            await client.set_desired(device, {"brightness": 42})
            await eventually(lambda: led.value(brightness) == 42, "characteristic written")
            await eventually(
                lambda: _equals(reported(client, device, "brightness"), 42), "reported"
            )
            # The notifying temperature of the sensor reaches the twin.
            await eventually(
                lambda: _has(reported(client, "default/env-sensor-1", "temperature")), "notified"
            )


@contextlib.asynccontextmanager
async def demo_peripherals(profile: Any) -> AsyncIterator[tuple[Any, list[Any]]]:
    """The profile's peripherals on this event loop's virtual radio (one per loop: the
    one the BLE tests started when they ran in this session, else a new one)."""
    from simulators.ble.radio import VirtualRadio, current_radio

    own: VirtualRadio | None = None
    try:
        radio = current_radio()
    except LookupError:
        radio = own = VirtualRadio()
        await own.__aenter__()
    added = await radio.add_profile(profile)
    try:
        yield radio, added
    finally:
        for peripheral in added:
            await radio.remove_peripheral(peripheral.name)
        if own is not None:
            await own.__aexit__(None, None, None)


async def _equals(value: Any, expected: Any) -> bool:
    got = await value
    return got is not None and abs(float(got) - float(expected)) < 1e-6


async def _is(value: Any, expected: Any) -> bool:
    return bool((await value) == expected)


async def _has(value: Any) -> bool:
    return (await value) is not None
