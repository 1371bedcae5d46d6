"""Data-plane benchmark: readings per second from the runtime to the MQTT sink.

``python -m bench.data_plane_bench [--quick]``

1,000 properties (10 devices x 100) change on every collect; each is
reported on change and pushed by the ``mqtt`` sink as one JSON message (QoS 0)
to a private Mosquitto. Printed beside a baseline measured in the same run:

* at the nominal load (collectCycle 100 ms, 10,000 readings/s offered): the
  readings/s the sink delivered, against the offered rate, and the mapper
  process's CPU per reading;
* saturated (collectCycle 10 ms, 100,000 readings/s offered, far more than
  one Python process can publish): the readings/s the runtime sustains end to
  end (driver read, conversion, on-change check, JSON, MQTT), against a bare
  aiomqtt loop publishing the same number of the same messages as fast as it
  can (``await client.publish(...)`` in a loop). Target: >= 0.7x.

A subscriber in another process counts what the broker delivered, so the
figures are not the sink's own word only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import aiomqtt
from pydantic import BaseModel, ConfigDict

from mapper_sdk.driver import Driver, Reading, Resources, now_ms
from mapper_sdk.model import DeviceSpec, PropertySpec, load_text
from mapper_sdk.mqtt import MqttSettings
from mapper_sdk.runtime import Mapper, MapperOptions
from mapper_sdk.runtime.reporters import ReporterContext
from mapper_sdk.runtime.reporters.mqtt import Batch, MqttReporter
from mapper_sdk.testing import Mosquitto

DEVICES = 10
PROPERTIES = 100
TOPIC_FILTER = "bench/#"


class BenchProtocol(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    seed: int = 0


class BenchVisitor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    index: int


class BenchDriver(Driver[BenchProtocol, BenchVisitor]):
    """Every property changes on every read (a counter plus the property's index)."""

    protocol = "bench"
    protocol_config = BenchProtocol
    visitor_config = BenchVisitor

    def __init__(
        self, device: DeviceSpec[BenchProtocol, BenchVisitor], resources: Any = None
    ) -> None:
        super().__init__(device, resources)
        self._cycle = 0

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def read(self, properties: Sequence[PropertySpec[BenchVisitor]]) -> dict[str, Reading]:
        self._cycle += 1
        base = self._cycle * 0.5
        ts = now_ms()
        return {p.name: Reading(base + p.visitor.index, timestamp=ts) for p in properties}


def devices_yaml(cycle_ms: int) -> str:
    lines = ["devices:"]
    for d in range(DEVICES):
        lines += [
            f"  - name: dev-{d:02d}",
            "    protocol: bench",
            "    connection: {seed: 0}",
            f"    collectCycle: {cycle_ms}",
            "    reportStrategy: {mode: on-change}",
            "    stateReport: {reportToCloud: false}",
            "    properties:",
        ]
        for p in range(PROPERTIES):
            lines.append(
                f"      - {{name: p{p:03d}, type: float, reportToCloud: false, "
                f"visitor: {{index: {p}}}, "
                "pushMethod: {mqtt: {topic: 'bench/{device}/{property}', qos: 0}}}"
            )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- subscriber
SUBSCRIBER = """
import asyncio, sys, aiomqtt
async def main(port):
    n = 0
    async with aiomqtt.Client("127.0.0.1", port, max_queued_incoming_messages=0) as c:
        await c.subscribe("bench/#", qos=0)
        await c.subscribe("bench-control/stop", qos=1)
        print("ready", flush=True)
        async for m in c.messages:
            if m.topic.value == "bench-control/stop":
                print(n, flush=True)
                return
            n += 1
asyncio.run(main(int(sys.argv[1])))
"""


class Subscriber:
    """A process that counts messages on ``bench/#`` until told to stop."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SUBSCRIBER, str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the subscriber did not start")

    async def count(self) -> int:
        async with aiomqtt.Client("127.0.0.1", self.port) as client:
            await client.publish("bench-control/stop", b"", qos=1)
        out, _ = await asyncio.to_thread(self.proc.communicate, timeout=30)
        return int(out.strip().splitlines()[-1])


# --------------------------------------------------------------------------- phases
async def run_mapper(
    broker: Mosquitto, cycle_ms: int, seconds: float, warmup: float
) -> dict[str, float]:
    drivers = {"bench": BenchDriver}
    specs = load_text(devices_yaml(cycle_ms), drivers=drivers).devices
    options = MapperOptions(mqtt=MqttSettings.from_url(broker.url))
    mapper = Mapper(specs, drivers, options, resources=Resources())
    subscriber = Subscriber(broker.port)
    async with mapper:
        (sink,) = mapper.sinks.values()
        assert isinstance(sink, MqttReporter)
        await asyncio.sleep(warmup)
        sent0, cpu0, wall0 = sink.stats.sent, time.process_time(), time.perf_counter()
        reads0 = sum(w.stats.reads for w in mapper.workers.values())
        await asyncio.sleep(seconds)
        sent1, cpu1, wall1 = sink.stats.sent, time.process_time(), time.perf_counter()
        reads1 = sum(w.stats.reads for w in mapper.workers.values())
        stats = sink.stats
    delivered = await subscriber.count()
    wall = wall1 - wall0
    return {
        "offered": DEVICES * PROPERTIES * 1000.0 / cycle_ms,
        "read_rate": (reads1 - reads0) / wall,
        "rate": (sent1 - sent0) / wall,
        "cpu_per_reading_us": (cpu1 - cpu0) / max(1, sent1 - sent0) * 1e6,
        "sent": float(stats.sent),
        "dropped": float(stats.dropped),
        "delivered": float(delivered),
    }


async def run_bare(broker: Mosquitto, count: int) -> dict[str, float]:
    """The same messages (topics and JSON payloads) from a bare aiomqtt publish loop."""
    specs = load_text(devices_yaml(100), drivers={"bench": BenchDriver}).devices
    context = ReporterContext(mqtt=MqttSettings.from_url(broker.url))
    sink = MqttReporter({"topic": "bench/{device}/{property}", "qos": 0}, context)
    ts = now_ms()
    batches: list[Batch] = []
    for i, spec in enumerate(specs):
        items = []
        for p in spec.properties:
            value = float(i + p.visitor.index)
            items.append((p, value, Reading(value, timestamp=ts)))
        batches.append((spec, items))
    template = sink.encode(batches)
    messages = [template[i % len(template)] for i in range(count)]
    subscriber = Subscriber(broker.port)
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for topic, payload, qos, retain in messages:
            await client.publish(topic, payload, qos=qos, retain=retain)
        cpu1, wall1 = time.process_time(), time.perf_counter()
    delivered = await subscriber.count()
    return {
        "rate": count / (wall1 - wall0),
        "cpu_per_message_us": (cpu1 - cpu0) / count * 1e6,
        "delivered": float(delivered),
    }


async def bench(quick: bool) -> int:
    seconds = 3.0 if quick else 10.0
    warmup = 1.0 if quick else 2.0
    with Mosquitto() as broker:
        nominal = await run_mapper(broker, 100, seconds, warmup)
        saturated = await run_mapper(broker, 10, seconds, warmup)
        bare = await run_bare(broker, max(20_000, int(saturated["rate"] * seconds)))
    print(f"machine: {os.cpu_count()} cores; {DEVICES} devices x {PROPERTIES} properties, QoS 0")
    print(
        f"nominal (collect 100 ms): {nominal['rate']:,.0f} readings/s delivered by the sink "
        f"of {nominal['offered']:,.0f}/s offered = {nominal['rate'] / nominal['offered']:.2f}x; "
        f"{nominal['cpu_per_reading_us']:.1f} us CPU per reading; "
        f"{nominal['dropped']:.0f} dropped; subscriber got {nominal['delivered']:,.0f} "
        f"of {nominal['sent']:,.0f} sent"
    )
    print(
        f"saturated (collect 10 ms, {saturated['offered']:,.0f}/s offered): "
        f"driver reads {saturated['read_rate']:,.0f}/s, sink delivered "
        f"{saturated['rate']:,.0f} readings/s ({saturated['cpu_per_reading_us']:.1f} us CPU each)"
    )
    print(
        f"bare aiomqtt publish loop, same messages: {bare['rate']:,.0f} msg/s "
        f"({bare['cpu_per_message_us']:.1f} us CPU each); subscriber got "
        f"{bare['delivered']:,.0f}"
    )
    ratio = saturated["rate"] / bare["rate"]
    print(f"runtime -> MQTT sink / bare publish loop: {ratio:.2f}x (target >= 0.70x)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.data_plane_bench")
    parser.add_argument("--quick", action="store_true", help="short run (about 15 s)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(bench(args.quick))
    return 130


if __name__ == "__main__":
    sys.exit(main())
