"""``mapperkit sim <protocol>``: run a simulator standalone.

Each protocol's simulator package provides ``simulators.<protocol>.cli:register``,
a function that adds its parser to the ``sim`` subcommands. The simulator
modules (and their protocol libraries) are imported only when that simulator
runs, so other ``mapperkit`` commands start fast.
"""

from __future__ import annotations

import argparse
import functools
import importlib
from typing import Any

SIMULATORS = {
    "modbus": "Modbus TCP / RTU-over-TCP server driven by a profile",
    "opcua": "OPC-UA server driven by a profile",
    "ble": "BLE peripherals on a virtual radio (bumble)",
}


def command(sub: Any) -> None:
    parser = sub.add_parser("sim", help="run a protocol simulator standalone")
    sims = parser.add_subparsers(dest="simulator", metavar="PROTOCOL")
    for name, summary in SIMULATORS.items():
        p = sims.add_parser(name, help=summary, add_help=False)
        p.set_defaults(func=functools.partial(_delegate, name), pass_through=True)
    parser.set_defaults(func=lambda args: _usage(parser))


def _delegate(name: str, args: argparse.Namespace) -> int:
    try:
        module = importlib.import_module(f"simulators.{name}.cli")
    except ImportError as exc:
        print(f"mapperkit sim {name}: not available ({exc}); install mapperkit[{name}]")
        return 2
    real = argparse.ArgumentParser(prog="mapperkit sim")
    module.register(real.add_subparsers(dest="simulator"))
    ns = real.parse_args([name, *getattr(args, "extra", [])])
    result: int = ns.func(ns)
    return result


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2
