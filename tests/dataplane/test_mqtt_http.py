"""The mqtt and http sinks against a real Mosquitto and a local aiohttp receiver."""

from __future__ import annotations

import base64
import json
import re
import urllib.parse
from pathlib import Path

import pytest

from mapper_sdk.mqtt import MqttSettings
from mapper_sdk.runtime.reporters import ReporterContext
from mapper_sdk.runtime.reporters.http import HttpReporter
from mapper_sdk.runtime.reporters.mqtt import MqttReporter
from mapper_sdk.testing import Mosquitto

from ..mqttpeer import mqtt_peer
from .conftest import device, http_receiver, items, running, until

MQTT_DEVICE = """
devices:
  - name: {name}
    namespace: plant
    protocol: mem
    connection: {{device: {name}}}
    properties:
      - {{name: temp, type: float, visitor: {{address: t}}, pushMethod: {{mqtt: {mqtt}}}}}
      - {{name: count, type: int, visitor: {{address: c}}, pushMethod: {{mqtt: {mqtt}}}}}
      - {{name: running, type: boolean, visitor: {{address: o}}, pushMethod: {{mqtt: {mqtt}}}}}
      - {{name: label, type: string, visitor: {{address: l}}, pushMethod: {{mqtt: {mqtt}}}}}
      - {{name: blob, type: bytes, visitor: {{address: b}}, pushMethod: {{mqtt: {mqtt}}}}}
"""


async def test_mqtt_json_payloads_on_templated_topics(mosquitto: Mosquitto) -> None:
    cfg = (
        f"{{address: '{mosquitto.url}', topic: 'data/{{namespace}}/{{device}}/{{property}}', "
        "qos: 1, retained: true}"
    )
    spec = device(MQTT_DEVICE.format(name="mq-json", mqtt=cfg))
    reporter = MqttReporter(spec.properties[0].push_method.mqtt or {}, ReporterContext())
    values = {"temp": 21.5, "count": 7, "running": True, "label": 'say "hi"', "blob": b"\x00\xff"}
    async with mqtt_peer(mosquitto.port, "data/plant/mq-json/#") as peer, running(reporter):
        reporter.offer(spec, items(spec, values))
        await peer.wait_for(lambda m: len(m) >= 5)
        await until(lambda: reporter.stats.sent == 5)
    docs = {m.topic: m.json for m in peer.messages}
    assert set(docs) == {f"data/plant/mq-json/{p}" for p in values}
    temp = docs["data/plant/mq-json/temp"]
    assert temp == {
        "device": "mq-json",
        "namespace": "plant",
        "property": "temp",
        "value": 21.5,
        "type": "float",
        "timestamp": 1_700_000_000_123,
        "quality": "good",
    }
    assert docs["data/plant/mq-json/count"]["value"] == 7
    assert docs["data/plant/mq-json/running"]["value"] is True
    assert docs["data/plant/mq-json/label"]["value"] == 'say "hi"'
    assert base64.b64decode(docs["data/plant/mq-json/blob"]["value"]) == b"\x00\xff"
    assert docs["data/plant/mq-json/count"]["type"] == "int"
    assert reporter.stats.sent == 5
    assert reporter.stats.queued == 5
    assert reporter.stats.dropped == 0
    # retained: a late subscriber still gets the last value.
    async with mqtt_peer(mosquitto.port, "data/plant/mq-json/temp") as late:
        (msg,) = await late.wait_for(lambda m: m[:1])
    assert msg.json["value"] == 21.5


async def test_mqtt_kubeedge_legacy_line_on_the_mappers_broker(mosquitto: Mosquitto) -> None:
    spec = device(
        MQTT_DEVICE.format(name="mq-legacy", mqtt="{topic: legacy/out, format: kubeedge-legacy}")
    )
    # No address: the mapper's own broker, with a client id of its own.
    context = ReporterContext(mqtt=MqttSettings.from_url(mosquitto.url, client_id="mapper-1"))
    reporter = MqttReporter({"topic": "legacy/out", "format": "kubeedge-legacy"}, context)
    assert reporter.settings.client_id == "mapper-1-push"
    async with mqtt_peer(mosquitto.port, "legacy/out") as peer, running(reporter):
        reporter.offer(spec, items(spec, {"temp": 19.25, "running": False}))
        await peer.wait_for(lambda m: len(m) >= 2)
    lines = [m.payload.decode() for m in peer.messages]
    pattern = r"^time is \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  legacy/out: (.*)$"
    assert [re.match(pattern, line).group(1) for line in lines] == ["19.25", "false"]  # type: ignore[union-attr]


async def test_mqtt_bounded_queue_drops_oldest_and_counts(mosquitto: Mosquitto) -> None:
    spec = device(
        MQTT_DEVICE.format(name="mq-bound", mqtt=f"{{address: '{mosquitto.url}', queueSize: 4}}")
    )
    reporter = MqttReporter(spec.properties[0].push_method.mqtt or {}, ReporterContext())
    # Nothing sends yet: offers pile up past the bound.
    for i in range(3):
        reporter.offer(spec, items(spec, {"temp": float(i), "count": i}))
    assert reporter.stats.queued == 6
    assert reporter.stats.depth == 4
    assert reporter.stats.dropped == 2
    async with mqtt_peer(mosquitto.port, "mapperkit/plant/mq-bound/#") as peer:
        async with running(reporter):
            await peer.wait_for(lambda m: len(m) >= 4)
            await until(lambda: reporter.stats.sent == 4)
    assert sorted(m.json["value"] for m in peer.on("/temp")) == [1.0, 2.0]  # batch 0 dropped
    assert reporter.stats.sent == 4


@pytest.mark.parametrize("qos", [0, 1])
async def test_mqtt_keeps_readings_while_the_broker_is_away(
    private_mosquitto: Mosquitto, qos: int
) -> None:
    broker = private_mosquitto
    spec = device(
        MQTT_DEVICE.format(name="mq-outage", mqtt=f"{{address: '{broker.url}', qos: {qos}}}")
    )
    reporter = MqttReporter(spec.properties[0].push_method.mqtt or {}, ReporterContext())
    async with running(reporter):
        await until(lambda: reporter.link is not None and reporter.link.connected)
        broker.stop()
        await until(lambda: reporter.link is not None and not reporter.link.connected)
        reporter.offer(spec, items(spec, {"temp": 1.5}))
        reporter.offer(spec, items(spec, {"temp": 2.5}))
        broker.start()
        async with mqtt_peer(broker.port, "mapperkit/plant/mq-outage/#") as peer:
            await peer.wait_for(lambda m: len(m) >= 2, timeout=15)
    assert [m.json["value"] for m in peer.messages] == [1.5, 2.5]
    assert reporter.stats.dropped == 0


HTTP_DEVICE = """
devices:
  - name: {name}
    protocol: mem
    connection: {{device: {name}}}
    properties:
      - {{name: temp, type: float, visitor: {{address: t}}, pushMethod: {{http: {http}}}}}
      - {{name: count, type: int, visitor: {{address: c}}, pushMethod: {{http: {http}}}}}
"""


async def test_http_json_batch_per_device_per_report() -> None:
    async with http_receiver() as rx:
        host, port = rx.url.rsplit(":", 1)
        cfg = f"{{hostName: '{host}', port: {port}, requestPath: /ingest}}"
        spec = device(HTTP_DEVICE.format(name="http-json", http=cfg))
        reporter = HttpReporter(spec.properties[0].push_method.http or {}, ReporterContext())
        async with running(reporter):
            reporter.offer(spec, items(spec, {"temp": 20.5, "count": 3}))
            reporter.offer(spec, items(spec, {"temp": 20.75}, ts=1_700_000_001_000))
            await until(lambda: reporter.stats.sent == 3)
    assert [r.path for r in rx.requests] == ["/ingest", "/ingest"]
    assert rx.requests[0].headers["Content-Type"] == "application/json"
    first = json.loads(rx.requests[0].body)
    assert first == [
        {
            "device": "http-json",
            "namespace": "default",
            "property": "temp",
            "value": 20.5,
            "type": "float",
            "timestamp": 1_700_000_000_123,
            "quality": "good",
        },
        {
            "device": "http-json",
            "namespace": "default",
            "property": "count",
            "value": 3,
            "type": "int",
            "timestamp": 1_700_000_000_123,
            "quality": "good",
        },
    ]
    assert json.loads(rx.requests[1].body)[0]["value"] == 20.75


async def test_http_kubeedge_legacy_form_body() -> None:
    async with http_receiver() as rx:
        host, port = rx.url.rsplit(":", 1)
        cfg = f"{{hostName: '{host}', port: {port}, requestPath: /kube, format: kubeedge-legacy}}"
        spec = device(HTTP_DEVICE.format(name="http-legacy", http=cfg))
        reporter = HttpReporter(spec.properties[0].push_method.http or {}, ReporterContext())
        async with running(reporter):
            reporter.offer(spec, items(spec, {"temp": 20.5, "count": 3}))
            await until(lambda: reporter.stats.sent == 2)
    forms = [urllib.parse.parse_qs(r.body.decode()) for r in rx.requests]
    assert rx.requests[0].headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert [f.get("temp", f.get("count")) for f in forms] == [["20.5"], ["3"]]
    assert all(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", f["time"][0]) for f in forms)


async def test_http_retries_server_errors_then_delivers(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    async with http_receiver() as rx:
        rx.plan = [503, 500]
        host, port = rx.url.rsplit(":", 1)
        cfg = f"{{hostName: '{host}', port: {port}, tokenFile: '{token_file}', retries: 3}}"
        spec = device(HTTP_DEVICE.format(name="http-retry", http=cfg))
        reporter = HttpReporter(spec.properties[0].push_method.http or {}, ReporterContext())
        async with running(reporter):
            reporter.offer(spec, items(spec, {"temp": 1.0}))
            await until(lambda: reporter.stats.sent == 1)
    assert len(rx.requests) == 3  # two failures, then the same body again
    assert rx.requests[0].body == rx.requests[2].body
    assert {r.headers["Authorization"] for r in rx.requests} == {"Bearer s3cret"}
    assert reporter.stats.errors == 2
    assert reporter.stats.dropped == 0


async def test_http_client_errors_are_not_retried_and_count_as_dropped() -> None:
    async with http_receiver(ok=400) as rx:
        host, port = rx.url.rsplit(":", 1)
        spec = device(
            HTTP_DEVICE.format(name="http-400", http=f"{{hostName: '{host}', port: {port}}}")
        )
        reporter = HttpReporter(spec.properties[0].push_method.http or {}, ReporterContext())
        async with running(reporter):
            reporter.offer(spec, items(spec, {"temp": 1.0, "count": 2}))
            await until(lambda: reporter.stats.dropped == 2)
    assert len(rx.requests) == 1
    assert reporter.stats.sent == 0
    assert reporter.stats.errors == 1


async def test_http_unreachable_host_gives_up_after_retries() -> None:
    async with http_receiver() as rx:
        host, port = rx.url.rsplit(":", 1)
    # The receiver is gone: connection refused on every attempt.
    spec = device(
        HTTP_DEVICE.format(
            name="http-gone", http=f"{{hostName: '{host}', port: {port}, retries: 1}}"
        )
    )
    reporter = HttpReporter(spec.properties[0].push_method.http or {}, ReporterContext())
    async with running(reporter):
        reporter.offer(spec, items(spec, {"temp": 1.0}))
        await until(lambda: reporter.stats.dropped == 1)
    assert reporter.stats.errors == 2


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"hostName": "http://127.0.0.1/path"}, "put the path in requestPath"),
        ({"hostName": "ftp://x"}, "is not an http(s) host"),
        ({"hostName": "127.0.0.1", "token": "abc"}, "credentials never go in the device YAML"),
        ({"hostName": "127.0.0.1", "timeout": 0}, "timeout"),
        ({"hostName": "127.0.0.1", "colour": "red"}, "colour: unknown field"),
    ],
)
def test_http_config_errors(config: dict[str, object], message: str) -> None:
    from mapper_sdk.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        HttpReporter.validate(config)
