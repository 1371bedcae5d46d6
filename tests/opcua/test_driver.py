"""The OPC-UA driver against the simulator over real TCP: reads, writes, subscriptions, restarts."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from mapper_sdk.driver import DeviceState, Quality, Reading
from mapper_sdk.errors import DeviceUnavailable, NotSupported, WriteRejected
from mapper_sdk.model import DeviceSpec
from mappers.opcua import OpcUaDriver
from simulators.opcua import OpcUaSimulator

from .conftest import make_device

pytestmark = pytest.mark.timeout(60)


@asynccontextmanager
async def connected(device: DeviceSpec[Any, Any]) -> AsyncIterator[OpcUaDriver]:
    driver = OpcUaDriver(device)
    await driver.connect()
    try:
        yield driver
    finally:
        await driver.close()


async def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


class Collector:
    """A sink that keeps every reading per property."""

    def __init__(self) -> None:
        self.readings: dict[str, list[Reading]] = defaultdict(list)

    def __call__(self, name: str, reading: Reading) -> None:
        self.readings[name].append(reading)

    def values(self, name: str) -> list[Any]:
        return [r.value for r in self.readings[name]]


# ---------------------------------------------------------------------------- reads
EXPECTED: dict[str, Any] = {
    "vBool": True,
    "vSByte": -7,
    "vByte": 200,
    "vInt16": -300,
    "vUInt16": 60000,
    "vInt32": -70000,
    "vUInt32": 4000000000,
    "vInt64": -(2**40),
    "vUInt64": 2**63 + 5,
    "vFloat": 1.5,
    "vDouble": 2.25,
    "vString": "hello",
    "vText": "bonjour",
    "vBytes": b"\x00\x01\x02\xff",
    "vTime": 1714564800000,
    "vTimeText": "2024-05-01T12:00:00.250Z",
    "vDoubles": "[1.0,2.5,-3.0]",
    "vByteArray": b"\x00\x01\xff",
    "firmware": "2.4.1",
    "serial": b"MK-THERM-0042",
    "lastService": 1709280000000,
    "mode": "comfort",
}


async def test_reads_every_supported_type(sim: OpcUaSimulator) -> None:
    device = make_device(sim)
    async with connected(device) as driver:
        readings = await driver.read(device.properties)
    assert set(readings) == {p.name for p in device.properties}
    for name, expected in EXPECTED.items():
        reading = readings[name]
        assert reading.quality is Quality.GOOD, (name, reading)
        assert reading.value == expected, name
        assert type(reading.value) is type(expected), name
    for reading in readings.values():
        assert reading.timestamp > 0
        assert reading.source_timestamp is not None
        assert reading.source_timestamp <= reading.timestamp + 1000


async def test_one_read_call_per_batch(sim: OpcUaSimulator) -> None:
    device = make_device(sim)
    async with connected(device) as driver:
        sim.stats.reset()
        for _ in range(5):
            await driver.read(device.properties)
        # And a smaller batch is its own single call.
        await driver.read(device.properties[:3])
    assert sim.stats.read_calls == 6
    assert sim.stats.nodes_read == 5 * len(device.properties) + 3


async def test_bad_status_and_unknown_node_are_bad_readings(sim: OpcUaSimulator) -> None:
    device = make_device(
        sim,
        ["temperature", "humidity"],
        extra=[{"name": "ghost", "type": "double", "visitor": {"nodeID": "ns=2;s=NoSuchNode"}}],
    )
    async with connected(device) as driver:
        await sim.set_bad_status("humidity", "BadSensorFailure")
        readings = await driver.read(device.properties)
        assert readings["temperature"].quality is Quality.GOOD
        humidity = readings["humidity"]
        assert humidity.quality is Quality.BAD
        assert humidity.value is None
        assert humidity.error_code == "BadSensorFailure"
        assert "BadSensorFailure" in (humidity.error or "")
        assert readings["ghost"].error_code == "BadNodeIdUnknown"
        await sim.clear_bad_status("humidity")
        assert (await driver.read(device.properties[1:2]))["humidity"].quality is Quality.GOOD


async def test_browse_name_is_resolved_on_connect(sim: OpcUaSimulator) -> None:
    extra = [
        {"name": "byPath", "type": "double", "visitor": {"browseName": "2:Thermostat/2:setpoint"}},
        {"name": "lost", "type": "double", "visitor": {"browseName": "2:Thermostat/2:nothing"}},
    ]
    device = make_device(sim, ["setpoint"], extra=extra)
    async with connected(device) as driver:
        sim.stats.reset()
        readings = await driver.read(device.properties)
        assert sim.stats.read_calls == 1
        assert readings["byPath"].value == readings["setpoint"].value
        assert readings["lost"].quality is Quality.BAD
        assert readings["lost"].error_code == "BadNoMatch"


async def test_read_without_connection_raises(sim: OpcUaSimulator) -> None:
    device = make_device(sim, ["setpoint"])
    driver = OpcUaDriver(device)
    with pytest.raises(DeviceUnavailable):
        await driver.read(device.properties)


# ---------------------------------------------------------------------------- writes
WRITES: list[tuple[str, Any]] = [
    ("setpoint", 23.5),
    ("vDouble", -7.75),
    ("vFloat", 0.5),
    ("vSByte", -128),
    ("vByte", 17),
    ("vInt16", -1234),
    ("vUInt16", 65535),
    ("vInt32", 2**31 - 1),
    ("vUInt32", 1),
    ("vInt64", -(2**63)),
    ("vUInt64", 2**64 - 1),
    ("vBool", False),
    ("vString", "written"),
    ("vText", "hola"),
    ("vBytes", b"\x10\x20"),
    ("vTime", 1700000000123),
]


async def test_writes_use_the_node_type_and_read_back(sim: OpcUaSimulator) -> None:
    names = [name for name, _ in WRITES]
    device = make_device(sim, names)
    originals = {name: sim.value(name) for name in names}
    try:
        async with connected(device) as driver:
            for name, value in WRITES:
                echoed = await driver.write(device.property(name), value)
                assert echoed is not None
                assert echoed.quality is Quality.GOOD, (name, echoed)
                assert echoed.value == value, name
    finally:
        for name, value in originals.items():
            await sim.set_value(name, value)


async def test_data_type_is_read_once(sim: OpcUaSimulator) -> None:
    device = make_device(sim, ["setpoint"])
    prop = device.property("setpoint")
    async with connected(device) as driver:
        sim.stats.reset()
        await driver.write(prop, 20.0)
        await driver.write(prop, 21.0)
        await driver.write(prop, 21.5)
    # One DataType read, then one read-back per write.
    assert sim.stats.write_calls == 3
    assert sim.stats.read_calls == 1 + 3


async def test_rejected_writes_carry_the_status(sim: OpcUaSimulator) -> None:
    device = make_device(sim, ["temperature", "setpoint", "vByte", "vDouble"])
    async with connected(device) as driver:
        with pytest.raises(WriteRejected) as info:
            await driver.write(device.property("temperature"), 30.0)
        assert info.value.code == "BadNotWritable"

        sim.refuse_writes("setpoint", "BadOutOfService")
        with pytest.raises(WriteRejected) as info:
            await driver.write(device.property("setpoint"), 22.0)
        assert info.value.code == "BadOutOfService"
        assert "BadOutOfService" in info.value.reason
        sim.accept_writes("setpoint")

        # Values that cannot fit the node's type are refused before any I/O.
        await driver.write(device.property("vDouble"), 1.0)  # learns the type
        calls = sim.stats.write_calls
        with pytest.raises(WriteRejected) as info:
            await driver.write(device.property("vByte"), 300)
        assert info.value.code == "BadOutOfRange"
        with pytest.raises(WriteRejected) as info:
            await driver.write(device.property("vDouble"), "warm")
        assert info.value.code == "BadTypeMismatch"
        assert sim.stats.write_calls == calls
        await sim.set_value("vDouble", 2.25)


# ---------------------------------------------------------------------------- subscriptions
async def test_subscription_delivers_initial_values_and_every_change(
    sim: OpcUaSimulator,
) -> None:
    device = make_device(sim, ["fast", "setpoint"], visitors={"fast": {"samplingInterval": 50}})
    sink = Collector()
    async with connected(device) as driver:
        assert all(driver.subscribable(p) for p in device.properties)
        await driver.subscribe(device.properties, sink)
        await wait_until(lambda: len(sink.readings["fast"]) >= 12)
        assert sink.values("setpoint") == [sim.value("setpoint")]  # the initial value
        await sim.set_value("setpoint", 24.0)
        await wait_until(lambda: sink.values("setpoint")[-1:] == [24.0])
        await sim.set_value("setpoint", 21.5)
    fast = sink.values("fast")
    assert all(b - a == 1 for a, b in itertools.pairwise(fast)), fast
    assert all(r.source_timestamp for r in sink.readings["fast"])


async def test_subscription_applies_the_deadband(sim: OpcUaSimulator) -> None:
    device = make_device(sim, ["setpoint"], visitors={"setpoint": {"deadband": 1.0}})
    sink = Collector()
    async with connected(device) as driver:
        await driver.subscribe(device.properties, sink)
        await wait_until(lambda: len(sink.readings["setpoint"]) == 1)
        start = sink.values("setpoint")[0]
        await sim.set_value("setpoint", start + 0.4)  # inside the deadband: not reported
        await sim.set_value("setpoint", start + 2.0)
        await wait_until(lambda: len(sink.readings["setpoint"]) == 2)
        assert sink.values("setpoint") == [start, start + 2.0]
        await sim.set_value("setpoint", start)


async def test_subscription_reports_a_bad_status(sim: OpcUaSimulator) -> None:
    device = make_device(sim, ["alarmCount"])
    sink = Collector()
    async with connected(device) as driver:
        await driver.subscribe(device.properties, sink)
        await wait_until(lambda: len(sink.readings["alarmCount"]) == 1)
        await sim.set_bad_status("alarmCount", "BadDeviceFailure")
        await wait_until(lambda: len(sink.readings["alarmCount"]) == 2)
        bad = sink.readings["alarmCount"][-1]
        assert bad.quality is Quality.BAD
        assert bad.value is None
        assert bad.error_code == "BadDeviceFailure"
        await sim.clear_bad_status("alarmCount")
        await wait_until(lambda: len(sink.readings["alarmCount"]) == 3)
        assert sink.readings["alarmCount"][-1].quality is Quality.GOOD
        assert sink.values("alarmCount")[-1] == 0


async def test_dropped_subscription_is_recreated(sim: OpcUaSimulator) -> None:
    device = make_device(sim, ["fast"], visitors={"fast": {"samplingInterval": 100}})
    sink = Collector()
    async with connected(device) as driver:
        await driver.subscribe(device.properties, sink)
        await wait_until(lambda: len(sink.readings["fast"]) >= 2)
        created = sim.stats.subscriptions_created
        await sim.drop_subscriptions()
        await wait_until(lambda: sim.stats.subscriptions_created > created, timeout=15)
        seen = len(sink.readings["fast"])
        await wait_until(lambda: len(sink.readings["fast"]) >= seen + 3)
        assert driver.state() is DeviceState.ONLINE


async def test_subscription_survives_a_server_restart(sim: OpcUaSimulator) -> None:
    device = make_device(sim, ["fast", "setpoint"], visitors={"fast": {"samplingInterval": 100}})
    sink = Collector()
    states: list[DeviceState] = []
    driver = OpcUaDriver(device)
    driver.on_state_change(states.append)
    await driver.connect()
    try:
        await driver.subscribe(device.properties, sink)
        await wait_until(lambda: len(sink.readings["fast"]) >= 2)

        await sim.restart(downtime=0.5)
        await wait_until(lambda: driver.state() is DeviceState.OFFLINE)
        with pytest.raises(DeviceUnavailable):
            await driver.read(device.properties)

        # What the runtime does: close, connect again with backoff, subscribe again.
        await driver.close()
        async with asyncio.timeout(15):
            while True:
                try:
                    await driver.connect()
                    break
                except DeviceUnavailable:
                    await asyncio.sleep(0.2)
        await driver.subscribe(device.properties, sink)
        seen = len(sink.readings["fast"])
        await wait_until(lambda: len(sink.readings["fast"]) >= seen + 3)
        assert states == [DeviceState.ONLINE, DeviceState.OFFLINE, DeviceState.ONLINE]
        # One subscription supervisor: the first session's is gone.
        assert len(supervisors(device)) == 1
    finally:
        await driver.close()
    assert supervisors(device) == []


def supervisors(device: DeviceSpec[Any, Any]) -> list[asyncio.Task[Any]]:
    name = f"opcua[{device.id}].subscription"
    return [t for t in asyncio.all_tasks() if t.get_name() == name and not t.done()]


async def test_connect_rebuilds_a_lost_session_without_close(sim: OpcUaSimulator) -> None:
    device = make_device(sim, ["setpoint"])
    async with connected(device) as driver:
        await sim.restart(downtime=0.2)
        await wait_until(lambda: driver.state() is DeviceState.OFFLINE)
        async with asyncio.timeout(15):
            while True:
                try:
                    await driver.connect()
                    break
                except DeviceUnavailable:
                    await asyncio.sleep(0.2)
        assert (await driver.read(device.properties))["setpoint"].quality is Quality.GOOD


async def test_no_subscription_service_falls_back_to_polling(
    sim: OpcUaSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    sim.subscriptions_enabled = False
    device = make_device(sim, ["setpoint", "fast"])
    caplog.set_level(logging.WARNING, logger="mappers.opcua.driver")
    async with connected(device) as driver:
        for _ in range(2):
            with pytest.raises(NotSupported):
                await driver.subscribe(device.properties, Collector())
        said = [r for r in caplog.records if "subscriptions-unavailable" in r.getMessage()]
        assert len(said) == 1
        assert not any(driver.subscribable(p) for p in device.properties)
        readings = await driver.read(device.properties)
        assert all(r.quality is Quality.GOOD for r in readings.values())


async def test_poll_mode_is_not_subscribable(sim: OpcUaSimulator) -> None:
    device = make_device(sim, ["setpoint", "fast"], visitors={"fast": {"mode": "poll"}})
    driver = OpcUaDriver(device)
    assert driver.subscribable(device.property("setpoint"))
    assert not driver.subscribable(device.property("fast"))
