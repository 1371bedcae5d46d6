"""The DMI reporter and its token bucket, against the fake edgecore."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from mapper_sdk.driver import DeviceState, Reading
from mapper_sdk.kubeedge import DmiClient, DmiTwinReporter, ReportBudget, TokenBucket
from mapper_sdk.model import DeviceSpec, load_objects
from mapper_sdk.runtime.twin import Ack

from .conftest import RIGS
from .edgecore import FakeEdgecore, documents, wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(ReportBudget(rate=2.0, burst=3), clock)
    assert [bucket.try_take() for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_time() == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.try_take()
    assert not bucket.try_take()
    clock.now += 100
    assert bucket.tokens == 3.0
    bucket.drain()
    assert bucket.tokens == 0.0
    assert bucket.wait_time() == pytest.approx(0.5)


def test_budget_is_validated() -> None:
    with pytest.raises(ValueError, match="rate must be positive"):
        ReportBudget(rate=0)
    with pytest.raises(ValueError, match="burst must be at least 1"):
        ReportBudget(burst=0)


def rigs() -> list[DeviceSpec[Any, Any]]:
    return load_objects(documents(RIGS)).devices


def items(spec: DeviceSpec[Any, Any], *values: Any) -> list[Any]:
    return [(p, v, Reading.good(v)) for p, v in zip(spec.properties, values, strict=False)]


async def test_reports_coalesce_per_device_and_states_go_first(sockets: Path) -> None:
    rig1, rig2 = rigs()
    async with (
        FakeEdgecore(sockets / "dmi.sock") as core,
        DmiClient(sockets / "dmi.sock") as client,
    ):
        bucket = TokenBucket(ReportBudget(rate=1000, burst=1))
        bucket.drain()
        reporter = DmiTwinReporter(client, bucket)
        # Queued before the reporter runs: several readings per device, two states.
        reporter.report(rig1, items(rig1, 20.0))
        reporter.report(rig2, items(rig2, 1.0, 2.0, 3))
        reporter.report(rig1, items(rig1, 21.0, 22.0))
        reporter.report(rig1, items(rig1, 23.0), {0: Ack(None, "applied")})
        reporter.report_state(rig1, DeviceState.UNHEALTHY)
        reporter.report_state(rig1, DeviceState.ONLINE)
        reporter.report_state(rig2, DeviceState.ONLINE)  # rig-2 does not report its state
        assert reporter.pending == 3
        assert reporter.stats.coalesced == 3
        async with reporter:
            await wait_for(lambda: reporter.pending == 0, what="sent")
            await reporter.drain()
        methods = [c.method for c in core.calls]
        # The echo of a desired write and the state change go before the periodic report.
        assert methods == ["ReportDeviceStatus", "ReportDeviceStates", "ReportDeviceStatus"]
        assert core.states() == ["online"]
        assert core.latest_twins("rig-1") == {
            "temp": ("23.0", ""),
            "setpoint": ("22.0", "21"),
        }
        assert core.latest_twins("rig-2") == {
            "temp": ("1.0", ""),
            "setpoint": ("2.0", ""),
            "mode": ("3", ""),
        }


async def test_a_report_finding_edgecore_gone_pauses_and_keeps_the_newest(
    sockets: Path,
) -> None:
    (rig1, _) = rigs()
    lost: list[int] = []
    available = asyncio.Event()
    available.set()
    async with DmiClient(sockets / "dmi.sock", timeout=0.5) as client:
        reporter = DmiTwinReporter(
            client, available=available, on_unavailable=lambda: lost.append(1)
        )
        async with reporter:
            reporter.report(rig1, items(rig1, 20.0))
            await wait_for(lambda: lost, what="edgecore found gone")
            assert not available.is_set()
            reporter.report(rig1, items(rig1, 24.0))
            reporter.report_state(rig1, DeviceState.OFFLINE)
            async with FakeEdgecore(sockets / "dmi.sock") as core:
                await client.reset()
                available.set()
                await wait_for(lambda: core.states("rig-1"), what="state")
                await wait_for(lambda: core.status_reports("rig-1"), what="status")
                assert core.states("rig-1") == ["offline"]
                assert core.latest_twins("rig-1") == {"temp": ("24.0", "")}
                assert len(core.calls) == 2
        assert reporter.stats.failures == 1


async def test_forgotten_devices_send_nothing_and_refusals_are_not_retried(
    sockets: Path,
) -> None:
    rig1, rig2 = rigs()
    async with (
        FakeEdgecore(sockets / "dmi.sock") as core,
        DmiClient(sockets / "dmi.sock") as client,
    ):
        bucket = TokenBucket(ReportBudget(rate=1000, burst=1))
        bucket.drain()
        reporter = DmiTwinReporter(client, bucket)
        reporter.report(rig1, items(rig1, 20.0))
        reporter.report_state(rig1, DeviceState.ONLINE)
        reporter.report(rig2, items(rig2, 5.0))
        reporter.forget("default/rig-1")
        # A state edgecore would not take is not sent at all.
        reporter.report_state(rig1, DeviceState("unknown"))
        reporter.forget("default/rig-1")
        async with reporter:
            await wait_for(lambda: core.calls, what="a call")
            await reporter.drain()
        assert [c.request.deviceName for c in core.calls] == ["rig-2"]
