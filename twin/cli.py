"""``mapperkit twin ...``: run the twin service and talk to it.

Subcommands: ``serve``, ``get``, ``set``, ``watch``, ``query``, ``devices``.
Each client command prints a readable table by default and JSON with
``--json`` (``watch --json`` prints one JSON object per line).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from mapper_sdk.cli import Subparsers, add_broker_options, broker_settings, setup_logging
from mapper_sdk.errors import ConfigError

from .client import TwinClient, TwinEvent, TwinState, split_device
from .document import (
    DEFAULT_MAX_DEVICES,
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_MAX_PROPERTIES,
    DEFAULT_MAX_RESULT_BYTES,
    DEFAULT_RATE_BURST,
    DEFAULT_RATE_LIMIT,
    Options,
)
from .service import ServiceConfig, TwinService

__all__ = ["command", "serve_config"]

log = logging.getLogger("mapperkit.twin")


def command(sub: Subparsers) -> None:
    """Add ``twin`` and its subcommands to the ``mapperkit`` parser."""
    parser = sub.add_parser(
        "twin",
        help="the device twin service and its client",
        description="Run the device twin service (KubeEdge's $hw/events twin protocol over MQTT) "
        "or query and change twins through it.",
    )
    cmds = parser.add_subparsers(dest="twin_command", metavar="COMMAND")
    parser.set_defaults(func=lambda args: _usage(parser))

    p = cmds.add_parser(
        "serve",
        help="run the twin service",
        description="Serve the twins of the devices in the given files over MQTT, stored "
        "durably in an SQLite file. SIGHUP reloads the device files.",
    )
    add_broker_options(p)
    p.add_argument("--db", required=True, metavar="PATH", help="SQLite store (created if absent)")
    p.add_argument(
        "--devices",
        "-c",
        nargs="+",
        action="extend",
        required=True,
        metavar="FILE",
        help="Device/DeviceModel YAML (KubeEdge v1beta1 or native form); repeatable",
    )
    p.add_argument(
        "--durability",
        choices=["process", "power"],
        default="process",
        help="process: survive a crash of the service (default); power: also a power cut "
        "(an fsync per batch of requests)",
    )
    p.add_argument(
        "--kubeedge-strict",
        action="store_true",
        help="accept only KubeEdge's value character set ([a-zA-Z0-9-_.,:/@#]{1,512})",
    )
    p.add_argument(
        "--allow-dynamic-twins",
        action="store_true",
        help="let updates create optional twins for undeclared properties (as KubeEdge does)",
    )
    limits = p.add_argument_group("Limits that protect the node (see docs/twin.md)")
    limits.add_argument(
        "--max-payload",
        type=_positive_int,
        default=DEFAULT_MAX_PAYLOAD,
        metavar="BYTES",
        help=f"requests larger than this get 413 (default {DEFAULT_MAX_PAYLOAD})",
    )
    limits.add_argument(
        "--max-properties",
        type=_positive_int,
        default=DEFAULT_MAX_PROPERTIES,
        metavar="N",
        help="most twins per device: a Device declaring more is a configuration error, an "
        f"update creating dynamic twins beyond it gets 413 (default {DEFAULT_MAX_PROPERTIES})",
    )
    limits.add_argument(
        "--max-devices",
        type=_positive_int,
        default=DEFAULT_MAX_DEVICES,
        metavar="N",
        help="most devices served: more is a configuration error at start, and a reload "
        f"keeps the devices it had (default {DEFAULT_MAX_DEVICES})",
    )
    limits.add_argument(
        "--rate-limit",
        type=_rate,
        default=DEFAULT_RATE_LIMIT,
        metavar="PER_SECOND",
        help="requests per second per device (updates, gets and state updates together); "
        f"beyond it 429; 0 turns it off (default {DEFAULT_RATE_LIMIT:g})",
    )
    limits.add_argument(
        "--rate-burst",
        type=_positive_int,
        default=DEFAULT_RATE_BURST,
        metavar="N",
        help="requests a device may make at once above --rate-limit, e.g. a mapper "
        f"replaying its outbox after an outage (default {DEFAULT_RATE_BURST})",
    )
    limits.add_argument(
        "--max-result-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_RESULT_BYTES,
        metavar="BYTES",
        help="most bytes in a query answer; a longer page ends early with a cursor "
        f"(default {DEFAULT_MAX_RESULT_BYTES})",
    )
    p.add_argument(
        "--node",
        default=None,
        help="node of devices whose spec has no nodeName, for membership (default: the hostname)",
    )
    p.add_argument(
        "--clean-session",
        action="store_true",
        help="connect with a clean session; by default the twin keeps a persistent session "
        "(client id mapperkit-twin-<node>) so requests published while it is away or the "
        "broker restarts are delivered when it is back (the broker needs persistence on)",
    )
    p.add_argument("--log-level", default="info", help="debug, info (default), warning or error")
    p.set_defaults(func=_serve)

    p = cmds.add_parser("get", help="show a device's twin")
    p.add_argument("device", help="namespace/name or name (namespace default)")
    _client_options(p)
    p.set_defaults(func=lambda a: _run_client(a, _get))

    p = cmds.add_parser(
        "set",
        help="set desired values",
        description="Set desired values: `mapperkit twin set boiler-1 setpoint=21.5 mode=eco`.",
    )
    p.add_argument("device", help="namespace/name or name")
    p.add_argument("values", nargs="*", metavar="PROP=VALUE", help="desired values (wire text)")
    p.add_argument(
        "--clear",
        action="append",
        default=[],
        metavar="PROP",
        help="clear the desired value of PROP; repeatable",
    )
    p.add_argument(
        "--version",
        type=int,
        default=None,
        help="apply only if the twin is at this version (else 409)",
    )
    _client_options(p)
    p.set_defaults(func=lambda a: _run_client(a, _set))

    p = cmds.add_parser("watch", help="print deltas and documents as they happen")
    p.add_argument("device", nargs="?", help="namespace/name or name (default: every device)")
    p.add_argument("--deltas-only", action="store_true", help="deltas, not documents")
    p.add_argument("--count", type=_positive_int, default=None, help="exit after N events")
    _client_options(p)
    p.set_defaults(func=lambda a: _run_client(a, _watch))

    p = cmds.add_parser(
        "query",
        help="query twins",
        description='Query twins: mapperkit twin query "reported.temperature > 30 AND '
        "state = 'online'\" --order-by 'reported.temperature DESC'",
    )
    p.add_argument("where", nargs="?", default="", help="WHERE expression (default: every device)")
    p.add_argument("--select", help="comma-separated paths, e.g. id,reported.temperature")
    p.add_argument("--order-by", help="e.g. 'reported.temperature DESC, id'")
    p.add_argument("--group-by", help="one path; prints counts per value")
    p.add_argument("--limit", type=int, default=None, help="page size (default 100, at most 1000)")
    p.add_argument("--cursor", help="cursor of the next page, from a previous --json answer")
    p.add_argument("--all", action="store_true", help="fetch every page")
    _client_options(p)
    p.set_defaults(func=lambda a: _run_client(a, _query))

    p = cmds.add_parser("devices", help="list the devices the twin serves")
    p.add_argument("--node", help="only devices of this node")
    _client_options(p)
    p.set_defaults(func=lambda a: _run_client(a, _devices))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _client_options(p: argparse.ArgumentParser) -> None:
    add_broker_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the twin (default 5)"
    )


# --------------------------------------------------------------------------- serve
def serve_config(args: argparse.Namespace) -> ServiceConfig:
    """The :class:`ServiceConfig` that ``mapperkit twin serve`` runs with ``args``."""
    node = args.node or socket.gethostname()
    mqtt = broker_settings(args)
    if not getattr(args, "clean_session", False):
        # A persistent session: the broker keeps the twin's subscriptions and queues
        # what mappers and apps publish while the twin (or the broker) restarts.
        mqtt = dataclasses.replace(
            mqtt, client_id=mqtt.client_id or f"mapperkit-twin-{node}", clean_session=False
        )
    return ServiceConfig(
        mqtt=mqtt,
        node=node,
        db_path=args.db,
        device_files=tuple(args.devices),
        durability=args.durability,
        options=Options(
            kubeedge_strict=args.kubeedge_strict,
            allow_dynamic_twins=args.allow_dynamic_twins,
            max_payload=args.max_payload,
            max_properties=args.max_properties,
            max_devices=args.max_devices,
            rate_limit=args.rate_limit,
            rate_burst=args.rate_burst,
            max_result_bytes=args.max_result_bytes,
        ),
    )


def _serve(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    asyncio.run(_serve_async(serve_config(args)))
    return 0


async def _serve_async(config: ServiceConfig) -> None:
    service = TwinService(config)
    async with service:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, service.stop)
        loop.add_signal_handler(signal.SIGINT, service.stop)
        loop.add_signal_handler(signal.SIGHUP, service.request_reload)
        ready = asyncio.create_task(service.wait_ready(), name="twin.ready")
        serving = asyncio.create_task(service.serve_forever(), name="twin.serve")
        try:
            done, _ = await asyncio.wait({ready, serving}, return_when=asyncio.FIRST_COMPLETED)
            if ready in done:
                log.info(
                    "event=ready broker=%s devices=%d",
                    config.mqtt.url,
                    len(service.core.devices),
                )
                await serving
        finally:
            for task in (ready, serving):
                task.cancel()
            await asyncio.gather(ready, serving, return_exceptions=True)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
    log.info("event=stopped")


# --------------------------------------------------------------------------- clients
ClientFn = Callable[[TwinClient, argparse.Namespace], Awaitable[int]]


def _run_client(args: argparse.Namespace, fn: ClientFn) -> int:
    settings = broker_settings(args)
    if getattr(args, "device", None):
        try:
            split_device(args.device)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    async def main() -> int:
        async with TwinClient(settings, timeout=args.timeout) as client:
            return await fn(client, args)

    return asyncio.run(main())


def _table(rows: Sequence[Sequence[str]]) -> str:
    if not rows:
        return ""
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows
    )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _side(twin: dict[str, Any], side: str) -> str:
    raw = twin.get(side)
    return _cell(raw.get("value")) if isinstance(raw, dict) else "-"


def _print_state(state: TwinState) -> None:
    print(f"{state.device}  version {state.version}  state {state.state}")
    rows = [("PROPERTY", "TYPE", "DESIRED", "REPORTED", "DELTA", "ACK", "LAST SEEN")]
    for name, twin in sorted(state.twins.items()):
        ack = twin.get("ack")
        ack_text = (
            f"{ack.get('status')}@{ack.get('expected_version')}"
            + (f" ({ack.get('reason')})" if ack.get("reason") else "")
            if isinstance(ack, dict)
            else "-"
        )
        desired, reported = state.desired(name), state.reported(name)
        delta = desired is not None and desired != reported
        seen = twin.get("last_seen")
        rows.append(
            (
                name,
                str((twin.get("metadata") or {}).get("type", "")),
                _side(twin, "expected"),
                _side(twin, "actual"),
                "yes" if delta else "",
                ack_text,
                _clock(seen) if isinstance(seen, int) else "-",
            )
        )
    print(_table(rows))


def _clock(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))


async def _get(client: TwinClient, args: argparse.Namespace) -> int:
    state = await client.get(args.device)
    if args.json:
        print(
            json.dumps(
                {
                    "device": state.device,
                    "version": state.version,
                    "state": state.state,
                    "twin": state.twins,
                },
                indent=2,
            )
        )
    else:
        _print_state(state)
    return 0


async def _set(client: TwinClient, args: argparse.Namespace) -> int:
    values: dict[str, str | None] = {}
    for item in args.values:
        prop, sep, value = item.partition("=")
        if not sep or not prop:
            raise ConfigError(f"expected PROP=VALUE, got {item!r}")
        values[prop] = value
    for prop in args.clear:
        values[prop] = None
    if not values:
        raise ConfigError("nothing to set: give PROP=VALUE or --clear PROP")
    result = await client.set_desired(args.device, values, version=args.version)
    if args.json:
        print(
            json.dumps(
                {
                    "device": result.device,
                    "event_id": result.event_id,
                    "version": result.version,
                    "twin": result.twins,
                },
                indent=2,
            )
        )
    elif result.changed:
        print(
            f"{result.device}: version {result.version}, changed {', '.join(sorted(result.twins))}"
        )
    else:
        print(f"{result.device}: version {result.version}, nothing changed")
    return 0


def _event_line(event: TwinEvent) -> str:
    stamp = time.strftime("%H:%M:%S")
    if event.kind == "delta":
        pending = " ".join(f"{k}={v}" for k, v in sorted(event.delta.items()))
        return f"{stamp}  delta     {event.device}  v{event.version}  {pending}"
    changes = []
    for name, doc in sorted((event.body.get("twin") or {}).items()):
        last, current = (doc or {}).get("last"), (doc or {}).get("current")
        if current is None:
            changes.append(f"{name} deleted")
            continue
        parts = []
        for side, label in (("expected", "desired"), ("actual", "reported")):
            new = _side(current, side)
            old = _side(last, side) if isinstance(last, dict) else "-"
            if new != old:
                parts.append(f"{label} {old}->{new}")
        if isinstance(current.get("ack"), dict) and (
            not isinstance(last, dict) or last.get("ack") != current.get("ack")
        ):
            parts.append(f"ack {current['ack'].get('status')}")
        changes.append(f"{name}: {', '.join(parts) or 'changed'}")
    return f"{stamp}  document  {event.device}  v{event.version}  {'; '.join(changes)}"


async def _watch(client: TwinClient, args: argparse.Namespace) -> int:
    kinds = ("delta",) if args.deltas_only else ("delta", "document")
    seen = 0
    async with client.watch(args.device, kinds=kinds) as events:
        print("watching; Ctrl-C to stop", file=sys.stderr, flush=True)
        async for event in events:
            if args.json:
                print(
                    json.dumps(
                        {
                            "kind": event.kind,
                            "device": event.device,
                            "version": event.version,
                            **event.body,
                        }
                    ),
                    flush=True,
                )
            else:
                print(_event_line(event), flush=True)
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    return 0


async def _query(client: TwinClient, args: argparse.Namespace) -> int:
    select = [s.strip() for s in args.select.split(",")] if args.select else None
    items: list[dict[str, Any]] = []
    cursor = args.cursor
    while True:
        page = await client.query(
            args.where,
            select=select,
            order_by=args.order_by,
            limit=args.limit,
            cursor=cursor,
            group_by=args.group_by,
        )
        items.extend(page.items)
        cursor = page.cursor
        if not args.all or cursor is None:
            break
    if args.json:
        print(json.dumps({"items": items, "count": len(items), "cursor": cursor}, indent=2))
        return 0
    rows: list[tuple[str, ...]]
    if args.group_by:
        rows = [(args.group_by.upper(), "COUNT")]
        rows += [(_cell(i.get(args.group_by)), str(i.get("count"))) for i in items]
    elif select:
        rows = [tuple(s.upper() for s in select)]
        rows += [tuple(_cell(i.get(s)) for s in select) for i in items]
    else:
        rows = [("ID", "MODEL", "NODE", "STATE", "VERSION", "REPORTED", "DESIRED")]
        for i in items:
            twins = i.get("twin") or {}
            rows.append(
                (
                    str(i.get("id")),
                    _cell(i.get("model")),
                    _cell(i.get("node")),
                    _cell(i.get("state")),
                    _cell(i.get("version")),
                    " ".join(
                        f"{n}={t['actual']['value']}"
                        for n, t in sorted(twins.items())
                        if isinstance(t.get("actual"), dict)
                    ),
                    " ".join(
                        f"{n}={t['expected']['value']}"
                        for n, t in sorted(twins.items())
                        if isinstance(t.get("expected"), dict)
                    ),
                )
            )
    print(_table(rows))
    if cursor is not None:
        print(f"(more: --cursor {cursor})", file=sys.stderr)
    return 0


async def _devices(client: TwinClient, args: argparse.Namespace) -> int:
    where = ""
    if args.node:
        where = "node = '" + args.node.replace("'", "''") + "'"
    select = ["id", "model", "node", "state", "version", "has_delta", "last_online"]
    items = [item async for item in client.query_all(where, select=select)]
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    rows = [("ID", "MODEL", "NODE", "STATE", "VERSION", "DELTA", "LAST ONLINE")]
    rows += [
        (
            str(i["id"]),
            _cell(i["model"]),
            _cell(i["node"]),
            _cell(i["state"]),
            _cell(i["version"]),
            "yes" if i["has_delta"] else "",
            _cell(i["last_online"]),
        )
        for i in items
    ]
    print(_table(rows))
    return 0
