"""``mapperkit sim <protocol>``: run a simulator standalone.

Each protocol's simulator package provides ``simulators.<protocol>.cli:register``,
a function that adds its parser to the ``sim`` subcommands. A simulator whose
protocol library is not installed is listed with the reason instead.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

SIMULATORS = ("modbus", "opcua", "ble")


def command(sub: Any) -> None:
    parser = sub.add_parser("sim", help="run a protocol simulator standalone")
    sims = parser.add_subparsers(dest="simulator", metavar="PROTOCOL")
    for name in SIMULATORS:
        try:
            module = importlib.import_module(f"simulators.{name}.cli")
        except ImportError as exc:
            sims.add_parser(name, help=f"(not available: {exc})")
            continue
        module.register(sims)
    parser.set_defaults(func=lambda args: _usage(parser, args))


def _usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    parser.print_help()
    return 2
