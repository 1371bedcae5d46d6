"""Modbus: properties read per second by the driver versus a naive loop, same simulator.

``python -m bench.modbus_bench [--quick] [--devices N] [--registers R] [--seconds S]``

One simulator process serves N units of R holding registers each (defaults 100
and 20). Two measurements run one after the other, each in a process of its
own so their memory figures are their own:

* **mapper**: one :class:`~mappers.modbus.ModbusDriver` per unit, all sharing
  one connection through a :class:`~mapper_sdk.driver.Resources` pool (as the
  runtime runs them), each device reading all its properties in a loop, as
  fast as the collect cycle allows; the driver coalesces each batch.
* **naive** (the baseline): the same N concurrent loops over one shared
  pymodbus client, each property read with a request of its own.

Printed: properties per second of each and their ratio (target >= 5x), the
mapper process's peak RSS (target <= 60 MB) beside the naive process's, and
the simulator's CPU use during each run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 5.0
TARGET_RSS_MB = 60.0


# --------------------------------------------------------------------------- workload
def profile(devices: int, registers: int) -> dict[str, Any]:
    """N units of R registers: mostly constants, a counter and a setpoint per unit."""
    units = []
    for unit in range(1, devices + 1):
        points: list[dict[str, Any]] = [
            {"name": f"r{i}", "table": "holding", "address": i, "value": unit * 100 + i}
            for i in range(registers)
        ]
        points[0]["behaviour"] = {"kind": "counter", "interval": 0.5}
        points[-1]["behaviour"] = "setpoint"
        units.append({"id": unit, "points": points})
    return {"name": "bench", "units": units}


def device_yaml(devices: int, registers: int, port: int) -> str:
    docs = []
    for unit in range(1, devices + 1):
        docs.append(
            {
                "name": f"meter-{unit}",
                "protocol": "modbus",
                "connection": {"ip": "127.0.0.1", "port": port, "slaveID": unit},
                "properties": [
                    {
                        "name": f"r{i}",
                        "type": "int",
                        "accessMode": "ReadOnly",
                        "visitor": {"register": "HoldingRegister", "offset": i},
                    }
                    for i in range(registers)
                ],
            }
        )
    return yaml.safe_dump({"devices": docs})


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- roles
async def run_mapper(port: int, devices: int, registers: int, seconds: float) -> dict[str, Any]:
    from mapper_sdk.driver import Resources
    from mapper_sdk.model import load_text
    from mappers.modbus import ModbusDriver

    inventory = load_text(device_yaml(devices, registers, port), drivers={"modbus": ModbusDriver})
    resources = Resources()
    drivers = [ModbusDriver(spec, resources) for spec in inventory.devices]
    for drv in drivers:
        await drv.connect()
    plans = [len(drv.planner.plan(tuple(p.name for p in drv.device.properties))) for drv in drivers]
    counts = [0] * len(drivers)
    cycles = [0] * len(drivers)
    deadline = time.monotonic() + seconds

    async def collect(i: int) -> None:
        drv = drivers[i]
        props = list(drv.device.properties)
        while time.monotonic() < deadline:
            readings = await drv.read(props)
            counts[i] += sum(1 for r in readings.values() if r.ok)
            cycles[i] += 1

    started, cpu = time.monotonic(), own_cpu()
    async with asyncio.TaskGroup() as tg:
        for i in range(len(drivers)):
            tg.create_task(collect(i), name=f"bench[{i}].collect")
    elapsed, cpu = time.monotonic() - started, own_cpu() - cpu
    for drv in drivers:
        await drv.close()
    requests = sum(c * n for c, n in zip(cycles, plans, strict=True))
    return {
        "properties": sum(counts),
        "requests": requests,
        "elapsed": elapsed,
        "cpu": cpu / elapsed,
        "rss_mb": peak_rss_mb(),
    }


async def run_naive(port: int, devices: int, registers: int, seconds: float) -> dict[str, Any]:
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=3, retries=0, reconnect_delay=0)
    if not await client.connect():
        raise SystemExit(f"naive loop: cannot connect to port {port}")
    counts = [0] * devices
    deadline = time.monotonic() + seconds

    async def collect(i: int) -> None:
        unit = i + 1
        while time.monotonic() < deadline:
            for address in range(registers):
                resp = await client.read_holding_registers(address, count=1, device_id=unit)
                if not resp.isError():
                    _ = resp.registers[0]
                    counts[i] += 1

    started, cpu = time.monotonic(), own_cpu()
    async with asyncio.TaskGroup() as tg:
        for i in range(devices):
            tg.create_task(collect(i), name=f"naive[{i}].collect")
    elapsed, cpu = time.monotonic() - started, own_cpu() - cpu
    client.close()
    return {
        "properties": sum(counts),
        "requests": sum(counts),
        "elapsed": elapsed,
        "cpu": cpu / elapsed,
        "rss_mb": peak_rss_mb(),
    }


# --------------------------------------------------------------------------- orchestration
def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_simulator(profile_path: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.modbus", "--profile", str(profile_path), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"the simulator did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def measure(role: str, sim_pid: int, port: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "bench.modbus_bench",
        "--role",
        role,
        "--port",
        str(port),
        "--devices",
        str(args.devices),
        "--registers",
        str(args.registers),
        "--seconds",
        str(args.seconds),
    ]
    cpu_before = cpu_seconds(sim_pid)
    wall_before = time.monotonic()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.monotonic() - wall_before
    cpu = cpu_seconds(sim_pid) - cpu_before
    if out.returncode != 0:
        raise SystemExit(f"{role} run failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["sim_cpu"] = cpu / wall
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.modbus_bench")
    parser.add_argument("--quick", action="store_true", help="3 s per run instead of 10")
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--registers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--role", choices=["mapper", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 3.0 if args.quick else 10.0

    if args.role is not None:
        run = run_mapper if args.role == "mapper" else run_naive
        result = asyncio.run(run(args.port, args.devices, args.registers, args.seconds))
        print(json.dumps(result))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench-profile.yaml"
        path.write_text(yaml.safe_dump(profile(args.devices, args.registers)))
        sim, port = start_simulator(path)
        try:
            mapper = measure("mapper", sim.pid, port, args)
            naive = measure("naive", sim.pid, port, args)
        finally:
            sim.terminate()
            sim.wait(timeout=10)

    m_rate = mapper["properties"] / mapper["elapsed"]
    n_rate = naive["properties"] / naive["elapsed"]
    ratio = m_rate / n_rate if n_rate else float("inf")
    print(
        f"modbus: {args.devices} devices x {args.registers} registers, one simulator process "
        f"(loopback TCP), {args.seconds:g} s per run"
    )
    print(
        f"  mapper (coalesced) : {m_rate:10,.0f} properties/s  "
        f"{mapper['requests'] / mapper['elapsed']:8,.0f} requests/s  "
        f"own CPU {mapper['cpu']:4.0%}  simulator CPU {mapper['sim_cpu']:4.0%}"
    )
    print(
        f"  naive (1 req/prop) : {n_rate:10,.0f} properties/s  "
        f"{naive['requests'] / naive['elapsed']:8,.0f} requests/s  "
        f"own CPU {naive['cpu']:4.0%}  simulator CPU {naive['sim_cpu']:4.0%}"
    )
    verdict = "ok" if ratio >= TARGET_RATIO else "BELOW TARGET"
    print(
        f"  throughput ratio   : {ratio:.1f}x the naive loop "
        f"(target >= {TARGET_RATIO:g}x) {verdict}"
    )
    rss_verdict = "ok" if mapper["rss_mb"] <= TARGET_RSS_MB else "ABOVE TARGET"
    print(
        f"  peak RSS           : mapper {mapper['rss_mb']:.1f} MB for {args.devices} devices "
        f"(target <= {TARGET_RSS_MB:g} MB) {rss_verdict}; naive loop {naive['rss_mb']:.1f} MB "
        f"({mapper['rss_mb'] / naive['rss_mb']:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
