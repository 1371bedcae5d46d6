"""Sink configs are validated once, when the mapper starts, with the property's path."""

from __future__ import annotations

import re

import pytest

from mapper_sdk.errors import ConfigError
from mapper_sdk.runtime import Mapper, MapperOptions
from mapper_sdk.runtime.reporters.influxdb2 import InfluxReporter
from mapper_sdk.runtime.reporters.mqtt import MqttReporter

from .conftest import DRIVERS, device

DEVICE = """
devices:
  - name: cfg
    protocol: mem
    connection: {{device: cfg}}
    properties:
      - {{name: ok, type: float, visitor: {{address: a}}}}
      - {{name: bad, type: float, visitor: {{address: b}}, pushMethod: {push}}}
"""


@pytest.mark.parametrize(
    ("push", "message"),
    [
        (
            "{mqtt: {topic: 'a/#'}}",
            "pushMethod.mqtt: topic: 'a/#' must be non-empty and hold no wildcard",
        ),
        ("{mqtt: {topic: 'a/{site}'}}", "{site} is not a known field"),
        ("{mqtt: {address: 'mqtt://u:p@h:1883'}}", "credentials never go in the device YAML"),
        ("{mqtt: {password: x}}", "password: credentials never go in the device YAML"),
        ("{mqtt: {qos: 3}}", "qos: Input should be less than or equal to 2"),
        ("{http: {port: 80}}", "pushMethod.http: hostName: required field is missing"),
        ("{dbMethod: {redis: {redisClientConfig: {addr: 'h:x'}}}}", "is not host:port"),
        ("{dbMethod: {mysql: {mysqlClientConfig: {addr: 'h:1'}}}}", "database: required field"),
        (
            "{dbMethod: {influxdb2: {influxdb2ClientConfig: {url: x, org: o, bucket: b}}}}",
            "must be http(s)://host[:port]",
        ),
        ("{dbMethod: {TDEngine: {}}}", "no reporter installed for 'tdengine'"),
    ],
)
async def test_bad_sink_configs_fail_at_start_with_the_property_path(
    push: str, message: str
) -> None:
    spec = device(DEVICE.format(push=push))
    mapper = Mapper([spec], DRIVERS, MapperOptions(mqtt=None), twin=_NoTwin())
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        async with mapper:
            pass
    assert "spec.properties[1].pushMethod" in str(info.value)


class _NoTwin:
    def report(self, *args: object) -> None:
        pass

    def report_state(self, *args: object) -> None:
        pass


def test_pool_keys_share_a_connection_per_target() -> None:
    a = MqttReporter.pool_key({"address": "mqtt://h:1883", "topic": "x", "qos": 1})
    b = MqttReporter.pool_key({"address": "mqtt://h:1883", "topic": "y", "retained": True})
    c = MqttReporter.pool_key({"address": "mqtt://other:1883"})
    assert a == b != c
    client = {"url": "http://i:8086", "org": "o", "bucket": "b"}
    m1 = InfluxReporter.pool_key(
        {"influxdb2ClientConfig": client, "influxdb2DataConfig": {"measurement": "m1"}}
    )
    m2 = InfluxReporter.pool_key(
        {"influxdb2ClientConfig": client, "influxdb2DataConfig": {"measurement": "m2"}}
    )
    assert m1 == m2
