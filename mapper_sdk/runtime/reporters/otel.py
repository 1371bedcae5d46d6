"""The ``otel`` sink (``pushMethod.otel``): OTLP/HTTP metrics, one gauge per property.

Config, with KubeEdge's key::

    pushMethod:
      otel: {endpointURL: http://127.0.0.1:4318/v1/metrics}

Each property is a gauge named after the property (characters OpenTelemetry
does not allow in an instrument name become ``_``), with the attributes
``device.id`` (``namespace/name``, KubeEdge's resource attribute),
``device``, ``namespace`` and the property's unit. Booleans export as 0/1;
string and bytes properties have no gauge form and are counted as dropped.
Values that follow each other within one interval are aggregated (the gauge
keeps the last), so ``sent`` counts the values exported, one per property and
interval.

The OpenTelemetry SDK aggregates the values (last value wins within an
interval) and encodes them; they are sent as protobuf over HTTP every
``interval`` ms (Mapperkit extension, default 1000), so a failed export is
simply carried by the next one. Headers (an API key) come from the
environment variable named by ``headersEnv`` (default
``OTEL_EXPORTER_OTLP_HEADERS``, ``key=value,key2=value2``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import aiohttp
from pydantic import Field

from ...errors import ConfigError
from ...model import DeviceSpec, PropertySpec, Value
from ._common import SINKS_EXTRA, PushConfig, parse_config
from .base import Item, Reporter, ReporterContext

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter
    from opentelemetry.metrics import _Gauge as Gauge
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

__all__ = ["OtelReporter", "instrument_name"]

log = logging.getLogger("mapper_sdk.reporters")

_NAME_BAD = re.compile(r"[^A-Za-z0-9_.\-/]")


def instrument_name(prop: str) -> str:
    """A valid OpenTelemetry instrument name for a property name."""
    name = _NAME_BAD.sub("_", prop)[:255]
    return name if name[:1].isalpha() else f"p_{name}"[:255]


class OtelPushConfig(PushConfig):
    """``pushMethod.otel``."""

    endpointURL: str
    interval: int = Field(default=1000, ge=10)
    timeout: int = Field(default=10_000, gt=0)
    headersEnv: str = "OTEL_EXPORTER_OTLP_HEADERS"

    def url(self) -> str:
        parts = urlsplit(self.endpointURL)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"endpointURL: {self.endpointURL!r} must be http(s)://host:port[/v1/metrics]"
            )
        if parts.path in ("", "/"):
            return self.endpointURL.rstrip("/") + "/v1/metrics"
        return self.endpointURL


def _headers(text: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            out[unquote(key.strip())] = unquote(value.strip())
    return out


def _gauge_value(value: Value) -> float | int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    return None


class OtelReporter(Reporter):
    """Exports readings as OTLP/HTTP gauges; see the module docstring for the config."""

    kind = "otel"

    def __init__(self, config: Mapping[str, Any], context: ReporterContext) -> None:
        super().__init__(config, context)
        try:
            from opentelemetry.exporter.otlp.proto.common.metrics_encoder import (  # noqa: F401
                encode_metrics,
            )
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import InMemoryMetricReader
            from opentelemetry.sdk.resources import Resource
        except ImportError:
            raise ConfigError(
                f"the otel sink needs opentelemetry-sdk and "
                f"opentelemetry-exporter-otlp-proto-http: {SINKS_EXTRA}"
            ) from None
        cfg = parse_config(OtelPushConfig, config)
        self._cfg = cfg
        self._url = cfg.url()
        self.target = self._url
        self._headers = {
            **_headers(context.environ.get(cfg.headersEnv)),
            "Content-Type": "application/x-protobuf",
        }
        self._reader: InMemoryMetricReader = InMemoryMetricReader()
        self._provider: MeterProvider = MeterProvider(
            metric_readers=[self._reader],
            resource=Resource.create({"service.name": "mapperkit"}),
            shutdown_on_exit=False,
        )
        self._meter: Meter = self._provider.get_meter("mapperkit")
        self._gauges: dict[tuple[str, str | None], Gauge] = {}
        self._attributes: dict[PropertySpec[Any], tuple[Gauge, dict[str, str]] | None] = {}
        self._latest: dict[PropertySpec[Any], tuple[DeviceSpec[Any, Any], Value]] = {}
        self._pending = 0
        self._failing = False

    @classmethod
    def validate(cls, config: Mapping[str, Any]) -> None:
        parse_config(OtelPushConfig, config).url()

    @classmethod
    def pool_key(cls, config: Mapping[str, Any]) -> Hashable:
        cfg = parse_config(OtelPushConfig, config)
        return (cfg.url(), cfg.headersEnv)

    def offer(self, device: DeviceSpec[Any, Any], items: Sequence[Item]) -> None:
        latest = self._latest
        stats = self.stats
        # Within one export interval a gauge keeps the last value; earlier ones are
        # aggregated away on purpose, not dropped.
        for prop, value, _ in items:
            latest[prop] = (device, value)
        stats.queued += len(items)
        stats.depth = len(latest)

    def _instrument(
        self, device: DeviceSpec[Any, Any], prop: PropertySpec[Any]
    ) -> tuple[Gauge, dict[str, str]] | None:
        if prop in self._attributes:
            return self._attributes[prop]
        if prop.type.value in ("string", "bytes"):
            log.warning(
                "sink=otel device=%s property=%s event=skipped reason=%r",
                device.id,
                prop.name,
                f"a {prop.type.value} property has no gauge form",
            )
            entry = None
        else:
            name = instrument_name(prop.name)
            key = (name, prop.unit)
            gauge = self._gauges.get(key)
            if gauge is None:
                gauge = self._gauges[key] = self._meter.create_gauge(
                    name, unit=prop.unit or "", description=prop.description or ""
                )
            attrs = {"device.id": device.id, "device": device.name, "namespace": device.namespace}
            entry = (gauge, attrs)
        if len(self._attributes) > 100_000:
            self._attributes.clear()
        self._attributes[prop] = entry
        return entry

    def _apply(self) -> int:
        """Set the gauges from what was offered; return how many values were set."""
        latest, self._latest = self._latest, {}
        self.stats.depth = 0
        count = 0
        for prop, (device, value) in latest.items():
            entry = self._instrument(device, prop)
            number = _gauge_value(value)
            if entry is None or number is None:
                self.stats.dropped += 1
                continue
            entry[0].set(number, entry[1])
            count += 1
        return count

    def encode(self) -> bytes | None:
        """Apply the pending values and encode everything the SDK holds as OTLP protobuf."""
        from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics

        self._pending = self._apply()
        data = self._reader.get_metrics_data()
        if data is None or not data.resource_metrics:
            return None
        return bytes(encode_metrics(data).SerializeToString())

    async def run(self) -> None:
        interval = self._cfg.interval / 1000.0
        timeout = aiohttp.ClientTimeout(total=self._cfg.timeout / 1000.0)
        async with aiohttp.ClientSession(headers=self._headers, timeout=timeout) as session:
            while True:
                await asyncio.sleep(interval)
                if not self._latest and not self._gauges:
                    continue
                body = self.encode()
                if body is not None:
                    await self._post(session, body, self._pending)

    async def _post(self, session: aiohttp.ClientSession, body: bytes, count: int) -> None:
        try:
            async with session.post(self._url, data=body) as resp:
                detail = await resp.read()
                if resp.status < 300:
                    self.stats.sent += count
                    if self._failing:
                        self._failing = False
                        log.info("sink=otel target=%s event=recovered", self.target)
                    return
                reason = f"HTTP {resp.status}: {detail[:200]!r}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
        # Gauges keep their last values, so the next export carries them again.
        self.stats.errors += 1
        if not self._failing:
            self._failing = True
            log.warning("sink=otel target=%s event=export-failed error=%r", self.target, reason)

    async def aclose(self) -> None:
        self._provider.shutdown(timeout_millis=100)
