"""Fixtures for KubeEdge mode: short socket paths, a fake edgecore, a running mapper."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mapper_sdk.driver import Resources
from mapper_sdk.kubeedge import KubeEdgeMapper, KubeEdgeOptions, ReportBudget
from mapper_sdk.runtime import MapperOptions, WorkerOptions
from tests.sdk.memdriver import MemBus, MemDriver

from .edgecore import FakeEdgecore

# Two rigs of the in-memory protocol, as a cluster would hold them. rig-1 reports
# its state; rig-2 does not.
RIGS = """
apiVersion: devices.kubeedge.io/v1beta1
kind: DeviceModel
metadata: {name: rig-model, namespace: default}
spec:
  protocol: mem
  properties:
    - {name: temp, type: FLOAT, accessMode: ReadOnly, unit: degC}
    - {name: setpoint, type: FLOAT, accessMode: ReadWrite, minimum: "5", maximum: "30"}
    - {name: mode, type: INT, accessMode: ReadWrite}
---
apiVersion: devices.kubeedge.io/v1beta1
kind: Device
metadata: {name: rig-1, namespace: default}
spec:
  deviceModelRef: {name: rig-model}
  nodeName: edge-1
  protocol: {protocolName: mem, configData: {device: rig-1}}
  properties:
    - {name: temp, collectCycle: 100, reportCycle: 100, reportToCloud: true,
       visitors: {protocolName: mem, configData: {address: t}}}
    - {name: setpoint, collectCycle: 100, reportCycle: 100, reportToCloud: true,
       desired: {value: "21"}, visitors: {protocolName: mem, configData: {address: sp}}}
    - {name: mode, collectCycle: 100, reportCycle: 100, reportToCloud: true,
       visitors: {protocolName: mem, configData: {address: m}}}
  stateReport: {reportToCloud: true, reportCycle: 200}
---
apiVersion: devices.kubeedge.io/v1beta1
kind: Device
metadata: {name: rig-2, namespace: default}
spec:
  deviceModelRef: {name: rig-model}
  nodeName: edge-1
  protocol: {protocolName: mem, configData: {device: rig-2}}
  properties:
    - {name: temp, collectCycle: 100, reportCycle: 100, reportToCloud: true,
       visitors: {protocolName: mem, configData: {address: t}}}
    - {name: setpoint, collectCycle: 100, reportCycle: 100, reportToCloud: true,
       visitors: {protocolName: mem, configData: {address: sp}}}
    - {name: mode, collectCycle: 100, reportCycle: 100, reportToCloud: true,
       visitors: {protocolName: mem, configData: {address: m}}}
  stateReport: {reportToCloud: false}
"""

FAST = ReportBudget(rate=1000.0, burst=1000)


@pytest.fixture
def sockets() -> Iterator[Path]:
    """A short directory for unix sockets (their paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="mk-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def bus() -> MemBus:
    bus = MemBus()
    for name, temp in (("rig-1", 20.5), ("rig-2", 18.0)):
        bus.device(name).values.update({"t": temp, "sp": 20.0, "m": 1})
    return bus


def mapper_options(sockets: Path, budget: ReportBudget = FAST, **kw: object) -> KubeEdgeOptions:
    return KubeEdgeOptions(
        protocol="mem",
        dmi_socket=sockets / "dmi.sock",
        mapper_socket=sockets / "mapperkit-mem.sock",
        budget=budget,
        poll_interval=0.05,
        mapper=MapperOptions(
            mqtt=None,
            worker=WorkerOptions(backoff_initial=0.05, backoff_max=0.3),
            shutdown_timeout=1.0,
        ),
        **kw,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def running(
    sockets: Path, bus: MemBus, budget: ReportBudget = FAST, **kw: object
) -> AsyncIterator[KubeEdgeMapper]:
    resources = Resources()
    resources.extras["mem.bus"] = bus
    mapper = KubeEdgeMapper(
        mapper_options(sockets, budget, **kw), driver=MemDriver, resources=resources
    )
    async with mapper:
        yield mapper


@pytest.fixture
async def edgecore(sockets: Path) -> AsyncIterator[FakeEdgecore]:
    core = FakeEdgecore(sockets / "dmi.sock")
    core.load(RIGS)
    async with core:
        yield core
