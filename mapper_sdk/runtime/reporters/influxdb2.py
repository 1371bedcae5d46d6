"""The ``influxdb2`` sink (``pushMethod.dbMethod.influxdb2``): line protocol over HTTP.

Config, with KubeEdge's keys::

    dbMethod:
      influxdb2:
        influxdb2ClientConfig: {url: http://127.0.0.1:8086, org: edge, bucket: telemetry}
        influxdb2DataConfig:
          measurement: boiler          # templates: {namespace}, {device}, {property}
          tag: {site: plant-1}
          fieldKey: temperature

The token comes from the ``TOKEN`` environment variable, as KubeEdge reads it
(or ``tokenEnv``/``tokenFile``), and is sent as ``Authorization: Token ...``.

Each reading is one line, ``<measurement>,<tags> <fieldKey>=<value> <ms>``,
POSTed in batches to ``<url>/api/v2/write?org=..&bucket=..&precision=ms``. The
value keeps its type: integers as ``12i``, floats, ``true``/``false``, strings
quoted (bytes as base64 text); non-finite floats have no line-protocol form
and are dropped (counted). Unlike KubeEdge, which writes the value as text
and stamps the write time, the timestamp is the reading's own.

Mapperkit extensions: the tags ``namespace``, ``device`` and ``property`` are
added (``autoTags: false`` turns this off) so that properties sharing a
measurement and field key stay apart; ``batchSize``, ``retries`` (5xx, 408,
429 and connection errors, with doubling delays), ``timeout`` (ms) and
``queueSize``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
from pydantic import Field

from ...errors import ConfigError
from ...model import DeviceSpec, PropertySpec, Value
from ._common import (
    DEFAULT_QUEUE,
    Batch,
    BatchQueue,
    PropCache,
    PushConfig,
    backoff_delays,
    check_template,
    fill_template,
    parse_config,
    property_config,
    read_secret,
)
from .base import Item, Reporter, ReporterContext

__all__ = ["InfluxReporter", "escape_key", "escape_measurement", "field_value"]

log = logging.getLogger("mapper_sdk.reporters")

_RETRY_STATUS = frozenset({408, 429})

_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\\": "\\\\"})
_KEY_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "=": r"\=", "\\": "\\\\"})


def escape_measurement(text: str) -> str:
    """A measurement name in line protocol (commas and spaces escaped)."""
    return text.translate(_MEASUREMENT_ESCAPES)


def escape_key(text: str) -> str:
    """A tag key, tag value or field key in line protocol (commas, '=' and spaces escaped)."""
    return text.translate(_KEY_ESCAPES)


def field_value(value: Value) -> str | None:
    """A field value in line protocol; ``None`` for a float with no line-protocol form."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    text = base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class InfluxClientConfig(PushConfig):
    url: str
    org: str
    bucket: str


class InfluxDataConfig(PushConfig):
    measurement: str = "{device}"
    tag: dict[str, str] = Field(default_factory=dict)
    fieldKey: str = "{property}"


class InfluxPushConfig(PushConfig):
    """``pushMethod.dbMethod.influxdb2``."""

    influxdb2ClientConfig: InfluxClientConfig
    influxdb2DataConfig: InfluxDataConfig = Field(default_factory=InfluxDataConfig)
    autoTags: bool = True
    tokenEnv: str | None = None
    tokenFile: str | None = None
    batchSize: int = Field(default=5000, ge=1)
    retries: int = Field(default=5, ge=0, le=100)
    timeout: int = Field(default=10_000, gt=0)
    queueSize: int = Field(default=DEFAULT_QUEUE, ge=1)

    def write_url(self) -> str:
        client = self.influxdb2ClientConfig
        parts = urlsplit(client.url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"influxdb2ClientConfig.url: {client.url!r} must be http(s)://host[:port]"
            )
        query = urlencode({"org": client.org, "bucket": client.bucket, "precision": "ms"})
        return f"{client.url.rstrip('/')}/api/v2/write?{query}"


def _check(cfg: InfluxPushConfig) -> None:
    cfg.write_url()
    data = cfg.influxdb2DataConfig
    check_template(data.measurement, "influxdb2DataConfig.measurement")
    check_template(data.fieldKey, "influxdb2DataConfig.fieldKey")
    for key, value in data.tag.items():
        check_template(value, f"influxdb2DataConfig.tag.{key}")
    if not data.measurement or not data.fieldKey:
        raise ConfigError("influxdb2DataConfig: measurement and fieldKey must not be empty")


class _InfluxWire:
    __slots__ = ("head",)

    def __init__(
        self, cfg: InfluxPushConfig, device: DeviceSpec[Any, Any], prop: PropertySpec[Any]
    ) -> None:
        data = cfg.influxdb2DataConfig
        tags = {k: fill_template(v, device, prop) for k, v in data.tag.items()}
        if cfg.autoTags:
            tags.setdefault("namespace", device.namespace)
            tags.setdefault("device", device.name)
            tags.setdefault("property", prop.name)
        # Line protocol wants tags sorted by key for the best write performance.
        tag_text = "".join(
            f",{escape_key(k)}={escape_key(v)}" for k, v in sorted(tags.items()) if v != ""
        )
        measurement = escape_measurement(fill_template(data.measurement, device, prop))
        field = escape_key(fill_template(data.fieldKey, device, prop))
        self.head = f"{measurement}{tag_text} {field}="


class InfluxReporter(Reporter):
    """Writes readings to InfluxDB 2 (or any ``/api/v2/write`` endpoint); see the module doc."""

    kind = "influxdb2"

    def __init__(self, config: Mapping[str, Any], context: ReporterContext) -> None:
        super().__init__(config, context)
        cfg = parse_config(InfluxPushConfig, config)
        _check(cfg)
        self._cfg = cfg
        self._url = cfg.write_url()
        self.target = self._url.split("?", 1)[0]
        token = read_secret(
            context.environ, env=cfg.tokenEnv or "TOKEN", file=cfg.tokenFile, what="InfluxDB token"
        )
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if token:
            self._headers["Authorization"] = f"Token {token}"
        self._queue = BatchQueue(self.stats, cfg.queueSize)
        self._wires: PropCache[_InfluxWire] = PropCache()
        self._failing = False

    @classmethod
    def validate(cls, config: Mapping[str, Any]) -> None:
        _check(parse_config(InfluxPushConfig, config))

    @classmethod
    def pool_key(cls, config: Mapping[str, Any]) -> Hashable:
        cfg = parse_config(InfluxPushConfig, config)
        return (cfg.write_url(), cfg.tokenEnv, cfg.tokenFile)

    def offer(self, device: DeviceSpec[Any, Any], items: Sequence[Item]) -> None:
        self._queue.put(device, items)

    def _head(self, device: DeviceSpec[Any, Any], prop: PropertySpec[Any]) -> str:
        def make() -> _InfluxWire:
            own = property_config(prop, self.kind)
            cfg = self._cfg if own is None else parse_config(InfluxPushConfig, own)
            return _InfluxWire(cfg, device, prop)

        return self._wires.prepare(prop, make).head

    def lines(self, batches: Sequence[Batch]) -> list[str]:
        """Line-protocol lines of ``batches`` (readings with no line form are counted dropped)."""
        wires = self._wires
        out: list[str] = []
        for device, items in batches:
            for prop, value, reading in items:
                wire = wires.get(prop)
                head = wire.head if wire is not None else self._head(device, prop)
                text = field_value(value)
                if text is None:
                    self.stats.dropped += 1
                    continue
                out.append(f"{head}{text} {reading.source_timestamp or reading.timestamp}")
        return out

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self._cfg.timeout / 1000.0)
        async with aiohttp.ClientSession(headers=self._headers, timeout=timeout) as session:
            while True:
                batches = await self._queue.take(self._cfg.batchSize)
                lines = self.lines(batches)
                if lines:
                    await self._post(session, lines)

    async def _post(self, session: aiohttp.ClientSession, lines: list[str]) -> None:
        body = "\n".join(lines).encode()
        stats = self.stats
        delays = backoff_delays(0.2, 10.0)
        attempt = 0
        while True:
            retry = True
            try:
                async with session.post(self._url, data=body) as resp:
                    detail = await resp.text()
                    if resp.status < 300:
                        stats.sent += len(lines)
                        if self._failing:
                            self._failing = False
                            log.info("sink=influxdb2 target=%s event=recovered", self.target)
                        return
                    reason = f"HTTP {resp.status}: {detail[:200]}"
                    retry = resp.status >= 500 or resp.status in _RETRY_STATUS
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = str(exc) or type(exc).__name__
            stats.errors += 1
            if not self._failing:
                self._failing = True
                log.warning(
                    "sink=influxdb2 target=%s event=write-failed error=%r", self.target, reason
                )
            if not retry or attempt >= self._cfg.retries:
                stats.dropped += len(lines)
                return
            attempt += 1
            await asyncio.sleep(next(delays))

    async def aclose(self) -> None:
        self._queue.discard()
