"""``mapperkit sim ble``: run simulated BLE peripherals, optionally with a mapper attached.

The virtual radio lives inside one process, so a mapper reaches the simulated
peripherals only from the same process: ``--config`` starts the mapper runtime
next to the simulator, with the radio's bleak backend injected into its
shared resources. Without ``--config`` the peripherals run, advertise and
change their values, which is useful only to check a profile.

    mapperkit sim ble --profile demo --config examples/ble/devices.yaml \\
        --broker mqtt://127.0.0.1:1883
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import Any

from mapper_sdk.driver import Resources

from .profile import builtin_profiles, load_profile
from .radio import VirtualRadio

__all__ = ["register"]

log = logging.getLogger("simulators.ble")


def register(sims: Any) -> None:
    """Add the ``ble`` parser to ``mapperkit sim``."""
    names = ", ".join(sorted(builtin_profiles()))
    parser = sims.add_parser(
        "ble",
        help="simulated BLE peripherals on a virtual radio (bumble)",
        description="Run simulated BLE peripherals on an in-process virtual radio. With --config, "
        "a mapper in the same process serves the devices in the given files through the radio.",
    )
    parser.add_argument(
        "--profile",
        default="demo",
        help=f"profile YAML file or built-in profile name ({names}); default: demo",
    )
    parser.add_argument(
        "--config",
        "-c",
        nargs="+",
        action="extend",
        metavar="FILE",
        help="Device/DeviceModel YAML to serve with a mapper in this process",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many seconds (default: run until interrupted)",
    )
    parser.add_argument(
        "--log-level", default="info", help="debug, info (default), warning or error"
    )
    from mapper_sdk.cli import add_broker_options

    add_broker_options(parser)
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from mapper_sdk.cli import setup_logging

    setup_logging(args.log_level)
    profile = load_profile(args.profile)
    mapper: Any = None
    if args.config:
        from mapper_sdk.cli import broker_settings
        from mapper_sdk.runtime import Mapper, MapperOptions

        resources = Resources()
        mapper = Mapper.from_files(
            args.config, MapperOptions(mqtt=broker_settings(args)), resources=resources
        )
    asyncio.run(_serve(profile, mapper, args.duration))
    return 0


async def _serve(profile: Any, mapper: Any, duration: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        async with VirtualRadio() as radio:
            for peripheral in await radio.add_profile(profile):
                log.info(
                    "event=peripheral-started name=%s address=%s characteristics=%d",
                    peripheral.name,
                    peripheral.address,
                    len(peripheral.chars),
                )
            if mapper is None:
                log.info(
                    "event=simulating note=%r",
                    "the virtual radio is in-process; pass --config to attach a mapper",
                )
                await _wait(stop, duration)
                return
            radio.install(mapper.resources)
            async with mapper:
                await _wait(stop, duration)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def _wait(stop: asyncio.Event, duration: float | None) -> None:
    if duration is None:
        await stop.wait()
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration)
