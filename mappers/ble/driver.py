"""The Bluetooth LE driver: GATT reads, writes and notifications through bleak.

One :class:`BleDriver` serves one peripheral over one connection. ``connect``
scans for the peripheral by address or advertised name, connects, discovers its
services and resolves each property's characteristic once; ``read`` then reads
the due characteristics one after the other (ATT allows one outstanding request
per connection, so a batch gains nothing from concurrency); ``subscribe``
enables notifications once per connection and decodes each one straight into
the runtime's sink. When the peripheral goes away, bleak's disconnected
callback marks the device offline and the runtime reconnects with backoff and
subscribes again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError, BleakGATTProtocolError, BleakGATTProtocolErrorCode

from mapper_sdk.driver import (
    Capability,
    DeviceState,
    Driver,
    Reading,
    ReadingSink,
    Resources,
    now_ms,
)
from mapper_sdk.errors import (
    ConfigError,
    DeviceTimeout,
    DeviceUnavailable,
    WriteRejected,
)
from mapper_sdk.model import DeviceSpec, PropertySpec, Value

from .backend import EXTRAS_KEY, PLATFORM, BleBackend, load_backend
from .config import BleProtocolConfig, BleVisitorConfig
from .convert import Codec, compile_codec

__all__ = ["BleDriver", "att_error_name"]

log = logging.getLogger(__name__)

_IO_ERRORS = (BleakError, OSError, EOFError, TimeoutError)
DISCONNECT_TIMEOUT = 5.0


def att_error_name(exc: BleakGATTProtocolError) -> str:
    """The ATT error's name (``WRITE_NOT_PERMITTED``), or ``ATT_ERROR_0xNN`` for others."""
    code = int(exc.args[0]) if exc.args and isinstance(exc.args[0], int) else int(exc.code)
    member = BleakGATTProtocolErrorCode._value2member_map_.get(code)
    if member is not None and member.name:
        return member.name
    return f"ATT_ERROR_0x{code:02X}"


@dataclass(slots=True, eq=False)
class _Plan:
    """Everything the hot path needs for one property, built once."""

    name: str
    uuid: str
    codec: Codec
    notify: bool
    char: BleakGATTCharacteristic | None = None
    sink: ReadingSink | None = None


class BleDriver(Driver[BleProtocolConfig, BleVisitorConfig]):
    """Serve one BLE peripheral through bleak (see the module docstring).

    The bleak backend comes from ``configData.backend``, else from
    ``resources.extras["ble.backend"]``, else bleak's platform backend
    (:mod:`mappers.ble.backend`).
    """

    protocol: ClassVar[str] = "ble"
    protocol_config: ClassVar[type[BleProtocolConfig]] = BleProtocolConfig
    visitor_config: ClassVar[type[BleVisitorConfig]] = BleVisitorConfig
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.WRITE, Capability.SUBSCRIBE}
    )

    def __init__(
        self,
        device: DeviceSpec[BleProtocolConfig, BleVisitorConfig],
        resources: Resources | None = None,
    ) -> None:
        super().__init__(device, resources)
        self._config = device.protocol_config
        self._plans: dict[str, _Plan] = {}
        for prop in device.properties:
            visitor = prop.visitor
            self._plans[prop.name] = _Plan(
                name=prop.name,
                uuid=visitor.characteristicUUID,
                codec=compile_codec(visitor, prop.type),
                notify=visitor.notify,
            )
        self._client: BleakClient | None = None
        self._backend: BleBackend | None = None
        self._lock_key: tuple[str, str] | None = None
        self._connect_lock: asyncio.Lock | None = None
        self._notifying: set[str] = set()
        self._mutex = asyncio.Lock()
        self._closing = False

    # ---- configuration -------------------------------------------------------
    @classmethod
    def validate_device(cls, device: DeviceSpec[BleProtocolConfig, BleVisitorConfig]) -> None:
        """Check each visitor against its property's model type, once, at load time."""
        for prop in device.properties:
            try:
                compile_codec(prop.visitor, prop.type)
            except ValueError as exc:
                raise ConfigError(
                    str(exc), location=f"spec.properties[{prop.name}].visitors.configData"
                ) from None

    def subscribable(self, prop: PropertySpec[BleVisitorConfig]) -> bool:
        """``notify: true`` properties are delivered by :meth:`subscribe`."""
        return bool(prop.visitor.notify)

    # ---- connection ----------------------------------------------------------
    def _resolve_backend(self) -> BleBackend:
        if self._backend is None:
            if self._config.backend is not None:
                self._backend = load_backend(self._config.backend)
            else:
                injected = self.resources.extras.get(EXTRAS_KEY)
                if injected is not None and not isinstance(injected, BleBackend):
                    raise ConfigError(
                        f"resources.extras[{EXTRAS_KEY!r}] is a {type(injected).__name__}, "
                        "not a mappers.ble.BleBackend"
                    )
                self._backend = injected or PLATFORM
        return self._backend

    @property
    def connected(self) -> bool:
        """Whether the driver holds a live connection."""
        client = self._client
        return client is not None and client.is_connected

    async def connect(self) -> None:
        """Find the peripheral, connect, discover services. Idempotent.

        Raises:
            DeviceUnavailable: not seen within ``scanTimeout`` or the link failed.
            DeviceTimeout: connecting took longer than ``connectTimeout``.
            ConfigError: the configured backend cannot be loaded.
        """
        async with self._mutex:
            if self.connected:
                return
            self._closing = False
            await self._drop_client()
            backend = self._resolve_backend()
            if self._connect_lock is None:
                key = ("ble-adapter", backend.name)
                self._connect_lock = await self.resources.acquire(key, _new_lock)
                self._lock_key = key
            ble_device = await self._find(backend)
            client = BleakClient(
                ble_device,
                disconnected_callback=self._on_disconnected,
                timeout=self._config.connectTimeout,
                backend=backend.client_backend,
                **dict(backend.kwargs),
            )
            try:
                async with self._connect_lock, asyncio.timeout(self._config.connectTimeout):
                    await client.connect()
            except TimeoutError as exc:
                await _quiet_disconnect(client)
                raise DeviceTimeout(
                    f"{self._target()}: no connection within {self._config.connectTimeout:g} s"
                ) from exc
            except _IO_ERRORS as exc:
                await _quiet_disconnect(client)
                raise DeviceUnavailable(f"{self._target()}: cannot connect: {exc}") from exc
            if not client.is_connected:  # dropped between discovery and here
                raise DeviceUnavailable(f"{self._target()}: the link dropped while connecting")
            self._client = client
            self._resolve_characteristics(client)
            self.set_state(DeviceState.ONLINE)
            log.info(
                "ble connected device=%s address=%s backend=%s",
                self.device.id,
                client.address,
                backend.name,
            )

    def _target(self) -> str:
        cfg = self._config
        parts = []
        if cfg.macAddress:
            parts.append(f"address {cfg.macAddress}")
        if cfg.name:
            parts.append(f"name {cfg.name!r}")
        return f"BLE device {self.device.id} ({', '.join(parts)})"

    async def _find(self, backend: BleBackend) -> BLEDevice:
        cfg = self._config
        mac, name = cfg.macAddress, cfg.name

        def matches(dev: BLEDevice, adv: AdvertisementData) -> bool:
            if mac is not None and dev.address.upper() != mac:
                return False
            return name is None or name in (adv.local_name, dev.name)

        # The callback is registered before scanning starts, so an advertisement
        # reported as the scan starts (a device the stack already knows, or one
        # that advertises rarely) is not missed.
        found: asyncio.Future[BLEDevice] = asyncio.get_running_loop().create_future()

        def detected(dev: BLEDevice, adv: AdvertisementData) -> None:
            if not found.done() and matches(dev, adv):
                found.set_result(dev)

        try:
            scanner = BleakScanner(
                detected, backend=backend.scanner_backend, **dict(backend.kwargs)
            )
            async with scanner, asyncio.timeout(cfg.scanTimeout):
                return await found
        except TimeoutError:
            pass
        except _IO_ERRORS as exc:
            raise DeviceUnavailable(f"{self._target()}: scanning failed: {exc}") from exc
        raise DeviceUnavailable(
            f"{self._target()}: not found advertising within {cfg.scanTimeout:g} s"
        )

    def _resolve_characteristics(self, client: BleakClient) -> None:
        first: dict[str, BleakGATTCharacteristic] = {}
        for handle in sorted(client.services.characteristics):
            char = client.services.characteristics[handle]
            first.setdefault(char.uuid, char)
        for plan in self._plans.values():
            plan.char = first.get(plan.uuid)
            if plan.char is None:
                log.warning(
                    "ble characteristic missing device=%s property=%s uuid=%s",
                    self.device.id,
                    plan.name,
                    plan.uuid,
                )

    def _on_disconnected(self, client: BleakClient) -> None:
        if client is not self._client or self._closing:
            return
        self._notifying.clear()
        log.warning("ble disconnected device=%s", self.device.id)
        self.set_state(DeviceState.OFFLINE)

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._notifying.clear()
        for plan in self._plans.values():
            plan.char = None
            plan.sink = None
        if client is not None:
            await _quiet_disconnect(client)

    async def close(self) -> None:
        """Disconnect and release the adapter lease. Idempotent."""
        self._closing = True
        async with self._mutex:
            await self._drop_client()
            if self._lock_key is not None:
                key, self._lock_key, self._connect_lock = self._lock_key, None, None
                await self.resources.release(key)
            if self._state is DeviceState.ONLINE:
                # Closing on purpose is not an outage: no listener is told to reconnect.
                self._state = DeviceState.UNKNOWN

    def _live_client(self) -> BleakClient:
        client = self._client
        if client is None or not client.is_connected:
            raise DeviceUnavailable(f"{self._target()}: not connected")
        return client

    def _lost(self, exc: BaseException) -> DeviceUnavailable:
        self._notifying.clear()
        self.set_state(DeviceState.OFFLINE)
        return DeviceUnavailable(f"{self._target()}: connection lost: {exc}")

    # ---- reads ---------------------------------------------------------------
    async def read(
        self, properties: Sequence[PropertySpec[BleVisitorConfig]]
    ) -> dict[str, Reading]:
        """Read each property's characteristic; one reading per property.

        Raises:
            DeviceUnavailable: the connection is gone.
        """
        client = self._live_client()
        plans = self._plans
        out: dict[str, Reading] = {}
        for prop in properties:
            plan = plans.get(prop.name)
            if plan is None:
                out[prop.name] = Reading.bad(f"{prop.name!r} is not a property of this device")
                continue
            out[prop.name] = await self._read_one(client, plan)
        return out

    async def _read_one(self, client: BleakClient, plan: _Plan) -> Reading:
        char = plan.char
        if char is None:
            return Reading.bad(
                f"characteristic {plan.uuid} is not on the device", code="ATTRIBUTE_NOT_FOUND"
            )
        try:
            data = await client.read_gatt_char(char)
        except BleakGATTProtocolError as exc:
            code = att_error_name(exc)
            return Reading.bad(f"the device refused the read: {code}", code=code)
        except _IO_ERRORS as exc:
            if not client.is_connected:
                raise self._lost(exc) from exc
            return Reading.bad(f"read failed: {exc}")
        try:
            return Reading(plan.codec.decode(data), timestamp=now_ms())
        except ValueError as exc:
            return Reading.bad(f"cannot decode {bytes(data).hex() or 'empty value'}: {exc}")

    # ---- writes --------------------------------------------------------------
    async def write(self, prop: PropertySpec[BleVisitorConfig], value: Value) -> Reading | None:
        """Write ``value``, then read it back when the characteristic is readable.

        Uses a write request (with response) unless the characteristic only
        supports write-without-response.

        Raises:
            WriteRejected: the value has no encoding (``code=None``) or the device
                answered with an ATT error (``code`` is its name).
            DeviceUnavailable: the connection is gone.
        """
        plan = self._plans[prop.name]
        codec = plan.codec
        if codec.encode is None:
            raise WriteRejected(codec.cannot_write or "this property cannot be written")
        try:
            data = codec.encode(value)
        except ValueError as exc:
            raise WriteRejected(str(exc)) from exc
        client = self._live_client()
        char = plan.char
        if char is None:
            raise WriteRejected(
                f"characteristic {plan.uuid} is not on the device", code="ATTRIBUTE_NOT_FOUND"
            )
        props = char.properties
        response = "write" in props or "write-without-response" not in props
        try:
            await client.write_gatt_char(char, data, response=response)
        except BleakGATTProtocolError as exc:
            code = att_error_name(exc)
            raise WriteRejected(f"the device refused the write: {code}", code=code) from exc
        except _IO_ERRORS as exc:
            if not client.is_connected:
                raise self._lost(exc) from exc
            raise DeviceUnavailable(f"{self._target()}: write failed: {exc}") from exc
        if "read" not in props:
            return None
        return await self._read_one(client, plan)

    # ---- notifications -------------------------------------------------------
    async def subscribe(
        self, properties: Sequence[PropertySpec[BleVisitorConfig]], sink: ReadingSink
    ) -> None:
        """Enable notifications of ``properties`` (once per connection) into ``sink``.

        A property whose characteristic is missing or refuses notifications gets
        one bad reading in ``sink``; the others go on.

        Raises:
            DeviceUnavailable: the connection is gone.
        """
        client = self._live_client()
        for prop in properties:
            plan = self._plans[prop.name]
            plan.sink = sink
            if plan.name in self._notifying:
                continue
            char = plan.char
            if char is None:
                sink(
                    plan.name,
                    Reading.bad(
                        f"characteristic {plan.uuid} is not on the device",
                        code="ATTRIBUTE_NOT_FOUND",
                    ),
                )
                continue
            if "notify" not in char.properties and "indicate" not in char.properties:
                sink(
                    plan.name,
                    Reading.bad(
                        f"characteristic {plan.uuid} does not notify", code="REQUEST_NOT_SUPPORTED"
                    ),
                )
                continue
            try:
                await client.start_notify(char, _Notifier(plan))
            except BleakGATTProtocolError as exc:
                code = att_error_name(exc)
                sink(plan.name, Reading.bad(f"the device refused notifications: {code}", code=code))
                continue
            except _IO_ERRORS as exc:
                if not client.is_connected:
                    raise self._lost(exc) from exc
                sink(plan.name, Reading.bad(f"cannot enable notifications: {exc}"))
                continue
            self._notifying.add(plan.name)


class _Notifier:
    """bleak's notification callback for one property: decode and hand to the sink."""

    __slots__ = ("plan",)

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan

    def __call__(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        plan = self.plan
        sink = plan.sink
        if sink is None:
            return
        try:
            value = plan.codec.decode(data)
        except ValueError as exc:
            shown = bytes(data).hex() or "empty value"
            sink(plan.name, Reading.bad(f"cannot decode {shown}: {exc}"))
            return
        sink(plan.name, Reading(value, timestamp=now_ms()))


async def _new_lock() -> asyncio.Lock:
    return asyncio.Lock()


async def _quiet_disconnect(client: BleakClient) -> None:
    """Disconnect without raising: the link may already be gone."""
    try:
        async with asyncio.timeout(DISCONNECT_TIMEOUT):
            await client.disconnect()
    except (*_IO_ERRORS, asyncio.CancelledError) as exc:
        if isinstance(exc, asyncio.CancelledError):
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        log.debug("ble disconnect ignored error=%r", exc)
