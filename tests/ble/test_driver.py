"""The BLE driver against simulated peripherals on the virtual radio."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from mapper_sdk.driver import Capability, DeviceState, Quality, Reading, Resources
from mapper_sdk.errors import ConfigError, DeviceUnavailable, WriteRejected
from mappers.ble import BleBackend, BleDriver
from simulators.ble import SimPeripheral, VirtualRadio

from .conftest import (
    COUNTER_UUID,
    STATUS_UUID,
    PeripheralFactory,
    StateLog,
    actuator_device,
    env_device,
    peripheral_spec,
    with_counter_interval,
)

MakeDriver = Callable[..., BleDriver]


# ---------------------------------------------------------------------------- finding
async def test_finds_the_device_by_address(
    env: SimPeripheral, resources: Resources, driver_for: MakeDriver
) -> None:
    drv = driver_for(env_device(mac=env.address.lower()), resources)
    await drv.connect()
    assert drv.state() is DeviceState.ONLINE
    assert env.connections, "the peripheral sees the central's connection"


async def test_finds_the_device_by_advertised_name(
    env: SimPeripheral, resources: Resources, driver_for: MakeDriver
) -> None:
    drv = driver_for(env_device(name=env.name), resources)
    await drv.connect()
    assert drv.state() is DeviceState.ONLINE
    readings = await drv.read(drv.device.properties)
    assert readings["battery"].value == 97


async def test_address_and_name_must_both_match(
    env: SimPeripheral, resources: Resources, driver_for: MakeDriver
) -> None:
    drv = driver_for(env_device(mac=env.address, name="someone-else", scanTimeout=0.3), resources)
    with pytest.raises(DeviceUnavailable, match="not found"):
        await drv.connect()


async def test_a_device_nobody_advertises_is_not_found(
    env: SimPeripheral, resources: Resources, driver_for: MakeDriver
) -> None:
    drv = driver_for(env_device(mac="C1:FF:FF:FF:FF:FE", scanTimeout=0.3), resources)
    with pytest.raises(DeviceUnavailable, match=r"C1:FF:FF:FF:FF:FE.*not found.*0\.3 s"):
        await drv.connect()
    assert drv.state() is not DeviceState.ONLINE
    with pytest.raises(DeviceUnavailable, match="not connected"):
        await drv.read(drv.device.properties)


async def test_connect_is_idempotent_and_keeps_one_connection(
    env: SimPeripheral, resources: Resources, driver_for: MakeDriver
) -> None:
    drv = driver_for(env_device(mac=env.address), resources)
    await drv.connect()
    await drv.connect()
    assert len(env.connections) == 1
    await drv.close()
    await asyncio.wait_for(env.wait_connected(False), 5)
    assert drv.state() is not DeviceState.ONLINE


# ---------------------------------------------------------------------------- reads
async def test_batch_read_decodes_every_property(
    env: SimPeripheral, resources: Resources, driver_for: MakeDriver
) -> None:
    env.set_value("2A6E", -12.34)
    env.set_value("2A6F", 56.78)
    drv = driver_for(env_device(mac=env.address), resources)
    await drv.connect()
    env.set_value("2A6E", -12.34)  # behaviours may have stepped meanwhile
    env.set_value("2A6F", 56.78)
    readings = await drv.read(drv.device.properties)
    assert set(readings) == {"temperature", "humidity", "battery", "samples"}
    assert readings["temperature"].value == pytest.approx(-12.34)  # int16 / 100
    assert readings["humidity"].value == pytest.approx(56.78)  # KubeEdge slice 1..0 / 100
    assert readings["battery"].value == 97  # no converter: first byte
    assert isinstance(readings["samples"].value, int)
    assert all(r.quality is Quality.GOOD and r.timestamp > 0 for r in readings.values())


async def test_att_error_on_read_gives_a_bad_reading_with_its_name(
    actuator: SimPeripheral, resources: Resources, driver_for: MakeDriver
) -> None:
    drv = driver_for(actuator_device(name=actuator.name), resources)
    await drv.connect()
    readings = await drv.read(drv.device.properties)
    status = readings["status"]
    assert status.quality is Quality.BAD
    assert status.error_code == "INSUFFICIENT_AUTHORIZATION"
    assert "INSUFFICIENT_AUTHORIZATION" in (status.error or "")
    assert readings["firmware"].value == "1.4.2"
    assert readings["power"].value == "OFF"  # read back through the dataWrite mapping
    actuator.fail_reads(STATUS_UUID, None)
    actuator.fail_reads("2A26", "READ_NOT_PERMITTED")
    readings = await drv.read(drv.device.properties)
    assert readings["status"].value == 0
    assert readings["firmware"].error_code == "READ_NOT_PERMITTED"


async def test_missing_characteristic_is_a_bad_reading(
    env: SimPeripheral, resources: Resources, driver_for: MakeDriver
) -> None:
    base = env_device(mac=env.address)
    battery = base.property("battery")
    ghost = replace(
        battery,
        name="ghost",
        visitor=battery.visitor.model_copy(
            update={"characteristicUUID": "0000fff1-0000-1000-8000-00805f9b34fb"}
        ),
    )
    device = replace(base, properties=(*base.properties, ghost))
    drv = driver_for(device, resources)
    await drv.connect()
    readings = await drv.read(device.properties)
    assert readings["ghost"].quality is Quality.BAD
    assert readings["ghost"].error_code == "ATTRIBUTE_NOT_FOUND"
    assert readings["battery"].quality is Quality.GOOD
    with pytest.raises(WriteRejected) as info:
        await drv.write(ghost, 1)
    assert info.value.code == "ATTRIBUTE_NOT_FOUND"


async def test_delayed_answers_still_read(
    env: SimPeripheral, resources: Resources, driver_for: MakeDriver
) -> None:
    drv = driver_for(env_device(mac=env.address), resources)
    await drv.connect()
    env.read_delay = 0.05
    readings = await drv.read([drv.device.property("battery")])
    assert readings["battery"].value == 97


# ---------------------------------------------------------------------------- writes
async def test_writes_read_back_what_the_device_holds(
    actuator: SimPeripheral, resources: Resources, driver_for: MakeDriver
) -> None:
    drv = driver_for(actuator_device(name=actuator.name), resources)
    await drv.connect()
    assert Capability.WRITE in drv.capabilities
    dev = drv.device

    echoed = await drv.write(dev.property("power"), "ON")  # dataWrite, write request
    assert echoed is not None and echoed.value == "ON"
    assert actuator.characteristic("8e7f0001-5c3a-4b8e-9f1d-6d6170706b74").writes[-1] == b"\x01"

    echoed = await drv.write(dev.property("colour"), 0x00FF8800)  # rawType uint32 LE
    assert echoed is not None and echoed.value == 0x00FF8800
    assert actuator.value("8e7f0002-5c3a-4b8e-9f1d-6d6170706b74") == 0x00FF8800

    echoed = await drv.write(dev.property("brightness"), 42)  # write without response
    assert echoed is not None and echoed.value == 42
    assert (await drv.read([dev.property("brightness")]))["brightness"].value == 42


async def test_write_to_a_read_only_characteristic_is_rejected_by_the_device(
    actuator: SimPeripheral, resources: Resources, driver_for: MakeDriver
) -> None:
    drv = driver_for(actuator_device(name=actuator.name), resources)
    await drv.connect()
    with pytest.raises(WriteRejected) as info:
        await drv.write(drv.device.property("firmware"), "9.9.9")
    assert info.value.code == "WRITE_NOT_PERMITTED"
    assert "WRITE_NOT_PERMITTED" in info.value.reason
    assert actuator.value("2A26") == "1.4.2"
    assert drv.state() is DeviceState.ONLINE  # a refusal is not an outage


async def test_device_side_value_checks_come_back_as_att_errors(
    actuator: SimPeripheral, resources: Resources, driver_for: MakeDriver
) -> None:
    device = actuator_device(
        name=actuator.name,
        patch={
            '"OFF": [0]': '"OFF": [0]\n            "BLINK": [2]',  # the device allows 0..1
            "rawType: uint32": "rawType: uint16",  # the device's colour is 4 bytes
        },
    )
    drv = driver_for(device, resources)
    await drv.connect()
    with pytest.raises(WriteRejected) as info:
        await drv.write(device.property("power"), "BLINK")
    assert info.value.code == "VALUE_NOT_ALLOWED"
    with pytest.raises(WriteRejected) as info:
        await drv.write(device.property("colour"), 7)
    assert info.value.code == "INVALID_ATTRIBUTE_VALUE_LENGTH"
    # A write without response carries no answer: the read-back shows the refusal.
    echoed = await drv.write(device.property("brightness"), 101)  # device maximum is 100
    assert echoed is not None and echoed.value == 80
    assert drv.state() is DeviceState.ONLINE


async def test_values_without_an_encoding_are_rejected_before_any_io(
    actuator: SimPeripheral, resources: Resources, driver_for: MakeDriver
) -> None:
    drv = driver_for(actuator_device(name=actuator.name), resources)
    await drv.connect()
    power = actuator.characteristic("8e7f0001-5c3a-4b8e-9f1d-6d6170706b74")
    before = list(power.writes)
    with pytest.raises(WriteRejected, match=r"'BLINK' is not one of the dataWrite keys") as info:
        await drv.write(drv.device.property("power"), "BLINK")
    assert info.value.code is None
    with pytest.raises(WriteRejected, match="out of range"):
        await drv.write(drv.device.property("colour"), 2**40)
    assert power.writes == before


async def test_a_converter_property_cannot_be_written(
    env: SimPeripheral, resources: Resources, driver_for: MakeDriver
) -> None:
    drv = driver_for(env_device(mac=env.address), resources)
    await drv.connect()
    with pytest.raises(WriteRejected, match="dataConverter cannot be inverted"):
        await drv.write(drv.device.property("humidity"), 50.0)


# ---------------------------------------------------------------------------- notifications
async def test_notifications_arrive_in_order_with_none_lost_at_100_per_second(
    add_peripheral: PeripheralFactory, resources: Resources, driver_for: MakeDriver
) -> None:
    spec = with_counter_interval(peripheral_spec("environmental-sensor"), 10)  # 100/s
    sensor = await add_peripheral(spec)
    drv = driver_for(env_device(mac=sensor.address), resources)
    await drv.connect()
    samples = drv.device.property("samples")
    assert drv.subscribable(samples)
    assert not drv.subscribable(drv.device.property("battery"))
    got: list[Reading] = []
    await drv.subscribe([samples], lambda name, reading: got.append(reading))
    async with asyncio.timeout(20):
        while len(got) < 150:
            await asyncio.sleep(0.05)
    values = [r.value for r in got]
    assert all(r.quality is Quality.GOOD for r in got)
    first = values[0]
    assert isinstance(first, int)
    assert values == list(range(first, first + len(values))), "in order, none lost"
    # A value notified now arrives (the counter keeps running meanwhile).
    before = len(got)
    sent = sensor.value(COUNTER_UUID)
    await sensor.notify(COUNTER_UUID, sent)
    async with asyncio.timeout(5):
        while not any(r.value == sent for r in got[before:]):
            await asyncio.sleep(0.01)


async def test_subscribe_twice_starts_notifications_once(
    env: SimPeripheral, resources: Resources, driver_for: MakeDriver
) -> None:
    drv = driver_for(env_device(mac=env.address), resources)
    await drv.connect()
    samples = drv.device.property("samples")
    first: list[Any] = []
    second: list[Any] = []
    await drv.subscribe([samples], lambda n, r: first.append(r.value))
    await drv.subscribe([samples], lambda n, r: second.append(r.value))
    await env.notify(COUNTER_UUID, 1000)
    await env.notify(COUNTER_UUID, 1001)
    await asyncio.sleep(0.05)
    assert first == []
    assert second[-2:] == [1000, 1001]
    assert second.count(1000) == 1


async def test_subscribing_a_property_that_cannot_notify_reports_it(
    env: SimPeripheral, resources: Resources, driver_for: MakeDriver
) -> None:
    drv = driver_for(env_device(mac=env.address), resources)
    await drv.connect()
    got: list[tuple[str, Reading]] = []
    await drv.subscribe([drv.device.property("battery")], lambda n, r: got.append((n, r)))
    assert got and got[0][0] == "battery"
    assert got[0][1].error_code == "REQUEST_NOT_SUPPORTED"


# ---------------------------------------------------------------------------- outages
async def test_peripheral_disconnect_marks_offline_then_reconnect_resubscribes(
    add_peripheral: PeripheralFactory, resources: Resources, driver_for: MakeDriver
) -> None:
    spec = with_counter_interval(peripheral_spec("environmental-sensor"), 20)
    sensor = await add_peripheral(spec)
    drv = driver_for(env_device(mac=sensor.address), resources)
    log = StateLog(drv)
    await drv.connect()
    samples = drv.device.property("samples")
    got: list[Any] = []
    await drv.subscribe([samples], lambda n, r: got.append(r.value))
    async with asyncio.timeout(10):
        while len(got) < 3:
            await asyncio.sleep(0.02)

    await sensor.disconnect()
    await asyncio.wait_for(log.wait_for(DeviceState.OFFLINE), 5)
    with pytest.raises(DeviceUnavailable):
        await drv.read([samples])

    # What the runtime does: connect again (with backoff), then subscribe again.
    await drv.connect()
    assert drv.state() is DeviceState.ONLINE
    assert log.states == [DeviceState.ONLINE, DeviceState.OFFLINE, DeviceState.ONLINE]
    mark = len(got)
    await drv.subscribe([samples], lambda n, r: got.append(r.value))
    async with asyncio.timeout(10):
        while len(got) < mark + 3:
            await asyncio.sleep(0.02)
    resumed = got[mark:]
    assert resumed == list(range(resumed[0], resumed[0] + len(resumed)))
    assert len(sensor.connections) == 1


async def test_a_silent_peripheral_cannot_be_reconnected_until_it_advertises(
    env: SimPeripheral, resources: Resources, driver_for: MakeDriver
) -> None:
    drv = driver_for(env_device(mac=env.address, scanTimeout=0.3), resources)
    log = StateLog(drv)
    await drv.connect()
    await env.stop_advertising()
    await env.disconnect()
    await asyncio.wait_for(log.wait_for(DeviceState.OFFLINE), 5)
    with pytest.raises(DeviceUnavailable, match="not found"):
        await drv.connect()
    await env.start_advertising()
    await drv.connect()
    assert drv.state() is DeviceState.ONLINE


async def test_peripheral_gone_mid_read_raises_device_unavailable(
    env: SimPeripheral, resources: Resources, driver_for: MakeDriver
) -> None:
    drv = driver_for(env_device(mac=env.address), resources)
    await drv.connect()
    env.read_delay = 0.2
    reading = asyncio.create_task(drv.read([drv.device.property("battery")]))
    await asyncio.sleep(0.05)
    await env.disconnect()
    with pytest.raises(DeviceUnavailable):
        await reading
    assert drv.state() is DeviceState.OFFLINE


async def test_close_is_not_an_outage(
    env: SimPeripheral, resources: Resources, driver_for: MakeDriver
) -> None:
    drv = driver_for(env_device(mac=env.address), resources)
    log = StateLog(drv)
    await drv.connect()
    await drv.close()
    await asyncio.wait_for(env.wait_connected(False), 5)
    assert log.states == [DeviceState.ONLINE]
    assert resources.users(("ble-adapter", resources.extras["ble.backend"].name)) == 0


# ---------------------------------------------------------------------------- backends
async def test_backend_named_in_the_device_config(
    env: SimPeripheral, driver_for: MakeDriver
) -> None:
    device = env_device(mac=env.address, backend="simulators.ble:current_backend")
    drv = driver_for(device, Resources())  # nothing injected through the resources
    await drv.connect()
    assert (await drv.read([device.property("battery")]))["battery"].value == 97


async def test_a_backend_that_cannot_be_loaded_is_a_config_error(
    driver_for: MakeDriver,
) -> None:
    drv = driver_for(env_device(mac="C1:00:00:00:00:99", backend="no_such_pkg:thing"), Resources())
    with pytest.raises(ConfigError, match="cannot import no_such_pkg"):
        await drv.connect()


async def test_the_injected_backend_must_be_a_ble_backend(driver_for: MakeDriver) -> None:
    resources = Resources()
    resources.extras["ble.backend"] = "bumble"
    drv = driver_for(env_device(mac="C1:00:00:00:00:99"), resources)
    with pytest.raises(ConfigError, match=r"not a mappers\.ble\.BleBackend"):
        await drv.connect()


async def test_the_platform_backend_without_bluetooth_is_unavailable_not_broken(
    driver_for: MakeDriver,
) -> None:
    # No backend injected: bleak's platform backend (BlueZ over D-Bus on Linux).
    # This machine has no Bluetooth, so the device is unavailable and retried.
    drv = driver_for(env_device(mac="C1:00:00:00:00:99", scanTimeout=0.5), Resources())
    with pytest.raises(DeviceUnavailable):
        await drv.connect()


async def test_backend_arguments_reach_the_backend(
    radio: VirtualRadio, env: SimPeripheral, driver_for: MakeDriver
) -> None:
    backend = radio.backend()
    assert isinstance(backend, BleBackend)
    assert backend.kwargs == {"radio": radio}
    resources = Resources()
    resources.extras["ble.backend"] = backend
    drv = driver_for(env_device(mac=env.address), resources)
    await drv.connect()
    assert drv.connected


async def test_a_cancelled_read_leaves_the_connection_usable_and_close_clean(
    env: SimPeripheral, resources: Resources, driver_for: MakeDriver
) -> None:
    drv = driver_for(env_device(mac=env.address), resources)
    await drv.connect()
    battery = drv.device.property("battery")
    env.read_delay = 0.2
    reading = asyncio.create_task(drv.read([battery]))
    await asyncio.sleep(0.05)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    assert drv.state() is DeviceState.ONLINE
    await asyncio.sleep(0.25)  # the late answer arrives and is dropped
    env.read_delay = 0
    assert (await drv.read([battery]))["battery"].value == 97
    await drv.close()
    await asyncio.wait_for(env.wait_connected(False), 5)
