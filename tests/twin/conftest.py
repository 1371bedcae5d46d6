"""Fixtures for the twin tests: a broker, the service in-process, and an MQTT probe.

The probe is a plain MQTT client subscribed to every twin topic; it records
what the service publishes in arrival order. To check that a request caused
nothing beyond its replies, :meth:`Probe.exchange` sends the request and then
a sentinel ``twin/get``: the service answers in arrival order and publishes in
that order, so everything the request caused arrives before the sentinel's
answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from mapper_sdk.model import DeviceSpec, load_files
from mapper_sdk.mqtt import MqttSettings
from mapper_sdk.testing import Mosquitto, MosquittoMissing
from twin.document import Options
from twin.service import ServiceConfig, TwinService

DATA = Path(__file__).parent / "data"
DEVICES = DATA / "devices.yaml"
EXTRA = DATA / "extra.yaml"
PREFIX = "$hw/events/device/"
REQUEST_SUFFIXES = ("/twin/update", "/twin/get", "/state/update", "/membership/get")


@pytest.fixture(scope="session")
def broker() -> Iterator[Mosquitto]:
    """The twin tests' broker; ``set_tcp_nodelay`` so replies sent together are not held back."""
    try:
        mosq = Mosquitto(extra_config="set_tcp_nodelay true")
    except MosquittoMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    mosq.start()
    yield mosq
    mosq.close()


@pytest.fixture(scope="session")
def settings(broker: Mosquitto) -> MqttSettings:
    return MqttSettings.from_url(broker.url)


@pytest.fixture(scope="session")
def specs() -> list[DeviceSpec[Any, Any]]:
    return load_files([DEVICES]).devices


@dataclass
class Msg:
    topic: str
    raw: bytes
    correlation: bytes | None = None

    @property
    def body(self) -> Any:
        return json.loads(self.raw)

    @property
    def kind(self) -> str:
        """The topic's suffix after the device (``twin/update/result``, ...)."""
        if self.topic.startswith(PREFIX):
            return self.topic[len(PREFIX) :].split("/", 2)[2]
        return self.topic


@dataclass
class Probe:
    """Records every message on the twin topics; publishes requests."""

    client: aiomqtt.Client
    messages: list[Msg] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def _record(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        if topic.endswith(REQUEST_SUFFIXES) or topic == "mapperkit/v1/twin/query":
            return
        payload = message.payload
        raw = payload if isinstance(payload, bytes) else str(payload).encode()
        corr = getattr(message.properties, "CorrelationData", None) if message.properties else None
        self.messages.append(Msg(topic, raw, corr))
        self._arrived.set()

    def mark(self) -> int:
        return len(self.messages)

    async def publish(self, topic: str, payload: Any, **kwargs: Any) -> None:
        if isinstance(payload, dict | list):
            payload = json.dumps(payload).encode()
        await self.client.publish(topic, payload, qos=1, **kwargs)

    async def wait_for(
        self, pred: Callable[[Msg], bool], start: int = 0, timeout: float = 5.0
    ) -> Msg:
        async with asyncio.timeout(timeout):
            while True:
                for msg in self.messages[start:]:
                    if pred(msg):
                        return msg
                self._arrived.clear()
                await self._arrived.wait()

    async def exchange(
        self, device: str, payload: Any, suffix: str = "twin/update", **kwargs: Any
    ) -> list[Msg]:
        """Publish a request; return every message it caused, in order.

        Ends with a sentinel get on the same device, whose answer is not returned.
        """
        start = self.mark()
        await self.publish(f"{PREFIX}{device}/{suffix}", payload, **kwargs)
        sentinel = f"sentinel-{uuid.uuid4().hex}"
        await self.publish(f"{PREFIX}{device}/twin/get", {"event_id": sentinel})
        end = await self.wait_for(
            lambda m: m.kind == "twin/get/result" and m.body.get("event_id") == sentinel, start
        )
        out = self.messages[start : self.messages.index(end)]
        return out

    async def update(self, device: str, twin: dict[str, Any], **fields: Any) -> list[Msg]:
        body = {"event_id": f"e-{uuid.uuid4().hex}", "timestamp": 1, "twin": twin, **fields}
        return await self.exchange(device, body)

    async def get(self, device: str) -> dict[str, Any]:
        eid = f"g-{uuid.uuid4().hex}"
        start = self.mark()
        await self.publish(f"{PREFIX}{device}/twin/get", {"event_id": eid})
        msg = await self.wait_for(
            lambda m: m.kind == "twin/get/result" and m.body.get("event_id") == eid, start
        )
        body: dict[str, Any] = msg.body
        return body


@contextlib.asynccontextmanager
async def probe_for(settings: MqttSettings, *, protocol5: bool = False) -> AsyncIterator[Probe]:
    if protocol5:
        settings = MqttSettings.from_url(f"mqtt://{settings.host}:{settings.port}", protocol="5")
    async with settings.client() as client:
        probe = Probe(client)
        await client.subscribe([("$hw/events/#", 1), ("mapperkit/v1/twin/#", 1), ("app/#", 1)])

        async def reader() -> None:
            async for message in client.messages:
                probe._record(message)

        task = asyncio.create_task(reader())
        try:
            yield probe
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


@pytest.fixture
async def probe(settings: MqttSettings) -> AsyncIterator[Probe]:
    async with probe_for(settings) as p:
        yield p


def config_for(settings: MqttSettings, db: Path, **kwargs: Any) -> ServiceConfig:
    options = Options(
        kubeedge_strict=kwargs.pop("kubeedge_strict", False),
        allow_dynamic_twins=kwargs.pop("allow_dynamic_twins", False),
        max_payload=kwargs.pop("max_payload", 64 * 1024),
    )
    return ServiceConfig(
        mqtt=settings,
        db_path=db,
        device_files=kwargs.pop("device_files", (DEVICES,)),
        options=options,
        node=kwargs.pop("node", "edge-0"),
        **kwargs,
    )


@contextlib.asynccontextmanager
async def running(
    settings: MqttSettings, db: Path, specs: list[DeviceSpec[Any, Any]] | None = None, **kwargs: Any
) -> AsyncIterator[TwinService]:
    async with TwinService(config_for(settings, db, **kwargs), specs) as service:
        async with asyncio.timeout(10):
            await service.wait_ready()
        yield service


@pytest.fixture
async def twin(
    settings: MqttSettings, specs: list[DeviceSpec[Any, Any]], tmp_path: Path
) -> AsyncIterator[TwinService]:
    """The service with the test devices, in this process, on a fresh store."""
    async with running(settings, tmp_path / "twin.db", specs) as service:
        yield service


def twin_command(*args: str) -> list[str]:
    """``python -m twin ARGS`` with this interpreter."""
    return [sys.executable, "-m", "twin", *args]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env
