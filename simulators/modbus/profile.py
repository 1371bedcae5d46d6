"""Simulator profiles: the units, points, behaviours and faults a simulator serves.

A profile is YAML (or the same structure built in Python)::

    name: thermostat
    seed: 7                      # random walks repeat from run to run
    units:
      - id: 1
        strict: false            # true: addresses no point covers answer exception 2
        points:
          - name: temperature
            table: input         # coil | discrete | holding | input
            address: 0
            type: int16          # int16 uint16 int32 uint32 int64 uint64 float32
                                 # float64 string bytes bool
            value: 215
            behaviour: {kind: random_walk, step: 2, interval: 1, min: 150, max: 300}
          - name: setpoint
            table: holding
            address: 10
            type: float32
            wordOrder: little    # big (most significant register first) | little
            byteOrder: big       # big (high byte first in each register) | little
            value: 21.5
            behaviour: setpoint  # writable; reads back what was written
    faults:
      - {unit: 1, table: holding, address: 100, count: 10, exception: 2}
      - {unit: 1, delay: 0.05}
      - {unit: 1, table: coil, address: 9, drop: true}

Behaviours: ``constant`` (the default), ``setpoint`` (writable constant),
``counter`` (``value + step`` every ``interval`` seconds; integer types wrap
around, a bool toggles), ``sine`` (``mean + amplitude * sin(2 pi t / period)``)
and ``random_walk`` (a step of at most ``step`` every ``interval`` seconds,
kept within ``min``..``max``).

Values are encoded here with :mod:`struct`, independently of the mapper's codec,
so a test comparing the two checks both.
"""

from __future__ import annotations

import enum
import itertools
import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "Behaviour",
    "Counter",
    "Fault",
    "Point",
    "PointType",
    "Profile",
    "RandomWalk",
    "SimTable",
    "Sine",
    "Unit",
    "decode_value",
    "encode_value",
    "load_profile",
    "register_span",
]

EXCEPTION_CODES = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 10, 11})


class SimTable(enum.StrEnum):
    """The four Modbus tables."""

    COIL = "coil"
    DISCRETE = "discrete"
    HOLDING = "holding"
    INPUT = "input"

    @property
    def is_bits(self) -> bool:
        return self in (SimTable.COIL, SimTable.DISCRETE)


_TABLE_ALIASES = {
    "coil": SimTable.COIL,
    "coils": SimTable.COIL,
    "coilregister": SimTable.COIL,
    "discrete": SimTable.DISCRETE,
    "discreteinput": SimTable.DISCRETE,
    "discreteinputs": SimTable.DISCRETE,
    "discreteinputregister": SimTable.DISCRETE,
    "holding": SimTable.HOLDING,
    "holdingregister": SimTable.HOLDING,
    "holdingregisters": SimTable.HOLDING,
    "input": SimTable.INPUT,
    "inputregister": SimTable.INPUT,
    "inputregisters": SimTable.INPUT,
}


def _table(value: Any) -> Any:
    if isinstance(value, str):
        key = value.strip().lower().replace("_", "").replace("-", "").replace(" ", "")
        if key in _TABLE_ALIASES:
            return _TABLE_ALIASES[key]
        raise ValueError(f"expected coil, discrete, holding or input, got {value!r}")
    return value


PointType = Literal[
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "string",
    "bytes",
    "bool",
]
_STRUCT = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}
_INT_BITS = {"int16": 16, "uint16": 16, "int32": 32, "uint32": 32, "int64": 64, "uint64": 64}


# --------------------------------------------------------------------------- encoding
def register_span(ptype: str, length: int | None = None) -> int:
    """Registers a value of ``ptype`` takes (``length`` for string and bytes)."""
    if ptype in ("string", "bytes"):
        return length or 1
    if ptype == "bool":
        return 1
    return struct.calcsize(_STRUCT[ptype]) // 2


def encode_value(
    value: Any,
    ptype: str,
    length: int | None = None,
    byte_order: str = "big",
    word_order: str = "big",
) -> list[int]:
    """Encode ``value`` into 16-bit registers.

    ``big`` byte order puts the high byte first in each register; ``big`` word
    order puts the most significant register first. Strings are UTF-8, two
    bytes per register, padded with NULs. Raises ``ValueError`` if it does not fit.
    """
    if ptype == "bool":
        return [1 if value else 0]
    n = register_span(ptype, length)
    if ptype in ("string", "bytes"):
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        if len(data) > 2 * n:
            raise ValueError(f"{len(data)} bytes do not fit in {n} registers")
        data = data.ljust(2 * n, b"\x00")
    else:
        fmt = ">" + _STRUCT[ptype]
        try:
            number = value if ptype.startswith("float") else int(value)
            data = struct.pack(fmt, number)
        except (struct.error, OverflowError, TypeError) as exc:
            raise ValueError(f"{value!r} does not fit in {ptype}: {exc}") from None
    words = [data[i : i + 2] for i in range(0, len(data), 2)]
    if word_order == "little":
        words.reverse()
    if byte_order == "little":
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def decode_value(
    regs: list[int],
    ptype: str,
    length: int | None = None,
    byte_order: str = "big",
    word_order: str = "big",
) -> Any:
    """Decode registers written by :func:`encode_value` (or by a client)."""
    if ptype == "bool":
        return regs[0] != 0
    words = [r.to_bytes(2, "big") for r in regs[: register_span(ptype, length)]]
    if byte_order == "little":
        words = [w[::-1] for w in words]
    if word_order == "little":
        words.reverse()
    data = b"".join(words)
    if ptype == "string":
        return data.rstrip(b"\x00").decode("utf-8", errors="replace")
    if ptype == "bytes":
        return data
    return struct.unpack(">" + _STRUCT[ptype], data)[0]


# --------------------------------------------------------------------------- behaviours
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Constant(_Model):
    """The value stays as it is (a write to a writable point changes it)."""

    kind: Literal["constant"] = "constant"


class Setpoint(_Model):
    """A writable value that reads back what was last written."""

    kind: Literal["setpoint"] = "setpoint"


class Counter(_Model):
    """``value + step`` every ``interval`` seconds; integers wrap, a bool toggles."""

    kind: Literal["counter"] = "counter"
    step: float = 1.0
    interval: float = Field(default=1.0, gt=0)


class Sine(_Model):
    """``mean + amplitude * sin(2 pi t / period + phase)``, ``phase`` in degrees."""

    kind: Literal["sine"] = "sine"
    mean: float = 0.0
    amplitude: float = 1.0
    period: float = Field(default=60.0, gt=0)
    phase: float = 0.0


class RandomWalk(_Model):
    """A uniform step in ``[-step, step]`` every ``interval`` seconds, within bounds."""

    kind: Literal["random_walk"] = "random_walk"
    step: float = Field(default=1.0, ge=0)
    interval: float = Field(default=1.0, gt=0)
    min: float | None = None
    max: float | None = None


Behaviour = Annotated[
    Constant | Setpoint | Counter | Sine | RandomWalk, Field(discriminator="kind")
]


# --------------------------------------------------------------------------- profile
class Point(_Model):
    """One value at an address of a unit's table."""

    name: str = Field(min_length=1)
    table: SimTable
    address: int = Field(ge=0, le=65535)
    type: PointType | None = None
    length: int | None = Field(default=None, ge=1, le=125)
    byteOrder: Literal["big", "little"] = "big"
    wordOrder: Literal["big", "little"] = "big"
    value: bool | int | float | str | None = None
    behaviour: Behaviour = Field(default_factory=Constant)
    writable: bool | None = None

    _table = field_validator("table", mode="before")(_table)

    @field_validator("behaviour", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value

    @field_validator("type", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> Point:
        ptype = self.ptype
        if self.table.is_bits and ptype != "bool":
            raise ValueError(f"a {self.table} holds single bits; type must be bool, not {ptype}")
        if ptype not in ("string", "bytes") and self.length is not None:
            raise ValueError(f"length applies to string and bytes, not to {ptype}")
        kind = self.behaviour.kind
        if ptype in ("string", "bytes") and kind not in ("constant", "setpoint"):
            raise ValueError(f"a {ptype} point is constant or a setpoint, not a {kind}")
        if ptype == "bool" and kind in ("sine", "random_walk"):
            raise ValueError(f"a bool point cannot follow a {kind}")
        if self.writable and self.table in (SimTable.INPUT, SimTable.DISCRETE):
            raise ValueError(f"a point in the {self.table} table cannot be writable")
        if self.value is not None:
            encode_value(self.value, ptype, self.length, self.byteOrder, self.wordOrder)
        return self

    @property
    def ptype(self) -> str:
        """The point's type (bool for bit tables, uint16 otherwise, unless given)."""
        if self.type is not None:
            return self.type
        return "bool" if self.table.is_bits else "uint16"

    @property
    def span(self) -> int:
        """Registers (or bits) the point covers."""
        return 1 if self.table.is_bits else register_span(self.ptype, self.length)

    @property
    def is_writable(self) -> bool:
        if self.table in (SimTable.INPUT, SimTable.DISCRETE):
            return False
        if self.writable is not None:
            return self.writable
        return self.behaviour.kind == "setpoint"

    def initial(self) -> Any:
        """The value the point starts with."""
        if self.value is not None:
            return self.value
        if isinstance(self.behaviour, Sine):
            return self.behaviour.mean
        ptype = self.ptype
        if ptype == "bool":
            return False
        if ptype == "string":
            return ""
        if ptype == "bytes":
            return b""
        return 0.0 if ptype.startswith("float") else 0


class Unit(_Model):
    """One unit id (slave) served by the simulator."""

    id: int = Field(ge=1, le=255)
    strict: bool = False
    sizes: dict[SimTable, int] = Field(default_factory=dict)
    points: list[Point] = Field(default_factory=list)

    @field_validator("sizes", mode="before")
    @classmethod
    def _sizes(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {_table(k): v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _check(self) -> Unit:
        names: set[str] = set()
        by_table: dict[SimTable, list[Point]] = {}
        for point in self.points:
            if point.name in names:
                raise ValueError(f"point {point.name!r} is defined twice in unit {self.id}")
            names.add(point.name)
            if point.address + point.span > 65536:
                raise ValueError(f"point {point.name!r} runs past address 65535")
            by_table.setdefault(point.table, []).append(point)
        for table, points in by_table.items():
            points = sorted(points, key=lambda p: p.address)
            for a, b in itertools.pairwise(points):
                if b.address < a.address + a.span:
                    raise ValueError(
                        f"points {a.name!r} and {b.name!r} overlap in the {table} table "
                        f"of unit {self.id}"
                    )
        for table, size in self.sizes.items():
            if not 0 <= size <= 65536:
                raise ValueError(f"sizes.{table}: expected 0..65536, got {size}")
        return self

    def size(self, table: SimTable) -> int:
        """The number of addresses of ``table`` that answer (non-strict units)."""
        end = max((p.address + p.span for p in self.points if p.table is table), default=0)
        return max(end, self.sizes.get(table, 0))


class Fault(BaseModel):
    """A fault injected into requests that touch an address range.

    Attributes:
        unit: the unit id, or ``None`` for every unit.
        table: the table, or ``None`` for every table.
        address: first address of the range.
        count: addresses in the range (default: to the end of the table).
        access: which requests: ``read``, ``write`` or ``any``.
        exception: answer with this Modbus exception code.
        delay: seconds to wait before answering.
        drop: close every client connection instead of answering.
    """

    model_config = ConfigDict(extra="forbid")

    unit: int | None = Field(default=None, ge=0, le=255)
    table: SimTable | None = None
    address: int = Field(default=0, ge=0, le=65535)
    count: int = Field(default=65536, ge=1, le=65536)
    access: Literal["read", "write", "any"] = "any"
    exception: int | None = None
    delay: float = Field(default=0.0, ge=0, le=3600)
    drop: bool = False

    _table = field_validator("table", mode="before")(_table)

    @field_validator("exception")
    @classmethod
    def _code(cls, value: int | None) -> int | None:
        if value is not None and value not in EXCEPTION_CODES:
            codes = ", ".join(str(c) for c in sorted(EXCEPTION_CODES))
            raise ValueError(f"{value} is not a Modbus exception code ({codes})")
        return value

    @model_validator(mode="after")
    def _something(self) -> Fault:
        if self.exception is None and not self.delay and not self.drop:
            raise ValueError("a fault needs exception, delay or drop")
        return self

    def matches(self, unit: int, table: SimTable, lo: int, hi: int, write: bool) -> bool:
        """Whether a request for ``[lo, hi)`` of ``table`` on ``unit`` is affected."""
        if self.unit is not None and self.unit != unit:
            return False
        if self.table is not None and self.table is not table:
            return False
        if self.access != "any" and (self.access == "write") != write:
            return False
        return self.address < hi and lo < self.address + self.count


class Profile(_Model):
    """Everything a simulator serves."""

    name: str = "modbus"
    seed: int | None = None
    units: list[Unit] = Field(min_length=1)
    faults: list[Fault] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> Profile:
        ids = [u.id for u in self.units]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"unit ids defined twice: {dupes}")
        return self


def load_profile(source: str | Path | Mapping[str, Any] | Profile) -> Profile:
    """Load a profile from a YAML file, a ``.py`` file, a mapping, or a shipped name.

    ``energy_meter`` and ``thermostat`` name the profiles shipped in
    ``simulators/modbus/profiles``. A ``.py`` file defines ``PROFILE`` (a
    :class:`Profile` or a mapping).

    Raises:
        ValueError: naming the file and the field that is wrong.
    """
    if isinstance(source, Profile):
        return source
    if isinstance(source, Mapping):
        return _validate(source, "<profile>")
    path = Path(source)
    if not path.exists():
        shipped = Path(__file__).parent / "profiles" / f"{source}.yaml"
        if shipped.exists():
            path = shipped
        else:
            raise ValueError(f"{source}: no such profile file (shipped: energy_meter, thermostat)")
    if path.suffix == ".py":
        import runpy

        namespace = runpy.run_path(str(path))
        data = namespace.get("PROFILE")
        if data is None:
            raise ValueError(f"{path}: defines no PROFILE")
        return data if isinstance(data, Profile) else _validate(data, str(path))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping with `units:`")
    return _validate(data, str(path))


def _validate(data: Mapping[str, Any], where: str) -> Profile:
    try:
        return Profile.model_validate(dict(data))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ValueError(f"{where}: {problems}") from None


def wrap_integer(value: float, ptype: str) -> int:
    """``value`` rounded and wrapped into the range of integer type ``ptype``."""
    bits = _INT_BITS[ptype]
    number = round(value) % (1 << bits)
    if not ptype.startswith("u") and number >= 1 << (bits - 1):
        number -= 1 << bits
    return number


def sine_at(behaviour: Sine, elapsed: float) -> float:
    """The value of a sine behaviour ``elapsed`` seconds after it started."""
    angle = 2 * math.pi * elapsed / behaviour.period + math.radians(behaviour.phase)
    return behaviour.mean + behaviour.amplitude * math.sin(angle)
