"""A small in-memory driver for testing the runtime without a protocol.

The "devices" live in a :class:`MemBus` handed to drivers through
``Resources.extras["mem.bus"]`` (the SDK's injection hook), so each test has
its own and can make a device go away, fail one address or refuse a write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from mapper_sdk.driver import Capability, DeviceState, Driver, Reading, ReadingSink
from mapper_sdk.errors import ConfigError, DeviceUnavailable, MapperError, WriteRejected
from mapper_sdk.model import DeviceSpec, PropertySpec, Value


class MemProtocol(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    device: str
    initial: dict[str, float | int | bool | str] = {}


class MemVisitor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    address: str
    subscribe: bool = False


@dataclass
class MemDevice:
    values: dict[str, Value] = field(default_factory=dict)
    online: bool = True
    bad: set[str] = field(default_factory=set)
    refuse: dict[str, str] = field(default_factory=dict)
    reads: list[tuple[float, tuple[str, ...]]] = field(default_factory=list)
    writes: list[tuple[str, Value]] = field(default_factory=list)
    connects: int = 0
    connect_attempts: list[float] = field(default_factory=list)
    sinks: list[tuple[ReadingSink, dict[str, str]]] = field(default_factory=list)

    def push(self, address: str, value: Value) -> None:
        """Change a value and notify subscribers (a device-side change)."""
        self.values[address] = value
        for sink, names in self.sinks:
            if address in names:
                sink(names[address], Reading.good(value))


@dataclass
class MemBus:
    devices: dict[str, MemDevice] = field(default_factory=dict)

    def device(self, name: str) -> MemDevice:
        return self.devices.setdefault(name, MemDevice())


class MemDriver(Driver[MemProtocol, MemVisitor]):
    protocol = "mem"
    protocol_config = MemProtocol
    visitor_config = MemVisitor
    capabilities = frozenset({Capability.WRITE, Capability.SUBSCRIBE})

    def __init__(self, device: DeviceSpec[MemProtocol, MemVisitor], resources: Any = None) -> None:
        super().__init__(device, resources)
        self._dev: MemDevice | None = None
        self._sink: tuple[ReadingSink, dict[str, str]] | None = None

    @classmethod
    def validate_device(cls, device: DeviceSpec[MemProtocol, MemVisitor]) -> None:
        seen: dict[str, str] = {}
        for prop in device.properties:
            if prop.visitor.address in seen:
                other = seen[prop.visitor.address]
                raise ConfigError(
                    f"address {prop.visitor.address!r} is also used by {other}",
                    location=f"spec.properties[{prop.index}].visitors.configData.address",
                )
            seen[prop.visitor.address] = prop.name

    def _bus(self) -> MemBus:
        bus = self.resources.extras.setdefault("mem.bus", MemBus())
        if not isinstance(bus, MemBus):
            raise ConfigError("resources.extras['mem.bus'] is not a MemBus")
        return bus

    async def connect(self) -> None:
        if self._dev is not None:
            return
        cfg = self.device.protocol_config
        dev = self._bus().device(cfg.device)
        for address, value in cfg.initial.items():
            dev.values.setdefault(address, value)
        dev.connect_attempts.append(time.monotonic())
        await asyncio.sleep(0)
        if not dev.online:
            raise DeviceUnavailable(f"mem device {self.device.protocol_config.device} is down")
        dev.connects += 1
        self._dev = dev
        self.set_state(DeviceState.ONLINE)

    async def close(self) -> None:
        dev, self._dev = self._dev, None
        if dev is not None and self._sink is not None and self._sink in dev.sinks:
            dev.sinks.remove(self._sink)
        self._sink = None

    def _live(self) -> MemDevice:
        if self._dev is None:
            raise MapperError("not connected")
        if not self._dev.online:
            raise DeviceUnavailable("mem device went away")
        return self._dev

    async def read(self, properties: Sequence[PropertySpec[MemVisitor]]) -> dict[str, Reading]:
        dev = self._live()
        await asyncio.sleep(0)
        dev.reads.append((time.monotonic(), tuple(p.name for p in properties)))
        out: dict[str, Reading] = {}
        for prop in properties:
            addr = prop.visitor.address
            if addr in dev.bad or addr not in dev.values:
                out[prop.name] = Reading.bad(f"address {addr} failed", code="E_ADDR")
            else:
                out[prop.name] = Reading.good(dev.values[addr])
        return out

    async def write(self, prop: PropertySpec[MemVisitor], value: Value) -> Reading | None:
        dev = self._live()
        addr = prop.visitor.address
        if addr in dev.refuse:
            raise WriteRejected(dev.refuse[addr], code="E_REFUSED")
        dev.values[addr] = value
        dev.writes.append((prop.name, value))
        return None

    def subscribable(self, prop: PropertySpec[MemVisitor]) -> bool:
        return prop.visitor.subscribe

    async def subscribe(
        self, properties: Sequence[PropertySpec[MemVisitor]], sink: ReadingSink
    ) -> None:
        dev = self._live()
        self._sink = (sink, {p.visitor.address: p.name for p in properties})
        dev.sinks.append(self._sink)

    def go_offline(self) -> None:
        """What a driver does from a connection callback."""
        self.set_state(DeviceState.OFFLINE)
