"""A stand-in for edgecore's DMI side, built from the same proto as the mapper.

:class:`FakeEdgecore` serves ``v1beta1.DeviceManagerService`` on a real unix
socket with the generated servicer, behaves as edgecore's DMI server does
where the mapper can tell (``withData`` answers with the devices of the
mapper's protocol and one model entry per device; one shared token bucket for
``MapperRegister``, ``ReportDeviceStatus`` and ``ReportDeviceStates`` that
answers "too many request" when empty; an error for a status report without
twins), records every call with the time it arrived, and plays the other
direction through the generated ``DeviceMapperServiceStub``, dialling the
socket the mapper registered, as edgecore does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import yaml

from mapper_sdk.kubeedge.convert import device_to_proto, model_to_proto
from mapper_sdk.kubeedge.twin import ReportBudget, TokenBucket
from mapper_sdk.kubeedge.v1beta1 import api_pb2, api_pb2_grpc


@dataclass
class Call:
    method: str
    at: float
    request: Any


@dataclass
class EdgecoreState:
    """What survives a restart of the fake edgecore (its SQLite, in the real one)."""

    devices: dict[str, api_pb2.Device] = field(default_factory=dict)
    models: dict[str, api_pb2.DeviceModel] = field(default_factory=dict)


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


class _Servicer(api_pb2_grpc.DeviceManagerServiceServicer):
    def __init__(self, owner: FakeEdgecore) -> None:
        self.owner = owner

    async def _limit(self, context: Any, what: str) -> None:
        if self.owner.bucket is not None and not self.owner.bucket.try_take():
            self.owner.limited += 1
            # Edgecore returns a plain Go error: gRPC status UNKNOWN.
            await context.abort(
                grpc.StatusCode.UNKNOWN, f"fail to {what} because of too many request: x"
            )

    async def MapperRegister(self, request: Any, context: Any) -> Any:
        self.owner.calls.append(Call("MapperRegister", time.monotonic(), request))
        await self._limit(context, "register mapper")
        if not request.mapper.protocol:
            await context.abort(grpc.StatusCode.UNKNOWN, "fail to register mapper: empty protocol")
        self.owner.mapper = request.mapper
        response = api_pb2.MapperRegisterResponse()
        if request.withData:
            state = self.owner.state
            for device in state.devices.values():
                if device.spec.protocol.protocolName != request.mapper.protocol:
                    continue
                response.deviceList.append(device)
                model = state.models.get(device.spec.deviceModelReference)
                if model is not None:
                    response.modelList.append(model)
        return response

    async def ReportDeviceStatus(self, request: Any, context: Any) -> Any:
        self.owner.calls.append(Call("ReportDeviceStatus", time.monotonic(), request))
        await self._limit(context, "report device status")
        if not request.reportedDevice.twins:
            await context.abort(
                grpc.StatusCode.UNKNOWN, "ReportDeviceStatusRequest does not have twin data"
            )
        return api_pb2.ReportDeviceStatusResponse()

    async def ReportDeviceStates(self, request: Any, context: Any) -> Any:
        self.owner.calls.append(Call("ReportDeviceStates", time.monotonic(), request))
        await self._limit(context, "report device states")
        if not request.state or not request.deviceName:
            await context.abort(grpc.StatusCode.UNKNOWN, "fail to report device states: invalid")
        return api_pb2.ReportDeviceStatesResponse()


class FakeEdgecore:
    """Edgecore's DMI server on ``socket_path`` (start, stop, start again).

    Args:
        socket_path: where to listen (edgecore's ``dmi.sock``).
        state: the devices and models it knows (kept across restarts).
        budget: its rate limiter; ``None`` turns it off.
    """

    def __init__(
        self,
        socket_path: Path,
        state: EdgecoreState | None = None,
        budget: ReportBudget | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.state = state or EdgecoreState()
        self.budget = budget
        self.bucket = TokenBucket(budget) if budget is not None else None
        self.calls: list[Call] = []
        self.limited = 0
        self.mapper: Any = None
        self._server: Any = None

    # ---- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        server = grpc.aio.server()
        api_pb2_grpc.add_DeviceManagerServiceServicer_to_server(_Servicer(self), server)
        server.add_insecure_port(f"unix://{self.socket_path}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(0)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def __aenter__(self) -> FakeEdgecore:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- state -------------------------------------------------------------------------
    def load(self, text: str) -> list[api_pb2.Device]:
        """Take the Devices and DeviceModels of a YAML text as edgecore holds them."""
        docs = documents(text)
        models = {d["metadata"]["name"]: d for d in docs if d["kind"] == "DeviceModel"}
        for doc in models.values():
            self.state.models[doc["metadata"]["name"]] = model_to_proto(doc)
        devices = []
        for doc in docs:
            if doc["kind"] != "Device":
                continue
            model = models.get(doc["spec"]["deviceModelRef"]["name"])
            device = device_to_proto(doc, model)
            self.state.devices[device.name] = device
            devices.append(device)
        return devices

    # ---- what was called ---------------------------------------------------------------
    def received(self, method: str, since: float = 0.0) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.at >= since]

    def registrations(self) -> list[Call]:
        return self.received("MapperRegister")

    def status_reports(self, device: str | None = None, since: float = 0.0) -> list[Any]:
        return [
            c.request
            for c in self.received("ReportDeviceStatus", since)
            if device is None or c.request.deviceName == device
        ]

    def states(self, device: str | None = None, since: float = 0.0) -> list[str]:
        return [
            c.request.state
            for c in self.received("ReportDeviceStates", since)
            if device is None or c.request.deviceName == device
        ]

    def latest_twins(self, device: str) -> dict[str, tuple[str, str]]:
        """``{property: (reported, observed desired)}`` of the last report of ``device``."""
        reports = self.status_reports(device)
        if not reports:
            return {}
        return {
            t.propertyName: (t.reported.value, t.observedDesired.value)
            for t in reports[-1].reportedDevice.twins
        }

    # ---- edgecore → mapper ---------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def mapper_stub(self) -> Any:
        """A stub on the socket the mapper registered (a new connection, as edgecore dials)."""
        assert self.mapper is not None, "no mapper has registered"
        address = self.mapper.address.decode()
        async with grpc.aio.insecure_channel(f"unix://{address}") as channel:
            yield api_pb2_grpc.DeviceMapperServiceStub(channel)

    async def call_mapper(self, method: str, request: Any, timeout: float = 10.0) -> Any:
        async with self.mapper_stub() as stub:
            return await getattr(stub, method)(request, timeout=timeout)


async def wait_for(
    predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` s."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = predicate()
                if value:
                    return value
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what or predicate}") from None


def twins_of(report: Any) -> Mapping[str, tuple[str, str]]:
    return {
        t.propertyName: (t.reported.value, t.observedDesired.value)
        for t in report.reportedDevice.twins
    }


def names(items: Iterable[Any]) -> list[str]:
    return [i.name for i in items]
