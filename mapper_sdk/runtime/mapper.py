"""Mapper: all device workers of one process, one MQTT link, one outbox.

``Mapper`` is an async context manager that owns every task it starts in one
``TaskGroup``: the MQTT link, the outbox sender, the data-plane sinks, one
worker per device and the resync after each broker reconnect (a ``twin/get``
per device, so a desired value set while the mapper was away is applied).
Devices can be added, updated and removed while it runs (KubeEdge's DMI does
so). :meth:`Mapper.serve_forever` adds SIGINT/SIGTERM handling and stops
cleanly within a few seconds: workers are cancelled (each closes its driver),
every device is reported offline, and the outbox is flushed while the broker
is there, or kept in its store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiomqtt

from .. import topics
from ..driver import DeviceState, Driver, Reading, Resources
from ..errors import ConfigError, DriverNotFound
from ..model import DeviceSpec, load_files
from ..mqtt import LinkDown, MqttLink, MqttSettings
from .outbox import Outbox
from .reporters.base import REPORTER_GROUP, Reporter, ReporterContext, push_targets
from .twin import (
    DesiredValue,
    EventIds,
    MqttTwinReporter,
    TwinReporter,
    is_delta,
    is_get_result,
)
from .worker import DeviceWorker, WorkerOptions

__all__ = ["Mapper", "MapperOptions", "load_reporters"]

log = logging.getLogger("mapper_sdk.runtime")


@dataclass(slots=True)
class MapperOptions:
    """How a mapper process runs.

    Attributes:
        mqtt: the broker for the twin topics; ``None`` when the twin is reached
            another way (KubeEdge's DMI), given as ``twin`` to :class:`Mapper`.
        outbox_path: SQLite file keeping messages while the broker is away.
        outbox_max: bound of the outbox.
        outbox_drop_oldest: drop the oldest (True) or refuse the newest when full.
        worker: per-device timeouts and backoff.
        shutdown_timeout: seconds allowed for a clean stop.
    """

    mqtt: MqttSettings | None = field(default_factory=MqttSettings)
    outbox_path: str | Path | None = None
    outbox_max: int = 100_000
    outbox_drop_oldest: bool = True
    worker: WorkerOptions = field(default_factory=WorkerOptions)
    shutdown_timeout: float = 4.0


def load_reporters() -> dict[str, type[Reporter]]:
    """Reporter classes from the ``mapper_sdk.reporters`` entry-point group, by kind."""
    found: dict[str, type[Reporter]] = {}
    for ep in entry_points(group=REPORTER_GROUP):
        try:
            cls = ep.load()
        except Exception as exc:  # noqa: BLE001 - one broken sink must not stop the others
            log.warning("reporter %s cannot be loaded: %s: %s", ep.name, type(exc).__name__, exc)
            continue
        if isinstance(cls, type) and issubclass(cls, Reporter):
            found[ep.name] = cls
        else:
            log.warning("reporter %s is not a Reporter subclass: %r", ep.name, cls)
    return found


class Mapper:
    """Serves devices with their drivers and reports them to the twin.

    Args:
        devices: the devices to serve (from :func:`mapper_sdk.model.load_files`).
        drivers: protocol name to driver class (a :class:`~mapper_sdk.registry.Registry`
            or a plain mapping, as tests inject them).
        options: broker, outbox and timing options.
        resources: the shared-connection pool handed to every driver; pass one
            to inject process-wide objects through ``Resources.extras``.
        twin: where twin reports go; default: the MQTT twin topics of
            ``options.mqtt`` through the outbox.
        reporters: sink classes by kind; default: the ``mapper_sdk.reporters``
            entry points.
    """

    def __init__(
        self,
        devices: Sequence[DeviceSpec[Any, Any]],
        drivers: Mapping[str, type[Driver[Any, Any]]],
        options: MapperOptions | None = None,
        *,
        resources: Resources | None = None,
        twin: TwinReporter | None = None,
        reporters: Mapping[str, type[Reporter]] | None = None,
    ) -> None:
        self.options = options or MapperOptions()
        self.resources = resources if resources is not None else Resources()
        self._initial = list(devices)
        self._drivers = drivers
        self._reporter_classes = reporters
        self._custom_twin = twin
        if twin is None and self.options.mqtt is None:
            raise ConfigError("a mapper needs a broker (options.mqtt) or another twin reporter")
        self.event_ids = EventIds()
        self.workers: dict[str, DeviceWorker] = {}
        self.sinks: dict[tuple[str, Hashable], Reporter] = {}
        self.link: MqttLink | None = None
        self.outbox: Outbox | None = None
        self.twin: TwinReporter | None = twin
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running_sinks: set[int] = set()
        self._stop = asyncio.Event()
        self.malformed_messages = 0
        for spec in self._initial:
            self._driver_class(spec)
        ids = [s.id for s in self._initial]
        if len(set(ids)) != len(ids):
            raise ConfigError("the same device is given twice")

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

    def _driver_class(self, spec: DeviceSpec[Any, Any]) -> type[Driver[Any, Any]]:
        cls = self._drivers.get(spec.protocol)
        if cls is None:
            raise DriverNotFound(spec.protocol, list(self._drivers))
        return cls

    # ---- lifecycle -------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        if self._tg is not None:
            raise RuntimeError("Mapper is not reentrant")
        opts = self.options
        if self._custom_twin is None:
            assert opts.mqtt is not None
            self.link = MqttLink(
                opts.mqtt,
                subscriptions=[t for s in self._initial for t in self._topics(s)],
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
            self.twin = MqttTwinReporter(self.outbox, self.event_ids)
        sink_plan = [self._plan_sinks(spec) for spec in self._initial]
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        try:
            if self.link is not None:
                await self.link.__aenter__()
            if self.outbox is not None:
                self._tg.create_task(self.outbox.run(), name="mapper.outbox")
            for spec, sinks in zip(self._initial, sink_plan, strict=True):
                self._start_worker(spec, sinks)
        except BaseException as exc:
            await self._teardown(type(exc), exc, exc.__traceback__)
            raise
        log.info(
            "event=mapper-started devices=%d twin=%s protocols=%s",
            len(self.workers),
            opts.mqtt.url if self._custom_twin is None and opts.mqtt else type(self.twin).__name__,
            ",".join(sorted({s.protocol for s in self._initial})),
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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.shutdown_timeout
        await self._cancel_tasks("mapper[", max(0.1, self.options.shutdown_timeout / 2))
        self._tasks.clear()
        if self.twin is not None:
            for worker in self.workers.values():
                if worker.spec.state_report.report_to_cloud:
                    self.twin.report_state(worker.spec, DeviceState.OFFLINE)
        outbox, link = self.outbox, self.link
        if outbox is not None and link is not None:
            remaining = deadline - loop.time()
            if link.connected and remaining > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await outbox.flush()
        # Cancel what is left (outbox sender, sinks, resync) and leave the group.
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task() and task.get_name().startswith("mapper."):
                task.cancel()
        try:
            await tg.__aexit__(exc_type, exc, tb)
        finally:
            for sink in self.sinks.values():
                try:
                    async with asyncio.timeout(1.0):
                        await sink.aclose()
                except Exception as err:  # noqa: BLE001 - shutdown must go on
                    log.warning("sink=%s event=close-failed error=%r", sink.kind, str(err))
            if link is not None:
                await link.__aexit__(None, None, None)
            if outbox is not None:
                outbox.close()
            await self.resources.aclose()
            log.info("event=mapper-stopped")

    async def _cancel_tasks(self, prefix: str, within: float) -> None:
        """Cancel the tasks whose names start with ``prefix`` until they are done.

        Cancelling again is deliberate: Python 3.11's ``asyncio.wait_for``, which
        protocol libraries use, can swallow a cancellation that arrives as its
        inner call completes, and the task then carries on.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        me = asyncio.current_task()
        while True:
            pending = [
                t
                for t in asyncio.all_tasks()
                if t is not me and not t.done() and t.get_name().startswith(prefix)
            ]
            if not pending:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning(
                    "event=shutdown-slow tasks=%s", ",".join(sorted(t.get_name() for t in pending))
                )
                return
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=min(0.25, remaining))

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to return."""
        self._stop.set()

    async def serve_forever(
        self, services: Sequence[contextlib.AbstractAsyncContextManager[Any]] = ()
    ) -> None:
        """Run until SIGINT/SIGTERM or :meth:`stop`, then shut down cleanly.

        ``services`` (an HTTP API, a DMI server ...) are entered once the mapper
        runs and exited before it stops.
        """
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.stop)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):
                pass
        try:
            async with self, contextlib.AsyncExitStack() as stack:
                for service in services:
                    await stack.enter_async_context(service)
                await self._stop.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    # ---- devices ----------------------------------------------------------------------
    @staticmethod
    def _topics(spec: DeviceSpec[Any, Any]) -> list[str]:
        return [
            topics.device_topic(spec.namespace, spec.name, topics.TWIN_UPDATE_DELTA),
            topics.device_topic(spec.namespace, spec.name, topics.TWIN_GET_RESULT),
        ]

    def _plan_sinks(self, spec: DeviceSpec[Any, Any]) -> list[list[Reporter]] | None:
        """The sinks of each property (created and started on first use); validates configs."""
        targets = [list(push_targets(p.push_method)) for p in spec.properties]
        if not any(targets):
            return None
        classes = self._reporter_classes
        if classes is None:
            classes = self._reporter_classes = load_reporters()
        plan: list[list[Reporter]] = []
        for prop, wanted in zip(spec.properties, targets, strict=True):
            row: list[Reporter] = []
            for kind, path, config in wanted:
                cls = classes.get(kind)
                where = f"{spec.source}: spec.properties[{prop.index}].{path}"
                if cls is None:
                    raise ConfigError(
                        f"no reporter installed for {kind!r} "
                        f"(installed: {', '.join(sorted(classes)) or 'none'})",
                        location=where,
                    )
                try:
                    cls.validate(config)
                    key = (kind, cls.pool_key(config))
                    sink = self.sinks.get(key)
                    if sink is None:
                        context = ReporterContext(
                            mqtt=self.options.mqtt, resources=self.resources, environ=os.environ
                        )
                        sink = self.sinks[key] = cls(config, context)
                except ConfigError as exc:
                    raise ConfigError(exc.message, location=where) from None
                row.append(sink)
            plan.append(row)
        return plan

    def _start_worker(
        self, spec: DeviceSpec[Any, Any], sinks: list[list[Reporter]] | None
    ) -> DeviceWorker:
        assert self._tg is not None
        assert self.twin is not None
        for row in sinks or ():
            for sink in row:
                if id(sink) not in self._running_sinks:
                    self._running_sinks.add(id(sink))
                    self._tg.create_task(sink.run(), name=f"mapper.sink.{sink.kind}")
        driver = self._driver_class(spec)(spec, self.resources)
        worker = DeviceWorker(spec, driver, self.twin, options=self.options.worker, sinks=sinks)
        self.workers[spec.id] = worker
        self._tasks[spec.id] = self._tg.create_task(worker.run(), name=f"mapper[{spec.id}]")
        return worker

    @property
    def devices(self) -> list[DeviceSpec[Any, Any]]:
        return [w.spec for w in self.workers.values()]

    async def add_device(self, spec: DeviceSpec[Any, Any]) -> None:
        """Start serving a device (``ConfigError`` if it is already served)."""
        if self._tg is None:
            raise RuntimeError("the mapper is not running")
        if spec.id in self.workers:
            raise ConfigError(f"device {spec.id} is already served")
        self._driver_class(spec)
        sinks = self._plan_sinks(spec)
        if self.link is not None:
            await self.link.subscribe(self._topics(spec))
        self._start_worker(spec, sinks)
        if (
            self.link is not None
            and self.link.connected
            and isinstance(self.twin, MqttTwinReporter)
        ):
            with contextlib.suppress(LinkDown):
                await self.link.publish(*self.twin.get_request(spec))
        log.info("device=%s event=added", spec.id)

    async def remove_device(self, device_id: str) -> None:
        """Stop serving a device; its driver is closed. ``KeyError`` if unknown."""
        worker = self.workers.pop(device_id)
        task = self._tasks.pop(device_id, None)
        await self._cancel_tasks(f"mapper[{device_id}]", 5.0)
        if task is not None and task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.twin is not None and worker.spec.state_report.report_to_cloud:
            self.twin.report_state(worker.spec, DeviceState.OFFLINE)
        if self.link is not None:
            await self.link.unsubscribe(self._topics(worker.spec))
        if isinstance(self.twin, MqttTwinReporter):
            self.twin.forget(device_id)
        log.info("device=%s event=removed", device_id)

    async def update_device(self, spec: DeviceSpec[Any, Any]) -> None:
        """Serve a changed definition of a device.

        When only desired values changed, they are applied by the running worker
        (no reconnect); any other change restarts that device alone.
        """
        worker = self.workers.get(spec.id)
        if worker is None:
            await self.add_device(spec)
            return
        old = worker.spec
        self._driver_class(spec)
        self._plan_sinks(spec)  # a bad pushMethod fails here, before the running device stops
        if _without_desired(old) == _without_desired(spec):
            worker.spec = spec
            for new, before in zip(spec.properties, old.properties, strict=True):
                if new.desired is not None and new.desired != before.desired:
                    worker.want(new.name, DesiredValue(new.desired, None))
            return
        await self.remove_device(spec.id)
        await self.add_device(spec)

    # ---- on demand ------------------------------------------------------------------
    def worker(self, device_id: str) -> DeviceWorker:
        """The worker of ``device_id`` (``ns/name``, or ``name`` in ``default``)."""
        worker = self.workers.get(device_id) or self.workers.get(f"default/{device_id}")
        if worker is None:
            raise KeyError(device_id)
        return worker

    async def read(self, device_id: str, prop: str) -> Reading:
        """Read one property from the device now."""
        return await self.worker(device_id).read_now(prop)

    async def write(self, device_id: str, prop: str, text: str) -> Reading | None:
        """Validate, write and read back one property now."""
        return await self.worker(device_id).write_now(prop, text)

    # ---- MQTT ----------------------------------------------------------------------------
    def _on_connect(self) -> None:
        if self._tg is None:
            return
        resync = self._resync()
        try:
            self._tg.create_task(resync, name="mapper.resync")
        except RuntimeError:  # the task group is shutting down
            resync.close()

    async def _resync(self) -> None:
        """After a (re)connect, ask the twin for every device's desired values."""
        link, twin = self.link, self.twin
        if link is None or not isinstance(twin, MqttTwinReporter):
            return
        messages = [(*twin.get_request(w.spec), 1, False) for w in list(self.workers.values())]
        for i in range(0, len(messages), 64):
            try:
                await link.publish_batch(messages[i : i + 64])
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
        except (ValueError, RecursionError):  # not UTF-8, not JSON, nested too deeply
            self.malformed_messages += 1
            return
        if parsed.suffix == topics.TWIN_UPDATE_DELTA:
            if not is_delta(doc):
                self.malformed_messages += 1
                return
            worker.on_delta(doc)
        elif parsed.suffix == topics.TWIN_GET_RESULT:
            if not is_get_result(doc):
                self.malformed_messages += 1
                return
            worker.on_get_result(doc)


def _without_desired(spec: DeviceSpec[Any, Any]) -> Any:
    props = tuple(replace(p, desired=None) for p in spec.properties)
    return (
        spec.name,
        spec.namespace,
        spec.model,
        spec.protocol,
        spec.node_name,
        spec.protocol_config,
        tuple(
            (
                p.name,
                p.type,
                p.access_mode,
                p.minimum,
                p.maximum,
                p.visitor,
                p.collect_cycle_ms,
                p.report_cycle_ms,
                p.report_to_cloud,
                p.push_method,
                p.strategy,
            )
            for p in props
        ),
        spec.methods,
        spec.state_report,
    )
