"""The driver conformance kit (see :mod:`mapper_sdk.testing`)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from ..codec import values_equal
from ..driver import Capability, Driver, Quality, Reading, Resources
from ..errors import DeviceUnavailable, MapperError
from ..model import DeviceSpec, PropertySpec, PropertyType, Value

__all__ = ["ConformanceCase", "DriverConformance"]


@dataclass
class ConformanceCase:
    """What the kit needs to exercise a driver.

    Attributes:
        driver: the driver class.
        device: a device served by a running simulator.
        unreachable: the same kind of device with nothing listening.
        bad_property: a property of ``device`` that the simulator fails to read
            (an illegal address, a bad status); ``None`` to skip that check.
        write: ``(property, value)`` to write to ``device`` and read back.
        resources: the pool handed to drivers (a fresh one by default).
        connect_timeout: seconds allowed for ``connect``.
    """

    driver: type[Driver[Any, Any]]
    device: DeviceSpec[Any, Any]
    unreachable: DeviceSpec[Any, Any]
    bad_property: str | None = None
    write: tuple[str, Value] | None = None
    resources: Resources = field(default_factory=Resources)
    connect_timeout: float = 15.0


def _close_enough(a: Value | None, b: Value | None, ptype: PropertyType) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return values_equal(a, b, ptype)


class DriverConformance:
    """Base class of a driver's conformance tests. Provide ``conformance_case``."""

    @pytest.fixture
    async def driver(self, conformance_case: ConformanceCase) -> AsyncIterator[Driver[Any, Any]]:
        drv = conformance_case.driver(conformance_case.device, conformance_case.resources)
        await asyncio.wait_for(drv.connect(), conformance_case.connect_timeout)
        try:
            yield drv
        finally:
            await drv.close()

    @staticmethod
    def _good_props(case: ConformanceCase) -> list[PropertySpec[Any]]:
        return [p for p in case.device.properties if p.name != case.bad_property]

    @pytest.mark.asyncio
    async def test_init_does_no_io(self, conformance_case: ConformanceCase) -> None:
        # Constructing a driver for an unreachable device must not fail or block.
        drv = conformance_case.driver(conformance_case.unreachable, conformance_case.resources)
        await drv.close()

    @pytest.mark.asyncio
    async def test_connect_and_close_are_idempotent(
        self, conformance_case: ConformanceCase
    ) -> None:
        drv = conformance_case.driver(conformance_case.device, conformance_case.resources)
        await asyncio.wait_for(drv.connect(), conformance_case.connect_timeout)
        await asyncio.wait_for(drv.connect(), conformance_case.connect_timeout)
        await drv.close()
        await drv.close()
        # And it can connect again after a close.
        await asyncio.wait_for(drv.connect(), conformance_case.connect_timeout)
        await drv.close()

    @pytest.mark.asyncio
    async def test_batch_read_returns_every_property(
        self, conformance_case: ConformanceCase, driver: Driver[Any, Any]
    ) -> None:
        props = self._good_props(conformance_case)
        assert props, "the conformance device needs at least one readable property"
        readings = await driver.read(props)
        assert set(readings) == {p.name for p in props}
        for prop in props:
            reading = readings[prop.name]
            assert isinstance(reading, Reading)
            assert reading.quality is not Quality.BAD, (prop.name, reading)
            assert reading.timestamp > 0
            assert reading.value is not None

    @pytest.mark.asyncio
    async def test_empty_batch(self, driver: Driver[Any, Any]) -> None:
        assert await driver.read([]) == {}

    @pytest.mark.asyncio
    async def test_bad_property_gets_bad_quality(
        self, conformance_case: ConformanceCase, driver: Driver[Any, Any]
    ) -> None:
        if conformance_case.bad_property is None:
            pytest.skip("this conformance case names no bad property")
        readings = await driver.read(list(conformance_case.device.properties))
        assert set(readings) == {p.name for p in conformance_case.device.properties}
        bad = readings[conformance_case.bad_property]
        assert bad.quality is Quality.BAD
        assert bad.error, "a bad reading carries a readable error"
        for prop in self._good_props(conformance_case):
            assert readings[prop.name].quality is not Quality.BAD, (prop.name, readings[prop.name])

    @pytest.mark.asyncio
    async def test_write_then_read_back(
        self, conformance_case: ConformanceCase, driver: Driver[Any, Any]
    ) -> None:
        if conformance_case.write is None:
            pytest.skip("this conformance case names no write")
        assert Capability.WRITE in driver.capabilities
        name, value = conformance_case.write
        prop = conformance_case.device.property(name)
        echoed = await driver.write(prop, value)
        if echoed is not None:
            assert echoed.quality is not Quality.BAD
            assert _close_enough(echoed.value, value, prop.type), (echoed, value)
        readings = await driver.read([prop])
        assert readings[name].quality is not Quality.BAD
        assert _close_enough(readings[name].value, value, prop.type), (readings[name], value)

    @pytest.mark.asyncio
    async def test_unavailable_device_raises(self, conformance_case: ConformanceCase) -> None:
        drv = conformance_case.driver(conformance_case.unreachable, conformance_case.resources)
        try:
            with pytest.raises(DeviceUnavailable):
                await asyncio.wait_for(drv.connect(), conformance_case.connect_timeout + 15)
        finally:
            await drv.close()

    @pytest.mark.asyncio
    async def test_read_after_close_raises_mapper_error(
        self, conformance_case: ConformanceCase
    ) -> None:
        drv = conformance_case.driver(conformance_case.device, conformance_case.resources)
        await asyncio.wait_for(drv.connect(), conformance_case.connect_timeout)
        await drv.close()
        with pytest.raises(MapperError):
            await drv.read(self._good_props(conformance_case))

    @pytest.mark.asyncio
    async def test_close_cancels_everything(self, conformance_case: ConformanceCase) -> None:
        await asyncio.sleep(0)
        before = set(asyncio.all_tasks())
        drv = conformance_case.driver(conformance_case.device, conformance_case.resources)
        await asyncio.wait_for(drv.connect(), conformance_case.connect_timeout)
        await drv.read(self._good_props(conformance_case))
        if Capability.SUBSCRIBE in drv.capabilities:
            subscribed = [p for p in conformance_case.device.properties if drv.subscribable(p)]
            if subscribed:
                await drv.subscribe(subscribed, lambda name, reading: None)
        await drv.close()
        for _ in range(100):
            left = {t for t in asyncio.all_tasks() - before if not t.done()}
            if not left:
                break
            await asyncio.sleep(0.02)
        assert not left, f"tasks still running after close: {[t.get_name() for t in left]}"
