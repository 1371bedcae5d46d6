"""The driver contract: what a protocol implements to become a Mapperkit mapper.

This is the one file a plugin author must read. A driver instance serves one
device; the runtime (:mod:`mapper_sdk.runtime`) owns it, schedules its reads,
converts and validates values against the DeviceModel, reports to the twin and
to the data plane, and retries connections. The driver stays thin: it speaks
its protocol.

Writing a driver::

    class MyProtocol(BaseModel):            # the device's protocol configData
        model_config = ConfigDict(extra="forbid", frozen=True)
        host: str
        port: int = 7000

    class MyVisitor(BaseModel):             # each property's visitor configData
        model_config = ConfigDict(extra="forbid", frozen=True)
        register: str

    class MyDriver(Driver[MyProtocol, MyVisitor]):
        protocol = "myproto"
        protocol_config = MyProtocol
        visitor_config = MyVisitor
        capabilities = frozenset({Capability.WRITE})

        async def connect(self) -> None: ...
        async def close(self) -> None: ...
        async def read(self, properties): ...
        async def write(self, prop, value): ...

and register it in your package's ``pyproject.toml``::

    [project.entry-points."mapper_sdk.drivers"]
    myproto = "my_package:MyDriver"

The rules every driver follows (the conformance kit in
:mod:`mapper_sdk.testing` checks them):

* ``__init__`` does no I/O. ``connect`` opens the device connection and raises
  :class:`~mapper_sdk.errors.DeviceUnavailable` for a device that is down (the
  runtime retries with backoff) or :class:`~mapper_sdk.errors.ConfigError` for
  a configuration that can never work (no retry). ``connect`` and ``close`` are
  idempotent; ``close`` cancels everything the driver started.
* ``read`` gets a batch (every property due in this cycle) so the driver can
  coalesce requests. It returns one :class:`Reading` per requested property. A
  property that fails gets a reading with :attr:`Quality.BAD` and an error; only
  a failure of the whole device (connection lost) raises ``DeviceUnavailable``.
* ``write`` receives a value already validated against the model and converted
  to the property's type. It raises :class:`~mapper_sdk.errors.WriteRejected`
  when the device refuses the value (an exception code, a status, an ATT error)
  and ``DeviceUnavailable`` on I/O failure. It may return the read-back reading;
  when it returns ``None`` the runtime reads the property back itself. The twin
  always reports what the device says, never what was asked for.
* Values cross the boundary as Python values (``int``, ``float``, ``bool``,
  ``str``, ``bytes``); the runtime converts them to the model type once.
* Library exceptions are converted at the boundary into the SDK's errors,
  chained with ``raise ... from exc``.
* The runtime never runs two ``read``/``write`` calls of one driver instance at
  the same time; drivers that share a connection between devices (a serial
  bus) serialise across instances themselves, through a shared lock from
  :class:`Resources`.
"""

from __future__ import annotations

import asyncio
import enum
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from .errors import NotSupported
from .model import DeviceSpec, PropertySpec, Value

__all__ = [
    "Capability",
    "DeviceState",
    "Driver",
    "Quality",
    "Reading",
    "ReadingSink",
    "Resources",
    "now_ms",
]

P = TypeVar("P", bound=BaseModel)
V = TypeVar("V", bound=BaseModel)
T = TypeVar("T")


def now_ms() -> int:
    """Wall-clock time in milliseconds since the epoch (KubeEdge's unit)."""
    return time.time_ns() // 1_000_000


class Quality(enum.StrEnum):
    """How far a reading can be trusted."""

    GOOD = "good"
    BAD = "bad"
    UNCERTAIN = "uncertain"


class DeviceState(enum.StrEnum):
    """KubeEdge's device states, as reported on ``.../state/update``."""

    ONLINE = "online"
    OFFLINE = "offline"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"


class Capability(enum.StrEnum):
    """Optional driver abilities the runtime reads instead of probing."""

    WRITE = "write"
    SUBSCRIBE = "subscribe"
    DISCOVER = "discover"


@dataclass(slots=True)
class Reading:
    """One property's value as read from the device.

    Attributes:
        value: the value, typed (``int``, ``float``, ``bool``, ``str``,
            ``bytes``); ``None`` when the quality is bad.
        quality: :attr:`Quality.GOOD` unless something went wrong.
        timestamp: when it was read, ms since the epoch.
        source_timestamp: when the device says it was sampled, if it says.
        error: a readable reason for a bad quality.
        error_code: the protocol's code for it (Modbus exception code, OPC-UA
            status name, ATT error name).
        server_timestamp: when a server in between (an OPC-UA server) last saw
            the value, if it says.
    """

    value: Value | None
    quality: Quality = Quality.GOOD
    timestamp: int = 0
    source_timestamp: int | None = None
    error: str | None = None
    error_code: int | str | None = None
    server_timestamp: int | None = None

    @classmethod
    def good(cls, value: Value, timestamp: int | None = None) -> Reading:
        return cls(value, Quality.GOOD, now_ms() if timestamp is None else timestamp)

    @classmethod
    def bad(
        cls, error: str, code: int | str | None = None, timestamp: int | None = None
    ) -> Reading:
        return cls(
            None,
            Quality.BAD,
            now_ms() if timestamp is None else timestamp,
            error=error,
            error_code=code,
        )

    @property
    def ok(self) -> bool:
        return self.quality is not Quality.BAD


ReadingSink = Callable[[str, Reading], None]
"""Where a subscribing driver delivers values: ``sink(property_name, reading)``.

The sink is synchronous and cheap; call it from the driver's own callbacks.
"""

StateListener = Callable[["DeviceState"], None]


class _Lease:
    __slots__ = ("close", "count", "ready", "value")

    def __init__(self, close: Callable[[Any], Awaitable[None]] | None) -> None:
        self.value: Any = None
        self.count = 0
        self.close = close
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class Resources:
    """A keyed, reference-counted pool of connections shared between drivers.

    Several devices often sit behind one connection: Modbus units behind one
    TCP gateway or serial bus, BLE devices behind one adapter. A driver asks
    for the shared object by key; the first user creates it, the last one to
    release it closes it::

        self._bus = await self.resources.acquire(
            ("modbus-tcp", host, port), open_bus, close=close_bus)
        ...
        await self.resources.release(("modbus-tcp", host, port))

    Drivers never keep module-level singletons.
    """

    def __init__(self) -> None:
        self._leases: dict[Any, _Lease] = {}
        self.extras: dict[str, Any] = {}
        """Process-wide injections (for example a BLE backend class) by name."""

    async def acquire(
        self,
        key: Any,
        factory: Callable[[], Awaitable[T]],
        *,
        close: Callable[[T], Awaitable[None]] | None = None,
    ) -> T:
        """Return the object for ``key``, creating it with ``factory`` on first use."""
        lease = self._leases.get(key)
        if lease is None:
            lease = _Lease(close)
            self._leases[key] = lease
            try:
                lease.value = await factory()
            except BaseException as exc:
                del self._leases[key]
                lease.ready.set_exception(exc)
                lease.ready.exception()  # mark retrieved; waiters re-raise it
                raise
            lease.ready.set_result(None)
        else:
            await asyncio.shield(lease.ready)
        lease.count += 1
        return lease.value  # type: ignore[no-any-return]

    async def release(self, key: Any) -> None:
        """Drop one use of ``key``; the last release closes the object."""
        lease = self._leases.get(key)
        if lease is None or lease.count == 0:
            return
        lease.count -= 1
        if lease.count == 0:
            del self._leases[key]
            if lease.close is not None:
                await lease.close(lease.value)

    def users(self, key: Any) -> int:
        """How many drivers hold ``key`` now."""
        lease = self._leases.get(key)
        return 0 if lease is None else lease.count

    async def aclose(self) -> None:
        """Close everything still held (at process shutdown)."""
        leases, self._leases = self._leases, {}
        for lease in leases.values():
            if lease.close is not None and lease.ready.done() and not lease.ready.exception():
                try:
                    await lease.close(lease.value)
                except Exception:  # noqa: BLE001 - shutdown must go on
                    pass


class Driver(ABC, Generic[P, V]):
    """Base class of every protocol driver. One instance serves one device.

    Class attributes a driver sets:
        protocol: the protocol name used in Device YAML (``protocolName``).
        protocol_config: the pydantic class of the device's ``configData``.
        visitor_config: the pydantic class of each property's visitor ``configData``.
        capabilities: the optional abilities it has (:class:`Capability`).

    Instance attributes the base sets:
        device: the device's merged, validated configuration;
            ``device.protocol_config`` is a ``protocol_config`` instance and each
            property's ``visitor`` a ``visitor_config`` instance.
        resources: the process's shared-connection pool.
    """

    protocol: ClassVar[str]
    protocol_config: ClassVar[type[BaseModel]]
    visitor_config: ClassVar[type[BaseModel]]
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.WRITE})

    def __init__(self, device: DeviceSpec[P, V], resources: Resources | None = None) -> None:
        self.device = device
        self.resources = resources if resources is not None else Resources()
        self._state = DeviceState.UNKNOWN
        self._state_listener: StateListener | None = None

    # ---- configuration hooks -------------------------------------------------
    @classmethod
    def validate_device(cls, device: DeviceSpec[P, V]) -> None:
        """Check rules that span fields or properties, once, at load time.

        Raise :class:`~mapper_sdk.errors.ConfigError` with ``location`` set to the
        field path (``spec.properties[temp].visitors.configData.rawType``); the
        loader adds the file and document. The default accepts everything.
        """

    # ---- the contract --------------------------------------------------------
    @abstractmethod
    async def connect(self) -> None:
        """Open the connection to the device. Idempotent."""

    @abstractmethod
    async def close(self) -> None:
        """Release the connection and cancel everything the driver started. Idempotent."""

    @abstractmethod
    async def read(self, properties: Sequence[PropertySpec[V]]) -> dict[str, Reading]:
        """Read a batch of properties; return a reading for every one of them."""

    async def write(self, prop: PropertySpec[V], value: Value) -> Reading | None:
        """Write one validated, typed value. Return the read-back, or ``None``.

        The default raises :class:`NotSupported`; drivers with
        :attr:`Capability.WRITE` override it.
        """
        raise NotSupported(f"the {self.protocol} driver does not write values")

    async def subscribe(self, properties: Sequence[PropertySpec[V]], sink: ReadingSink) -> None:
        """Start pushing values of ``properties`` to ``sink`` until ``close``.

        For drivers with :attr:`Capability.SUBSCRIBE` (OPC-UA monitored items, BLE
        notifications). Return once the subscription is set up. The default
        raises :class:`NotSupported`, and the runtime polls instead.
        """
        raise NotSupported(f"the {self.protocol} driver does not subscribe")

    def subscribable(self, prop: PropertySpec[V]) -> bool:
        """Whether ``prop`` should be delivered by :meth:`subscribe` rather than polled.

        The default is ``False``; subscribing drivers decide per property from
        its visitor (``mode: subscribe``, ``notify: true``).
        """
        return False

    def counters(self) -> Mapping[str, int]:
        """Protocol-specific counters exported as metrics (``requests``, ``coalesced`` ...).

        Optional; the default has none. Keep it cheap: it is read at scrape time.
        """
        return {}

    # ---- state ---------------------------------------------------------------
    def state(self) -> DeviceState:
        """The device's state as the driver knows it."""
        return self._state

    def set_state(self, state: DeviceState) -> None:
        """Record a state change; a driver calls this from its connection callbacks.

        Setting :attr:`DeviceState.OFFLINE` from a callback (BLE disconnect,
        OPC-UA watchdog) tells the runtime to reconnect.
        """
        if state is self._state:
            return
        self._state = state
        if self._state_listener is not None:
            self._state_listener(state)

    def on_state_change(self, listener: StateListener | None) -> None:
        """Used by the runtime to follow state changes."""
        self._state_listener = listener
