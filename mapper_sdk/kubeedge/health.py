"""``/healthz`` and ``/readyz`` for Kubernetes probes of a KubeEdge-mode mapper.

* ``GET /healthz``: 200 while the process's event loop answers (liveness).
* ``GET /readyz``: 200 once the mapper serves its DMI socket and is registered
  with edgecore; 503 with the reason otherwise (readiness). A mapper waiting
  for a restarting edgecore is alive but not ready.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import Self

from aiohttp import web

__all__ = ["HealthServer"]

log = logging.getLogger("mapper_sdk.kubeedge")


class HealthServer:
    """A small HTTP server for the probes (an async context manager).

    Args:
        host: the address to listen on (``127.0.0.1`` suits ``hostNetwork`` pods,
            whose kubelet probes reach the node's loopback).
        port: the port; 0 picks a free one (see :attr:`port` once entered).
        not_ready: returns why the mapper is not ready, or ``None`` when it is.
    """

    def __init__(self, host: str, port: int, not_ready: Callable[[], str | None]) -> None:
        self.host = host
        self.port = port
        self.not_ready = not_ready
        self._runner: web.AppRunner | None = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        reason = self.not_ready()
        if reason is None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {reason}\n")

    async def __aenter__(self) -> Self:
        if self._runner is not None:
            raise RuntimeError("HealthServer is not reentrant")
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from exc
        if self.port == 0 and runner.addresses:
            self.port = int(runner.addresses[0][1])
        self._runner = runner
        log.info("event=health-serving address=%s:%d", self.host, self.port)
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
