"""Simulated BLE peripherals on a virtual radio, reachable through bleak.

:class:`VirtualRadio` runs bumble's complete BLE host stack over a virtual
link: simulated peripherals (:class:`SimPeripheral`) with GATT servers, and a
central adapter that the bleak backends in :mod:`simulators.ble.bleak_backend`
drive. Every read, write and notification crosses real ATT/GATT.

    async with VirtualRadio() as radio:
        await radio.add_profile(load_profile("demo"))
        radio.install(resources)       # BLE drivers on `resources` use this radio
"""

from __future__ import annotations

from .peripheral import SimCharacteristic, SimPeripheral
from .profile import (
    CharacteristicSpec,
    FaultSpec,
    PeripheralSpec,
    ProfileSpec,
    ServiceSpec,
    builtin_profiles,
    load_profile,
    parse_profile,
)
from .radio import VirtualRadio, current_backend, current_radio

__all__ = [
    "CharacteristicSpec",
    "FaultSpec",
    "PeripheralSpec",
    "ProfileSpec",
    "ServiceSpec",
    "SimCharacteristic",
    "SimPeripheral",
    "VirtualRadio",
    "builtin_profiles",
    "current_backend",
    "current_radio",
    "load_profile",
    "parse_profile",
]
