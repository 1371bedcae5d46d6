"""The mapper's HTTP server: Prometheus metrics, probes, and KubeEdge's mapper REST API.

Routes (all ``GET``):

=============================================================  ==================================
``/metrics``                                                   Prometheus text format
``/healthz``                                                   liveness: the process answers
``/readyz``                                                    readiness: mapper running, broker up
``/api/v1/ping``                                               KubeEdge: the API answers
``/api/v1/device/{ns}/{name}/{property}``                      KubeEdge: read a property now
``/api/v1/devicemethod/{ns}/{name}``                           KubeEdge: the device's methods
``/api/v1/devicemethod/{ns}/{name}/{method}/{property}/{data}``  KubeEdge: write a value
``/api/v1/meta/model/{ns}/{name}``                             KubeEdge: the device's model
=============================================================  ==================================

Responses of ``/api/v1`` have KubeEdge's shapes (``apiVersion``, ``statusCode``,
``timeStamp`` and ``Message``/``Data``/the model). Errors are JSON of the same
shape with ``Message`` saying what went wrong: 400 for a value the model or
the device refuses, 401 without the bearer token, 404 for an unknown device,
property or method, 503 when the device cannot be reached.

With a token, every route but ``/healthz`` and ``/readyz`` needs
``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hmac
import json
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from .errors import ConfigError, DeviceUnavailable, MapperError, WriteRejected

if TYPE_CHECKING:
    from aiohttp import web

    from .model import DeviceSpec, PropertySpec
    from .runtime.mapper import Mapper
    from .runtime.worker import DeviceWorker

__all__ = ["API_VERSION", "ApiServer", "add_api_options", "api_from_args"]

log = logging.getLogger("mapper_sdk.api")

API_VERSION = "v1"
_OPEN = frozenset({"/healthz", "/readyz"})
Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]


class ApiError(Exception):
    """Ends a request with ``status`` and a JSON ``Message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _base(status: int) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "statusCode": status,
        "timeStamp": dt.datetime.now(dt.UTC).astimezone().isoformat(timespec="seconds"),
    }


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    from aiohttp import web

    return web.Response(
        text=json.dumps(body, ensure_ascii=False), status=status, content_type="application/json"
    )


def _number_text(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class ApiServer:
    """The HTTP server of a mapper, as an async context manager.

    Args:
        mapper: the running mapper it serves.
        host: address to listen on (default loopback only).
        port: TCP port; 0 picks a free one (see :attr:`port` once entered).
        token: when set, requests need ``Authorization: Bearer <token>``.
        read_timeout: seconds allowed for a live read or write through the API.
        ssl_context: serve HTTPS with this context (see :func:`server_tls`).
    """

    def __init__(
        self,
        mapper: Mapper,
        host: str = "127.0.0.1",
        port: int = 7777,
        token: str | None = None,
        *,
        read_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.mapper = mapper
        self.ssl_context = ssl_context
        self.host = host
        self.port = port
        self.token = token
        self.read_timeout = read_timeout
        from .metrics import mapper_registry

        self.registry = mapper_registry(mapper)
        self._runner: web.AppRunner | None = None
        self.app = self._build()

    # ---- lifecycle -----------------------------------------------------------------
    async def __aenter__(self) -> Self:
        from aiohttp import web

        if self._runner is not None:
            raise RuntimeError("ApiServer is not reentrant")
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"the HTTP API cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        self._runner = runner
        addresses = runner.addresses
        if addresses:
            self.port = int(addresses[0][1])
        log.info(
            "event=api-started address=http://%s:%d auth=%s",
            self.host,
            self.port,
            "token" if self.token else "none",
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---- app -------------------------------------------------------------------------
    def _build(self) -> web.Application:
        from aiohttp import web

        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await self._middleware(request, handler)

        app = web.Application(middlewares=[guard])
        base = f"/api/{API_VERSION}"
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get(f"{base}/ping", self.ping)
        app.router.add_get(f"{base}/device/{{ns}}/{{name}}/{{property}}", self.device_read)
        app.router.add_get(f"{base}/devicemethod/{{ns}}/{{name}}", self.device_methods)
        app.router.add_get(
            f"{base}/devicemethod/{{ns}}/{{name}}/{{method}}/{{property}}/{{data}}",
            self.device_write,
        )
        app.router.add_get(f"{base}/meta/model/{{ns}}/{{name}}", self.meta_model)
        return app

    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        from aiohttp import web

        try:
            if self.token is not None and request.path not in _OPEN:
                self._check_token(request)
            return await handler(request)
        except ApiError as err:
            return _json({**_base(err.status), "Message": err.message}, err.status)
        except web.HTTPException as exc:
            if exc.status >= 400:
                return _json({**_base(exc.status), "Message": exc.reason}, exc.status)
            raise

    def _check_token(self, request: web.Request) -> None:
        assert self.token is not None
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        ):
            raise ApiError(401, "a valid bearer token is required (Authorization: Bearer ...)")

    # ---- lookups -------------------------------------------------------------------------
    def _worker(self, request: web.Request) -> DeviceWorker:
        ns, name = request.match_info["ns"], request.match_info["name"]
        worker = self.mapper.workers.get(f"{ns}/{name}")
        if worker is None:
            raise ApiError(404, f"device {ns}/{name} is not served by this mapper")
        return worker

    @staticmethod
    def _property(worker: DeviceWorker, name: str) -> PropertySpec[Any]:
        try:
            return worker.property(name)
        except KeyError:
            raise ApiError(404, f"device {worker.id} has no property {name!r}") from None

    # ---- probes and metrics -------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        mapper = self.mapper
        checks: dict[str, str] = {}
        checks["mapper"] = "running" if mapper.twin is not None else "not running"
        if mapper.link is not None:
            checks["broker"] = "connected" if mapper.link.connected else "disconnected"
        ready = checks["mapper"] == "running" and checks.get("broker", "connected") == "connected"
        return _json(
            {"status": "ready" if ready else "not ready", "checks": checks},
            200 if ready else 503,
        )

    async def metrics(self, request: web.Request) -> web.Response:
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # ---- KubeEdge's API -----------------------------------------------------------------
    async def ping(self, request: web.Request) -> web.Response:
        return _json(
            {
                **_base(200),
                "Message": f"This is {API_VERSION} API, the server is running normally.",
            }
        )

    def _data(
        self, spec: DeviceSpec[Any, Any], prop: PropertySpec[Any], value: Any, ts: int
    ) -> dict[str, Any]:
        from .codec import format_text

        return {
            "DeviceName": spec.name,
            "PropertyName": prop.name,
            "Namespace": spec.namespace,
            "Value": format_text(value, prop.type),
            "Type": prop.type.value,
            "TimeStamp": ts,
        }

    async def device_read(self, request: web.Request) -> web.Response:
        worker = self._worker(request)
        prop = self._property(worker, request.match_info["property"])
        try:
            async with asyncio.timeout(self.read_timeout):
                reading = await self.mapper.read(worker.id, prop.name)
        except (DeviceUnavailable, TimeoutError) as exc:
            raise ApiError(503, f"device {worker.id} cannot be read now: {_reason(exc)}") from None
        except MapperError as exc:
            raise ApiError(503, f"reading {prop.name} of {worker.id} failed: {exc}") from None
        if not reading.ok or reading.value is None:
            raise ApiError(
                503, f"reading {prop.name} of {worker.id} failed: {reading.error or 'no value'}"
            )
        ts = reading.source_timestamp or reading.timestamp
        return _json({**_base(200), "Data": self._data(worker.spec, prop, reading.value, ts)})

    async def device_methods(self, request: web.Request) -> web.Response:
        worker = self._worker(request)
        spec = worker.spec
        types = {p.name: p.type.value for p in spec.properties}
        base = f"/api/{API_VERSION}/devicemethod/{spec.namespace}/{spec.name}"
        methods = [
            {
                "Name": m.name,
                "Path": f"{base}/{m.name}/{{propertyName}}/{{data}}",
                "Parameters": [
                    {"PropertyName": p, "ValueType": types[p]} for p in m.property_names
                ],
            }
            for m in spec.methods
        ]
        return _json({**_base(200), "Data": {"Methods": methods}})

    async def device_write(self, request: web.Request) -> web.Response:
        worker = self._worker(request)
        spec = worker.spec
        method_name = request.match_info["method"]
        method = next((m for m in spec.methods if m.name == method_name), None)
        if method is None:
            raise ApiError(404, f"device {worker.id} has no method {method_name!r}")
        prop = self._property(worker, request.match_info["property"])
        if prop.name not in method.property_names:
            raise ApiError(
                404, f"method {method_name!r} of device {worker.id} has no property {prop.name!r}"
            )
        data = request.match_info["data"]
        try:
            async with asyncio.timeout(self.read_timeout):
                echoed = await self.mapper.write(worker.id, prop.name, data)
        except WriteRejected as exc:
            raise ApiError(400, f"write of {prop.name} refused: {exc.reason}") from None
        except (DeviceUnavailable, TimeoutError) as exc:
            raise ApiError(
                503, f"device {worker.id} cannot be written now: {_reason(exc)}"
            ) from None
        except MapperError as exc:
            raise ApiError(503, f"write of {prop.name} to {worker.id} failed: {exc}") from None
        body: dict[str, Any] = {
            **_base(200),
            "Message": f"Write data {data} to device {worker.id} successfully.",
        }
        if echoed is not None and echoed.ok and echoed.value is not None:
            ts = echoed.source_timestamp or echoed.timestamp
            body["Data"] = self._data(spec, prop, echoed.value, ts)
        return _json(body)

    async def meta_model(self, request: web.Request) -> web.Response:
        worker = self._worker(request)
        spec = worker.spec
        properties = []
        for p in spec.properties:
            entry = {
                "name": p.name,
                "dataType": p.type.value,
                "description": p.description or "",
                "accessMode": p.access_mode.value,
                "minimum": _number_text(p.minimum),
                "maximum": _number_text(p.maximum),
                "unit": p.unit or "",
            }
            properties.append({k: v for k, v in entry.items() if v != ""})
        model = {
            "id": f"{spec.namespace}/{spec.model}",
            "name": spec.model,
            "namespace": spec.namespace,
            "properties": properties,
        }
        return _json({**_base(200), **model})


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------------------- CLI wiring
def add_api_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--http-host``, ``--http-port`` and ``--http-token-file`` to ``mapperkit run``."""
    g = parser.add_argument_group("HTTP API and metrics")
    g.add_argument(
        "--http-host",
        default="127.0.0.1",
        help="address of the HTTP API, /metrics and probes (default: 127.0.0.1)",
    )
    g.add_argument(
        "--http-port",
        type=int,
        default=7777,
        help="port of the HTTP API (default: 7777; 0 turns the server off)",
    )
    g.add_argument(
        "--http-token-file",
        help="file holding a bearer token the API requires (or set $MAPPERKIT_HTTP_TOKEN)",
    )
    g.add_argument("--http-cert-file", help="serve HTTPS with this certificate (PEM)")
    g.add_argument("--http-key-file", help="the private key of --http-cert-file (PEM)")


def server_tls(cert_file: str | None, key_file: str | None) -> ssl.SSLContext | None:
    """An HTTPS server context from a certificate and key file (``None`` without them)."""
    if not cert_file and not key_file:
        return None
    if not cert_file or not key_file:
        raise ConfigError("HTTPS needs both --http-cert-file and --http-key-file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the HTTPS certificate {cert_file}: {exc}") from None
    return context


def api_from_args(mapper: Mapper, args: argparse.Namespace) -> ApiServer | None:
    """The :class:`ApiServer` the options of :func:`add_api_options` ask for (``None``: off)."""
    port = int(getattr(args, "http_port", 7777))
    if port == 0:
        return None
    if not 0 < port < 65536:
        raise ConfigError(f"--http-port must be 0 (off) or a TCP port, got {port}")
    token = os.environ.get("MAPPERKIT_HTTP_TOKEN") or None
    path = getattr(args, "http_token_file", None)
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the HTTP token file {path}: {exc.strerror}") from None
        if not token:
            raise ConfigError(f"the HTTP token file {path} is empty")
    tls = server_tls(getattr(args, "http_cert_file", None), getattr(args, "http_key_file", None))
    return ApiServer(
        mapper,
        host=getattr(args, "http_host", "127.0.0.1"),
        port=port,
        token=token,
        ssl_context=tls,
    )
