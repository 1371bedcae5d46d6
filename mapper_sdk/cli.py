"""The ``mapperkit`` command.

Subcommands come from the ``mapperkit.commands`` entry-point group, so packages
add their own (``twin`` from :mod:`twin`, ``sim`` from :mod:`simulators`) and
``mapper_sdk`` never imports them. An entry point names a function that takes
the ``argparse`` subparsers object and adds one parser whose ``func`` default
is ``func(args) -> int``::

    def command(sub: Subparsers) -> None:
        p = sub.add_parser("hello", help="say hello")
        p.set_defaults(func=lambda args: print("hello") or 0)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from .errors import ConfigError, MapperError

__all__ = ["Subparsers", "main"]

COMMAND_GROUP = "mapperkit.commands"
Subparsers = Any  # argparse._SubParsersAction has no public name
Handler = Callable[[argparse.Namespace], int]
log = logging.getLogger("mapperkit")


def setup_logging(level: str) -> None:
    """key=value logging on stderr, the format every Mapperkit process uses."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        stream=sys.stderr,
    )


def add_broker_options(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """The MQTT options shared by every command that talks to a broker."""
    g = parser.add_argument_group("MQTT broker")
    g.add_argument(
        "--broker",
        default=os.environ.get("MAPPERKIT_BROKER", "mqtt://127.0.0.1:1883"),
        required=required,
        help="broker URL, mqtt://host:port or mqtts://host:port "
        "(default: $MAPPERKIT_BROKER or mqtt://127.0.0.1:1883)",
    )
    g.add_argument(
        "--username",
        default=os.environ.get("MAPPERKIT_MQTT_USERNAME"),
        help="MQTT user name (default: $MAPPERKIT_MQTT_USERNAME)",
    )
    g.add_argument(
        "--password-file",
        help="file holding the MQTT password (or set $MAPPERKIT_MQTT_PASSWORD)",
    )
    g.add_argument("--ca-file", help="CA certificate for mqtts://")
    g.add_argument("--cert-file", help="client certificate for mqtts://")
    g.add_argument("--key-file", help="client private key for mqtts://")
    g.add_argument(
        "--mqtt-version", choices=["3.1.1", "5"], default="3.1.1", help="MQTT protocol version"
    )
    g.add_argument("--client-id", help="MQTT client id (default: generated)")


def broker_settings(args: argparse.Namespace) -> Any:
    """Build :class:`~mapper_sdk.mqtt.MqttSettings` from :func:`add_broker_options`."""
    from .mqtt import MqttSettings

    password = os.environ.get("MAPPERKIT_MQTT_PASSWORD")
    if getattr(args, "password_file", None):
        try:
            with open(args.password_file, encoding="utf-8") as fh:
                password = fh.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the password file: {exc.strerror}") from None
    return MqttSettings.from_url(
        args.broker,
        username=args.username,
        password=password,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        protocol=args.mqtt_version,
        client_id=args.client_id,
    )


# --------------------------------------------------------------------------- drivers
def drivers_command(sub: Subparsers) -> None:
    p = sub.add_parser("drivers", help="list the installed protocol drivers")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_drivers)


def _drivers(args: argparse.Namespace) -> int:
    from .registry import Registry

    infos = Registry().infos()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "protocol": i.protocol,
                        "distribution": i.distribution,
                        "version": i.version,
                        "target": i.target,
                        "ok": i.ok,
                        "error": i.error,
                        "missing": i.missing,
                        "capabilities": sorted(i.driver.capabilities) if i.driver else [],
                    }
                    for i in infos
                ],
                indent=2,
            )
        )
        return 0
    if not infos:
        print("no drivers installed (entry-point group mapper_sdk.drivers is empty)")
        return 0
    rows = [("PROTOCOL", "PACKAGE", "VERSION", "CAPABILITIES", "STATUS")]
    for i in infos:
        caps = ",".join(sorted(i.driver.capabilities)) if i.driver else "-"
        rows.append(
            (
                i.protocol,
                i.distribution or "-",
                i.version or "-",
                caps or "-",
                "ok"
                if i.ok
                else (f"not installed: {i.error}" if i.missing else f"broken: {i.error}"),
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4])
    return 0


# --------------------------------------------------------------------------- run
def run_command(sub: Subparsers) -> None:
    p = sub.add_parser(
        "run",
        help="run a mapper for the devices in the given files",
        description="Serve every device in the files whose protocol has an installed driver: "
        "collect and report cycles, desired writes from the twin, state reports.",
    )
    p.add_argument(
        "--config",
        "-c",
        nargs="+",
        action="extend",
        metavar="FILE",
        help="Device/DeviceModel YAML (KubeEdge v1beta1 or native form); repeatable "
        "(not with --kubeedge, where edgecore hands over the devices)",
    )
    add_broker_options(p)
    p.add_argument(
        "--outbox",
        default=None,
        help="SQLite file for reports kept while the broker is away "
        "(default: in memory, lost on restart)",
    )
    p.add_argument(
        "--outbox-max",
        type=int,
        default=100_000,
        help="most messages kept while the broker is away (default 100000)",
    )
    p.add_argument(
        "--outbox-full",
        choices=["drop-oldest", "drop-newest"],
        default="drop-oldest",
        help="what to drop when the outbox is full (counted in metrics)",
    )
    p.add_argument("--log-level", default="info", help="debug, info (default), warning or error")
    from .api import add_api_options
    from .kubeedge.options import add_kubeedge_options

    add_api_options(p)
    add_kubeedge_options(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from .api import api_from_args
    from .runtime import Mapper, MapperOptions

    setup_logging(args.log_level)
    if args.kubeedge:
        if args.config:
            raise ConfigError("--kubeedge takes its devices from edgecore; drop --config")
        from .kubeedge.runner import run_kubeedge

        return asyncio.run(run_kubeedge(args))
    if not args.config:
        raise ConfigError("give the device files with --config FILE... (or run with --kubeedge)")
    options = MapperOptions(
        mqtt=broker_settings(args),
        outbox_path=args.outbox,
        outbox_max=args.outbox_max,
        outbox_drop_oldest=args.outbox_full == "drop-oldest",
    )
    mapper = Mapper.from_files(args.config, options)
    api = api_from_args(mapper, args)
    asyncio.run(mapper.serve_forever(services=[api] if api is not None else []))
    return 0


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mapperkit",
        description="Mapperkit: device-protocol mappers and a device twin for edge nodes.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        try:
            register = ep.load()
            register(sub)
        except Exception as exc:  # noqa: BLE001 - one broken command must not hide the others
            log.warning("command %s cannot be loaded: %s: %s", ep.name, type(exc).__name__, exc)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # A command that hands its arguments to a parser of its own (``sim``) takes them.
        if not getattr(args, "pass_through", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.extra = extra
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except ConfigError as exc:
        print(f"mapperkit: configuration error: {exc}", file=sys.stderr)
        return 2
    except MapperError as exc:
        print(f"mapperkit: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`mapperkit drivers --json | head`): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
