"""A stand-in BlueZ on a private D-Bus, for a smoke test of bleak's real BlueZ backend.

bleak's Linux backend talks to ``org.bluez`` on the system bus over D-Bus. This
module starts a private ``dbus-daemon`` and serves, under the name
``org.bluez``, the part of BlueZ's D-Bus API that bleak uses: the object
manager, an adapter (discovery), devices (connect, disconnect) and GATT
services and characteristics (read, write, notify), with BlueZ's signals and
errors. bleak reaches it through ``DBUS_SYSTEM_BUS_ADDRESS``, so the code under
test is bleak's own BlueZ backend, unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

ADAPTER = "/org/bluez/hci0"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
PROPERTIES = "org.freedesktop.DBus.Properties"

_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_sender="*"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
"""


def dbus_daemon() -> str | None:
    """The ``dbus-daemon`` binary, or ``None`` when it is not installed."""
    return shutil.which("dbus-daemon")


@contextlib.asynccontextmanager
async def private_bus(workdir: Path) -> AsyncIterator[str]:
    """Run a private dbus-daemon; yield its address."""
    binary = dbus_daemon()
    assert binary is not None
    socket = workdir / "system_bus_socket"
    config = workdir / "bus.conf"
    config.write_text(_CONFIG.format(socket=socket))
    proc = await asyncio.create_subprocess_exec(
        binary,
        f"--config-file={config}",
        "--nofork",
        "--nopidfile",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        for _ in range(250):
            if socket.exists():
                break
            if proc.returncode is not None:
                assert proc.stderr is not None
                raise RuntimeError(f"dbus-daemon exited: {await proc.stderr.read()!r}")
            await asyncio.sleep(0.02)
        else:
            raise RuntimeError("dbus-daemon did not open its socket within 5 s")
        yield f"unix:path={socket}"
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


@dataclass
class Characteristic:
    uuid: str
    flags: list[str]
    value: bytes
    on_write: Callable[[bytes], None] | None = None
    path: str = ""
    notifying: bool = False


@dataclass
class Service:
    uuid: str
    characteristics: list[Characteristic]
    path: str = ""


@dataclass
class Peripheral:
    address: str
    name: str
    services: list[Service]
    path: str = ""
    connected: bool = False
    writes: list[tuple[str, bytes]] = field(default_factory=list)


class FakeBlueZ:
    """``org.bluez`` with one adapter and the given peripherals (found by discovery)."""

    def __init__(self, address: str, peripherals: list[Peripheral]) -> None:
        self.address = address
        self.peripherals = peripherals
        self.bus: MessageBus | None = None
        self.objects: dict[str, dict[str, dict[str, Variant]]] = {
            ADAPTER: {
                "org.bluez.Adapter1": {
                    "Address": Variant("s", "00:11:22:33:44:55"),
                    "Name": Variant("s", "mapperkit-test"),
                    "Alias": Variant("s", "mapperkit-test"),
                    "Powered": Variant("b", True),
                    "Discovering": Variant("b", False),
                    "UUIDs": Variant("as", []),
                    "Roles": Variant("as", ["central", "peripheral"]),
                }
            }
        }
        self.by_path: dict[str, Characteristic] = {}
        self.calls: list[str] = []
        handle = 0x10
        for p in peripherals:
            p.path = f"{ADAPTER}/dev_{p.address.replace(':', '_')}"
            for s in p.services:
                s.path = f"{p.path}/service{handle:04x}"
                handle += 1
                for c in s.characteristics:
                    c.path = f"{s.path}/char{handle:04x}"
                    handle += 2
                    self.by_path[c.path] = c
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> FakeBlueZ:
        self.bus = await MessageBus(bus_address=self.address).connect()
        self.bus.add_message_handler(self._handle)
        await self.bus.request_name("org.bluez")
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.bus is not None:
            self.bus.disconnect()

    # ---- signals ---------------------------------------------------------------
    def _signal(
        self, path: str, interface: str, member: str, signature: str, body: list[Any]
    ) -> None:
        assert self.bus is not None
        self.bus.send(Message.new_signal(path, interface, member, signature, body))

    def _add(self, path: str, interfaces: dict[str, dict[str, Variant]]) -> None:
        self.objects[path] = interfaces
        self._signal("/", OBJECT_MANAGER, "InterfacesAdded", "oa{sa{sv}}", [path, interfaces])

    def _remove(self, path: str) -> None:
        interfaces = self.objects.pop(path, None)
        if interfaces is not None:
            self._signal("/", OBJECT_MANAGER, "InterfacesRemoved", "oas", [path, list(interfaces)])

    def _changed(self, path: str, interface: str, props: dict[str, Variant]) -> None:
        self.objects[path][interface].update(props)
        self._signal(path, PROPERTIES, "PropertiesChanged", "sa{sv}as", [interface, props, []])

    # ---- methods ---------------------------------------------------------------
    def _handle(self, msg: Message) -> Message | bool | None:
        if msg.message_type is not MessageType.METHOD_CALL:
            return None
        self.calls.append(f"{msg.interface}.{msg.member}")
        key = (msg.interface, msg.member)
        if key == (OBJECT_MANAGER, "GetManagedObjects"):
            return Message.new_method_return(msg, "a{oa{sa{sv}}}", [self.objects])
        if key == ("org.bluez.Adapter1", "SetDiscoveryFilter"):
            return Message.new_method_return(msg)
        if key == ("org.bluez.Adapter1", "StartDiscovery"):
            self._changed(ADAPTER, "org.bluez.Adapter1", {"Discovering": Variant("b", True)})
            for p in self.peripherals:
                if p.path not in self.objects:
                    self._add(p.path, {"org.bluez.Device1": self._device_props(p)})
                else:
                    self._changed(p.path, "org.bluez.Device1", {"RSSI": Variant("n", -50)})
            return Message.new_method_return(msg)
        if key == ("org.bluez.Adapter1", "StopDiscovery"):
            self._changed(ADAPTER, "org.bluez.Adapter1", {"Discovering": Variant("b", False)})
            return Message.new_method_return(msg)
        if key == ("org.bluez.Device1", "Connect"):
            return self._connect(msg)
        if key == ("org.bluez.Device1", "Disconnect"):
            self._disconnect(msg.path)
            return Message.new_method_return(msg)
        if msg.interface == "org.bluez.GattCharacteristic1":
            return self._gatt(msg)
        if msg.interface is not None and msg.interface.startswith("org.freedesktop.DBus"):
            return None
        return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod", str(key))

    def _device_props(self, p: Peripheral) -> dict[str, Variant]:
        return {
            "Address": Variant("s", p.address),
            "AddressType": Variant("s", "random"),
            "Name": Variant("s", p.name),
            "Alias": Variant("s", p.name),
            "Adapter": Variant("o", ADAPTER),
            "Paired": Variant("b", False),
            "Bonded": Variant("b", False),
            "Trusted": Variant("b", False),
            "Blocked": Variant("b", False),
            "Connected": Variant("b", False),
            "ServicesResolved": Variant("b", False),
            "LegacyPairing": Variant("b", False),
            "RSSI": Variant("n", -50),
            "UUIDs": Variant("as", [s.uuid for s in p.services]),
            "ManufacturerData": Variant("a{qv}", {}),
            "ServiceData": Variant("a{sv}", {}),
        }

    def _peripheral(self, path: str | None) -> Peripheral | None:
        return next((p for p in self.peripherals if p.path == path), None)

    def _connect(self, msg: Message) -> Message:
        p = self._peripheral(msg.path)
        if p is None or p.path not in self.objects:
            return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownObject", "no device")
        if not p.connected:
            p.connected = True
            self._changed(p.path, "org.bluez.Device1", {"Connected": Variant("b", True)})
            for s in p.services:
                self._add(
                    s.path,
                    {
                        "org.bluez.GattService1": {
                            "UUID": Variant("s", s.uuid),
                            "Device": Variant("o", p.path),
                            "Primary": Variant("b", True),
                            "Includes": Variant("ao", []),
                        }
                    },
                )
                for c in s.characteristics:
                    self._add(
                        c.path,
                        {
                            "org.bluez.GattCharacteristic1": {
                                "UUID": Variant("s", c.uuid),
                                "Service": Variant("o", s.path),
                                "Value": Variant("ay", b""),
                                "Notifying": Variant("b", False),
                                "Flags": Variant("as", c.flags),
                                "MTU": Variant("q", 247),
                            }
                        },
                    )
            self._changed(p.path, "org.bluez.Device1", {"ServicesResolved": Variant("b", True)})
        return Message.new_method_return(msg)

    def _disconnect(self, path: str | None) -> None:
        p = self._peripheral(path)
        if p is None or not p.connected:
            return
        p.connected = False
        for s in p.services:
            for c in s.characteristics:
                c.notifying = False
                self._remove(c.path)
            self._remove(s.path)
        self._changed(
            p.path,
            "org.bluez.Device1",
            {"ServicesResolved": Variant("b", False), "Connected": Variant("b", False)},
        )

    def _gatt(self, msg: Message) -> Message:
        c = self.by_path.get(msg.path or "")
        if c is None or msg.path not in self.objects:
            return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownObject", "gone")
        if msg.member == "ReadValue":
            if "read" not in c.flags:
                return Message.new_error(msg, "org.bluez.Error.NotPermitted", "Read not permitted")
            return Message.new_method_return(msg, "ay", [c.value])
        if msg.member == "WriteValue":
            if not {"write", "write-without-response"} & set(c.flags):
                return Message.new_error(msg, "org.bluez.Error.NotPermitted", "Write not permitted")
            data = bytes(msg.body[0])
            c.value = data
            if c.on_write is not None:
                c.on_write(data)
            return Message.new_method_return(msg)
        if msg.member == "StartNotify":
            c.notifying = True
            self._changed(
                c.path, "org.bluez.GattCharacteristic1", {"Notifying": Variant("b", True)}
            )
            return Message.new_method_return(msg)
        if msg.member == "StopNotify":
            c.notifying = False
            self._changed(
                c.path, "org.bluez.GattCharacteristic1", {"Notifying": Variant("b", False)}
            )
            return Message.new_method_return(msg)
        return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod", str(msg.member))

    def notify(self, c: Characteristic, value: bytes) -> None:
        """Change a characteristic's value; subscribers get a notification."""
        c.value = value
        if c.notifying and c.path in self.objects:
            self._changed(c.path, "org.bluez.GattCharacteristic1", {"Value": Variant("ay", value)})
