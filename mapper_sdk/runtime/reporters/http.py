"""The ``http`` sink: readings POSTed as JSON, one request per device per report.

A property's ``pushMethod.http`` gives KubeEdge's ``hostName`` (with or
without ``http://``/``https://``), ``port``, ``requestPath`` and ``timeout``
(ms). The body is a JSON list of readings, each as the ``mqtt`` sink's
payload::

    [{"device": "boiler-1", "namespace": "default", "property": "temperature",
      "value": 21.5, "type": "float", "timestamp": 1700000000000, "quality": "good"}]

``format: kubeedge-legacy`` sends KubeEdge's form-encoded body instead, one
request per reading: ``<property>=<value>&time=2024-01-02 15:04:05``.

A request that fails (connection error, timeout, HTTP 5xx, 408 or 429) is
retried with doubling delays (``retries`` times, default 3); a request the
receiver refuses (other 4xx) is not. Readings that could not be delivered are
counted as dropped. Mapperkit extensions: ``format``, ``retries``,
``concurrency`` (requests in flight per host, default 2), ``queueSize``, and a
bearer token from ``tokenEnv`` or ``tokenFile``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
from pydantic import Field

from ...codec import format_text
from ...errors import ConfigError
from ...model import DeviceSpec, PropertySpec
from ._common import (
    DEFAULT_QUEUE,
    Batch,
    BatchQueue,
    Format,
    PropCache,
    PushConfig,
    backoff_delays,
    legacy_time,
    parse_config,
    property_config,
    read_secret,
    reading_json,
    reading_prefix,
    reading_suffix,
)
from .base import Item, Reporter, ReporterContext

__all__ = ["HttpReporter"]

log = logging.getLogger("mapper_sdk.reporters")

_RETRY_STATUS = frozenset({408, 429})


class HttpPushConfig(PushConfig):
    """``pushMethod.http``."""

    hostName: str
    port: int | None = Field(default=None, ge=1, le=65535)
    requestPath: str = "/"
    timeout: int = Field(default=5000, gt=0)
    format: Format = "json"
    retries: int = Field(default=3, ge=0, le=100)
    concurrency: int = Field(default=2, ge=1, le=64)
    tokenEnv: str | None = None
    tokenFile: str | None = None
    queueSize: int = Field(default=DEFAULT_QUEUE, ge=1)

    def base_url(self) -> str:
        host = self.hostName.strip().rstrip("/")
        if "://" not in host:
            host = f"http://{host}"
        parts = urlsplit(host)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"hostName: {self.hostName!r} is not an http(s) host")
        if parts.path or parts.query:
            raise ConfigError(
                f"hostName: {self.hostName!r} must be a host only; put the path in requestPath"
            )
        try:
            port = self.port or parts.port
        except ValueError:
            raise ConfigError(f"hostName: {self.hostName!r} has an invalid port") from None
        netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        return f"{parts.scheme}://{netloc}:{port}" if port else f"{parts.scheme}://{netloc}"

    def path(self) -> str:
        path = self.requestPath or "/"
        return path if path.startswith("/") else f"/{path}"


class _HttpWire:
    __slots__ = ("legacy", "prefix", "retries", "suffix", "timeout", "url")

    def __init__(
        self,
        cfg: HttpPushConfig,
        base: str,
        device: DeviceSpec[Any, Any],
        prop: PropertySpec[Any],
    ) -> None:
        self.url = base + cfg.path()
        self.timeout = cfg.timeout / 1000.0
        self.retries = cfg.retries
        self.legacy = cfg.format == "kubeedge-legacy"
        self.prefix = reading_prefix(device, prop)
        self.suffix = reading_suffix(prop)


class _Request:
    __slots__ = ("body", "content_type", "count", "retries", "timeout", "url")

    def __init__(
        self, url: str, body: bytes, content_type: str, count: int, timeout: float, retries: int
    ) -> None:
        self.url = url
        self.body = body
        self.content_type = content_type
        self.count = count
        self.timeout = timeout
        self.retries = retries


class HttpReporter(Reporter):
    """POSTs readings to an HTTP endpoint; see the module docstring for the config.

    Devices that name the same host share one connection pool and one queue;
    path, timeout, retries and format are taken per property.
    """

    kind = "http"

    def __init__(self, config: Mapping[str, Any], context: ReporterContext) -> None:
        super().__init__(config, context)
        cfg = parse_config(HttpPushConfig, config)
        self._cfg = cfg
        self.target = cfg.base_url()
        token = read_secret(
            context.environ, env=cfg.tokenEnv, file=cfg.tokenFile, what="HTTP bearer token"
        )
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._queue = BatchQueue(self.stats, cfg.queueSize)
        self._wires: PropCache[_HttpWire] = PropCache()
        self._session: aiohttp.ClientSession | None = None
        self._failing = False

    @classmethod
    def validate(cls, config: Mapping[str, Any]) -> None:
        cfg = parse_config(HttpPushConfig, config)
        cfg.base_url()

    @classmethod
    def pool_key(cls, config: Mapping[str, Any]) -> Hashable:
        cfg = parse_config(HttpPushConfig, config)
        return (cfg.base_url(), cfg.tokenEnv, cfg.tokenFile)

    def offer(self, device: DeviceSpec[Any, Any], items: Sequence[Item]) -> None:
        self._queue.put(device, items)

    def _wire(self, device: DeviceSpec[Any, Any], prop: PropertySpec[Any]) -> _HttpWire:
        wire = self._wires.get(prop)
        if wire is None:

            def make() -> _HttpWire:
                own = property_config(prop, self.kind)
                cfg = self._cfg if own is None else parse_config(HttpPushConfig, own)
                return _HttpWire(cfg, self.target, device, prop)

            wire = self._wires.prepare(prop, make)
        return wire

    def requests(self, batch: Batch) -> list[_Request]:
        """The requests that carry one device's batch: one JSON list per URL."""
        device, items = batch
        groups: dict[str, tuple[_HttpWire, list[str]]] = {}
        out: list[_Request] = []
        for prop, value, reading in items:
            wire = self._wire(device, prop)
            if wire.legacy:
                ts = reading.source_timestamp or reading.timestamp
                body = urlencode(
                    {prop.name: format_text(value, prop.type), "time": legacy_time(ts)}
                ).encode()
                out.append(
                    _Request(
                        wire.url,
                        body,
                        "application/x-www-form-urlencoded",
                        1,
                        wire.timeout,
                        wire.retries,
                    )
                )
                continue
            group = groups.get(wire.url)
            if group is None:
                group = groups[wire.url] = (wire, [])
            group[1].append(reading_json(wire.prefix, wire.suffix, value, reading))
        for url, (wire, docs) in groups.items():
            body = ("[" + ",".join(docs) + "]").encode()
            out.append(
                _Request(url, body, "application/json", len(docs), wire.timeout, wire.retries)
            )
        return out

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._cfg.concurrency)
        async with aiohttp.ClientSession(connector=connector, headers=self._headers) as session:
            self._session = session
            try:
                async with asyncio.TaskGroup() as tg:
                    for i in range(self._cfg.concurrency):
                        tg.create_task(self._worker(session), name=f"sink.http[{i}]")
            finally:
                self._session = None

    async def _worker(self, session: aiohttp.ClientSession) -> None:
        while True:
            for batch in await self._queue.take(1):
                for request in self.requests(batch):
                    await self._send(session, request)

    async def _send(self, session: aiohttp.ClientSession, request: _Request) -> None:
        stats = self.stats
        delays = backoff_delays()
        attempt = 0
        while True:
            reason: str
            retry = True
            try:
                async with session.post(
                    request.url,
                    data=request.body,
                    headers={"Content-Type": request.content_type},
                    timeout=aiohttp.ClientTimeout(total=request.timeout),
                ) as resp:
                    await resp.read()
                    if resp.status < 300:
                        stats.sent += request.count
                        if self._failing:
                            self._failing = False
                            log.info("sink=http target=%s event=recovered", self.target)
                        return
                    reason = f"HTTP {resp.status}"
                    retry = resp.status >= 500 or resp.status in _RETRY_STATUS
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = str(exc) or type(exc).__name__
            stats.errors += 1
            if not self._failing:
                self._failing = True
                log.warning(
                    "sink=http target=%s event=post-failed url=%s error=%r",
                    self.target,
                    request.url,
                    reason,
                )
            if not retry or attempt >= request.retries:
                stats.dropped += request.count
                return
            attempt += 1
            await asyncio.sleep(next(delays))

    async def aclose(self) -> None:
        self._queue.discard()
