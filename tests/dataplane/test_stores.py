"""The redis, mysql, influxdb2 and otel sinks against real receivers."""

from __future__ import annotations

import json
import re
import sys
import uuid
from typing import Any

import pytest

from mapper_sdk.errors import ConfigError
from mapper_sdk.runtime.reporters import ReporterContext
from mapper_sdk.runtime.reporters.influxdb2 import InfluxReporter
from mapper_sdk.runtime.reporters.mysql import MysqlReporter, table_name
from mapper_sdk.runtime.reporters.otel import OtelReporter
from mapper_sdk.runtime.reporters.redis import RedisReporter

from .conftest import device, http_receiver, items, running, until

DEVICE = """
devices:
  - name: {name}
    protocol: mem
    connection: {{device: {name}}}
    properties:
      - {{name: temp, type: float, unit: C, visitor: {{address: t}}, pushMethod: {push}}}
      - {{name: count, type: int, visitor: {{address: c}}, pushMethod: {push}}}
      - {{name: running, type: boolean, visitor: {{address: o}}, pushMethod: {push}}}
      - {{name: label, type: string, visitor: {{address: l}}, pushMethod: {push}}}
"""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- redis
async def test_redis_sorted_set_per_device(redis_address: tuple[str, int]) -> None:
    from redis.asyncio import Redis

    name = unique("rds")
    addr = f"{redis_address[0]}:{redis_address[1]}"
    spec = device(
        DEVICE.format(
            name=name,
            push=f"{{dbMethod: {{redis: {{redisClientConfig: {{addr: '{addr}', poolsize: 2}}}}}}}}",
        )
    )
    config = spec.properties[0].push_method.dbMethod["redis"]  # type: ignore[index,union-attr]
    reporter = RedisReporter(config, ReporterContext())
    client = Redis(host=redis_address[0], port=redis_address[1])
    try:
        async with running(reporter):
            reporter.offer(spec, items(spec, {"temp": 21.5, "count": 4}, ts=1_700_000_000_000))
            reporter.offer(spec, items(spec, {"temp": 22.0}, ts=1_700_000_001_000))
            await until(lambda: reporter.stats.sent == 3)
        entries = await client.zrange(name, 0, -1, withscores=True)
    finally:
        await client.delete(name)
        await client.aclose()
    docs = [(json.loads(member), score) for member, score in entries]
    # Equal scores order by member, so "count" sorts before "temp".
    assert [(d["property"], d["value"], s) for d, s in docs] == [
        ("count", 4, 1_700_000_000_000),
        ("temp", 21.5, 1_700_000_000_000),
        ("temp", 22.0, 1_700_000_001_000),
    ]
    assert docs[-1][0] == {
        "device": name,
        "namespace": "default",
        "property": "temp",
        "value": 22.0,
        "type": "float",
        "timestamp": 1_700_000_001_000,
        "quality": "good",
    }


async def test_redis_key_template_retention_and_legacy_member(
    redis_address: tuple[str, int],
) -> None:
    from redis.asyncio import Redis

    name = unique("rdl")
    addr = f"{redis_address[0]}:{redis_address[1]}"
    push = (
        f"{{dbMethod: {{redis: {{redisClientConfig: {{addr: '{addr}'}}, "
        "key: '{namespace}/{device}', "
        "retention: 60000, format: kubeedge-legacy}}}"
    )
    spec = device(DEVICE.format(name=name, push=push))
    config = spec.properties[0].push_method.dbMethod["redis"]  # type: ignore[index,union-attr]
    reporter = RedisReporter(config, ReporterContext())
    key = f"default/{name}"
    client = Redis(host=redis_address[0], port=redis_address[1])
    try:
        async with running(reporter):
            # An old reading (beyond retention) and a fresh one.
            reporter.offer(spec, items(spec, {"temp": 1.0}, ts=1_000))
            await until(lambda: reporter.stats.sent == 1)
            import time

            now = int(time.time() * 1000)
            reporter.offer(spec, items(spec, {"count": 9}, ts=now))
            await until(lambda: reporter.stats.sent == 2)
        members = await client.zrange(key, 0, -1)
    finally:
        await client.delete(key)
        await client.aclose()
    assert members == [f"TimeStamp: {now} PropertyName: count data: 9".encode()]


def test_redis_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    # The one fault that cannot be produced for real here: the extra not installed.
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ConfigError, match=re.escape("pip install mapperkit[sinks]")):
        RedisReporter({"redisClientConfig": {"addr": "127.0.0.1:6379"}}, ReporterContext())


def test_redis_password_comes_from_the_environment() -> None:
    with pytest.raises(ConfigError, match="credentials never go in the device YAML"):
        RedisReporter.validate({"redisClientConfig": {"addr": "h:1"}, "password": "x"})
    reporter = RedisReporter(
        {"redisClientConfig": {"addr": "h:1"}}, ReporterContext(environ={"PASSWORD": "pw"})
    )
    assert reporter._password == "pw"
    assert reporter.target == "redis://h:1/0"


# --------------------------------------------------------------------------- mysql
def _mysql_push(address: tuple[str, int], extra: str = "") -> str:
    return (
        f"{{dbMethod: {{mysql: {{mysqlClientConfig: {{addr: '{address[0]}:{address[1]}', "
        f"database: test, userName: root}}{extra}}}}}}}"
    )


async def _query(address: tuple[str, int], sql: str) -> list[tuple[Any, ...]]:
    import aiomysql

    conn = await aiomysql.connect(
        host=address[0], port=address[1], user="root", password="", db="test", autocommit=True
    )
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql)
            return list(await cur.fetchall())
    finally:
        conn.close()


@pytest.mark.filterwarnings("error")
async def test_mysql_table_per_property(mysql_address: tuple[str, int]) -> None:
    name = unique("my")
    spec = device(DEVICE.format(name=name, push=_mysql_push(mysql_address)))
    config = spec.properties[0].push_method.dbMethod["mysql"]  # type: ignore[index,union-attr]
    reporter = MysqlReporter(config, ReporterContext(environ={}))
    tables = [table_name(spec, p) for p in spec.properties]
    assert tables[0] == f"default/{name}/temp"
    try:
        async with running(reporter):
            reporter.offer(spec, items(spec, {"temp": 21.5, "running": True}, ts=1_700_000_000_250))
            reporter.offer(spec, items(spec, {"temp": 22.5}, ts=1_700_000_001_000))
            await until(lambda: reporter.stats.sent == 3)
        # A second reporter (a restarted mapper) finds the tables and appends.
        again = MysqlReporter(config, ReporterContext(environ={}))
        async with running(again):
            again.offer(spec, items(spec, {"temp": 23.5}, ts=1_700_000_002_000))
            await until(lambda: again.stats.sent == 1)
        temp = await _query(mysql_address, f"SELECT ts, field FROM `{tables[0]}` ORDER BY id")
        running_rows = await _query(mysql_address, f"SELECT field FROM `{tables[2]}`")
    finally:
        for table in (tables[0], tables[2]):
            await _query(mysql_address, f"DROP TABLE IF EXISTS `{table}`")
    assert [(ts.isoformat(), field) for ts, field in temp] == [
        ("2023-11-14T22:13:20.250000", "21.5"),
        ("2023-11-14T22:13:21", "22.5"),
        ("2023-11-14T22:13:22", "23.5"),
    ]
    assert running_rows == [("true",)]


async def test_mysql_one_readings_table(mysql_address: tuple[str, int]) -> None:
    name = unique("myt")
    table = f"readings_{uuid.uuid4().hex[:8]}"
    spec = device(DEVICE.format(name=name, push=_mysql_push(mysql_address, f", table: {table}")))
    config = spec.properties[0].push_method.dbMethod["mysql"]  # type: ignore[index,union-attr]
    reporter = MysqlReporter(config, ReporterContext(environ={}))
    try:
        async with running(reporter):
            reporter.offer(spec, items(spec, {"temp": 21.5, "count": 3, "label": "ok"}))
            await until(lambda: reporter.stats.sent == 3)
        rows = await _query(
            mysql_address,
            f"SELECT ts_ms, namespace, device, property, type, value, quality FROM `{table}` "
            "ORDER BY id",
        )
    finally:
        await _query(mysql_address, f"DROP TABLE IF EXISTS `{table}`")
    assert rows == [
        (1_700_000_000_123, "default", name, "temp", "float", "21.5", "good"),
        (1_700_000_000_123, "default", name, "count", "int", "3", "good"),
        (1_700_000_000_123, "default", name, "label", "string", "ok", "good"),
    ]


def test_mysql_long_table_names_are_shortened() -> None:
    spec = device(DEVICE.format(name="d" * 60, push="{}"))
    name = table_name(spec, spec.properties[0])
    assert len(name) == 64
    assert name.startswith("default/ddd")
    assert re.search(r"~[0-9a-f]{8}$", name)
    with pytest.raises(ConfigError, match="table"):
        MysqlReporter.validate(
            {"mysqlClientConfig": {"database": "x"}, "table": "bad name; DROP TABLE x"}
        )


# --------------------------------------------------------------------------- influxdb2
async def test_influxdb2_line_protocol() -> None:
    async with http_receiver(ok=204) as rx:
        push = (
            "{dbMethod: {influxdb2: {"
            f"influxdb2ClientConfig: {{url: '{rx.url}', org: edge, bucket: tele}}, "
            "influxdb2DataConfig: {measurement: 'plant {device}', tag: {site: 'north,1'}, "
            "fieldKey: '{property}'}}}}"
        )
        spec = device(DEVICE.format(name="inf-1", push=push))
        config = spec.properties[0].push_method.dbMethod["influxdb2"]  # type: ignore[index,union-attr]
        reporter = InfluxReporter(config, ReporterContext(environ={"TOKEN": "tok-1"}))
        async with running(reporter):
            reporter.offer(
                spec,
                items(spec, {"temp": 21.5, "count": 3, "running": True, "label": 'a "b"'}),
            )
            await until(lambda: reporter.stats.sent == 4)
    (request,) = rx.requests
    assert request.path == "/api/v2/write"
    assert request.query == {"org": "edge", "bucket": "tele", "precision": "ms"}
    assert request.headers["Authorization"] == "Token tok-1"
    lines = request.body.decode().split("\n")
    tags = r"device=inf-1,namespace=default,property={p},site=north\,1"
    assert lines == [
        r"plant\ inf-1," + tags.format(p="temp") + " temp=21.5 1700000000123",
        r"plant\ inf-1," + tags.format(p="count") + " count=3i 1700000000123",
        r"plant\ inf-1," + tags.format(p="running") + " running=true 1700000000123",
        r"plant\ inf-1," + tags.format(p="label") + r' label="a \"b\"" 1700000000123',
    ]


async def test_influxdb2_retries_then_drops_and_kubeedge_tags_only() -> None:
    async with http_receiver(ok=503) as rx:
        push = (
            "{dbMethod: {influxdb2: {"
            f"influxdb2ClientConfig: {{url: '{rx.url}', org: o, bucket: b}}, "
            "influxdb2DataConfig: {measurement: m, fieldKey: v}, autoTags: false, retries: 1}}}"
        )
        spec = device(DEVICE.format(name="inf-2", push=push))
        config = spec.properties[0].push_method.dbMethod["influxdb2"]  # type: ignore[index,union-attr]
        reporter = InfluxReporter(config, ReporterContext(environ={}))
        async with running(reporter):
            reporter.offer(spec, items(spec, {"temp": 1.0, "count": float("nan")}))
            await until(lambda: reporter.stats.dropped == 2)
    assert len(rx.requests) == 2
    assert rx.requests[0].body == b"m v=1.0 1700000000123"  # the NaN has no line form
    assert "Authorization" not in rx.requests[0].headers
    assert reporter.stats.errors == 2


# --------------------------------------------------------------------------- otel
async def test_otel_gauges_over_otlp_http() -> None:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    async with http_receiver() as rx:
        push = f"{{otel: {{endpointURL: '{rx.url}', interval: 50}}}}"
        spec = device(DEVICE.format(name="otl-1", push=push))
        reporter = OtelReporter(
            spec.properties[0].push_method.otel or {},
            ReporterContext(environ={"OTEL_EXPORTER_OTLP_HEADERS": "api-key=k1"}),
        )
        async with running(reporter):
            reporter.offer(spec, items(spec, {"temp": 21.5, "count": 3, "running": True}))
            reporter.offer(spec, items(spec, {"label": "no gauge"}))
            await until(lambda: reporter.stats.sent == 3)
    request = rx.requests[0]
    assert request.path == "/v1/metrics"
    assert request.headers["Content-Type"] == "application/x-protobuf"
    assert request.headers["api-key"] == "k1"
    export = ExportMetricsServiceRequest.FromString(request.body)
    (resource,) = export.resource_metrics
    assert {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"] == (
        "mapperkit"
    )
    metrics = {m.name: m for scope in resource.scope_metrics for m in scope.metrics}
    assert set(metrics) == {"temp", "count", "running"}
    assert metrics["temp"].unit == "C"
    (point,) = metrics["temp"].gauge.data_points
    assert point.as_double == 21.5
    attrs = {a.key: a.value.string_value for a in point.attributes}
    assert attrs == {"device.id": "default/otl-1", "device": "otl-1", "namespace": "default"}
    assert metrics["count"].gauge.data_points[0].as_int == 3
    assert metrics["running"].gauge.data_points[0].as_int == 1
    assert reporter.stats.dropped == 1  # the string property


def test_otel_config_errors() -> None:
    with pytest.raises(ConfigError, match="endpointURL"):
        OtelReporter.validate({"endpointURL": "grpc://x"})
    with pytest.raises(ConfigError, match="endpointURL: required field is missing"):
        OtelReporter.validate({})
