"""OPC-UA driver for Mapperkit (asyncua): batched reads, subscriptions, typed writes, security.

Registered as the ``opcua`` entry point of ``mapper_sdk.drivers``. The
configuration keys are KubeEdge's (see :mod:`mappers.opcua.config` and
``docs/opcua.md``).
"""

from __future__ import annotations

from .config import OpcUaProtocolConfig, OpcUaVisitorConfig
from .driver import OpcUaDriver

__all__ = ["OpcUaDriver", "OpcUaProtocolConfig", "OpcUaVisitorConfig"]
