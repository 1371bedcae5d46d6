"""Twin service benchmark: durable update throughput, desired→delta latency, load, queries.

``python -m bench.twin_bench [--quick]``

Each figure is printed beside a baseline measured in the same run over the
same private Mosquitto broker:

* accepted durable updates per second (the service in its own process, as it
  runs in production, fed by one client that keeps many requests in flight)
  against the bare QoS 1 publish→receive message rate of the same client;
* the desired→delta round trip p50/p99 (set a desired value, wait for the
  delta) against a bare MQTT publish→receive round trip;
* loading 10,000 twins at start (first start and restart from the store),
  with the YAML parse of the device files shown separately;
* a query over 10,000 twins, evaluated in memory and answered over MQTT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mapper_sdk import topics
from mapper_sdk.model import AccessMode, DeviceSpec, PropertySpec, PropertyType, load_files
from mapper_sdk.mqtt import MqttLink, MqttSettings
from mapper_sdk.testing import Mosquitto
from twin.client import TwinClient
from twin.document import Options
from twin.query import parse_query
from twin.service import ServiceConfig, TwinCore, TwinService
from twin.store import Store

RESULT_FILTER = "$hw/events/device/+/+/twin/update/result"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def device_yaml(n: int, path: Path) -> None:
    lines = ["devices:"]
    for i in range(n):
        lines += [
            f"  - name: dev-{i:05d}",
            "    protocol: modbus",
            f"    nodeName: node-{i % 4}",
            "    properties:",
            "      - {name: temperature, type: float, accessMode: ReadOnly}",
            "      - {name: setpoint, type: float, minimum: 5, maximum: 30}",
            "      - {name: heating, type: boolean}",
        ]
    path.write_text("\n".join(lines) + "\n")


def specs(n: int) -> list[DeviceSpec[Any, Any]]:
    """``n`` devices built directly (the YAML parse is measured on its own)."""

    def prop(name: str, ptype: PropertyType, mode: AccessMode, i: int) -> PropertySpec[Any]:
        return PropertySpec(
            name=name,
            type=ptype,
            access_mode=mode,
            minimum=5.0 if name == "setpoint" else None,
            maximum=30.0 if name == "setpoint" else None,
            unit=None,
            description=None,
            visitor={},
            collect_cycle_ms=1000,
            report_cycle_ms=1000,
            report_to_cloud=True,
            desired=None,
            push_method=None,
            index=i,
        )

    props = (
        prop("temperature", PropertyType.FLOAT, AccessMode.READ_ONLY, 0),
        prop("setpoint", PropertyType.FLOAT, AccessMode.READ_WRITE, 1),
        prop("heating", PropertyType.BOOLEAN, AccessMode.READ_WRITE, 2),
    )
    return [
        DeviceSpec(
            name=f"dev-{i:05d}",
            namespace="default",
            model="thermostat",
            protocol="modbus",
            node_name=f"node-{i % 4}",
            protocol_config={},
            properties=props,
            validated=False,
        )
        for i in range(n)
    ]


# --------------------------------------------------------------------------- baselines
WINDOW = 32


async def windowed(client: Any, messages: Iterable[tuple[str, bytes]]) -> None:
    """Publish at QoS 1 keeping at most WINDOW messages unacknowledged."""
    slots = asyncio.Semaphore(WINDOW)
    tasks: set[asyncio.Task[None]] = set()

    async def one(topic: str, payload: bytes) -> None:
        try:
            await client.publish(topic, payload, qos=1)
        finally:
            slots.release()

    for topic, payload in messages:
        await slots.acquire()
        task = asyncio.create_task(one(topic, payload))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)


async def bare_rate(settings: MqttSettings, n: int) -> float:
    """Messages/s: one client publishes n QoS 1 messages that it also receives."""
    topic = f"bench/bare/{uuid.uuid4().hex}"
    payload = b'{"event_id":"x","timestamp":1,"twin":{"temperature":{"actual":{"value":"1"}}}}'
    async with settings.client() as client:
        client.pending_calls_threshold = 1_000_000
        await client.subscribe(topic, qos=1)
        got = 0
        done = asyncio.Event()

        async def receive() -> None:
            nonlocal got
            async for _ in client.messages:
                got += 1
                if got >= n:
                    done.set()
                    return

        reader = asyncio.create_task(receive())
        start = time.perf_counter()
        await windowed(client, ((topic, payload) for _ in range(n)))
        await asyncio.wait_for(done.wait(), 60)
        elapsed = time.perf_counter() - start
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    return n / elapsed


async def bare_round_trips(settings: MqttSettings, n: int) -> list[float]:
    topic = f"bench/rt/{uuid.uuid4().hex}"
    out: list[float] = []
    async with settings.client() as client:
        await client.subscribe(topic, qos=1)
        messages = aiter(client.messages)
        for _ in range(n):
            start = time.perf_counter()
            await client.publish(topic, b"x", qos=1)
            await anext(messages)
            out.append(time.perf_counter() - start)
    return out


# --------------------------------------------------------------------------- twin process
class TwinProcess:
    def __init__(self, broker: Mosquitto, files: list[Path], db: Path, durability: str) -> None:
        self.cmd = [
            sys.executable,
            "-m",
            "twin",
            "serve",
            "--broker",
            broker.url,
            "--db",
            str(db),
            "--durability",
            durability,
            "--log-level",
            "warning",
            "--devices",
            *map(str, files),
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = db.with_suffix(".log")

    async def __aenter__(self) -> TwinProcess:
        self.start()
        return self

    def start(self) -> None:
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in __aexit__
        self.proc = subprocess.Popen(self.cmd, stderr=self.log)

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        self.log.close()


async def wait_serving(client: TwinClient, device: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            await client.get(device)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def twin_rate(settings: MqttSettings, devices: int, n: int) -> float:
    """Accepted durable updates/s: n reports, each changing a value, many in flight.

    The reports are sent the way a mapper sends them (an ``MqttLink`` publishing
    pipelined batches), so the client is not what is measured.
    """
    got = 0
    errors = 0
    done = asyncio.Event()

    def receive(message: Any) -> None:
        nonlocal got, errors
        if b'"code"' in bytes(message.payload):
            errors += 1
        got += 1
        if got >= n:
            done.set()

    requests = []
    for j in range(n):
        body = {
            "event_id": uuid.uuid4().hex,
            "timestamp": 1,
            "twin": {"temperature": {"actual": {"value": str(20 + j % 97 / 10)}}},
        }
        topic = f"$hw/events/device/default/dev-{j % devices:05d}/twin/update"
        requests.append((topic, json.dumps(body).encode(), 1, False))
    async with MqttLink(settings, subscriptions=[RESULT_FILTER], on_message=receive) as link:
        async with asyncio.timeout(30):
            await link.wait_up()
        start = time.perf_counter()
        for i in range(0, n, 256):
            await link.publish_batch(requests[i : i + 256])
        await asyncio.wait_for(done.wait(), 120)
        elapsed = time.perf_counter() - start
    if errors:
        print(f"  ({errors} of {n} updates were rejected)")
    return n / elapsed


async def raw_delta_round_trips(settings: MqttSettings, n: int) -> list[float]:
    """The round trip with the same bare client as the baseline: publish, wait for the delta."""
    update = topics.device_topic("default", "dev-00000", topics.TWIN_UPDATE)
    delta_topic = topics.device_topic("default", "dev-00000", topics.TWIN_UPDATE_DELTA)
    out: list[float] = []
    async with settings.client() as client:
        await client.subscribe(delta_topic, qos=1)
        messages = aiter(client.messages)
        for i in range(n):
            value = repr(10 + (i % 2000) / 100)
            payload = json.dumps(
                {
                    "event_id": uuid.uuid4().hex,
                    "timestamp": 1,
                    "twin": {"setpoint": {"expected": {"value": value}}},
                }
            ).encode()
            start = time.perf_counter()
            await client.publish(update, payload, qos=1)
            while True:
                message = await anext(messages)
                body = message.payload
                assert isinstance(body, bytes)
                if json.loads(body)["delta"].get("setpoint") == value:
                    break
            out.append(time.perf_counter() - start)
    return out


async def delta_round_trips(settings: MqttSettings, n: int) -> list[float]:
    out: list[float] = []
    async with TwinClient(settings) as client:
        await wait_serving(client, "dev-00000")
        async with client.watch("dev-00000", kinds=("delta",)) as deltas:
            for i in range(n):
                value = 10 + (i % 2000) / 100
                start = time.perf_counter()
                await client.update(
                    "dev-00000",
                    {"setpoint": {"expected": {"value": repr(value)}}},
                )
                while True:
                    event = await anext(deltas)
                    if event.delta.get("setpoint") == repr(value):
                        break
                out.append(time.perf_counter() - start)
    return out


# --------------------------------------------------------------------------- main
async def run(quick: bool) -> None:
    n_rate = 3000 if quick else 20000
    n_rt = 200 if quick else 1000
    n_twins = 10_000
    tmp = Path(tempfile.mkdtemp(prefix="twin-bench-"))
    # set_tcp_nodelay: Mosquitto otherwise holds a reply sent right after another
    # for a TCP acknowledgement (see docs/twin.md).
    with Mosquitto(extra_config="set_tcp_nodelay true") as broker:
        settings = MqttSettings.from_url(broker.url)

        print("durable accepted updates per second (twin in its own process, 100 devices)")
        files = [tmp / "devices.yaml"]
        device_yaml(100, files[0])
        for durability in ("process", "power"):
            bare = await bare_rate(settings, n_rate)
            db = tmp / f"rate-{durability}.db"
            async with TwinProcess(broker, files, db, durability):
                async with TwinClient(settings) as client:
                    await wait_serving(client, "dev-00099")
                rate = await twin_rate(settings, 100, n_rate)
            print(
                f"  --durability {durability:7s}: {rate:8.0f} updates/s   bare QoS 1 "
                f"{bare:8.0f} msg/s   ratio {rate / bare:.2f}  (target >= 0.25)"
            )

        print("desired -> delta round trip (twin in its own process)")
        bare_rt = await bare_round_trips(settings, n_rt)
        async with TwinProcess(broker, files, tmp / "rt.db", "process"):
            raw_rt = await raw_delta_round_trips(settings, n_rt)
            client_rt = await delta_round_trips(settings, n_rt)
        for name, twin_rt in (("bare client", raw_rt), ("TwinClient ", client_rt)):
            for q, label in ((0.5, "p50"), (0.99, "p99")):
                t, b = pct(twin_rt, q) * 1000, pct(bare_rt, q) * 1000
                print(
                    f"  {name} {label}: {t:7.2f} ms   bare publish->receive {b:6.2f} ms   "
                    f"ratio {t / b:.2f}" + ("  (target <= 3)" if label == "p99" else "")
                )

        print(f"loading {n_twins} twins")
        yaml_path = tmp / "many.yaml"
        device_yaml(n_twins if not quick else 2000, yaml_path)
        start = time.perf_counter()
        loaded = load_files([yaml_path]).devices
        yaml_s = time.perf_counter() - start
        print(
            f"  YAML parse of {len(loaded)} devices (mapper_sdk.model.load_files): {yaml_s:.2f} s"
            + (f" (~{yaml_s * n_twins / len(loaded):.1f} s for {n_twins})" if quick else "")
        )
        many = specs(n_twins)
        db = tmp / "many.db"
        for label in ("first start (empty store)", "restart (from the store)"):
            store = Store.open(db)
            core = TwinCore(store, Options(), None)
            start = time.perf_counter()
            core.load(many)
            took = time.perf_counter() - start
            store.close()
            print(f"  {label}: {took:.3f} s   (target < 2 s)")

        print(f"query over {n_twins} twins")
        store = Store.open(db)
        core = TwinCore(store, Options(), None)
        core.load(many)
        for i, dev in enumerate(core.devices.values()):
            if i % 3 == 0:
                dev.state = "online"
        store.close()
        where = "reported.temperature > 30 AND state = 'online' OR name LIKE 'dev-000%'"
        order_by = "state DESC, id"
        query = parse_query({"where": where, "order_by": order_by, "limit": 100})
        times = []
        for _ in range(20 if quick else 50):
            start = time.perf_counter()
            query.run(core.devices.values())
            times.append(time.perf_counter() - start)
        p50, p99 = pct(times, 0.5) * 1000, pct(times, 0.99) * 1000
        print(f"  in memory, p50 {p50:.1f} ms  p99 {p99:.1f} ms")
        config = ServiceConfig(mqtt=settings, db_path=db, node=None)
        async with TwinService(config, many) as service:
            await service.wait_ready()
            async with TwinClient(settings) as client:
                rts = []
                for _ in range(20 if quick else 50):
                    start = time.perf_counter()
                    await client.query(where, order_by=order_by, limit=100)
                    rts.append(time.perf_counter() - start)
        bare = pct(bare_rt, 0.5) * 1000
        q50 = pct(rts, 0.5) * 1000
        print(
            f"  over MQTT (100 whole twins per page), p50 {q50:.1f} ms   bare publish->receive "
            f"{bare:.2f} ms   ratio {q50 / bare:.1f}  (target < 50 ms)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.twin_bench")
    parser.add_argument("--quick", action="store_true", help="a short run")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    asyncio.run(run(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
