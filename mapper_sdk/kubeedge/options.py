"""The command-line options of ``mapperkit run --kubeedge``.

This module imports neither grpc nor protobuf, so ``mapperkit run`` can offer
the options whether or not the ``kubeedge`` extra is installed; running with
``--kubeedge`` needs it (:mod:`.runner`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

__all__ = [
    "DEFAULT_DMI_SOCKET",
    "DEFAULT_HEALTH_PORT",
    "add_kubeedge_options",
    "default_mapper_socket",
]

DEFAULT_DMI_SOCKET = "/etc/kubeedge/dmi.sock"
DEFAULT_HEALTH_PORT = 7778


def default_mapper_socket(protocol: str) -> Path:
    """Where the mapper of ``protocol`` listens unless told otherwise."""
    return Path(f"/etc/kubeedge/mapperkit-{protocol}.sock")


def add_kubeedge_options(parser: argparse.ArgumentParser) -> None:
    """Add the ``--kubeedge`` options to ``mapperkit run``'s parser.

    ``--broker`` is added only when the parser has no such option yet.
    """
    g = parser.add_argument_group("KubeEdge (DMI)")
    g.add_argument(
        "--kubeedge",
        action="store_true",
        help="take devices from edgecore over KubeEdge's DMI instead of files",
    )
    g.add_argument(
        "--protocol",
        default=os.environ.get("MAPPERKIT_PROTOCOL", "modbus"),
        help="the one protocol this process serves (default: $MAPPERKIT_PROTOCOL or modbus)",
    )
    g.add_argument(
        "--dmi-socket",
        default=os.environ.get("MAPPERKIT_DMI_SOCKET", DEFAULT_DMI_SOCKET),
        help=f"edgecore's DMI socket (default: $MAPPERKIT_DMI_SOCKET or {DEFAULT_DMI_SOCKET})",
    )
    g.add_argument(
        "--mapper-socket",
        default=os.environ.get("MAPPERKIT_MAPPER_SOCKET"),
        help="this mapper's socket (default: /etc/kubeedge/mapperkit-<protocol>.sock)",
    )
    g.add_argument(
        "--mapper-name", help="the name registered with edgecore (default: mapperkit-<protocol>)"
    )
    g.add_argument(
        "--dmi-rate",
        type=float,
        default=os.environ.get("MAPPERKIT_DMI_RATE", "1.0"),
        help="DMI calls per second to edgecore, sustained (default: $MAPPERKIT_DMI_RATE or 1.0; "
        "edgecore allows 1 for all mappers of a node together)",
    )
    g.add_argument(
        "--dmi-burst",
        type=int,
        default=os.environ.get("MAPPERKIT_DMI_BURST", "100"),
        help="DMI calls allowed at once after a quiet spell (default: $MAPPERKIT_DMI_BURST or "
        "100, edgecore's burst)",
    )
    g.add_argument(
        "--health-host",
        default=os.environ.get("MAPPERKIT_HEALTH_HOST", "127.0.0.1"),
        help="address of /healthz and /readyz (default 127.0.0.1)",
    )
    g.add_argument(
        "--health-port",
        type=int,
        default=os.environ.get("MAPPERKIT_HEALTH_PORT", str(DEFAULT_HEALTH_PORT)),
        help=f"port of /healthz and /readyz; 0 turns them off (default {DEFAULT_HEALTH_PORT})",
    )
    with contextlib.suppress(argparse.ArgumentError):
        parser.add_argument(
            "--broker",
            default=os.environ.get("MAPPERKIT_BROKER"),
            help="MQTT broker for pushMethod.mqtt sinks without an address of their own",
        )
