"""The Modbus simulator: a pymodbus server driven by a :class:`~.profile.Profile`.

Each unit of the profile is a pymodbus :class:`~pymodbus.simulator.SimDevice`
with four separate tables. The simulator's state lives in its points; the
SimDevice's ``action`` hook, which pymodbus awaits on every access, refreshes
the registers of the points a read touches (so counters and sines move),
decodes what a write stores, and applies the faults. A ``trace_pdu`` hook
counts every request, including those pymodbus refuses itself.

Typical test use::

    async with ModbusSimulator("thermostat") as sim:      # a free port on 127.0.0.1
        ...  # point a driver at sim.port
        sim.set(1, "setpoint", 19.5)
        assert sim.request_count(unit=1) == 3
        sim.add_fault(Fault(unit=1, table="holding", address=5, exception=2))
        await sim.stop(); await sim.start()               # same port again
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import random
import time
from collections import Counter as Tally
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from .profile import (
    Constant,
    Counter,
    Fault,
    Point,
    Profile,
    RandomWalk,
    SimTable,
    Sine,
    Unit,
    decode_value,
    encode_value,
    load_profile,
    sine_at,
    wrap_integer,
)

__all__ = ["LivePoint", "ModbusSimulator"]

log = logging.getLogger(__name__)

Framing = Literal["tcp", "rtu"]

# Function code -> table (pymodbus routes 22 and 23 to holding registers too).
_FC_TABLE = {
    1: SimTable.COIL,
    5: SimTable.COIL,
    15: SimTable.COIL,
    2: SimTable.DISCRETE,
    3: SimTable.HOLDING,
    6: SimTable.HOLDING,
    16: SimTable.HOLDING,
    22: SimTable.HOLDING,
    23: SimTable.HOLDING,
    4: SimTable.INPUT,
}
_READ_FC = frozenset({1, 2, 3, 4, 23})
_BIT_READ_FC = frozenset({1, 2})
_TABLE_ORDER = (SimTable.COIL, SimTable.DISCRETE, SimTable.HOLDING, SimTable.INPUT)
_MAX_WALK_STEPS = 1000
_INTS = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64"})
_CONSTANT = Constant()


class LivePoint:
    """A point's state while the simulator runs."""

    __slots__ = (
        "address",
        "behaviour",
        "dirty",
        "dynamic",
        "end",
        "point",
        "ptype",
        "rng",
        "span",
        "t0",
        "t_last",
        "value",
        "writable",
    )

    def __init__(self, point: Point, rng: random.Random) -> None:
        self.point = point
        self.ptype = point.ptype
        self.address = point.address
        self.span = point.span
        self.end = point.address + point.span
        self.writable = point.is_writable
        self.behaviour = point.behaviour
        self.dynamic = isinstance(point.behaviour, Counter | Sine | RandomWalk)
        self.dirty = False
        self.value: Any = point.initial()
        self.rng = rng
        self.t0 = self.t_last = time.monotonic()

    def current(self, now: float) -> Any:
        """The value now (advancing a dynamic behaviour)."""
        b = self.behaviour
        if isinstance(b, Counter):
            steps = math.floor((now - self.t0) / b.interval)
            if self.ptype == "bool":
                return bool(self.value) ^ bool(steps % 2)
            raw = self.value + steps * b.step
            return wrap_integer(raw, self.ptype) if self.ptype in _INTS else float(raw)
        if isinstance(b, Sine):
            raw = sine_at(b, now - self.t0)
            return wrap_integer(raw, self.ptype) if self.ptype in _INTS else raw
        if isinstance(b, RandomWalk):
            steps = math.floor((now - self.t_last) / b.interval)
            if steps > 0:
                self.t_last += steps * b.interval
                value = float(self.value)
                for _ in range(min(steps, _MAX_WALK_STEPS)):
                    value += self.rng.uniform(-b.step, b.step)
                    if b.min is not None:
                        value = max(b.min, value)
                    if b.max is not None:
                        value = min(b.max, value)
                self.value = round(value) if self.ptype in _INTS else value
            return self.value
        return self.value

    def store(self, value: Any) -> None:
        """Set the value; a dynamic behaviour stops (the point becomes constant)."""
        self.value = value
        self.dynamic = False
        self.behaviour = _CONSTANT

    def registers(self, now: float) -> list[int]:
        p = self.point
        return encode_value(self.current(now), self.ptype, p.length, p.byteOrder, p.wordOrder)

    def decode(self, regs: list[int]) -> Any:
        p = self.point
        return decode_value(regs, self.ptype, p.length, p.byteOrder, p.wordOrder)


class _UnitState:
    """One unit's points, by table, sorted by address."""

    def __init__(self, unit: Unit, rng: random.Random) -> None:
        self.unit = unit
        self.id = unit.id
        self.strict = unit.strict
        self.points: dict[str, LivePoint] = {}
        self.tables: dict[SimTable, list[LivePoint]] = {t: [] for t in SimTable}
        for point in unit.points:
            live = LivePoint(point, rng)
            self.points[point.name] = live
            self.tables[point.table].append(live)
        self.ends: dict[SimTable, list[int]] = {}
        for table, lives in self.tables.items():
            lives.sort(key=lambda lv: lv.address)
            self.ends[table] = [lv.end for lv in lives]

    def overlapping(self, table: SimTable, lo: int, hi: int) -> list[LivePoint]:
        lives = self.tables[table]
        i = bisect.bisect_right(self.ends[table], lo)
        out = []
        while i < len(lives) and lives[i].address < hi:
            out.append(lives[i])
            i += 1
        return out

    def covered(self, table: SimTable, lo: int, hi: int) -> bool:
        """Whether points cover every address of ``[lo, hi)``."""
        at = lo
        for live in self.overlapping(table, lo, hi):
            if live.address > at:
                return False
            at = max(at, live.end)
        return at >= hi


class ModbusSimulator:
    """A Modbus TCP (or RTU-over-TCP) server simulating the units of a profile.

    Args:
        profile: a :class:`Profile`, a mapping, a YAML or ``.py`` file, or the
            name of a shipped profile (``energy_meter``, ``thermostat``).
        host: the address to listen on.
        port: the port; 0 picks a free one (read it from :attr:`port` after
            :meth:`start`; a restart keeps it).
        framing: ``tcp`` (MBAP headers) or ``rtu`` (RTU frames with CRC over TCP).

    A request for a unit id the profile does not define is answered with
    exception 11 (gateway target device failed to respond), as a gateway would.
    """

    def __init__(
        self,
        profile: Profile | Mapping[str, Any] | str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        framing: Framing = "tcp",
    ) -> None:
        self.profile = load_profile(profile)
        self.host = host
        self._port = port
        if framing not in ("tcp", "rtu"):
            raise ValueError(f"framing must be tcp or rtu, got {framing!r}")
        self.framing: Framing = framing
        rng = random.Random(self.profile.seed)
        self._units = {u.id: _UnitState(u, rng) for u in self.profile.units}
        self._faults: list[Fault] = list(self.profile.faults)
        self._server: ModbusTcpServer | None = None
        self._pending_bits: dict[tuple[int, int, int], int] = {}
        self.counts: Tally[tuple[int, int]] = Tally()
        """Requests received, by ``(unit, function code)``."""

    # ---- lifecycle ---------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The TCP port (the chosen one once started with ``port=0``)."""
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen (again, on the same port after :meth:`stop`). Idempotent."""
        if self._server is not None:
            return
        devices = [self._device(state) for state in self._units.values()]
        devices.append(self._gateway_device())
        server = ModbusTcpServer(
            devices,
            framer=FramerType.RTU if self.framing == "rtu" else FramerType.SOCKET,
            address=(self.host, self._port),
            trace_pdu=self._trace,
        )
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {self.host}:{self._port}: {exc}") from None
        sockets = getattr(server.transport, "sockets", None) or ()
        if sockets:
            self._port = int(sockets[0].getsockname()[1])
        self._server = server
        log.info(
            "modbus simulator %r listening on %s:%d (%s framing, units %s)",
            self.profile.name,
            self.host,
            self._port,
            self.framing,
            ",".join(str(u) for u in self._units),
        )

    async def stop(self) -> None:
        """Close the listener and every client connection. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        await server.shutdown()  # type: ignore[no-untyped-call]
        listener = server.transport
        if listener is not None and hasattr(listener, "wait_closed"):
            await listener.wait_closed()
        # Let the handlers of closed connections run to their end.
        await asyncio.sleep(0)

    async def __aenter__(self) -> ModbusSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def connections(self) -> int:
        """Client connections open now."""
        return len(self._server.active_connections) if self._server is not None else 0

    def drop_connections(self) -> int:
        """Close every client connection (the listener stays). Returns how many."""
        if self._server is None:
            return 0
        handlers = list(self._server.active_connections.values())
        for handler in handlers:
            handler.close()
        return len(handlers)

    # ---- values --------------------------------------------------------------------------
    def _live(self, unit: int, name: str) -> LivePoint:
        try:
            return self._units[unit].points[name]
        except KeyError:
            raise KeyError(f"unit {unit} has no point {name!r}") from None

    def get(self, unit: int, name: str) -> Any:
        """The value of point ``name`` of ``unit`` now."""
        return self._live(unit, name).current(time.monotonic())

    def set(self, unit: int, name: str, value: Any) -> None:
        """Give point ``name`` a value (a dynamic behaviour stops).

        Raises:
            ValueError: the value does not fit the point's type.
        """
        live = self._live(unit, name)
        p = live.point
        encode_value(value, live.ptype, p.length, p.byteOrder, p.wordOrder)
        live.store(value)
        live.dirty = True  # the next read that touches it rewrites its registers

    def point(self, unit: int, name: str) -> Point:
        """The profile entry of point ``name``."""
        return self._live(unit, name).point

    async def read_table(self, unit: int, table: SimTable | str, address: int, count: int) -> Any:
        """Read raw registers (or bits) as a client would see them, without counting.

        Raises:
            ValueError: the simulator is stopped, or the read is refused (with the code).
        """
        if self._server is None:
            raise ValueError("the simulator is not running")
        fc = {
            SimTable.COIL: 1,
            SimTable.DISCRETE: 2,
            SimTable.HOLDING: 3,
            SimTable.INPUT: 4,
        }[SimTable(table)]
        self._pending_bits[(unit, fc, address)] = count
        result = await self._server.context.async_getValues(unit, fc, address, count)
        if not isinstance(result, list):
            raise ValueError(f"read refused with exception {int(result)}")
        return result[:count]

    # ---- faults and counters ---------------------------------------------------------------
    def add_fault(self, fault: Fault | None = None, **fields: Any) -> Fault:
        """Inject a fault (a :class:`Fault` or its fields); returns it for :meth:`remove_fault`."""
        if fault is None:
            fault = Fault.model_validate(fields)
        self._faults.append(fault)
        return fault

    def remove_fault(self, fault: Fault) -> None:
        self._faults = [f for f in self._faults if f is not fault]

    def clear_faults(self) -> None:
        self._faults = []

    @property
    def faults(self) -> list[Fault]:
        return list(self._faults)

    def request_count(self, unit: int | None = None, function: int | None = None) -> int:
        """Requests received since the last :meth:`reset_counts`, filtered."""
        return sum(
            n
            for (u, fc), n in self.counts.items()
            if (unit is None or u == unit) and (function is None or fc == function)
        )

    def reset_counts(self) -> None:
        self.counts.clear()

    # ---- pymodbus hooks ------------------------------------------------------------------
    def _trace(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.counts[(pdu.dev_id, pdu.function_code)] += 1
            if pdu.function_code in _BIT_READ_FC:
                # The action hook sees a bit read's length in whole registers only.
                self._pending_bits[(pdu.dev_id, pdu.function_code, pdu.address)] = pdu.count
        return pdu

    def _device(self, state: _UnitState) -> SimDevice:
        unit = state.unit
        now = time.monotonic()
        blocks: list[list[SimData]] = []
        for table in _TABLE_ORDER:
            lives = state.tables[table]
            size = 0 if unit.strict else unit.size(table)
            blocks.append(_block(table, lives, size, now))

        async def action(
            fc: int,
            start: int,
            address: int,
            count: int,
            registers: list[int],
            values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            return await self._action(state, fc, start, address, count, registers, values)

        return SimDevice(
            id=unit.id, simdata=(blocks[0], blocks[1], blocks[2], blocks[3]), action=action
        )

    def _gateway_device(self) -> SimDevice:
        # Unit id 0 is pymodbus's catch-all for ids no SimDevice claims.
        blocks: list[list[SimData]] = []
        for table in _TABLE_ORDER:
            size = max((s.unit.size(table) for s in self._units.values()), default=0)
            blocks.append(_block(table, [], size, 0.0))

        async def unknown_unit(*args: Any) -> ExcCodes | None:
            return ExcCodes.GATEWAY_NO_RESPONSE

        return SimDevice(
            id=0, simdata=(blocks[0], blocks[1], blocks[2], blocks[3]), action=unknown_unit
        )

    async def _action(
        self,
        state: _UnitState,
        fc: int,
        start: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        table = _FC_TABLE.get(fc)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        write = values is not None
        if not write and fc not in _READ_FC:
            return None  # the echo pymodbus reads after a single-coil write
        bits = table.is_bits
        if not bits:
            n = count
        elif write:
            n = len(values)  # type: ignore[arg-type]
        else:
            n = self._pending_bits.pop((state.id, fc, address), 0) or 16 * count - address % 16
        hi = address + n
        for fault in self._faults:
            if fault.matches(state.id, table, address, hi, write):
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.drop:
                    self.drop_connections()
                    return None
                if fault.exception is not None:
                    return ExcCodes(fault.exception)
        if bits and state.strict and not state.covered(table, address, hi):
            return ExcCodes.ILLEGAL_ADDRESS
        lives = state.overlapping(table, address, hi)
        if write:
            assert values is not None
            return self._write(lives, bits, start, address, registers, values)
        now = time.monotonic()
        for live in lives:
            if live.dynamic or live.dirty:
                live.dirty = False
                if bits:
                    _put_bit(registers, start, live.address, bool(live.current(now)))
                else:
                    i = live.address - start
                    registers[i : i + live.span] = live.registers(now)
        return None

    @staticmethod
    def _write(
        lives: list[LivePoint],
        bits: bool,
        start: int,
        address: int,
        registers: list[int],
        values: list[int] | list[bool],
    ) -> ExcCodes | None:
        for live in lives:
            if not live.writable:
                return ExcCodes.ILLEGAL_ADDRESS
        for live in lives:
            if bits:
                live.store(bool(values[live.address - address]))
                continue
            i = live.address - start
            merged = list(registers[i : i + live.span])
            for k in range(live.span):
                j = live.address + k - address
                if 0 <= j < len(values):
                    merged[k] = int(values[j])
            live.store(live.decode(merged))
        return None


def _put_bit(registers: list[int], start: int, address: int, on: bool) -> None:
    i = address // 16 - start
    mask = 1 << (address % 16)
    registers[i] = (registers[i] | mask) if on else (registers[i] & ~mask)


def _block(table: SimTable, lives: list[LivePoint], size: int, now: float) -> list[SimData]:
    """The SimData list of one table: the points, and zero fillers up to ``size``."""
    out: list[SimData] = []
    at = 0
    for live in lives:
        if size and live.address > at:
            out.append(_filler(table, at, live.address - at))
        if table.is_bits:
            value = bool(live.current(now)) if now else False
            out.append(SimData(live.address, values=[value], datatype=DataType.BITS))
        else:
            regs = live.registers(now) if now else [0] * live.span
            out.append(
                SimData(
                    live.address,
                    values=regs,
                    datatype=DataType.REGISTERS,
                    readonly=not live.writable and table is SimTable.HOLDING,
                )
            )
        at = live.end
    if size > at:
        out.append(_filler(table, at, size - at))
    if not out:
        # pymodbus needs one entry per table; an invalid register answers exception 2.
        if table.is_bits:
            out.append(SimData(0, values=[False], datatype=DataType.BITS))
        else:
            out.append(SimData(0, datatype=DataType.INVALID))
    return out


def _filler(table: SimTable, address: int, count: int) -> SimData:
    if table.is_bits:
        return SimData(address, values=[False] * count, datatype=DataType.BITS)
    return SimData(address, count=count, values=0, datatype=DataType.REGISTERS)
