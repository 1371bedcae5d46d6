"""A Modbus TCP and RTU-over-TCP simulator driven by a profile of points.

See :mod:`simulators.modbus.profile` for the profile format and
:class:`ModbusSimulator` for the server, its fault injection and its request
counters. ``mapperkit sim modbus --profile FILE --port N`` runs one standalone.
"""

from .profile import Fault, Point, Profile, SimTable, Unit, decode_value, encode_value, load_profile
from .server import ModbusSimulator

__all__ = [
    "Fault",
    "ModbusSimulator",
    "Point",
    "Profile",
    "SimTable",
    "Unit",
    "decode_value",
    "encode_value",
    "load_profile",
]
