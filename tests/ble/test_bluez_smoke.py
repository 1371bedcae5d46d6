"""Smoke test of bleak's real BlueZ backend (the production path on Linux).

The driver is given no backend, so it uses bleak's platform backend, which
talks D-Bus to ``org.bluez``. A private dbus-daemon carries a stand-in BlueZ
(:mod:`tests.ble.bluez`) that bleak reaches through ``DBUS_SYSTEM_BUS_ADDRESS``:
discovery, connect, service resolution, reads, writes, notifications, a
refused write and a disconnect all go through bleak's BlueZ code unchanged.
"""

from __future__ import annotations

import asyncio
import struct
import sys
from pathlib import Path

import pytest

from mapper_sdk.driver import DeviceState, Reading, Resources
from mapper_sdk.errors import WriteRejected
from mappers.ble import BleDriver

from .bluez import Characteristic, FakeBlueZ, Peripheral, Service, dbus_daemon, private_bus
from .conftest import COUNTER_UUID, POWER_UUID, STATUS_UUID, actuator_device, env_device

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or dbus_daemon() is None,
    reason="bleak's BlueZ backend exists on Linux only, and this smoke test needs the "
    "dbus-daemon binary for its private bus (Debian: apt install dbus-daemon); the other "
    "BLE tests cover the driver on the simulated radio either way",
)


def sig(short: str) -> str:
    return f"0000{short.lower()}-0000-1000-8000-00805f9b34fb"


async def test_bleak_bluez_backend_reads_writes_and_notifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temperature = Characteristic(sig("2A6E"), ["read", "notify"], struct.pack("<h", 2150))
    samples = Characteristic(COUNTER_UUID, ["read", "notify"], struct.pack("<I", 7))
    sensor = Peripheral(
        "C2:00:00:00:00:01",
        "bluez-env-1",
        [
            Service(
                sig("181A"),
                [
                    temperature,
                    Characteristic(sig("2A6F"), ["read"], struct.pack("<H", 4550)),
                    samples,
                ],
            ),
            Service(sig("180F"), [Characteristic(sig("2A19"), ["read"], bytes([97]))]),
        ],
    )
    power = Characteristic(POWER_UUID, ["read", "write"], b"\x00")
    actuator = Peripheral(
        "C2:00:00:00:00:02",
        "bluez-led-1",
        [
            Service(
                "8e7f0000-5c3a-4b8e-9f1d-6d6170706b74",
                [
                    power,
                    Characteristic(
                        "8e7f0002-5c3a-4b8e-9f1d-6d6170706b74", ["read", "write"], bytes(4)
                    ),
                    Characteristic(
                        "8e7f0003-5c3a-4b8e-9f1d-6d6170706b74", ["read", "write"], b"\x10"
                    ),
                    Characteristic(sig("2A26"), ["read"], b"1.4.2"),
                    Characteristic(STATUS_UUID, ["read"], struct.pack("<H", 0)),
                ],
            )
        ],
    )
    async with private_bus(tmp_path) as address:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        async with FakeBlueZ(address, [sensor, actuator]) as bluez:
            env = BleDriver(env_device(mac=sensor.address), Resources())
            writable_status = {
                "refuses reads of it\n      type: INT\n      accessMode: ReadOnly": (
                    "refuses reads of it\n      type: INT\n      accessMode: ReadWrite"
                )
            }
            led = BleDriver(actuator_device(name=actuator.name, patch=writable_status), Resources())
            try:
                # Discovery by address and by name, connect, services resolved.
                await env.connect()
                await led.connect()
                assert env.state() is DeviceState.ONLINE
                assert led.state() is DeviceState.ONLINE
                assert "org.bluez.Adapter1.StartDiscovery" in bluez.calls
                assert "org.bluez.Device1.Connect" in bluez.calls

                # A batch read through ReadValue, decoded by the model.
                readings = await env.read(env.device.properties)
                assert readings["temperature"].value == pytest.approx(21.5)
                assert readings["humidity"].value == pytest.approx(45.5)
                assert readings["battery"].value == 97
                assert readings["samples"].value == 7

                # Notifications: StartNotify, then PropertiesChanged(Value).
                got: list[tuple[str, Reading]] = []
                await env.subscribe(
                    [env.device.property("samples")], lambda n, r: got.append((n, r))
                )
                for n in range(8, 13):
                    bluez.notify(samples, struct.pack("<I", n))
                async with asyncio.timeout(10):
                    while len(got) < 5:
                        await asyncio.sleep(0.01)
                assert [r.value for _, r in got] == [8, 9, 10, 11, 12]

                # A write through WriteValue, read back.
                reading = await led.write(led.device.property("power"), "ON")
                assert power.value != b"\x00"
                assert reading is not None and reading.value == "ON"

                # BlueZ refusing a write is a rejection with BlueZ's reason.
                with pytest.raises(WriteRejected, match="refused the write: WRITE_NOT_PERMITTED"):
                    await led.write(led.device.property("status"), 1)
            finally:
                await env.close()
                await led.close()
            assert "org.bluez.Device1.Disconnect" in bluez.calls
            assert not sensor.connected and not actuator.connected
