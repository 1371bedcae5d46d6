"""The twin service: KubeEdge's ``$hw/events/...`` twin protocol over MQTT, durable.

Two layers:

* :class:`TwinCore` is everything between a received message and the messages
  published for it, without MQTT: routing, validation, the version and
  de-duplication rules, state and membership, queries, and the batch of
  store writes. It is driven in batches: :meth:`TwinCore.prepare` handles a
  list of messages in arrival order and returns the :class:`Batch` of writes
  and replies; after the writes are committed, :meth:`TwinCore.finish` hands
  out the replies (or, when the commit failed, restores the devices and
  answers each accepted request with 500).
* :class:`TwinService` connects it to a broker: one :class:`~mapper_sdk.mqtt.MqttLink`,
  an inbox filled by the link's callback, and one writer task that takes what
  has arrived, prepares it, commits it in one transaction and publishes the
  replies in order. Requests that arrive while a commit runs form the next
  batch (group commit).

Ordering: every message is handled in arrival order, so the requests of one
device are applied strictly in the order they arrived, and each request's
``result``, ``document`` and ``delta`` are handed to the MQTT client in that
order, after the commit and before anything of a later batch. Gets and
queries go through the same pipeline, so they see every update whose result
was published before they arrived (read-your-writes), and never a value that
is not committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mapper_sdk import topics
from mapper_sdk.errors import ConfigError
from mapper_sdk.model import DeviceSpec, load_files
from mapper_sdk.mqtt import LinkDown, MqttLink, MqttSettings

from .document import (
    ONLINE_STATES,
    DeviceTwin,
    Options,
    StoredRowError,
    TwinError,
    apply_plan,
    check_read,
    decode_request,
    device_from_spec,
    device_row,
    dumps,
    error_message,
    event_id_of,
    now_ms,
    plan_state,
    plan_update,
    rfc3339,
    shown,
    sniff_event_id,
)
from .query import QueryError, parse_query
from .store import Durability, Store, StoreError, Writes

__all__ = [
    "Batch",
    "DedupIndex",
    "Incoming",
    "Outgoing",
    "Reload",
    "ServiceConfig",
    "TwinCore",
    "TwinService",
]

log = logging.getLogger(__name__)

MAX_BATCH: Final = 2000
"""Most messages handled in one transaction."""
PUBLISH_WINDOW: Final = 64
"""Replies handed to the MQTT client and not yet acknowledged.

aiomqtt scans its pending calls on every publish, so a long queue in the client
costs more per message than it gains; 64 keeps a loopback or LAN broker busy."""
MAX_QUEUED_REPLIES: Final = 5000
"""The writer takes no new batch while more replies than this wait to be published."""
IDLE_GAP: Final = 0.0005
"""Seconds since the last batch after which a lone request is committed inline."""
DEDUP_TTL_MS: Final = 10 * 60 * 1000
"""Accepted requests are remembered by ``event_id`` for this long (ms)."""
PRUNE_EVERY_MS: Final = 30 * 1000
SEEN_FLUSH_MS: Final = 10 * 1000
"""``last_seen`` refreshed by no-op reports is written at least this often (ms)."""
_SUFFIX_RESULT: Final = {
    topics.TWIN_UPDATE: topics.TWIN_UPDATE_RESULT,
    topics.TWIN_GET: topics.TWIN_GET_RESULT,
    topics.STATE_UPDATE: topics.STATE_UPDATE_RESULT,
}
_MEMBERSHIP_GET_SUFFIX: Final = "/membership/get"


@dataclass(frozen=True, slots=True)
class Incoming:
    """A received request: topic, raw payload and the MQTT 5 response fields."""

    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation: bytes | None = None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to publish (QoS 1, not retained)."""

    topic: str
    payload: bytes
    correlation: bytes | None = None


@dataclass(slots=True)
class Batch:
    """The outcome of :meth:`TwinCore.prepare`: writes to commit, then replies to publish."""

    messages: list[Incoming]
    writes: Writes = field(default_factory=Writes)
    out: list[Outgoing] = field(default_factory=list)
    snapshots: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    pending: dict[tuple[str, str], bytes] = field(default_factory=dict)
    remembered: list[tuple[int, int]] = field(default_factory=list)
    dirty: dict[str, DeviceTwin] = field(default_factory=dict)
    accepted: int = 0
    now: int = 0
    mono: float = 0.0
    """The batch's monotonic time (s), for the request rate limit."""
    limited: set[int] = field(default_factory=set)
    """Positions in ``messages`` refused with 429."""


@dataclass(slots=True)
class Reload:
    """A planned switch to a new device set (see :meth:`TwinCore.plan_reload`)."""

    devices: dict[str, DeviceTwin]
    specs: dict[str, DeviceSpec[Any, Any]]
    writes: Writes
    out: list[Outgoing]
    summary: str


class _EventIds:
    """Event ids for documents and deltas: a random prefix per process and a counter."""

    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex[:16]
        self._count = 0

    def __call__(self) -> str:
        self._count += 1
        return f"{self._prefix}-{self._count}"


_new_event_id: Final = _EventIds()


class DedupIndex:
    """Which ``(device, event_id)`` pairs are remembered, and their ids in the store.

    Keys are kept as hashes (a hit is confirmed against the stored row), in
    chunks per committed batch so that expiry walks them oldest first.
    """

    def __init__(self) -> None:
        self._ids: dict[int, int] = {}
        self._chunks: deque[tuple[int, list[int]]] = deque()
        self.next_id = 1

    def __len__(self) -> int:
        return len(self._ids)

    @staticmethod
    def key(device: str, event_id: str) -> int:
        return hash((device, event_id))

    def load(self, rows: Iterable[tuple[int, str, str, int]]) -> None:
        chunk: list[int] = []
        chunk_ts = 0
        for entry_id, device, event_id, ts in rows:
            h = self.key(device, event_id)
            self._ids[h] = entry_id
            chunk.append(h)
            chunk_ts = max(chunk_ts, ts)
            self.next_id = entry_id + 1
            if len(chunk) >= 1000:
                self._chunks.append((chunk_ts, chunk))
                chunk, chunk_ts = [], 0
        if chunk:
            self._chunks.append((chunk_ts, chunk))

    def find(self, device: str, event_id: str) -> int | None:
        return self._ids.get(self.key(device, event_id))

    def allocate(self) -> int:
        entry_id = self.next_id
        self.next_id += 1
        return entry_id

    def commit(self, entries: list[tuple[int, int]], ts: int) -> None:
        """Record ``(key, id)`` entries of a committed batch."""
        ids = self._ids
        for h, entry_id in entries:
            ids[h] = entry_id
        self._chunks.append((ts, [h for h, _ in entries]))

    def expire(self, cutoff: int) -> int | None:
        """Forget chunks older than ``cutoff``; the store deletes ids below the returned one."""
        if not self._chunks or self._chunks[0][0] >= cutoff:
            return None
        gone: list[list[int]] = []
        while self._chunks and self._chunks[0][0] < cutoff:
            gone.append(self._chunks.popleft()[1])
        boundary = self.next_id
        for _, hashes in self._chunks:
            ids = [self._ids[h] for h in hashes if h in self._ids]
            if ids:
                boundary = min(ids)
                break
        ids_map = self._ids
        for hashes in gone:
            for h in hashes:
                entry_id = ids_map.get(h)
                if entry_id is not None and entry_id < boundary:
                    del ids_map[h]
        return boundary


def _check_reply_topic(topic: str) -> bool:
    """A topic the twin may publish a reply on: no wildcard, no NUL, not under ``$``
    (the broker's own topics and KubeEdge's device topics, which a reply must not spoof)."""
    return (
        bool(topic)
        and not topic.startswith("$")
        and "+" not in topic
        and "#" not in topic
        and "\x00" not in topic
    )


class TwinCore:
    """The twin's rules and state, driven in batches (see the module docstring).

    Args:
        store: the open store; the core reads de-duplication entries from it.
        options: processing options.
        default_node: node of devices whose spec names none (membership).
    """

    def __init__(self, store: Store, options: Options, default_node: str | None = None) -> None:
        self.store = store
        self.options = options
        self.default_node = default_node
        self.devices: dict[str, DeviceTwin] = {}
        self.specs: dict[str, DeviceSpec[Any, Any]] = {}
        self.dedup = DedupIndex()
        self._last_prune = now_ms()
        self._seen_dirty: dict[str, DeviceTwin] = {}
        self._last_seen_flush = now_ms()
        self.rate_limited = 0
        """Requests refused with 429 since start."""

    # ---- loading ---------------------------------------------------------------
    def build(
        self, specs: Sequence[DeviceSpec[Any, Any]], stored: dict[str, tuple[int, str, str, str]]
    ) -> tuple[dict[str, DeviceTwin], Writes]:
        """Twins for ``specs`` merged with ``stored`` rows, and the rows to write back.

        Raises:
            ConfigError: a desired seed the model refuses, more devices than
                ``max_devices`` or a device with more properties than ``max_properties``.
            StoreError: a stored row that cannot be read.
        """
        opts = self.options
        if len(specs) > opts.max_devices:
            raise ConfigError(
                f"the device files define {len(specs)} devices, more than the limit of "
                f"{opts.max_devices} (--max-devices)"
            )
        now = now_ms()
        devices: dict[str, DeviceTwin] = {}
        writes = Writes()
        for spec in sorted(specs, key=lambda s: s.id):
            if len(spec.properties) > opts.max_properties:
                raise ConfigError(
                    f"device {spec.id} has {len(spec.properties)} properties, more than the "
                    f"limit of {opts.max_properties} (--max-properties)",
                    location=spec.source or None,
                )
            current = self.devices.get(spec.id)
            if current is not None and self.specs.get(spec.id) is spec:
                devices[spec.id] = current
                continue
            row = device_row(current) if current is not None else stored.get(spec.id)
            try:
                dev, changed, notes = device_from_spec(
                    spec, self.options, default_node=self.default_node, stored=row, now=now
                )
            except StoredRowError as exc:
                raise StoreError(
                    f"the twin store {self.store.path} is corrupt: {exc}; restore it from a "
                    "backup or move it away to start with an empty twin"
                ) from None
            except ValueError as exc:
                raise ConfigError(str(exc), location=spec.source or None) from None
            for note in notes:
                log.warning("event=twin-adjusted device=%s detail=%r", spec.id, note)
            if current is not None:
                dev.seen.update({k: v for k, v in current.seen.items() if k in dev.twins})
                # A reload does not refill the device's request budget.
                dev.tokens, dev.tokens_at = current.tokens, current.tokens_at
                dev.throttled = current.throttled
            if changed:
                writes.devices[spec.id] = device_row(dev)
            devices[spec.id] = dev
        return devices, writes

    def load(self, specs: Sequence[DeviceSpec[Any, Any]]) -> None:
        """Load the devices at start: stored state wins, new twins are seeded.

        Publishes nothing. Raises :class:`StoreError` or :class:`ConfigError`.
        """
        stored = self.store.load()
        devices, writes = self.build(specs, stored)
        if writes:
            self.store.write(writes)
        self.dedup = DedupIndex()
        self.dedup.load(self.store.load_dedup())
        self.devices = devices
        self.specs = {s.id: s for s in specs}

    def plan_reload(self, specs: Sequence[DeviceSpec[Any, Any]]) -> Reload:
        """Plan a switch to a new device set (SIGHUP): the writes and membership messages.

        The caller commits ``writes`` and then calls :meth:`switch`, and only then
        publishes ``out``. Removed devices stop being served; their stored rows
        are kept, so a device that comes back has its twin again.

        Raises:
            ConfigError: a desired seed the model refuses, or a limit the files break.
        """
        devices, writes = self.build(specs, self.store.load())
        old = self.devices
        added = [d for k, d in devices.items() if k not in old]
        removed = [d for k, d in old.items() if k not in devices]
        moved = [(old[k], d) for k, d in devices.items() if k in old and old[k].node != d.node]
        per_node: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
        for dev in added:
            if dev.node:
                per_node.setdefault(dev.node, ([], []))[0].append(dev.membership_entry())
        for dev in removed:
            if dev.node:
                per_node.setdefault(dev.node, ([], []))[1].append(dev.membership_entry())
        for before, after in moved:
            if before.node:
                per_node.setdefault(before.node, ([], []))[1].append(before.membership_entry())
            if after.node:
                per_node.setdefault(after.node, ([], []))[0].append(after.membership_entry())
        now = now_ms()
        out = [
            Outgoing(
                topics.membership_updated(node),
                dumps(
                    {
                        "event_id": _new_event_id(),
                        "timestamp": now,
                        "added_devices": add,
                        "removed_devices": rem,
                    }
                ),
            )
            for node, (add, rem) in sorted(per_node.items())
        ]
        summary = (
            f"devices={len(devices)} added={len(added)} removed={len(removed)} moved={len(moved)}"
        )
        return Reload(devices, {s.id: s for s in specs}, writes, out, summary)

    def switch(self, reload: Reload) -> None:
        """Serve the device set of a committed :meth:`plan_reload`."""
        self.devices = reload.devices
        self.specs = reload.specs
        log.info("event=reloaded %s", reload.summary)

    # ---- batches ---------------------------------------------------------------
    def prepare(
        self,
        messages: list[Incoming],
        failure: str | None = None,
        limited: set[int] | None = None,
    ) -> Batch:
        """Handle ``messages`` in order; returns the writes and replies of the batch.

        With ``failure`` set (a failed commit being answered), every request that
        would be accepted is answered with 500 instead and nothing changes;
        ``limited`` then names the positions of the messages the first pass
        refused with 429, which are refused again without taking tokens.
        """
        batch = Batch(messages, now=now_ms(), mono=time.monotonic())
        devices = self.devices
        rate = self.options.rate_limit
        for index, msg in enumerate(messages):
            topic = msg.topic
            parsed = topics.parse_device_topic(topic)
            try:
                if parsed is not None:
                    ns, name, suffix = parsed
                    if suffix not in _SUFFIX_RESULT:
                        continue
                    dev = devices.get(f"{ns}/{name}")
                    if (
                        dev is not None
                        and rate
                        and self._over_rate(batch, index, msg, dev, suffix, limited)
                    ):
                        continue
                    if suffix == topics.TWIN_UPDATE:
                        self._update(batch, msg, ns, name, dev, failure)
                    elif suffix == topics.TWIN_GET:
                        self._get(batch, msg, ns, name, dev)
                    else:
                        self._state(batch, msg, ns, name, dev, failure)
                elif topic == topics.QUERY:
                    self._query(batch, msg)
                elif topic.startswith(topics.NODE_PREFIX) and topic.endswith(
                    _MEMBERSHIP_GET_SUFFIX
                ):
                    node = topic[len(topics.NODE_PREFIX) : -len(_MEMBERSHIP_GET_SUFFIX)]
                    if node and "/" not in node:
                        self._membership(batch, msg, node)
            except StoreError as exc:
                # A de-duplication lookup failed: the request is answered, not applied.
                if parsed is not None and parsed[2] in _SUFFIX_RESULT:
                    self._reply_error(batch, msg, parsed[0], parsed[1], parsed[2], 500, str(exc))
            except Exception:
                # A defect must cost one request, not the service.
                log.exception("event=request-failed topic=%s", topic)
                if parsed is not None and parsed[2] in _SUFFIX_RESULT:
                    self._reply_error(
                        batch, msg, parsed[0], parsed[1], parsed[2], 500, "internal error"
                    )
        if failure is None:
            self._housekeeping(batch)
        return batch

    def flush_seen(self) -> Writes:
        """Rows of devices whose refreshed ``last_seen`` is not stored yet (for shutdown)."""
        writes = Writes()
        for dev_id, dev in self._seen_dirty.items():
            if self.devices.get(dev_id) is dev:
                writes.devices[dev_id] = device_row(dev)
        self._seen_dirty.clear()
        return writes

    def _housekeeping(self, batch: Batch) -> None:
        now = batch.now
        if self._seen_dirty and now - self._last_seen_flush >= SEEN_FLUSH_MS:
            self._last_seen_flush = now
            for dev_id, dev in self._seen_dirty.items():
                if self.devices.get(dev_id) is dev:
                    batch.dirty.setdefault(dev_id, dev)
            self._seen_dirty.clear()
        for dev_id, dev in batch.dirty.items():
            batch.writes.devices[dev_id] = device_row(dev)
            self._seen_dirty.pop(dev_id, None)
        if now - self._last_prune >= PRUNE_EVERY_MS:
            self._last_prune = now
            batch.writes.prune_below = self.dedup.expire(now - DEDUP_TTL_MS)

    def finish(self, batch: Batch, error: Exception | None = None) -> list[Outgoing]:
        """The replies of a committed batch; after a failed commit, the 500 replies."""
        if error is None:
            if batch.remembered:
                self.dedup.commit(batch.remembered, batch.now)
            return batch.out
        for dev_id, snap in batch.snapshots.items():
            dev = self.devices.get(dev_id)
            if dev is not None:
                dev.restore(snap)
        log.error("event=store-write-failed requests=%d error=%r", batch.accepted, str(error))
        return self.prepare(batch.messages, failure=str(error), limited=batch.limited).out

    # ---- limits ----------------------------------------------------------------
    def _over_rate(
        self,
        batch: Batch,
        index: int,
        msg: Incoming,
        dev: DeviceTwin,
        suffix: str,
        limited: set[int] | None,
    ) -> bool:
        """Take a token from ``dev``'s bucket; without one, answer 429 and return True.

        The bucket refills at ``rate_limit`` tokens a second up to ``rate_burst``;
        every request of a batch is stamped with the batch's time.
        """
        if limited is None:
            opts = self.options
            now = batch.mono
            tokens = dev.tokens + (now - dev.tokens_at) * opts.rate_limit
            if tokens > opts.rate_burst:
                tokens = opts.rate_burst
            dev.tokens_at = now
            if tokens >= 1.0:
                dev.tokens = tokens - 1.0
                if dev.throttled:
                    log.info("event=rate-limit-ended device=%s refused=%d", dev.id, dev.throttled)
                    dev.throttled = 0
                return False
            dev.tokens = tokens
            batch.limited.add(index)
            self.rate_limited += 1
            if not dev.throttled:
                log.warning(
                    "event=rate-limited device=%s limit=%g/s burst=%d",
                    dev.id,
                    opts.rate_limit,
                    opts.rate_burst,
                )
            dev.throttled += 1
        elif index not in limited:
            return False  # answered with 500 by the failure pass, as it would have been
        else:
            batch.limited.add(index)
        opts = self.options
        wait_ms = max(1, math.ceil((1.0 - dev.tokens) / opts.rate_limit * 1000))
        eid = sniff_event_id(msg.payload) if len(msg.payload) <= opts.max_payload else ""
        self._reply_error(
            batch,
            msg,
            dev.namespace,
            dev.name,
            suffix,
            429,
            f"device {dev.id} is over its limit of {opts.rate_limit:g} requests/s "
            f"(burst {opts.rate_burst}); nothing was applied, retry in {wait_ms} ms",
            eid,
        )
        return True

    # ---- helpers ---------------------------------------------------------------
    def _remembered(self, device: str, event_id: str) -> bytes | None:
        entry_id = self.dedup.find(device, event_id)
        if entry_id is None:
            return None
        row = self.store.remembered(entry_id)
        if row is None or row[0] != device or row[1] != event_id:
            return None  # expired meanwhile, or another key with the same hash
        return row[2]

    def _touch(self, batch: Batch, dev: DeviceTwin) -> None:
        if dev.id not in batch.snapshots:
            batch.snapshots[dev.id] = dev.snapshot()

    @staticmethod
    def _send(batch: Batch, msg: Incoming, topic: str, payload: bytes) -> None:
        batch.out.append(Outgoing(topic, payload))
        if msg.response_topic is not None and _check_reply_topic(msg.response_topic):
            batch.out.append(Outgoing(msg.response_topic, payload, msg.correlation))

    def _refuse(
        self,
        batch: Batch,
        msg: Incoming,
        topic: str,
        eid: str,
        now: int,
        dev: DeviceTwin,
        code: int,
        reason: str,
    ) -> None:
        self._send(batch, msg, topic, error_message(eid, now, code, reason, dev.version))

    def _refuse_failed(
        self,
        batch: Batch,
        msg: Incoming,
        topic: str,
        eid: str,
        now: int,
        dev: DeviceTwin,
        failure: str,
    ) -> None:
        """The 500 of a request whose batch could not be committed (nothing changed)."""
        self._refuse(
            batch, msg, topic, eid, now, dev, 500, f"store failure, nothing changed: {failure}"
        )

    def _reply_error(
        self,
        batch: Batch,
        msg: Incoming,
        ns: str,
        name: str,
        suffix: str,
        code: int,
        reason: str,
        event_id: str | None = None,
    ) -> None:
        dev = self.devices.get(f"{ns}/{name}")
        eid = event_id if event_id is not None else sniff_event_id(msg.payload)
        payload = error_message(
            eid, now_ms(), code, reason, dev.version if dev is not None else None
        )
        self._send(batch, msg, topics.device_topic(ns, name, _SUFFIX_RESULT[suffix]), payload)

    def _open(
        self, batch: Batch, msg: Incoming, ns: str, name: str, suffix: str, dev: DeviceTwin | None
    ) -> tuple[DeviceTwin, dict[str, Any]] | None:
        """Size, device and JSON checks in the order of the error precedence."""
        if len(msg.payload) > self.options.max_payload:
            self._reply_error(
                batch,
                msg,
                ns,
                name,
                suffix,
                413,
                f"payload of {len(msg.payload)} bytes is larger than the limit of "
                f"{self.options.max_payload} bytes",
            )
            return None
        if dev is None:
            self._reply_error(batch, msg, ns, name, suffix, 404, f"unknown device {ns}/{name}")
            return None
        try:
            body = decode_request(msg.payload)
        except TwinError as exc:
            self._reply_error(batch, msg, ns, name, suffix, exc.code, exc.reason, "")
            return None
        return dev, body

    # ---- handlers --------------------------------------------------------------
    def _update(
        self,
        batch: Batch,
        msg: Incoming,
        ns: str,
        name: str,
        dev_in: DeviceTwin | None,
        failure: str | None,
    ) -> None:
        opened = self._open(batch, msg, ns, name, topics.TWIN_UPDATE, dev_in)
        if opened is None:
            return
        dev, body = opened
        topic = topics.device_topic(ns, name, topics.TWIN_UPDATE_RESULT)
        eid = event_id_of(body)
        if eid:
            prev = batch.pending.get((dev.id, eid)) or self._remembered(dev.id, eid)
            if prev is not None:
                self._send(batch, msg, topic, prev)
                return
        now = now_ms()
        try:
            plan = plan_update(dev, body, self.options, now)
        except TwinError as exc:
            self._refuse(batch, msg, topic, eid, now, dev, exc.code, exc.reason)
            return
        if failure is not None:
            self._refuse_failed(batch, msg, topic, eid, now, dev, failure)
            return
        self._touch(batch, dev)
        applied = apply_plan(dev, plan, now)
        batch.accepted += 1
        result = dumps(
            {"event_id": eid, "timestamp": now, "version": dev.version, "twin": applied.result_twin}
        )
        if applied.changed:
            batch.dirty[dev.id] = dev
        elif plan.reported:
            self._seen_dirty[dev.id] = dev
        if eid:
            entry_id = self.dedup.allocate()
            batch.writes.dedup.append((entry_id, dev.id, eid, now, result))
            batch.pending[(dev.id, eid)] = result
            batch.remembered.append((DedupIndex.key(dev.id, eid), entry_id))
        self._send(batch, msg, topic, result)
        if applied.changed:
            doc = dumps(
                {
                    "event_id": _new_event_id(),
                    "timestamp": now,
                    "version": dev.version,
                    "twin": applied.document_twin,
                }
            )
            batch.out.append(
                Outgoing(topics.device_topic(ns, name, topics.TWIN_UPDATE_DOCUMENT), doc)
            )
            delta = dev.delta_message(_new_event_id(), now)
            if delta is not None:
                batch.out.append(
                    Outgoing(topics.device_topic(ns, name, topics.TWIN_UPDATE_DELTA), dumps(delta))
                )

    def _get(
        self, batch: Batch, msg: Incoming, ns: str, name: str, dev_in: DeviceTwin | None
    ) -> None:
        opened = self._open(batch, msg, ns, name, topics.TWIN_GET, dev_in)
        if opened is None:
            return
        dev, body = opened
        topic = topics.device_topic(ns, name, topics.TWIN_GET_RESULT)
        eid = event_id_of(body)
        now = now_ms()
        try:
            check_read(body, "a get request")
        except TwinError as exc:
            self._send(
                batch, msg, topic, error_message(eid, now, exc.code, exc.reason, dev.version)
            )
            return
        self._send(batch, msg, topic, dumps(dev.get_message(eid, now)))

    def _state(
        self,
        batch: Batch,
        msg: Incoming,
        ns: str,
        name: str,
        dev_in: DeviceTwin | None,
        failure: str | None,
    ) -> None:
        opened = self._open(batch, msg, ns, name, topics.STATE_UPDATE, dev_in)
        if opened is None:
            return
        dev, body = opened
        topic = topics.device_topic(ns, name, topics.STATE_UPDATE_RESULT)
        eid = event_id_of(body)
        now = now_ms()
        try:
            state = plan_state(body)
        except TwinError as exc:
            self._refuse(batch, msg, topic, eid, now, dev, exc.code, exc.reason)
            return
        if failure is not None:
            self._refuse_failed(batch, msg, topic, eid, now, dev, failure)
            return
        last_online = rfc3339(now) if state in ONLINE_STATES else dev.last_online
        if state != dev.state or last_online != dev.last_online:
            self._touch(batch, dev)
            dev.state = state
            dev.last_online = last_online
            batch.dirty[dev.id] = dev
            batch.accepted += 1
        payload = dumps(
            {
                "event_id": eid,
                "timestamp": now,
                "device": {"name": dev.name, "state": state, "lastOnlineTime": dev.last_online},
            }
        )
        self._send(batch, msg, topic, payload)

    def _membership(self, batch: Batch, msg: Incoming, node: str) -> None:
        topic = topics.membership_get_result(node)
        now = now_ms()
        if len(msg.payload) > self.options.max_payload:
            eid = sniff_event_id(msg.payload)
            reason = (
                f"payload of {len(msg.payload)} bytes is larger than the limit of "
                f"{self.options.max_payload} bytes"
            )
            self._send(batch, msg, topic, error_message(eid, now, 413, reason, None))
            return
        try:
            body = decode_request(msg.payload)
        except TwinError as exc:
            self._send(batch, msg, topic, error_message("", now, exc.code, exc.reason, None))
            return
        eid = event_id_of(body)
        try:
            check_read(body, "a membership request")
        except TwinError as exc:
            self._send(batch, msg, topic, error_message(eid, now, exc.code, exc.reason, None))
            return
        devices = [d.membership_entry() for d in self.devices.values() if d.node == node]
        payload = dumps({"event_id": eid, "timestamp": now, "devices": devices})
        self._send(batch, msg, topic, payload)

    def _query(self, batch: Batch, msg: Incoming) -> None:
        reply_topic = topics.QUERY_RESULT
        correlation = None
        if msg.response_topic is not None and _check_reply_topic(msg.response_topic):
            reply_topic, correlation = msg.response_topic, msg.correlation
        eid = ""
        if len(msg.payload) > self.options.max_payload:
            eid = sniff_event_id(msg.payload)
            payload = dumps(
                {
                    "event_id": eid,
                    "code": 413,
                    "reason": f"payload of {len(msg.payload)} bytes is larger than the limit of "
                    f"{self.options.max_payload} bytes",
                }
            )
        else:
            try:
                body = decode_request(msg.payload)
                eid = event_id_of(body)
                reply_to = body.get("reply_to")
                if (
                    correlation is None
                    and isinstance(reply_to, str)
                    and _check_reply_topic(reply_to)
                ):
                    reply_topic = reply_to
                payload = self._answer(body, eid)
            except TwinError as exc:
                payload = dumps({"event_id": eid, "code": exc.code, "reason": exc.reason})
        batch.out.append(Outgoing(reply_topic, payload, correlation))

    def _answer(self, body: dict[str, Any], eid: str) -> bytes:
        reply_to = body.get("reply_to")
        if isinstance(reply_to, str) and not _check_reply_topic(reply_to):
            return dumps(
                {
                    "event_id": eid,
                    "code": 400,
                    "reason": f"reply_to {shown(reply_to)} is not a topic the twin answers on "
                    "(no wildcards, not under $)",
                }
            )
        try:
            query = parse_query(body)
            return query.answer(self.devices.values(), eid, self.options.max_result_bytes)
        except QueryError as exc:
            answer: dict[str, Any] = {"event_id": eid, "code": exc.code, "reason": exc.reason}
            if exc.position is not None:
                answer["position"] = exc.position
            return dumps(answer)


# --------------------------------------------------------------------------- service
@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """How to run the twin service.

    Attributes:
        mqtt: the broker.
        db_path: the SQLite store.
        device_files: Device/DeviceModel YAML files (reloaded on SIGHUP).
        durability: ``process`` or ``power`` (see docs/twin.md).
        options: processing options.
        node: node of devices whose spec names no ``nodeName``.
        busy_timeout: seconds a write waits for a lock held by another process.
    """

    mqtt: MqttSettings
    db_path: str | Path
    device_files: tuple[str | Path, ...] = ()
    durability: Durability = "process"
    options: Options = field(default_factory=Options)
    node: str | None = field(default_factory=socket.gethostname)
    busy_timeout: float = 5.0


class _Publisher:
    """Publishes replies in the order given, at most ``window`` unacknowledged at a time.

    ``window`` worker tasks take messages from one queue. A worker takes a
    message and hands it to the MQTT client in the same step, so messages
    reach the client in queue order whichever worker takes them.
    """

    def __init__(self, link: MqttLink, window: int = PUBLISH_WINDOW) -> None:
        self._link = link
        self._queue: asyncio.Queue[Outgoing] = asyncio.Queue()
        self._workers = [
            asyncio.create_task(self._work(), name=f"twin.publish[{i}]") for i in range(window)
        ]
        self._busy = 0
        self._changed = asyncio.Event()
        self.dropped = 0

    def __len__(self) -> int:
        return self._queue.qsize() + self._busy

    def send(self, out: Iterable[Outgoing]) -> None:
        put = self._queue.put_nowait
        for item in out:
            put(item)

    async def _work(self) -> None:
        queue, link = self._queue, self._link
        while True:
            item = await queue.get()
            self._busy += 1
            props = None
            if item.correlation is not None:
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.CorrelationData = item.correlation
            try:
                await link.publish(item.topic, item.payload, qos=1, properties=props)
            except LinkDown as exc:
                if self.dropped == 0:
                    log.warning("event=publish-failed topic=%s reason=%r", item.topic, str(exc))
                self.dropped += 1
            else:
                if self.dropped:
                    log.info("event=publishing-again lost=%d", self.dropped)
                    self.dropped = 0
            finally:
                self._busy -= 1
                self._changed.set()

    async def wait_below(self, limit: int) -> None:
        """Wait until at most ``limit`` messages are queued or in flight."""
        while len(self) > limit:
            self._changed.clear()
            await self._changed.wait()

    async def close(self, grace: float) -> None:
        """Give queued messages ``grace`` seconds to leave, then stop the workers."""
        try:
            async with asyncio.timeout(grace):
                await self.wait_below(0)
        except TimeoutError:
            pass
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)


class TwinService:
    """The running twin service: a broker link, the core, the store.

    Use as an async context manager; entering loads the store and the devices
    (raising :class:`~twin.store.StoreError` or
    :class:`~mapper_sdk.errors.ConfigError`) and connects. Nothing is
    published at start.

    Args:
        config: how to run.
        devices: the devices to serve; loaded from ``config.device_files`` when
            not given.
    """

    def __init__(
        self, config: ServiceConfig, devices: Sequence[DeviceSpec[Any, Any]] | None = None
    ) -> None:
        self.config = config
        self._initial = devices
        self._inbox: deque[Incoming | None] = deque()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._closing = False
        self._store: Store | None = None
        self._core: TwinCore | None = None
        self._link: MqttLink | None = None
        self._publisher: _Publisher | None = None
        self._writer: asyncio.Task[None] | None = None
        self._entered = False
        self.load_seconds = 0.0
        self.batches = 0
        self._last_batch_end = 0.0

    @property
    def core(self) -> TwinCore:
        if self._core is None:
            raise RuntimeError("the twin service is not running")
        return self._core

    @property
    def link(self) -> MqttLink:
        if self._link is None:
            raise RuntimeError("the twin service is not running")
        return self._link

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("TwinService is not reentrant")
        self._entered = True
        try:
            await self._start()
        except BaseException:
            await self._shutdown()
            self._entered = False
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._shutdown()
        self._entered = False

    async def _start(self) -> None:
        cfg = self.config
        started = time.perf_counter()
        self._inbox.clear()
        self._closing = False
        self._stop.clear()
        specs = self._initial
        if specs is None:
            specs = (await asyncio.to_thread(load_files, cfg.device_files)).devices
        self._store = Store.open(
            cfg.db_path, durability=cfg.durability, busy_timeout=cfg.busy_timeout
        )
        core = TwinCore(self._store, cfg.options, cfg.node)
        core.load(specs)
        self._core = core
        self.load_seconds = time.perf_counter() - started
        log.info(
            "event=loaded devices=%d store=%s durability=%s seconds=%.3f",
            len(core.devices),
            cfg.db_path,
            cfg.durability,
            self.load_seconds,
        )
        self._link = MqttLink(
            cfg.mqtt,
            subscriptions=[
                topics.device_filter(topics.TWIN_UPDATE),
                topics.device_filter(topics.TWIN_GET),
                topics.device_filter(topics.STATE_UPDATE),
                topics.membership_get("+"),
                topics.QUERY,
            ],
            on_message=self._on_message,
            name="twin",
        )
        self._publisher = _Publisher(self._link)
        await self._link.__aenter__()
        self._writer = asyncio.create_task(self._write_loop(), name="twin.writer")

    async def _shutdown(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            # Let the writer finish the batch in hand (commit and hand out its
            # replies), then stop it.
            self._closing = True
            self._wake.set()
            await asyncio.wait({writer}, timeout=5.0)
            if writer.done():
                if not writer.cancelled() and writer.exception() is not None:
                    log.error("event=writer-failed error=%r", writer.exception())
            else:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
        if self._publisher is not None:
            await self._publisher.close(grace=2.0)
            self._publisher = None
        if self._link is not None:
            await self._link.__aexit__(None, None, None)
            self._link = None
        if self._store is not None:
            if self._core is not None:
                writes = self._core.flush_seen()
                if writes:
                    try:
                        self._store.write(writes)
                    except StoreError as exc:
                        log.warning("event=last-seen-not-saved error=%r", str(exc))
            self._store.close()
            self._store = None

    async def wait_ready(self) -> None:
        """Wait until the service is subscribed and serving (bound it with a timeout)."""
        await self.link.wait_up()

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to return."""
        self._stop.set()

    def request_reload(self) -> None:
        """Reload the device files (SIGHUP): applied in order with the requests."""
        self._inbox.append(None)
        self._wake.set()

    async def serve_forever(self) -> None:
        """Serve until :meth:`stop` is called (or the task is cancelled).

        Raises:
            Exception: whatever stopped the writer (the service cannot go on).
        """
        writer = self._writer
        if writer is None:
            raise RuntimeError("the twin service is not running")
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({stop, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if writer.done() and not writer.cancelled() and writer.exception() is not None:
            raise RuntimeError("the twin writer stopped") from writer.exception()

    # ---- receiving -------------------------------------------------------------
    def _on_message(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        if isinstance(payload, bytes):
            data = payload
        elif isinstance(payload, bytearray):
            data = bytes(payload)
        elif payload is None:
            data = b""
        else:
            data = str(payload).encode("utf-8")
        props = message.properties
        response_topic = correlation = None
        if props is not None:
            response_topic = getattr(props, "ResponseTopic", None)
            correlation = getattr(props, "CorrelationData", None)
        self._inbox.append(Incoming(message.topic.value, data, response_topic, correlation))
        self._wake.set()

    # ---- the writer --------------------------------------------------------------
    async def _write_loop(self) -> None:
        inbox = self._inbox
        publisher = self._publisher
        assert publisher is not None
        while not self._closing:
            if not inbox:
                self._wake.clear()
                try:
                    async with asyncio.timeout(SEEN_FLUSH_MS / 1000):
                        await self._wake.wait()
                except TimeoutError:
                    # Idle: still persist refreshed last_seen and expire old entries.
                    await self._run_batch([])
                continue
            if inbox[0] is None:
                inbox.popleft()
                await self._reload()
                continue
            messages: list[Incoming] = []
            while inbox and len(messages) < MAX_BATCH:
                item = inbox[0]
                if item is None:
                    break
                messages.append(item)
                inbox.popleft()
            await self._run_batch(messages)
            await publisher.wait_below(MAX_QUEUED_REPLIES)

    async def _run_batch(self, messages: list[Incoming]) -> None:
        core, store, publisher = self.core, self._store, self._publisher
        assert store is not None
        assert publisher is not None
        started = time.monotonic()
        # Busy (batches back to back): commit on the store's thread, so what
        # arrives meanwhile forms the next batch. Idle: commit inline, saving
        # the thread hop on the latency of a lone request.
        inline = len(messages) <= 2 and started - self._last_batch_end >= IDLE_GAP
        batch = core.prepare(messages)
        error: Exception | None = None
        if batch.writes:
            try:
                await store.write_async(batch.writes, inline=inline)
            except StoreError as exc:
                error = exc
        publisher.send(core.finish(batch, error))
        self.batches += 1
        self._last_batch_end = time.monotonic()

    async def _reload(self) -> None:
        store, publisher = self._store, self._publisher
        assert store is not None
        assert publisher is not None
        try:
            inventory = await asyncio.to_thread(load_files, self.config.device_files)
            reload = self.core.plan_reload(inventory.devices)
            if reload.writes:
                await store.write_async(reload.writes)
        except (ConfigError, StoreError) as exc:
            log.error("event=reload-failed error=%r (still serving the previous devices)", str(exc))
            return
        self.core.switch(reload)
        publisher.send(reload.out)
