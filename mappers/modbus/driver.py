"""The Modbus driver: TCP, RTU on a serial line, and RTU framing over TCP.

One :class:`ModbusDriver` serves one device (one unit id). Everything that can
be decided from the configuration is decided once, in ``__init__``: each
property's layout, its compiled decoder and encoder, and its place in the
request planner. ``read`` then costs one cached plan lookup plus, per request,
one slice and one decoder call per property.
"""

from __future__ import annotations

import decimal
import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pymodbus.pdu import ModbusPDU

from mapper_sdk.codec import (
    RawType,
    make_register_decoder,
    make_register_encoder,
    scale_out,
    set_bit,
)
from mapper_sdk.driver import Capability, DeviceState, Driver, Quality, Reading, Resources, now_ms
from mapper_sdk.errors import ConfigError, DeviceUnavailable, WriteRejected
from mapper_sdk.model import DeviceSpec, PropertySpec, Value

from .config import (
    MAX_BITS_PER_WRITE,
    MAX_REGISTERS_PER_WRITE,
    Layout,
    ModbusProtocolConfig,
    ModbusVisitorConfig,
    Table,
    check_serial_cycle,
    resolve_layout,
)
from .planner import Convert, Item, Planner, Request
from .transport import Bus, bus_key, close_bus, open_bus

__all__ = ["EXCEPTION_NAMES", "ModbusDriver"]

log = logging.getLogger(__name__)

EXCEPTION_NAMES: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
# Codes that say "this address or this length is wrong": a merged read is then
# split and what fails alone is remembered.
_SPLIT_CODES = frozenset({2, 3})
# Codes with which a gateway says the unit behind it cannot be reached.
_UNREACHABLE_CODES = frozenset({10, 11})

Encode = Callable[[Value], list[Any]]


def _describe(code: int) -> str:
    return f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"


def _swap16(reg: int) -> int:
    return ((reg & 0xFF) << 8) | (reg >> 8)


# --------------------------------------------------------------------------- compiling
def compile_reader(layout: Layout) -> Convert:
    """The function that turns a property's slice of a response into its value.

    Compiled once per distinct layout and shared: a hundred meters of one
    model decode with the same functions.
    """
    return _reader(
        layout.table.is_bits,
        layout.count,
        layout.bit,
        layout.raw,
        layout.byte_swap,
        layout.word_swap,
        layout.scale,
        layout.value_offset,
    )


@functools.cache
def _reader(
    bits: bool,
    count: int,
    bit: int | None,
    raw: RawType | None,
    byte_swap: bool,
    word_swap: bool,
    scale: float,
    offset: float,
) -> Convert:
    if bits:
        if count == 1:
            return lambda values: bool(values[0])

        def mask(values: Sequence[Any]) -> Value:
            result = 0
            for i, on in enumerate(values):
                if on:
                    result |= 1 << i
            return result

        return mask
    if bit is not None:
        if byte_swap:
            return lambda regs: bool((_swap16(regs[0]) >> bit) & 1)
        return lambda regs: bool((regs[0] >> bit) & 1)
    assert raw is not None  # register tables always have a raw type
    decode = make_register_decoder(raw, byte_swap=byte_swap, word_swap=word_swap, count=count)
    scaled = scale != 1 or offset != 0
    if raw.is_float:
        isfinite = math.isfinite

        def read_float(regs: Sequence[Any]) -> Value:
            value = decode(regs)
            if not isfinite(value):  # type: ignore[arg-type]
                raise ValueError(f"the device holds {value!r}, not a finite {raw}")
            return value * scale + offset if scaled else value  # type: ignore[operator]

        return read_float
    if scaled:
        # An integer raw value scaled by a decimal (0.1, 0.001) is reported with
        # that many decimals: 214 * 0.1 reads 21.4, not 21.400000000000002.
        digits = _decimals(scale, offset)
        return lambda regs: round(decode(regs) * scale + offset, digits)  # type: ignore[operator]
    return decode


def _decimals(*numbers: float) -> int:
    """The most decimal places any of ``numbers`` is written with (at most 15)."""
    places = 0
    for number in numbers:
        exponent = decimal.Decimal(repr(number)).as_tuple().exponent
        if isinstance(exponent, int):
            places = max(places, -exponent)
    return min(places, 15)


def compile_writer(layout: Layout) -> Encode | None:
    """The function that turns a model-typed value into registers or coils.

    Returns ``None`` for tables Modbus cannot write and for a bit of a register
    (written by read-modify-write). The function raises ``ValueError`` for a
    value the layout cannot hold; nothing is sent then. Shared per distinct
    layout, like :func:`compile_reader`.
    """
    if not layout.table.writable or layout.bit is not None:
        return None
    return _writer(
        layout.table.is_bits,
        layout.count,
        layout.raw,
        layout.byte_swap,
        layout.word_swap,
        layout.scale,
        layout.value_offset,
    )


@functools.cache
def _writer(
    bits: bool,
    count: int,
    raw: RawType | None,
    byte_swap: bool,
    word_swap: bool,
    scale: float,
    offset: float,
) -> Encode:
    if bits:
        n = count
        if n == 1:
            return lambda value: [bool(value)]
        if n > MAX_BITS_PER_WRITE:
            return _unwritable(f"{n} coils exceed the {MAX_BITS_PER_WRITE} one request can write")

        def coils(value: Value) -> list[Any]:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << n:
                raise ValueError(f"{value!r} is not a bit mask of {n} coils (0..{(1 << n) - 1})")
            return [bool((value >> i) & 1) for i in range(n)]

        return coils
    if count > MAX_REGISTERS_PER_WRITE:
        return _unwritable(
            f"{count} registers exceed the {MAX_REGISTERS_PER_WRITE} one request can write"
        )
    assert raw is not None
    encode = make_register_encoder(raw, byte_swap=byte_swap, word_swap=word_swap, count=count)
    if raw.is_integer or raw.is_float:

        def number(value: Value) -> list[Any]:
            if isinstance(value, str | bytes):
                raise ValueError(f"expected a number, got {type(value).__name__}")
            return encode(scale_out(value, raw, scale, offset))

        return number
    if raw is RawType.BOOL:

        def flag(value: Value) -> list[Any]:
            if not isinstance(value, bool) and value not in (0, 1):
                raise ValueError(f"{value!r} is not a boolean (0 or 1)")
            return encode(bool(value))

        return flag
    return encode  # string and bytes: the encoder checks the length


def _unwritable(reason: str) -> Encode:
    def refuse(value: Value) -> list[Any]:
        raise ValueError(reason)

    return refuse


@dataclass(frozen=True, slots=True)
class _Point:
    """One property, compiled."""

    layout: Layout
    item: Item
    encode: Encode | None


# --------------------------------------------------------------------------- driver
class ModbusDriver(Driver[ModbusProtocolConfig, ModbusVisitorConfig]):
    """Reads and writes a Modbus device (one unit id) over TCP, RTU or RTU over TCP.

    Devices behind the same gateway address, or on the same serial port, share
    one connection through the runtime's resource pool, with one lock per bus
    and the configured ``requestGap`` between requests.

    ``read`` coalesces the batch into the fewest requests (see
    :mod:`mappers.modbus.planner`). A property whose address the device refuses
    gets a bad reading carrying the Modbus exception code; the others keep
    working. A connection that is down raises
    :class:`~mapper_sdk.errors.DeviceUnavailable`, a unit that does not answer
    :class:`~mapper_sdk.errors.DeviceTimeout`.

    ``write`` encodes with the same layout as ``read``, uses FC5/FC15 for coils
    and FC6/FC16 for holding registers (a ``bit`` by read-modify-write), and
    returns the value read back. Input registers, discrete inputs and
    ReadOnly properties are refused before any I/O.
    """

    protocol = "modbus"
    protocol_config = ModbusProtocolConfig
    visitor_config = ModbusVisitorConfig
    capabilities = frozenset({Capability.WRITE})

    def __init__(
        self,
        device: DeviceSpec[ModbusProtocolConfig, ModbusVisitorConfig],
        resources: Resources | None = None,
    ) -> None:
        super().__init__(device, resources)
        cfg = device.protocol_config
        self._unit = cfg.slaveID
        self._key = bus_key(cfg)
        self._bus: Bus | None = None
        self._points: dict[str, _Point] = {}
        for prop in device.properties:
            layout = resolve_layout(prop, cfg)
            reader = compile_reader(layout)
            item = Item(prop.name, layout.table, layout.address, layout.count, reader)
            self._points[prop.name] = _Point(layout, item, compile_writer(layout))
        self._planner = Planner(
            {name: p.item for name, p in self._points.items()},
            max_registers=cfg.maxRegistersPerRequest,
            max_gap=cfg.maxGap,
        )

    @classmethod
    def validate_device(cls, device: DeviceSpec[ModbusProtocolConfig, ModbusVisitorConfig]) -> None:
        """Check every property against the layout rules (see :func:`.resolve_layout`) and,
        on a serial line, its collectCycle against the line's speed (see
        :func:`.check_serial_cycle`)."""
        for prop in device.properties:
            layout = resolve_layout(prop, device.protocol_config)
            check_serial_cycle(prop, layout, device.protocol_config)

    @property
    def planner(self) -> Planner:
        """The request planner (its cuts show what the device refused to merge)."""
        return self._planner

    # ---- connection --------------------------------------------------------------------
    async def connect(self) -> None:
        if self._bus is None:
            cfg = self.device.protocol_config
            bus = await self.resources.acquire(self._key, lambda: open_bus(cfg), close=close_bus)
            try:
                bus.join(cfg)
            except ConfigError:
                await self.resources.release(self._key)
                raise
            bus.add_listener(self._connection_lost)
            self._bus = bus
        await self._bus.ensure_connected()
        self.set_state(DeviceState.ONLINE)

    async def close(self) -> None:
        bus, self._bus = self._bus, None
        if bus is None:
            return
        bus.remove_listener(self._connection_lost)
        await self.resources.release(self._key)

    def _connection_lost(self) -> None:
        self.set_state(DeviceState.OFFLINE)

    def _require_bus(self) -> Bus:
        bus = self._bus
        if bus is None:
            raise DeviceUnavailable(f"modbus device {self.device.id} is not connected")
        return bus

    # ---- reading -----------------------------------------------------------------------
    async def read(
        self, properties: Sequence[PropertySpec[ModbusVisitorConfig]]
    ) -> dict[str, Reading]:
        if not properties:
            return {}
        bus = self._require_bus()
        out: dict[str, Reading] = {}
        for request in self._planner.plan(tuple(p.name for p in properties)):
            resp = await bus.read(request.table, request.start, request.count, self._unit)
            if resp.isError():
                await self._refused(bus, request, resp.exception_code, out)
            else:
                self._decode(request, resp, out)
        return out

    def _decode(self, request: Request, resp: ModbusPDU, out: dict[str, Reading]) -> None:
        data = resp.bits if request.table.is_bits else resp.registers
        ts = now_ms()
        if len(data) < request.count:
            error = (
                f"short response: {len(data)} of {request.count} values of {request.table.value} "
                f"{request.start}.."
            )
            for part in request.parts:
                out[part[0]] = Reading(None, Quality.BAD, ts, error=error)
            return
        good = Quality.GOOD
        for name, offset, count, convert in request.parts:
            try:
                out[name] = Reading(convert(data[offset : offset + count]), good, ts)
            except ValueError as exc:
                out[name] = Reading(None, Quality.BAD, ts, error=str(exc))

    def _refusal(self, request: Request, code: int) -> str:
        last = request.start + request.count - 1
        return (
            f"unit {self._unit} answered {_describe(code)} to a read of "
            f"{request.table.value} {request.start}..{last}"
        )

    async def _refused(
        self, bus: Bus, request: Request, code: int, out: dict[str, Reading]
    ) -> None:
        if code in _UNREACHABLE_CODES:
            raise DeviceUnavailable(f"{bus.name}: {self._refusal(request, code)}")
        if code not in _SPLIT_CODES or len(request.items) == 1:
            ts = now_ms()
            error = self._refusal(request, code)
            for part in request.parts:
                out[part[0]] = Reading(None, Quality.BAD, ts, error=error, error_code=code)
            if code in _SPLIT_CODES:
                self._planner.isolate(request.items[0].name)
            return
        # A merged read was refused: read each property alone, then remember.
        refused: list[str] = []
        inconclusive = False
        for item in request.items:
            single = self._planner.single(item.name)
            resp = await bus.read(single.table, single.start, single.count, self._unit)
            if not resp.isError():
                self._decode(single, resp, out)
                continue
            alone = resp.exception_code
            if alone in _UNREACHABLE_CODES:
                raise DeviceUnavailable(f"{bus.name}: {self._refusal(single, alone)}")
            out[item.name] = Reading.bad(self._refusal(single, alone), code=alone)
            if alone in _SPLIT_CODES:
                refused.append(item.name)
            else:
                inconclusive = True
        if (refused or not inconclusive) and self._planner.learn(request, refused):
            log.info(
                "device=%s event=replanned table=%s refused=%s cuts=%s",
                self.device.id,
                request.table.value,
                ",".join(refused) or "-",
                sorted(self._planner.cuts(request.table)),
            )

    # ---- writing -----------------------------------------------------------------------
    async def write(self, prop: PropertySpec[ModbusVisitorConfig], value: Value) -> Reading | None:
        point = self._points.get(prop.name)
        if point is None:
            raise WriteRejected(f"{prop.name} is not a property of {self.device.id}")
        layout = point.layout
        if not layout.table.writable:
            raise WriteRejected(
                f"{prop.name} is a {layout.table.value}, which Modbus cannot write "
                "(only coils and holding registers are writable)"
            )
        if not prop.writable:
            raise WriteRejected(f"property {prop.name} is ReadOnly")
        if layout.bit is not None:
            if not isinstance(value, bool) and value not in (0, 1):
                raise WriteRejected(f"{prop.name}: {value!r} is not a bit (0 or 1)")
            resp = await self._require_bus().modify_register(
                layout.address, self._unit, self._bit_change(layout, bool(value))
            )
        else:
            assert point.encode is not None  # writable tables always have an encoder
            try:
                data = point.encode(value)
            except (ValueError, TypeError) as exc:
                raise WriteRejected(f"{prop.name}: {exc}") from None
            bus = self._require_bus()
            if layout.table is Table.COIL:
                resp = await bus.write_coils(layout.address, data, self._unit)
            else:
                resp = await bus.write_registers(layout.address, data, self._unit)
        if resp.isError():
            code = resp.exception_code
            reason = f"unit {self._unit} answered {_describe(code)} to the write of {prop.name}"
            if code in _UNREACHABLE_CODES:
                raise DeviceUnavailable(reason)
            raise WriteRejected(reason, code=code)
        return (await self.read((prop,)))[prop.name]

    @staticmethod
    def _bit_change(layout: Layout, on: bool) -> Callable[[int], int]:
        bit = layout.bit
        assert bit is not None
        if layout.byte_swap:
            return lambda reg: _swap16(set_bit(_swap16(reg), bit, on))
        return lambda reg: set_bit(reg, bit, on)
