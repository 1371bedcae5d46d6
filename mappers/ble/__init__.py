"""Bluetooth LE mapper: GATT reads, writes and notifications through bleak.

Registered as the ``ble`` driver of the ``mapper_sdk.drivers`` entry-point group.
The bleak backend is injectable (:class:`BleBackend`), so production runs on
bleak's platform backend and tests and demos on the simulator's virtual radio.
"""

from __future__ import annotations

from .backend import EXTRAS_KEY, PLATFORM, BleBackend, load_backend
from .config import (
    BleProtocolConfig,
    BleVisitorConfig,
    DataConverter,
    Operation,
    OperationType,
    normalize_uuid,
)
from .convert import Codec, compile_codec, make_converter
from .driver import BleDriver, att_error_name

__all__ = [
    "EXTRAS_KEY",
    "PLATFORM",
    "BleBackend",
    "BleDriver",
    "BleProtocolConfig",
    "BleVisitorConfig",
    "Codec",
    "DataConverter",
    "Operation",
    "OperationType",
    "att_error_name",
    "compile_codec",
    "load_backend",
    "make_converter",
    "normalize_uuid",
]
