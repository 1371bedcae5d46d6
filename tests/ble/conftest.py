"""Fixtures of the BLE tests: one virtual radio per session, peripherals per test."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mapper_sdk.driver import DeviceState, Resources
from mapper_sdk.model import DeviceSpec, load_text
from mappers.ble import BleDriver
from simulators.ble import PeripheralSpec, SimPeripheral, VirtualRadio, load_profile

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "ble"
COUNTER_UUID = "8e7f1001-5c3a-4b8e-9f1d-6d6170706b74"
POWER_UUID = "8e7f0001-5c3a-4b8e-9f1d-6d6170706b74"
STATUS_UUID = "8e7f0004-5c3a-4b8e-9f1d-6d6170706b74"

_numbers = itertools.count(1)


def fresh_identity() -> tuple[str, str]:
    """A peripheral name and random static address no other test uses."""
    n = next(_numbers)
    return f"sim-{n}", f"C1:00:00:00:{n // 256:02X}:{n % 256:02X}"


def peripheral_spec(template: str, **changes: Any) -> PeripheralSpec:
    """A built-in profile's first peripheral with a fresh name and address."""
    base = load_profile(template).peripherals[0]
    name, address = fresh_identity()
    data = base.model_dump()
    data.update(name=name, address=address, **changes)
    return PeripheralSpec.model_validate(data)


def with_counter_interval(spec: PeripheralSpec, interval_ms: float) -> PeripheralSpec:
    data = spec.model_dump()
    for service in data["services"]:
        for char in service["characteristics"]:
            if char["uuid"] == COUNTER_UUID:
                char["interval"] = interval_ms
    return PeripheralSpec.model_validate(data)


def device_from_yaml(text: str) -> DeviceSpec[Any, Any]:
    return load_text(text, "<test>", {"ble": BleDriver}).devices[0]


def env_device(
    *, mac: str | None = None, name: str | None = None, extra: str = "", **protocol: Any
) -> DeviceSpec[Any, Any]:
    """The environmental sensor's Device YAML (examples/ble) pointed at a peripheral."""
    text = (EXAMPLES / "env-sensor.yaml").read_text()
    config = {"scanTimeout": 2, "connectTimeout": 2, **protocol}
    if mac is not None:
        config["macAddress"] = mac
    if name is not None:
        config["name"] = name
    lines = "\n".join(f"      {k}: {v!r}" for k, v in config.items())
    text = text.replace(
        '      macAddress: "C0:FF:EE:00:00:01"\n      scanTimeout: 10\n      connectTimeout: 10',
        lines,
    )
    return device_from_yaml(text + extra)


def actuator_device(
    *, name: str, patch: dict[str, str] | None = None, **protocol: Any
) -> DeviceSpec[Any, Any]:
    """The LED actuator's Device YAML (examples/ble); ``patch`` replaces text in it."""
    text = (EXAMPLES / "led-actuator.yaml").read_text()
    for old, new in (patch or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    config = {"name": name, "scanTimeout": 2, "connectTimeout": 2, **protocol}
    lines = "\n".join(f"      {k}: {v!r}" for k, v in config.items())
    text = text.replace(
        "      name: led-actuator-1\n      scanTimeout: 10\n      connectTimeout: 10", lines
    )
    return device_from_yaml(text)


def scan_args(radio: VirtualRadio) -> Any:
    """Keyword arguments that send ``BleakScanner``'s class methods to ``radio``.

    Typed ``Any`` because bleak types those methods' extra arguments for its own
    platform backends only.
    """
    return {"radio": radio}


class StateLog:
    """Records a driver's state changes and lets a test wait for one."""

    def __init__(self, driver: BleDriver) -> None:
        self.states: list[DeviceState] = []
        self._changed = asyncio.Event()
        driver.on_state_change(self._on)

    def _on(self, state: DeviceState) -> None:
        self.states.append(state)
        self._changed.set()

    async def wait_for(self, state: DeviceState) -> None:
        while not self.states or self.states[-1] is not state:
            self._changed.clear()
            await self._changed.wait()


@pytest.fixture(scope="session")
async def radio() -> AsyncIterator[VirtualRadio]:
    async with VirtualRadio() as r:
        yield r


@pytest.fixture
def resources(radio: VirtualRadio) -> Resources:
    res = Resources()
    radio.install(res)
    return res


PeripheralFactory = Callable[[PeripheralSpec], Awaitable[SimPeripheral]]


@pytest.fixture
async def add_peripheral(radio: VirtualRadio) -> AsyncIterator[PeripheralFactory]:
    added: list[str] = []

    async def add(spec: PeripheralSpec) -> SimPeripheral:
        peripheral = await radio.add_peripheral(spec)
        added.append(spec.name)
        return peripheral

    yield add
    for name in added:
        await radio.remove_peripheral(name)


@pytest.fixture
async def env(add_peripheral: PeripheralFactory) -> SimPeripheral:
    return await add_peripheral(peripheral_spec("environmental-sensor"))


@pytest.fixture
async def actuator(add_peripheral: PeripheralFactory) -> SimPeripheral:
    return await add_peripheral(peripheral_spec("actuator"))


@pytest.fixture
async def driver_for() -> AsyncIterator[Callable[..., BleDriver]]:
    drivers: list[BleDriver] = []

    def make(device: DeviceSpec[Any, Any], resources: Resources) -> BleDriver:
        drv = BleDriver(device, resources)
        drivers.append(drv)
        return drv

    yield make
    for drv in drivers:
        await drv.close()
