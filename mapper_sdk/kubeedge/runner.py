"""``mapperkit run --kubeedge``: a Mapperkit mapper as a KubeEdge mapper.

One process serves one protocol (edgecore keys mappers by protocol). It:

1. serves ``DeviceMapperService`` on its own unix socket
   (``/etc/kubeedge/mapperkit-<protocol>.sock`` by default);
2. registers with edgecore (``MapperRegister`` with ``withData``) on
   ``/etc/kubeedge/dmi.sock`` and starts the devices it gets back;
3. takes device and model changes from edgecore, reports twins and states
   through DMI within the call budget, and registers again whenever edgecore
   restarts;
4. answers ``/healthz`` and ``/readyz`` for Kubernetes probes.

No MQTT broker is needed for the twin. ``--broker`` serves only the
``pushMethod.mqtt`` sinks that name no address of their own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from ..driver import Driver, Resources
from ..mqtt import MqttSettings
from ..runtime import Mapper, MapperOptions
from .catalog import DeviceCatalog
from .client import DmiClient, Registrar
from .health import HealthServer
from .server import DmiServer
from .twin import DmiTwinReporter, ReportBudget, TokenBucket
from .v1beta1 import api_pb2

__all__ = [
    "DEFAULT_DMI_SOCKET",
    "DEFAULT_HEALTH_PORT",
    "KubeEdgeMapper",
    "KubeEdgeOptions",
    "add_kubeedge_options",
    "default_mapper_socket",
    "load_driver",
    "options_from_args",
    "run_kubeedge",
]

log = logging.getLogger("mapper_sdk.kubeedge")

DEFAULT_DMI_SOCKET = "/etc/kubeedge/dmi.sock"
DEFAULT_HEALTH_PORT = 7778
API_VERSION = "v1beta1"


def default_mapper_socket(protocol: str) -> Path:
    """Where the mapper of ``protocol`` listens unless told otherwise."""
    return Path(f"/etc/kubeedge/mapperkit-{protocol}.sock")


def load_driver(protocol: str) -> type[Driver[Any, Any]]:
    """The installed driver of ``protocol``, importing no other protocol's library.

    Raises:
        DriverNotFound: naming the protocols that are installed.
        ConfigError: the driver cannot be loaded or breaks the driver contract.
    """
    from ..errors import ConfigError, DriverNotFound
    from ..registry import DRIVER_GROUP, Registry

    found = list(entry_points(group=DRIVER_GROUP, name=protocol))
    if not found:
        installed = sorted({ep.name for ep in entry_points(group=DRIVER_GROUP)})
        raise DriverNotFound(protocol, installed)
    ep = found[0]
    try:
        return Registry({protocol: ep.load()}).get_driver(protocol)
    except (ImportError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"the {protocol} driver ({ep.value}) cannot be loaded: {type(exc).__name__}: {exc}"
        ) from None


def _package_version() -> str:
    try:
        return version("mapperkit")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass(slots=True)
class KubeEdgeOptions:
    """How a KubeEdge-mode mapper runs.

    Attributes:
        protocol: the protocol served (one per process).
        dmi_socket: edgecore's DMI socket.
        mapper_socket: this mapper's socket (default
            ``/etc/kubeedge/mapperkit-<protocol>.sock``).
        name: the name registered with edgecore (default ``mapperkit-<protocol>``).
        budget: DMI calls per second and burst, shared by registration and reports.
        call_timeout: deadline of each call to edgecore, in seconds.
        poll_interval: seconds between two looks at edgecore's socket file.
        health: ``(host, port)`` of ``/healthz`` and ``/readyz``; ``None``: none.
        mapper: the runtime's options (``mqtt`` only for pushMethod sinks).
    """

    protocol: str = "modbus"
    dmi_socket: Path = Path(DEFAULT_DMI_SOCKET)
    mapper_socket: Path | None = None
    name: str | None = None
    budget: ReportBudget = field(default_factory=ReportBudget)
    call_timeout: float = 1.0
    poll_interval: float = 0.5
    health: tuple[str, int] | None = None
    mapper: MapperOptions = field(default_factory=lambda: MapperOptions(mqtt=None))

    @property
    def socket(self) -> Path:
        return self.mapper_socket or default_mapper_socket(self.protocol)


class KubeEdgeMapper:
    """A mapper that edgecore drives over DMI.

    Args:
        options: sockets, budget and runtime options.
        driver: the protocol's driver class (default: the installed one, from the
            ``mapper_sdk.drivers`` entry points; see :func:`load_driver`).
        resources: the shared-connection pool handed to drivers.

    Use :meth:`serve_forever` in a process (it stops on SIGINT/SIGTERM), or
    ``async with`` in tests and embedded use. On exit the DMI socket closes
    first, then the devices stop, then their last states go to edgecore.
    """

    def __init__(
        self,
        options: KubeEdgeOptions,
        *,
        driver: type[Driver[Any, Any]] | None = None,
        resources: Resources | None = None,
    ) -> None:
        if driver is None:
            driver = load_driver(options.protocol)
        self.options = options
        self.bucket = TokenBucket(options.budget)
        self.available = asyncio.Event()
        self.client = DmiClient(options.dmi_socket, timeout=options.call_timeout)
        self.reporter = DmiTwinReporter(
            self.client, self.bucket, available=self.available, on_unavailable=self._lost
        )
        self.mapper = Mapper(
            [],
            {options.protocol: driver},
            options.mapper,
            resources=resources,
            twin=self.reporter,
        )
        self.catalog = DeviceCatalog(self.mapper, options.protocol, driver, self.reporter)
        self.server = DmiServer(self.catalog, options.socket)
        self.info = api_pb2.MapperInfo(
            name=options.name or f"mapperkit-{options.protocol}",
            version=_package_version(),
            api_version=API_VERSION,
            protocol=options.protocol,
            address=str(options.socket.absolute()).encode(),
            state="ok",
        )
        self.registrar = Registrar(
            self.client,
            self.info,
            self.catalog.sync,
            bucket=self.bucket,
            available=self.available,
            poll_interval=options.poll_interval,
        )
        self.health = (
            HealthServer(options.health[0], options.health[1], self.not_ready)
            if options.health is not None
            else None
        )
        self._stack: contextlib.AsyncExitStack | None = None

    def _lost(self) -> None:
        self.registrar.lost()

    def not_ready(self) -> str | None:
        """Why the mapper is not ready, or ``None`` when it is."""
        if not self.server.serving:
            return f"not serving {self.options.socket}"
        if not self.available.is_set():
            return f"not registered with edgecore at {self.options.dmi_socket}"
        return None

    @property
    def ready(self) -> bool:
        return self.not_ready() is None

    def _services(self) -> list[contextlib.AbstractAsyncContextManager[Any]]:
        services: list[contextlib.AbstractAsyncContextManager[Any]] = [self.server, self.registrar]
        if self.health is not None:
            services.append(self.health)
        return services

    async def serve_forever(self) -> None:
        """Run until SIGINT/SIGTERM, then stop cleanly."""
        async with self.client, self.reporter:
            await self.mapper.serve_forever(services=self._services())

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("KubeEdgeMapper is not reentrant")
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.client)
            await stack.enter_async_context(self.reporter)
            await stack.enter_async_context(self.mapper)
            for service in self._services():
                await stack.enter_async_context(service)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)


# --------------------------------------------------------------------------- command line
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
        default=1.0,
        help="DMI calls per second to edgecore, sustained (default 1.0; edgecore allows 1 "
        "for all mappers of a node together)",
    )
    g.add_argument(
        "--dmi-burst",
        type=int,
        default=100,
        help="DMI calls allowed at once after a quiet spell (default 100, edgecore's burst)",
    )
    g.add_argument(
        "--health-host",
        default=os.environ.get("MAPPERKIT_HEALTH_HOST", "127.0.0.1"),
        help="address of /healthz and /readyz (default 127.0.0.1)",
    )
    g.add_argument(
        "--health-port",
        type=int,
        default=int(os.environ.get("MAPPERKIT_HEALTH_PORT", DEFAULT_HEALTH_PORT)),
        help=f"port of /healthz and /readyz; 0 turns them off (default {DEFAULT_HEALTH_PORT})",
    )
    with contextlib.suppress(argparse.ArgumentError):
        parser.add_argument(
            "--broker",
            default=os.environ.get("MAPPERKIT_BROKER"),
            help="MQTT broker for pushMethod.mqtt sinks without an address of their own",
        )


def _broker(args: argparse.Namespace) -> MqttSettings | None:
    url = getattr(args, "broker", None)
    if not url:
        return None
    if all(hasattr(args, a) for a in ("username", "ca_file", "mqtt_version", "client_id")):
        from ..cli import broker_settings

        settings: MqttSettings = broker_settings(args)
        return settings
    return MqttSettings.from_url(url)


def options_from_args(args: argparse.Namespace) -> KubeEdgeOptions:
    """:class:`KubeEdgeOptions` from the options of :func:`add_kubeedge_options`."""
    from ..errors import ConfigError

    try:
        budget = ReportBudget(rate=args.dmi_rate, burst=args.dmi_burst)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not 0 <= args.health_port <= 65535:
        raise ConfigError(f"--health-port must be 0..65535, got {args.health_port}")
    return KubeEdgeOptions(
        protocol=args.protocol,
        dmi_socket=Path(args.dmi_socket),
        mapper_socket=Path(args.mapper_socket) if args.mapper_socket else None,
        name=args.mapper_name,
        budget=budget,
        health=(args.health_host, args.health_port) if args.health_port else None,
        mapper=MapperOptions(mqtt=_broker(args)),
    )


async def run_kubeedge(args: argparse.Namespace) -> int:
    """Run a KubeEdge-mode mapper until SIGINT/SIGTERM; the process's exit code.

    Raises:
        ConfigError: bad options, or no driver installed for ``--protocol``.
    """
    options = options_from_args(args)
    mapper = KubeEdgeMapper(options)
    log.info(
        "event=kubeedge-starting protocol=%s dmi=%s socket=%s budget=%g/s burst=%d",
        options.protocol,
        options.dmi_socket,
        options.socket,
        options.budget.rate,
        options.budget.burst,
    )
    await mapper.serve_forever()
    return 0
