"""The virtual radio: one bumble ``LocalLink`` with a central adapter and peripherals.

Everything on one :class:`VirtualRadio` lives in one event loop (bumble's link
delivers packets with ``loop.call_soon``), so the mapper that uses the radio's
bleak backend and the simulated peripherals run in the same process. Use one
radio per event loop; :func:`current_radio` finds the running loop's radio for
configuration that names the backend by import path
(``backend: "simulators.ble:current_backend"``).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Self

from bumble.controller import Controller
from bumble.core import ConnectionError as BumbleConnectionError
from bumble.device import Advertisement, Connection, Device
from bumble.hci import Address, OwnAddressType
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink

from mapper_sdk.driver import Resources
from mappers.ble.backend import EXTRAS_KEY, BleBackend

from .peripheral import SimPeripheral
from .profile import PeripheralSpec, ProfileSpec

__all__ = ["CENTRAL_ADDRESS", "SimCentral", "VirtualRadio", "current_backend", "current_radio"]

log = logging.getLogger(__name__)

CENTRAL_ADDRESS = "DE:AD:BE:EF:00:01"
"""The central adapter's random static address (keep peripherals off it)."""

_RADIOS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, VirtualRadio] = (
    weakref.WeakKeyDictionary()
)

AdvertisementListener = Callable[[Advertisement], None]


class SimCentral:
    """The central "adapter" of a radio: a bumble device that scans and connects.

    Like a host's Bluetooth adapter it is shared by every bleak client and
    scanner on the radio: scanning runs while at least one scanner listens, and
    connection attempts are serialised (a controller creates one connection at
    a time).
    """

    def __init__(self, link: LocalLink) -> None:
        self.controller = Controller("sim-central", link=link)
        self.device = Device(
            name="mapperkit-central",
            address=Address(CENTRAL_ADDRESS),
            host=Host(self.controller, AsyncPipeSink(self.controller)),
        )
        self._listeners: list[AdvertisementListener] = []
        self._scan_lock = asyncio.Lock()
        self._connect_lock = asyncio.Lock()
        self.device.on(self.device.EVENT_ADVERTISEMENT, self._on_advertisement)

    async def start(self) -> None:
        await self.device.power_on()

    async def close(self) -> None:
        for conn in list(self.device.connections.values()):
            try:
                await asyncio.wait_for(conn.disconnect(), 2.0)
            except (TimeoutError, BumbleConnectionError):
                pass
        if self.device.scanning:
            await self.device.stop_scanning()
        await self.device.power_off()

    # ---- scanning --------------------------------------------------------------
    def _on_advertisement(self, advertisement: Advertisement) -> None:
        for listener in tuple(self._listeners):
            listener(advertisement)

    async def listen(self, listener: AdvertisementListener) -> None:
        """Deliver every advertisement to ``listener`` until :meth:`unlisten`."""
        async with self._scan_lock:
            self._listeners.append(listener)
            if not self.device.scanning:
                await self.device.start_scanning(filter_duplicates=False)

    async def unlisten(self, listener: AdvertisementListener) -> None:
        async with self._scan_lock:
            if listener in self._listeners:
                self._listeners.remove(listener)
            if not self._listeners and self.device.scanning:
                await self.device.stop_scanning()

    # ---- connecting ------------------------------------------------------------
    def connection_to(self, address: Address) -> Connection | None:
        for conn in self.device.connections.values():
            if conn.peer_address == address:
                return conn
        return None

    async def connect(self, address: Address) -> Connection:
        """Connect to ``address`` once it advertises; bound the wait with a timeout.

        The virtual controller ignores LE Create Connection Cancel, so a timed-out
        or cancelled attempt clears the controller's pending connection itself;
        otherwise the next attempt would be refused as "already pending".
        """
        async with self._connect_lock:
            if self.connection_to(address) is not None:
                raise ConnectionRefusedError(f"already connected to {address}")
            try:
                return await self.device.connect(
                    address, own_address_type=OwnAddressType.RANDOM, timeout=None
                )
            except BaseException:
                self.controller.pending_le_connection = None
                raise


class VirtualRadio:
    """A virtual BLE radio with a central adapter and simulated peripherals.

    Use as an async context manager (or call :meth:`start` and :meth:`close`)::

        async with VirtualRadio() as radio:
            sensor = await radio.add_peripheral(spec)
            radio.install(resources)          # the BLE driver now uses this radio
    """

    def __init__(self) -> None:
        self._link: LocalLink | None = None
        self._central: SimCentral | None = None
        self.peripherals: dict[str, SimPeripheral] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Create the link and power on the central adapter."""
        if self._link is not None:
            raise RuntimeError("this radio is already started")
        loop = asyncio.get_running_loop()
        if loop in _RADIOS:
            raise RuntimeError("this event loop already has a virtual radio (one per loop)")
        self._loop = loop
        self._link = LocalLink()  # type: ignore[no-untyped-call]
        self._central = SimCentral(self._link)
        await self._central.start()
        _RADIOS[loop] = self

    async def close(self) -> None:
        """Stop every peripheral and the central; the radio can not be restarted."""
        for peripheral in list(self.peripherals.values()):
            await peripheral.close()
        self.peripherals.clear()
        if self._central is not None:
            await self._central.close()
        if self._loop is not None and _RADIOS.get(self._loop) is self:
            del _RADIOS[self._loop]

    @property
    def link(self) -> LocalLink:
        if self._link is None:
            raise RuntimeError("the radio is not started")
        return self._link

    @property
    def central(self) -> SimCentral:
        if self._central is None:
            raise RuntimeError("the radio is not started")
        return self._central

    async def add_peripheral(self, spec: PeripheralSpec) -> SimPeripheral:
        """Create, start and return a peripheral."""
        if spec.name in self.peripherals:
            raise ValueError(f"a peripheral named {spec.name!r} is already on this radio")
        for other in self.peripherals.values():
            if other.address == spec.address:
                raise ValueError(f"address {spec.address} is taken by {other.name}")
        if spec.address == CENTRAL_ADDRESS:
            raise ValueError(f"address {spec.address} is the central adapter's")
        peripheral = SimPeripheral(self, spec)
        await peripheral.start()
        self.peripherals[spec.name] = peripheral
        return peripheral

    async def add_profile(self, profile: ProfileSpec) -> list[SimPeripheral]:
        """Start every peripheral of a profile."""
        return [await self.add_peripheral(spec) for spec in profile.peripherals]

    async def remove_peripheral(self, name: str) -> None:
        """Stop a peripheral and take it off the radio."""
        peripheral = self.peripherals.pop(name)
        await peripheral.close()

    def backend(self) -> BleBackend:
        """The bleak backend (client, scanner, arguments) that reaches this radio."""
        from .bleak_backend import BumbleBleakClient, BumbleBleakScanner

        return BleBackend(
            client_backend=BumbleBleakClient,
            scanner_backend=BumbleBleakScanner,
            kwargs={"radio": self},
            name=f"virtual-radio-{id(self):x}",
        )

    def install(self, resources: Resources) -> None:
        """Make BLE drivers using ``resources`` reach this radio."""
        resources.extras[EXTRAS_KEY] = self.backend()


def current_radio() -> VirtualRadio:
    """The running event loop's radio; ``LookupError`` when it has none."""
    radio = _RADIOS.get(asyncio.get_running_loop())
    if radio is None:
        raise LookupError("no virtual BLE radio runs in this event loop")
    return radio


def current_backend() -> BleBackend:
    """The bleak backend of the running loop's radio (for ``configData.backend``)."""
    return current_radio().backend()
