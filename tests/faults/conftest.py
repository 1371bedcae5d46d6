"""Shared pieces of the fault tests.

Every fault here is produced for real: a broker process stopped and started, a
process killed with SIGKILL, a simulator stopped or told to misbehave, a raw TCP
server that answers garbage, a tmpfs filled to its last block. The helpers
below observe; none of them stands in for a protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import inspect
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiomqtt
import pytest
import yaml

from mapper_sdk import topics
from mapper_sdk.driver import Driver
from mapper_sdk.model import DeviceSpec, load_text
from mapper_sdk.mqtt import MqttLink, MqttSettings
from mapper_sdk.runtime.outbox import Outbox
from mapper_sdk.testing import Mosquitto, MosquittoMissing
from mappers.modbus import ModbusDriver
from twin.document import Options
from twin.service import ServiceConfig, TwinService

MODBUS_DRIVERS: dict[str, type[Driver[Any, Any]]] = {"modbus": ModbusDriver}


# ----------------------------------------------------------------------------- waiting
async def wait_until(
    predicate: Callable[[], object], what: str, timeout: float = 10.0, every: float = 0.02
) -> None:
    """Poll ``predicate`` until it is truthy; fail naming ``what`` after ``timeout`` s.

    ``predicate`` may return an awaitable (an ``async def`` check), which is awaited.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(every)


# ----------------------------------------------------------------------------- brokers
def start_broker(**kwargs: Any) -> Mosquitto:
    try:
        broker = Mosquitto(**kwargs)
    except MosquittoMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    broker.start()
    return broker


def settings_for(broker: Mosquitto, **changes: Any) -> MqttSettings:
    """Settings for ``broker``; ``client_id`` and ``clean_session`` make a lasting session."""
    return dataclasses.replace(MqttSettings.from_url(broker.url), **changes)


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.payload)

    @property
    def device(self) -> str:
        parsed = topics.parse_device_topic(self.topic)
        assert parsed is not None, self.topic
        return f"{parsed.namespace}/{parsed.name}"

    @property
    def suffix(self) -> str:
        parsed = topics.parse_device_topic(self.topic)
        assert parsed is not None, self.topic
        return parsed.suffix


class Recorder:
    """Records every message on ``filters``, reconnecting by itself.

    With ``persistent`` it keeps one persistent session (a fixed client id,
    ``clean_session`` off), so with a broker that persists sessions it misses
    nothing published while the broker was restarting or the recorder was
    reconnecting. It rides on Mapperkit's own self-healing
    :class:`~mapper_sdk.mqtt.MqttLink`.
    """

    def __init__(self, port: int, filters: Sequence[str], *, persistent: bool = True) -> None:
        self.messages: list[Received] = []
        settings = MqttSettings(
            port=port,
            client_id=f"faults-recorder-{uuid.uuid4().hex[:8]}",
            clean_session=not persistent,
        )
        self.link = MqttLink(
            settings,
            subscriptions=filters,
            on_message=self._record,
            name="faults-recorder",
            backoff_initial=0.05,
            backoff_max=0.5,
        )

    def _record(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        raw = payload if isinstance(payload, bytes) else str(payload).encode()
        self.messages.append(Received(message.topic.value, raw))

    @property
    def connects(self) -> int:
        return self.link.connects

    async def __aenter__(self) -> Self:
        await self.link.__aenter__()
        async with asyncio.timeout(10):
            await self.link.wait_up()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.link.__aexit__(exc_type, exc, tb)

    def on(self, suffix: str, device: str | None = None) -> list[Received]:
        """Messages whose topic is a device topic ending in ``suffix`` (of ``device``)."""
        out = []
        for m in self.messages:
            parsed = topics.parse_device_topic(m.topic)
            if parsed is None or parsed.suffix != suffix:
                continue
            if device is None or f"{parsed.namespace}/{parsed.name}" == device:
                out.append(m)
        return out


# ----------------------------------------------------------------------------- twin
@contextlib.asynccontextmanager
async def twin_service(
    settings: MqttSettings,
    db: Path,
    devices: Sequence[DeviceSpec[Any, Any]],
) -> AsyncIterator[TwinService]:
    """The twin service in this process, serving ``devices``, ready."""
    config = ServiceConfig(mqtt=settings, db_path=db, options=Options(), node="edge-0")
    async with TwinService(config, devices) as service:
        async with asyncio.timeout(10):
            await service.wait_ready()
        yield service


# ----------------------------------------------------------------------------- devices
def native(devices: Sequence[dict[str, Any]]) -> str:
    """A native ``devices:`` YAML document."""
    return yaml.safe_dump({"devices": list(devices)}, sort_keys=False)


def load_devices(
    devices: Sequence[dict[str, Any]], drivers: dict[str, Any] | None = MODBUS_DRIVERS
) -> list[DeviceSpec[Any, Any]]:
    """Devices from native documents, validated by ``drivers`` (``None``: as the twin
    loads them, without protocol validation)."""
    return load_text(native(devices), "<faults>", drivers).devices


def modbus_device(
    name: str,
    port: int,
    unit: int,
    properties: Sequence[dict[str, Any]],
    *,
    timeout_ms: int = 500,
    **fields: Any,
) -> dict[str, Any]:
    return {
        "name": name,
        "protocol": "modbus",
        "connection": {
            "communicateMode": "TCP",
            "ip": "127.0.0.1",
            "port": port,
            "slaveID": unit,
            "timeout": timeout_ms,
        },
        "properties": list(properties),
        **fields,
    }


def holding(name: str, offset: int, *, ptype: str = "int", **extra: Any) -> dict[str, Any]:
    """A property on holding registers (``extra`` holds cycles, access mode, limits)."""
    visitor: dict[str, Any] = {"register": "HoldingRegister", "offset": offset}
    for key in ("limit", "rawType"):
        if key in extra:
            visitor[key] = extra.pop(key)
    return {"name": name, "type": ptype, "visitor": visitor, **extra}


# ----------------------------------------------------------------------------- counters
COLLECT_MS = 20
COUNTER = {"kind": "counter", "step": 1, "interval": 0.001}


def counter_profile(units: int) -> dict[str, Any]:
    """Per unit: a uint32 counter advancing 1000 per second and a writable setpoint."""
    return {
        "name": "counters",
        "units": [
            {
                "id": unit,
                "points": [
                    {
                        "name": "count",
                        "table": "holding",
                        "address": 0,
                        "type": "uint32",
                        "value": 0,
                        "behaviour": COUNTER,
                    },
                    {
                        "name": "setpoint",
                        "table": "holding",
                        "address": 10,
                        "type": "uint16",
                        "value": 0,
                        "behaviour": "setpoint",
                    },
                ],
            }
            for unit in range(1, units + 1)
        ],
    }


def counter_devices(port: int, units: int) -> list[dict[str, Any]]:
    cycles: dict[str, Any] = {"collectCycle": COLLECT_MS, "reportCycle": COLLECT_MS}
    return [
        modbus_device(
            f"meter-{unit}",
            port,
            unit,
            [
                holding("count", 0, accessMode="ReadOnly", limit=2, rawType="uint32", **cycles),
                holding("setpoint", 10, minimum=0, maximum=60000, **cycles),
            ],
            stateReport={"reportCycle": 500},
        )
        for unit in range(1, units + 1)
    ]


@dataclass
class OutboxSpy:
    """Records every message the mapper hands to its outbox, and the depth after each."""

    outbox: Outbox
    puts: list[tuple[str, bytes]] = field(default_factory=list)
    max_depth: int = 0

    def __post_init__(self) -> None:
        original: Callable[..., None] = self.outbox.put

        def put(topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
            self.puts.append((topic, payload))
            original(topic, payload, qos, retain)
            self.max_depth = max(self.max_depth, self.outbox.depth)

        self.outbox.put = put  # type: ignore[method-assign]

    def event_ids(self) -> list[str]:
        return [json.loads(p)["event_id"] for _, p in self.puts]

    def updates(self, device: str) -> Iterator[dict[str, Any]]:
        ns, name = device.split("/")
        topic = topics.device_topic(ns, name, topics.TWIN_UPDATE)
        for t, p in self.puts:
            if t == topic:
                yield json.loads(p)

    def counts(self, device: str) -> list[str]:
        """The counter values ``device`` reported, in the order they were read."""
        reports = (u["twin"] for u in self.updates(device))
        return [twin["count"]["actual"]["value"] for twin in reports if "count" in twin]


def first_occurrences(ids: list[str]) -> list[str]:
    """``ids`` without repeats (QoS 1 may deliver a message twice), keeping the first."""
    seen: set[str] = set()
    out = []
    for i in ids:
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out


# ----------------------------------------------------------------------------- processes
def python_command(module: str, *args: str) -> list[str]:
    """``python -m MODULE ARGS`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


class Process:
    """A child process whose stderr is collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read(), name="faults.process-stderr")

    @classmethod
    async def start(cls, command: Sequence[str]) -> Process:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip())
            self._new.set()
        self._new.set()

    async def wait_line(self, text: str, timeout: float = 30.0) -> str:
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                if self.proc.returncode is not None and self._reader.done():
                    raise AssertionError(f"exited before {text!r}:\n{self.output}")
                self._new.clear()
                await self._new.wait()

    def kill9(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()

    async def finish(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit (``timeout`` s at most); its exit code."""
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
            await self._reader
        return code

    async def aclose(self) -> None:
        self.kill9()
        await self.finish()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


# ----------------------------------------------------------------------------- disks
@contextlib.contextmanager
def tmpfs(path: Path, size_kib: int) -> Iterator[Path]:
    """A tmpfs of ``size_kib`` KiB mounted on ``path`` (skips the test where mounting is denied)."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("`mount` is not installed, so no small file system can be made to fill")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(
            "a disk-full fault needs a small tmpfs, and mounting one is not permitted here "
            f"(mount said: {done.stderr.strip() or done.returncode}); run as root with "
            "CAP_SYS_ADMIN to include this test"
        )
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def remount(path: Path, mode: str) -> None:
    """Remount the tmpfs at ``path`` ``ro`` or ``rw``."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True, capture_output=True)


def fill_disk(directory: Path) -> Path:
    """Write a filler file in ``directory`` until the file system is full."""
    filler = directory / "filler"
    chunk = b"\0" * 4096
    with open(filler, "ab", buffering=0) as fh:
        while True:
            try:
                fh.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    # The last partial block too.
    with open(filler, "ab", buffering=0) as fh:
        while True:
            try:
                fh.write(b"\0")
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return filler
