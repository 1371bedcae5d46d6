"""Device faults, produced by the simulators' fault injection and a misbehaving server.

One mapper serves, at once: two Modbus devices that stay healthy (the
bystanders), a Modbus device on a simulator of its own, a Modbus device behind a
raw TCP server that answers as told (well, cut short, or with garbage), an
OPC-UA device, and two BLE peripherals. Each test breaks one device for real and
checks that

* the device is reported offline (or unhealthy, when it answers but every value
  is bad) and comes back online by itself once the fault is gone;
* the other devices are never stalled: their collect cycles go on during the
  fault (counted against the number their cycle implies, with slack for a
  busy machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from mapper_sdk import topics
from mapper_sdk.driver import Driver, Resources
from mapper_sdk.model import DeviceSpec
from mapper_sdk.runtime import DeviceWorker, Mapper, MapperOptions, WorkerOptions
from mapper_sdk.testing import Mosquitto
from mappers.ble import BleDriver
from mappers.modbus import ModbusDriver
from mappers.opcua import OpcUaDriver
from simulators.ble import PeripheralSpec, SimPeripheral, VirtualRadio, current_radio
from simulators.ble import load_profile as load_ble_profile
from simulators.modbus import ModbusSimulator
from simulators.opcua import OpcUaSimulator
from simulators.opcua import load_profile as load_opcua_profile
from twin.client import TwinClient

from .conftest import (
    Recorder,
    holding,
    load_devices,
    modbus_device,
    settings_for,
    twin_service,
    wait_until,
)

DRIVERS: dict[str, type[Driver[Any, Any]]] = {
    "modbus": ModbusDriver,
    "opcua": OpcUaDriver,
    "ble": BleDriver,
}
COLOUR_UUID = "8e7f0002-5c3a-4b8e-9f1d-6d6170706b74"
BYSTANDERS = ("default/by-1", "default/by-2")
FAST_MS = 50


# ----------------------------------------------------------------------------- a bad server
class ScriptedModbus:
    """A Modbus TCP server that answers function 3 as told by :attr:`mode`.

    * ``good``: a correct response (register ``i`` holds ``base + i``);
    * ``truncated``: the MBAP header and the first bytes of the PDU, then silence;
    * ``malformed``: a well-framed response whose PDU is nonsense (a byte count
      that does not match its data, then an unknown function code);
    * ``garbage``: random bytes.
    """

    def __init__(self, base: int = 500) -> None:
        self.mode: Literal["good", "truncated", "malformed", "garbage"] = "good"
        self.base = base
        self.requests = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._turn = 0

    async def __aenter__(self) -> ScriptedModbus:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._clients):
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            while True:
                tid, _pid, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                pdu = await reader.readexactly(length - 1)
                self.requests += 1
                writer.write(self._answer(tid, unit, pdu))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._clients.discard(writer)
            writer.close()

    def _answer(self, tid: int, unit: int, pdu: bytes) -> bytes:
        fc = pdu[0]
        count = struct.unpack(">H", pdu[3:5])[0] if fc == 3 and len(pdu) >= 5 else 1
        data = b"".join(struct.pack(">H", (self.base + i) & 0xFFFF) for i in range(count))
        good = bytes([3, len(data)]) + data
        if self.mode == "good":
            body = good if fc == 3 else bytes([fc | 0x80, 1])
            return struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body
        if self.mode == "truncated":
            return struct.pack(">HHHB", tid, 0, len(good) + 1, unit) + good[:2]
        if self.mode == "malformed":
            self._turn += 1
            # A byte count claiming more data than there is, or a function that does not exist.
            body = bytes([3, len(data) + 6]) + data if self._turn % 2 else bytes([0x5A, 1, 2])
            return struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body
        return os.urandom(13)


# ----------------------------------------------------------------------------- the plant
@dataclass
class Plant:
    mapper: Mapper
    modbus: ModbusSimulator
    scripted: ScriptedModbus
    opcua: OpcUaSimulator
    ble_read: SimPeripheral
    ble_write: SimPeripheral
    recorder: Recorder
    broker: Mosquitto

    def worker(self, name: str) -> DeviceWorker:
        return self.mapper.workers[f"default/{name}"]

    def reported_states(self, name: str, since: int = 0) -> list[str]:
        """State transitions reported for ``name`` (repeats collapsed), from mark ``since``."""
        out: list[str] = []
        for m in self.recorder.messages[since:]:
            if m.device == f"default/{name}" and m.suffix == topics.STATE_UPDATE:
                state = m.json["state"]
                if not out or out[-1] != state:
                    out.append(state)
        return out

    def reported_values(self, name: str, prop: str, since: int = 0) -> list[str]:
        """Every value of ``prop`` that ``name`` reported to the twin since mark ``since``."""
        out = []
        for m in self.recorder.messages[since:]:
            if m.device == f"default/{name}" and m.suffix == topics.TWIN_UPDATE:
                twin = m.json["twin"].get(prop)
                if twin and twin.get("actual"):
                    out.append(twin["actual"]["value"])
        return out


def ble_spec(name: str, address: str) -> PeripheralSpec:
    data = load_ble_profile("actuator").peripherals[0].model_dump()
    data.update(name=name, address=address)
    return PeripheralSpec.model_validate(data)


def ble_device(name: str, address: str, collect_ms: int) -> dict[str, Any]:
    return {
        "name": name,
        "protocol": "ble",
        "connection": {"macAddress": address, "scanTimeout": 2, "connectTimeout": 2},
        "properties": [
            {
                "name": "colour",
                "type": "int",
                "minimum": 0,
                "maximum": 0xFFFFFF,
                "collectCycle": collect_ms,
                "reportCycle": collect_ms,
                "visitor": {"characteristicUUID": COLOUR_UUID, "rawType": "uint32"},
            }
        ],
        "stateReport": {"reportCycle": 60_000},
    }


def all_devices(
    healthy: ModbusSimulator, own: ModbusSimulator, scripted: ScriptedModbus, ua: OpcUaSimulator
) -> list[dict[str, Any]]:
    fast: dict[str, Any] = {"collectCycle": FAST_MS, "reportCycle": FAST_MS}
    quiet: dict[str, Any] = {"stateReport": {"reportCycle": 60_000}}
    out = [
        modbus_device(f"by-{u}", healthy.port, u, [holding("h0", 0, **fast)], **quiet)
        for u in (1, 2)
    ]
    out.append(
        modbus_device("mb-own", own.port, 1, [holding("h0", 0, **fast)], timeout_ms=300, **quiet)
    )
    out.append(
        modbus_device(
            "mb-scripted",
            scripted.port,
            1,
            [holding("h0", 0, **fast), holding("h1", 1, **fast)],
            timeout_ms=300,
            **quiet,
        )
    )
    out.append(
        {
            "name": "ua-1",
            "protocol": "opcua",
            "connection": {"url": ua.url, "timeout": 2},
            "properties": [
                {
                    "name": name,
                    "type": "double",
                    "collectCycle": 100,
                    "reportCycle": 100,
                    "visitor": {"nodeID": ua.node_id(name), "mode": "poll"},
                }
                for name in ("temperature", "setpoint")
            ],
            **quiet,
        }
    )
    out.append(ble_device("ble-read", "C2:FA:00:00:00:01", 100))
    # Read once a minute: a write to it is the only I/O the test has to wait for.
    out.append(ble_device("ble-write", "C2:FA:00:00:00:02", 60_000))
    return out


def register_profile(units: tuple[int, ...]) -> dict[str, Any]:
    points = [{"name": f"h{a}", "table": "holding", "address": a, "value": a} for a in range(2)]
    return {"name": "plain", "units": [{"id": u, "points": points} for u in units]}


@contextlib.asynccontextmanager
async def ble_radio() -> AsyncIterator[VirtualRadio]:
    """This event loop's virtual radio (there can be one only): the running one, or a new one."""
    try:
        yield current_radio()
    except LookupError:
        async with VirtualRadio() as radio:
            yield radio


@pytest.fixture(scope="module")
async def plant(
    mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Plant]:
    tmp = tmp_path_factory.mktemp("device-faults")
    settings = settings_for(mosquitto)
    async with contextlib.AsyncExitStack() as stack:
        healthy = await stack.enter_async_context(ModbusSimulator(register_profile((1, 2))))
        own = await stack.enter_async_context(ModbusSimulator(register_profile((1,))))
        scripted = await stack.enter_async_context(ScriptedModbus())
        ua = await stack.enter_async_context(OpcUaSimulator(load_opcua_profile("thermostat")))
        radio = await stack.enter_async_context(ble_radio())
        ble_read = await radio.add_peripheral(ble_spec("fault-ble-read", "C2:FA:00:00:00:01"))
        stack.push_async_callback(radio.remove_peripheral, "fault-ble-read")
        ble_write = await radio.add_peripheral(ble_spec("fault-ble-write", "C2:FA:00:00:00:02"))
        stack.push_async_callback(radio.remove_peripheral, "fault-ble-write")

        specs: list[DeviceSpec[Any, Any]] = load_devices(
            all_devices(healthy, own, scripted, ua), DRIVERS
        )
        recorder = await stack.enter_async_context(
            Recorder(
                mosquitto.port,
                [
                    topics.device_filter(topics.STATE_UPDATE),
                    topics.device_filter(topics.TWIN_UPDATE),
                ],
                persistent=False,
            )
        )
        await stack.enter_async_context(twin_service(settings, tmp / "twin.db", specs))
        resources = Resources()
        radio.install(resources)
        options = MapperOptions(
            mqtt=settings,
            worker=WorkerOptions(
                connect_timeout=3.0,
                read_timeout=2.0,
                write_timeout=3.0,
                backoff_initial=0.1,
                backoff_max=0.5,
            ),
        )
        mapper = await stack.enter_async_context(
            Mapper(specs, DRIVERS, options, resources=resources)
        )
        await wait_until(
            lambda: all(w.connected and w.stats.cycles > 0 for w in mapper.workers.values()),
            "every device to be online and read",
            15,
        )
        yield Plant(mapper, own, scripted, ua, ble_read, ble_write, recorder, mosquitto)


class Bystanders:
    """Counts the collect cycles of devices that are not faulted, over a window."""

    def __init__(self, plant: Plant, names: tuple[str, ...] = BYSTANDERS) -> None:
        self.workers = [plant.mapper.workers[n] for n in names]
        self.cycle_s = FAST_MS / 1000.0
        self.started = asyncio.get_running_loop().time()
        self.before = [w.stats.cycles for w in self.workers]

    def check(self) -> None:
        elapsed = asyncio.get_running_loop().time() - self.started
        expected = elapsed / self.cycle_s
        done = [w.stats.cycles - b for w, b in zip(self.workers, self.before, strict=True)]
        assert all(d >= expected / 2 for d in done), (
            f"bystanders made {done} collect cycles in {elapsed:.2f} s; "
            f"their cycle allows {expected:.0f}"
        )


async def reported_bad(
    plant: Plant, name: str, mark: int, bad: str = "offline", timeout: float = 10.0
) -> None:
    """Wait until ``name`` has been reported ``bad`` since ``mark``."""

    def went_bad() -> bool:
        return bad in plant.reported_states(name, mark)

    await wait_until(went_bad, f"{name} to be reported {bad}", timeout)


async def recovered(
    plant: Plant, name: str, mark: int, timeout: float = 15.0, *, polled: bool = True
) -> None:
    """Wait until ``name`` is reported online again (and, when ``polled``, read again)."""

    def back() -> bool:
        seen = plant.reported_states(name, mark)
        return bool(seen) and seen[-1] == "online" and plant.worker(name).connected

    await wait_until(back, f"{name} to come back online", timeout)
    if not polled:
        return
    worker = plant.worker(name)
    cycles = worker.stats.cycles
    await wait_until(lambda: worker.stats.cycles > cycles + 1, f"{name} to be read again")


# ----------------------------------------------------------------------------- Modbus
async def test_modbus_server_gone_and_back(plant: Plant) -> None:
    mark = len(plant.recorder.messages)
    bystanders = Bystanders(plant)
    await plant.modbus.stop()
    await reported_bad(plant, "mb-own", mark)
    await asyncio.sleep(1.0)  # reconnect attempts fail meanwhile
    assert plant.worker("mb-own").stats.connect_failures > 0
    await plant.modbus.start()
    await recovered(plant, "mb-own", mark)
    bystanders.check()


@pytest.mark.parametrize(
    ("code", "state"),
    [(4, "unhealthy"), (2, "unhealthy"), (11, "offline")],
    ids=["device-failure", "illegal-address", "gateway-no-response"],
)
async def test_modbus_exception_responses(plant: Plant, code: int, state: str) -> None:
    """Every read answered with exception ``code``: bad values (unhealthy) or, for a
    gateway whose target does not answer, an unreachable device (offline)."""
    mark = len(plant.recorder.messages)
    bystanders = Bystanders(plant)
    fault = plant.modbus.add_fault(unit=1, exception=code)
    try:
        await reported_bad(plant, "mb-own", mark, state)
        await asyncio.sleep(0.5)
    finally:
        plant.modbus.remove_fault(fault)
    await recovered(plant, "mb-own", mark)
    bystanders.check()


@pytest.mark.parametrize("mode", ["truncated", "malformed", "garbage"])
async def test_modbus_broken_responses(
    plant: Plant, mode: Literal["truncated", "malformed", "garbage"]
) -> None:
    mark = len(plant.recorder.messages)
    bystanders = Bystanders(plant)
    worker = plant.worker("mb-scripted")
    disconnects = worker.stats.disconnects
    requests = plant.scripted.requests
    plant.scripted.mode = mode
    try:
        await reported_bad(plant, "mb-scripted", mark)
        await wait_until(
            lambda: plant.scripted.requests > requests + 2,
            "the device to be asked again after the broken answers",
        )
    finally:
        plant.scripted.mode = "good"
    await recovered(plant, "mb-scripted", mark)
    assert worker.stats.disconnects > disconnects
    latest = worker.latest("h1")
    assert latest is not None and latest[0] == plant.scripted.base + 1
    # No part of a broken answer was ever taken for a value.
    base = plant.scripted.base
    assert set(plant.reported_values("mb-scripted", "h0", mark)) <= {str(base)}
    assert set(plant.reported_values("mb-scripted", "h1", mark)) <= {str(base + 1)}
    bystanders.check()


# ----------------------------------------------------------------------------- OPC-UA
async def test_opcua_server_restart(plant: Plant) -> None:
    mark = len(plant.recorder.messages)
    bystanders = Bystanders(plant)
    restart = asyncio.create_task(plant.opcua.restart(downtime=1.0))
    try:
        await reported_bad(plant, "ua-1", mark)
    finally:
        await restart
    await recovered(plant, "ua-1", mark)
    bystanders.check()


async def test_opcua_bad_status_codes(plant: Plant) -> None:
    mark = len(plant.recorder.messages)
    bystanders = Bystanders(plant)
    worker = plant.worker("ua-1")
    try:
        for name in ("temperature", "setpoint"):
            await plant.opcua.set_bad_status(name, "BadSensorFailure")
        await reported_bad(plant, "ua-1", mark, "unhealthy")
        errors = worker.stats.read_errors
        await wait_until(lambda: worker.stats.read_errors > errors + 2, "more bad readings")
    finally:
        await plant.opcua.clear_faults()
    await recovered(plant, "ua-1", mark)
    bystanders.check()


# ----------------------------------------------------------------------------- BLE
async def test_ble_disconnect_during_a_read(plant: Plant) -> None:
    mark = len(plant.recorder.messages)
    bystanders = Bystanders(plant)
    worker = plant.worker("ble-read")
    disconnects = worker.stats.disconnects
    peripheral = plant.ble_read
    peripheral.read_delay = 0.6  # every read now takes 0.6 s: one is always in flight
    try:
        cycles = worker.stats.cycles
        await wait_until(lambda: worker.stats.cycles > cycles, "a slow read to finish")
        await asyncio.sleep(0.2)  # the next read is under way
        await peripheral.disconnect()
        await reported_bad(plant, "ble-read", mark)
    finally:
        peripheral.read_delay = 0.0
    await recovered(plant, "ble-read", mark)
    assert worker.stats.disconnects > disconnects
    bystanders.check()


async def test_ble_disconnect_during_a_write(plant: Plant) -> None:
    mark = len(plant.recorder.messages)
    bystanders = Bystanders(plant)
    worker = plant.worker("ble-write")
    failed = worker.stats.writes_failed
    peripheral = plant.ble_write
    char = peripheral.characteristic(COLOUR_UUID)
    writes = len(char.writes)
    peripheral.read_delay = 0.6  # writes wait 0.6 s before the peripheral answers
    try:
        async with TwinClient(settings_for(plant.broker)) as app:
            await app.set_desired("default/ble-write", {"colour": 0x123456})
            # The write is taken from the queue and is under way (no read holds the
            # device: its only property is read once a minute).
            await wait_until(lambda: not worker.pending_desired(), "the write to start")
            await asyncio.sleep(0.2)
            await peripheral.disconnect()
            await reported_bad(plant, "ble-write", mark)
            await wait_until(lambda: worker.stats.writes_failed > failed, "the failed write")
            peripheral.read_delay = 0.0
            await recovered(plant, "ble-write", mark, polled=False)
            # Retried after the reconnect: the device holds the value and the twin knows.
            await wait_until(lambda: peripheral.value(COLOUR_UUID) == 0x123456, "the retry")
            assert len(char.writes) > writes

            async def acked() -> bool:
                twin = (await app.get("default/ble-write")).twins["colour"]
                return bool(
                    twin.get("actual", {}).get("value") == str(0x123456)
                    and twin.get("ack", {}).get("status") == "applied"
                )

            await wait_until(acked, "the twin to record the applied write")
    finally:
        peripheral.read_delay = 0.0
    bystanders.check()


async def test_no_task_or_connection_leaks_after_the_faults(plant: Plant) -> None:
    """After every fault above, each device is online with one live driver task set."""
    await wait_until(
        lambda: all(w.connected for w in plant.mapper.workers.values()), "all devices online"
    )
    names = {t.get_name() for t in asyncio.all_tasks()}
    for device in plant.mapper.workers:
        assert sum(1 for n in names if n == f"mapper[{device}].collect") == 1, device
    assert plant.modbus.connections == 1
