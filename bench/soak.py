"""Soak: a mapper at full rate for a long time, with the broker restarted periodically.

``python -m bench.soak [--quick] [--minutes M] [--devices N] [--registers R] [--restart-every S]``

200 Modbus devices (simulators in processes of their own) are served by one
mapper process that reports every value to the twin topics every 100 ms, while
the Mosquitto broker is stopped and started again every ``--restart-every``
seconds. Every ``--sample`` seconds the mapper's RSS, open file descriptors and
asyncio task count are printed beside its delivered values and outbox depth; at
the end they are compared with the first sample after warm-up and must stay flat
(no growth beyond noise), and nothing may have been dropped by the outbox.
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
from pathlib import Path
from typing import Any

import yaml

from bench.scale_bench import kubeedge_yaml, read_json_line, rss_mb, sim_profile, start_role

ROOT = Path(__file__).resolve().parents[1]


def role_mapper(config: str, port: int, sample: float) -> int:
    """Serve the devices; print a JSON line of figures every ``sample`` seconds."""
    from mapper_sdk.mqtt import MqttSettings
    from mapper_sdk.runtime import Mapper, MapperOptions

    async def main() -> None:
        options = MapperOptions(mqtt=MqttSettings.from_url(f"mqtt://127.0.0.1:{port}"))
        options.outbox_path = str(Path(config).with_suffix(".outbox.db"))
        mapper = Mapper.from_files([config], options)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with mapper:
            workers = list(mapper.workers.values())
            t0 = time.monotonic()
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), sample)
                except TimeoutError:
                    pass
                assert mapper.outbox is not None
                print(
                    json.dumps(
                        {
                            "t": time.monotonic() - t0,
                            "tasks": len(asyncio.all_tasks()),
                            "fds": len(os.listdir("/proc/self/fd")),
                            "reported": sum(w.stats.reported_values for w in workers),
                            "read_errors": sum(w.stats.read_errors for w in workers),
                            "outbox_depth": mapper.outbox.depth,
                            "outbox_dropped": mapper.outbox.dropped,
                            "outbox_sent": mapper.outbox.sent,
                            "online": sum(1 for w in workers if w.state.value == "online"),
                            "mqtt_connects": mapper.link.connects if mapper.link else 0,
                        }
                    ),
                    flush=True,
                )

    asyncio.run(main())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak")
    parser.add_argument("--quick", action="store_true", help="one minute, restarts every 20 s")
    parser.add_argument("--role", default="main")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--registers", type=int, default=20)
    parser.add_argument("--cycle", type=int, default=100)
    parser.add_argument("--restart-every", type=float, default=120.0)
    parser.add_argument("--sample", type=float, default=30.0)
    parser.add_argument("--sims", type=int, default=4)
    parser.add_argument("--config")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if args.role == "mapper":
        return role_mapper(args.config, args.port, args.sample)
    if args.quick:
        args.minutes, args.restart_every, args.sample = 1.0, 20.0, 5.0

    from mapper_sdk.testing import Mosquitto

    work = Path(tempfile.mkdtemp(prefix="mapperkit-soak-"))
    sims: list[subprocess.Popen[str]] = []
    assignment: list[tuple[int, int]] = []
    per = -(-args.devices // args.sims)
    for s in range(args.sims):
        units = range(1, min(per, args.devices - s * per) + 1)
        if not units:
            break
        path = work / f"sim{s}.yaml"
        path.write_text(yaml.safe_dump(sim_profile(units, args.registers)))
        proc = start_role("--role", "simulator", "--profile", str(path))
        unit_ports = [int(p) for p in read_json_line(proc)["ports"]]
        sims.append(proc)
        assignment += list(zip(unit_ports, units, strict=True))
    config = work / "devices.yaml"
    config.write_text(kubeedge_yaml(assignment, args.registers, args.cycle))
    broker = Mosquitto()
    broker.start()
    mapper = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.soak",
            "--role",
            "mapper",
            "--config",
            str(config),
            "--port",
            str(broker.port),
            "--sample",
            str(args.sample),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    requested = args.devices * args.registers * 1000 / args.cycle
    print(
        f"soak: {args.devices} devices x {args.registers} registers @ {args.cycle} ms "
        f"({requested:,.0f} points/s) for {args.minutes:g} min, broker restarted every "
        f"{args.restart_every:g} s"
    )
    print(
        f"{'min':>6} {'RSS MB':>7} {'fds':>5} {'tasks':>6} {'values/s':>10} {'outbox':>7} "
        f"{'dropped':>7} {'online':>6} {'connects':>8}"
    )
    samples: list[dict[str, Any]] = []
    end = time.monotonic() + args.minutes * 60
    next_restart = time.monotonic() + args.restart_every
    restarts = 0
    last_reported = 0
    try:
        while time.monotonic() < end:
            if time.monotonic() >= next_restart:
                broker.stop()
                time.sleep(2.0)
                broker.start()
                restarts += 1
                next_restart += args.restart_every
            assert mapper.stdout is not None
            line = mapper.stdout.readline()
            if not line:
                raise SystemExit(f"the mapper exited (code {mapper.poll()})")
            sample = json.loads(line)
            sample["rss"] = rss_mb(mapper.pid)
            rate = (sample["reported"] - last_reported) / args.sample
            last_reported = sample["reported"]
            samples.append(sample)
            print(
                f"{sample['t'] / 60:6.1f} {sample['rss']:7.1f} {sample['fds']:5d} "
                f"{sample['tasks']:6d} {rate:10,.0f} {sample['outbox_depth']:7d} "
                f"{sample['outbox_dropped']:7d} {sample['online']:6d} {sample['mqtt_connects']:8d}",
                flush=True,
            )
    finally:
        mapper.send_signal(signal.SIGTERM)
        try:
            mapper.wait(15)
        except subprocess.TimeoutExpired:
            mapper.kill()
        broker.close()
        for proc in sims:
            proc.terminate()
            proc.wait(10)
    if len(samples) < 3:
        print("too short to judge")
        return 1
    # Compare the peaks of the first and second half after warm-up: transient tasks
    # (publishes in flight) come and go, growth shows as a higher peak later on.
    steady = samples[1:]
    half = len(steady) // 2
    first, second = steady[:half], steady[half:]

    def peak(rows: list[dict[str, Any]], key: str) -> float:
        return float(max(r[key] for r in rows))

    checks = {
        "rss": (peak(first, "rss"), peak(second, "rss"), lambda a, b: b <= a * 1.10 + 2),
        "fds": (peak(first, "fds"), peak(second, "fds"), lambda a, b: b <= a + 2),
        "tasks": (peak(first, "tasks"), peak(second, "tasks"), lambda a, b: b <= a * 1.10 + 5),
    }
    flat = all(ok(a, b) for a, b, ok in checks.values())
    last = samples[-1]
    print(
        f"broker restarts: {restarts}; peaks first half -> second half: "
        + ", ".join(f"{k} {a:.1f} -> {b:.1f}" for k, (a, b, _) in checks.items())
        + f"; outbox dropped {last['outbox_dropped']}: {'FLAT' if flat else 'GROWING'}"
    )
    return 0 if flat and last["outbox_dropped"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
