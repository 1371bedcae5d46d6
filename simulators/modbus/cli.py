"""``mapperkit sim modbus``: run the Modbus simulator standalone.

::

    mapperkit sim modbus --profile energy_meter --port 5020
    mapperkit sim modbus --profile my_plant.yaml --port 5021 --framing rtu
    python -m simulators.modbus --profile thermostat --port 0   # a free port

It prints ``listening on HOST:PORT`` once ready and serves until interrupted
(SIGINT or SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "register"]


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        required=True,
        metavar="FILE",
        help="profile: a YAML or .py file, or a shipped name (energy_meter, thermostat)",
    )
    parser.add_argument("--port", type=int, default=5020, help="TCP port (0: a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--framing",
        choices=["tcp", "rtu"],
        default="tcp",
        help="tcp: Modbus TCP (MBAP); rtu: RTU frames over TCP (default tcp)",
    )
    parser.add_argument("--log-level", default="warning", help="logging level (default warning)")


def register(sims: Any) -> None:
    """Add the ``modbus`` parser to ``mapperkit sim``."""
    parser = sims.add_parser(
        "modbus",
        help="Modbus TCP / RTU-over-TCP simulator",
        description="Serve the units of a profile over Modbus TCP or RTU framing over TCP.",
    )
    _arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted. Returns the exit status."""
    from .profile import load_profile
    from .server import ModbusSimulator

    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        profile = load_profile(args.profile)
    except ValueError as exc:
        print(f"mapperkit sim modbus: {exc}", file=sys.stderr)
        return 2
    sim = ModbusSimulator(profile, host=args.host, port=args.port, framing=args.framing)
    try:
        asyncio.run(_serve(sim))
    except OSError as exc:
        print(f"mapperkit sim modbus: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


async def _serve(sim: Any) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with sim:
        units = ", ".join(str(u.id) for u in sim.profile.units)
        print(
            f"modbus simulator {sim.profile.name!r} ({sim.framing} framing, units {units}) "
            f"listening on {sim.host}:{sim.port}",
            flush=True,
        )
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m simulators.modbus``: the same options without ``mapperkit``."""
    parser = argparse.ArgumentParser(prog="python -m simulators.modbus")
    _arguments(parser)
    return run(parser.parse_args(argv))
