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
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from ..driver import Driver, Resources
from ..mqtt import MqttSettings
from ..runtime import Mapper, MapperOptions
from . import _deps  # noqa: F401 - before .catalog: a clear error without the extra
from .catalog import DeviceCatalog
from .client import DmiClient, Registrar
from .health import HealthServer
from .options import (
    DEFAULT_DMI_SOCKET,
    DEFAULT_HEALTH_PORT,
    add_kubeedge_options,
    default_mapper_socket,
)
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

API_VERSION = "v1beta1"


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

    async def serve_forever(
        self, services: Sequence[contextlib.AbstractAsyncContextManager[Any]] = ()
    ) -> None:
        """Run until SIGINT/SIGTERM, then stop cleanly.

        ``services`` (the management API ...) run beside the DMI server.
        """
        async with self.client, self.reporter:
            await self.mapper.serve_forever(services=[*self._services(), *services])

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
    services: list[contextlib.AbstractAsyncContextManager[Any]] = []
    if hasattr(args, "http_port"):
        # `mapperkit run` offers the management API (REST, /metrics) in this mode too.
        from ..api import api_from_args

        api = api_from_args(mapper.mapper, args)
        if api is not None:
            services.append(api)
    log.info(
        "event=kubeedge-starting protocol=%s dmi=%s socket=%s budget=%g/s burst=%d",
        options.protocol,
        options.dmi_socket,
        options.socket,
        options.budget.rate,
        options.budget.burst,
    )
    await mapper.serve_forever(services)
    return 0
