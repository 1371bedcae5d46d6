"""The ``redis`` sink (``pushMethod.dbMethod.redis``): KubeEdge's layout, a sorted set per device.

Each reading is added to the sorted set named after the device (KubeEdge's
key), scored by its timestamp in ms, with the reading's JSON (the ``mqtt``
sink's payload) as the member. Config, as KubeEdge writes it::

    dbMethod:
      redis:
        redisClientConfig: {addr: 127.0.0.1:6379, db: 0, poolsize: 10, minIdleConns: 1}

The password comes from the ``PASSWORD`` environment variable, as KubeEdge
reads it (or ``passwordEnv``/``passwordFile``). Mapperkit extensions beside
``redisClientConfig``: ``key`` (a template; default ``{device}``, KubeEdge's;
``{namespace}/{device}`` keeps namespaces apart), ``retention`` (ms: older
members are removed as new ones are added), ``format: kubeedge-legacy``
(KubeEdge's member text ``TimeStamp: ... PropertyName: ... data: ...``),
``queueSize``. Readings are written in pipelined batches; while the server is
unreachable the batch is retried with doubling delays and newer readings wait
in the bounded queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import AliasChoices, Field

from ...codec import format_text
from ...errors import ConfigError
from ...model import DeviceSpec, PropertySpec
from ._common import (
    DEFAULT_QUEUE,
    SINKS_EXTRA,
    Batch,
    BatchQueue,
    Format,
    PropCache,
    PushConfig,
    backoff_delays,
    check_template,
    fill_template,
    parse_config,
    property_config,
    read_secret,
    reading_json,
    reading_prefix,
    reading_suffix,
)
from .base import Item, Reporter, ReporterContext

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisReporter"]

log = logging.getLogger("mapper_sdk.reporters")


class RedisClientConfig(PushConfig):
    addr: str
    db: int = Field(default=0, ge=0)
    poolSize: int | None = Field(
        default=None, ge=1, validation_alias=AliasChoices("poolSize", "poolsize")
    )
    minIdleConns: int | None = Field(default=None, ge=0)

    def host_port(self) -> tuple[str, int]:
        host, sep, port = self.addr.rpartition(":")
        if not sep:
            return self.addr, 6379
        try:
            number = int(port)
        except ValueError:
            raise ConfigError(f"redisClientConfig.addr: {self.addr!r} is not host:port") from None
        return host.strip("[]"), number


class RedisPushConfig(PushConfig):
    """``pushMethod.dbMethod.redis``."""

    redisClientConfig: RedisClientConfig
    key: str = "{device}"
    retention: int | None = Field(default=None, gt=0)
    format: Format = "json"
    passwordEnv: str | None = None
    passwordFile: str | None = None
    queueSize: int = Field(default=DEFAULT_QUEUE, ge=1)


def _check(cfg: RedisPushConfig) -> None:
    check_template(cfg.key, "key")
    cfg.redisClientConfig.host_port()


class _RedisWire:
    __slots__ = ("key", "legacy", "prefix", "retention", "suffix")

    def __init__(
        self, cfg: RedisPushConfig, device: DeviceSpec[Any, Any], prop: PropertySpec[Any]
    ) -> None:
        self.key = fill_template(cfg.key, device, prop)
        self.retention = cfg.retention
        self.legacy = cfg.format == "kubeedge-legacy"
        self.prefix = reading_prefix(device, prop)
        self.suffix = reading_suffix(prop)


class RedisReporter(Reporter):
    """Adds readings to Redis sorted sets; see the module docstring for the config."""

    kind = "redis"
    batch_limit = 5000

    def __init__(self, config: Mapping[str, Any], context: ReporterContext) -> None:
        super().__init__(config, context)
        try:
            import redis.asyncio  # noqa: F401 - checked here, used in run()
        except ImportError:
            raise ConfigError(f"the redis sink needs the redis package: {SINKS_EXTRA}") from None
        cfg = parse_config(RedisPushConfig, config)
        _check(cfg)
        self._cfg = cfg
        self._host, self._port = cfg.redisClientConfig.host_port()
        self.target = f"redis://{self._host}:{self._port}/{cfg.redisClientConfig.db}"
        self._password = read_secret(
            context.environ,
            env=cfg.passwordEnv or "PASSWORD",
            file=cfg.passwordFile,
            what="Redis password",
        )
        self._queue = BatchQueue(self.stats, cfg.queueSize)
        self._wires: PropCache[_RedisWire] = PropCache()
        self._client: Redis | None = None

    @classmethod
    def validate(cls, config: Mapping[str, Any]) -> None:
        _check(parse_config(RedisPushConfig, config))

    @classmethod
    def pool_key(cls, config: Mapping[str, Any]) -> Hashable:
        cfg = parse_config(RedisPushConfig, config)
        return (
            *cfg.redisClientConfig.host_port(),
            cfg.redisClientConfig.db,
            cfg.passwordEnv,
            cfg.passwordFile,
        )

    def offer(self, device: DeviceSpec[Any, Any], items: Sequence[Item]) -> None:
        self._queue.put(device, items)

    def _wire(self, device: DeviceSpec[Any, Any], prop: PropertySpec[Any]) -> _RedisWire:
        wire = self._wires.get(prop)
        if wire is None:

            def make() -> _RedisWire:
                own = property_config(prop, self.kind)
                cfg = self._cfg if own is None else parse_config(RedisPushConfig, own)
                return _RedisWire(cfg, device, prop)

            wire = self._wires.prepare(prop, make)
        return wire

    def members(self, batches: Sequence[Batch]) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
        """``{key: {member: score}}`` and ``{key: retention ms}`` for ``batches``."""
        keys: dict[str, dict[str, int]] = {}
        retention: dict[str, int] = {}
        for device, items in batches:
            for prop, value, reading in items:
                wire = self._wire(device, prop)
                ts = reading.source_timestamp or reading.timestamp
                if wire.legacy:
                    member = (
                        f"TimeStamp: {ts} PropertyName: {prop.name} "
                        f"data: {format_text(value, prop.type)}"
                    )
                else:
                    member = reading_json(wire.prefix, wire.suffix, value, reading)
                bucket = keys.get(wire.key)
                if bucket is None:
                    bucket = keys[wire.key] = {}
                bucket[member] = ts
                if wire.retention is not None:
                    retention[wire.key] = max(retention.get(wire.key, 0), wire.retention)
        return keys, retention

    async def run(self) -> None:
        from redis.asyncio import Redis
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import RedisError
        from redis.exceptions import TimeoutError as RedisTimeout

        client_cfg = self._cfg.redisClientConfig
        client = Redis(
            host=self._host,
            port=self._port,
            db=client_cfg.db,
            password=self._password,
            max_connections=client_cfg.poolSize or 10,
            socket_timeout=10.0,
            socket_connect_timeout=5.0,
        )
        self._client = client
        failing = False
        try:
            while True:
                batches = await self._queue.take(self.batch_limit)
                count = sum(len(items) for _, items in batches)
                keys, retention = self.members(batches)
                delays = backoff_delays(0.2, 10.0)
                while True:
                    try:
                        async with client.pipeline(transaction=False) as pipe:
                            for key, mapping in keys.items():
                                pipe.zadd(key, mapping)
                            if retention:
                                now = int(time.time() * 1000)
                                for key, keep in retention.items():
                                    pipe.zremrangebyscore(key, "-inf", f"({now - keep}")
                            await pipe.execute()
                    except (RedisConnectionError, RedisTimeout, OSError) as exc:
                        self.stats.errors += 1
                        if not failing:
                            failing = True
                            log.warning(
                                "sink=redis target=%s event=unreachable error=%r (retrying)",
                                self.target,
                                str(exc),
                            )
                        await asyncio.sleep(next(delays))
                        continue
                    except RedisError as exc:
                        self.stats.errors += 1
                        self.stats.dropped += count
                        log.warning(
                            "sink=redis target=%s event=write-refused error=%r",
                            self.target,
                            str(exc),
                        )
                        break
                    self.stats.sent += count
                    if failing:
                        failing = False
                        log.info("sink=redis target=%s event=recovered", self.target)
                    break
        finally:
            self._client = None
            await client.aclose()

    async def aclose(self) -> None:
        self._queue.discard()
