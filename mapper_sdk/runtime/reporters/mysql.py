"""The ``mysql`` sink (``pushMethod.dbMethod.mysql``): KubeEdge's table per property, or one table.

Config, as KubeEdge writes it::

    dbMethod:
      mysql:
        mysqlClientConfig: {addr: 127.0.0.1:3306, database: edge, userName: mapper}

The password comes from the ``PASSWORD`` environment variable, as KubeEdge
reads it (or ``passwordEnv``/``passwordFile``).

By default each property gets KubeEdge's table, named
``<namespace>/<device>/<property>``, with the columns ``id`` (auto increment),
``ts`` (``DATETIME(3)``, UTC) and ``field`` (the value as twin text). A name
longer than MySQL's 64 characters is shortened to 55 characters, ``~`` and 8
hex digits of its SHA-1. With the Mapperkit extension ``table: <name>`` every
reading goes to one table instead, with the columns ``id``, ``ts``,
``ts_ms`` (ms since the epoch), ``namespace``, ``device``, ``property``,
``type``, ``value`` and ``quality``, indexed on device, property and time.

Readings are inserted in batches (one multi-row ``INSERT`` per table); while
the server is unreachable the batch is retried with doubling delays and newer
readings wait in the bounded queue (``queueSize``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import re
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from pydantic import Field

from ...codec import format_text
from ...errors import ConfigError
from ...model import DeviceSpec, PropertySpec
from ._common import (
    DEFAULT_QUEUE,
    SINKS_EXTRA,
    Batch,
    BatchQueue,
    PushConfig,
    backoff_delays,
    parse_config,
    read_secret,
)
from .base import Item, Reporter, ReporterContext

__all__ = ["MysqlReporter", "table_name"]

log = logging.getLogger("mapper_sdk.reporters")

_MAX_IDENT = 64
_TABLE_RE = re.compile(r"^[A-Za-z0-9_$]{1,64}$")

_PROPERTY_TABLE = (
    "CREATE TABLE IF NOT EXISTS `{}` ("
    "id INT AUTO_INCREMENT PRIMARY KEY, ts DATETIME(3) NOT NULL, field TEXT)"
)
_EXISTS = (
    "SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = %s"
)
_READINGS_TABLE = (
    "CREATE TABLE IF NOT EXISTS `{}` ("
    "id BIGINT AUTO_INCREMENT PRIMARY KEY, ts DATETIME(3) NOT NULL, ts_ms BIGINT NOT NULL, "
    "namespace VARCHAR(253) NOT NULL, device VARCHAR(253) NOT NULL, "
    "property VARCHAR(128) NOT NULL, type VARCHAR(16) NOT NULL, value TEXT, "
    "quality VARCHAR(16) NOT NULL, INDEX device_property_time (device, property, ts_ms))"
)


def table_name(device: DeviceSpec[Any, Any], prop: PropertySpec[Any]) -> str:
    """KubeEdge's per-property table name, shortened to fit MySQL's 64 characters."""
    name = f"{device.namespace}/{device.name}/{prop.name}"
    if len(name) <= _MAX_IDENT:
        return name
    digest = hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()[:8]
    return f"{name[:55]}~{digest}"


class MysqlClientConfig(PushConfig):
    _allowed_secrets = frozenset({"userName"})

    addr: str = "127.0.0.1:3306"
    database: str
    userName: str = "root"

    def host_port(self) -> tuple[str, int]:
        host, sep, port = self.addr.rpartition(":")
        if not sep:
            return self.addr, 3306
        try:
            return host.strip("[]"), int(port)
        except ValueError:
            raise ConfigError(f"mysqlClientConfig.addr: {self.addr!r} is not host:port") from None


class MysqlPushConfig(PushConfig):
    """``pushMethod.dbMethod.mysql``."""

    mysqlClientConfig: MysqlClientConfig
    table: str | None = None
    passwordEnv: str | None = None
    passwordFile: str | None = None
    poolSize: int = Field(default=2, ge=1, le=32)
    queueSize: int = Field(default=DEFAULT_QUEUE, ge=1)


def _check(cfg: MysqlPushConfig) -> None:
    cfg.mysqlClientConfig.host_port()
    if cfg.table is not None and not _TABLE_RE.match(cfg.table):
        raise ConfigError(
            f"table: {cfg.table!r} must be 1-64 letters, digits, '_' or '$' (a plain table name)"
        )


def _utc(ts_ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts_ms / 1000.0, dt.UTC).replace(tzinfo=None)


class MysqlReporter(Reporter):
    """Inserts readings into MySQL/MariaDB through aiomysql; see the module docstring."""

    kind = "mysql"
    batch_limit = 5000

    def __init__(self, config: Mapping[str, Any], context: ReporterContext) -> None:
        super().__init__(config, context)
        try:
            import aiomysql  # noqa: F401 - checked here, used in run()
        except ImportError:
            raise ConfigError(f"the mysql sink needs aiomysql: {SINKS_EXTRA}") from None
        cfg = parse_config(MysqlPushConfig, config)
        _check(cfg)
        self._cfg = cfg
        client = cfg.mysqlClientConfig
        self._host, self._port = client.host_port()
        self.target = f"mysql://{self._host}:{self._port}/{client.database}"
        self._password = read_secret(
            context.environ,
            env=cfg.passwordEnv or "PASSWORD",
            file=cfg.passwordFile,
            what="MySQL password",
        )
        self._queue = BatchQueue(self.stats, cfg.queueSize)
        self._tables: dict[PropertySpec[Any], str] = {}
        self._created: set[str] = set()
        self._pool: Any = None

    @classmethod
    def validate(cls, config: Mapping[str, Any]) -> None:
        _check(parse_config(MysqlPushConfig, config))

    @classmethod
    def pool_key(cls, config: Mapping[str, Any]) -> Hashable:
        cfg = parse_config(MysqlPushConfig, config)
        client = cfg.mysqlClientConfig
        return (
            *client.host_port(),
            client.database,
            client.userName,
            cfg.table,
            cfg.passwordEnv,
            cfg.passwordFile,
        )

    def offer(self, device: DeviceSpec[Any, Any], items: Sequence[Item]) -> None:
        self._queue.put(device, items)

    def rows(self, batches: Sequence[Batch]) -> dict[str, list[tuple[Any, ...]]]:
        """Rows to insert, by table."""
        out: dict[str, list[tuple[Any, ...]]] = {}
        single = self._cfg.table
        if single is not None:
            rows = out[single] = []
            for device, items in batches:
                for prop, value, reading in items:
                    ts = reading.source_timestamp or reading.timestamp
                    rows.append(
                        (
                            _utc(ts),
                            ts,
                            device.namespace,
                            device.name,
                            prop.name,
                            prop.type.value,
                            format_text(value, prop.type),
                            reading.quality.value,
                        )
                    )
            return out
        tables = self._tables
        for device, items in batches:
            for prop, value, reading in items:
                table = tables.get(prop)
                if table is None:
                    if len(tables) > 100_000:
                        tables.clear()
                    table = tables[prop] = table_name(device, prop)
                ts = reading.source_timestamp or reading.timestamp
                bucket = out.get(table)
                if bucket is None:
                    bucket = out[table] = []
                bucket.append((_utc(ts), format_text(value, prop.type)))
        return out

    async def _write(self, rows: dict[str, list[tuple[Any, ...]]]) -> None:
        single = self._cfg.table is not None
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            for table, values in rows.items():
                quoted = table.replace("`", "``")
                if table not in self._created:
                    # Look first: IF NOT EXISTS on an existing table raises a server warning.
                    await cur.execute(_EXISTS, (table,))
                    if not await cur.fetchone():
                        ddl = _READINGS_TABLE if single else _PROPERTY_TABLE
                        await cur.execute(ddl.format(quoted))
                    self._created.add(table)
                if single:
                    sql = (
                        f"INSERT INTO `{quoted}` (ts, ts_ms, namespace, device, property, type, "
                        "value, quality) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                    )
                else:
                    sql = f"INSERT INTO `{quoted}` (ts, field) VALUES (%s, %s)"
                await cur.executemany(sql, values)

    async def run(self) -> None:
        import aiomysql
        import pymysql

        client = self._cfg.mysqlClientConfig
        failing = False
        delays = backoff_delays(0.5, 15.0)
        while self._pool is None:
            try:
                self._pool = await aiomysql.create_pool(
                    host=self._host,
                    port=self._port,
                    user=client.userName,
                    password=self._password or "",
                    db=client.database,
                    autocommit=True,
                    minsize=1,
                    maxsize=self._cfg.poolSize,
                    connect_timeout=5,
                    charset="utf8mb4",
                )
            except (pymysql.err.OperationalError, OSError) as exc:
                self.stats.errors += 1
                if not failing:
                    failing = True
                    log.warning(
                        "sink=mysql target=%s event=unreachable error=%r (retrying)",
                        self.target,
                        str(exc),
                    )
                await asyncio.sleep(next(delays))
        try:
            while True:
                batches = await self._queue.take(self.batch_limit)
                count = sum(len(items) for _, items in batches)
                rows = self.rows(batches)
                delays = backoff_delays(0.2, 15.0)
                while True:
                    try:
                        await self._write(rows)
                    except (
                        pymysql.err.OperationalError,
                        pymysql.err.InterfaceError,
                        OSError,
                    ) as exc:
                        self.stats.errors += 1
                        if not failing:
                            failing = True
                            log.warning(
                                "sink=mysql target=%s event=write-failed error=%r (retrying)",
                                self.target,
                                str(exc),
                            )
                        await asyncio.sleep(next(delays))
                        continue
                    except pymysql.err.MySQLError as exc:
                        self.stats.errors += 1
                        self.stats.dropped += count
                        log.warning(
                            "sink=mysql target=%s event=write-refused error=%r",
                            self.target,
                            str(exc),
                        )
                        break
                    self.stats.sent += count
                    if failing:
                        failing = False
                        log.info("sink=mysql target=%s event=recovered", self.target)
                    break
        finally:
            pool, self._pool = self._pool, None
            pool.close()
            await pool.wait_closed()

    async def aclose(self) -> None:
        self._queue.discard()
