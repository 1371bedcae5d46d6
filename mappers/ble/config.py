"""Configuration of the BLE driver: the device's ``configData`` and each property's visitor.

KubeEdge's keys keep their names (``macAddress``, ``characteristicUUID``,
``dataWrite``, ``dataConverter``); Mapperkit's extensions are ``name``,
``scanTimeout``, ``connectTimeout``, ``backend`` on the device and ``rawType``,
``byteOrder``, ``notify``, ``legacyConverter`` on the visitor. Every class is
frozen and rejects unknown keys, so a typo is an error naming the field.
"""

from __future__ import annotations

import base64
import binascii
import enum
import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mapper_sdk.codec import RawType

__all__ = [
    "BLUETOOTH_BASE_UUID",
    "BleProtocolConfig",
    "BleVisitorConfig",
    "DataConverter",
    "Operation",
    "OperationType",
    "normalize_uuid",
]

BLUETOOTH_BASE_UUID = "-0000-1000-8000-00805f9b34fb"
"""The tail of the Bluetooth base UUID that 16- and 32-bit UUIDs expand into."""

_HEX = re.compile(r"^[0-9a-fA-F]+$")
_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$")
_APPLE_ID = re.compile(r"^[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}$")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
MAX_CONVERTER_BYTES = 8
"""A (non-legacy) converter slice is read as one unsigned integer of at most 64 bits."""


def normalize_uuid(text: str) -> str:
    """Return a GATT UUID as bleak spells it: 128-bit, lowercase, with dashes.

    Accepts 16-bit (``2A19``, ``0x2A19``), 32-bit and 128-bit UUIDs, with or
    without dashes. Raises ``ValueError`` naming what is wrong.
    """
    raw = text.strip()
    if raw.lower().startswith("0x"):
        raw = raw[2:]
    compact = raw.replace("-", "")
    if not compact or not _HEX.match(compact):
        raise ValueError(f"{text!r} is not a UUID (hex digits, 16- or 128-bit)")
    if len(compact) in (4, 8):
        if "-" in raw:
            raise ValueError(f"{text!r}: a 16- or 32-bit UUID has no dashes")
        return f"{int(compact, 16):08x}{BLUETOOTH_BASE_UUID}"
    if len(compact) != 32:
        raise ValueError(
            f"{text!r} has {len(compact)} hex digits; a UUID has 4 (16-bit), 8 (32-bit) or 32"
        )
    if "-" in raw and not _APPLE_ID.match(raw):
        raise ValueError(f"{text!r}: dashes must split a 128-bit UUID as 8-4-4-4-12 digits")
    c = compact.lower()
    return f"{c[:8]}-{c[8:12]}-{c[12:16]}-{c[16:20]}-{c[20:]}"


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BleProtocolConfig(_Config):
    """A BLE device's ``protocol.configData``.

    Attributes:
        macAddress: the peripheral's Bluetooth address (``AA:BB:CC:DD:EE:FF``; on
            macOS the CoreBluetooth UUID bleak reports instead).
        name: (ext) connect to the first peripheral advertising this local name;
            with ``macAddress`` too, both must match.
        scanTimeout: (ext) seconds to scan for the peripheral before giving up.
        connectTimeout: (ext) seconds allowed for connecting and service discovery.
        backend: (ext) ``package.module:attribute`` naming a
            :class:`~mappers.ble.BleBackend` (or a function returning one) to use
            instead of bleak's platform backend.
    """

    macAddress: str | None = None
    name: str | None = Field(default=None, min_length=1, max_length=248)
    scanTimeout: float = Field(default=10.0, gt=0, le=3600)
    connectTimeout: float = Field(default=20.0, gt=0, le=3600)
    backend: str | None = None

    @field_validator("macAddress", mode="before")
    @classmethod
    def _mac(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str):
            raise ValueError(f"expected an address string, got {value!r}")
        text = value.strip()
        if _MAC.match(text):
            return text.replace("-", ":").upper()
        if _APPLE_ID.match(text):
            return text.upper()
        raise ValueError(
            f"{value!r} is not a Bluetooth address (AA:BB:CC:DD:EE:FF) "
            "or a CoreBluetooth device UUID"
        )

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str | None) -> str | None:
        if value is not None and not _IMPORT_PATH.match(value):
            raise ValueError(f"{value!r} is not an import path of the form package.module:name")
        return value

    @model_validator(mode="after")
    def _target(self) -> BleProtocolConfig:
        if self.macAddress is None and self.name is None:
            raise ValueError("give macAddress or name (or both) to find the device")
        return self


class OperationType(enum.StrEnum):
    """An arithmetic step of KubeEdge's ``dataConverter`` (any case in YAML)."""

    ADD = "Add"
    SUBTRACT = "Subtract"
    MULTIPLY = "Multiply"
    DIVIDE = "Divide"


class Operation(_Config):
    """One ``orderOfOperations`` entry."""

    operationType: OperationType
    operationValue: float

    @field_validator("operationType", mode="before")
    @classmethod
    def _type(cls, value: Any) -> Any:
        if isinstance(value, str):
            for op in OperationType:
                if op.value.lower() == value.strip().lower():
                    return op
            raise ValueError(f"{value!r} is not one of Add, Subtract, Multiply, Divide")
        return value

    @field_validator("operationValue")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number")
        return value

    @model_validator(mode="after")
    def _no_zero_division(self) -> Operation:
        if self.operationType is OperationType.DIVIDE and self.operationValue == 0:
            raise ValueError("Divide by 0 would make every value infinite")
        return self


class DataConverter(_Config):
    """KubeEdge's ``dataConverter``: slice the value, shift it, then apply arithmetic.

    Bytes ``startIndex`` to ``endIndex`` (inclusive; reversed when start > end)
    are read as one unsigned integer, first byte most significant; then
    ``shiftLeft`` (within 64 bits) and ``shiftRight``; then each operation in
    order. Under ``legacyConverter`` the bytes' decimal texts are concatenated
    instead and only one shift applies, as KubeEdge's Go mapper does.
    """

    startIndex: int = Field(default=0, ge=0, le=511)
    endIndex: int = Field(default=0, ge=0, le=511)
    shiftLeft: int = Field(default=0, ge=0, le=63)
    shiftRight: int = Field(default=0, ge=0, le=63)
    orderOfOperations: tuple[Operation, ...] = ()

    @property
    def width(self) -> int:
        """How many bytes the slice takes."""
        return abs(self.endIndex - self.startIndex) + 1

    @property
    def arithmetic_only(self) -> bool:
        """Whether only ``orderOfOperations`` is given (no slice, no shifts)."""
        return not (self.startIndex or self.endIndex or self.shiftLeft or self.shiftRight)


def _parse_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError("an empty byte list writes nothing")
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= 255:
                raise ValueError(f"byte list item {item!r} is not an integer 0..255")
        return bytes(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 255:
            raise ValueError(f"{value} is not a byte (0..255); use a list for several bytes")
        return bytes([value])
    if isinstance(value, str):
        text = value.strip()
        if text.lower().startswith("0x"):
            digits = text[2:].replace(" ", "").replace("_", "")
            if not digits or len(digits) % 2 or not _HEX.match(digits):
                raise ValueError(f"{value!r} is not an even number of hex digits after 0x")
            return bytes.fromhex(digits)
        try:
            data = base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise ValueError(
                f"{value!r} is neither 0x-prefixed hex nor base64; "
                "write bytes as a list like [1, 0] or as '0x0100'"
            ) from None
        if not data:
            raise ValueError(f"{value!r} decodes to no bytes")
        return data
    raise ValueError(f"expected bytes as a list of 0..255, '0x..' hex or base64, got {value!r}")


class BleVisitorConfig(_Config):
    """A BLE property's ``visitors.configData``.

    Attributes:
        characteristicUUID: the GATT characteristic, 16- or 128-bit, dashes
            optional; stored as bleak's 128-bit lowercase form.
        dataWrite: desired value (as text) to the bytes written for it; bytes are
            a list of 0..255, ``0x`` hex or base64 (Go's JSON form of ``[]byte``).
        dataConverter: KubeEdge's slice/shift/arithmetic decoder. Next to
            ``rawType`` it may only give ``orderOfOperations``, applied to the
            decoded number (and inverted for writes).
        rawType: (ext) the value's wire type (``int16``, ``float32``, ``string``, ...).
        byteOrder: (ext) ``little`` (default, as GATT uses) or ``big`` for ``rawType``.
        notify: (ext) subscribe to notifications instead of polling.
        legacyConverter: (ext) decode ``dataConverter`` slices the way KubeEdge's
            Go mapper does (decimal text of each byte concatenated).
    """

    characteristicUUID: str
    dataWrite: dict[str, bytes] | None = None
    dataConverter: DataConverter | None = None
    rawType: RawType | None = None
    byteOrder: Literal["little", "big"] | None = None
    notify: bool = False
    legacyConverter: bool = False

    @field_validator("characteristicUUID", mode="before")
    @classmethod
    def _uuid(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # YAML reads an unquoted 2902 as a number
        if not isinstance(value, str):
            raise ValueError(f"expected a UUID string, got {value!r}")
        return normalize_uuid(value)

    @field_validator("rawType", mode="before")
    @classmethod
    def _raw(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return RawType(value.strip().lower())
            except ValueError:
                names = ", ".join(r.value for r in RawType)
                raise ValueError(f"{value!r} is not a raw type ({names})") from None
        return value

    @field_validator("byteOrder", mode="before")
    @classmethod
    def _order(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("dataWrite", mode="before")
    @classmethod
    def _data_write(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ValueError("expected a mapping from desired value to bytes")
        if not value:
            raise ValueError("an empty dataWrite mapping can write nothing; leave it out")
        out: dict[str, bytes] = {}
        for key, data in value.items():
            text = _key_text(key)
            try:
                out[text] = _parse_bytes(data)
            except ValueError as exc:
                raise ValueError(f"dataWrite[{text!r}]: {exc}") from None
        return out

    @model_validator(mode="after")
    def _combinations(self) -> BleVisitorConfig:
        conv = self.dataConverter
        if self.rawType is not None and conv is not None and not conv.arithmetic_only:
            raise ValueError(
                "with rawType, a dataConverter may only give orderOfOperations (applied to the "
                "decoded number); startIndex, endIndex and shifts need a dataConverter alone"
            )
        if self.legacyConverter and self.rawType is not None:
            raise ValueError("legacyConverter applies to dataConverter, not to rawType")
        if self.byteOrder is not None and self.rawType is None:
            raise ValueError(
                "byteOrder applies to rawType; a dataConverter orders bytes with "
                "startIndex/endIndex (start > end reverses them)"
            )
        if conv is not None and not self.legacyConverter and conv.width > MAX_CONVERTER_BYTES:
            raise ValueError(
                f"dataConverter slices {conv.width} bytes; at most {MAX_CONVERTER_BYTES} "
                "make one unsigned 64-bit integer"
            )
        return self

    @property
    def order(self) -> Literal["little", "big"]:
        """The byte order in effect (little-endian unless ``byteOrder`` says otherwise)."""
        return self.byteOrder or "little"


def _key_text(key: Any) -> str:
    # YAML turns `ON:` into True and `1:` into 1; KubeEdge keys are strings.
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int | float):
        return str(key)
    if isinstance(key, str):
        return key
    raise ValueError(f"dataWrite key {key!r} is not a scalar")
