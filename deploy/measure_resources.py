"""Measure a KubeEdge-mode mapper process, for the requests and limits in kubernetes/.

Runs ``python -m mapper_sdk.kubeedge --protocol modbus`` against the fake
edgecore of the test suite and the Modbus simulator, first with no device
(the baseline), then with ``--devices`` thermostats of three properties read
every second, and prints the resident memory and CPU use of the process::

    .venv/bin/python deploy/measure_resources.py [--devices 100] [--seconds 20] [--quick]

Run it from the repository root (it imports ``tests.kubeedge.edgecore``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulators.modbus import ModbusSimulator  # noqa: E402
from tests.kubeedge.edgecore import FakeEdgecore  # noqa: E402

DEVICE = """
apiVersion: devices.kubeedge.io/v1beta1
kind: DeviceModel
metadata: {{name: thermostat-model, namespace: default}}
spec:
  properties:
    - {{name: temperature, type: FLOAT, accessMode: ReadOnly}}
    - {{name: setpoint, type: FLOAT, accessMode: ReadWrite}}
    - {{name: mode, type: INT, accessMode: ReadWrite}}
---
apiVersion: devices.kubeedge.io/v1beta1
kind: Device
metadata: {{name: thermostat-{i}, namespace: default}}
spec:
  deviceModelRef: {{name: thermostat-model}}
  protocol:
    protocolName: modbus
    configData: {{communicateMode: TCP, ip: 127.0.0.1, port: {port}, slaveID: 1}}
  properties:
    - {{name: temperature, reportToCloud: true, visitors: {{protocolName: modbus,
        configData: {{register: InputRegister, offset: 0, limit: 1, rawType: int16, scale: 0.1}}}}}}
    - {{name: setpoint, reportToCloud: true, visitors: {{protocolName: modbus,
        configData: {{register: HoldingRegister, offset: 0, limit: 2, rawType: float32,
                     isRegisterSwap: true}}}}}}
    - {{name: mode, reportToCloud: true, visitors: {{protocolName: modbus,
        configData: {{register: HoldingRegister, offset: 2, limit: 1}}}}}}
  stateReport: {{reportToCloud: true, reportCycle: 1000}}
"""

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _rss_mib(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * PAGE / 2**20


async def _measure(devices: int, seconds: float, warmup: float) -> tuple[float, float, float]:
    """(peak RSS MiB, CPU % of one core, DMI calls per second) of one mapper process."""
    tmp = Path(tempfile.mkdtemp(prefix="mk-", dir="/tmp"))
    try:
        async with ModbusSimulator("thermostat", port=0) as sim:
            core = FakeEdgecore(tmp / "dmi.sock")
            for i in range(devices):
                core.load(DEVICE.format(i=i, port=sim.port))
            async with core:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "mapper_sdk.kubeedge",
                    "--protocol",
                    "modbus",
                    "--dmi-socket",
                    str(tmp / "dmi.sock"),
                    "--mapper-socket",
                    str(tmp / "modbus.sock"),
                    "--health-port",
                    "0",
                    "--log-level",
                    "warning",
                )
                try:
                    await asyncio.sleep(warmup)
                    cpu0, t0, calls0 = _cpu_seconds(proc.pid), time.monotonic(), len(core.calls)
                    peak = 0.0
                    while time.monotonic() - t0 < seconds:
                        peak = max(peak, _rss_mib(proc.pid))
                        await asyncio.sleep(0.25)
                    elapsed = time.monotonic() - t0
                    cpu = (_cpu_seconds(proc.pid) - cpu0) / elapsed * 100
                    rate = (len(core.calls) - calls0) / elapsed
                finally:
                    proc.terminate()
                    try:
                        async with asyncio.timeout(15):
                            await proc.wait()
                    except TimeoutError:
                        print(f"the mapper did not stop within 15 s of SIGTERM ({devices} devices)")
                        proc.kill()
                        await proc.wait()
        return peak, cpu, rate
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true", help="10 devices for 5 s")
    args = parser.parse_args(argv)
    devices, seconds, warmup = args.devices, args.seconds, 5.0
    if args.quick:
        devices, seconds, warmup = 10, 5.0, 3.0
    base = asyncio.run(_measure(0, seconds, warmup))
    load = asyncio.run(_measure(devices, seconds, warmup))
    print(f"{'':28}{'no device':>12}{f'{devices} devices':>14}{'ratio':>8}")
    print(f"{'peak RSS (MiB)':28}{base[0]:12.1f}{load[0]:14.1f}{load[0] / base[0]:8.2f}")
    print(f"{'CPU (% of one core)':28}{base[1]:12.1f}{load[1]:14.1f}{'':>8}")
    print(f"{'DMI calls per second':28}{base[2]:12.2f}{load[2]:14.2f}{'':>8}")
    print(f"reads per second: {devices * 3} properties x 1 Hz; budget 1 call/s, burst 100")
    return 0


if __name__ == "__main__":
    sys.exit(main())
