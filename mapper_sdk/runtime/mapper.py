"""Mapper: all device workers of one process, one MQTT link, one outbox.

``Mapper`` is an async context manager that owns every task it starts in one
``TaskGroup``: the MQTT link, the outbox sender, one worker per device and the
resync after each broker reconnect (a ``twin/get`` per device, so a desired
value set while the mapper was away is applied). :meth:`Mapper.serve_forever`
adds SIGINT/SIGTERM handling and stops cleanly within a few seconds: workers
are cancelled (each closes its driver), every device is reported offline, and
the outbox is flushed while the broker is there, or kept in its store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiomqtt

from .. import topics
from ..driver import DeviceState, Driver, Resources
from ..errors import ConfigError, DriverNotFound
from ..model import DeviceSpec, load_files
from ..mqtt import LinkDown, MqttLink, MqttSettings
from .outbox import Outbox
from .twin import EventIds, state_payload
from .worker import DeviceWorker, ReadingsListener, WorkerOptions

__all__ = ["Mapper", "MapperOptions"]

log = logging.getLogger("mapper_sdk.runtime")


@dataclass(slots=True)
class MapperOptions:
    """How a mapper process runs."""

    mqtt: MqttSettings = field(default_factory=MqttSettings)
    outbox_path: str | Path | None = None
    outbox_max: int = 100_000
    outbox_drop_oldest: bool = True
    worker: WorkerOptions = field(default_factory=WorkerOptions)
    shutdown_timeout: float = 4.0
    listeners: Sequence[ReadingsListener] = ()


class Mapper:
    """Serves devices with their drivers and reports them to the twin over MQTT.

    Args:
        devices: the devices to serve (from :func:`mapper_sdk.model.load_files`).
        drivers: protocol name to driver class (a :class:`~mapper_sdk.registry.Registry`
            or a plain mapping, as tests inject them).
        options: broker, outbox and timing options.
        resources: the shared-connection pool handed to every driver; pass one
            to inject process-wide objects through ``Resources.extras``.
    """

    def __init__(
        self,
        devices: Sequence[DeviceSpec[Any, Any]],
        drivers: Mapping[str, type[Driver[Any, Any]]],
        options: MapperOptions | None = None,
        *,
        resources: Resources | None = None,
    ) -> None:
        self.options = options or MapperOptions()
        self.resources = resources if resources is not None else Resources()
        self._devices = list(devices)
        self._drivers = drivers
        self.event_ids = EventIds()
        self.workers: dict[str, DeviceWorker] = {}
        self.link: MqttLink | None = None
        self.outbox: Outbox | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._worker_tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self.malformed_messages = 0
        for spec in self._devices:
            if spec.protocol not in drivers:
                raise DriverNotFound(spec.protocol, list(drivers))

    @classmethod
    def from_files(
        cls,
        paths: Iterable[str | Path],
        options: MapperOptions | None = None,
        *,
        drivers: Mapping[str, type[Driver[Any, Any]]] | None = None,
        resources: Resources | None = None,
    ) -> Mapper:
        """Load devices from YAML files and serve those whose protocol is installed."""
        if drivers is None:
            from ..registry import Registry

            drivers = Registry()
        inventory = load_files(paths, drivers, missing_driver="skip")
        for device_id, protocol in inventory.skipped:
            log.warning(
                "device=%s event=skipped reason=%r",
                device_id,
                f"no installed driver for protocol {protocol!r} "
                f"(installed: {', '.join(sorted(drivers)) or 'none'})",
            )
        if not inventory.devices:
            raise ConfigError(
                "no device to serve: the files define no device whose protocol has an installed "
                f"driver (installed: {', '.join(sorted(drivers)) or 'none'})"
            )
        return cls(inventory.devices, drivers, options, resources=resources)

    # ---- lifecycle -------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        if self._tg is not None:
            raise RuntimeError("Mapper is not reentrant")
        opts = self.options
        subscriptions = []
        for spec in self._devices:
            subscriptions.append(
                topics.device_topic(spec.namespace, spec.name, topics.TWIN_UPDATE_DELTA)
            )
            subscriptions.append(
                topics.device_topic(spec.namespace, spec.name, topics.TWIN_GET_RESULT)
            )
        self.link = MqttLink(
            opts.mqtt,
            subscriptions=subscriptions,
            on_message=self._dispatch,
            on_connect=self._on_connect,
            name="mapper",
        )
        self.outbox = Outbox(
            self.link,
            path=opts.outbox_path,
            max_messages=opts.outbox_max,
            drop_oldest=opts.outbox_drop_oldest,
        )
        for spec in self._devices:
            driver = self._drivers[spec.protocol](spec, self.resources)
            self.workers[spec.id] = DeviceWorker(
                spec,
                driver,
                self.outbox,
                options=opts.worker,
                event_ids=self.event_ids,
                listeners=opts.listeners,
            )
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        try:
            await self.link.__aenter__()
            self._tg.create_task(self.outbox.run(), name="mapper.outbox")
            for worker in self.workers.values():
                self._worker_tasks.append(
                    self._tg.create_task(worker.run(), name=f"mapper[{worker.id}]")
                )
        except BaseException as exc:
            await self._teardown(type(exc), exc, exc.__traceback__)
            raise
        log.info(
            "event=mapper-started devices=%d broker=%s protocols=%s",
            len(self.workers),
            opts.mqtt.url,
            ",".join(sorted({s.protocol for s in self._devices})),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._teardown(exc_type, exc, tb)

    async def _teardown(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg, self._tg = self._tg, None
        if tg is None:
            return
        deadline = asyncio.get_running_loop().time() + self.options.shutdown_timeout
        for task in self._worker_tasks:
            task.cancel()
        if self._worker_tasks:
            await asyncio.wait(
                self._worker_tasks, timeout=max(0.1, self.options.shutdown_timeout / 2)
            )
        self._worker_tasks.clear()
        outbox, link = self.outbox, self.link
        if outbox is not None and link is not None:
            for worker in self.workers.values():
                if worker.spec.state_report.report_to_cloud:
                    outbox.put(
                        topics.device_topic(
                            worker.spec.namespace, worker.spec.name, topics.STATE_UPDATE
                        ),
                        state_payload(self.event_ids.next(), DeviceState.OFFLINE.value),
                    )
            remaining = deadline - asyncio.get_running_loop().time()
            if link.connected and remaining > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await outbox.flush()
        # Cancel what is left (outbox sender, resync) and leave the group.
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task() and task.get_name().startswith("mapper."):
                task.cancel()
        try:
            await tg.__aexit__(exc_type, exc, tb)
        finally:
            if link is not None:
                await link.__aexit__(None, None, None)
            if outbox is not None:
                outbox.close()
            await self.resources.aclose()
            log.info("event=mapper-stopped")

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to return."""
        self._stop.set()

    async def serve_forever(self) -> None:
        """Run until SIGINT/SIGTERM or :meth:`stop`, then shut down cleanly."""
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.stop)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):
                pass
        try:
            async with self:
                await self._stop.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    # ---- MQTT ----------------------------------------------------------------------------
    def _on_connect(self) -> None:
        if self._tg is not None:
            self._tg.create_task(self._resync(), name="mapper.resync")

    async def _resync(self) -> None:
        """After a (re)connect, ask the twin for every device's desired values."""
        link = self.link
        if link is None:
            return
        messages = [(*w.get_request(), 1, False) for w in self.workers.values()]
        for i in range(0, len(messages), 256):
            try:
                await link.publish_batch(messages[i : i + 256])
            except LinkDown:
                return  # the next connect resyncs again

    def _dispatch(self, message: aiomqtt.Message) -> None:
        parsed = topics.parse_device_topic(message.topic.value)
        if parsed is None:
            return
        worker = self.workers.get(f"{parsed.namespace}/{parsed.name}")
        if worker is None:
            return
        payload = message.payload
        try:
            doc = json.loads(payload if isinstance(payload, bytes | str) else b"")
        except (ValueError, UnicodeDecodeError):
            self.malformed_messages += 1
            return
        if parsed.suffix == topics.TWIN_UPDATE_DELTA:
            worker.on_delta(doc)
        elif parsed.suffix == topics.TWIN_GET_RESULT:
            worker.on_get_result(doc)
