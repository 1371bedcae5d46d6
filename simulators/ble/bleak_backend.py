"""bleak client and scanner backends that drive the virtual radio's central adapter.

With these, ``BleakClient(device, backend=BumbleBleakClient, radio=radio)`` and
``BleakScanner(backend=BumbleBleakScanner, radio=radio)`` behave as on real
hardware: scanning reports advertisements, connecting creates an LE link,
exchanges the MTU and discovers services, reads and writes are ATT requests,
notifications are enabled through the CCCD, ATT errors surface as
``BleakGATTProtocolError``, and a peripheral's disconnection calls bleak's
disconnected callback. Get both with :meth:`VirtualRadio.backend`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from bleak.args import SizedBuffer
from bleak.assigned_numbers import CharacteristicPropertyName
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakDeviceNotFoundError, BleakError, BleakGATTProtocolError
from bumble import core
from bumble.att import ATT_Error
from bumble.core import UUID, AdvertisingData
from bumble.device import Advertisement, Connection, Peer
from bumble.gatt import Characteristic
from bumble.gatt_client import CharacteristicProxy
from bumble.hci import Address

from mappers.ble.config import normalize_uuid

from .radio import VirtualRadio

__all__ = ["BumbleBleakClient", "BumbleBleakScanner"]

log = logging.getLogger(__name__)

REQUESTED_MTU = 247

_PROPERTY_NAMES: tuple[tuple[Characteristic.Properties, CharacteristicPropertyName], ...] = (
    (Characteristic.Properties.BROADCAST, "broadcast"),
    (Characteristic.Properties.READ, "read"),
    (Characteristic.Properties.WRITE_WITHOUT_RESPONSE, "write-without-response"),
    (Characteristic.Properties.WRITE, "write"),
    (Characteristic.Properties.NOTIFY, "notify"),
    (Characteristic.Properties.INDICATE, "indicate"),
    (Characteristic.Properties.AUTHENTICATED_SIGNED_WRITES, "authenticated-signed-writes"),
    (Characteristic.Properties.EXTENDED_PROPERTIES, "extended-properties"),
)


def bleak_uuid(uuid: UUID) -> str:
    """bleak's 128-bit lowercase spelling of a bumble UUID."""
    return normalize_uuid(uuid.to_hex_str("-"))


def _address_text(address: Address) -> str:
    return address.to_string(with_type_qualifier=False)


class BumbleBleakScanner(BaseBleakScanner):
    """A bleak scanner backend listening on a :class:`VirtualRadio`'s central."""

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: str = "active",
        *,
        radio: VirtualRadio,
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self._radio = radio
        self._listening = False

    async def start(self) -> None:
        self.seen_devices = {}
        if not self._listening:
            await self._radio.central.listen(self._on_advertisement)
            self._listening = True

    async def stop(self) -> None:
        if self._listening:
            self._listening = False
            await self._radio.central.unlisten(self._on_advertisement)

    def _on_advertisement(self, adv: Advertisement) -> None:
        data = adv.data
        uuids: list[str] = []
        for kind in (
            AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
            AdvertisingData.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
            AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
            AdvertisingData.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
        ):
            for listed in data.get_all(kind):
                uuids.extend(bleak_uuid(u) for u in listed)
        if not self.is_allowed_uuid(uuids):
            return
        name = data.get(AdvertisingData.COMPLETE_LOCAL_NAME) or data.get(
            AdvertisingData.SHORTENED_LOCAL_NAME
        )
        local_name = name if isinstance(name, str) else None
        manufacturer: dict[int, bytes] = {}
        for company, payload in data.get_all(AdvertisingData.MANUFACTURER_SPECIFIC_DATA):
            manufacturer[int(company)] = bytes(payload)
        tx_power = data.get(AdvertisingData.TX_POWER_LEVEL)
        advertisement = AdvertisementData(
            local_name=local_name,
            manufacturer_data=manufacturer,
            service_data={},
            service_uuids=uuids,
            tx_power=tx_power if isinstance(tx_power, int) else None,
            rssi=adv.rssi,
            platform_data=(adv,),
        )
        text = _address_text(adv.address)
        device = self.create_or_update_device(text, text, local_name, adv.address, advertisement)
        self.call_detection_callbacks(device, advertisement)


class BumbleBleakClient(BaseBleakClient):
    """A bleak client backend that connects through a :class:`VirtualRadio`'s central."""

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        radio: VirtualRadio,
        disconnected_callback: Callable[[], None] | None = None,
        timeout: float = 10.0,
        services: set[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout
        )
        self._radio = radio
        details = (
            address_or_ble_device.details if isinstance(address_or_ble_device, BLEDevice) else None
        )
        self._peer_address: Address | None = details if isinstance(details, Address) else None
        self._services_filter = services
        self._connection: Connection | None = None
        self._peer: Peer | None = None
        self._closing = False
        self._subscribers: dict[int, Callable[[bytes], None]] = {}

    # ---- connection ------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.address.replace(":", "-")

    @property
    def mtu_size(self) -> int:
        peer = self._peer
        return peer.gatt_client.mtu if peer is not None else 23

    @property
    def is_connected(self) -> bool:
        conn = self._connection
        return conn is not None and conn.handle in self._radio.central.device.connections

    async def _resolve_address(self) -> Address:
        if self._peer_address is not None:
            return self._peer_address
        # Like bleak's platform backends: a bare address means "scan for it first".
        wanted = self.address.upper()
        found: asyncio.Future[Address] = asyncio.get_running_loop().create_future()

        def on_adv(adv: Advertisement) -> None:
            if not found.done() and _address_text(adv.address) == wanted:
                found.set_result(adv.address)

        central = self._radio.central
        await central.listen(on_adv)
        try:
            async with asyncio.timeout(self._timeout):
                return await found
        except TimeoutError:
            raise BleakDeviceNotFoundError(
                self.address, f"device with address {self.address} was not found"
            ) from None
        finally:
            await central.unlisten(on_adv)

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        if self.is_connected:
            return
        self._closing = False
        address = await self._resolve_address()
        central = self._radio.central
        try:
            async with asyncio.timeout(self._timeout):
                connection = await central.connect(address)
        except ConnectionRefusedError as exc:
            raise BleakError(str(exc)) from exc
        except core.ConnectionError as exc:
            raise BleakError(f"connection to {self.address} failed: {exc}") from exc
        self._connection = connection
        connection.on(connection.EVENT_DISCONNECTION, self._on_disconnection)
        try:
            peer = Peer(connection)
            self._peer = peer
            await peer.request_mtu(REQUESTED_MTU)
            self.services = await self._discover(peer)
            if pair:
                await connection.pair()
        except BaseException:
            self._closing = True
            if connection.handle in central.device.connections:
                await _disconnect(connection)
            self._forget()
            raise

    async def _discover(self, peer: Peer) -> BleakGATTServiceCollection:
        collection = BleakGATTServiceCollection()
        await peer.discover_services()
        for service in peer.services:
            uuid = bleak_uuid(service.uuid)
            if self._services_filter and uuid not in self._services_filter:
                continue
            bleak_service = BleakGATTService(service, service.handle, uuid)
            collection.add_service(bleak_service)
            await service.discover_characteristics()
            for char in service.characteristics:
                props = [name for flag, name in _PROPERTY_NAMES if char.properties & flag]
                bleak_char = BleakGATTCharacteristic(
                    char,
                    char.handle,
                    bleak_uuid(char.uuid),
                    props,
                    lambda: self.mtu_size - 3,
                    bleak_service,
                )
                collection.add_characteristic(bleak_char)
                await char.discover_descriptors()
                for desc in char.descriptors:
                    collection.add_descriptor(
                        BleakGATTDescriptor(desc, desc.handle, bleak_uuid(desc.type), bleak_char)
                    )
        return collection

    def _on_disconnection(self, reason: int) -> None:
        solicited = self._closing
        self._forget()
        log.debug("bumble backend disconnected address=%s reason=%s", self.address, reason)
        if not solicited and self._disconnected_callback is not None:
            self._disconnected_callback()

    def _forget(self) -> None:
        self._connection = None
        self._peer = None
        self._subscribers.clear()

    async def disconnect(self) -> None:
        conn = self._connection
        if conn is None:
            return
        self._closing = True
        if conn.handle in self._radio.central.device.connections:
            await _disconnect(conn)
        self._forget()

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        await self._live_connection().pair()

    async def unpair(self) -> None:
        # The simulated central keeps no bonding keys; unpairing disconnects, as in bleak.
        await self.disconnect()

    # ---- GATT I/O ------------------------------------------------------------------
    def _live_connection(self) -> Connection:
        if self._connection is None or not self.is_connected:
            raise BleakError("Not connected")
        return self._connection

    def _live_peer(self) -> Peer:
        self._live_connection()
        assert self._peer is not None
        return self._peer

    async def _call(self, operation: Any) -> Any:
        """Run one GATT operation, mapping bumble's errors to bleak's."""
        try:
            return await operation
        except ATT_Error as exc:
            raise BleakGATTProtocolError(int(exc.error_code)) from exc
        except asyncio.CancelledError:
            # bumble cancels the pending request when the link drops; that is a
            # lost connection, not a cancellation of the caller.
            task = asyncio.current_task()
            if (task is not None and task.cancelling()) or self.is_connected:
                raise
            raise BleakError("Not connected: the link was lost during the request") from None
        except core.TimeoutError as exc:
            raise BleakError(f"GATT request timed out: {exc}") from exc
        except (core.InvalidStateError, core.InvalidArgumentError) as exc:
            raise BleakError(str(exc)) from exc

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        peer = self._live_peer()
        if use_cached:
            cached = peer.gatt_client.cached_values.get(characteristic.handle)
            if cached is not None:
                return bytearray(cached[1])
        value = await self._call(peer.read_value(characteristic.obj))
        return bytearray(value)

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        peer = self._live_peer()
        value = await self._call(peer.read_value(descriptor.handle))
        return bytearray(value)

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool
    ) -> None:
        peer = self._live_peer()
        await self._call(peer.write_value(characteristic.obj, bytes(data), with_response=response))

    async def write_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, data: SizedBuffer
    ) -> None:
        peer = self._live_peer()
        await self._call(peer.write_value(descriptor.handle, bytes(data), with_response=True))

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        peer = self._live_peer()
        proxy: CharacteristicProxy[bytes] = characteristic.obj

        def deliver(value: bytes) -> None:
            callback(bytearray(value))

        old = self._subscribers.pop(characteristic.handle, None)
        if old is not None:
            await self._call(peer.unsubscribe(proxy, old))
        self._subscribers[characteristic.handle] = deliver
        await self._call(peer.subscribe(proxy, deliver))

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        peer = self._live_peer()
        subscriber = self._subscribers.pop(characteristic.handle, None)
        if subscriber is not None:
            await self._call(peer.unsubscribe(characteristic.obj, subscriber))


async def _disconnect(connection: Connection) -> None:
    try:
        async with asyncio.timeout(2.0):
            await connection.disconnect()
    except (TimeoutError, core.ConnectionError, core.InvalidStateError) as exc:
        log.debug("bumble backend disconnect ignored error=%r", exc)
