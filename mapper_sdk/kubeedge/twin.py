"""Twin and state reports to edgecore over DMI, within edgecore's rate limit.

Edgecore's DMI server shares one token bucket (1 request/s, burst 100) across
``MapperRegister``, ``ReportDeviceStatus`` and ``ReportDeviceStates`` of every
mapper on the node; a call over the limit fails with "too many request". So
:class:`DmiTwinReporter` never sends one call per property or per reading:

* a device's twins go in **one** ``ReportDeviceStatus`` carrying every property
  read so far (its reported value and the observed desired value);
* reports wait in a queue keyed by device, so while a device waits for the
  budget, newer readings and states replace older ones: under pressure only
  the newest state of each device is sent, and each device keeps its place;
* calls leave within a local :class:`TokenBucket` (configurable, default the
  edgecore limit); a "too many request" answer empties it, since other mappers
  share edgecore's bucket;
* state changes and desired-write echoes go first, then twin reports, and
  periodic repeats of an unchanged state last;
* states are reported only for devices whose state reporting is on, and only
  the states edgecore accepts (``online``, ``offline``, ``ok``, ``unknown``,
  ``unhealthy``).

:meth:`DmiTwinReporter.report` and :meth:`~DmiTwinReporter.report_state` run on
the collect path: they only record and queue. The sending task is owned by
the reporter's async context manager.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Protocol, Self

from ..codec import format_text
from ..driver import DeviceState
from ..errors import MapperError
from ..model import DeviceSpec
from ..runtime.twin import Ack, Item
from .v1beta1 import api_pb2

__all__ = [
    "ACCEPTED_STATES",
    "DmiSender",
    "DmiTwinReporter",
    "EdgecoreRejected",
    "EdgecoreUnavailable",
    "ReportBudget",
    "ReporterStats",
    "TokenBucket",
    "checkpoint",
]

log = logging.getLogger("mapper_sdk.kubeedge")

ACCEPTED_STATES = frozenset({"online", "offline", "ok", "unknown", "unhealthy"})
"""The device states edgecore's DMI server accepts."""


def checkpoint() -> None:
    """Raise ``CancelledError`` if the current task is being cancelled.

    A library may turn a cancellation into an ordinary error (a gRPC call
    cancelled mid-flight ends as ``CANCELLED``); loops call this so that a task
    asked to stop always stops.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class EdgecoreUnavailable(MapperError):
    """Edgecore's DMI socket cannot be reached (not started, restarting, gone)."""


class EdgecoreRejected(MapperError):
    """Edgecore answered a call with an error.

    Attributes:
        rate_limited: the answer was edgecore's "too many request".
    """

    def __init__(self, message: str, *, rate_limited: bool = False) -> None:
        self.rate_limited = rate_limited
        super().__init__(message)


class DmiSender(Protocol):
    """Where reports go: edgecore's ``DeviceManagerService`` (:class:`~.client.DmiClient`).

    Both calls raise :class:`EdgecoreUnavailable` or :class:`EdgecoreRejected`.
    """

    async def report_status(self, request: api_pb2.ReportDeviceStatusRequest) -> None: ...

    async def report_states(self, request: api_pb2.ReportDeviceStatesRequest) -> None: ...


@dataclass(frozen=True, slots=True)
class ReportBudget:
    """How many DMI calls a mapper may make.

    Attributes:
        rate: calls per second, sustained.
        burst: calls that may go at once after a quiet spell.
    """

    rate: float = 1.0
    burst: int = 100

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"the DMI call rate must be positive, got {self.rate}")
        if self.burst < 1:
            raise ValueError(f"the DMI burst must be at least 1, got {self.burst}")


class TokenBucket:
    """A token bucket: ``rate`` tokens a second, at most ``burst`` held; starts full."""

    def __init__(self, budget: ReportBudget, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = budget.rate
        self.burst = float(budget.burst)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def try_take(self) -> bool:
        """Take one token if there is one."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_time(self) -> float:
        """Seconds until a token is there (0 when one is)."""
        self._refill()
        return max(0.0, (1.0 - self._tokens) / self.rate)

    async def take(self) -> None:
        """Wait for a token and take it."""
        while True:
            if self.try_take():
                return
            await asyncio.sleep(self.wait_time())

    def drain(self) -> None:
        """Empty the bucket (the server said we are over its limit)."""
        self._refill()
        self._tokens = 0.0


@dataclass(slots=True)
class ReporterStats:
    """What the reporter did (exported as metrics)."""

    status_calls: int = 0
    state_calls: int = 0
    coalesced: int = 0
    """Reports merged into one already waiting for the budget (newest wins)."""
    rate_limited: int = 0
    failures: int = 0
    dropped_states: int = 0
    """States not reported because edgecore does not accept them."""


URGENT, TWINS, REPEAT = 0, 1, 2
"""Priorities: state changes and desired-write echoes; twin reports; unchanged states."""

_Kind = Literal["status", "state"]
_Key = tuple[_Kind, str]


@dataclass(slots=True)
class _TwinEntry:
    spec: DeviceSpec[Any, Any]
    values: dict[int, tuple[str, int]] = field(default_factory=dict)
    """Per property index: the reported text and the time it was read (ms)."""


class DmiTwinReporter:
    """A :class:`~mapper_sdk.runtime.twin.TwinReporter` that reports to edgecore over DMI.

    Args:
        sender: the DMI client.
        bucket: the call budget, shared with the registration (``MapperRegister``
            counts against edgecore's limit too).
        available: set while edgecore is reachable; sending pauses while it is
            clear. Default: always available.
        on_unavailable: called when a call finds edgecore gone (the registration
            loop then re-registers).

    Use as an async context manager: it owns the task that sends. On exit, the
    reports still queued (the devices' last states) are sent for up to
    ``flush_timeout`` seconds while the budget allows.
    """

    def __init__(
        self,
        sender: DmiSender,
        bucket: TokenBucket | None = None,
        *,
        available: asyncio.Event | None = None,
        on_unavailable: Callable[[], None] | None = None,
        flush_timeout: float = 2.0,
    ) -> None:
        self.sender = sender
        self.bucket = bucket or TokenBucket(ReportBudget())
        if available is None:
            available = asyncio.Event()
            available.set()
        self.available = available
        self.on_unavailable = on_unavailable
        self.flush_timeout = flush_timeout
        self.stats = ReporterStats()
        self._twins: dict[str, _TwinEntry] = {}
        self._states: dict[str, tuple[DeviceSpec[Any, Any], str]] = {}
        self._last_state: dict[str, str] = {}
        # Waiting reports by priority: URGENT, TWINS, REPEAT (see _enqueue).
        self._queues: tuple[OrderedDict[_Key, None], ...] = tuple(OrderedDict() for _ in range(3))
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tg: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing: str | None = None

    # ---- the collect path --------------------------------------------------------------
    def report(
        self,
        device: DeviceSpec[Any, Any],
        items: Sequence[Item],
        acks: Mapping[int, Ack] | None = None,
    ) -> None:
        """Record a device's reported values; one ``ReportDeviceStatus`` carries them."""
        if not items:
            return  # an ack alone has no DMI counterpart
        entry = self._twins.get(device.id)
        if entry is None:
            entry = self._twins[device.id] = _TwinEntry(device)
        elif entry.spec is not device:
            # A changed definition: values of properties that moved or went are stale.
            if [p.name for p in entry.spec.properties] != [p.name for p in device.properties]:
                entry.values.clear()
            entry.spec = device
        values = entry.values
        for prop, value, reading in items:
            values[prop.index] = (
                format_text(value, prop.type),
                reading.source_timestamp or reading.timestamp,
            )
        self._enqueue(("status", device.id), URGENT if acks else TWINS)

    def report_state(self, device: DeviceSpec[Any, Any], state: DeviceState) -> None:
        """Record a device's state; only the newest waiting one is sent."""
        if not device.state_report.report_to_cloud:
            return
        text = state.value
        if text not in ACCEPTED_STATES:
            self.stats.dropped_states += 1
            return
        self._states[device.id] = (device, text)
        changed = self._last_state.get(device.id) != text
        self._enqueue(("state", device.id), URGENT if changed else REPEAT)

    def forget(self, device_id: str) -> None:
        """Drop everything waiting for a device that is no longer served."""
        self._twins.pop(device_id, None)
        self._states.pop(device_id, None)
        self._last_state.pop(device_id, None)
        for key in (("status", device_id), ("state", device_id)):
            for queue in self._queues:
                queue.pop(key, None)

    def _enqueue(self, key: _Key, tier: int) -> None:
        """Queue ``key`` once; a waiting key keeps its place, or moves up a tier."""
        for current, queue in enumerate(self._queues):
            if key in queue:
                self.stats.coalesced += 1
                if tier < current:
                    del queue[key]
                    self._queues[tier][key] = None
                break
        else:
            self._queues[tier][key] = None
        self._idle.clear()
        self._wake.set()

    @property
    def pending(self) -> int:
        """Reports waiting to be sent."""
        return sum(len(queue) for queue in self._queues)

    # ---- lifecycle ---------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        if self._tg is not None:
            raise RuntimeError("DmiTwinReporter is not reentrant")
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self._task = self._tg.create_task(self._run(), name="kubeedge.reporter")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg, self._tg = self._tg, None
        if tg is None:
            return
        task = self._task
        if task is not None and not task.done() and self.pending and self.available.is_set():
            try:
                async with asyncio.timeout(self.flush_timeout):
                    await self._idle.wait()
            except TimeoutError:
                log.warning("event=dmi-flush-incomplete pending=%d", self.pending)
        if task is not None:
            task.cancel()
        await tg.__aexit__(exc_type, exc, tb)

    async def drain(self) -> None:
        """Wait until nothing is waiting to be sent."""
        await self._idle.wait()

    # ---- sending -----------------------------------------------------------------------
    def _next(self) -> _Key | None:
        for queue in self._queues:
            if queue:
                key, _ = queue.popitem(last=False)
                return key
        return None

    async def _run(self) -> None:
        while True:
            checkpoint()
            if not self.pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            await self.available.wait()
            await self.bucket.take()
            key = self._next()
            if key is None:
                continue
            taken = self._take(key)
            if taken is None:
                continue
            request, state = taken
            try:
                await self._send(key, request)
            except EdgecoreUnavailable as exc:
                self.stats.failures += 1
                self._restore(key, state)
                self._failed(str(exc))
                # Pause until the registration loop finds edgecore again.
                self.available.clear()
                if self.on_unavailable is not None:
                    self.on_unavailable()
                continue
            except EdgecoreRejected as exc:
                self.stats.failures += 1
                if exc.rate_limited:
                    self.stats.rate_limited += 1
                    self.bucket.drain()
                    self._restore(key, state)
                    self._failed("edgecore's rate limit was reached")
                else:
                    self._failed(str(exc))  # a refused report is not retried
                continue
            if self._failing is not None:
                log.info("event=dmi-reports-recovered")
                self._failing = None

    def _failed(self, reason: str) -> None:
        if self._failing != reason:
            log.warning("event=dmi-report-failed error=%r", reason)
        self._failing = reason

    def _take(self, key: _Key) -> tuple[Any, tuple[DeviceSpec[Any, Any], str] | None] | None:
        """The request for ``key``, built from the newest data, and the state it took."""
        kind, device_id = key
        if kind == "state":
            pending = self._states.pop(device_id, None)
            if pending is None:
                return None
            spec, state = pending
            request = api_pb2.ReportDeviceStatesRequest(
                deviceName=spec.name, deviceNamespace=spec.namespace, state=state
            )
            return request, pending
        entry = self._twins.get(device_id)
        if entry is None or not entry.values:
            return None
        return self._status_request(entry), None

    @staticmethod
    def _status_request(entry: _TwinEntry) -> api_pb2.ReportDeviceStatusRequest:
        spec = entry.spec
        props = spec.properties
        twins = []
        for index in sorted(entry.values):
            if index >= len(props):
                continue
            prop = props[index]
            text, stamp = entry.values[index]
            ptype = prop.type.value
            twins.append(
                api_pb2.Twin(
                    propertyName=prop.name,
                    reported=api_pb2.TwinProperty(
                        value=text, metadata={"type": ptype, "timestamp": str(stamp)}
                    ),
                    # Edgecore reads observedDesired unconditionally: always send it.
                    observedDesired=api_pb2.TwinProperty(
                        value=prop.desired or "", metadata={"type": ptype}
                    ),
                )
            )
        return api_pb2.ReportDeviceStatusRequest(
            deviceName=spec.name,
            deviceNamespace=spec.namespace,
            reportedDevice=api_pb2.DeviceStatus(
                twins=twins,
                reportToCloud=spec.state_report.report_to_cloud,
                reportCycle=spec.state_report.report_cycle_ms,
            ),
        )

    async def _send(self, key: _Key, request: Any) -> None:
        if key[0] == "state":
            await self.sender.report_states(request)
            self.stats.state_calls += 1
            self._last_state[key[1]] = request.state
        else:
            await self.sender.report_status(request)
            self.stats.status_calls += 1

    def _restore(self, key: _Key, state: tuple[DeviceSpec[Any, Any], str] | None) -> None:
        """Queue ``key`` again after a failed call, keeping any newer data."""
        kind, device_id = key
        if kind == "state":
            if state is None:
                return
            self._states.setdefault(device_id, state)
        elif device_id not in self._twins:
            return  # forgotten meanwhile
        if any(key in queue for queue in self._queues):
            return
        urgent = self._queues[URGENT]
        urgent[key] = None
        urgent.move_to_end(key, last=False)
