"""The mapper's side of edgecore's ``DeviceManagerService``: registration and reports.

:class:`DmiClient` makes the three calls over edgecore's unix socket with a
short deadline (1 s, as KubeEdge's mappers use) and turns gRPC failures into
:class:`~.twin.EdgecoreUnavailable` (nobody answers) and
:class:`~.twin.EdgecoreRejected` (edgecore refused; ``rate_limited`` for its
"too many request").

:class:`Registrar` keeps the mapper registered: it waits for edgecore's socket,
calls ``MapperRegister`` with ``withData`` (which hands back the devices of the
mapper's protocol), and watches the socket. When the socket file disappears
or is replaced (edgecore restarted), or a report finds edgecore gone, it
registers again, so devices changed while edgecore was away arrive and
edgecore knows where to reach the mapper.
"""

from __future__ import annotations

import asyncio
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

from ..runtime.backoff import Backoff
from .twin import EdgecoreRejected, EdgecoreUnavailable, TokenBucket, checkpoint
from .v1beta1 import api_pb2

__all__ = ["MANAGER_SERVICE", "DmiClient", "Registrar", "socket_target"]

log = logging.getLogger("mapper_sdk.kubeedge")

MANAGER_SERVICE = "v1beta1.DeviceManagerService"
"""The fully qualified name of the service edgecore serves."""

_RATE_LIMITED = "too many request"
_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}

R = TypeVar("R")


def socket_target(path: str | os.PathLike[str]) -> str:
    """The gRPC target of a unix socket path (made absolute)."""
    return "unix://" + str(Path(path).absolute())


class DmiClient:
    """Calls edgecore's ``DeviceManagerService`` on ``socket_path``.

    Args:
        socket_path: edgecore's DMI socket (``/etc/kubeedge/dmi.sock``).
        timeout: deadline of each call, in seconds.

    One channel is kept and replaced by :meth:`reset` after edgecore went away,
    so a restarted edgecore is dialled at once instead of after gRPC's
    reconnect backoff.
    """

    def __init__(self, socket_path: str | os.PathLike[str], *, timeout: float = 1.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout
        self._channel: Any = None
        self._calls: dict[str, Any] = {}

    def _call(self, method: str, response: type[Any]) -> Any:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(
                socket_target(self.socket_path),
                options=[
                    # A fresh channel must dial afresh, not reuse a shared subchannel
                    # still backing off from the edgecore that went away.
                    ("grpc.use_local_subchannel_pool", 1),
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                ],
            )
            self._calls = {}
        call = self._calls.get(method)
        if call is None:
            call = self._calls[method] = self._channel.unary_unary(
                f"/{MANAGER_SERVICE}/{method}",
                request_serializer=lambda message: message.SerializeToString(),
                response_deserializer=response.FromString,
            )
        return call

    async def _invoke(self, method: str, request: Any, response: type[R]) -> R:
        try:
            result: R = await self._call(method, response)(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            checkpoint()
            code = exc.code()
            details = exc.details() or code.name
            if code in _UNREACHABLE:
                raise EdgecoreUnavailable(
                    f"edgecore at {self.socket_path} did not answer {method}: {details}"
                ) from None
            raise EdgecoreRejected(
                f"edgecore refused {method}: {details}",
                rate_limited=_RATE_LIMITED in details.lower(),
            ) from None
        return result

    async def register(
        self, mapper: api_pb2.MapperInfo, *, with_data: bool = True
    ) -> api_pb2.MapperRegisterResponse:
        """``MapperRegister``: announce the mapper; with ``with_data``, get its devices."""
        request = api_pb2.MapperRegisterRequest(withData=with_data, mapper=mapper)
        return await self._invoke("MapperRegister", request, api_pb2.MapperRegisterResponse)

    async def report_status(self, request: api_pb2.ReportDeviceStatusRequest) -> None:
        """``ReportDeviceStatus``: the twins of one device."""
        await self._invoke("ReportDeviceStatus", request, api_pb2.ReportDeviceStatusResponse)

    async def report_states(self, request: api_pb2.ReportDeviceStatesRequest) -> None:
        """``ReportDeviceStates``: the state of one device."""
        await self._invoke("ReportDeviceStates", request, api_pb2.ReportDeviceStatesResponse)

    async def reset(self) -> None:
        """Drop the channel; the next call dials edgecore afresh."""
        channel, self._channel = self._channel, None
        self._calls = {}
        if channel is not None:
            await channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.reset()


SocketId = tuple[int, int, int]


def _socket_id(path: Path) -> SocketId | None:
    """The identity of the socket file at ``path``; ``None`` when there is none."""
    try:
        st = path.stat()
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


class Registrar:
    """Keeps the mapper registered with edgecore (an async context manager).

    Args:
        client: the DMI client.
        mapper: what is registered (name, version, protocol, socket address).
        on_registered: called with each ``MapperRegister`` answer, before
            reports resume (the devices it lists are reconciled there).
        bucket: the DMI call budget (registrations count against it).
        available: set while registered; cleared when edgecore goes away.
        poll_interval: seconds between two looks at edgecore's socket file.
        backoff: first and longest delay between failed registrations.
    """

    def __init__(
        self,
        client: DmiClient,
        mapper: api_pb2.MapperInfo,
        on_registered: Callable[[api_pb2.MapperRegisterResponse], Awaitable[None]],
        *,
        bucket: TokenBucket,
        available: asyncio.Event,
        poll_interval: float = 0.5,
        backoff: tuple[float, float] = (0.2, 5.0),
    ) -> None:
        self.client = client
        self.mapper = mapper
        self.on_registered = on_registered
        self.bucket = bucket
        self.available = available
        self.poll_interval = poll_interval
        self._backoff = Backoff(*backoff)
        self._lost = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None
        self.registrations = 0
        """Successful ``MapperRegister`` calls so far."""

    def lost(self) -> None:
        """A call found edgecore gone: register again as soon as it answers."""
        self._lost.set()

    async def __aenter__(self) -> Self:
        if self._tg is not None:
            raise RuntimeError("Registrar is not reentrant")
        # A failure of the loop (a bug) cancels the task that entered, and
        # surfaces when it leaves: the mapper never runs on unregistered.
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self._task = self._tg.create_task(self._run(), name="kubeedge.registrar")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg, self._tg = self._tg, None
        if tg is None:
            return
        if self._task is not None:
            self._task.cancel()
        # ``available`` stays as it is: the devices' last states still go out
        # after the registration loop has stopped.
        await tg.__aexit__(exc_type, exc, tb)

    async def _wait_for_socket(self) -> SocketId:
        path = self.client.socket_path
        waiting = False
        while True:
            ident = _socket_id(path)
            if ident is not None:
                if waiting:
                    log.info("event=edgecore-socket-found path=%s", path)
                return ident
            if not waiting:
                log.warning("event=waiting-for-edgecore path=%s", path)
                waiting = True
            await asyncio.sleep(self.poll_interval)

    async def _register(self) -> api_pb2.MapperRegisterResponse | None:
        await self.bucket.take()
        try:
            return await self.client.register(self.mapper, with_data=True)
        except EdgecoreUnavailable as exc:
            reason = str(exc)
        except EdgecoreRejected as exc:
            if exc.rate_limited:
                self.bucket.drain()
            reason = str(exc)
        if self._backoff.attempts == 0:
            log.warning("event=register-failed error=%r", reason)
        await self.client.reset()
        await asyncio.sleep(self._backoff.next())
        return None

    async def _watch(self, ident: SocketId) -> str:
        """Return why edgecore must be registered with again."""
        path = self.client.socket_path
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._lost.wait()
            if self._lost.is_set():
                self._lost.clear()
                return "a call found edgecore gone"
            now = _socket_id(path)
            if now is None:
                return "edgecore's socket disappeared"
            if now != ident:
                return "edgecore's socket was replaced"

    async def _run(self) -> None:
        while True:
            checkpoint()
            ident = await self._wait_for_socket()
            self._lost.clear()
            response = await self._register()
            if response is None:
                continue
            self._backoff.reset()
            self.registrations += 1
            log.info(
                "event=registered protocol=%s devices=%d models=%d registrations=%d",
                self.mapper.protocol,
                len(response.deviceList),
                len(response.modelList),
                self.registrations,
            )
            await self.on_registered(response)
            self.available.set()
            reason = await self._watch(ident)
            self.available.clear()
            log.warning("event=edgecore-lost reason=%r", reason)
            await self.client.reset()
