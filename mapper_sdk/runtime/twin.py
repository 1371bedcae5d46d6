"""The mapper's side of the twin protocol: payloads it publishes and parses.

Reported values go out as one ``twin/update`` per device per report cycle, with
every due property in it; desired values come in on ``twin/update/delta`` and
in ``twin/get/result`` (asked for after every reconnect). The wire format is
KubeEdge's (values as strings, type in ``metadata.type``), see docs/twin.md.

Payloads are assembled from fragments prepared once per property, since this
runs for every reading on the hot path.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .. import topics
from ..codec import format_text
from ..driver import DeviceState, Reading, now_ms
from ..model import DeviceSpec, PropertySpec, PropertyType, Value

__all__ = [
    "Ack",
    "DesiredValue",
    "EventIds",
    "MqttTwinReporter",
    "PropertyWire",
    "Sender",
    "TwinReporter",
    "desired_from_delta",
    "desired_from_get",
    "is_delta",
    "is_get_result",
    "state_payload",
]


class EventIds:
    """Event ids unique across processes and restarts: a random prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}-{next(self._counter)}"


@dataclass(frozen=True, slots=True)
class Ack:
    """The outcome of a desired write, sent with the reported value."""

    expected_version: int | None
    status: str  # applied | rejected | failed
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.expected_version is not None:
            out["expected_version"] = self.expected_version
        if self.reason:
            out["reason"] = self.reason
        return out


def _quoted_formatter(ptype: PropertyType) -> Callable[[Value], str]:
    """The JSON string of a typed value's twin text, chosen once per property."""
    if ptype is PropertyType.INT:
        return lambda v: f'"{v}"' if type(v) is int else f'"{format_text(v, ptype)}"'
    if ptype in (PropertyType.FLOAT, PropertyType.DOUBLE):
        return lambda v: f'"{v!r}"' if type(v) is float else f'"{format_text(v, ptype)}"'
    if ptype is PropertyType.BOOLEAN:
        return lambda v: '"true"' if v else '"false"'
    if ptype is PropertyType.STRING:
        return lambda v: json.dumps(v if type(v) is str else format_text(v, ptype))
    return lambda v: f'"{format_text(v, ptype)}"'


class PropertyWire:
    """Prepared JSON fragments for one property's reported value."""

    __slots__ = ("head", "name", "ptype", "quote", "tail")

    def __init__(self, prop: PropertySpec[Any]) -> None:
        self.name = prop.name
        self.ptype = prop.type
        self.quote = _quoted_formatter(prop.type)
        self.head = json.dumps(prop.name) + ':{"actual":{"value":'
        self.tail = '},"metadata":{"type":' + json.dumps(prop.type.value) + "}}"

    def fragment(self, value: Value, reading: Reading, ack: Ack | None = None) -> str:
        ts = reading.source_timestamp or reading.timestamp
        body = f'{self.head}{self.quote(value)},"metadata":{{"timestamp":{ts}}}{self.tail}'
        if ack is not None:
            # Insert the ack beside actual and metadata.
            body = body[:-1] + ',"ack":' + json.dumps(ack.to_json()) + "}"
        return body

    def ack_only(self, ack: Ack) -> str:
        """A fragment carrying only an ack (no value has been read yet)."""
        return f'{json.dumps(self.name)}:{{"ack":{json.dumps(ack.to_json())}}}'


def update_payload(event_id: str, fragments: Iterable[str]) -> bytes:
    """A ``twin/update`` request from prepared fragments."""
    return (
        f'{{"event_id":"{event_id}","timestamp":{now_ms()},"twin":{{{",".join(fragments)}}}}}'
    ).encode()


def state_payload(event_id: str, state: str) -> bytes:
    return f'{{"event_id":"{event_id}","timestamp":{now_ms()},"state":"{state}"}}'.encode()


def get_payload(event_id: str) -> bytes:
    return f'{{"event_id":"{event_id}"}}'.encode()


@dataclass(frozen=True, slots=True)
class DesiredValue:
    """A desired value to apply: the expected text and the version it came with."""

    text: str
    version: int | None


def _expected_version(twin: Any) -> int | None:
    if not isinstance(twin, dict):
        return None
    ver = twin.get("expected_version")
    if isinstance(ver, dict):
        edge = ver.get("edge")
        return edge if isinstance(edge, int) and not isinstance(edge, bool) else None
    return None


def _expected_text(twin: Any) -> str | None:
    if not isinstance(twin, dict):
        return None
    expected = twin.get("expected")
    if isinstance(expected, dict) and isinstance(expected.get("value"), str):
        return str(expected["value"])
    return None


def is_delta(doc: Any) -> bool:
    """A delta as the twin publishes it: ``delta`` maps names to text; ``twin`` is an object."""
    if not isinstance(doc, dict):
        return False
    delta = doc.get("delta")
    return (
        isinstance(delta, dict)
        and all(isinstance(v, str) for v in delta.values())
        and isinstance(doc.get("twin", {}), dict)
    )


def is_get_result(doc: Any) -> bool:
    """A get result (a ``twin`` object of twin objects) or an error reply (``code``)."""
    if not isinstance(doc, dict):
        return False
    if "code" in doc:
        return True
    twins = doc.get("twin")
    return isinstance(twins, dict) and all(isinstance(t, dict) for t in twins.values())


def desired_from_delta(doc: Any) -> dict[str, DesiredValue]:
    """Desired values named in a delta message (``delta`` map), with their versions."""
    if not isinstance(doc, dict):
        return {}
    delta = doc.get("delta")
    raw_twins = doc.get("twin")
    twins: dict[str, Any] = raw_twins if isinstance(raw_twins, dict) else {}
    out: dict[str, DesiredValue] = {}
    if isinstance(delta, dict):
        for name, value in delta.items():
            if isinstance(name, str) and isinstance(value, str):
                out[name] = DesiredValue(value, _expected_version(twins.get(name)))
    return out


def desired_from_get(doc: Any) -> dict[str, tuple[DesiredValue, str | None]] | None:
    """Every twin with an expected value in a get result: ``{name: (desired, actual text)}``.

    ``None`` when the document is an error reply.
    """
    if not isinstance(doc, dict) or "code" in doc:
        return None
    twins = doc.get("twin")
    if not isinstance(twins, dict):
        return None
    out: dict[str, tuple[DesiredValue, str | None]] = {}
    for name, twin in twins.items():
        text = _expected_text(twin)
        if text is None:
            continue
        actual = twin.get("actual") if isinstance(twin, dict) else None
        actual_text = (
            actual["value"]
            if isinstance(actual, dict) and isinstance(actual.get("value"), str)
            else None
        )
        out[name] = (DesiredValue(text, _expected_version(twin)), actual_text)
    return out


# --------------------------------------------------------------------------- reporters
Item = tuple[PropertySpec[Any], Value, Reading]


class TwinReporter(Protocol):
    """Where a worker's twin reports go: MQTT twin topics, or KubeEdge's DMI."""

    def report(
        self,
        device: DeviceSpec[Any, Any],
        items: Sequence[Item],
        acks: Mapping[int, Ack] | None = None,
    ) -> None:
        """Reported values of one device (one message); ``acks`` by property index."""

    def report_state(self, device: DeviceSpec[Any, Any], state: DeviceState) -> None:
        """The device's state."""


class Sender(Protocol):
    """Where MQTT messages go (the :class:`~mapper_sdk.runtime.outbox.Outbox`)."""

    def put(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None: ...


class _DeviceWire:
    __slots__ = ("props", "spec", "topic_state", "topic_update")

    def __init__(self, spec: DeviceSpec[Any, Any]) -> None:
        self.spec = spec
        self.props = [PropertyWire(p) for p in spec.properties]
        self.topic_update = topics.device_topic(spec.namespace, spec.name, topics.TWIN_UPDATE)
        self.topic_state = topics.device_topic(spec.namespace, spec.name, topics.STATE_UPDATE)


class MqttTwinReporter:
    """Reports on KubeEdge's twin topics: one ``twin/update`` per call, through a sender."""

    def __init__(self, sender: Sender, event_ids: EventIds | None = None) -> None:
        self.sender = sender
        self.event_ids = event_ids or EventIds()
        self._wires: dict[str, _DeviceWire] = {}

    def _wire(self, device: DeviceSpec[Any, Any]) -> _DeviceWire:
        wire = self._wires.get(device.id)
        if wire is None or wire.spec is not device:
            wire = self._wires[device.id] = _DeviceWire(device)
        return wire

    def forget(self, device_id: str) -> None:
        self._wires.pop(device_id, None)

    def report(
        self,
        device: DeviceSpec[Any, Any],
        items: Sequence[Item],
        acks: Mapping[int, Ack] | None = None,
    ) -> None:
        wire = self._wire(device)
        props = wire.props
        if acks:
            fragments = []
            seen = set()
            for prop, value, reading in items:
                seen.add(prop.index)
                fragments.append(props[prop.index].fragment(value, reading, acks.get(prop.index)))
            for index, ack in acks.items():
                if index not in seen:
                    fragments.append(props[index].ack_only(ack))
        else:
            fragments = [props[p.index].fragment(v, r) for p, v, r in items]
        if fragments:
            self.sender.put(wire.topic_update, update_payload(self.event_ids.next(), fragments))

    def report_state(self, device: DeviceSpec[Any, Any], state: DeviceState) -> None:
        wire = self._wire(device)
        self.sender.put(wire.topic_state, state_payload(self.event_ids.next(), state.value))

    def get_request(self, device: DeviceSpec[Any, Any]) -> tuple[str, bytes]:
        """The ``twin/get`` that asks the twin for the device's desired values."""
        topic = topics.device_topic(device.namespace, device.name, topics.TWIN_GET)
        return topic, get_payload(self.event_ids.next())
