"""The Modbus driver against the simulator over real TCP: reads, coalescing, faults, writes."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mapper_sdk.driver import DeviceState, Quality, Resources
from mapper_sdk.errors import ConfigError, DeviceTimeout, DeviceUnavailable, WriteRejected
from mapper_sdk.model import DeviceSpec
from mapper_sdk.testing import free_port
from mappers.modbus import ModbusDriver
from simulators.modbus import ModbusSimulator

from .conftest import make_device, prop, tcp


@pytest.fixture
async def open_drivers() -> AsyncIterator[list[ModbusDriver]]:
    """Drivers a test connects; all closed at the end."""
    drivers: list[ModbusDriver] = []
    yield drivers
    for drv in drivers:
        await drv.close()


async def connected(
    drivers: list[ModbusDriver],
    device: DeviceSpec[Any, Any],
    resources: Resources | None = None,
) -> ModbusDriver:
    drv = ModbusDriver(device, resources)
    drivers.append(drv)
    await drv.connect()
    return drv


def values(readings: dict[str, Any]) -> dict[str, Any]:
    return {name: r.value for name, r in readings.items()}


PLANT_PROPS = [
    *[prop(f"h{i}", "int", offset=i, register="HoldingRegister") for i in range(10)],
    prop("f32", "float", register="HoldingRegister", offset=12, limit=2),
    prop("far", "int", register="HoldingRegister", offset=40),
    prop("c0", "boolean", register="CoilRegister", offset=0),
    prop("c1", "boolean", register="CoilRegister", offset=1),
    prop("c5", "boolean", register="CoilRegister", offset=5),
    prop("d0", "boolean", "ReadOnly", register="DiscreteInputRegister", offset=0),
    prop("in0", "int", "ReadOnly", register="InputRegister", offset=0, rawType="int16"),
    prop("in1", "int", "ReadOnly", register="InputRegister", offset=1),
]


# ---------------------------------------------------------------------------- coalescing
async def test_batch_is_coalesced_per_table(
    sim: ModbusSimulator, open_drivers: list[ModbusDriver]
) -> None:
    device = make_device(tcp(sim), PLANT_PROPS)
    drv = await connected(open_drivers, device)
    for name in ("h0", "h1", "f32", "c0", "c1"):
        sim.set(1, name, sim.point(1, name).value)  # undo earlier tests' writes
    sim.reset_counts()
    readings = await drv.read(device.properties)
    assert all(r.quality is Quality.GOOD for r in readings.values()), readings
    got = values(readings)
    assert [got[f"h{i}"] for i in range(2)] == [100, 101]
    assert got["f32"] == 1.5
    assert got["far"] == 7
    assert (got["c0"], got["c1"], got["c5"], got["d0"]) == (False, True, True, True)
    assert (got["in0"], got["in1"]) == (-5, 65535)
    # holding 0..13 (gap 10-11 bridged), holding 40 (gap 26 > maxGap 8),
    # coils 0..5, discrete 0, input 0..1: five requests instead of 18.
    assert sim.request_count(unit=1) == 5
    assert sim.request_count(unit=1, function=3) == 2
    # The plan is cached: the same batch plans to the very same requests.
    names = tuple(p.name for p in device.properties)
    assert drv.planner.plan(names) is drv.planner.plan(names)
    sim.reset_counts()
    await drv.read(device.properties)
    assert sim.request_count(unit=1) == 5


@pytest.mark.parametrize(
    ("extra", "holding_requests"),
    [
        ({"maxRegistersPerRequest": 4}, 5),  # 0-3, 4-7, 8-9, 12-13, 40
        ({"maxGap": 0}, 3),  # 0-9, 12-13, 40
        ({"maxGap": 30}, 1),  # 0-40 in one read
    ],
)
async def test_request_limits(
    sim: ModbusSimulator,
    open_drivers: list[ModbusDriver],
    extra: dict[str, int],
    holding_requests: int,
) -> None:
    device = make_device(tcp(sim, **extra), PLANT_PROPS[:12])
    drv = await connected(open_drivers, device)
    readings = await drv.read(device.properties)
    assert all(r.ok for r in readings.values())
    assert sim.request_count(unit=1, function=3) == holding_requests


async def test_only_due_properties_are_read(
    sim: ModbusSimulator, open_drivers: list[ModbusDriver]
) -> None:
    device = make_device(tcp(sim), PLANT_PROPS)
    drv = await connected(open_drivers, device)
    some = [device.property("far"), device.property("c5")]
    readings = await drv.read(some)
    assert set(readings) == {"far", "c5"}
    assert sim.request_count(unit=1) == 2


# ---------------------------------------------------------------------------- exceptions
STRICT_PROPS = [
    prop("a", "int", register="HoldingRegister", offset=0),
    prop("b", "int", register="HoldingRegister", offset=1),
    prop("c", "int", register="HoldingRegister", offset=2),
    prop("d", "int", register="HoldingRegister", offset=5),
    prop("e", "int", register="HoldingRegister", offset=6),
]
GHOST = prop("ghost", "int", register="HoldingRegister", offset=3)


async def test_refused_property_is_isolated_and_remembered(
    sim: ModbusSimulator, open_drivers: list[ModbusDriver]
) -> None:
    device = make_device(tcp(sim, unit=2), [*STRICT_PROPS, GHOST])
    drv = await connected(open_drivers, device)
    readings = await drv.read(device.properties)
    ghost = readings.pop("ghost")
    assert ghost.quality is Quality.BAD
    assert ghost.error_code == 2
    assert "illegal data address" in (ghost.error or "")
    assert values(readings) == {"a": 200, "b": 201, "c": 202, "d": 205, "e": 206}
    # One merged read refused, then six single reads.
    assert sim.request_count(unit=2) == 7
    sim.reset_counts()
    readings = await drv.read(device.properties)
    assert readings["ghost"].error_code == 2
    assert values(readings)["e"] == 206
    # Remembered: a-c, d-e (the bridge over 3-4 is not built again) and ghost alone.
    assert sim.request_count(unit=2) == 3


async def test_refused_bridge_is_not_built_again(
    sim: ModbusSimulator, open_drivers: list[ModbusDriver]
) -> None:
    device = make_device(tcp(sim, unit=2), STRICT_PROPS)
    drv = await connected(open_drivers, device)
    readings = await drv.read(device.properties)
    assert all(r.quality is Quality.GOOD for r in readings.values())
    assert sim.request_count(unit=2) == 6
    sim.reset_counts()
    readings = await drv.read(device.properties)
    assert values(readings) == {"a": 200, "b": 201, "c": 202, "d": 205, "e": 206}
    assert sim.request_count(unit=2) == 2


async def test_busy_device_is_not_split(
    sim: ModbusSimulator, open_drivers: list[ModbusDriver]
) -> None:
    device = make_device(tcp(sim), PLANT_PROPS[:10])
    drv = await connected(open_drivers, device)
    fault = sim.add_fault(unit=1, table="holding", address=4, count=1, exception=6)
    readings = await drv.read(device.properties)
    assert {r.error_code for r in readings.values()} == {6}
    assert all("server device busy" in (r.error or "") for r in readings.values())
    assert sim.request_count(unit=1) == 1
    sim.remove_fault(fault)
    readings = await drv.read(device.properties)
    assert all(r.quality is Quality.GOOD for r in readings.values())
    assert drv.planner.cuts(drv.planner.single("h0").table) == frozenset()


async def test_injected_exception_on_one_address(
    sim: ModbusSimulator, open_drivers: list[ModbusDriver]
) -> None:
    device = make_device(tcp(sim), PLANT_PROPS[:10])
    drv = await connected(open_drivers, device)
    sim.add_fault(unit=1, table="holding", address=7, count=1, exception=2)
    readings = await drv.read(device.properties)
    assert readings["h7"].error_code == 2
    assert sum(r.quality is Quality.GOOD for r in readings.values()) == 9
    sim.reset_counts()
    await drv.read(device.properties)
    assert sim.request_count(unit=1) == 3  # h0-h6, h7 alone, h8-h9


async def test_unknown_unit_behind_gateway_is_unavailable(
    sim: ModbusSimulator, open_drivers: list[ModbusDriver]
) -> None:
    device = make_device(tcp(sim, unit=99), PLANT_PROPS[:2])
    drv = await connected(open_drivers, device)
    with pytest.raises(DeviceUnavailable, match="gateway target device failed to respond"):
        await drv.read(device.properties)


async def test_slow_device_times_out(
    sim: ModbusSimulator, open_drivers: list[ModbusDriver]
) -> None:
    device = make_device(tcp(sim, timeout=100), PLANT_PROPS[:2])
    drv = await connected(open_drivers, device)
    fault = sim.add_fault(unit=1, delay=0.4)
    with pytest.raises(DeviceTimeout, match=r"did not answer within 0\.1 s"):
        await drv.read(device.properties)
    sim.remove_fault(fault)
    await asyncio.sleep(0.4)  # let the late answer arrive (and be discarded)
    readings = await drv.read(device.properties)
    assert values(readings) == {"h0": 100, "h1": 101}


async def test_non_finite_float_is_a_bad_reading(
    sim: ModbusSimulator, open_drivers: list[ModbusDriver]
) -> None:
    device = make_device(tcp(sim), PLANT_PROPS[:11])
    drv = await connected(open_drivers, device)
    sim.set(1, "f32", math.nan)
    try:
        readings = await drv.read(device.properties)
    finally:
        sim.set(1, "f32", 1.5)
    assert readings["f32"].quality is Quality.BAD
    assert "finite" in (readings["f32"].error or "")
    assert readings["h9"].value == 109


# ---------------------------------------------------------------------------- writes
WRITE_PROPS = [
    prop("h3", "int", register="HoldingRegister", offset=3),
    prop("f32", "float", register="HoldingRegister", offset=12, limit=2, rawType="float32"),
    prop("label", "string", register="HoldingRegister", offset=50, limit=4),
    prop("c6", "boolean", register="CoilRegister", offset=6),
    prop("coils", "int", register="CoilRegister", offset=0, limit=4),
    prop("bit2", "boolean", register="HoldingRegister", offset=41, bit=2),
    prop("scaled", "float", register="HoldingRegister", offset=4, scale=0.5, valueOffset=-10),
    prop("ro", "int", "ReadOnly", register="HoldingRegister", offset=60),
    prop("in1", "int", register="InputRegister", offset=1),
    prop("d0", "boolean", register="DiscreteInputRegister", offset=0),
    prop("h9", "int", register="HoldingRegister", offset=9),
    prop("far", "int", register="HoldingRegister", offset=40),
]


@pytest.mark.parametrize(
    ("name", "value", "point", "expected", "function"),
    [
        ("h3", 4242, "h3", 4242, 6),
        ("f32", -2.25, "f32", -2.25, 16),
        ("label", "fan", "label", "fan", 16),
        ("c6", True, "c6", True, 5),
        ("scaled", 21.0, "h4", 62, 6),  # (21 - -10) / 0.5
    ],
)
async def test_write_reads_back(
    sim: ModbusSimulator,
    open_drivers: list[ModbusDriver],
    name: str,
    value: Any,
    point: str,
    expected: Any,
    function: int,
) -> None:
    device = make_device(tcp(sim), WRITE_PROPS)
    drv = await connected(open_drivers, device)
    echoed = await drv.write(device.property(name), value)
    assert echoed is not None
    assert echoed.quality is Quality.GOOD
    assert echoed.value == value
    assert sim.get(1, point) == expected
    assert sim.request_count(unit=1, function=function) == 1
    readings = await drv.read([device.property(name)])
    assert readings[name].value == value


async def test_multi_coil_write_uses_fc15(
    sim: ModbusSimulator, open_drivers: list[ModbusDriver]
) -> None:
    device = make_device(tcp(sim), WRITE_PROPS)
    drv = await connected(open_drivers, device)
    echoed = await drv.write(device.property("coils"), 0b1001)
    assert echoed is not None and echoed.value == 0b1001
    assert [sim.get(1, f"c{i}") for i in range(4)] == [True, False, False, True]
    assert sim.request_count(unit=1, function=15) == 1


async def test_bit_write_keeps_the_other_bits(
    sim: ModbusSimulator, open_drivers: list[ModbusDriver]
) -> None:
    device = make_device(tcp(sim), WRITE_PROPS)
    drv = await connected(open_drivers, device)
    sim.set(1, "flags", 0b1010_1010_1010)
    echoed = await drv.write(device.property("bit2"), True)
    assert echoed is not None and echoed.value is True
    assert sim.get(1, "flags") == 0b1010_1010_1110
    await drv.write(device.property("bit2"), False)
    assert sim.get(1, "flags") == 0b1010_1010_1010
    # Read-modify-write: FC3 then FC6, twice.
    assert sim.request_count(unit=1, function=6) == 2


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("in1", 5, "InputRegister, which Modbus cannot write"),
        ("d0", True, "DiscreteInputRegister, which Modbus cannot write"),
        ("ro", 5, "ReadOnly"),
        ("h9", 70000, "out of range for uint16"),
        ("h9", -1, "out of range for uint16"),
        ("label", "far too long", "does not fit in 4 registers"),
        ("coils", 16, "not a bit mask of 4 coils"),
        ("scaled", 1e9, "out of range"),
    ],
)
async def test_write_is_rejected_before_any_io(
    sim: ModbusSimulator,
    open_drivers: list[ModbusDriver],
    name: str,
    value: Any,
    reason: str,
) -> None:
    device = make_device(tcp(sim), WRITE_PROPS)
    drv = await connected(open_drivers, device)
    with pytest.raises(WriteRejected, match=reason):
        await drv.write(device.property(name), value)
    assert sim.request_count() == 0


async def test_rejections_need_no_connection(sim: ModbusSimulator) -> None:
    device = make_device(tcp(sim), WRITE_PROPS)
    drv = ModbusDriver(device)
    with pytest.raises(WriteRejected, match="ReadOnly"):
        await drv.write(device.property("ro"), 1)
    with pytest.raises(DeviceUnavailable, match="not connected"):
        await drv.write(device.property("h9"), 1)


async def test_device_refusing_a_write_is_a_rejection_with_its_code(
    sim: ModbusSimulator, open_drivers: list[ModbusDriver]
) -> None:
    # "far" is a read-only register at the device although the model says ReadWrite.
    device = make_device(tcp(sim), WRITE_PROPS)
    drv = await connected(open_drivers, device)
    with pytest.raises(WriteRejected, match="illegal data address") as info:
        await drv.write(device.property("far"), 8)
    assert info.value.code == 2
    sim.add_fault(unit=1, table="holding", address=9, access="write", exception=3)
    with pytest.raises(WriteRejected) as info:
        await drv.write(device.property("h9"), 8)
    assert info.value.code == 3
    assert sim.get(1, "far") == 7


# ---------------------------------------------------------------------------- connection
async def test_reconnect_after_the_simulator_restarts(
    private_sim: ModbusSimulator, open_drivers: list[ModbusDriver]
) -> None:
    sim = private_sim
    device = make_device(tcp(sim, timeout=300), PLANT_PROPS[:3])
    drv = await connected(open_drivers, device)
    states: list[DeviceState] = []
    drv.on_state_change(states.append)
    assert (await drv.read(device.properties))["h0"].value == 100
    await sim.stop()
    for _ in range(100):  # the client notices the closed socket
        if states:
            break
        await asyncio.sleep(0.01)
    assert states == [DeviceState.OFFLINE]
    with pytest.raises(DeviceUnavailable):
        await drv.read(device.properties)
    with pytest.raises(DeviceUnavailable, match="cannot connect"):
        await drv.connect()
    await sim.start()
    await drv.connect()
    assert drv.state() is DeviceState.ONLINE
    assert (await drv.read(device.properties))["h2"].value == 102


async def test_dropped_connection(
    private_sim: ModbusSimulator, open_drivers: list[ModbusDriver]
) -> None:
    sim = private_sim
    device = make_device(tcp(sim, timeout=300), PLANT_PROPS[:3])
    drv = await connected(open_drivers, device)
    fault = sim.add_fault(unit=1, table="holding", address=1, drop=True)
    with pytest.raises(DeviceUnavailable):
        await drv.read(device.properties)
    assert drv.state() is DeviceState.OFFLINE
    sim.remove_fault(fault)
    await drv.close()
    await drv.connect()
    assert (await drv.read(device.properties))["h1"].value == 101


async def test_units_share_one_connection(
    private_sim: ModbusSimulator, open_drivers: list[ModbusDriver]
) -> None:
    sim = private_sim
    resources = Resources()
    devices = [
        make_device(tcp(sim, unit=unit), PLANT_PROPS[:3], name=f"unit-{unit}") for unit in (1, 2, 3)
    ]
    drivers = [await connected(open_drivers, d, resources) for d in devices]
    assert sim.connections == 1
    assert resources.users(("modbus", "tcp", sim.host, str(sim.port))) == 3
    for _ in range(3):
        results = await asyncio.gather(
            *(drv.read(d.properties) for drv, d in zip(drivers, devices, strict=True))
        )
        firsts = [r["h0"].value for r in results]
        assert firsts == [100, 200, 300]
    for unit in (1, 2, 3):
        assert sim.request_count(unit=unit) == 3
    for drv in drivers:
        await drv.close()
    assert resources.users(("modbus", "tcp", sim.host, str(sim.port))) == 0
    for _ in range(100):
        if sim.connections == 0:
            break
        await asyncio.sleep(0.01)
    assert sim.connections == 0


async def test_unreachable_device(open_drivers: list[ModbusDriver]) -> None:
    device = make_device({"ip": "127.0.0.1", "port": free_port(), "timeout": 300}, PLANT_PROPS[:1])
    drv = ModbusDriver(device)
    with pytest.raises(DeviceUnavailable, match="cannot connect"):
        await drv.connect()
    await drv.close()
    with pytest.raises(DeviceUnavailable, match="not connected"):
        await drv.read(device.properties)


# ---------------------------------------------------------------------------- RTU framing
async def rtu_round_trip(
    sim: ModbusSimulator, drivers: list[ModbusDriver], connection: dict[str, Any]
) -> None:
    device = make_device(connection, PLANT_PROPS)
    drv = await connected(drivers, device)
    sim.set(1, "h3", 103)
    readings = await drv.read(device.properties)
    assert all(r.quality is Quality.GOOD for r in readings.values()), readings
    assert readings["in0"].value == -5
    assert readings["h3"].value == 103
    echoed = await drv.write(device.property("h3"), 3003)
    assert echoed is not None and echoed.value == 3003
    assert sim.get(1, "h3") == 3003
    sim.set(1, "h3", 103)


async def test_rtu_framing_over_tcp(
    plant_rtu: ModbusSimulator, open_drivers: list[ModbusDriver]
) -> None:
    await rtu_round_trip(plant_rtu, open_drivers, tcp(plant_rtu))


async def test_rtu_serial_client(
    plant_rtu: ModbusSimulator, open_drivers: list[ModbusDriver]
) -> None:
    # pyserial's socket:// URL runs the serial (RTU) client over TCP to the simulator.
    url = f"socket://{plant_rtu.host}:{plant_rtu.port}"
    connection = {
        "serialName": url,
        "baudRate": 9600,
        "parity": "Even",
        "slaveID": 1,
        "rs485Enabled": True,
    }
    await rtu_round_trip(plant_rtu, open_drivers, connection)


async def test_serial_line_settings_must_agree(
    plant_rtu: ModbusSimulator, open_drivers: list[ModbusDriver]
) -> None:
    url = f"socket://{plant_rtu.host}:{plant_rtu.port}"
    resources = Resources()
    first = make_device({"serialName": url, "slaveID": 1}, PLANT_PROPS[:1], name="first")
    second = make_device(
        {"serialName": url, "slaveID": 3, "baudRate": 9600}, PLANT_PROPS[:1], name="second"
    )
    await connected(open_drivers, first, resources)
    with pytest.raises(ConfigError, match="same settings"):
        await connected(open_drivers, second, resources)
    assert resources.users(("modbus", "rtu", url)) == 1


async def test_cancelled_rtu_read_resets_the_bus(
    plant_rtu: ModbusSimulator, open_drivers: list[ModbusDriver]
) -> None:
    # Without transaction ids the late answer could be mistaken for the next one's.
    device = make_device(tcp(plant_rtu), PLANT_PROPS[:2])
    drv = await connected(open_drivers, device)
    fault = plant_rtu.add_fault(unit=1, delay=0.3)
    try:
        task = asyncio.create_task(drv.read(device.properties))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        plant_rtu.remove_fault(fault)
    with pytest.raises(DeviceUnavailable, match="not connected"):
        await drv.read(device.properties)
    await drv.connect()
    assert values(await drv.read(device.properties)) == {"h0": 100, "h1": 101}


async def test_close_during_a_read(sim: ModbusSimulator, open_drivers: list[ModbusDriver]) -> None:
    device = make_device(tcp(sim, timeout=2000), PLANT_PROPS[:2])
    drv = await connected(open_drivers, device)
    sim.add_fault(unit=1, delay=0.3)
    task = asyncio.create_task(drv.read(device.properties))
    await asyncio.sleep(0.05)
    task.cancel()
    await drv.close()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(DeviceUnavailable, match="not connected"):
        await drv.read(device.properties)
