"""Malformed deltas and get results published to a running mapper.

A :class:`~mapper_sdk.runtime.Mapper` serves one in-memory device
(``tests/sdk/memdriver.py``) through the real broker. Anyone on the broker can
publish on the device's ``twin/update/delta`` and ``twin/get/result`` topics;
whatever arrives there must never stop the mapper, never reach the device as
a write, and, when it is not even JSON, be counted in
``Mapper.malformed_messages``.

After each example a valid delta with a fresh value (the sentinel) is
published on the same topic: the mapper handles its messages in order, so once
the sentinel's value is written every bad message before it was handled, and
the mapper is still applying desired values. The only writes the device ever
sees are the sentinels.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

import aiomqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mapper_sdk import topics
from mapper_sdk.codec import check_range, parse_text
from mapper_sdk.driver import DeviceState, Resources
from mapper_sdk.model import PropertySpec, load_text
from mapper_sdk.mqtt import MqttSettings
from mapper_sdk.runtime import Mapper, MapperOptions, WorkerOptions
from tests.sdk.memdriver import MemBus, MemDevice, MemDriver

DEVICE_YAML: Final = """
devices:
  - name: fuzzed
    protocol: mem
    connection: {device: fuzzed}
    collectCycle: 200
    reportCycle: 200
    properties:
      - {name: temp, type: float, accessMode: ReadOnly, visitor: {address: t}}
      - {name: setpoint, type: float, minimum: 5, maximum: 30, visitor: {address: sp}}
      - {name: count, type: int, minimum: 0, maximum: 100, visitor: {address: c}}
      - {name: enabled, type: boolean, visitor: {address: e}}
"""
DEVICE_ID: Final = "default/fuzzed"
DELTA: Final = topics.device_topic("default", "fuzzed", topics.TWIN_UPDATE_DELTA)
GET_RESULT: Final = topics.device_topic("default", "fuzzed", topics.TWIN_GET_RESULT)
SPEC: Final = load_text(DEVICE_YAML, drivers={"mem": MemDriver}).devices[0]
PROPS: Final = {p.name: p for p in SPEC.properties}
SETTINGS = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


@dataclass
class MapperRig:
    mapper: Mapper
    device: MemDevice
    client: aiomqtt.Client
    sentinels: list[tuple[str, float]] = field(default_factory=list)

    async def settle(self, topic: str) -> None:
        """Publish a valid delta with a fresh setpoint and wait until the device has it."""
        value = 5.0 + (len(self.sentinels) + 1) / 1000
        self.sentinels.append(("setpoint", value))
        doc: dict[str, Any] = {"delta": {"setpoint": repr(value)}}
        if topic == GET_RESULT:
            doc = {"twin": {"setpoint": {"expected": {"value": repr(value)}}}}
        await self.client.publish(topic, json.dumps(doc), qos=1)
        async with asyncio.timeout(10):
            while len(self.device.writes) < len(self.sentinels):
                await asyncio.sleep(0.002)

    def check_alive(self) -> None:
        assert self.device.writes == self.sentinels
        worker = self.mapper.workers[DEVICE_ID]
        assert worker.state is DeviceState.ONLINE
        assert self.mapper.link is not None and self.mapper.link.connected


@pytest.fixture(scope="module")
async def mapper_rig(settings: MqttSettings) -> AsyncIterator[MapperRig]:
    bus = MemBus()
    device = bus.device("fuzzed")
    device.values.update({"t": 20.5, "sp": 21.0, "c": 3, "e": True})
    resources = Resources()
    resources.extras["mem.bus"] = bus
    options = MapperOptions(
        mqtt=settings, worker=WorkerOptions(backoff_initial=0.05, backoff_max=0.2)
    )
    mapper = Mapper([SPEC], {"mem": MemDriver}, options, resources=resources)
    async with mapper, settings.client() as client:
        async with asyncio.timeout(10):
            while not (mapper.link is not None and mapper.link.connected and device.connects):
                await asyncio.sleep(0.01)
        rig = MapperRig(mapper, device, client)
        await rig.settle(DELTA)  # the mapper is subscribed and applying deltas
        yield rig


# --------------------------------------------------------------------------- strategies
def valid_desired(name: Any, text: Any) -> bool:
    """True when the mapper would write ``text`` to property ``name``."""
    prop: PropertySpec[Any] | None = PROPS.get(name) if isinstance(name, str) else None
    if prop is None or not prop.writable or not isinstance(text, str):
        return False
    try:
        check_range(parse_text(text, prop.type), prop.minimum, prop.maximum)
    except ValueError:
        return False
    return True


def undecodable(payload: bytes) -> bool:
    """True when the mapper cannot read ``payload`` as JSON at all (what it counts today)."""
    try:
        json.loads(payload)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return True
    except RecursionError:
        return False
    return False


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
names = st.sampled_from(["setpoint", "count", "enabled", "temp", "nosuch", ""]) | st.text(
    max_size=10
)
BOUNDARY_TEXTS: Final = (
    "1e308",
    "-0.0",
    "NaN",
    "Infinity",
    "-Infinity",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "101",
    "-1",
    "4.999",
    "30.001",
    "True",
    "1",
    "",
    "x" * 600,
)
texts = st.sampled_from(BOUNDARY_TEXTS) | st.text(max_size=30)

# Payloads that are not JSON: random bytes, JSON text with broken UTF-8, a number
# with too many digits.
not_json = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=100).map(str.encode),
    st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]).map(
        lambda bad: b'{"delta": {"setpoint": "1' + bad + b'"}}'
    ),
    st.integers(min_value=4301, max_value=6000).map(lambda n: b"1" * n),
).filter(undecodable)


def _delta_docs() -> st.SearchStrategy[Any]:
    return st.one_of(
        json_values.filter(lambda v: not isinstance(v, dict)),  # not an object
        st.dictionaries(st.text(max_size=8).filter(lambda k: k != "delta"), json_values),
        json_values.filter(lambda v: not isinstance(v, dict)).map(lambda d: {"delta": d}),
        st.builds(lambda k, v: {"delta": {k: v}}, names, json_values),
        st.builds(lambda k, v: {"delta": {k: v}}, names, texts),
        st.builds(
            lambda k, v, t: {"delta": {k: v}, "twin": t, "version": t},
            names,
            texts,
            json_values,
        ),
    ).filter(lambda doc: not _writes_delta(doc))


def _get_docs() -> st.SearchStrategy[Any]:
    twin_entries = st.one_of(
        json_values,
        st.builds(lambda v: {"expected": v}, json_values),
        st.builds(lambda v: {"expected": {"value": v}}, texts),
        st.builds(
            lambda v, a: {"expected": {"value": v}, "actual": {"value": a}}, texts, json_values
        ),
    )
    return st.one_of(
        json_values.filter(lambda v: not isinstance(v, dict)),
        st.dictionaries(st.text(max_size=8).filter(lambda k: k != "twin"), json_values),
        json_values.filter(lambda v: not isinstance(v, dict)).map(lambda t: {"twin": t}),
        st.builds(lambda k, e: {"twin": {k: e}}, names, twin_entries),
        st.builds(lambda c, r: {"code": c, "reason": r}, json_values, json_values),
    ).filter(lambda doc: not _writes_get(doc))


def _writes_delta(doc: Any) -> bool:
    if not isinstance(doc, dict) or not isinstance(doc.get("delta"), dict):
        return False
    return any(valid_desired(k, v) for k, v in doc["delta"].items())


def _writes_get(doc: Any) -> bool:
    if not isinstance(doc, dict) or "code" in doc or not isinstance(doc.get("twin"), dict):
        return False
    for name, twin in doc["twin"].items():
        expected = twin.get("expected") if isinstance(twin, dict) else None
        if isinstance(expected, dict) and valid_desired(name, expected.get("value")):
            return True
    return False


def _encode(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


structurally_bad = st.one_of(
    st.tuples(st.just(DELTA), _delta_docs().map(_encode)),
    st.tuples(st.just(GET_RESULT), _get_docs().map(_encode)),
)


# --------------------------------------------------------------------------- tests
@SETTINGS
@given(
    topic=st.sampled_from([DELTA, GET_RESULT]),
    payloads=st.lists(not_json, min_size=1, max_size=4),
)
async def test_payloads_that_are_not_json_are_counted_and_written_nowhere(
    mapper_rig: MapperRig, topic: str, payloads: list[bytes]
) -> None:
    before = mapper_rig.mapper.malformed_messages
    for payload in payloads:
        await mapper_rig.client.publish(topic, payload, qos=1)
    await mapper_rig.settle(topic)
    assert mapper_rig.mapper.malformed_messages == before + len(payloads)
    mapper_rig.check_alive()


@SETTINGS
@given(messages=st.lists(structurally_bad, min_size=1, max_size=4))
async def test_wrong_deltas_and_get_results_are_never_written(
    mapper_rig: MapperRig, messages: list[tuple[str, bytes]]
) -> None:
    rejected = mapper_rig.mapper.workers[DEVICE_ID].stats.writes_rejected
    for topic, payload in messages:
        await mapper_rig.client.publish(topic, payload, qos=1)
    await mapper_rig.settle(messages[-1][0])
    mapper_rig.check_alive()
    assert mapper_rig.mapper.workers[DEVICE_ID].stats.writes_rejected >= rejected


@pytest.mark.parametrize("depth", [50, 5_000, 100_000])
async def test_deeply_nested_json_never_stops_the_mapper(mapper_rig: MapperRig, depth: int) -> None:
    for topic in (DELTA, GET_RESULT):
        for nested in ("[" * depth + "]" * depth, '{"delta":' * depth + "1" + "}" * depth):
            await mapper_rig.client.publish(topic, nested.encode(), qos=1)
        await mapper_rig.settle(topic)
    mapper_rig.check_alive()


async def test_json_of_the_wrong_shape_is_counted_too(mapper_rig: MapperRig) -> None:
    wrong = [
        (DELTA, b"[]"),
        (DELTA, b'{"delta": "setpoint"}'),
        (DELTA, b'{"delta": {"setpoint": 22}}'),
        (GET_RESULT, b'{"twin": []}'),
        (DELTA, b"[" * 100_000 + b"]" * 100_000),
    ]
    before = mapper_rig.mapper.malformed_messages
    for topic, payload in wrong:
        await mapper_rig.client.publish(topic, payload, qos=1)
    await mapper_rig.settle(DELTA)
    mapper_rig.check_alive()
    assert mapper_rig.mapper.malformed_messages == before + len(wrong)


def test_the_strategies_never_produce_a_write() -> None:
    """The oracle agrees with the model: boundary texts are refused, a plain value is not."""
    assert not any(valid_desired("setpoint", t) for t in BOUNDARY_TEXTS)
    assert not valid_desired("temp", "20")  # ReadOnly
    assert valid_desired("setpoint", "21.5") and valid_desired("count", "100")
