"""DMI messages to and from the documents Mapperkit's loader reads.

Edgecore hands devices and models to a mapper as protobuf messages. They are
turned here into the same dicts a KubeEdge ``devices.kubeedge.io/v1beta1`` YAML
file parses to, so :func:`mapper_sdk.model.load_objects` validates them with
the driver's own config classes exactly as it validates files.

What differs from the YAML and is mapped explicitly:

* ``configData`` arrives as ``map<string, google.protobuf.Any>`` holding
  wrapper messages. Edgecore sends every JSON number as a ``FloatValue``
  (float32), so a float is decoded to the shortest decimal that round-trips as
  float32 (``0.1f`` gives ``0.1``), and to an ``int`` when it is integral
  (``5020.0`` gives ``5020``). Nested values cannot travel in DMI; a value of
  any other type is refused with an error naming the key.
* ``pushMethod.http`` has lower-case proto fields (``hostname``,
  ``requestpath``) where the CRD has ``hostName`` and ``requestPath``, and the
  database methods use other spellings too (``tdengine`` / ``TDEngine``).
* State reporting travels in ``Device.status`` (``reportToCloud``,
  ``reportCycle``) and becomes ``spec.stateReport``. DMI booleans have no
  "absent": a property's or a device's ``reportToCloud`` is what edgecore sends,
  ``false`` when the Device does not set it, as in KubeEdge.
* Cycles of ``0`` mean "not set" (the loader's default, 1000 ms).

The reverse direction (:func:`device_to_proto`, :func:`model_to_proto`) builds
the messages edgecore would send for a YAML Device and DeviceModel: model
defaults merged into the device, every number as a ``FloatValue``. Tests use
it to play edgecore.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import any_pb2, wrappers_pb2

from ..errors import ConfigError
from ..model import API_VERSION
from .v1beta1 import api_pb2

__all__ = [
    "DEFAULT_NAMESPACE",
    "decode_any",
    "decode_config",
    "device_to_doc",
    "device_to_proto",
    "encode_any",
    "encode_config",
    "float32_text",
    "model_to_doc",
    "model_to_proto",
    "shortest_float32",
]

log = logging.getLogger("mapper_sdk.kubeedge")

DEFAULT_NAMESPACE = "default"

Scalar = str | int | float | bool

_TYPE_PREFIX = "type.googleapis.com/"
_FLOAT32 = struct.Struct("<f")


# --------------------------------------------------------------------------- values
def _as_float32(value: float) -> float:
    return float(_FLOAT32.unpack(_FLOAT32.pack(value))[0])


def float32_text(value: float) -> str:
    """The shortest decimal text that reads back as the same float32."""
    if not math.isfinite(value):
        return repr(value)
    target = _as_float32(value)
    for digits in range(1, 10):
        text = f"{target:.{digits}g}"
        if _as_float32(float(text)) == target:
            return text
    return repr(target)  # 9 significant digits always suffice; kept for completeness


def shortest_float32(value: float) -> int | float:
    """A float32 as the value its author most likely wrote: ``0.1f`` → ``0.1``, ``5.0f`` → ``5``."""
    if not math.isfinite(value):
        return value
    number = float(float32_text(value))
    if number.is_integer():
        return int(number)
    return number


_DECODERS: dict[str, tuple[type[Any], Any]] = {
    "google.protobuf.StringValue": (wrappers_pb2.StringValue, lambda v: v),
    "google.protobuf.Int32Value": (wrappers_pb2.Int32Value, int),
    "google.protobuf.Int64Value": (wrappers_pb2.Int64Value, int),
    "google.protobuf.UInt32Value": (wrappers_pb2.UInt32Value, int),
    "google.protobuf.UInt64Value": (wrappers_pb2.UInt64Value, int),
    "google.protobuf.FloatValue": (wrappers_pb2.FloatValue, shortest_float32),
    "google.protobuf.DoubleValue": (wrappers_pb2.DoubleValue, float),
    "google.protobuf.BoolValue": (wrappers_pb2.BoolValue, bool),
}


def decode_any(value: any_pb2.Any, *, where: str = "configData") -> Scalar:
    """The plain value inside one wrapped ``Any``.

    Raises:
        ConfigError: the ``Any`` holds something other than a scalar wrapper.
    """
    url = value.type_url
    name = url[len(_TYPE_PREFIX) :] if url.startswith(_TYPE_PREFIX) else url.rpartition("/")[2]
    entry = _DECODERS.get(name)
    if entry is None:
        raise ConfigError(
            f"{where}: unsupported value type {name or '(empty)'!r}; DMI carries flat values "
            "only (string, integer, float, boolean)"
        )
    cls, convert = entry
    message = cls()
    if not value.Unpack(message):
        raise ConfigError(f"{where}: cannot unpack a {name} value")
    result: Scalar = convert(message.value)
    return result


def decode_config(value: api_pb2.CustomizedValue, *, where: str = "configData") -> dict[str, Any]:
    """A ``CustomizedValue`` as a flat dict, keys sorted."""
    return {key: decode_any(value.data[key], where=f"{where}.{key}") for key in sorted(value.data)}


def encode_any(value: Any, *, where: str = "configData") -> any_pb2.Any:
    """Wrap one value as edgecore does: strings, booleans, and numbers as ``FloatValue``."""
    message: Any
    if isinstance(value, bool):
        message = wrappers_pb2.BoolValue(value=value)
    elif isinstance(value, str):
        message = wrappers_pb2.StringValue(value=value)
    elif isinstance(value, int | float):
        message = wrappers_pb2.FloatValue(value=float(value))
    else:
        raise ConfigError(
            f"{where}: {type(value).__name__} values cannot travel in DMI "
            "(configData must be flat: strings, numbers and booleans)"
        )
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def encode_config(
    data: Mapping[str, Any] | None, *, where: str = "configData"
) -> api_pb2.CustomizedValue:
    """A flat dict as a ``CustomizedValue`` (see :func:`encode_any`)."""
    out = api_pb2.CustomizedValue()
    for key, value in (data or {}).items():
        out.data[str(key)].CopyFrom(encode_any(value, where=f"{where}.{key}"))
    return out


# --------------------------------------------------------------------------- to documents
def _namespace(value: str) -> str:
    return value or DEFAULT_NAMESPACE


def _nonempty(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    return {k: v for k, v in pairs if v not in ("", None)}


def model_to_doc(model: api_pb2.DeviceModel, *, namespace: str | None = None) -> dict[str, Any]:
    """A DeviceModel message as the dict of its YAML form.

    ``namespace`` overrides the message's (older edgecores leave it empty).
    """
    props = [
        _nonempty(
            (
                ("name", p.name),
                ("description", p.description),
                ("type", p.type),
                ("accessMode", p.accessMode),
                ("minimum", p.minimum),
                ("maximum", p.maximum),
                ("unit", p.unit),
            )
        )
        for p in model.spec.properties
    ]
    return {
        "apiVersion": API_VERSION,
        "kind": "DeviceModel",
        "metadata": {"name": model.name, "namespace": namespace or _namespace(model.namespace)},
        "spec": {"properties": props},
    }


def _push_doc(push: api_pb2.PushMethod, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if push.HasField("http"):
        h = push.http
        out["http"] = _nonempty(
            (
                ("hostName", h.hostname),
                ("port", h.port or None),
                ("requestPath", h.requestpath),
                ("timeout", h.timeout or None),
            )
        )
    if push.HasField("mqtt"):
        m = push.mqtt
        out["mqtt"] = {
            **_nonempty((("address", m.address), ("topic", m.topic))),
            "qos": m.qos,
            "retained": m.retained,
        }
    if push.HasField("otel"):
        out["otel"] = _nonempty((("endpointURL", push.otel.endpointURL),))
    if push.HasField("dbMethod"):
        out["dbMethod"] = _db_doc(push.dbMethod)
    if push.HasField("anomalyDetection"):
        log.warning(
            "%s event=ignored field=pushMethod.anomalyDetection "
            "reason='Mapperkit has no anomaly detection sink'",
            where,
        )
    return out


def _db_doc(db: api_pb2.DBMethod) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if db.HasField("influxdb2"):
        client = db.influxdb2.influxdb2ClientConfig
        data = db.influxdb2.influxdb2DataConfig
        influx: dict[str, Any] = {}
        if db.influxdb2.HasField("influxdb2ClientConfig"):
            influx["influxdb2ClientConfig"] = _nonempty(
                (("url", client.url), ("org", client.org), ("bucket", client.bucket))
            )
        if db.influxdb2.HasField("influxdb2DataConfig"):
            influx["influxdb2DataConfig"] = _nonempty(
                (
                    ("measurement", data.measurement),
                    ("tag", dict(sorted(data.tag.items())) or None),
                    ("fieldKey", data.fieldKey),
                )
            )
        out["influxdb2"] = influx
    if db.HasField("redis"):
        r = db.redis.redisClientConfig
        out["redis"] = {
            "redisClientConfig": {
                **_nonempty((("addr", r.addr),)),
                "db": r.db,
                **_nonempty(
                    (("poolsize", r.poolsize or None), ("minIdleConns", r.minIdleConns or None))
                ),
            }
        }
    if db.HasField("tdengine"):
        t = db.tdengine.tdEngineClientConfig
        out["TDEngine"] = {
            "TDEngineClientConfig": _nonempty((("addr", t.addr), ("dbName", t.dbname)))
        }
    if db.HasField("mysql"):
        s = db.mysql.mysqlClientConfig
        out["mysql"] = {
            "mysqlClientConfig": _nonempty(
                (("addr", s.addr), ("database", s.database), ("userName", s.userName))
            )
        }
    return out


def device_to_doc(device: api_pb2.Device) -> dict[str, Any]:
    """A Device message as the dict of its YAML form.

    Raises:
        ConfigError: a ``configData`` value cannot be decoded (the error names it).
    """
    ns = _namespace(device.namespace)
    where = f"device {ns}/{device.name}"
    spec = device.spec
    protocol: dict[str, Any] = {"protocolName": spec.protocol.protocolName}
    if spec.protocol.HasField("configData"):
        protocol["configData"] = decode_config(
            spec.protocol.configData, where=f"{where}: spec.protocol.configData"
        )
    props: list[dict[str, Any]] = []
    for i, p in enumerate(spec.properties):
        path = f"{where}: spec.properties[{i}]"
        prop: dict[str, Any] = {"name": p.name}
        if p.HasField("desired") and p.desired.value != "":
            desired: dict[str, Any] = {"value": p.desired.value}
            if p.desired.metadata:
                desired["metadata"] = dict(sorted(p.desired.metadata.items()))
            prop["desired"] = desired
        if p.HasField("visitors"):
            visitors: dict[str, Any] = {}
            if p.visitors.protocolName:
                visitors["protocolName"] = p.visitors.protocolName
            if p.visitors.HasField("configData"):
                visitors["configData"] = decode_config(
                    p.visitors.configData, where=f"{path}.visitors.configData"
                )
            prop["visitors"] = visitors
        if p.collectCycle:
            prop["collectCycle"] = p.collectCycle
        if p.reportCycle:
            prop["reportCycle"] = p.reportCycle
        prop["reportToCloud"] = p.reportToCloud
        if p.HasField("pushMethod"):
            push = _push_doc(p.pushMethod, path)
            if push:
                prop["pushMethod"] = push
        props.append(prop)
    state: dict[str, Any] = {"reportToCloud": device.status.reportToCloud}
    if device.status.reportCycle:
        state["reportCycle"] = device.status.reportCycle
    doc_spec: dict[str, Any] = {
        "deviceModelRef": {"name": spec.deviceModelReference},
        "protocol": protocol,
        "properties": props,
        "stateReport": state,
    }
    if spec.methods:
        doc_spec["methods"] = [
            {
                "name": m.name,
                **_nonempty((("description", m.description),)),
                "propertyNames": list(m.propertyNames),
            }
            for m in spec.methods
        ]
    return {
        "apiVersion": API_VERSION,
        "kind": "Device",
        "metadata": {"name": device.name, "namespace": ns},
        "spec": doc_spec,
    }


# --------------------------------------------------------------------------- to messages
def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def model_to_proto(doc: Mapping[str, Any]) -> api_pb2.DeviceModel:
    """The DeviceModel message edgecore sends for a DeviceModel document."""
    meta = doc.get("metadata") or {}
    spec = doc.get("spec") or {}
    model = api_pb2.DeviceModel(
        name=str(meta.get("name", "")), namespace=str(meta.get("namespace", DEFAULT_NAMESPACE))
    )
    for p in spec.get("properties") or ():
        model.spec.properties.add(
            name=str(p.get("name", "")),
            description=_text(p.get("description")),
            type=_text(p.get("type")),
            accessMode=_text(p.get("accessMode")),
            minimum=_text(p.get("minimum")),
            maximum=_text(p.get("maximum")),
            unit=_text(p.get("unit")),
        )
    return model


def _push_proto(push: Mapping[str, Any], target: api_pb2.PushMethod) -> None:
    if "http" in push:
        h = push["http"] or {}
        target.http.SetInParent()
        target.http.hostname = str(h.get("hostName", ""))
        target.http.port = int(h.get("port") or 0)
        target.http.requestpath = str(h.get("requestPath", ""))
        target.http.timeout = int(h.get("timeout") or 0)
    if "mqtt" in push:
        m = push["mqtt"] or {}
        target.mqtt.SetInParent()
        target.mqtt.address = str(m.get("address", ""))
        target.mqtt.topic = str(m.get("topic", ""))
        target.mqtt.qos = int(m.get("qos") or 0)
        target.mqtt.retained = bool(m.get("retained", False))
    if "otel" in push:
        target.otel.SetInParent()
        target.otel.endpointURL = str((push["otel"] or {}).get("endpointURL", ""))
    db = push.get("dbMethod") or {}
    for key, config in db.items():
        cfg = config or {}
        name = key.lower()
        if name == "influxdb2":
            client = cfg.get("influxdb2ClientConfig") or {}
            data = cfg.get("influxdb2DataConfig") or {}
            influx = target.dbMethod.influxdb2
            influx.SetInParent()
            if client:
                influx.influxdb2ClientConfig.url = str(client.get("url", ""))
                influx.influxdb2ClientConfig.org = str(client.get("org", ""))
                influx.influxdb2ClientConfig.bucket = str(client.get("bucket", ""))
            if data:
                influx.influxdb2DataConfig.measurement = str(data.get("measurement", ""))
                influx.influxdb2DataConfig.fieldKey = str(data.get("fieldKey", ""))
                for tk, tv in (data.get("tag") or {}).items():
                    influx.influxdb2DataConfig.tag[str(tk)] = str(tv)
        elif name == "redis":
            r = cfg.get("redisClientConfig") or {}
            rc = target.dbMethod.redis.redisClientConfig
            target.dbMethod.redis.SetInParent()
            rc.addr = str(r.get("addr", ""))
            rc.db = int(r.get("db") or 0)
            rc.poolsize = int(r.get("poolsize") or 0)
            rc.minIdleConns = int(r.get("minIdleConns") or 0)
        elif name == "tdengine":
            t = cfg.get("TDEngineClientConfig") or cfg.get("tdEngineClientConfig") or {}
            target.dbMethod.tdengine.SetInParent()
            target.dbMethod.tdengine.tdEngineClientConfig.addr = str(t.get("addr", ""))
            target.dbMethod.tdengine.tdEngineClientConfig.dbname = str(t.get("dbName", ""))
        elif name == "mysql":
            s = cfg.get("mysqlClientConfig") or {}
            target.dbMethod.mysql.SetInParent()
            target.dbMethod.mysql.mysqlClientConfig.addr = str(s.get("addr", ""))
            target.dbMethod.mysql.mysqlClientConfig.database = str(s.get("database", ""))
            target.dbMethod.mysql.mysqlClientConfig.userName = str(s.get("userName", ""))


def device_to_proto(
    doc: Mapping[str, Any], model: Mapping[str, Any] | None = None
) -> api_pb2.Device:
    """The Device message edgecore sends for a Device document.

    With ``model``, Mapperkit's model-level defaults (``protocolConfigData`` and
    property ``visitors``) are merged in first, since DMI carries one merged
    device. State reporting goes to ``status`` (``spec.stateReport``, or
    ``status`` in files written for KubeEdge before 1.23).
    """
    meta = doc.get("metadata") or {}
    spec = doc.get("spec") or {}
    model_spec = (model or {}).get("spec") or {}
    model_visitors = {
        p.get("name"): ((p.get("visitors") or {}).get("configData") or {})
        for p in model_spec.get("properties") or ()
    }
    name = str(meta.get("name", ""))
    where = f"device {name}"
    device = api_pb2.Device(name=name, namespace=str(meta.get("namespace", DEFAULT_NAMESPACE)))
    device.spec.deviceModelReference = str((spec.get("deviceModelRef") or {}).get("name", ""))
    protocol = spec.get("protocol") or {}
    device.spec.protocol.protocolName = str(protocol.get("protocolName", ""))
    merged = {**(model_spec.get("protocolConfigData") or {}), **(protocol.get("configData") or {})}
    device.spec.protocol.configData.CopyFrom(
        encode_config(merged, where=f"{where}: spec.protocol.configData")
    )
    for i, p in enumerate(spec.get("properties") or ()):
        prop = device.spec.properties.add(name=str(p.get("name", "")))
        desired = p.get("desired")
        if desired is not None:
            prop.desired.value = _text(desired.get("value"))
            for mk, mv in (desired.get("metadata") or {}).items():
                prop.desired.metadata[str(mk)] = str(mv)
        visitors = p.get("visitors") or {}
        config = {**model_visitors.get(prop.name, {}), **(visitors.get("configData") or {})}
        prop.visitors.protocolName = str(
            visitors.get("protocolName") or device.spec.protocol.protocolName
        )
        prop.visitors.configData.CopyFrom(
            encode_config(config, where=f"{where}: spec.properties[{i}].visitors.configData")
        )
        prop.collectCycle = int(p.get("collectCycle") or 0)
        prop.reportCycle = int(p.get("reportCycle") or 0)
        prop.reportToCloud = bool(p.get("reportToCloud", False))
        if p.get("pushMethod"):
            _push_proto(p["pushMethod"], prop.pushMethod)
    for m in spec.get("methods") or ():
        device.spec.methods.add(
            name=str(m.get("name", "")),
            description=_text(m.get("description")),
            propertyNames=[str(n) for n in m.get("propertyNames") or ()],
        )
    state = spec.get("stateReport") or doc.get("status") or {}
    device.status.reportToCloud = bool(state.get("reportToCloud", False))
    device.status.reportCycle = int(state.get("reportCycle") or 0)
    return device
