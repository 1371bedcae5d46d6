"""Modbus for Mapperkit: TCP, RTU and RTU over TCP, with automatic request coalescing.

Registered as the ``modbus`` driver in the ``mapper_sdk.drivers`` entry-point
group. The configuration keys are KubeEdge's (see :mod:`mappers.modbus.config`
and ``docs/modbus.md``).
"""

from .config import (
    CommunicateMode,
    Layout,
    ModbusProtocolConfig,
    ModbusVisitorConfig,
    Table,
    resolve_layout,
)
from .driver import EXCEPTION_NAMES, ModbusDriver
from .planner import Planner, Request

__all__ = [
    "EXCEPTION_NAMES",
    "CommunicateMode",
    "Layout",
    "ModbusDriver",
    "ModbusProtocolConfig",
    "ModbusVisitorConfig",
    "Planner",
    "Request",
    "Table",
    "resolve_layout",
]
