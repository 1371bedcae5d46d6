"""The mapper's ``DeviceMapperService``: what edgecore calls on the mapper's socket.

Edgecore dials the unix socket the mapper registered (``MapperInfo.address``)
for each call, with a 10 s deadline. Every call is handed to the
:class:`~.catalog.DeviceCatalog`; errors go back as gRPC status codes with the
reason: ``INVALID_ARGUMENT`` for a Device or model that cannot be loaded,
``FAILED_PRECONDITION`` when a Device's model never came, ``NOT_FOUND`` for an
unknown device or model, ``INTERNAL`` for anything unexpected (logged with its
traceback).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
import grpc.aio

from ..errors import ConfigError
from .catalog import DeviceCatalog, ModelMissing
from .client import socket_target
from .convert import DEFAULT_NAMESPACE
from .v1beta1 import api_pb2

__all__ = ["MAPPER_SERVICE", "DmiServer"]

log = logging.getLogger("mapper_sdk.kubeedge")

MAPPER_SERVICE = "v1beta1.DeviceMapperService"
"""The fully qualified name of the service a mapper serves."""

R = TypeVar("R")


class DmiServer:
    """Serves ``DeviceMapperService`` on a unix socket (an async context manager).

    Args:
        catalog: where the calls go.
        socket_path: the socket to create; a stale file there is replaced, and
            the socket is removed on exit.
        grace: seconds calls in flight may take to finish on exit.
    """

    def __init__(
        self, catalog: DeviceCatalog, socket_path: str | os.PathLike[str], *, grace: float = 1.0
    ) -> None:
        self.catalog = catalog
        self.socket_path = Path(socket_path)
        self.grace = grace
        self.serving = False
        self._server: Any = None

    # ---- lifecycle ---------------------------------------------------------------------
    def _handlers(self) -> Any:
        def unary(
            fn: Callable[[Any, Any], Awaitable[Any]], request: type[Any], response: type[Any]
        ) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                fn,
                request_deserializer=request.FromString,
                response_serializer=lambda message: message.SerializeToString(),
            )

        methods = {
            "RegisterDevice": unary(
                self.register_device, api_pb2.RegisterDeviceRequest, api_pb2.RegisterDeviceResponse
            ),
            "RemoveDevice": unary(
                self.remove_device, api_pb2.RemoveDeviceRequest, api_pb2.RemoveDeviceResponse
            ),
            "UpdateDevice": unary(
                self.update_device, api_pb2.UpdateDeviceRequest, api_pb2.UpdateDeviceResponse
            ),
            "CreateDeviceModel": unary(
                self.create_device_model,
                api_pb2.CreateDeviceModelRequest,
                api_pb2.CreateDeviceModelResponse,
            ),
            "RemoveDeviceModel": unary(
                self.remove_device_model,
                api_pb2.RemoveDeviceModelRequest,
                api_pb2.RemoveDeviceModelResponse,
            ),
            "UpdateDeviceModel": unary(
                self.update_device_model,
                api_pb2.UpdateDeviceModelRequest,
                api_pb2.UpdateDeviceModelResponse,
            ),
            "GetDevice": unary(
                self.get_device, api_pb2.GetDeviceRequest, api_pb2.GetDeviceResponse
            ),
        }
        return grpc.method_handlers_generic_handler(MAPPER_SERVICE, methods)

    def _clear_stale(self) -> None:
        path = self.socket_path
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ConfigError(f"{path} exists and is not a socket; refusing to replace it")
        path.unlink()

    async def __aenter__(self) -> Self:
        if self._server is not None:
            raise RuntimeError("DmiServer is not reentrant")
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self._clear_stale()
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((self._handlers(),))
        try:
            server.add_insecure_port(socket_target(self.socket_path))
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {self.socket_path}: {exc}") from None
        await server.start()
        self._server = server
        self.serving = True
        log.info("event=dmi-serving socket=%s", self.socket_path)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        server, self._server = self._server, None
        self.serving = False
        if server is None:
            return
        try:
            await server.stop(self.grace)
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    # ---- calls -------------------------------------------------------------------------
    @staticmethod
    async def _fail(context: Any, exc: BaseException, what: str) -> None:
        if isinstance(exc, ModelMissing):
            code = grpc.StatusCode.FAILED_PRECONDITION
        elif isinstance(exc, ConfigError):
            code = grpc.StatusCode.INVALID_ARGUMENT
        elif isinstance(exc, KeyError):
            code = grpc.StatusCode.NOT_FOUND
            exc = KeyError(f"{what}: {exc.args[0]} is not known to this mapper")
        else:
            log.exception("event=dmi-call-failed call=%s", what, exc_info=exc)
            code = grpc.StatusCode.INTERNAL
        if code is not grpc.StatusCode.INTERNAL:
            log.warning("event=dmi-call-refused call=%s error=%r", what, str(exc))
        message = exc.args[0] if isinstance(exc, KeyError) else str(exc)
        await context.abort(code, message)

    async def _call(self, context: Any, what: str, action: Awaitable[R]) -> R:
        try:
            return await action
        except Exception as exc:
            await self._fail(context, exc, what)  # aborts the call
            raise

    async def register_device(self, request: api_pb2.RegisterDeviceRequest, context: Any) -> Any:
        spec = await self._call(
            context, "RegisterDevice", self.catalog.register_device(request.device)
        )
        return api_pb2.RegisterDeviceResponse(deviceName=spec.name, deviceNamespace=spec.namespace)

    async def update_device(self, request: api_pb2.UpdateDeviceRequest, context: Any) -> Any:
        await self._call(context, "UpdateDevice", self.catalog.update_device(request.device))
        return api_pb2.UpdateDeviceResponse()

    async def remove_device(self, request: api_pb2.RemoveDeviceRequest, context: Any) -> Any:
        await self._call(
            context,
            "RemoveDevice",
            self.catalog.remove_device(request.deviceName, request.deviceNamespace),
        )
        return api_pb2.RemoveDeviceResponse()

    async def create_device_model(
        self, request: api_pb2.CreateDeviceModelRequest, context: Any
    ) -> Any:
        ns, name = await self._call(
            context, "CreateDeviceModel", self.catalog.create_model(request.model)
        )
        return api_pb2.CreateDeviceModelResponse(deviceModelName=name, deviceModelNamespace=ns)

    async def update_device_model(
        self, request: api_pb2.UpdateDeviceModelRequest, context: Any
    ) -> Any:
        await self._call(context, "UpdateDeviceModel", self.catalog.update_model(request.model))
        return api_pb2.UpdateDeviceModelResponse()

    async def remove_device_model(
        self, request: api_pb2.RemoveDeviceModelRequest, context: Any
    ) -> Any:
        await self._call(
            context,
            "RemoveDeviceModel",
            self.catalog.remove_model(request.modelName, request.modelNamespace),
        )
        return api_pb2.RemoveDeviceModelResponse()

    async def get_device(self, request: api_pb2.GetDeviceRequest, context: Any) -> Any:
        status = await self._call(
            context,
            "GetDevice",
            self.catalog.get_twins(request.deviceName, request.deviceNamespace),
        )
        device = api_pb2.Device(
            name=request.deviceName, namespace=request.deviceNamespace or DEFAULT_NAMESPACE
        )
        device.status.CopyFrom(status)
        return api_pb2.GetDeviceResponse(device=device)
