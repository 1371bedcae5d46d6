"""DMI messages to the documents Mapperkit's loader reads, and back."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import yaml
from google.protobuf import any_pb2, wrappers_pb2

from mapper_sdk.errors import ConfigError
from mapper_sdk.kubeedge.convert import (
    decode_any,
    decode_config,
    device_to_doc,
    device_to_proto,
    encode_config,
    float32_text,
    model_to_doc,
    model_to_proto,
    shortest_float32,
)
from mapper_sdk.kubeedge.v1beta1 import api_pb2
from mapper_sdk.model import load_files, load_objects
from mapper_sdk.registry import Registry

from .conftest import RIGS
from .edgecore import documents

ROOT = Path(__file__).resolve().parents[2]


def packed(message: object) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)  # type: ignore[arg-type]
    return out


def f32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


@pytest.mark.parametrize(
    ("written", "decoded"),
    [
        (0.1, 0.1),
        (21.5, 21.5),
        (5020, 5020),
        (1, 1),
        (0, 0),
        (-40, -40),
        (0.001, 0.001),
        (1e-7, 1e-7),
        (3.14159, 3.14159),
        (123456.7, 123456.7),
        (16777217, 16777216),  # above 2**24 a float32 cannot hold every integer
    ],
)
def test_float_values_decode_to_the_shortest_float32_decimal(
    written: float, decoded: float
) -> None:
    value = decode_any(packed(wrappers_pb2.FloatValue(value=written)))
    assert value == decoded
    assert type(value) is type(decoded)
    assert f32(float(value)) == f32(written)


def test_float32_text_is_shortest() -> None:
    assert float32_text(f32(0.1)) == "0.1"
    assert float32_text(f32(1 / 3)) == "0.33333334"
    assert shortest_float32(float("inf")) == float("inf")


def test_every_wrapper_decodes() -> None:
    cases = [
        (wrappers_pb2.StringValue(value="TCP"), "TCP"),
        (wrappers_pb2.Int32Value(value=-7), -7),
        (wrappers_pb2.Int64Value(value=2**40), 2**40),
        (wrappers_pb2.BoolValue(value=True), True),
        (wrappers_pb2.DoubleValue(value=0.1), 0.1),
        (wrappers_pb2.UInt32Value(value=7), 7),
    ]
    for message, expected in cases:
        value = decode_any(packed(message))
        assert value == expected
        assert type(value) is type(expected)


def test_unsupported_values_are_refused_by_key() -> None:
    config = api_pb2.CustomizedValue()
    config.data["ip"].CopyFrom(packed(wrappers_pb2.StringValue(value="10.0.0.1")))
    config.data["tcp"].CopyFrom(packed(api_pb2.MapperInfo()))
    with pytest.raises(ConfigError, match=r"configData\.tcp: unsupported value type 'v1beta1"):
        decode_config(config)
    with pytest.raises(ConfigError, match="must be flat"):
        encode_config({"tcp": {"ip": "x"}})


def test_encode_config_wraps_numbers_as_float_like_edgecore() -> None:
    config = encode_config({"port": 502, "scale": 0.1, "ip": "h", "swap": False})
    assert config.data["port"].type_url.endswith("google.protobuf.FloatValue")
    assert decode_config(config) == {"ip": "h", "port": 502, "scale": 0.1, "swap": False}


def test_yaml_through_dmi_loads_like_the_yaml_itself() -> None:
    docs = documents(RIGS)
    model = docs[0]
    direct = load_objects(docs)
    through = load_objects(
        [model_to_doc(model_to_proto(model))]
        + [device_to_doc(device_to_proto(d, model)) for d in docs[1:]]
    )
    for a, b in zip(direct.devices, through.devices, strict=True):
        assert (a.id, a.model, a.protocol, a.protocol_config) == (
            b.id,
            b.model,
            b.protocol,
            b.protocol_config,
        )
        for pa, pb in zip(a.properties, b.properties, strict=True):
            assert (pa.name, pa.type, pa.access_mode, pa.minimum, pa.maximum, pa.unit) == (
                pb.name,
                pb.type,
                pb.access_mode,
                pb.minimum,
                pb.maximum,
                pb.unit,
            )
            assert (pa.visitor, pa.desired, pa.collect_cycle_ms, pa.report_to_cloud) == (
                pb.visitor,
                pb.desired,
                pb.collect_cycle_ms,
                pb.report_to_cloud,
            )
    assert through.devices[0].state_report.report_to_cloud is True
    assert through.devices[0].state_report.report_cycle_ms == 200
    assert through.devices[1].state_report.report_to_cloud is False


@pytest.mark.parametrize("name", ["modbus/thermostat.yaml", "modbus/energy-meter.yaml"])
def test_modbus_examples_through_dmi_validate_with_the_driver(name: str) -> None:
    registry = Registry()
    path = ROOT / "examples" / name
    docs = documents(path.read_text())
    models = {d["metadata"]["name"]: d for d in docs if d["kind"] == "DeviceModel"}
    direct = load_files([path], registry)
    converted: list[dict[str, object]] = [model_to_doc(model_to_proto(m)) for m in models.values()]
    for doc in docs:
        if doc["kind"] == "Device":
            model = models[doc["spec"]["deviceModelRef"]["name"]]
            converted.append(device_to_doc(device_to_proto(doc, model)))
    through = load_objects(converted, drivers=registry, missing_driver="error")
    assert [d.protocol_config for d in through.devices] == [
        d.protocol_config for d in direct.devices
    ]
    for a, b in zip(direct.devices, through.devices, strict=True):
        assert [p.visitor for p in a.properties] == [p.visitor for p in b.properties]


def test_push_methods_map_the_proto_spellings() -> None:
    device = api_pb2.Device(name="d", namespace="ns")
    device.spec.deviceModelReference = "m"
    device.spec.protocol.protocolName = "mem"
    prop = device.spec.properties.add(name="p", reportToCloud=True)
    push = prop.pushMethod
    push.http.hostname = "http://collector"
    push.http.port = 8080
    push.http.requestpath = "/ingest"
    push.http.timeout = 5
    push.mqtt.address = "tcp://broker:1883"
    push.mqtt.topic = "t/p"
    push.mqtt.qos = 1
    push.otel.endpointURL = "http://otel:4318/v1/metrics"
    push.dbMethod.tdengine.tdEngineClientConfig.addr = "td:6041"
    push.dbMethod.tdengine.tdEngineClientConfig.dbname = "plant"
    push.dbMethod.redis.redisClientConfig.addr = "redis:6379"
    push.dbMethod.redis.redisClientConfig.db = 2
    push.dbMethod.influxdb2.influxdb2ClientConfig.url = "http://influx:8086"
    push.dbMethod.influxdb2.influxdb2DataConfig.measurement = "m"
    push.dbMethod.influxdb2.influxdb2DataConfig.tag["site"] = "a"
    push.dbMethod.mysql.mysqlClientConfig.addr = "db:3306"
    push.dbMethod.mysql.mysqlClientConfig.userName = "u"
    doc = device_to_doc(device)
    out = doc["spec"]["properties"][0]["pushMethod"]
    assert out["http"] == {
        "hostName": "http://collector",
        "port": 8080,
        "requestPath": "/ingest",
        "timeout": 5,
    }
    assert out["mqtt"] == {
        "address": "tcp://broker:1883",
        "topic": "t/p",
        "qos": 1,
        "retained": False,
    }
    assert out["otel"] == {"endpointURL": "http://otel:4318/v1/metrics"}
    assert out["dbMethod"] == {
        "influxdb2": {
            "influxdb2ClientConfig": {"url": "http://influx:8086"},
            "influxdb2DataConfig": {"measurement": "m", "tag": {"site": "a"}},
        },
        "redis": {"redisClientConfig": {"addr": "redis:6379", "db": 2}},
        "TDEngine": {"TDEngineClientConfig": {"addr": "td:6041", "dbName": "plant"}},
        "mysql": {"mysqlClientConfig": {"addr": "db:3306", "userName": "u"}},
    }
    # And back: the YAML spellings become the proto's again.
    again = api_pb2.Device()
    again.CopyFrom(device_to_proto(doc))
    assert again.spec.properties[0].pushMethod == push


def test_device_without_namespace_or_cycles_gets_the_defaults() -> None:
    device = api_pb2.Device(name="d")
    device.spec.deviceModelReference = "m"
    device.spec.protocol.protocolName = "mem"
    device.spec.properties.add(name="p")
    doc = device_to_doc(device)
    assert doc["metadata"] == {"name": "d", "namespace": "default"}
    assert doc["spec"]["properties"] == [{"name": "p", "reportToCloud": False}]
    assert doc["spec"]["stateReport"] == {"reportToCloud": False}
    model = api_pb2.DeviceModel(name="m")
    model.spec.properties.add(name="p", type="INT")
    inv = load_objects([model_to_doc(model), doc])
    prop = inv.devices[0].properties[0]
    assert (prop.collect_cycle_ms, prop.report_cycle_ms, prop.report_to_cloud) == (
        1000,
        1000,
        False,
    )


def test_status_before_kubeedge_1_23_becomes_state_report() -> None:
    doc = yaml.safe_load(
        """
        apiVersion: devices.kubeedge.io/v1beta1
        kind: Device
        metadata: {name: old}
        spec:
          deviceModelRef: {name: m}
          protocol: {protocolName: mem, configData: {device: old}}
        status: {reportToCloud: true, reportCycle: 3000}
        """
    )
    proto = device_to_proto(doc)
    assert (proto.status.reportToCloud, proto.status.reportCycle) == (True, 3000)
    assert device_to_doc(proto)["spec"]["stateReport"] == {
        "reportToCloud": True,
        "reportCycle": 3000,
    }
