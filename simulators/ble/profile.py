"""Simulator profiles: which peripherals exist, their GATT services and how values move.

A profile is a YAML file::

    peripherals:
      - name: env-sensor-1               # advertised local name
        address: "C0:FF:EE:00:00:01"     # random static address
        services:
          - uuid: "181A"
            characteristics:
              - uuid: "2A6E"             # temperature
                properties: [read, notify]
                format: int16            # wire type (a mapper_sdk.codec raw type)
                scale: 0.01              # raw = value / scale
                value: 21.5
                behaviour: {kind: sine, offset: 21.5, amplitude: 2.5, period: 60}
                interval: 1000           # ms between behaviour steps and notifications
        faults:                          # optional, also settable at run time
          readErrors: {"2A19": READ_NOT_PERMITTED}

Built-in profiles ship with the package (:func:`builtin_profiles`):
``environmental-sensor``, ``actuator`` and ``demo`` (both).
"""

from __future__ import annotations

import math
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from bumble.att import ErrorCode
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mapper_sdk.codec import RawType
from mapper_sdk.errors import ConfigError
from mappers.ble.config import normalize_uuid

__all__ = [
    "Behaviour",
    "CharacteristicSpec",
    "Counter",
    "FaultSpec",
    "PeripheralSpec",
    "ProfileSpec",
    "RandomWalk",
    "ServiceSpec",
    "Sine",
    "builtin_profiles",
    "load_profile",
    "parse_profile",
]

PROPERTY_NAMES = (
    "read",
    "write",
    "write-without-response",
    "notify",
    "indicate",
)
_ADDRESS = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Counter(_Spec):
    """Adds ``step`` each interval; wraps from above ``maximum`` to ``minimum``."""

    kind: Literal["counter"]
    start: float = 0
    step: float = 1
    minimum: float | None = None
    maximum: float | None = None


class Sine(_Spec):
    """``offset + amplitude * sin(2 pi t / period)``, ``t`` in seconds since start."""

    kind: Literal["sine"]
    offset: float = 0
    amplitude: float = 1
    period: float = Field(default=60, gt=0)


class RandomWalk(_Spec):
    """Moves by a uniform step in ``[-step, step]`` each interval, kept in bounds."""

    kind: Literal["random_walk"]
    start: float = 0
    step: float = Field(default=1, ge=0)
    minimum: float = -math.inf
    maximum: float = math.inf
    seed: int | None = None


Behaviour = Annotated[Counter | Sine | RandomWalk, Field(discriminator="kind")]


class CharacteristicSpec(_Spec):
    """One GATT characteristic of a simulated peripheral.

    Attributes:
        uuid: 16- or 128-bit UUID.
        description: free text for people reading the profile.
        properties: GATT properties: ``read``, ``write``,
            ``write-without-response``, ``notify``, ``indicate``. A write to a
            characteristic without ``write``/``write-without-response`` is refused
            with ``WRITE_NOT_PERMITTED``; a read without ``read`` with
            ``READ_NOT_PERMITTED``.
        format: the wire type (``uint8``, ``int16``, ``float32``, ``string``,
            ``bytes``, ...), little-endian unless ``byteOrder: big``.
        scale: for numbers, ``raw = round(value / scale)``.
        value: the initial value (for ``bytes``: hex text).
        minimum, maximum: written values outside are refused with ``VALUE_NOT_ALLOWED``.
        behaviour: how the value moves (``counter``, ``sine``, ``random_walk``).
        interval: milliseconds between behaviour steps; each step notifies
            subscribers of a ``notify`` characteristic.
    """

    uuid: str
    description: str | None = None
    properties: tuple[str, ...] = ("read",)
    format: RawType = RawType.UINT8
    byteOrder: Literal["little", "big"] = "little"
    scale: float = 1.0
    value: float | int | bool | str = 0
    minimum: float | None = None
    maximum: float | None = None
    behaviour: Behaviour | None = None
    interval: float = Field(default=1000, gt=0, le=3_600_000)

    @field_validator("uuid", mode="before")
    @classmethod
    def _uuid(cls, value: Any) -> Any:
        return _uuid_text(value)

    @field_validator("format", mode="before")
    @classmethod
    def _format(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("properties")
    @classmethod
    def _properties(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if name not in PROPERTY_NAMES:
                raise ValueError(f"{name!r} is not a GATT property ({', '.join(PROPERTY_NAMES)})")
        if not value:
            raise ValueError("a characteristic needs at least one property")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CharacteristicSpec:
        if self.scale == 0 or not math.isfinite(self.scale):
            raise ValueError("scale must be a finite, non-zero number")
        if self.behaviour is not None and self.format in (RawType.STRING, RawType.BYTES):
            raise ValueError(f"a behaviour moves numbers; format {self.format} holds none")
        if self.format is RawType.BYTES and isinstance(self.value, str):
            try:
                bytes.fromhex(self.value)
            except ValueError:
                raise ValueError(f"value {self.value!r} is not hex for format bytes") from None
        return self

    def has(self, prop: str) -> bool:
        return prop in self.properties


class ServiceSpec(_Spec):
    uuid: str
    characteristics: tuple[CharacteristicSpec, ...]

    @field_validator("uuid", mode="before")
    @classmethod
    def _uuid(cls, value: Any) -> Any:
        return _uuid_text(value)


class FaultSpec(_Spec):
    """Faults a peripheral starts with (all can be changed at run time).

    Attributes:
        advertise: ``false`` starts the peripheral silent (not discoverable).
        readDelay: milliseconds every read and write waits before answering.
        readErrors: characteristic UUID to the ATT error name its reads answer
            with (``READ_NOT_PERMITTED``, ``INSUFFICIENT_AUTHORIZATION``, ...).
    """

    advertise: bool = True
    readDelay: float = Field(default=0, ge=0, le=60_000)
    readErrors: dict[str, ErrorCode] = Field(default_factory=dict)

    @field_validator("readErrors", mode="before")
    @classmethod
    def _errors(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out: dict[str, ErrorCode] = {}
        for uuid, name in value.items():
            out[normalize_uuid(str(uuid))] = _att_error(name)
        return out


def _uuid_text(value: Any) -> Any:
    # YAML reads an unquoted 2902 as a number; UUIDs are always hex text.
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return normalize_uuid(value) if isinstance(value, str) else value


def _att_error(name: Any) -> ErrorCode:
    if isinstance(name, ErrorCode):
        return name
    if isinstance(name, int) and not isinstance(name, bool):
        return ErrorCode(name)
    key = str(name).strip().upper().removeprefix("ATT_").removesuffix("_ERROR")
    try:
        return ErrorCode[key]
    except KeyError:
        names = ", ".join(e.name for e in ErrorCode)
        raise ValueError(f"{name!r} is not an ATT error ({names})") from None


class PeripheralSpec(_Spec):
    """One simulated peripheral."""

    name: str = Field(min_length=1, max_length=24)
    address: str
    advertisingInterval: float = Field(default=20, ge=20, le=10_240)
    services: tuple[ServiceSpec, ...]
    faults: FaultSpec = Field(default_factory=FaultSpec)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not _ADDRESS.match(value):
            raise ValueError(f"{value!r} is not an address AA:BB:CC:DD:EE:FF")
        if int(value[:2], 16) >> 6 != 3:
            raise ValueError(
                f"{value!r} is not a random static address (its first byte must be C0..FF)"
            )
        return value.upper()

    @model_validator(mode="after")
    def _unique(self) -> PeripheralSpec:
        seen: set[str] = set()
        for service in self.services:
            for char in service.characteristics:
                if char.uuid in seen:
                    raise ValueError(f"characteristic {char.uuid} appears twice")
                seen.add(char.uuid)
        return self

    def characteristic(self, uuid: str) -> CharacteristicSpec:
        key = normalize_uuid(uuid)
        for service in self.services:
            for char in service.characteristics:
                if char.uuid == key:
                    return char
        raise KeyError(uuid)


class ProfileSpec(_Spec):
    """A simulator profile: a list of peripherals."""

    peripherals: tuple[PeripheralSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> ProfileSpec:
        for attr in ("name", "address"):
            values = [getattr(p, attr) for p in self.peripherals]
            dupes = {v for v in values if values.count(v) > 1}
            if dupes:
                raise ValueError(f"peripheral {attr} used twice: {', '.join(sorted(dupes))}")
        return self


def builtin_profiles() -> dict[str, str]:
    """Names of the profiles shipped with the simulator, to their YAML text."""
    folder = resources.files(__package__).joinpath("profiles")
    out: dict[str, str] = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".yaml"):
            out[entry.name[: -len(".yaml")]] = entry.read_text(encoding="utf-8")
    return out


def load_profile(source: str | Path) -> ProfileSpec:
    """Load a profile from a file path or a built-in profile name.

    Raises:
        ConfigError: naming the file and the field that is wrong.
    """
    builtin = builtin_profiles()
    where = str(source)
    if isinstance(source, str) and source in builtin and not Path(source).exists():
        text = builtin[source]
    else:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            known = ", ".join(sorted(builtin))
            raise ConfigError(
                f"cannot read the profile ({exc.strerror}); built-in profiles: {known}",
                location=where,
            ) from None
    return parse_profile(text, where)


def parse_profile(text: str, where: str = "<profile>") -> ProfileSpec:
    """Validate profile YAML text (see :func:`load_profile`)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", location=where) from None
    try:
        return ProfileSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(problems, location=where) from None
