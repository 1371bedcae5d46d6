"""Scale: Modbus -> twin topics at 100,000 points/s from one mapper process.

``python -m bench.scale_bench [--quick] [--devices N] [--registers R] [--cycle MS] [--seconds S]``

Every part runs in a process of its own, so the figures are the mapper's alone:

* ``--sims`` Modbus simulator processes share the devices (one pymodbus server
  per process; several, so that the simulator side is not the bottleneck);
* a private Mosquitto;
* a counting subscriber on ``$hw/events/device/+/+/twin/update`` (the twin's
  side of the wire), which counts reported values;
* the mapper (``--role mapper``): :class:`~mapper_sdk.runtime.Mapper` serving the
  devices from KubeEdge YAML, every property reported every cycle.

Beside it, in the same run, two baselines:

* a bare pymodbus loop reading the same registers (one request of R registers
  per device per cycle, no decoding, no reporting), and
* a bare aiomqtt QoS 1 publish loop of the same number of messages of the same
  size,

whose CPU is what the mapper's CPU is compared with. Printed: delivered points/s
against the requested rate, the mapper's CPU (share of one core) and peak RSS,
cycle lateness p99, the simulators' CPU, and the start-up time (devices loaded and
all polled once). Workloads: 100x100 @100 ms (100,000 points/s) and 10x100 @100 ms
(10,000 points/s); ``--quick`` runs the first for a few seconds only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- workload
def sim_profile(units: range, registers: int) -> dict[str, Any]:
    return {
        "name": "scale",
        "units": [
            {
                "id": unit,
                "points": [
                    {"name": f"r{i}", "table": "holding", "address": i, "value": unit + i}
                    | ({"behaviour": {"kind": "counter", "interval": 0.1}} if i == 0 else {})
                    for i in range(registers)
                ],
            }
            for unit in units
        ],
    }


def kubeedge_yaml(devices: list[tuple[int, int]], registers: int, cycle_ms: int) -> str:
    """KubeEdge v1beta1 DeviceModel + one Device per (port, unit)."""
    model = {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceModel",
        "metadata": {"name": "scale-meter", "namespace": "default"},
        "spec": {
            "protocol": "modbus",
            "properties": [
                {"name": f"r{i}", "type": "INT", "accessMode": "ReadOnly"} for i in range(registers)
            ],
        },
    }
    docs: list[dict[str, Any]] = [model]
    for n, (port, unit) in enumerate(devices):
        docs.append(
            {
                "apiVersion": "devices.kubeedge.io/v1beta1",
                "kind": "Device",
                "metadata": {"name": f"meter-{n}", "namespace": "default"},
                "spec": {
                    "deviceModelRef": {"name": "scale-meter"},
                    "protocol": {
                        "protocolName": "modbus",
                        "configData": {
                            "communicateMode": "TCP",
                            "ip": "127.0.0.1",
                            "port": port,
                            "slaveID": unit,
                            "timeout": 3000,
                        },
                    },
                    "properties": [
                        {
                            "name": f"r{i}",
                            "collectCycle": cycle_ms,
                            "reportCycle": cycle_ms,
                            "visitors": {
                                "protocolName": "modbus",
                                "configData": {
                                    "register": "HoldingRegister",
                                    "offset": i,
                                    "limit": 1,
                                },
                            },
                        }
                        for i in range(registers)
                    ],
                    "stateReport": {"reportToCloud": True, "reportCycle": 10000},
                },
            }
        )
    return yaml.safe_dump_all(docs, sort_keys=False)


# --------------------------------------------------------------------------- helpers
def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def start_role(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.scale_bench", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def read_json_line(proc: subprocess.Popen[str], timeout: float = 60.0) -> dict[str, Any]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"a bench process exited early (code {proc.poll()})")
        line = line.strip()
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    raise SystemExit("a bench process did not answer in time")


# --------------------------------------------------------------------------- roles
def role_simulator(profile_path: str) -> int:
    """A simulator process: one Modbus TCP server per unit of the profile (each device has
    its own address, as separate Modbus TCP devices do); prints the ports."""
    from simulators.modbus.profile import load_profile
    from simulators.modbus.server import ModbusSimulator

    async def main() -> None:
        profile = load_profile(profile_path)
        sims = []
        for unit in profile.units:
            sim = ModbusSimulator({"name": f"unit-{unit.id}", "units": [unit]}, port=0)
            await sim.start()
            sims.append(sim)
        print(json.dumps({"ports": [s.port for s in sims]}), flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        for sim in sims:
            await sim.stop()

    asyncio.run(main())
    return 0


def role_counter(port: int) -> int:
    """Count reported values on the twin update topics until SIGTERM; print the counts."""
    import paho.mqtt.client as paho

    counts = {"messages": 0, "values": 0, "first": 0.0, "last": 0.0}

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        now = time.monotonic()
        if not counts["messages"]:
            counts["first"] = now
        counts["last"] = now
        counts["messages"] += 1
        counts["values"] += msg.payload.count(b'"actual"')

    def on_connect(client: Any, _u: Any, _f: Any, _rc: Any, _p: Any = None) -> None:
        client.subscribe("$hw/events/device/+/+/twin/update", qos=1)

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="scale-counter")
    client.on_message = on_message
    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    stop = False

    def on_term(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    started = False
    while not stop:
        client.loop(timeout=0.1)
        if not started and client.is_connected():
            print(json.dumps({"ready": True}), flush=True)
            started = True
    print(json.dumps(counts), flush=True)
    return 0


def role_mapper(config: str, broker_port: int, seconds: float, warmup: float) -> int:
    """Serve the devices; print start-up time, then after the run the worker stats."""
    t0 = time.monotonic()
    from mapper_sdk.mqtt import MqttSettings
    from mapper_sdk.runtime import Mapper, MapperOptions

    async def main() -> None:
        mapper = Mapper.from_files(
            [config], MapperOptions(mqtt=MqttSettings.from_url(f"mqtt://127.0.0.1:{broker_port}"))
        )
        async with mapper:
            workers = list(mapper.workers.values())
            while any(w.stats.cycles == 0 for w in workers):
                await asyncio.sleep(0.01)
            startup = time.monotonic() - t0
            print(json.dumps({"startup": startup, "devices": len(workers)}), flush=True)
            await asyncio.sleep(warmup)
            for w in workers:
                w.stats.lateness_hist = [0] * len(w.stats.lateness_hist)
            reads0 = sum(w.stats.reads for w in workers)
            errors0 = sum(w.stats.read_errors for w in workers)
            values0 = sum(w.stats.reported_values for w in workers)
            missed0 = sum(w.stats.missed_cycles for w in workers)
            print(json.dumps({"measuring": True}), flush=True)
            t1 = time.monotonic()
            await asyncio.sleep(seconds)
            elapsed = time.monotonic() - t1
            hist = [sum(col) for col in zip(*(w.stats.lateness_hist for w in workers), strict=True)]
            from mapper_sdk.runtime.worker import LATENESS_BUCKETS_MS

            total = sum(hist)
            seen, p99 = 0, 0.0
            for count, bound in zip(hist, LATENESS_BUCKETS_MS, strict=True):
                seen += count
                if seen >= 0.99 * total:
                    p99 = bound
                    break
            assert mapper.outbox is not None
            print(
                json.dumps(
                    {
                        "elapsed": elapsed,
                        "reads": sum(w.stats.reads for w in workers) - reads0,
                        "read_errors": sum(w.stats.read_errors for w in workers) - errors0,
                        "reported": sum(w.stats.reported_values for w in workers) - values0,
                        "reported_total": sum(w.stats.reported_values for w in workers),
                        "missed_cycles": sum(w.stats.missed_cycles for w in workers) - missed0,
                        "lateness_p99_ms": p99,
                        "outbox_depth": mapper.outbox.depth,
                        "outbox_dropped": mapper.outbox.dropped,
                    }
                ),
                flush=True,
            )

    asyncio.run(main())
    return 0


def role_bare_modbus(targets: str, registers: int, cycle_ms: int, seconds: float) -> int:
    """Baseline: read the same registers with bare pymodbus, one request per device per cycle.

    ``targets`` is ``port:unit,...``, one per device, each with its own connection.
    """
    from pymodbus.client import AsyncModbusTcpClient

    pairs = [(int(p), int(u)) for p, u in (t.split(":") for t in targets.split(","))]

    async def main() -> None:
        clients = []
        for port, _ in pairs:
            client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=3, retries=0)
            await client.connect()
            clients.append(client)
        points = 0
        deadline = time.monotonic() + seconds
        cpu0, t0 = own_cpu(), time.monotonic()

        async def loop(n: int) -> None:
            nonlocal points
            client, unit = clients[n], pairs[n][1]
            due = time.monotonic()
            while due < deadline:
                resp = await client.read_holding_registers(0, count=registers, device_id=unit)
                points += len(resp.registers)
                due += cycle_ms / 1000.0
                await asyncio.sleep(max(0.0, due - time.monotonic()))

        async with asyncio.TaskGroup() as tg:
            for n in range(len(pairs)):
                tg.create_task(loop(n))
        elapsed = time.monotonic() - t0
        print(
            json.dumps({"points": points / elapsed, "cpu": (own_cpu() - cpu0) / elapsed}),
            flush=True,
        )
        for client in clients:
            client.close()

    asyncio.run(main())
    return 0


def role_bare_mqtt(port: int, rate: int, size: int, seconds: float) -> int:
    """Baseline: publish ``rate`` QoS 1 messages/s of ``size`` bytes with bare aiomqtt."""
    import aiomqtt

    async def main() -> None:
        payload = b"x" * size
        async with aiomqtt.Client("127.0.0.1", port, max_inflight_messages=0) as client:
            client.pending_calls_threshold = 1_000_000
            sent = 0
            cpu0, t0 = own_cpu(), time.monotonic()
            due = t0
            while due < t0 + seconds:
                batch = max(1, rate // 100)
                await asyncio.gather(
                    *(client.publish("bench/bare", payload, qos=1) for _ in range(batch))
                )
                sent += batch
                due += batch / rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            elapsed = time.monotonic() - t0
            print(
                json.dumps({"rate": sent / elapsed, "cpu": (own_cpu() - cpu0) / elapsed}),
                flush=True,
            )

    asyncio.run(main())
    return 0


# --------------------------------------------------------------------------- orchestration
def run_workload(
    devices: int,
    registers: int,
    cycle_ms: int,
    seconds: float,
    sims: int,
    warmup: float,
    baselines: bool = True,
) -> dict[str, Any]:
    """Run one workload; every process is stopped before this returns."""
    from mapper_sdk.testing import Mosquitto

    requested = devices * registers * 1000 / cycle_ms
    work = Path(tempfile.mkdtemp(prefix="mapperkit-scale-"))
    sim_procs: list[subprocess.Popen[str]] = []
    assignment: list[tuple[int, int]] = []
    per = -(-devices // sims)
    for s in range(sims):
        units = range(1, min(per, devices - s * per) + 1)
        if not units:
            break
        path = work / f"sim{s}.yaml"
        path.write_text(yaml.safe_dump(sim_profile(units, registers)))
        proc = start_role("--role", "simulator", "--profile", str(path))
        unit_ports = [int(p) for p in read_json_line(proc)["ports"]]
        sim_procs.append(proc)
        assignment += list(zip(unit_ports, units, strict=True))
    config = work / "devices.yaml"
    config.write_text(kubeedge_yaml(assignment, registers, cycle_ms))
    out: dict[str, Any] = {"requested": requested}
    with Mosquitto() as broker:
        counter = start_role("--role", "counter", "--port", str(broker.port))
        read_json_line(counter)
        mapper = start_role(
            "--role",
            "mapper",
            "--config",
            str(config),
            "--port",
            str(broker.port),
            "--seconds",
            str(seconds),
            "--warmup",
            str(warmup),
        )
        try:
            out.update(read_json_line(mapper, timeout=120))
            read_json_line(mapper, timeout=120)  # measuring
            profile_to = os.environ.get("MAPPERKIT_SCALE_PROFILE")
            spy: subprocess.Popen[bytes] | None = None
            if profile_to:
                # Sample the mapper with py-spy (collapsed stacks) during the measured window.
                beside = Path(sys.executable).with_name("py-spy")
                spy = subprocess.Popen(
                    [
                        str(beside) if beside.exists() else "py-spy",
                        "record",
                        "--format",
                        "raw",
                        "--rate",
                        "250",
                        "--duration",
                        str(int(seconds)),
                        "--pid",
                        str(mapper.pid),
                        "-o",
                        profile_to,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            cpu0 = cpu_seconds(mapper.pid)
            sims0 = sum(cpu_seconds(p.pid) for p in sim_procs)
            t0 = time.monotonic()
            stats = read_json_line(mapper, timeout=seconds + 60)
            elapsed = time.monotonic() - t0
            out["cpu"] = (cpu_seconds(mapper.pid) - cpu0) / elapsed
            out["sim_cpu"] = (sum(cpu_seconds(p.pid) for p in sim_procs) - sims0) / elapsed
            out["rss_peak_mb"] = rss_peak_mb(mapper.pid)
            out["rss_mb"] = rss_mb(mapper.pid)
            out.update(stats)
            if spy is not None:
                spy.wait(30)  # the profile is complete once py-spy has written it
        finally:
            mapper.terminate()
            mapper.wait(10)
            counter.send_signal(signal.SIGTERM)
            counts = read_json_line(counter)
            counter.wait(10)
        out["delivered_messages"] = counts["messages"]
        out["delivered_values"] = counts["values"]
        # The rate is the mapper's over the measured window; the twin side's count
        # confirms that what it published arrived (``arrived`` close to 1).
        out["delivered_rate"] = stats["reported"] / stats["elapsed"]
        out["arrived"] = counts["values"] / max(1, stats["reported_total"])
        if not baselines:
            for proc in sim_procs:
                proc.terminate()
                proc.wait(10)
            return out
        bare = start_role(
            "--role",
            "bare-modbus",
            "--ports",
            ",".join(f"{p}:{u}" for p, u in assignment),
            "--registers",
            str(registers),
            "--cycle",
            str(cycle_ms),
            "--seconds",
            str(min(seconds, 5.0)),
        )
        out["bare_modbus"] = read_json_line(bare, timeout=120)
        bare.wait(10)
        size = 100 * registers  # a twin update carries ~100 bytes per value
        bare_mqtt = start_role(
            "--role",
            "bare-mqtt",
            "--port",
            str(broker.port),
            "--rate",
            str(int(devices * 1000 / cycle_ms)),
            "--size",
            str(size),
            "--seconds",
            str(min(seconds, 5.0)),
        )
        out["bare_mqtt"] = read_json_line(bare_mqtt, timeout=120)
        bare_mqtt.wait(10)
    for proc in sim_procs:
        proc.terminate()
        proc.wait(10)
    return out


def report(name: str, r: dict[str, Any]) -> bool:
    bare_cpu = r["bare_modbus"]["cpu"] + r["bare_mqtt"]["cpu"]
    delivered = r["delivered_rate"] / r["requested"]
    ok = (
        delivered >= 0.95
        and r["arrived"] >= 0.95
        and r["cpu"] <= 1.0
        and r["rss_peak_mb"] <= 100
        and r["lateness_p99_ms"] < 1000 * 0.1
    )
    print(f"{name}: requested {r['requested']:,.0f} points/s over {r['devices']} devices")
    print(
        f"  delivered        {r['delivered_rate']:,.0f} points/s = {delivered:.1%} of requested"
        f" (the twin side got {r['arrived']:.1%} of all values published; read errors "
        f"{r['read_errors']}, missed cycles {r['missed_cycles']})"
    )
    print(
        f"  mapper CPU       {r['cpu']:.0%} of one core; bare pymodbus loop "
        f"{r['bare_modbus']['cpu']:.0%} + bare MQTT publish loop {r['bare_mqtt']['cpu']:.0%} "
        f"= {bare_cpu:.0%} -> ratio {r['cpu'] / max(bare_cpu, 1e-9):.2f}x the bare loops"
    )
    print(f"  mapper RSS       {r['rss_mb']:.0f} MB now, {r['rss_peak_mb']:.0f} MB peak")
    print(f"  cycle lateness   p99 <= {r['lateness_p99_ms']:g} ms (cycle 100 ms)")
    print(f"  simulators CPU   {r['sim_cpu']:.0%} of one core in all")
    print(f"  start-up         {r['startup']:.2f} s to load and poll every device once")
    print(f"  outbox           depth {r['outbox_depth']}, dropped {r['outbox_dropped']}")
    print(f"  {'OK' if ok else 'BELOW TARGET'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_bench")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--role", default="main")
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--registers", type=int, default=100)
    parser.add_argument("--cycle", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=None, help="default 20 (5 with --quick)")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--sims", type=int, default=4)
    parser.add_argument("--profile")
    parser.add_argument("--config")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ports", default="")
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--size", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.role == "simulator":
        return role_simulator(args.profile)
    if args.role == "counter":
        return role_counter(args.port)
    if args.role == "mapper":
        return role_mapper(args.config, args.port, args.seconds, args.warmup)
    if args.role == "bare-modbus":
        return role_bare_modbus(args.ports, args.registers, args.cycle, args.seconds)
    if args.role == "bare-mqtt":
        return role_bare_mqtt(args.port, args.rate, args.size, args.seconds)
    seconds = args.seconds or (5.0 if args.quick else 20.0)
    big = run_workload(args.devices, args.registers, args.cycle, seconds, args.sims, args.warmup)
    ok = report(f"{args.devices} devices x {args.registers} registers @ {args.cycle} ms", big)
    if not args.quick:
        small = run_workload(10, args.registers, args.cycle, seconds, 1, args.warmup)
        report("10 devices x 100 registers @ 100 ms", small)
        small_ok = small["cpu"] <= 0.15
        print(f"  target: mapper CPU <= 15% of one core: {'OK' if small_ok else 'NO'}")
        per_device = (big["rss_mb"] - small["rss_mb"]) / max(1, args.devices - 10) * 1024
        print(
            f"memory per device (100 registers each): {per_device:.0f} KiB "
            f"(RSS {small['rss_mb']:.0f} MB with 10 devices, {big['rss_mb']:.0f} MB with "
            f"{args.devices})"
        )
        start = run_workload(1000, 10, 1000, 3.0, args.sims, 1.0, baselines=False)
        start_ok = start["startup"] < 5.0
        print(
            f"start-up: 1000 devices x 10 registers from KubeEdge YAML loaded and each polled once "
            f"in {start['startup']:.2f} s (target < 5 s): {'OK' if start_ok else 'NO'}; then "
            f"{start['delivered_rate']:,.0f} of {start['requested']:,.0f} points/s delivered, "
            f"RSS {start['rss_mb']:.0f} MB"
        )
        ok = ok and small_ok and start_ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
