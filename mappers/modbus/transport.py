"""One shared pymodbus client per bus: a TCP connection, a gateway, or a serial line.

Several devices often sit behind one connection: units behind a TCP gateway,
drops on an RS-485 line. Each bus has one client, one lock (so a serial line
never has two requests in flight and a read-modify-write is atomic) and the
configured silence between requests. Drivers obtain a bus from the runtime's
:class:`~mapper_sdk.driver.Resources` pool by :func:`bus_key`; the last driver
to release it closes the client.

pymodbus exceptions are converted here, once: a connection that is down raises
:class:`~mapper_sdk.errors.DeviceUnavailable`, no answer within the timeout
raises :class:`~mapper_sdk.errors.DeviceTimeout`. A Modbus exception response is
*not* an error at this level; it is returned for the driver to judge.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from mapper_sdk.errors import ConfigError, DeviceTimeout, DeviceUnavailable, ProtocolError

from .config import CommunicateMode, ModbusProtocolConfig, Table

__all__ = ["Bus", "bus_key", "close_bus", "open_bus"]

log = logging.getLogger(__name__)

_PARITY = {"None": "N", "Even": "E", "Odd": "O"}

LostListener = Callable[[], None]


def bus_key(cfg: ModbusProtocolConfig) -> tuple[str, ...]:
    """The key under which devices share a bus.

    Devices on the same serial port share it; so do devices reached through
    the same host and port with the same framing.
    """
    if cfg.communicateMode is CommunicateMode.RTU:
        return ("modbus", "rtu", str(cfg.serialName))
    framing = "rtu-over-tcp" if cfg.communicateMode is CommunicateMode.RTU_OVER_TCP else "tcp"
    return ("modbus", framing, str(cfg.ip), str(cfg.port))


def _serial_settings(cfg: ModbusProtocolConfig) -> tuple[Any, ...]:
    if cfg.communicateMode is not CommunicateMode.RTU:
        return ()
    return (cfg.baudRate, cfg.dataBits, cfg.parity, cfg.stopBits, cfg.rs485Enabled)


class Bus:
    """A shared pymodbus client with its lock and request gap.

    Create with :func:`open_bus` (which connects); share through
    :class:`~mapper_sdk.driver.Resources`.
    """

    def __init__(self, cfg: ModbusProtocolConfig) -> None:
        self.key = bus_key(cfg)
        self.name = (
            f"serial {cfg.serialName}"
            if cfg.communicateMode is CommunicateMode.RTU
            else f"{cfg.communicateMode.value} {cfg.ip}:{cfg.port}"
        )
        self._settings = _serial_settings(cfg)
        self._rs485 = cfg.communicateMode is CommunicateMode.RTU and cfg.rs485Enabled
        self._timeout = cfg.timeout_s
        self._gap = cfg.request_gap_s
        self._next_at = 0.0
        self._lock = asyncio.Lock()
        self._connect_lock = asyncio.Lock()
        self._listeners: list[LostListener] = []
        # Without transaction ids (RTU framing) a late answer to an abandoned
        # request could be taken for the answer to the next one: such a bus is
        # reset when a request is cancelled.
        self._reset_on_cancel = cfg.communicateMode is not CommunicateMode.TCP
        self._was_connected = False
        client: AsyncModbusTcpClient | AsyncModbusSerialClient
        if cfg.communicateMode is CommunicateMode.RTU:
            client = AsyncModbusSerialClient(
                str(cfg.serialName),
                framer=FramerType.RTU,
                baudrate=cfg.baudRate,
                bytesize=cfg.dataBits,
                parity=_PARITY[cfg.parity],
                stopbits=cfg.stopBits,
                timeout=cfg.timeout_s,
                retries=0,
                reconnect_delay=0,  # the runtime reconnects, with backoff
                trace_connect=self._traced,
            )
        else:
            client = AsyncModbusTcpClient(
                str(cfg.ip),
                port=cfg.port,
                framer=FramerType.RTU
                if cfg.communicateMode is CommunicateMode.RTU_OVER_TCP
                else FramerType.SOCKET,
                timeout=cfg.timeout_s,
                retries=0,
                reconnect_delay=0,
                trace_connect=self._traced,
            )
        self._client = client
        self._read: dict[Table, Callable[..., Awaitable[ModbusPDU]]] = {
            Table.COIL: client.read_coils,
            Table.DISCRETE: client.read_discrete_inputs,
            Table.HOLDING: client.read_holding_registers,
            Table.INPUT: client.read_input_registers,
        }

    # ---- sharing ------------------------------------------------------------------
    def join(self, cfg: ModbusProtocolConfig) -> None:
        """Check that a device's settings agree with the bus it shares.

        Raises:
            ConfigError: a serial line opened with other line settings.
        """
        settings = _serial_settings(cfg)
        if settings != self._settings:
            baud, bits, parity, stop, rs485 = self._settings
            raise ConfigError(
                f"{self.name} is already open with baudRate {baud}, dataBits {bits}, parity "
                f"{parity}, stopBits {stop}, rs485Enabled {rs485}; every device on one serial "
                "line must use the same settings",
                location="spec.protocol.configData",
            )
        # The bus keeps the longest gap any of its devices asks for.
        self._gap = max(self._gap, cfg.request_gap_s)

    def add_listener(self, listener: LostListener) -> None:
        """Call ``listener()`` when the connection drops unexpectedly."""
        self._listeners.append(listener)

    def remove_listener(self, listener: LostListener) -> None:
        try:
            self._listeners.remove(listener)
        except ValueError:
            pass

    def _traced(self, connected: bool) -> None:
        # pymodbus calls this on connection_made and on an unexpected connection_lost.
        if connected:
            return
        log.warning("bus=%r event=connection-lost", self.name)
        for listener in list(self._listeners):
            listener()

    # ---- connection ------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return bool(self._client.connected)

    async def ensure_connected(self) -> None:
        """Connect if not connected; several devices asking at once connect once.

        Raises:
            DeviceUnavailable: the connection cannot be made.
            ConfigError: the serial port cannot be put into RS-485 mode.
        """
        if self._client.connected:
            return
        async with self._connect_lock:
            if self._client.connected:
                return
            try:
                ok = await self._client.connect()
            except (OSError, ModbusException) as exc:
                raise DeviceUnavailable(f"cannot connect to {self.name}: {exc}") from exc
            if not ok:
                raise DeviceUnavailable(
                    f"cannot connect to {self.name} (refused, unreachable or no answer within "
                    f"{self._timeout:g} s)"
                )
            if self._rs485:
                self._enable_rs485()
            log.info(
                "bus=%r event=%s", self.name, "reconnected" if self._was_connected else "connected"
            )
            self._was_connected = True

    def _enable_rs485(self) -> None:
        import serial.rs485

        port = getattr(self._client.ctx.transport, "sync_serial", None)
        reason = "the transport exposes no serial port"
        if port is not None:
            try:
                port.rs485_mode = serial.rs485.RS485Settings()
                return
            except (ValueError, OSError) as exc:
                reason = str(exc)
        self._client.close()
        raise ConfigError(f"rs485Enabled: {self.name} cannot be switched to RS-485 mode: {reason}")

    def close(self) -> None:
        """Close the client (the last user releasing the bus does this)."""
        self._listeners.clear()
        self._client.close()

    # ---- requests --------------------------------------------------------------------
    async def read(self, table: Table, address: int, count: int, unit: int) -> ModbusPDU:
        """Read ``count`` registers or bits of ``table`` from ``unit``.

        Returns the response, which may be an exception response (``isError()``).
        """
        async with self._lock:
            return await self._call(self._read[table], address, count=count, device_id=unit)

    async def write_coils(self, address: int, bits: list[bool], unit: int) -> ModbusPDU:
        """FC5 for one coil, FC15 for several."""
        async with self._lock:
            if len(bits) == 1:
                return await self._call(self._client.write_coil, address, bits[0], device_id=unit)
            return await self._call(self._client.write_coils, address, bits, device_id=unit)

    async def write_registers(self, address: int, regs: list[int], unit: int) -> ModbusPDU:
        """FC6 for one holding register, FC16 for several."""
        async with self._lock:
            if len(regs) == 1:
                return await self._call(
                    self._client.write_register, address, regs[0], device_id=unit
                )
            return await self._call(self._client.write_registers, address, regs, device_id=unit)

    async def modify_register(
        self, address: int, unit: int, change: Callable[[int], int]
    ) -> ModbusPDU:
        """Read-modify-write one holding register, atomically with respect to this bus.

        Returns the read's exception response if the read is refused, else the
        write's response.
        """
        async with self._lock:
            resp = await self._call(
                self._client.read_holding_registers, address, count=1, device_id=unit
            )
            if resp.isError():
                return resp
            if not resp.registers:
                raise ProtocolError(f"{self.name}: unit {unit} answered a read with no register")
            return await self._call(
                self._client.write_register, address, change(resp.registers[0]), device_id=unit
            )

    async def _call(
        self, method: Callable[..., Awaitable[ModbusPDU]], *args: Any, **kwargs: Any
    ) -> ModbusPDU:
        # The caller holds self._lock.
        if self._gap:
            delay = self._next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        if not self._client.connected:
            raise DeviceUnavailable(f"{self.name} is not connected")
        try:
            return await method(*args, **kwargs)
        except ModbusIOException as exc:
            # pymodbus raises this for silence and for an answer from the wrong
            # unit or transaction; either way no valid answer came in time.
            detail = "" if "No response" in str(exc) else f" ({exc})"
            raise DeviceTimeout(
                f"{self.name}: unit {kwargs.get('device_id')} did not answer within "
                f"{self._timeout:g} s{detail}"
            ) from exc
        except ConnectionException as exc:
            raise DeviceUnavailable(f"{self.name}: {exc}") from exc
        except ModbusException as exc:
            raise ProtocolError(f"{self.name}: {exc}") from exc
        except asyncio.CancelledError:
            if self._reset_on_cancel:
                self._client.close()
            raise
        finally:
            if self._gap:
                self._next_at = time.monotonic() + self._gap


async def open_bus(cfg: ModbusProtocolConfig) -> Bus:
    """Create and connect a bus for ``cfg``.

    Raises:
        DeviceUnavailable: the connection cannot be made (the client is closed).
    """
    bus = Bus(cfg)
    try:
        await bus.ensure_connected()
    except BaseException:
        bus.close()
        raise
    return bus


async def close_bus(bus: Bus) -> None:
    """The ``close`` callback of the shared-resource pool."""
    bus.close()
