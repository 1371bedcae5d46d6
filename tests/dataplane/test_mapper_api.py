"""End to end: a Mapper with pushMethod sinks, its REST API, probes and Prometheus metrics."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mapper_sdk.api import ApiServer, add_api_options, api_from_args
from mapper_sdk.driver import Resources
from mapper_sdk.errors import ConfigError
from mapper_sdk.model import load_text
from mapper_sdk.mqtt import MqttSettings
from mapper_sdk.runtime import Mapper, MapperOptions, WorkerOptions
from mapper_sdk.testing import Mosquitto

from ..mqttpeer import mqtt_peer
from ..sdk.memdriver import MemBus, MemDriver
from .conftest import DRIVERS, Receiver, http_receiver, until

DEVICES = """
devices:
  - name: e2e
    namespace: plant
    protocol: mem
    connection: {{device: e2e}}
    collectCycle: 50
    reportCycle: 100
    reportStrategy: {{mode: on-change}}
    methods:
      - {{name: tune, propertyNames: [setpoint]}}
      - {{name: all, propertyNames: [temp, setpoint]}}
    properties:
      - name: temp
        type: float
        accessMode: ReadOnly
        unit: C
        description: water temperature
        visitor: {{address: t}}
        pushMethod:
          mqtt: {{topic: 'telemetry/{{device}}/{{property}}'}}
          http: {{hostName: '{host}', port: {port}, requestPath: /push}}
      - name: setpoint
        type: float
        minimum: 5
        maximum: 30
        visitor: {{address: sp}}
        pushMethod:
          mqtt: {{topic: 'telemetry/{{device}}/{{property}}', qos: 1}}
  - name: gone
    namespace: plant
    protocol: mem
    connection: {{device: gone}}
    properties:
      - {{name: temp, type: float, visitor: {{address: t}}}}
"""


@contextlib.asynccontextmanager
async def rig(
    broker: Mosquitto, receiver: Receiver, token: str | None = None
) -> AsyncIterator[tuple[Mapper, ApiServer, MemBus]]:
    host, port = receiver.url.rsplit(":", 1)
    inventory = load_text(DEVICES.format(host=host, port=port), drivers=DRIVERS)
    bus = MemBus()
    bus.device("e2e").values.update({"t": 20.5, "sp": 21.0})
    bus.device("gone").online = False
    resources = Resources()
    resources.extras["mem.bus"] = bus
    options = MapperOptions(
        mqtt=MqttSettings.from_url(broker.url),
        worker=WorkerOptions(backoff_initial=0.05, backoff_max=0.2),
    )
    mapper = Mapper(inventory.devices, DRIVERS, options, resources=resources)
    async with mapper, ApiServer(mapper, port=0, token=token) as api:
        yield mapper, api, bus


async def get(
    session: aiohttp.ClientSession, url: str, token: str | None = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.get(url, headers=headers) as resp:
        text = await resp.text()
        body = json.loads(text) if resp.content_type == "application/json" else text
        return resp.status, body


async def test_sinks_rest_api_and_metrics_of_a_running_mapper(mosquitto: Mosquitto) -> None:
    async with (
        http_receiver() as rx,
        mqtt_peer(mosquitto.port, "telemetry/#") as peer,
        rig(mosquitto, rx) as (mapper, api, bus),
        aiohttp.ClientSession() as http,
    ):
        base = f"{api.url}/api/v1"
        # The data plane: both sinks got the first values, on-change.
        await peer.wait_for(lambda m: len(m) >= 2)
        await until(lambda: rx.requests)
        assert {m.topic: m.json["value"] for m in peer.messages} == {
            "telemetry/e2e/temp": 20.5,
            "telemetry/e2e/setpoint": 21.0,
        }
        assert json.loads(rx.requests[0].body)[0]["property"] == "temp"

        status, body = await get(http, f"{base}/ping")
        assert status == 200
        assert body["apiVersion"] == "v1"
        assert body["statusCode"] == 200
        assert body["Message"] == "This is v1 API, the server is running normally."
        assert body["timeStamp"]

        # Live read.
        bus.device("e2e").values["t"] = 22.25
        status, body = await get(http, f"{base}/device/plant/e2e/temp")
        assert status == 200
        data = body["Data"]
        assert {
            k: data[k] for k in ("DeviceName", "PropertyName", "Namespace", "Value", "Type")
        } == {
            "DeviceName": "e2e",
            "PropertyName": "temp",
            "Namespace": "plant",
            "Value": "22.25",
            "Type": "float",
        }
        assert isinstance(data["TimeStamp"], int)

        # Unknown device, property, method.
        status, body = await get(http, f"{base}/device/plant/nope/temp")
        assert (status, body["statusCode"]) == (404, 404)
        assert "plant/nope" in body["Message"]
        status, body = await get(http, f"{base}/device/plant/e2e/pressure")
        assert status == 404
        assert "pressure" in body["Message"]
        status, _ = await get(http, f"{base}/devicemethod/plant/e2e/reboot/setpoint/1")
        assert status == 404
        status, _ = await get(http, f"{base}/devicemethod/plant/e2e/tune/temp/1")
        assert status == 404  # temp is not a property of method 'tune'

        # An unreachable device: 503.
        status, body = await get(http, f"{base}/device/plant/gone/temp")
        assert status == 503
        assert "offline" in body["Message"] or "unknown" in body["Message"]

        # Methods.
        status, body = await get(http, f"{base}/devicemethod/plant/e2e")
        assert status == 200
        methods = {m["Name"]: m for m in body["Data"]["Methods"]}
        assert methods["tune"] == {
            "Name": "tune",
            "Path": "/api/v1/devicemethod/plant/e2e/tune/{propertyName}/{data}",
            "Parameters": [{"PropertyName": "setpoint", "ValueType": "float"}],
        }

        # Writes: accepted, ReadOnly refused, out of range refused.
        status, body = await get(http, f"{base}/devicemethod/plant/e2e/tune/setpoint/25.5")
        assert status == 200, body
        assert body["Message"] == "Write data 25.5 to device plant/e2e successfully."
        assert body["Data"]["Value"] == "25.5"
        assert bus.device("e2e").values["sp"] == 25.5
        await peer.wait_for(lambda m: [x for x in m if x.json["value"] == 25.5])
        status, body = await get(http, f"{base}/devicemethod/plant/e2e/all/temp/30")
        assert (status, body["statusCode"]) == (400, 400)
        assert "ReadOnly" in body["Message"]
        status, body = await get(http, f"{base}/devicemethod/plant/e2e/tune/setpoint/99")
        assert status == 400
        assert bus.device("e2e").values["sp"] == 25.5

        # The model.
        status, body = await get(http, f"{base}/meta/model/plant/e2e")
        assert status == 200
        assert body["name"] == "e2e-model"
        assert body["namespace"] == "plant"
        assert body["properties"] == [
            {
                "name": "temp",
                "dataType": "float",
                "description": "water temperature",
                "accessMode": "ReadOnly",
                "unit": "C",
            },
            {
                "name": "setpoint",
                "dataType": "float",
                "accessMode": "ReadWrite",
                "minimum": "5",
                "maximum": "30",
            },
        ]

        # Probes.
        assert (await get(http, f"{api.url}/healthz"))[0] == 200
        await until(lambda: mapper.link is not None and mapper.link.connected)
        status, body = await get(http, f"{api.url}/readyz")
        assert (status, body["status"]) == (200, "ready")

        # Metrics, scraped over HTTP and parsed.
        await until(lambda: all(s.stats.sent for s in mapper.sinks.values()))
        status, text = await get(http, f"{api.url}/metrics")
    assert status == 200
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    dev = {"device": "plant/e2e", "protocol": "mem"}
    assert value("mapperkit_device_reads_total", **dev) >= 2
    assert value("mapperkit_device_read_cycles_total", **dev) >= 1
    assert value("mapperkit_device_writes_total", **dev) == 1
    assert value("mapperkit_device_writes_rejected_total", **dev) == 0  # API refusals: not device
    assert value("mapperkit_device_connects_total", **dev) >= 1
    assert value("mapperkit_device_state", state="online", **dev) == 1
    assert value("mapperkit_device_state", state="offline", **dev) == 0
    assert (
        value("mapperkit_device_state", device="plant/gone", protocol="mem", state="offline") == 1
    )
    assert (
        value("mapperkit_device_connect_failures_total", device="plant/gone", protocol="mem") >= 1
    )
    assert value("mapperkit_devices", protocol="mem") == 2
    # One latency sample per collect cycle (the API's live read is not a cycle).
    assert value("mapperkit_read_latency_seconds_count", protocol="mem") >= 1
    assert value("mapperkit_read_latency_seconds_bucket", protocol="mem", le="+Inf") == value(
        "mapperkit_read_latency_seconds_count", protocol="mem"
    )
    assert value("mapperkit_outbox_sent_total") >= 1
    assert value("mapperkit_outbox_dropped_total") == 0
    assert "mapperkit_outbox_depth" in {name for name, _ in samples}
    assert value("mapperkit_mqtt_connected") == 1
    sink_targets = {
        dict(labels)["kind"]: dict(labels)["target"]
        for name, labels in samples
        if name == "mapperkit_sink_sent_total"
    }
    assert sink_targets == {"mqtt": mosquitto.url, "http": rx.url}
    assert value("mapperkit_sink_sent_total", kind="mqtt", target=mosquitto.url) >= 3
    assert value("mapperkit_sink_dropped_total", kind="http", target=rx.url) == 0
    assert value("mapperkit_sink_queue_depth", kind="http", target=rx.url) >= 0
    assert "process_cpu_seconds_total" in {name for name, _ in samples}


async def test_bearer_token_guards_everything_but_the_probes(mosquitto: Mosquitto) -> None:
    async with (
        http_receiver() as rx,
        rig(mosquitto, rx, token="t0ken") as (_, api, _bus),
        aiohttp.ClientSession() as http,
    ):
        ping = f"{api.url}/api/v1/ping"
        status, body = await get(http, ping)
        assert (status, body["statusCode"]) == (401, 401)
        assert (await get(http, ping, token="wrong"))[0] == 401
        assert (await get(http, f"{api.url}/metrics"))[0] == 401
        assert (await get(http, ping, token="t0ken"))[0] == 200
        assert (await get(http, f"{api.url}/metrics", token="t0ken"))[0] == 200
        assert (await get(http, f"{api.url}/healthz"))[0] == 200
        status, _ = await get(http, f"{api.url}/api/v1/nothing", token="t0ken")
        assert status == 404


def test_cli_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAPPERKIT_HTTP_TOKEN", raising=False)
    parser = argparse.ArgumentParser()
    add_api_options(parser)
    defaults = parser.parse_args([])
    assert (defaults.http_host, defaults.http_port, defaults.http_token_file) == (
        "127.0.0.1",
        7777,
        None,
    )
    mapper = Mapper([], DRIVERS, MapperOptions(mqtt=MqttSettings()))
    assert api_from_args(mapper, parser.parse_args(["--http-port", "0"])) is None
    token = tmp_path / "token"
    token.write_text("abc\n")
    server = api_from_args(
        mapper,
        parser.parse_args(
            ["--http-port", "9100", "--http-host", "0.0.0.0", "--http-token-file", str(token)]
        ),
    )
    assert server is not None
    assert (server.host, server.port, server.token) == ("0.0.0.0", 9100, "abc")
    monkeypatch.setenv("MAPPERKIT_HTTP_TOKEN", "from-env")
    server = api_from_args(mapper, parser.parse_args([]))
    assert server is not None
    assert server.token == "from-env"
    with pytest.raises(ConfigError, match="cannot read the HTTP token file"):
        api_from_args(mapper, parser.parse_args(["--http-token-file", str(tmp_path / "missing")]))
    with pytest.raises(ConfigError, match="--http-port"):
        api_from_args(mapper, parser.parse_args(["--http-port", "70000"]))


async def test_port_in_use_is_a_clear_error(mosquitto: Mosquitto) -> None:
    mapper = Mapper([], DRIVERS, MapperOptions(mqtt=MqttSettings.from_url(mosquitto.url)))
    async with ApiServer(mapper, port=0) as first:
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            async with ApiServer(mapper, port=first.port):
                pass


class CountingDriver(MemDriver):
    """The mem driver with protocol counters, as the Modbus driver exports them."""

    def counters(self) -> dict[str, int]:
        return {"requests": 7, "coalesced-reads": 3}


async def test_driver_counters_and_readiness_without_a_broker() -> None:
    from mapper_sdk.testing import free_port

    spec = load_text(
        "devices:\n  - {name: c1, protocol: mem, connection: {device: c1}, "
        "properties: [{name: t, type: float, visitor: {address: t}}]}\n",
        drivers={"mem": CountingDriver},
    ).devices[0]
    bus = MemBus()
    bus.device("c1").values["t"] = 1.0
    resources = Resources()
    resources.extras["mem.bus"] = bus
    # A broker address where nothing listens: the mapper runs, but is not ready.
    options = MapperOptions(mqtt=MqttSettings(port=free_port()))
    mapper = Mapper([spec], {"mem": CountingDriver}, options, resources=resources)
    async with mapper, ApiServer(mapper, port=0) as api, aiohttp.ClientSession() as http:
        await until(lambda: mapper.workers["default/c1"].stats.reads)
        status, body = await get(http, f"{api.url}/readyz")
        assert (status, body["checks"]["broker"]) == (503, "disconnected")
        status, text = await get(http, f"{api.url}/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    (requests,) = families["mapperkit_driver_requests"].samples
    assert requests.value == 7
    assert requests.labels == {"device": "default/c1", "protocol": "mem"}
    assert families["mapperkit_driver_coalesced_reads"].samples[0].value == 3
    assert families["mapperkit_mqtt_connected"].samples[0].value == 0
