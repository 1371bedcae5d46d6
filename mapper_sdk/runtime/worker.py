"""DeviceWorker: everything the runtime does for one device.

A worker owns its driver. It connects with exponential backoff and jitter,
runs the collect and report cycles (scheduled per device and per distinct
cycle, never per property; every property due at the same moment is read in
one batch), takes subscription pushes, applies desired values from the twin
(validated against the model first), reports the device's state, and hands
reported values to the twin and to the property's data-plane sinks according
to its report strategy.

Per-reading work is kept small: conversion functions are chosen once per
property, and nothing is logged per reading; only state transitions are logged
(the first failure and the recovery, not every retry). The runtime never runs
two driver calls (``read``, ``write``) of one device at the same time.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..codec import check_range, format_text, make_coercer, parse_text, values_equal
from ..driver import Capability, DeviceState, Driver, Quality, Reading
from ..errors import (
    ConfigError,
    DeviceTimeout,
    DeviceUnavailable,
    MapperError,
    NotSupported,
    ProtocolError,
    WriteRejected,
)
from ..model import DeviceSpec, PropertySpec, ReportMode, Value
from .backoff import Backoff
from .reporters.base import Item, Reporter
from .twin import Ack, DesiredValue, TwinReporter, desired_from_delta, desired_from_get

__all__ = [
    "LATENCY_BUCKETS_S",
    "LATENESS_BUCKETS_MS",
    "DeviceWorker",
    "WorkerOptions",
    "WorkerStats",
]

log = logging.getLogger("mapper_sdk.runtime")


@dataclass(slots=True)
class WorkerOptions:
    """Timeouts and retry pacing of a device worker."""

    connect_timeout: float = 30.0
    read_timeout: float = 30.0
    write_timeout: float = 30.0
    close_timeout: float = 3.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0


LATENESS_BUCKETS_MS = (
    1,
    2,
    5,
    10,
    20,
    30,
    40,
    50,
    60,
    70,
    80,
    90,
    100,
    200,
    500,
    1000,
    2000,
    5000,
    math.inf,
)
LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    math.inf,
)


@dataclass(slots=True)
class WorkerStats:
    """Counters a worker keeps (exported as metrics)."""

    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    cycles: int = 0
    reads: int = 0
    read_errors: int = 0
    reports: int = 0
    reported_values: int = 0
    writes: int = 0
    writes_rejected: int = 0
    writes_failed: int = 0
    pushes: int = 0
    missed_cycles: int = 0
    read_seconds: float = 0.0
    lateness_hist: list[int] = field(default_factory=lambda: [0] * len(LATENESS_BUCKETS_MS))
    latency_hist: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_S))
    """Read-batch latency, counts per bucket of :data:`LATENCY_BUCKETS_S` (not cumulative)."""

    def record_latency(self, seconds: float) -> None:
        self.read_seconds += seconds
        for i, bound in enumerate(LATENCY_BUCKETS_S):
            if seconds <= bound:
                self.latency_hist[i] += 1
                return

    def record_lateness(self, late_ms: float) -> None:
        for i, bound in enumerate(LATENESS_BUCKETS_MS):
            if late_ms <= bound:
                self.lateness_hist[i] += 1
                return

    def lateness_quantile(self, q: float) -> float:
        """Upper bound (ms) of the bucket holding the ``q`` quantile of cycle lateness."""
        total = sum(self.lateness_hist)
        if not total:
            return 0.0
        seen = 0
        for count, bound in zip(self.lateness_hist, LATENESS_BUCKETS_MS, strict=True):
            seen += count
            if seen >= q * total:
                return bound
        return math.inf


class _Group:
    __slots__ = ("cycle", "due", "props")

    def __init__(self, cycle_ms: int, props: list[PropertySpec[Any]], start: float) -> None:
        self.cycle = cycle_ms / 1000.0
        self.props = props
        self.due = start


def _groups(props: Sequence[PropertySpec[Any]], attr: str, start: float) -> list[_Group]:
    by_cycle: dict[int, list[PropertySpec[Any]]] = {}
    for prop in props:
        by_cycle.setdefault(getattr(prop, attr), []).append(prop)
    return [_Group(cycle, members, start) for cycle, members in sorted(by_cycle.items())]


class _DeviceLost(Exception):
    """Raised inside a worker's task group when the driver reports the device offline."""


_UNSET: Any = object()


class DeviceWorker:
    """Serves one device with its driver. Run :meth:`run` as a task; cancel it to stop.

    Args:
        spec: the device.
        driver: its driver instance.
        twin: where reported values and states go.
        options: timeouts and backoff.
        sinks: per property index, the data-plane reporters of its ``pushMethod``.
    """

    def __init__(
        self,
        spec: DeviceSpec[Any, Any],
        driver: Driver[Any, Any],
        twin: TwinReporter,
        *,
        options: WorkerOptions | None = None,
        sinks: Sequence[Sequence[Reporter]] | None = None,
    ) -> None:
        self.spec = spec
        self.driver = driver
        self.twin = twin
        self.options = options or WorkerOptions()
        self.stats = WorkerStats()
        self.state = DeviceState.UNKNOWN
        self.last_error: str | None = None
        props = spec.properties
        self._props = props
        self._by_name = {p.name: p for p in props}
        self._coerce = [make_coercer(p.type) for p in props]
        self._latest: list[tuple[Value, Reading] | None] = [None] * len(props)
        self._sinks: list[Sequence[Reporter]] = (
            list(sinks) if sinks is not None else [() for _ in props]
        )
        self._has_sinks = any(self._sinks)
        # Report strategies, prepared once.
        self._mode = [p.strategy.mode for p in props]
        self._last_value: list[Any] = [_UNSET] * len(props)
        self._last_time = [0.0] * len(props)
        self._eager = {p.index for p in props if p.strategy.mode is not ReportMode.PERIOD}
        self._heartbeat = [
            (p.index, p.strategy.heartbeat_ms / 1000.0)
            for p in props
            if p.strategy.mode is ReportMode.ON_CHANGE_OR_HEARTBEAT and p.strategy.heartbeat_ms
        ]
        self._pending: dict[str, DesiredValue] = {}
        self._pending_event = asyncio.Event()
        self._done: dict[str, DesiredValue] = {}
        self._lost = asyncio.Event()
        self._online = asyncio.Event()
        self._io = asyncio.Lock()
        self._subscribed: set[int] = set()
        self._dirty: set[int] = set()
        self._flush_scheduled = False
        self._batch_cache: dict[tuple[int, ...], list[PropertySpec[Any]]] = {}
        driver.on_state_change(self._driver_state)

    # ---- public view -----------------------------------------------------------
    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def connected(self) -> bool:
        return self._online.is_set()

    def latest(self, name: str) -> tuple[Value, Reading] | None:
        """The last good value of property ``name`` and its reading."""
        return self._latest[self._by_name[name].index]

    def property(self, name: str) -> PropertySpec[Any]:
        """The property called ``name``; ``KeyError`` if the device has none."""
        return self._by_name[name]

    # ---- lifecycle ---------------------------------------------------------------
    async def run(self) -> None:
        """Connect, serve, reconnect; forever, until cancelled."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._serve(), name=f"mapper[{self.id}].serve")
                if self.spec.state_report.report_to_cloud:
                    tg.create_task(self._state_loop(), name=f"mapper[{self.id}].state")
        finally:
            self._online.clear()
            await self._close_driver()

    async def _serve(self) -> None:
        backoff = Backoff(self.options.backoff_initial, self.options.backoff_max)
        while True:
            try:
                async with asyncio.timeout(self.options.connect_timeout):
                    await self.driver.connect()
            except ConfigError as exc:
                self.last_error = str(exc)
                log.error("device=%s event=config-error error=%r", self.id, str(exc))
                self._set_state(DeviceState.UNHEALTHY)
                return
            except (MapperError, TimeoutError, OSError) as exc:
                self._connect_failed(exc)
                await self._close_driver()
                await asyncio.sleep(backoff.next())
                continue
            except Exception as exc:
                log.exception("device=%s event=driver-bug phase=connect", self.id)
                self._connect_failed(exc)
                await self._close_driver()
                await asyncio.sleep(backoff.next())
                continue
            self.stats.connects += 1
            if backoff.attempts:
                log.info("device=%s event=connected after=%d-failures", self.id, backoff.attempts)
            backoff.reset()
            self.last_error = None
            self._lost.clear()
            self._online.set()
            self._set_state(DeviceState.ONLINE)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._collect_loop(), name=f"mapper[{self.id}].collect")
                    tg.create_task(self._write_loop(), name=f"mapper[{self.id}].write")
                    tg.create_task(self._watch_lost(), name=f"mapper[{self.id}].watch")
            except* (_DeviceLost, DeviceUnavailable, ProtocolError, TimeoutError, OSError) as group:
                self._disconnected(group.exceptions[0])
            except* Exception as group:
                log.error(
                    "device=%s event=driver-bug error=%r",
                    self.id,
                    group.exceptions[0],
                    exc_info=group.exceptions[0],
                )
                self._disconnected(group.exceptions[0])
            self._online.clear()
            self._subscribed.clear()
            await self._close_driver()
            self._set_state(DeviceState.OFFLINE)
            await asyncio.sleep(backoff.next())

    def _connect_failed(self, exc: BaseException) -> None:
        self.stats.connect_failures += 1
        reason = str(exc) or type(exc).__name__
        if self.last_error != reason:
            log.warning("device=%s event=connect-failed error=%r", self.id, reason)
        self.last_error = reason
        self._set_state(DeviceState.OFFLINE)

    def _disconnected(self, exc: BaseException) -> None:
        self.stats.disconnects += 1
        reason = str(exc) or type(exc).__name__
        self.last_error = reason
        log.warning("device=%s event=disconnected error=%r", self.id, reason)

    async def _close_driver(self) -> None:
        try:
            async with asyncio.timeout(self.options.close_timeout):
                await asyncio.shield(self.driver.close())
        except (TimeoutError, MapperError, OSError) as exc:
            log.warning("device=%s event=close-failed error=%r", self.id, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("device=%s event=driver-bug phase=close", self.id)

    def _driver_state(self, state: DeviceState) -> None:
        if state is DeviceState.OFFLINE and self._online.is_set():
            self._lost.set()

    async def _watch_lost(self) -> None:
        await self._lost.wait()
        raise _DeviceLost("the driver reported the device offline")

    # ---- state ---------------------------------------------------------------------
    def _set_state(self, state: DeviceState) -> None:
        if state is self.state:
            return
        self.state = state
        if self.spec.state_report.report_to_cloud:
            self.twin.report_state(self.spec, state)

    async def _state_loop(self) -> None:
        period = self.spec.state_report.report_cycle_ms / 1000.0
        while True:
            await asyncio.sleep(period)
            self.twin.report_state(self.spec, self.state)

    # ---- collect and report -----------------------------------------------------------
    async def _collect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        polled = await self._start_subscriptions()
        start = loop.time()
        collect = _groups(polled, "collect_cycle_ms", start)
        # Only 'period' properties report on their own cycle; the others report as
        # their values arrive. Subscribed properties report as they are pushed.
        report = _groups(
            [
                p
                for p in polled
                if p.strategy.mode is ReportMode.PERIOD
                and (p.report_to_cloud or self._sinks[p.index])
            ],
            "report_cycle_ms",
            start,
        )
        eager = self._eager
        heartbeat = self._heartbeat
        read = self.driver.read
        io = self._io
        timeout = self.options.read_timeout
        while True:
            now = loop.time()
            due = [g for g in collect if g.due <= now]
            emit: list[int] = []
            if due:
                props = due[0].props if len(due) == 1 else self._batch(due)
                async with io, asyncio.timeout(timeout):
                    readings = await read(props)
                    after = loop.time()
                self.stats.record_latency(after - now)
                fresh = self._absorb(props, readings, bool(eager))
                self.stats.cycles += 1
                self._advance(due, now, after)
                if fresh:
                    emit = [i for i in fresh if i in eager and self._should_report(i, after)]
            now = loop.time()
            if heartbeat:
                for index, period in heartbeat:
                    if now - self._last_time[index] >= period and index not in emit:
                        if self._latest[index] is None:
                            self._last_time[index] = now  # nothing to send yet
                        else:
                            emit.append(index)
            due_reports = [g for g in report if g.due <= now]
            if due_reports:
                for group in due_reports:
                    emit.extend(p.index for p in group.props)
                self._advance(due_reports, now, now, record=False)
            if emit:
                self._emit(emit, now)
            wake = min((g.due for g in collect), default=math.inf)
            wake = min(wake, min((g.due for g in report), default=math.inf))
            if heartbeat:
                wake = min(wake, min(self._last_time[i] + p for i, p in heartbeat))
            if wake == math.inf:
                await asyncio.Event().wait()  # nothing to poll: subscriptions only
            delay = wake - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

    def _batch(self, groups: list[_Group]) -> list[PropertySpec[Any]]:
        key = tuple(id(g) for g in groups)
        props = self._batch_cache.get(key)
        if props is None:
            props = [p for g in groups for p in g.props]
            self._batch_cache[key] = props
        return props

    def _advance(
        self, groups: list[_Group], started: float, now: float, record: bool = True
    ) -> None:
        for group in groups:
            if record:
                self.stats.record_lateness((started - group.due) * 1000.0)
            group.due += group.cycle
            if group.due <= now:
                # Overran: skip the cycles that are already past, keep the phase.
                missed = math.ceil((now - group.due) / group.cycle)
                self.stats.missed_cycles += missed
                group.due += missed * group.cycle
                if group.due <= now:
                    group.due += group.cycle

    def _absorb(
        self, props: Sequence[PropertySpec[Any]], readings: Mapping[str, Any], track: bool
    ) -> list[int] | None:
        """Store good readings; return the indices that got a value when ``track``."""
        latest = self._latest
        coerce = self._coerce
        fresh: list[int] | None = [] if track else None
        good = 0
        bad = 0
        for prop in props:
            reading = readings.get(prop.name)
            if reading is None or reading.quality is Quality.BAD or reading.value is None:
                bad += 1
                continue
            try:
                value = coerce[prop.index](reading.value)
            except ValueError:
                bad += 1
                continue
            latest[prop.index] = (value, reading)
            good += 1
            if fresh is not None:
                fresh.append(prop.index)
        self.stats.reads += good + bad
        if bad:
            self.stats.read_errors += bad
            if not good and self.state is DeviceState.ONLINE:
                self._set_state(DeviceState.UNHEALTHY)
        elif self.state is DeviceState.UNHEALTHY:
            self._set_state(DeviceState.ONLINE)
        return fresh

    def _should_report(self, index: int, now: float) -> bool:
        """Whether an 'always' or on-change property's new value is reported."""
        mode = self._mode[index]
        if mode is ReportMode.ALWAYS:
            return True
        entry = self._latest[index]
        if entry is None:
            return False
        last = self._last_value[index]
        if last is _UNSET:
            return True
        value = entry[0]
        strategy = self._props[index].strategy
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and isinstance(last, int | float)
            and (strategy.deadband is not None or strategy.deadband_percent is not None)
        ):
            change = abs(value - last)
            if strategy.deadband is not None and change <= strategy.deadband:
                return False
            return not (
                strategy.deadband_percent is not None
                and change <= abs(last) * strategy.deadband_percent / 100.0
            )
        return bool(value != last)

    def _emit(
        self, indices: Sequence[int], now: float, acks: Mapping[int, Ack] | None = None
    ) -> None:
        """Report the latest values of ``indices`` to the twin and to their sinks."""
        latest = self._latest
        props = self._props
        last_value = self._last_value
        last_time = self._last_time
        twin_items: list[Item] = []
        by_sink: dict[Reporter, list[Item]] | None = {} if self._has_sinks else None
        for index in indices:
            entry = latest[index]
            if entry is None:
                continue
            prop = props[index]
            item = (prop, entry[0], entry[1])
            last_value[index] = entry[0]
            last_time[index] = now
            if prop.report_to_cloud:
                twin_items.append(item)
            if by_sink is not None:
                for sink in self._sinks[index]:
                    by_sink.setdefault(sink, []).append(item)
        if twin_items or acks:
            self.stats.reports += 1
            self.stats.reported_values += len(twin_items)
            self.twin.report(self.spec, twin_items, acks)
        if by_sink:
            for sink, items in by_sink.items():
                sink.offer(self.spec, items)

    # ---- subscriptions --------------------------------------------------------------
    async def _start_subscriptions(self) -> list[PropertySpec[Any]]:
        props = list(self._props)
        if Capability.SUBSCRIBE not in self.driver.capabilities:
            return props
        wanted = [p for p in props if self.driver.subscribable(p)]
        if not wanted:
            return props
        try:
            await self.driver.subscribe(wanted, self._on_push)
        except NotSupported as exc:
            log.info(
                "device=%s event=subscribe-unsupported fallback=poll reason=%r", self.id, str(exc)
            )
            return props
        self._subscribed = {p.index for p in wanted}
        return [p for p in props if p.index not in self._subscribed]

    def _on_push(self, name: str, reading: Reading) -> None:
        prop = self._by_name.get(name)
        if prop is None or not self._online.is_set():
            return
        self.stats.pushes += 1
        self._absorb((prop,), {name: reading}, False)
        if self._latest[prop.index] is None:
            return
        index = prop.index
        if self._mode[index] is not ReportMode.PERIOD and not self._should_report(
            index, asyncio.get_running_loop().time()
        ):
            return
        self._dirty.add(index)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_pushed)

    def _flush_pushed(self) -> None:
        self._flush_scheduled = False
        if not self._dirty:
            return
        indices = sorted(self._dirty)
        self._dirty.clear()
        self._emit(indices, asyncio.get_running_loop().time())

    # ---- desired values ---------------------------------------------------------------
    def on_delta(self, doc: Any) -> None:
        """A ``twin/update/delta`` message for this device."""
        for name, desired in desired_from_delta(doc).items():
            self.want(name, desired)

    def on_get_result(self, doc: Any) -> None:
        """A ``twin/get/result`` message: apply every desired value that differs."""
        twins = desired_from_get(doc)
        if twins is None:
            return
        for name, (desired, actual_text) in twins.items():
            prop = self._by_name.get(name)
            if prop is None:
                continue
            if actual_text is not None and self._same(prop, desired.text, actual_text):
                continue
            self.want(name, desired)

    @staticmethod
    def _same(prop: PropertySpec[Any], a: str, b: str) -> bool:
        try:
            return values_equal(parse_text(a, prop.type), parse_text(b, prop.type), prop.type)
        except ValueError:
            return a == b

    def want(self, name: str, desired: DesiredValue) -> None:
        """Queue a desired value; it is written when the device is connected."""
        if self._done.get(name) == desired:
            return  # already applied or rejected
        self._pending[name] = desired
        self._pending_event.set()

    def pending_desired(self) -> dict[str, DesiredValue]:
        """Desired values received and not applied yet."""
        return dict(self._pending)

    async def _write_loop(self) -> None:
        while True:
            if not self._pending:
                self._pending_event.clear()
                await self._pending_event.wait()
            while self._pending:
                name = next(iter(self._pending))
                desired = self._pending.pop(name)
                await self._apply(name, desired)

    def validate_desired(self, prop: PropertySpec[Any], text: str) -> Value:
        """Parse and check a desired value against the model; :class:`WriteRejected` if invalid."""
        if not prop.writable:
            raise WriteRejected(f"property {prop.name} is ReadOnly")
        if Capability.WRITE not in self.driver.capabilities:
            raise WriteRejected(f"the {self.spec.protocol} driver cannot write")
        try:
            value = parse_text(text, prop.type)
            check_range(value, prop.minimum, prop.maximum)
        except ValueError as exc:
            raise WriteRejected(f"{prop.name}: {exc}") from None
        return value

    async def _write_and_read_back(self, prop: PropertySpec[Any], value: Value) -> Reading | None:
        async with self._io, asyncio.timeout(self.options.write_timeout):
            echoed = await self.driver.write(prop, value)
            if echoed is None:
                echoed = (await self.driver.read([prop])).get(prop.name)
        return echoed

    async def _apply(self, name: str, desired: DesiredValue) -> None:
        prop = self._by_name.get(name)
        if prop is None:
            log.warning("device=%s event=desired-unknown-property property=%s", self.id, name)
            return
        try:
            value = self.validate_desired(prop, desired.text)
            echoed = await self._write_and_read_back(prop, value)
        except WriteRejected as exc:
            self._rejected(prop, desired, exc)
            return
        except NotSupported as exc:
            self._rejected(prop, desired, WriteRejected(str(exc)))
            return
        except (DeviceUnavailable, TimeoutError, OSError) as exc:
            self.stats.writes_failed += 1
            reason = str(exc) or type(exc).__name__
            log.warning(
                "device=%s event=write-failed property=%s error=%r (retried after reconnect)",
                self.id,
                name,
                reason,
            )
            self._emit((), 0.0, {prop.index: Ack(desired.version, "failed", reason)})
            self._pending.setdefault(name, desired)
            if isinstance(exc, TimeoutError):
                raise DeviceTimeout(f"write of {name} timed out") from exc
            raise
        self.stats.writes += 1
        self._done[name] = desired
        if echoed is not None:
            self._absorb((prop,), {prop.name: echoed}, False)
        log.info(
            "device=%s event=desired-applied property=%s value=%s",
            self.id,
            name,
            format_text(value, prop.type),
        )
        self._emit(
            (prop.index,),
            asyncio.get_running_loop().time(),
            {prop.index: Ack(desired.version, "applied")},
        )

    def _rejected(self, prop: PropertySpec[Any], desired: DesiredValue, exc: WriteRejected) -> None:
        self.stats.writes_rejected += 1
        self._done[prop.name] = desired
        log.warning(
            "device=%s event=desired-rejected property=%s value=%r reason=%r",
            self.id,
            prop.name,
            desired.text,
            exc.reason,
        )
        ack = Ack(desired.version, "rejected", exc.reason)
        self._emit(
            (prop.index,) if self._latest[prop.index] is not None else (),
            asyncio.get_running_loop().time(),
            {prop.index: ack},
        )

    # ---- on demand (management API) -----------------------------------------------------
    async def read_now(self, name: str) -> Reading:
        """Read one property from the device now (``DeviceUnavailable`` when offline)."""
        prop = self._by_name[name]
        if not self._online.is_set():
            raise DeviceUnavailable(f"device {self.id} is {self.state.value}")
        async with self._io, asyncio.timeout(self.options.read_timeout):
            reading = (await self.driver.read([prop])).get(name)
        if reading is None:
            return Reading.bad("the driver returned no reading")
        if reading.ok and reading.value is not None:
            try:
                reading.value = self._coerce[prop.index](reading.value)
            except ValueError as exc:
                return Reading.bad(str(exc))
        return reading

    async def write_now(self, name: str, text: str) -> Reading | None:
        """Validate, write and read back one value now; raises :class:`WriteRejected`."""
        prop = self._by_name[name]
        value = self.validate_desired(prop, text)
        if not self._online.is_set():
            raise DeviceUnavailable(f"device {self.id} is {self.state.value}")
        echoed = await self._write_and_read_back(prop, value)
        self.stats.writes += 1
        if echoed is not None:
            self._absorb((prop,), {prop.name: echoed}, False)
            self._emit((prop.index,), asyncio.get_running_loop().time())
        return echoed
