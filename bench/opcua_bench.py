"""OPC-UA driver throughput: polling and subscriptions on 1,000 nodes, against bare asyncua.

One simulator process (``mapperkit sim opcua``) serves N Int32 counters that
each change once a second (N changes/s in all). In this process, in the same run:

* **polling**: ``OpcUaDriver.read`` of all N nodes in a loop (one Read call per
  batch, values converted to typed :class:`Reading` objects), against bare
  asyncua clients reading the same nodes in a loop: ``Client.read_values``, and
  one prebuilt Read request sent with ``uaclient.read`` (no conversion at all).
  Target: the driver at >= 0.8x the faster bare loop's values per second.
* **subscriptions**: ``OpcUaDriver.subscribe`` on all N nodes (sampling 100 ms);
  every delivered value is checked against the counter sequence, so a lost
  change shows as a gap, and its delay (receive time minus the server's source
  timestamp) shows whether a backlog builds up. Target: every change delivered
  at N changes/s, with the delay of the last part of the run no worse than the first.
* **RSS** of this process before and after each part, and the simulator's.

Run: ``python -m bench.opcua_bench [--quick] [--nodes N] [--seconds S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

SAMPLING_MS = 100


def rss_mb(pid: int | None = None) -> float:
    """Resident set size in MiB, from /proc."""
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def write_profile(directory: Path, nodes: int) -> Path:
    profile = {
        "name": "bench",
        "namespace": "urn:mapperkit:bench",
        "object": "Bench",
        "path": "/bench",
        "variables": [
            {
                "name": f"p{i:04d}",
                "nodeId": f"i={1000 + i}",
                "type": "Int32",
                "behaviour": "counter",
                "interval": 1000,
            }
            for i in range(nodes)
        ],
    }
    path = directory / "bench-profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def device_spec(url: str, nodes: int, ns: int) -> Any:
    from mapper_sdk.model import load_text
    from mappers.opcua import OpcUaDriver

    doc = {
        "devices": [
            {
                "name": "bench",
                "protocol": "opcua",
                "connection": {"url": url, "timeout": 10},
                "properties": [
                    {
                        "name": f"p{i:04d}",
                        "type": "int",
                        "collectCycle": 1000,
                        "visitor": {
                            "nodeID": f"ns={ns};i={1000 + i}",
                            "samplingInterval": SAMPLING_MS,
                        },
                    }
                    for i in range(nodes)
                ],
            }
        ]
    }
    return load_text(json.dumps(doc), drivers={"opcua": OpcUaDriver}).devices[0]


async def start_simulator(profile: Path) -> tuple[asyncio.subprocess.Process, str]:
    from mapper_sdk.testing import free_port

    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mapper_sdk.cli",
        "sim",
        "opcua",
        "--profile",
        str(profile),
        "--port",
        str(port),
        "--log-level",
        "critical",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        line = (await proc.stdout.readline()).decode()
    if "serving" not in line:
        proc.kill()
        raise RuntimeError(f"the simulator did not start: {line!r}")
    return proc, f"opc.tcp://127.0.0.1:{port}/bench"


async def bare_loop(url: str, nodes: int, ns: int, seconds: float) -> tuple[int, float, float]:
    """Values read by a bare asyncua client in ``seconds``; (values, wall s, cpu s)."""
    from asyncua import Client

    async with Client(url, timeout=10) as client:
        handles = [client.get_node(f"ns={ns};i={1000 + i}") for i in range(nodes)]
        await client.read_values(handles)  # warm up
        count = 0
        cpu = time.process_time()
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            values = await client.read_values(handles)
            count += len(values)
        return count, time.perf_counter() - start, time.process_time() - cpu


async def bare_prebuilt_loop(
    url: str, nodes: int, ns: int, seconds: float
) -> tuple[int, float, float]:
    """Like :func:`bare_loop`, with one prebuilt Read request (both timestamps), no conversion."""
    from asyncua import Client, ua

    async with Client(url, timeout=10) as client:
        params = ua.ReadParameters()
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        for i in range(nodes):
            rv = ua.ReadValueId()
            rv.NodeId = ua.NodeId.from_string(f"ns={ns};i={1000 + i}")
            rv.AttributeId = ua.AttributeIds.Value
            params.NodesToRead.append(rv)
        await client.uaclient.read(params)  # warm up
        count = 0
        cpu = time.process_time()
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            results = await client.uaclient.read(params)
            count += len(results)
        return count, time.perf_counter() - start, time.process_time() - cpu


async def driver_loop(spec: Any, seconds: float) -> tuple[int, float, float]:
    """Values read through ``OpcUaDriver.read`` in ``seconds``; (values, wall s, cpu s)."""
    from mappers.opcua import OpcUaDriver

    driver = OpcUaDriver(spec)
    await driver.connect()
    try:
        props = list(spec.properties)
        await driver.read(props)  # warm up (plans the batch)
        count = 0
        cpu = time.process_time()
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            readings = await driver.read(props)
            count += len(readings)
        return count, time.perf_counter() - start, time.process_time() - cpu
    finally:
        await driver.close()


async def subscription_run(spec: Any, nodes: int, seconds: float) -> dict[str, Any]:
    """Subscribe to every node; count changes, gaps and delays over ``seconds``."""
    from mapper_sdk.driver import Reading
    from mappers.opcua import OpcUaDriver

    last: dict[str, int] = {}
    delivered = 0
    gaps = 0
    bad = 0
    delays: list[tuple[float, int]] = []
    measuring = False
    started = 0.0
    all_in = asyncio.Event()

    def sink(name: str, reading: Reading) -> None:
        nonlocal delivered, gaps, bad
        value = reading.value
        if not isinstance(value, int):
            bad += 1
            return
        previous = last.get(name)
        last[name] = value
        if previous is None and len(last) == nodes:
            all_in.set()
        if not measuring or previous is None:
            return
        delivered += 1
        if value != previous + 1:
            gaps += value - previous - 1 if value > previous else 1
        if reading.source_timestamp is not None:
            delays.append(
                (time.perf_counter() - started, reading.timestamp - reading.source_timestamp)
            )

    driver = OpcUaDriver(spec)
    await driver.connect()
    try:
        await driver.subscribe(list(spec.properties), sink)
        async with asyncio.timeout(30):
            await all_in.wait()  # every initial value in
        await asyncio.sleep(1.0)
        measuring = True
        cpu = time.process_time()
        started = time.perf_counter()
        await asyncio.sleep(seconds)
        measuring = False
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu
    finally:
        await driver.close()
    half = wall / 2
    first = sorted(d for t, d in delays if t < half) or [0]
    second = sorted(d for t, d in delays if t >= half) or [0]

    def p(values: list[int], q: float) -> float:
        return float(values[min(len(values) - 1, int(q * len(values)))])

    return {
        "delivered": delivered,
        "wall": wall,
        "cpu": cpu,
        "gaps": gaps,
        "bad": bad,
        "p50": statistics.median([d for _, d in delays]) if delays else float("nan"),
        "p99_first": p(first, 0.99),
        "p99_second": p(second, 0.99),
        "max": max((d for _, d in delays), default=0),
    }


async def run(nodes: int, seconds: float) -> int:
    logging.basicConfig(level=logging.ERROR)
    import asyncua  # noqa: F401 - loaded before the RSS baseline

    import mappers.opcua  # noqa: F401

    baseline_rss = rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        profile = write_profile(Path(tmp), nodes)
        proc, url = await start_simulator(profile)
        try:
            ns = 2
            spec = device_spec(url, nodes, ns)
            print(f"OPC-UA bench: {nodes} nodes, {seconds:g} s per measurement, simulator at {url}")

            # Polling: interleave the loops in rounds so drift hits all of them alike.
            bare = [0.0, 0.0, 0.0]
            prebuilt = [0.0, 0.0, 0.0]
            drv = [0.0, 0.0, 0.0]
            rounds = 3
            for _ in range(rounds):
                share = seconds / rounds
                for acc, result in (
                    (bare, await bare_loop(url, nodes, ns, share)),
                    (prebuilt, await bare_prebuilt_loop(url, nodes, ns, share)),
                    (drv, await driver_loop(spec, share)),
                ):
                    for i in range(3):
                        acc[i] += result[i]
            rss_after_poll = rss_mb()
            bare_rate = bare[0] / bare[1]
            prebuilt_rate = prebuilt[0] / prebuilt[1]
            drv_rate = drv[0] / drv[1]
            for label, acc, rate in (
                ("bare asyncua read_values", bare, bare_rate),
                ("bare asyncua prebuilt Read", prebuilt, prebuilt_rate),
                ("OpcUaDriver.read", drv, drv_rate),
            ):
                print(
                    f"polling   {label + ':':<28}{rate:10,.0f} values/s "
                    f"({acc[2] / acc[0] * 1e6:.2f} us CPU/value)"
                )
            print(
                f"polling   driver/read_values ratio {drv_rate / bare_rate:.2f}x, "
                f"driver/prebuilt ratio {drv_rate / prebuilt_rate:.2f}x (target >= 0.80x)"
            )
            sub = await subscription_run(spec, nodes, max(seconds, 5.0))
            generated = nodes / 1.0  # each counter changes once a second
            rate = sub["delivered"] / sub["wall"]
            print(f"subscribe generated by the simulator: {generated:10,.0f} changes/s")
            print(
                f"subscribe delivered to the sink:      {rate:10,.0f} changes/s  "
                f"ratio {rate / generated:.2f}x, lost {sub['gaps']}, bad {sub['bad']}, "
                f"{sub['cpu'] / max(sub['delivered'], 1) * 1e6:.1f} us CPU/change"
            )
            print(
                f"subscribe delay source->sink: p50 {sub['p50']:.0f} ms, p99 first half "
                f"{sub['p99_first']:.0f} ms, p99 second half {sub['p99_second']:.0f} ms, "
                f"max {sub['max']:.0f} ms (publishing interval {SAMPLING_MS} ms)"
            )
            backlog = sub["p99_second"] > 2 * sub["p99_first"] + SAMPLING_MS
            print(f"subscribe backlog: {'GROWING' if backlog else 'none'}")
            rss_end = rss_mb()
            print(
                f"RSS       bench process: {baseline_rss:.1f} MiB with asyncua loaded, "
                f"{rss_after_poll:.1f} MiB after polling, {rss_end:.1f} MiB after subscribing "
                f"(+{rss_end - baseline_rss:.1f} MiB, ratio {rss_end / baseline_rss:.2f}x); "
                f"simulator process {rss_mb(proc.pid):.1f} MiB"
            )
            ok = (
                drv_rate >= 0.8 * max(bare_rate, prebuilt_rate) and sub["gaps"] == 0 and not backlog
            )
            print("targets met" if ok else "TARGETS MISSED")
            return 0
        finally:
            proc.terminate()
            await proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.opcua_bench")
    parser.add_argument("--quick", action="store_true", help="short runs (about 15 s in all)")
    parser.add_argument("--nodes", type=int, default=1000, help="nodes (default 1000)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per measurement")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (3.0 if args.quick else 10.0)
    return asyncio.run(run(args.nodes, seconds))


if __name__ == "__main__":
    sys.exit(main())
