"""A KubeEdge-mode mapper against a fake edgecore over real unix sockets."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import aiohttp
import grpc
import pytest
from google.protobuf import any_pb2, struct_pb2

from mapper_sdk.kubeedge import ReportBudget
from mapper_sdk.kubeedge.twin import ACCEPTED_STATES
from mapper_sdk.kubeedge.v1beta1 import api_pb2
from tests.sdk.memdriver import MemBus

from .conftest import RIGS, running
from .edgecore import EdgecoreState, FakeEdgecore, twins_of, wait_for

PROPS = {"temp", "setpoint", "mode"}


async def test_registers_with_data_and_serves_the_devices(
    sockets: Path, bus: MemBus, edgecore: FakeEdgecore
) -> None:
    async with running(sockets, bus) as km:
        await wait_for(lambda: km.ready, what="ready")
        (call,) = edgecore.registrations()
        assert call.request.withData is True
        info = call.request.mapper
        assert (info.protocol, info.name, info.api_version, info.state) == (
            "mem",
            "mapperkit-mem",
            "v1beta1",
            "ok",
        )
        assert info.address.decode() == str(sockets / "mapperkit-mem.sock")
        assert set(km.mapper.workers) == {"default/rig-1", "default/rig-2"}
        await wait_for(lambda: edgecore.status_reports("rig-2"), what="rig-2 reports")
        # The desired value in the Device is written when the device starts.
        await wait_for(lambda: bus.device("rig-1").values["sp"] == 21.0, what="desired applied")
        assert bus.device("rig-1").writes == [("setpoint", 21.0)]
        twins = await wait_for(
            lambda: (
                edgecore.latest_twins("rig-1").get("setpoint") == ("21.0", "21")
                and edgecore.latest_twins("rig-1")
            ),
            what="setpoint reported",
        )
        assert twins["temp"] == ("20.5", "")
        assert twins["mode"] == ("1", "")


async def test_one_status_report_per_device_carries_all_twins(
    sockets: Path, bus: MemBus, edgecore: FakeEdgecore
) -> None:
    async with running(sockets, bus) as km:
        await wait_for(lambda: km.ready, what="ready")
        started = time.monotonic()
        await wait_for(lambda: len(edgecore.status_reports("rig-1", started)) >= 8, what="reports")
        elapsed = time.monotonic() - started
        for device in ("rig-1", "rig-2"):
            reports = edgecore.status_reports(device, started)
            for report in reports:
                assert {t.propertyName for t in report.reportedDevice.twins} == PROPS
                assert all(t.HasField("observedDesired") for t in report.reportedDevice.twins)
            # One call per report cycle (100 ms), not one per property.
            assert len(reports) <= elapsed / 0.1 + 3
        assert km.reporter.stats.status_calls >= 16


async def test_device_added_updated_and_removed_through_the_mapper_socket(
    sockets: Path, bus: MemBus, edgecore: FakeEdgecore
) -> None:
    rig2 = edgecore.state.devices.pop("rig-2")
    async with running(sockets, bus) as km:
        await wait_for(lambda: km.ready, what="ready")
        assert set(km.mapper.workers) == {"default/rig-1"}
        model = edgecore.state.models["rig-model"]
        reply = await edgecore.call_mapper(
            "CreateDeviceModel", api_pb2.CreateDeviceModelRequest(model=model)
        )
        assert (reply.deviceModelName, reply.deviceModelNamespace) == ("rig-model", "default")
        reply = await edgecore.call_mapper(
            "RegisterDevice", api_pb2.RegisterDeviceRequest(device=rig2)
        )
        assert (reply.deviceName, reply.deviceNamespace) == ("rig-2", "default")
        await wait_for(lambda: edgecore.status_reports("rig-2"), what="rig-2 reports")
        assert bus.device("rig-2").connects == 1

        # Registering again changes nothing.
        await edgecore.call_mapper("RegisterDevice", api_pb2.RegisterDeviceRequest(device=rig2))
        assert bus.device("rig-2").connects == 1

        # A change other than a desired value restarts that device alone.
        changed = api_pb2.Device()
        changed.CopyFrom(rig2)
        changed.spec.properties[0].collectCycle = 200
        await edgecore.call_mapper("UpdateDevice", api_pb2.UpdateDeviceRequest(device=changed))
        await wait_for(lambda: bus.device("rig-2").connects == 2, what="rig-2 restarted")
        assert km.mapper.worker("default/rig-2").spec.properties[0].collect_cycle_ms == 200
        assert bus.device("rig-1").connects == 1

        await edgecore.call_mapper(
            "RemoveDevice", api_pb2.RemoveDeviceRequest(deviceName="rig-2", deviceNamespace="")
        )
        assert set(km.mapper.workers) == {"default/rig-1"}
        await asyncio.sleep(0.1)  # reports already in flight
        removed = time.monotonic()
        await asyncio.sleep(0.4)
        assert edgecore.status_reports("rig-2", removed) == []
        assert edgecore.status_reports("rig-1", removed)

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await edgecore.call_mapper(
                "RemoveDevice", api_pb2.RemoveDeviceRequest(deviceName="rig-2")
            )
        assert err.value.code() is grpc.StatusCode.NOT_FOUND


async def test_desired_value_from_update_device_reaches_the_device_without_restart(
    sockets: Path, bus: MemBus, edgecore: FakeEdgecore
) -> None:
    async with running(sockets, bus) as km:
        await wait_for(lambda: km.ready, what="ready")
        await wait_for(lambda: bus.device("rig-1").values["sp"] == 21.0, what="first desired")
        device = api_pb2.Device()
        device.CopyFrom(edgecore.state.devices["rig-1"])
        device.spec.properties[1].desired.value = "25.5"
        device.spec.properties[2].desired.value = "2"
        await edgecore.call_mapper("UpdateDevice", api_pb2.UpdateDeviceRequest(device=device))
        await wait_for(lambda: bus.device("rig-1").values["sp"] == 25.5, what="setpoint written")
        await wait_for(lambda: bus.device("rig-1").values["m"] == 2, what="mode written")
        assert bus.device("rig-1").connects == 1  # no restart
        assert bus.device("rig-2").connects == 1
        twins = await wait_for(
            lambda: (
                edgecore.latest_twins("rig-1").get("setpoint") == ("25.5", "25.5")
                and edgecore.latest_twins("rig-1")
            ),
            what="new value reported",
        )
        assert twins["mode"] == ("2", "2")

        # A value out of the model's range is refused by the worker, not written.
        device.spec.properties[1].desired.value = "99"
        await edgecore.call_mapper("UpdateDevice", api_pb2.UpdateDeviceRequest(device=device))
        await asyncio.sleep(0.3)
        assert bus.device("rig-1").values["sp"] == 25.5


async def test_states_only_when_reporting_is_on_and_on_change(
    sockets: Path, bus: MemBus, edgecore: FakeEdgecore
) -> None:
    async with running(sockets, bus) as km:
        await wait_for(lambda: km.ready, what="ready")
        await wait_for(lambda: edgecore.states("rig-1").count("online") >= 3, what="periodic")
        assert edgecore.states("rig-2") == []
        bus.device("rig-1").online = False
        await wait_for(lambda: "offline" in edgecore.states("rig-1"), what="offline reported")
        bus.device("rig-1").online = True
        went = len(edgecore.states("rig-1"))
        await wait_for(lambda: "online" in edgecore.states("rig-1")[went:], what="back online")
        assert set(edgecore.states()) <= ACCEPTED_STATES
    # On shutdown the last state goes out.
    assert edgecore.states("rig-1")[-1] == "offline"
    assert edgecore.states("rig-2") == []


async def test_mapper_budget_bounds_the_calls_and_keeps_the_newest_values(
    sockets: Path, bus: MemBus, edgecore: FakeEdgecore
) -> None:
    # Two devices reporting every 100 ms and a state every 200 ms want ~25 calls/s.
    budget = ReportBudget(rate=5.0, burst=4)
    async with running(sockets, bus, budget) as km:
        await asyncio.sleep(1.5)
        bus.device("rig-2").values["t"] = 33.25
        await wait_for(
            lambda: edgecore.latest_twins("rig-2").get("temp", ("",))[0] == "33.25",
            what="newest value of rig-2",
        )
        stats = km.reporter.stats
    times = sorted(c.at for c in edgecore.calls)
    assert len(times) >= 8
    # Any window of the calls fits the budget (one call of slack for timing).
    for i in range(len(times)):
        for j in range(i, len(times)):
            assert j - i + 1 <= budget.burst + budget.rate * (times[j] - times[i]) + 1
    assert stats.coalesced > 20
    assert edgecore.limited == 0


async def test_edgecore_limit_reached_degrades_to_newest_state(sockets: Path, bus: MemBus) -> None:
    core = FakeEdgecore(sockets / "dmi.sock", budget=ReportBudget(rate=4.0, burst=2))
    core.load(RIGS)
    async with core, running(sockets, bus) as km:
        await wait_for(lambda: km.ready, what="ready")
        await wait_for(lambda: core.limited >= 1, what="edgecore's limit reached")
        bus.device("rig-1").values["t"] = 41.5
        await wait_for(
            lambda: core.latest_twins("rig-1").get("temp", ("",))[0] == "41.5",
            what="newest value after the limit",
        )
        assert km.reporter.stats.rate_limited >= 1
        assert km.ready  # a rate limit is not a lost edgecore


async def test_edgecore_restart_is_survived_with_a_new_registration(
    sockets: Path, bus: MemBus
) -> None:
    state = EdgecoreState()
    first = FakeEdgecore(sockets / "dmi.sock", state)
    first.load(RIGS)
    await first.start()
    try:
        async with running(sockets, bus) as km:
            await wait_for(lambda: km.ready, what="ready")
            await wait_for(lambda: first.status_reports("rig-1"), what="reports")
            await first.stop()
            await wait_for(lambda: not km.ready, what="edgecore lost")
            # Meanwhile the cluster changed: rig-2 is gone, rig-1 has a new desired value.
            del state.devices["rig-2"]
            state.devices["rig-1"].spec.properties[1].desired.value = "23"
            second = FakeEdgecore(sockets / "dmi.sock", state)
            async with second:
                await wait_for(lambda: km.ready, what="registered again")
                assert len(second.registrations()) == 1
                assert km.registrar.registrations == 2
                assert set(km.mapper.workers) == {"default/rig-1"}
                await wait_for(lambda: bus.device("rig-1").values["sp"] == 23.0, what="desired")
                await wait_for(
                    lambda: second.latest_twins("rig-1").get("setpoint") == ("23.0", "23"),
                    what="reports to the new edgecore",
                )
                assert bus.device("rig-1").connects == 1
    finally:
        await first.stop()


async def test_edgecore_killed_leaving_a_stale_socket(sockets: Path, bus: MemBus) -> None:
    core = FakeEdgecore(sockets / "dmi.sock")
    core.load(RIGS)
    await core.start()
    try:
        async with running(sockets, bus) as km:
            await wait_for(lambda: km.ready, what="ready")
            await core._server.stop(0)
            # What a killed edgecore leaves behind: a socket file nobody listens on.
            stale = socket.socket(socket.AF_UNIX)
            stale.bind(str(core.socket_path))
            stale.close()
            await wait_for(lambda: not km.ready, what="edgecore lost")
            await asyncio.sleep(0.3)
            assert not km.ready  # registrations against the stale socket keep failing
            await core.start()
            await wait_for(lambda: km.ready, what="registered again")
            assert len(core.registrations()) == 2
            since = time.monotonic()
            await wait_for(lambda: core.status_reports("rig-1", since), what="reports again")
    finally:
        await core.stop()


async def test_waits_for_edgecore_to_appear(sockets: Path, bus: MemBus) -> None:
    async with running(sockets, bus, health=("127.0.0.1", 0)) as km:
        assert km.health is not None
        url = f"http://127.0.0.1:{km.health.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/healthz") as resp:
                assert resp.status == 200
            await asyncio.sleep(0.2)
            async with http.get(f"{url}/readyz") as resp:
                assert resp.status == 503
                assert "not registered with edgecore" in await resp.text()
            core = FakeEdgecore(sockets / "dmi.sock")
            core.load(RIGS)
            async with core:
                await wait_for(lambda: km.ready, what="ready")
                async with http.get(f"{url}/readyz") as resp:
                    assert resp.status == 200
                assert set(km.mapper.workers) == {"default/rig-1", "default/rig-2"}


async def test_get_device_reads_live(sockets: Path, bus: MemBus, edgecore: FakeEdgecore) -> None:
    async with running(sockets, bus) as km:
        await wait_for(lambda: km.ready, what="ready")
        await wait_for(lambda: km.mapper.worker("default/rig-2").connected, what="connected")
        bus.device("rig-2").values["t"] = 19.75
        reply = await edgecore.call_mapper(
            "GetDevice", api_pb2.GetDeviceRequest(deviceName="rig-2", deviceNamespace="default")
        )
        twins = twins_of(api_pb2.ReportDeviceStatusRequest(reportedDevice=reply.device.status))
        assert twins == {"temp": ("19.75", ""), "setpoint": ("20.0", ""), "mode": ("1", "")}
        await wait_for(
            lambda: edgecore.latest_twins("rig-2").get("temp", ("",))[0] == "19.75",
            what="collected",
        )
        bus.device("rig-2").online = False
        await wait_for(lambda: not km.mapper.worker("default/rig-2").connected, what="offline")
        reply = await edgecore.call_mapper(
            "GetDevice", api_pb2.GetDeviceRequest(deviceName="rig-2", deviceNamespace="default")
        )
        temp = reply.device.status.twins[0]
        assert temp.reported.value == "19.75"
        assert temp.reported.metadata["quality"] == "stale"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await edgecore.call_mapper("GetDevice", api_pb2.GetDeviceRequest(deviceName="nope"))
        assert err.value.code() is grpc.StatusCode.NOT_FOUND


async def test_bad_devices_and_models_are_refused_precisely(
    sockets: Path, bus: MemBus, edgecore: FakeEdgecore
) -> None:
    async with running(sockets, bus) as km:
        await wait_for(lambda: km.ready, what="ready")
        km.catalog.model_wait = 0.1
        base = edgecore.state.devices["rig-2"]

        async def refused(device: api_pb2.Device) -> grpc.aio.AioRpcError:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await edgecore.call_mapper(
                    "RegisterDevice", api_pb2.RegisterDeviceRequest(device=device)
                )
            return err.value

        bad = api_pb2.Device()
        bad.CopyFrom(base)
        bad.name = "bad-visitor"
        del bad.spec.properties[0].visitors.configData.data["address"]
        err = await refused(bad)
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "spec.properties[0].visitors.configData.address" in (err.details() or "")

        bad.CopyFrom(base)
        bad.name = "nested"
        nested = any_pb2.Any()
        nested.Pack(struct_pb2.Struct())
        bad.spec.protocol.configData.data["tcp"].CopyFrom(nested)
        err = await refused(bad)
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "spec.protocol.configData.tcp" in (err.details() or "")

        bad.CopyFrom(base)
        bad.name = "other-protocol"
        bad.spec.protocol.protocolName = "modbus"
        err = await refused(bad)
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "serves protocol 'mem'" in (err.details() or "")

        bad.CopyFrom(base)
        bad.name = "no-model"
        bad.spec.deviceModelReference = "missing-model"
        err = await refused(bad)
        assert err.code() is grpc.StatusCode.FAILED_PRECONDITION

        model = api_pb2.DeviceModel(name="ghost", namespace="default")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await edgecore.call_mapper(
                "UpdateDeviceModel", api_pb2.UpdateDeviceModelRequest(model=model)
            )
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND
        model.spec.properties.add(name="x", type="STREAM")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await edgecore.call_mapper(
                "CreateDeviceModel", api_pb2.CreateDeviceModelRequest(model=model)
            )
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown property type 'STREAM'" in (caught.value.details() or "")

        # Nothing that runs was touched.
        assert set(km.mapper.workers) == {"default/rig-1", "default/rig-2"}
        assert bus.device("rig-2").connects == 1


async def test_model_update_reaches_the_devices_that_use_it(
    sockets: Path, bus: MemBus, edgecore: FakeEdgecore
) -> None:
    async with running(sockets, bus) as km:
        await wait_for(lambda: km.ready, what="ready")
        model = api_pb2.DeviceModel()
        model.CopyFrom(edgecore.state.models["rig-model"])
        model.spec.properties[1].maximum = "22"
        await edgecore.call_mapper(
            "UpdateDeviceModel", api_pb2.UpdateDeviceModelRequest(model=model)
        )
        for name in ("default/rig-1", "default/rig-2"):
            assert km.mapper.worker(name).spec.property("setpoint").maximum == 22.0
        await edgecore.call_mapper(
            "RemoveDeviceModel",
            api_pb2.RemoveDeviceModelRequest(modelName="rig-model", modelNamespace="default"),
        )
        assert km.catalog.models == {}
        assert set(km.mapper.workers) == {"default/rig-1", "default/rig-2"}
