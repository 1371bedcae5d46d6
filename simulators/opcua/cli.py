"""``mapperkit sim opcua``: serve a profile standalone, or make test certificates.

::

    mapperkit sim opcua                                   # the built-in thermostat on 4840
    mapperkit sim opcua --profile my.yaml --port 4841
    mapperkit sim opcua --make-certs ./pki                # CA + server + client certificates
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

from .certs import generate_test_pki
from .profile import BUILTIN_PROFILES, Profile, load_profile
from .server import OpcUaSimulator

__all__ = ["register"]

DEFAULT_PROFILE = BUILTIN_PROFILES / "thermostat.yaml"


def register(sims: Any) -> None:
    """Add the ``opcua`` parser to ``mapperkit sim``'s subcommands."""
    p = sims.add_parser(
        "opcua",
        help="run the OPC-UA simulator (asyncua server)",
        description="Serve a profile of OPC-UA variables (constant, counter, sine, random walk, "
        "writable setpoints) until interrupted.",
    )
    p.add_argument(
        "--profile",
        default=DEFAULT_PROFILE.stem,
        metavar="FILE|NAME",
        help=f"profile YAML, or a built-in profile's name (default: {DEFAULT_PROFILE.stem})",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=4840, help="TCP port (default 4840; 0: any free)")
    p.add_argument(
        "--make-certs",
        metavar="DIR",
        help="write a throwaway CA, server and client certificates to DIR and exit",
    )
    p.add_argument("--log-level", default="warning", help="logging level (default warning)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        stream=sys.stderr,
    )
    if args.make_certs:
        pki = generate_test_pki(args.make_certs)
        for label, path in (
            ("CA certificate", pki.ca),
            ("server certificate", pki.server_cert),
            ("server private key", pki.server_key),
            ("client certificate", pki.client_cert),
            ("client private key", pki.client_key),
            ("untrusted client certificate", pki.rogue_cert),
            ("untrusted client key", pki.rogue_key),
        ):
            print(f"{label:<30} {path}")
        print(f"server application URI: {pki.server_uri}; client: {pki.client_uri}")
        return 0
    try:
        profile = load_profile(args.profile)
    except ValueError as exc:
        print(f"mapperkit sim opcua: {exc}", file=sys.stderr)
        return 2
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(profile, args.host, args.port))
    except OSError as exc:
        print(
            f"mapperkit sim opcua: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    return 0


async def _serve(profile: Profile, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with OpcUaSimulator(profile, host=host, port=port) as sim:
        print(f"serving profile {profile.name} at {sim.url}", flush=True)
        if len(profile.variables) <= 50:
            for var in profile.variables:
                access = "read-write" if var.writable else "read-only"
                print(
                    f"  {var.name:<20} {sim.node_id(var.name):<40} {var.type.value:<14} "
                    f"{var.behaviour.value:<10} {access}",
                    flush=True,
                )
        else:
            print(f"  {len(profile.variables)} variables", flush=True)
        await stop.wait()
