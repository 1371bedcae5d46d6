"""BLE throughput: the mapper's driver against a bare bleak client on the same link.

Both sides talk to the same simulated peripheral over the same virtual radio
(bumble's full host stack), in the same run, so the ratio isolates what the
driver adds: value decoding, readings, bookkeeping. Figures:

* reads/s, one property per request (``BleDriver.read`` vs ``read_gatt_char``);
* reads/s, a batch of four properties per cycle;
* notifications/s delivered to the runtime's sink (decoded readings) vs a bare
  ``start_notify`` callback that only stores the bytes.

Run: ``.venv/bin/python -m bench.ble_bench [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bleak import BleakClient, BleakScanner

from mapper_sdk.driver import Reading, Resources
from mapper_sdk.model import DeviceSpec, load_text
from mappers.ble import BleDriver
from simulators.ble import SimPeripheral, VirtualRadio, load_profile
from simulators.ble.bleak_backend import BumbleBleakScanner

COUNTER = "8e7f1001-5c3a-4b8e-9f1d-6d6170706b74"
TEMPERATURE = "00002a6e-0000-1000-8000-00805f9b34fb"
HUMIDITY = "00002a6f-0000-1000-8000-00805f9b34fb"
BATTERY = "00002a19-0000-1000-8000-00805f9b34fb"

DEVICE = """
apiVersion: devices.kubeedge.io/v1beta1
kind: DeviceModel
metadata: {name: bench-env}
spec:
  protocol: ble
  properties:
    - {name: temperature, type: FLOAT, accessMode: ReadOnly}
    - {name: humidity, type: FLOAT, accessMode: ReadOnly}
    - {name: battery, type: INT, accessMode: ReadOnly}
    - {name: samples, type: INT, accessMode: ReadOnly}
---
apiVersion: devices.kubeedge.io/v1beta1
kind: Device
metadata: {name: bench-env-1}
spec:
  deviceModelRef: {name: bench-env}
  protocol: {protocolName: ble, configData: {macAddress: "C0:FF:EE:00:00:01"}}
  properties:
    - name: temperature
      visitors:
        protocolName: ble
        configData:
          characteristicUUID: "2A6E"
          rawType: int16
          dataConverter: {orderOfOperations: [{operationType: Divide, operationValue: 100}]}
    - name: humidity
      visitors:
        protocolName: ble
        configData:
          characteristicUUID: "2A6F"
          dataConverter:
            startIndex: 1
            endIndex: 0
            orderOfOperations: [{operationType: Divide, operationValue: 100}]
    - name: battery
      visitors: {protocolName: ble, configData: {characteristicUUID: "2A19"}}
    - name: samples
      visitors:
        protocolName: ble
        configData: {characteristicUUID: "8e7f1001-5c3a-4b8e-9f1d-6d6170706b74",
                     rawType: uint32, notify: true}
"""


async def _rate(count: int, body: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    for _ in range(count):
        await body()
    return count / (time.perf_counter() - start)


async def _best(rounds: int, count: int, body: Callable[[], Awaitable[Any]]) -> float:
    await _rate(max(count // 10, 5), body)  # warm-up
    return max([await _rate(count, body) for _ in range(rounds)])


async def _notification_rate(
    sensor: SimPeripheral, received: list[Any], arrived: asyncio.Event, count: int
) -> float:
    """Push ``count`` notifications as fast as the peripheral can; rate until the last arrives."""
    received.clear()
    arrived.clear()
    start = time.perf_counter()
    for i in range(count):
        await sensor.notify(COUNTER, i)
    await arrived.wait()
    return count / (time.perf_counter() - start)


def scan_args(radio: VirtualRadio) -> Any:
    # bleak types the class methods' extra arguments for its own backends only.
    return {"radio": radio}


def _line(label: str, mapper: float, bare: float, unit: str) -> str:
    return (
        f"{label:<30} mapper {mapper:>8,.0f} {unit}   bare bleak {bare:>8,.0f} {unit}"
        f"   ratio {mapper / bare:.2f}x"
    )


def _quiet_spec(name: str, address: str) -> Any:
    """The environmental sensor without behaviours: only the benchmark's traffic."""
    profile = load_profile("environmental-sensor")
    data = profile.peripherals[0].model_dump()
    data.update(name=name, address=address)
    for service in data["services"]:
        for char in service["characteristics"]:
            char["behaviour"] = None
    return type(profile.peripherals[0]).model_validate(data)


async def run(quick: bool) -> int:
    reads = 200 if quick else 2000
    notes = 500 if quick else 5000
    rounds = 2 if quick else 5
    async with VirtualRadio() as radio:
        # Two identical peripherals on the same link: one for the mapper, one for bleak.
        mapped = await radio.add_peripheral(_quiet_spec("bench-mapped", "C0:FF:EE:00:00:01"))
        plain = await radio.add_peripheral(_quiet_spec("bench-plain", "C0:FF:EE:00:00:02"))
        backend = radio.backend()

        resources = Resources()
        radio.install(resources)
        device: DeviceSpec[Any, Any] = load_text(DEVICE, "<bench>", {"ble": BleDriver}).devices[0]
        driver = BleDriver(device, resources)
        await driver.connect()

        found = await BleakScanner.find_device_by_address(
            plain.address, timeout=5, backend=BumbleBleakScanner, **scan_args(radio)
        )
        assert found is not None
        bare = BleakClient(found, backend=backend.client_backend, radio=radio)
        await bare.connect()
        services = bare.services
        char = services.get_characteristic(TEMPERATURE)
        batch_chars = [
            services.get_characteristic(u) for u in (TEMPERATURE, HUMIDITY, BATTERY, COUNTER)
        ]

        async def bare_four() -> None:
            for c in batch_chars:
                assert c is not None
                await bare.read_gatt_char(c)

        assert char is not None
        try:
            one = [device.property("temperature")]
            four = list(device.properties)
            # Interleave the two sides so machine noise hits both alike.
            mapper_single, bare_single, mapper_batch, bare_batch = [], [], [], []
            for _ in range(rounds):
                mapper_single.append(await _best(1, reads, lambda: driver.read(one)))
                bare_single.append(await _best(1, reads, lambda: bare.read_gatt_char(char)))
                mapper_batch.append(await _best(1, reads // 4, lambda: driver.read(four)))
                bare_batch.append(await _best(1, reads // 4, bare_four))

            got_mapper: list[Reading] = []
            got_bare: list[bytearray] = []
            mapper_done, bare_done = asyncio.Event(), asyncio.Event()

            def on_reading(_name: str, reading: Reading) -> None:
                got_mapper.append(reading)
                if len(got_mapper) == notes:
                    mapper_done.set()

            def on_bytes(_char: Any, data: bytearray) -> None:
                got_bare.append(data)
                if len(got_bare) == notes:
                    bare_done.set()

            await driver.subscribe([device.property("samples")], on_reading)
            await bare.start_notify(COUNTER, on_bytes)
            mapper_notes, bare_notes = [], []
            for _ in range(rounds):
                mapper_notes.append(
                    await _notification_rate(mapped, got_mapper, mapper_done, notes)
                )
                bare_notes.append(await _notification_rate(plain, got_bare, bare_done, notes))
            values = [r.value for r in got_mapper]
            assert values == list(range(notes)), "notifications lost or out of order"
        finally:
            await bare.disconnect()
            await driver.close()

    print(f"BLE over the virtual radio (bumble LocalLink), best of {rounds} rounds each")
    print(_line("reads/s, 1 property per read", max(mapper_single), max(bare_single), "/s"))
    print(_line("properties/s, batches of 4", 4 * max(mapper_batch), 4 * max(bare_batch), "/s"))
    print(_line("notifications/s to the sink", max(mapper_notes), max(bare_notes), "/s"))
    ratios = [m / b for m, b in zip(mapper_single, bare_single, strict=True)]
    print(f"median single-read ratio over the rounds: {statistics.median(ratios):.2f}x")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ble_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short run (a few seconds)")
    args = parser.parse_args(argv)
    return asyncio.run(run(args.quick))


if __name__ == "__main__":
    raise SystemExit(main())
