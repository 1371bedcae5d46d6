"""Fixtures for the bad-input tests: the twin service with chosen limits, probes, a witness.

The broker and the probe come from the twin tests (``tests/twin/conftest.py``);
what is added here:

* :func:`serve`: the service in this process with every limit settable;
* :func:`probe_on`: a probe that records only the topics given, so traffic of
  other devices does not mix into what a request caused;
* :class:`Witness`: a well-formed device that keeps updating its twin while a
  test throws bad input at another, and records whether each update was
  answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from mapper_sdk.model import DeviceSpec
from mapper_sdk.mqtt import MqttSettings
from tests.twin.conftest import DEVICES, PREFIX, Msg, Probe, broker, settings, specs
from twin.document import Options
from twin.service import ServiceConfig, TwinService

__all__ = [
    "DEVICES",
    "PREFIX",
    "Msg",
    "Probe",
    "Witness",
    "broker",
    "exchange",
    "probe_on",
    "serve",
    "settings",
    "specs",
    "stored_row",
]

_OPTION_FIELDS = frozenset(Options.__dataclass_fields__)


@contextlib.asynccontextmanager
async def serve(
    settings: MqttSettings,
    db: Path,
    devices: Sequence[DeviceSpec[Any, Any]] | None = None,
    *,
    device_files: Sequence[Path] = (DEVICES,),
    **kwargs: Any,
) -> AsyncIterator[TwinService]:
    """The twin service on ``settings`` in this process, ready; ``kwargs`` are
    :class:`~twin.document.Options` fields (limits) or :class:`ServiceConfig` fields."""
    options = Options(**{k: kwargs.pop(k) for k in list(kwargs) if k in _OPTION_FIELDS})
    config = ServiceConfig(
        mqtt=settings,
        db_path=db,
        device_files=tuple(device_files),
        options=options,
        node=kwargs.pop("node", "edge-0"),
        **kwargs,
    )
    async with TwinService(config, devices) as service:
        async with asyncio.timeout(10):
            await service.wait_ready()
        yield service


@contextlib.asynccontextmanager
async def probe_on(settings: MqttSettings, filters: Sequence[str]) -> AsyncIterator[Probe]:
    """A :class:`Probe` subscribed to ``filters`` only."""
    async with settings.client() as client:
        probe = Probe(client)
        await client.subscribe([(f, 1) for f in filters])

        async def reader() -> None:
            async for message in client.messages:
                probe._record(message)

        task = asyncio.create_task(reader(), name="badinput.probe")
        try:
            yield probe
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


async def exchange(
    probe: Probe, topic: str, payload: bytes, sentinel_device: str
) -> tuple[list[Msg], dict[str, Any]]:
    """Publish ``payload`` on ``topic``, then a ``twin/get`` of ``sentinel_device``.

    The service answers in arrival order and publishes in that order, so what
    the request caused arrives before the sentinel's answer. Returns what
    arrived in between and the sentinel's get result (the device's state after
    the request).
    """
    start = probe.mark()
    await probe.client.publish(topic, payload, qos=1)
    sentinel = f"sentinel-{uuid.uuid4().hex}"
    await probe.client.publish(
        f"{PREFIX}{sentinel_device}/twin/get", json.dumps({"event_id": sentinel}), qos=1
    )
    end = await probe.wait_for(
        lambda m: m.kind == "twin/get/result" and m.body.get("event_id") == sentinel,
        start,
        timeout=10.0,
    )
    index = probe.messages.index(end, start)
    return probe.messages[start:index], end.body


def stored_row(db: Path, device: str) -> tuple[Any, ...] | None:
    """A device's row in the twin store, read through a connection of its own."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = con.execute(
            "SELECT version, state, last_online, twins FROM devices WHERE id = ?", (device,)
        ).fetchone()
    finally:
        con.close()
    return None if row is None else tuple(row)


@dataclass
class Witness:
    """A well-formed device that keeps reporting while bad input goes to another.

    Each report waits for its own ``result``; :attr:`failures` lists every report
    that was refused or not answered within :attr:`patience` seconds.
    """

    settings: MqttSettings
    device: str
    prop: str = "temperature"
    patience: float = 10.0
    answered: int = 0
    failures: list[str] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _progress: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> Witness:
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._run(ready), name="badinput.witness")
        await asyncio.wait_for(ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            # The client's graceful disconnect is bounded: the test is over either way.
            await asyncio.wait({self._task}, timeout=5)

    async def answered_after(self, count: int, timeout: float = 10.0) -> int:
        """Wait until more than ``count`` reports were answered; return the number."""
        async with asyncio.timeout(timeout):
            while self.answered <= count:
                self._progress.clear()
                await self._progress.wait()
        return self.answered

    async def _run(self, ready: asyncio.Event) -> None:
        result_topic = f"{PREFIX}{self.device}/twin/update/result"
        async with self.settings.client() as client:
            await client.subscribe(result_topic, qos=1)
            ready.set()
            messages = client.messages
            for k in range(1, 1_000_000):
                eid = f"witness-{k}"
                body = {"event_id": eid, "twin": {self.prop: {"actual": {"value": f"{k}.5"}}}}
                await client.publish(f"{PREFIX}{self.device}/twin/update", json.dumps(body), qos=1)
                try:
                    async with asyncio.timeout(self.patience):
                        async for message in messages:
                            payload = message.payload
                            raw = payload if isinstance(payload, bytes) else str(payload)
                            reply = json.loads(raw)
                            if reply.get("event_id") == eid:
                                break
                except TimeoutError:
                    self.failures.append(f"{eid}: no answer within {self.patience} s")
                    continue
                if "code" in reply:
                    self.failures.append(f"{eid}: {reply['code']} {reply['reason']}")
                self.answered += 1
                self._progress.set()
                await asyncio.sleep(0.01)
