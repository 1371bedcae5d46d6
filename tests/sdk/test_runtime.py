"""The mapper runtime against a real Mosquitto, with the in-memory driver."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mapper_sdk import topics
from mapper_sdk.driver import Resources
from mapper_sdk.model import DeviceSpec, load_text
from mapper_sdk.mqtt import MqttSettings
from mapper_sdk.runtime import Mapper, MapperOptions, WorkerOptions
from mapper_sdk.testing import Mosquitto

from ..mqttpeer import Received, mqtt_peer
from .memdriver import MemBus, MemDriver

DRIVERS = {"mem": MemDriver}

RIG = """
devices:
  - name: {name}
    protocol: mem
    connection: {{device: {name}}}
    properties:
      - {{name: temp, type: float, accessMode: ReadOnly, collectCycle: {collect},
          reportCycle: {report}, visitor: {{address: t}}}}
      - {{name: setpoint, type: float, minimum: 5, maximum: 30, collectCycle: {collect},
          reportCycle: {report}, visitor: {{address: sp}}}}
      - {{name: hidden, type: int, reportToCloud: false, collectCycle: {collect},
          visitor: {{address: h}}}}
"""


def rig(name: str, collect: int = 100, report: int = 100) -> DeviceSpec[Any, Any]:
    inv = load_text(RIG.format(name=name, collect=collect, report=report), drivers=DRIVERS)
    return inv.devices[0]


def options(broker: Mosquitto, **kw: Any) -> MapperOptions:
    worker = WorkerOptions(backoff_initial=0.05, backoff_max=0.4)
    return MapperOptions(mqtt=MqttSettings.from_url(broker.url), worker=worker, **kw)


@contextlib.asynccontextmanager
async def running(
    devices: list[DeviceSpec[Any, Any]], bus: MemBus, opts: MapperOptions
) -> AsyncIterator[Mapper]:
    resources = Resources()
    resources.extras["mem.bus"] = bus
    mapper = Mapper(devices, DRIVERS, opts, resources=resources)
    async with mapper:
        yield mapper


def updates(messages: list[Received], name: str) -> list[dict[str, Any]]:
    topic = topics.device_topic("default", name, topics.TWIN_UPDATE)
    return [m.json for m in messages if m.topic == topic]


def states(messages: list[Received], name: str) -> list[str]:
    """The state transitions reported (periodic repeats collapsed)."""
    topic = topics.device_topic("default", name, topics.STATE_UPDATE)
    out: list[str] = []
    for m in messages:
        if m.topic == topic and (not out or out[-1] != m.json["state"]):
            out.append(m.json["state"])
    return out


def device_topic(name: str, suffix: str) -> str:
    return topics.device_topic("default", name, suffix)


async def test_collect_and_report_cycles(mosquitto: Mosquitto) -> None:
    bus = MemBus()
    dev = bus.device("cycles")
    dev.values.update({"t": 20.5, "sp": 21.0, "h": 7})
    spec = rig("cycles", collect=100, report=200)
    async with mqtt_peer(mosquitto.port, "$hw/events/device/default/cycles/#") as peer:
        async with running([spec], bus, options(mosquitto)):
            await peer.wait_for(lambda m: len(updates(m, "cycles")) >= 3)
    reads = dev.reads
    assert len(reads) >= 5
    # One batch per cycle with every property of that cycle.
    assert all(names == ("temp", "setpoint", "hidden") for _, names in reads)
    # The scheduler never reads early: consecutive cycles are at least one period apart.
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(reads)]
    assert min(gaps) >= 0.09, gaps
    sent = updates(peer.messages, "cycles")
    for doc in sent:
        assert set(doc["twin"]) == {"temp", "setpoint"}  # reportToCloud: false stays out
        assert doc["twin"]["temp"]["actual"]["value"] == "20.5"
        assert doc["twin"]["temp"]["metadata"] == {"type": "float"}
        assert isinstance(doc["twin"]["temp"]["actual"]["metadata"]["timestamp"], int)
        assert doc["event_id"]
        assert isinstance(doc["timestamp"], int)
    # Reports come at half the collect rate.
    assert len(sent) <= len(reads) // 2 + 2
    assert states(peer.messages, "cycles")[:1] == ["online"]
    assert states(peer.messages, "cycles")[-1] == "offline"  # reported on shutdown


async def test_connect_backoff_then_online(mosquitto: Mosquitto) -> None:
    bus = MemBus()
    dev = bus.device("flaky")
    dev.values.update({"t": 1.0, "sp": 10.0, "h": 0})
    dev.online = False
    spec = rig("flaky")
    async with mqtt_peer(mosquitto.port, "$hw/events/device/default/flaky/#") as peer:
        async with running([spec], bus, options(mosquitto)) as mapper:
            while len(dev.connect_attempts) < 5:
                await asyncio.sleep(0.02)
            assert mapper.workers["default/flaky"].state.value == "offline"
            dev.online = True
            await peer.wait_for(lambda m: updates(m, "flaky"))
            assert mapper.workers["default/flaky"].state.value == "online"
    attempts = dev.connect_attempts
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    # Exponential: the later waits are longer than the first ones (jitter is +-50%).
    assert max(gaps[2:]) > min(gaps[:2])
    assert states(peer.messages, "flaky")[:2] == ["offline", "online"]


async def test_device_lost_and_recovered(mosquitto: Mosquitto) -> None:
    bus = MemBus()
    dev = bus.device("lost")
    dev.values.update({"t": 1.0, "sp": 10.0, "h": 0})
    async with mqtt_peer(mosquitto.port, "$hw/events/device/default/lost/#") as peer:
        async with running([rig("lost")], bus, options(mosquitto)):
            await peer.wait_for(lambda m: updates(m, "lost"))
            dev.online = False  # reads now raise DeviceUnavailable
            await peer.wait_for(lambda m: "offline" in states(m, "lost"))
            dev.online = True
            await peer.wait_for(lambda m: states(m, "lost")[-1:] == ["online"])
    assert dev.connects >= 2
    assert states(peer.messages, "lost")[:3] == ["online", "offline", "online"]


async def test_desired_value_written_and_reported_with_ack(mosquitto: Mosquitto) -> None:
    bus = MemBus()
    dev = bus.device("writer")
    dev.values.update({"t": 19.0, "sp": 20.0, "h": 0})
    async with mqtt_peer(mosquitto.port, "$hw/events/device/default/writer/#") as peer:
        async with running([rig("writer", report=1000)], bus, options(mosquitto)):
            await peer.wait_for(lambda m: updates(m, "writer"))
            await peer.publish(
                device_topic("writer", topics.TWIN_UPDATE_DELTA),
                {
                    "event_id": "d1",
                    "timestamp": 1,
                    "version": 3,
                    "twin": {
                        "setpoint": {
                            "expected": {"value": "25.5"},
                            "expected_version": {"cloud": 0, "edge": 2},
                        }
                    },
                    "delta": {"setpoint": "25.5"},
                },
            )

            def acked(m: list[Received]) -> Any:
                return [d for d in updates(m, "writer") if "ack" in d["twin"].get("setpoint", {})]

            (doc,) = await peer.wait_for(acked)
    assert dev.writes == [("setpoint", 25.5)]
    assert dev.values["sp"] == 25.5
    entry = doc["twin"]["setpoint"]
    assert entry["actual"]["value"] == "25.5"  # the read-back value
    assert entry["ack"] == {"expected_version": 2, "status": "applied"}


async def test_invalid_desired_values_rejected_with_reason(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    bus = MemBus()
    dev = bus.device("strict")
    dev.values.update({"t": 19.0, "sp": 20.0, "h": 0})
    dev.refuse["sp"] = "the device is locked"
    caplog.set_level(logging.WARNING, logger="mapper_sdk.runtime")
    async with mqtt_peer(mosquitto.port, "$hw/events/device/default/strict/#") as peer:
        async with running([rig("strict", report=1000)], bus, options(mosquitto)):
            await peer.wait_for(lambda m: updates(m, "strict"))
            delta = device_topic("strict", topics.TWIN_UPDATE_DELTA)
            for value in ("99", "warm", "12"):
                await peer.publish(delta, {"delta": {"setpoint": value}})
            await peer.publish(delta, {"delta": {"temp": "30"}})

            def acks(m: list[Received]) -> list[dict[str, Any]]:
                out = []
                for d in updates(m, "strict"):
                    for name, twin in d["twin"].items():
                        if "ack" in twin:
                            out.append({"name": name, **twin["ack"]})
                return out

            got = await peer.wait_for(lambda m: len(acks(m)) >= 4 and acks(m))
    assert dev.writes == []  # nothing was written
    assert dev.values["sp"] == 20.0
    reasons = {(a["name"], a["status"], a["reason"]) for a in got}
    assert ("setpoint", "rejected", "setpoint: 99.0 is above the maximum 30") in reasons
    assert ("setpoint", "rejected", "setpoint: 'warm' is not a decimal number") in reasons
    assert ("setpoint", "rejected", "the device is locked") in reasons
    assert ("temp", "rejected", "property temp is ReadOnly") in reasons
    logged = caplog.text
    assert "event=desired-rejected property=setpoint value='99'" in logged
    assert "above the maximum 30" in logged


async def test_get_after_connect_applies_pending_desired(mosquitto: Mosquitto) -> None:
    bus = MemBus()
    dev = bus.device("resync")
    dev.values.update({"t": 19.0, "sp": 20.0, "h": 0})
    get_topic = device_topic("resync", topics.TWIN_GET)
    async with mqtt_peer(mosquitto.port, get_topic) as peer:
        async with running([rig("resync")], bus, options(mosquitto)):
            (request,) = await peer.wait_for(lambda m: m[:1])
            assert request.topic == get_topic
            await peer.publish(
                device_topic("resync", topics.TWIN_GET_RESULT),
                {
                    "event_id": request.json["event_id"],
                    "version": 9,
                    "twin": {
                        "setpoint": {
                            "expected": {"value": "22"},
                            "actual": {"value": "20"},
                            "expected_version": {"cloud": 0, "edge": 4},
                        },
                        "temp": {"actual": {"value": "19"}},
                    },
                },
            )
            for _ in range(200):
                if dev.writes:
                    break
                await asyncio.sleep(0.02)
    assert dev.writes == [("setpoint", 22.0)]


async def test_subscription_pushes_reported_promptly(mosquitto: Mosquitto) -> None:
    text = """
devices:
  - name: pushy
    protocol: mem
    connection: {device: pushy}
    properties:
      - {name: level, type: int, collectCycle: 60000, reportCycle: 60000,
         visitor: {address: l, subscribe: true}}
"""
    spec = load_text(text, drivers=DRIVERS).devices[0]
    bus = MemBus()
    dev = bus.device("pushy")
    async with mqtt_peer(mosquitto.port, device_topic("pushy", topics.TWIN_UPDATE)) as peer:
        async with running([spec], bus, options(mosquitto)):
            while not dev.sinks:
                await asyncio.sleep(0.01)
            for value in (1, 2, 3):
                dev.push("l", value)
                await asyncio.sleep(0.01)
            docs = await peer.wait_for(lambda m: len(m) >= 3 and m)
    values = [json.loads(d.payload)["twin"]["level"]["actual"]["value"] for d in docs]
    assert values[:3] == ["1", "2", "3"]
    assert dev.reads == []  # subscribed properties are not polled


async def test_outbox_keeps_reports_while_broker_is_down(tmp_path: Any) -> None:
    """Stop the broker under a reporting mapper; after it returns, every report arrives in order."""
    broker = Mosquitto(persistence=True)
    broker.start()
    try:
        bus = MemBus()
        dev = bus.device("outage")
        dev.values.update({"t": 0.0, "sp": 10.0, "h": 0})
        opts = options(broker, outbox_path=str(tmp_path / "outbox.db"))
        filt = device_topic("outage", topics.TWIN_UPDATE)

        # A persistent-session subscriber: the broker queues for it across the restart.
        async with mqtt_peer(broker.port, filt, client_id="outage-sub", clean=False):
            pass
        received: list[dict[str, Any]] = []
        async with running([rig("outage", collect=50, report=50)], bus, opts) as mapper:
            async with mqtt_peer(broker.port, filt, client_id="outage-sub", clean=False) as peer:
                await peer.wait_for(lambda m: len(m) >= 3)
                received += [m.json for m in peer.messages]
            broker.stop()
            worker = mapper.workers["default/outage"]
            before = worker.stats.reports
            while worker.stats.reports < before + 10:  # reports made while the broker is down
                dev.values["t"] = float(worker.stats.reports)
                await asyncio.sleep(0.02)
            assert mapper.outbox is not None
            assert mapper.outbox.depth >= 10
            broker.start()
            async with mqtt_peer(broker.port, filt, client_id="outage-sub", clean=False) as peer:
                await peer.wait_for(
                    lambda m: (
                        mapper.outbox is not None and mapper.outbox.depth == 0 and len(m) > 10
                    ),
                    timeout=20,
                )
                made = worker.stats.reports
                await peer.wait_for(
                    lambda m: len({d.json["event_id"] for d in m}) + len(received) >= made - 1,
                    timeout=20,
                )
                received += [m.json for m in peer.messages]
        ids = [int(d["event_id"].rsplit("-", 1)[1]) for d in received]
        unique = sorted(set(ids))
        assert ids == sorted(ids), "reports arrive in the order they were made"
        # Nothing lost: every report the worker made before the last one or two is here.
        assert len(unique) >= made - 1
        assert mapper.outbox is not None
        assert mapper.outbox.dropped == 0
    finally:
        broker.close()


async def test_outbox_bound_drops_oldest_and_counts(private_mosquitto: Mosquitto) -> None:
    bus = MemBus()
    dev = bus.device("bounded")
    dev.values.update({"t": 0.0, "sp": 10.0, "h": 0})
    opts = options(private_mosquitto, outbox_max=5)
    async with running([rig("bounded", collect=20, report=20)], bus, opts) as mapper:
        await asyncio.sleep(0.2)
        private_mosquitto.stop()
        assert mapper.outbox is not None
        while mapper.outbox.dropped < 10:
            await asyncio.sleep(0.02)
        assert mapper.outbox.depth <= 5


async def test_clean_shutdown_closes_driver_and_tasks(mosquitto: Mosquitto) -> None:
    bus = MemBus()
    bus.device("bye").values.update({"t": 0.0, "sp": 10.0, "h": 0})
    before = set(asyncio.all_tasks())
    resources = Resources()
    resources.extras["mem.bus"] = bus
    mapper = Mapper([rig("bye")], DRIVERS, options(mosquitto), resources=resources)
    serving = asyncio.create_task(mapper.serve_forever())
    await asyncio.sleep(0.3)
    mapper.stop()
    async with asyncio.timeout(5):
        await serving
    await asyncio.sleep(0.05)
    left = [t.get_name() for t in asyncio.all_tasks() - before if not t.done()]
    assert left == []
    assert mapper.workers["default/bye"].driver._dev is None  # type: ignore[attr-defined]
