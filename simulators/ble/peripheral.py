"""A simulated BLE peripheral: a bumble device with a GATT server on the virtual radio.

Each :class:`SimPeripheral` is a complete BLE host (HCI, link layer, L2CAP,
ATT, GATT) on its own virtual controller. It advertises its name and services,
accepts connections, answers reads and writes through real ATT PDUs, keeps
CCCD subscriptions and sends notifications. Values move by their behaviours
(counter, sine, random walk) in one task per peripheral, and faults can be
switched at run time: stop advertising, drop the connection, delay answers,
answer reads with an ATT error.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bumble import data_types
from bumble.att import ATT_Error, ErrorCode
from bumble.controller import Controller
from bumble.core import UUID, AdvertisingData
from bumble.device import Connection, Device
from bumble.gatt import Characteristic, CharacteristicValue, Service
from bumble.hci import Address, HCI_ErrorCode
from bumble.host import Host
from bumble.transport.common import AsyncPipeSink

from mapper_sdk.codec import RawType, decode_bytes, encode_bytes
from mapper_sdk.model import Value
from mappers.ble.config import BLUETOOTH_BASE_UUID, normalize_uuid

from .profile import CharacteristicSpec, Counter, PeripheralSpec, RandomWalk, Sine

if TYPE_CHECKING:
    from .radio import VirtualRadio

__all__ = ["SimCharacteristic", "SimPeripheral"]

log = logging.getLogger(__name__)

_PROPERTY_FLAGS = {
    "read": Characteristic.Properties.READ,
    "write": Characteristic.Properties.WRITE,
    "write-without-response": Characteristic.Properties.WRITE_WITHOUT_RESPONSE,
    "notify": Characteristic.Properties.NOTIFY,
    "indicate": Characteristic.Properties.INDICATE,
}


def bumble_uuid(uuid: str) -> UUID:
    """A bumble UUID from bleak's 128-bit form, short when it is a Bluetooth base UUID."""
    if uuid.endswith(BLUETOOTH_BASE_UUID) and uuid.startswith("0000"):
        return UUID(uuid[4:8].upper())
    return UUID(uuid)


@dataclass(eq=False)
class SimCharacteristic:
    """The live state of one simulated characteristic."""

    spec: CharacteristicSpec
    value: Value
    attribute: Characteristic[bytes] | None = None
    writes: list[bytes] = field(default_factory=list)
    step: Callable[[float], Value] | None = None
    next_due: float = 0.0

    @property
    def uuid(self) -> str:
        return self.spec.uuid

    def encode(self, value: Value | None = None) -> bytes:
        """The wire bytes of ``value`` (the current value by default)."""
        spec = self.spec
        v = self.value if value is None else value
        if spec.format is RawType.BYTES:
            return bytes.fromhex(v) if isinstance(v, str) else bytes(v)  # type: ignore[arg-type]
        if spec.format is RawType.STRING:
            return str(v).encode("utf-8")
        if spec.format is RawType.BOOL:
            return b"\x01" if v else b"\x00"
        assert isinstance(v, int | float)
        raw: float | int = v / spec.scale if spec.scale != 1 else v
        if spec.format.is_integer:
            raw = round(raw)
        return encode_bytes(raw, spec.format, spec.byteOrder)

    def decode(self, data: bytes) -> Value:
        """The value written as ``data``; ``ATT_Error`` when it does not fit."""
        spec = self.spec
        fmt = spec.format
        if fmt is RawType.BYTES:
            return data.hex()
        if fmt is RawType.STRING:
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                raise ATT_Error(ErrorCode.VALUE_NOT_ALLOWED) from None
        size = 1 if fmt is RawType.BOOL else fmt.size
        if len(data) != size:
            raise ATT_Error(ErrorCode.INVALID_ATTRIBUTE_LENGTH)
        raw = decode_bytes(data, fmt, spec.byteOrder)
        if fmt is RawType.BOOL:
            return raw
        assert isinstance(raw, int | float)
        value = raw * spec.scale if spec.scale != 1 else raw
        if (spec.minimum is not None and value < spec.minimum) or (
            spec.maximum is not None and value > spec.maximum
        ):
            raise ATT_Error(ErrorCode.VALUE_NOT_ALLOWED)
        return value


def _initial(spec: CharacteristicSpec) -> Value:
    if spec.behaviour is not None and isinstance(spec.behaviour, Counter | RandomWalk):
        return spec.behaviour.start
    if spec.behaviour is not None and isinstance(spec.behaviour, Sine):
        return spec.behaviour.offset
    return spec.value


def _stepper(spec: CharacteristicSpec, char: SimCharacteristic) -> Callable[[float], Value] | None:
    behaviour = spec.behaviour
    if behaviour is None:
        return None
    if isinstance(behaviour, Counter):
        counter = behaviour

        def count(_elapsed: float) -> Value:
            current = char.value
            assert isinstance(current, int | float)
            nxt = current + counter.step
            if counter.maximum is not None and nxt > counter.maximum:
                nxt = counter.minimum if counter.minimum is not None else counter.start
            if counter.minimum is not None and nxt < counter.minimum:
                nxt = counter.maximum if counter.maximum is not None else counter.start
            return nxt

        return count
    if isinstance(behaviour, Sine):
        sine = behaviour
        return lambda elapsed: (
            sine.offset + sine.amplitude * math.sin(2 * math.pi * elapsed / sine.period)
        )
    walk = behaviour
    rng = random.Random(walk.seed)

    def wander(_elapsed: float) -> Value:
        current = char.value
        assert isinstance(current, int | float)
        return min(walk.maximum, max(walk.minimum, current + rng.uniform(-walk.step, walk.step)))

    return wander


class SimPeripheral:
    """One simulated peripheral on a :class:`~simulators.ble.radio.VirtualRadio`.

    Create it with :meth:`VirtualRadio.add_peripheral`, which starts it.

    Fault switches (all take effect at once):
        * :meth:`stop_advertising` / :meth:`start_advertising`: become invisible
          to scans (and to reconnection attempts) or visible again.
        * :meth:`disconnect`: drop every connection from the peripheral's side.
        * :attr:`read_delay`: seconds each read and write waits before answering.
        * :meth:`fail_reads`: answer reads of a characteristic with an ATT error.
    """

    def __init__(self, radio: VirtualRadio, spec: PeripheralSpec) -> None:
        self.radio = radio
        self.spec = spec
        self.name = spec.name
        self.address = spec.address
        self.read_delay = spec.faults.readDelay / 1000.0
        self.read_errors: dict[str, ErrorCode] = dict(spec.faults.readErrors)
        self.chars: dict[str, SimCharacteristic] = {}
        self._advertise = spec.faults.advertise
        self._controller: Controller | None = None
        self._device: Device | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._started_at = 0.0

    # ---- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        """Power on, publish the GATT database, advertise, run the behaviours."""
        link = self.radio.link
        controller = Controller(f"sim-{self.name}", link=link)
        device = Device(
            name=self.name,
            address=Address(self.address),
            host=Host(controller, AsyncPipeSink(controller)),
        )
        service_uuids16: list[UUID] = []
        for service_spec in self.spec.services:
            attributes = []
            for char_spec in service_spec.characteristics:
                char = SimCharacteristic(spec=char_spec, value=_initial(char_spec))
                char.step = _stepper(char_spec, char)
                flags = Characteristic.Properties(0)
                for name in char_spec.properties:
                    flags |= _PROPERTY_FLAGS[name]
                # bumble does not enforce permissions itself: the callbacks below do.
                attribute: Characteristic[bytes] = Characteristic(
                    bumble_uuid(char_spec.uuid),
                    flags,
                    Characteristic.Permissions.READABLE | Characteristic.Permissions.WRITEABLE,
                    CharacteristicValue(read=self._reader(char), write=self._writer(char)),
                )
                char.attribute = attribute
                self.chars[char_spec.uuid] = char
                attributes.append(attribute)
            uuid = bumble_uuid(service_spec.uuid)
            if len(uuid.to_bytes()) == 2:
                service_uuids16.append(uuid)
            device.add_service(Service(uuid, attributes))
        ad: list[Any] = [
            data_types.Flags(
                AdvertisingData.Flags.LE_GENERAL_DISCOVERABLE_MODE
                | AdvertisingData.Flags.BR_EDR_NOT_SUPPORTED
            ),
            data_types.CompleteLocalName(self.name),
        ]
        if service_uuids16:
            ad.append(data_types.CompleteListOf16BitServiceUUIDs(service_uuids16))
        device.advertising_data = bytes(AdvertisingData(ad))
        device.on(device.EVENT_CONNECTION, self._on_connection)
        self._controller, self._device = controller, device
        await device.power_on()
        if self._advertise:
            await self._start_advertising()
        loop = asyncio.get_running_loop()
        self._started_at = loop.time()
        if any(c.step is not None for c in self.chars.values()):
            self._runner = asyncio.create_task(self._run(), name=f"blesim[{self.name}].behaviours")

    async def close(self) -> None:
        """Stop everything: behaviours, connections, advertising; leave the radio."""
        self._advertise = False
        runner, self._runner = self._runner, None
        tasks = [*self._tasks, *([runner] if runner else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        device, controller = self._device, self._controller
        self._device = self._controller = None
        if device is not None:
            for conn in list(device.connections.values()):
                await _quiet(conn.disconnect())
            await _quiet(device.stop_advertising())
            await _quiet(device.power_off())
        if controller is not None and controller in self.radio.link.controllers:
            self.radio.link.remove_controller(controller)

    @property
    def device(self) -> Device:
        if self._device is None:
            raise RuntimeError(f"peripheral {self.name} is not running")
        return self._device

    # ---- state ---------------------------------------------------------------
    @property
    def connections(self) -> list[Connection]:
        """The live connections (from centrals)."""
        return [] if self._device is None else list(self._device.connections.values())

    @property
    def advertising(self) -> bool:
        return self._advertise

    def characteristic(self, uuid: str) -> SimCharacteristic:
        """The live characteristic by UUID (16- or 128-bit)."""
        return self.chars[normalize_uuid(uuid)]

    def value(self, uuid: str) -> Value:
        """The current value of a characteristic (engineering units)."""
        return self.characteristic(uuid).value

    def set_value(self, uuid: str, value: Value) -> None:
        """Set a characteristic's value (no notification; see :meth:`notify`)."""
        self.characteristic(uuid).value = value

    async def notify(self, uuid: str, value: Value | None = None) -> None:
        """Set ``value`` (if given) and notify every subscribed central."""
        char = self.characteristic(uuid)
        if value is not None:
            char.value = value
        await self._notify(char)

    async def _notify(self, char: SimCharacteristic) -> None:
        device = self._device
        if device is None or char.attribute is None:
            return
        data = char.encode()
        for conn in list(device.connections.values()):
            if char.spec.has("indicate") and not char.spec.has("notify"):
                await device.indicate_subscriber(conn, char.attribute, data)
            else:
                await device.notify_subscriber(conn, char.attribute, data)

    # ---- faults --------------------------------------------------------------
    async def stop_advertising(self) -> None:
        """Stop advertising (and do not restart after a disconnection)."""
        self._advertise = False
        if self._device is not None:
            await self._device.stop_advertising()

    async def start_advertising(self) -> None:
        """Advertise again (when not connected) and after every disconnection."""
        self._advertise = True
        if self._device is not None and not self._device.connections:
            await self._start_advertising()

    async def disconnect(self) -> None:
        """Drop every connection from the peripheral's side (remote user terminated)."""
        if self._device is None:
            return
        for conn in list(self._device.connections.values()):
            await conn.disconnect(HCI_ErrorCode.REMOTE_USER_TERMINATED_CONNECTION_ERROR)

    def fail_reads(self, uuid: str, error: str | ErrorCode | None) -> None:
        """Answer reads of ``uuid`` with the ATT error named ``error`` (``None`` clears)."""
        key = normalize_uuid(uuid)
        if error is None:
            self.read_errors.pop(key, None)
            return
        self.read_errors[key] = error if isinstance(error, ErrorCode) else ErrorCode[error]

    async def wait_connected(self, connected: bool = True) -> None:
        """Wait until the peripheral has (or, with ``False``, has no) connection."""
        while bool(self.connections) != connected:
            self._changed.clear()
            await self._changed.wait()

    # ---- GATT callbacks --------------------------------------------------------
    def _reader(self, char: SimCharacteristic) -> Callable[[Connection], Any]:
        def read(_conn: Connection) -> Any:
            if not char.spec.has("read"):
                raise ATT_Error(ErrorCode.READ_NOT_PERMITTED)
            error = self.read_errors.get(char.uuid)
            if error is not None:
                raise ATT_Error(error)
            data = char.encode()
            if self.read_delay > 0:
                return self._later(data)
            return data

        return read

    async def _later(self, data: bytes) -> bytes:
        await asyncio.sleep(self.read_delay)
        return data

    def _writer(self, char: SimCharacteristic) -> Callable[[Connection, bytes], Any]:
        def write(_conn: Connection, data: bytes) -> Any:
            if not (char.spec.has("write") or char.spec.has("write-without-response")):
                raise ATT_Error(ErrorCode.WRITE_NOT_PERMITTED)
            value = char.decode(bytes(data))
            if self.read_delay > 0:
                return self._write_later(char, bytes(data), value)
            char.value = value
            char.writes.append(bytes(data))
            return None

        return write

    async def _write_later(self, char: SimCharacteristic, data: bytes, value: Value) -> None:
        await asyncio.sleep(self.read_delay)
        char.value = value
        char.writes.append(data)

    # ---- connections and advertising -----------------------------------------
    async def _start_advertising(self) -> None:
        interval = self.spec.advertisingInterval
        await self.device.start_advertising(
            auto_restart=False,
            advertising_interval_min=interval,
            advertising_interval_max=interval,
        )

    def _on_connection(self, connection: Connection) -> None:
        log.debug("blesim connected peripheral=%s peer=%s", self.name, connection.peer_address)
        connection.on(connection.EVENT_DISCONNECTION, self._on_disconnection)
        self._changed.set()

    def _on_disconnection(self, reason: int) -> None:
        log.debug("blesim disconnected peripheral=%s reason=%s", self.name, reason)
        self._changed.set()
        if self._advertise and self._device is not None:
            task = asyncio.create_task(self._readvertise(), name=f"blesim[{self.name}].advertise")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _readvertise(self) -> None:
        # The disconnection event arrives before the controller forgets the link.
        await asyncio.sleep(0)
        if self._advertise and self._device is not None and not self._device.connections:
            await self._start_advertising()

    # ---- behaviours ------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        moving = [c for c in self.chars.values() if c.step is not None]
        start = loop.time()
        for char in moving:
            char.next_due = start + char.spec.interval / 1000.0
        while True:
            due = min(c.next_due for c in moving)
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            for char in moving:
                # Catch up after a late wake-up so the average rate holds.
                while char.next_due <= now:
                    assert char.step is not None
                    char.value = char.step(char.next_due - start)
                    char.next_due += char.spec.interval / 1000.0
                    if char.spec.has("notify") or char.spec.has("indicate"):
                        await self._notify(char)


async def _quiet(awaitable: Any) -> None:
    try:
        await asyncio.wait_for(awaitable, 2.0)
    except (Exception, asyncio.CancelledError) as exc:  # teardown goes on
        if isinstance(exc, asyncio.CancelledError):
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        log.debug("blesim teardown ignored error=%r", exc)
