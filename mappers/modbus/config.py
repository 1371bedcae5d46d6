"""The Modbus driver's ``configData``: KubeEdge's keys plus Mapperkit's extensions.

Device (``spec.protocol.configData``)::

    communicateMode: TCP        # TCP | RTU | RTUOverTCP (ext); default RTU when only
                                # serialName is given, TCP otherwise
    ip: 192.168.1.50            # TCP and RTUOverTCP
    port: 502                   # string or int (default 502)
    slaveID: 1                  # unit id (default 1)
    timeout: 1000               # ms per request and per connect (default 1000)
    serialName: /dev/ttyUSB0    # RTU: the serial port
    baudRate: 19200             # RTU (default 19200)
    dataBits: 8                 # RTU: 7 or 8 (default 8)
    stopBits: 1                 # RTU: 1 or 2 (default 1)
    parity: None                # RTU: None | Even | Odd (default None)
    rs485Enabled: false         # RTU: switch the port into RS-485 mode
    maxRegistersPerRequest: 125 # (ext) longest coalesced read, 1..125 (coils: 16x, max 2000)
    maxGap: 8                   # (ext) unused registers a coalesced read may bridge
    requestGap: 0               # (ext) ms of silence between two requests on the bus

Property visitor (``visitors.configData``)::

    register: HoldingRegister   # CoilRegister | DiscreteInputRegister | HoldingRegister
                                # | InputRegister
    offset: 100                 # 0-based address
    limit: 2                    # registers (or coils) the value spans
    scale: 0.1                  # value = raw * scale + valueOffset
    isSwap: false               # swap the two bytes of every register
    isRegisterSwap: false       # reverse the order of the registers
    dataType: float             # the model's type (optional; checked when given)
    rawType: float32            # (ext) the wire type; default derived from limit and type
    bit: 3                      # (ext) one bit of a register, 0 = least significant
    valueOffset: -40            # (ext) added after scaling

Rules that span several keys (limit against rawType, bit against table, scale
against a string) are checked in one table by :func:`resolve_layout`, which the
driver runs for every property at load time.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mapper_sdk.codec import RawType, register_count
from mapper_sdk.errors import ConfigError
from mapper_sdk.model import PropertySpec, PropertyType

__all__ = [
    "MAX_BITS_PER_READ",
    "MAX_REGISTERS_PER_READ",
    "MAX_REGISTERS_PER_WRITE",
    "MIN_SERIAL_CYCLE_MS",
    "CommunicateMode",
    "Layout",
    "ModbusProtocolConfig",
    "ModbusVisitorConfig",
    "Table",
    "check_serial_cycle",
    "resolve_layout",
    "serial_read_ms",
]

MAX_REGISTERS_PER_READ = 125  # Modbus application protocol v1.1b3, 6.3 and 6.4
MAX_REGISTERS_PER_WRITE = 123  # 6.12
MAX_BITS_PER_READ = 2000  # 6.1 and 6.2
MAX_BITS_PER_WRITE = 1968  # 6.11
MAX_BITMASK_COILS = 64  # an INT property holds at most 64 coils as a bit mask
MIN_SERIAL_CYCLE_MS = 50
"""The shortest collectCycle on a serial line (RTU): a slave takes milliseconds to
answer (its turnaround), and one line serves every unit on it in turn."""


class CommunicateMode(enum.StrEnum):
    """How the device is reached."""

    TCP = "TCP"
    RTU = "RTU"
    RTU_OVER_TCP = "RTUOverTCP"


class Table(enum.StrEnum):
    """The four Modbus data tables, by KubeEdge's names."""

    COIL = "CoilRegister"
    DISCRETE = "DiscreteInputRegister"
    HOLDING = "HoldingRegister"
    INPUT = "InputRegister"

    @property
    def is_bits(self) -> bool:
        """Coils and discrete inputs hold single bits; the others 16-bit registers."""
        return self in (Table.COIL, Table.DISCRETE)

    @property
    def writable(self) -> bool:
        """Only coils and holding registers can be written (FC 5/15 and 6/16)."""
        return self in (Table.COIL, Table.HOLDING)

    @property
    def read_function(self) -> int:
        """The function code that reads this table."""
        return _READ_FC[self]


_READ_FC = {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}

_PARITY = {"none": "None", "n": "None", "even": "Even", "e": "Even", "odd": "Odd", "o": "Odd"}

_MODE_NAMES = {
    "tcp": CommunicateMode.TCP,
    "rtu": CommunicateMode.RTU,
    "rtuovertcp": CommunicateMode.RTU_OVER_TCP,
}

_TABLE_NAMES = {t.value.lower(): t for t in Table}

_RAW_TYPES: tuple[str, ...] = (
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "string",
    "bool",
    "bytes",
)
ModbusRawType = Literal[
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "string",
    "bool",
    "bytes",
]


class ModbusProtocolConfig(BaseModel):
    """A Modbus device's connection (``spec.protocol.configData``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    communicateMode: CommunicateMode = CommunicateMode.TCP
    ip: str | None = None
    port: int = Field(default=502, ge=1, le=65535)
    slaveID: int = Field(default=1, ge=0, le=255)
    timeout: int = Field(default=1000, gt=0, le=600_000, description="ms")
    serialName: str | None = None
    baudRate: int = Field(default=19200, gt=0)
    dataBits: Literal[7, 8] = 8
    stopBits: Literal[1, 2] = 1
    parity: Literal["None", "Even", "Odd"] = "None"
    rs485Enabled: bool = False
    maxRegistersPerRequest: int = Field(default=MAX_REGISTERS_PER_READ, ge=1, le=125)
    maxGap: int = Field(default=8, ge=0, le=125)
    requestGap: int = Field(default=0, ge=0, le=60_000, description="ms")

    @field_validator("communicateMode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> Any:
        if isinstance(value, str):
            key = value.strip().lower().replace("_", "").replace("-", "")
            if key in _MODE_NAMES:
                return _MODE_NAMES[key]
            raise ValueError(f"expected TCP, RTU or RTUOverTCP, got {value!r}")
        return value

    @field_validator("parity", mode="before")
    @classmethod
    def _parity(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in _PARITY:
            return _PARITY[value.strip().lower()]
        if value is None:
            return "None"
        return value

    @field_validator("port", "slaveID", "timeout", "baudRate", mode="before")
    @classmethod
    def _int_text(cls, value: Any) -> Any:
        # KubeEdge writes many numbers as strings ("502"); pydantic's lax mode
        # takes digits, this also takes surrounding spaces.
        return value.strip() if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _default_mode(cls, data: Any) -> Any:
        # A serial port and no address means RTU; everything else defaults to TCP.
        if isinstance(data, dict) and data.get("communicateMode") is None:
            data = dict(data)
            serial = data.get("serialName") and not data.get("ip")
            data["communicateMode"] = CommunicateMode.RTU if serial else CommunicateMode.TCP
        return data

    @model_validator(mode="after")
    def _transport(self) -> ModbusProtocolConfig:
        if self.communicateMode is CommunicateMode.RTU:
            if not self.serialName:
                raise ValueError("serialName is required when communicateMode is RTU")
            if not 1 <= self.slaveID <= 247:
                raise ValueError(
                    f"slaveID must be 1..247 on a serial line (got {self.slaveID}); "
                    "0 is the broadcast address, which never answers a read"
                )
        elif not self.ip:
            raise ValueError(f"ip is required when communicateMode is {self.communicateMode.value}")
        return self

    @property
    def timeout_s(self) -> float:
        return self.timeout / 1000.0

    @property
    def request_gap_s(self) -> float:
        return self.requestGap / 1000.0


class ModbusVisitorConfig(BaseModel):
    """How one property maps onto the device's tables (``visitors.configData``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    # Named `table` in Python: `register` would shadow pydantic's BaseModel.register.
    table: Table = Field(alias="register")
    offset: int = Field(default=0, ge=0, le=65535)
    limit: int | None = Field(default=None, ge=0, le=MAX_BITS_PER_READ)
    scale: float = 1.0
    isSwap: bool = False
    isRegisterSwap: bool = False
    dataType: str | None = None
    rawType: ModbusRawType | None = None
    bit: int | None = Field(default=None, ge=0, le=15)
    valueOffset: float = 0.0

    @field_validator("table", mode="before")
    @classmethod
    def _table(cls, value: Any) -> Any:
        if isinstance(value, str):
            table = _TABLE_NAMES.get(value.strip().lower())
            if table is None:
                raise ValueError(
                    f"expected CoilRegister, DiscreteInputRegister, HoldingRegister or "
                    f"InputRegister, got {value!r}"
                )
            return table
        return value

    @field_validator("rawType", mode="before")
    @classmethod
    def _raw(cls, value: Any) -> Any:
        if isinstance(value, str):
            key = value.strip().lower()
            if key not in _RAW_TYPES:
                raise ValueError(f"expected one of {', '.join(_RAW_TYPES)}, got {value!r}")
            return key
        return value

    @field_validator("limit", mode="before")
    @classmethod
    def _limit(cls, value: Any) -> Any:
        # KubeEdge examples write `limit: 0` for "the type's natural size".
        if value == 0 or value == "0":
            return None
        return value

    @field_validator("scale", "valueOffset")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}")
        return value

    @field_validator("scale")
    @classmethod
    def _nonzero(cls, value: float) -> float:
        if value == 0:
            raise ValueError("scale must not be 0 (values could not be written back)")
        return value

    @field_validator("dataType")
    @classmethod
    def _data_type(cls, value: str | None) -> str | None:
        if value is not None:
            PropertyType.parse(value)  # raises ValueError with the accepted names
        return value


# --------------------------------------------------------------------------- layouts
@dataclass(frozen=True, slots=True)
class Layout:
    """One property's place and encoding on the device, after every rule was applied.

    Attributes:
        table: the data table.
        address: the first register (or coil).
        count: registers (or coils) spanned.
        raw: the wire type in a register table; ``None`` in a bit table.
        bit: the bit of the first register, when the property is one bit.
        byte_swap: ``isSwap``.
        word_swap: ``isRegisterSwap``.
        scale: multiplier on read, divisor on write.
        value_offset: added after scaling on read, subtracted before on write.
    """

    table: Table
    address: int
    count: int
    raw: RawType | None
    bit: int | None
    byte_swap: bool
    word_swap: bool
    scale: float
    value_offset: float

    @property
    def scaled(self) -> bool:
        return self.scale != 1 or self.value_offset != 0


_INTS = frozenset(
    {
        RawType.INT16,
        RawType.UINT16,
        RawType.INT32,
        RawType.UINT32,
        RawType.INT64,
        RawType.UINT64,
    }
)
_FLOATS = frozenset({RawType.FLOAT32, RawType.FLOAT64})
_NUMERIC = _INTS | _FLOATS

# Which wire types a model type can be read from (register tables).
_READABLE_AS: dict[PropertyType, frozenset[RawType]] = {
    PropertyType.INT: _NUMERIC | {RawType.BOOL},
    PropertyType.FLOAT: _NUMERIC,
    PropertyType.DOUBLE: _NUMERIC,
    PropertyType.BOOLEAN: _INTS | {RawType.BOOL},
    PropertyType.STRING: frozenset({RawType.STRING}),
    PropertyType.BYTES: frozenset({RawType.BYTES, RawType.STRING}),
}

# The wire type when the visitor names none, by model type and limit (KubeEdge's rule).
_DEFAULT_RAW: dict[PropertyType, dict[int, RawType]] = {
    PropertyType.INT: {1: RawType.UINT16, 2: RawType.UINT32, 4: RawType.UINT64},
    PropertyType.FLOAT: {1: RawType.UINT16, 2: RawType.FLOAT32, 4: RawType.FLOAT64},
    PropertyType.DOUBLE: {1: RawType.UINT16, 2: RawType.FLOAT32, 4: RawType.FLOAT64},
}

# The rules for a bit of a register: which wire types may carry it.
_BIT_RAW = frozenset({RawType.BOOL, RawType.UINT16, RawType.INT16})


def resolve_layout(
    prop: PropertySpec[ModbusVisitorConfig], protocol: ModbusProtocolConfig
) -> Layout:
    """Apply every cross-field rule to one property and return its layout.

    Raises:
        ConfigError: naming the visitor field that breaks a rule, with
            ``location`` set to ``spec.properties[NAME].visitors.configData.FIELD``.
    """
    v = prop.visitor
    where = f"spec.properties[{prop.name}].visitors.configData"

    def fail(field: str, message: str) -> ConfigError:
        return ConfigError(message, location=f"{where}.{field}")

    ptype = prop.type
    if v.dataType is not None and PropertyType.parse(v.dataType).family != ptype.family:
        raise fail(
            "dataType",
            f"dataType {v.dataType!r} differs from the model's type {ptype.value.upper()}",
        )
    raw = RawType(v.rawType) if v.rawType is not None else None
    table = v.table
    max_read = protocol.maxRegistersPerRequest

    if table.is_bits:
        for field, bad in (
            ("bit", v.bit is not None),
            ("isSwap", v.isSwap),
            ("isRegisterSwap", v.isRegisterSwap),
            ("scale", v.scale != 1),
            ("valueOffset", v.valueOffset != 0),
        ):
            if bad:
                raise fail(field, f"{field} does not apply to a {table.value} (single bits)")
        if raw is not None and raw is not RawType.BOOL:
            raise fail("rawType", f"a {table.value} holds bits; rawType must be bool or absent")
        count = v.limit or 1
        if ptype is PropertyType.BOOLEAN:
            if count != 1:
                raise fail("limit", f"a BOOLEAN property reads one coil, limit is {count}")
        elif ptype is PropertyType.INT:
            if count > MAX_BITMASK_COILS:
                raise fail(
                    "limit",
                    f"an INT property holds at most {MAX_BITMASK_COILS} coils as a bit mask, "
                    f"limit is {count}",
                )
        else:
            raise fail(
                "register",
                f"a {table.value} reads as BOOLEAN (one coil) or INT (a bit mask of `limit` "
                f"coils), not {ptype.value.upper()}",
            )
        if count > 16 * max_read:
            raise fail("limit", f"{count} coils exceed maxRegistersPerRequest ({max_read}) x 16")
        if v.offset + count > 65536:
            raise fail("offset", f"offset {v.offset} + limit {count} runs past address 65535")
        return Layout(table, v.offset, count, None, None, False, False, 1.0, 0.0)

    if v.bit is not None:
        if raw is not None and raw not in _BIT_RAW:
            raise fail("rawType", f"bit reads one bit of a 16-bit register; rawType is {raw}")
        if v.limit not in (None, 1):
            raise fail("limit", f"bit reads one bit of one register, limit is {v.limit}")
        if ptype not in (PropertyType.BOOLEAN, PropertyType.INT):
            raise fail("bit", f"a bit reads as BOOLEAN or INT, not {ptype.value.upper()}")
        if v.scale != 1 or v.valueOffset != 0:
            raise fail("scale", "scale and valueOffset do not apply to a bit")
        return Layout(
            table, v.offset, 1, RawType.UINT16, v.bit, v.isSwap, v.isRegisterSwap, 1.0, 0.0
        )

    if raw is None:
        raw = _default_raw(ptype, v.limit, fail)
    if raw not in _READABLE_AS[ptype]:
        allowed = ", ".join(sorted(r.value for r in _READABLE_AS[ptype]))
        raise fail(
            "rawType",
            f"a {ptype.value.upper()} property cannot be read as {raw} (allowed: {allowed})",
        )
    if raw in (RawType.STRING, RawType.BYTES):
        count = v.limit or 1
    elif raw is RawType.BOOL:
        count = 1
        if v.limit not in (None, 1):
            raise fail("limit", f"rawType bool reads one register, limit is {v.limit}")
    else:
        count = register_count(raw)
        if v.limit is not None and v.limit != count:
            raise fail(
                "limit",
                f"rawType {raw} takes {count} register{'s' if count > 1 else ''}, "
                f"limit is {v.limit}",
            )
    if raw not in _NUMERIC and (v.scale != 1 or v.valueOffset != 0):
        field = "scale" if v.scale != 1 else "valueOffset"
        raise fail(field, f"{field} applies to numbers, not to rawType {raw}")
    if count > max_read:
        raise fail(
            "limit",
            f"{count} registers exceed maxRegistersPerRequest ({max_read}); "
            "the value could not be read in one request",
        )
    if v.offset + count > 65536:
        raise fail("offset", f"offset {v.offset} + {count} registers run past address 65535")
    return Layout(
        table, v.offset, count, raw, None, v.isSwap, v.isRegisterSwap, v.scale, v.valueOffset
    )


def _default_raw(
    ptype: PropertyType, limit: int | None, fail: Callable[[str, str], ConfigError]
) -> RawType:
    if ptype is PropertyType.BOOLEAN:
        return RawType.BOOL
    if ptype is PropertyType.STRING:
        return RawType.STRING
    if ptype is PropertyType.BYTES:
        return RawType.BYTES
    by_limit = _DEFAULT_RAW[ptype]
    n = limit or 1
    if n not in by_limit:
        raise fail(
            "limit",
            f"a {ptype.value.upper()} property without rawType spans 1, 2 or 4 registers, "
            f"limit is {n}; name the wire type with rawType",
        )
    return by_limit[n]


# --------------------------------------------------------------------------- serial timing
def serial_read_ms(layout: Layout, protocol: ModbusProtocolConfig) -> float:
    """Milliseconds one read of ``layout`` occupies a serial line, before the slave thinks.

    The request (8 bytes) and the response (5 bytes plus the data) at
    ``baudRate``, each character framed by a start bit, the data bits, a parity
    bit unless parity is None, and the stop bits; plus the silence of 3.5
    characters that ends each frame (1.75 ms above 19200 baud) and ``requestGap``
    (Modbus over serial line v1.02, 2.5.1 and 2.5.1.1).
    """
    bits = 1 + protocol.dataBits + (0 if protocol.parity == "None" else 1) + protocol.stopBits
    char_ms = bits * 1000.0 / protocol.baudRate
    data = math.ceil(layout.count / 8) if layout.table.is_bits else 2 * layout.count
    silence_ms = 3.5 * char_ms if protocol.baudRate <= 19200 else 1.75
    return (8 + 5 + data) * char_ms + 2 * silence_ms + protocol.requestGap


def check_serial_cycle(
    prop: PropertySpec[ModbusVisitorConfig], layout: Layout, protocol: ModbusProtocolConfig
) -> None:
    """Refuse a collectCycle a serial line (RTU) cannot keep.

    The cycle must be at least :data:`MIN_SERIAL_CYCLE_MS` and at least twice
    the read's time on the wire (:func:`serial_read_ms`), which leaves the other
    half for the slave's turnaround and the other properties and units on the
    line. TCP and RTU over TCP have no such rule: the gateway's serial side is
    not known here.

    Raises:
        ConfigError: at ``spec.properties[NAME].collectCycle``, with the shortest
            cycle that would be accepted.
    """
    if protocol.communicateMode is not CommunicateMode.RTU:
        return
    wire_ms = serial_read_ms(layout, protocol)
    minimum = max(MIN_SERIAL_CYCLE_MS, math.ceil(round(2 * wire_ms, 6)))
    if prop.collect_cycle_ms < minimum:
        raise ConfigError(
            f"{prop.collect_cycle_ms} ms is too short for a serial line: at "
            f"{protocol.baudRate} baud one read of {prop.name} occupies the line for "
            f"{wire_ms:.1f} ms plus the slave's turnaround; use at least {minimum} ms",
            location=f"spec.properties[{prop.name}].collectCycle",
        )
