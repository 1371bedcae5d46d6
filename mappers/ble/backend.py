"""Which bleak backend the BLE driver uses, and how it is injected.

bleak picks a platform backend (BlueZ over D-Bus on Linux, CoreBluetooth,
WinRT) unless ``BleakClient``/``BleakScanner`` are given ``backend=`` and extra
keyword arguments for it. The driver takes that choice from, in order:

1. the device's ``configData.backend``: an import path ``package.module:name``
   naming a :class:`BleBackend` or a function that returns one;
2. the process's shared resources, ``resources.extras["ble.backend"]``
   (:data:`EXTRAS_KEY`), a :class:`BleBackend` put there by whoever starts the
   mapper (the simulator does this for its virtual radio);
3. otherwise bleak's platform backend.

The driver never looks inside: it hands the classes and arguments to bleak.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bleak.backends.client import BaseBleakClient
from bleak.backends.scanner import BaseBleakScanner

from mapper_sdk.errors import ConfigError

__all__ = ["EXTRAS_KEY", "PLATFORM", "BleBackend", "load_backend"]

EXTRAS_KEY = "ble.backend"
"""The key of :attr:`mapper_sdk.driver.Resources.extras` the driver reads."""


@dataclass(frozen=True, slots=True)
class BleBackend:
    """A bleak backend: client and scanner classes and the arguments they take.

    Attributes:
        client_backend: a ``BaseBleakClient`` subclass, or ``None`` for bleak's
            platform client.
        scanner_backend: a ``BaseBleakScanner`` subclass, or ``None`` for bleak's
            platform scanner.
        kwargs: extra keyword arguments passed to both ``BleakClient`` and
            ``BleakScanner`` (and from them to the backend's constructor), such
            as ``{"bluez": {"adapter": "hci1"}}``.
        name: names the adapter in logs and in the shared-resource key that
            serialises connection attempts on it.
    """

    client_backend: type[BaseBleakClient] | None = None
    scanner_backend: type[BaseBleakScanner] | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    name: str = "platform"


PLATFORM = BleBackend()
"""bleak's own platform backend with no extra arguments."""


def load_backend(path: str) -> BleBackend:
    """Resolve ``package.module:name`` to a :class:`BleBackend`.

    ``name`` may be a ``BleBackend`` or a function of no arguments returning
    one. Raises :class:`~mapper_sdk.errors.ConfigError` saying what is wrong.
    """
    module_name, _, attr_path = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"backend {path!r}: cannot import {module_name}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"backend {path!r}: {module_name} has no {attr_path}") from None
    if isinstance(target, BleBackend):
        return target
    if callable(target):
        try:
            result = target()
        except (RuntimeError, LookupError, ValueError) as exc:
            raise ConfigError(f"backend {path!r}: {exc}") from exc
        if isinstance(result, BleBackend):
            return result
        raise ConfigError(
            f"backend {path!r} returned {type(result).__name__}, not a mappers.ble.BleBackend"
        )
    raise ConfigError(f"backend {path!r} is a {type(target).__name__}, not a BleBackend")
