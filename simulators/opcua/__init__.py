"""OPC-UA simulator: an asyncua server with a profile of variables and fault injection.

See :mod:`simulators.opcua.server` for the server and its faults,
:mod:`simulators.opcua.profile` for the profile format and
:mod:`simulators.opcua.certs` for throwaway test certificates.
"""

from __future__ import annotations

from .certs import TestPki, generate_test_pki
from .profile import BUILTIN_PROFILES, Profile, VariableProfile, load_profile
from .server import OpcUaSimulator, SimulatorStats

__all__ = [
    "BUILTIN_PROFILES",
    "OpcUaSimulator",
    "Profile",
    "SimulatorStats",
    "TestPki",
    "VariableProfile",
    "generate_test_pki",
    "load_profile",
]
