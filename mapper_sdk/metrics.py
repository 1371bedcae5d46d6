"""Prometheus metrics of a running :class:`~mapper_sdk.runtime.Mapper`.

:class:`MapperCollector` is a ``prometheus_client`` collector that reads the
counters the runtime keeps anyway (per worker, the outbox, the sinks, each
driver's own counters) when Prometheus scrapes, so nothing is instrumented
per reading. Register it in a registry of its own::

    registry = CollectorRegistry()
    registry.register(MapperCollector(mapper))
    text = generate_latest(registry)

Metric names start with ``mapperkit_``; per-device metrics carry the labels
``device`` (``namespace/name``) and ``protocol``, sink metrics ``kind`` and
``target``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry

from .driver import DeviceState

if TYPE_CHECKING:
    from .runtime.mapper import Mapper
    from .runtime.worker import DeviceWorker

__all__ = ["MapperCollector", "mapper_registry"]

_DEVICE = ["device", "protocol"]
_SINK = ["kind", "target"]
_COUNTER_NAME = re.compile(r"[^a-zA-Z0-9_]")

# (metric suffix, WorkerStats attribute, help)
_WORKER_COUNTERS = (
    ("reads", "reads", "Property reads (good and bad)."),
    ("read_errors", "read_errors", "Property reads that failed (bad quality or no value)."),
    ("read_cycles", "cycles", "Collect cycles run (one driver read batch each)."),
    ("reports", "reports", "Twin reports sent (one message per device per report)."),
    ("reported_values", "reported_values", "Property values carried by twin reports."),
    ("pushes", "pushes", "Values pushed by the driver (subscriptions)."),
    ("writes", "writes", "Desired values written to the device."),
    ("writes_rejected", "writes_rejected", "Writes refused by the model or the device."),
    ("writes_failed", "writes_failed", "Writes that failed on I/O (retried after reconnect)."),
    ("connects", "connects", "Successful connects to the device."),
    ("connect_failures", "connect_failures", "Failed connect attempts."),
    ("disconnects", "disconnects", "Connections lost after being up (followed by a reconnect)."),
    ("missed_cycles", "missed_cycles", "Collect cycles skipped because a read overran."),
)

_SINK_COUNTERS = (
    ("queued", "Readings offered to the sink."),
    ("sent", "Readings the sink delivered."),
    ("dropped", "Readings the sink dropped (queue full, refused, undeliverable)."),
    ("errors", "Failed delivery attempts."),
)


def _bucket_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class MapperCollector:
    """Reads a mapper's counters at scrape time.

    Args:
        mapper: the running mapper.
    """

    def __init__(self, mapper: Mapper) -> None:
        self.mapper = mapper

    def describe(self) -> Iterable[Metric]:
        # Names are dynamic (driver counters); registration does not need them.
        return []

    def collect(self) -> Iterator[Metric]:
        from .runtime.worker import LATENCY_BUCKETS_S, LATENESS_BUCKETS_MS

        mapper = self.mapper
        workers: list[DeviceWorker] = list(mapper.workers.values())

        devices = GaugeMetricFamily(
            "mapperkit_devices", "Devices served, by protocol.", labels=["protocol"]
        )
        by_protocol: dict[str, int] = {}
        for w in workers:
            by_protocol[w.spec.protocol] = by_protocol.get(w.spec.protocol, 0) + 1
        for protocol, count in sorted(by_protocol.items()):
            devices.add_metric([protocol], count)
        yield devices

        families = {
            name: CounterMetricFamily(f"mapperkit_device_{name}", doc, labels=_DEVICE)
            for name, _, doc in _WORKER_COUNTERS
        }
        state = GaugeMetricFamily(
            "mapperkit_device_state",
            "1 for the device's current state (online, offline, unhealthy, unknown).",
            labels=[*_DEVICE, "state"],
        )
        driver_families: dict[str, CounterMetricFamily] = {}
        states = list(DeviceState)
        latency: dict[str, tuple[list[int], float]] = {}
        lateness: dict[str, list[int]] = {}
        for w in workers:
            labels = [w.id, w.spec.protocol]
            stats = w.stats
            for name, attr, _ in _WORKER_COUNTERS:
                families[name].add_metric(labels, getattr(stats, attr))
            for s in states:
                state.add_metric([*labels, s.value], 1 if w.state is s else 0)
            counts, total = latency.get(w.spec.protocol, ([0] * len(LATENCY_BUCKETS_S), 0.0))
            latency[w.spec.protocol] = (
                [a + b for a, b in zip(counts, stats.latency_hist, strict=True)],
                total + stats.read_seconds,
            )
            late = lateness.get(w.spec.protocol, [0] * len(LATENESS_BUCKETS_MS))
            lateness[w.spec.protocol] = [
                a + b for a, b in zip(late, stats.lateness_hist, strict=True)
            ]
            try:
                counters = w.driver.counters()
            except Exception:  # noqa: BLE001 - a broken driver must not break the scrape
                counters = {}
            for key, value in counters.items():
                metric = _COUNTER_NAME.sub("_", key)
                family = driver_families.get(metric)
                if family is None:
                    family = driver_families[metric] = CounterMetricFamily(
                        f"mapperkit_driver_{metric}",
                        f"The driver's own {key!r} counter (e.g. requests, coalesced reads).",
                        labels=_DEVICE,
                    )
                family.add_metric(labels, value)
        yield from families.values()
        yield state
        yield from driver_families.values()

        hist = HistogramMetricFamily(
            "mapperkit_read_latency_seconds",
            "Time of one driver read batch, by protocol.",
            labels=["protocol"],
        )
        for protocol, (counts, total) in sorted(latency.items()):
            hist.add_metric([protocol], _cumulative(counts, LATENCY_BUCKETS_S), total)
        yield hist
        late_hist = HistogramMetricFamily(
            "mapperkit_cycle_lateness_seconds",
            "How late collect cycles started against their schedule, by protocol.",
            labels=["protocol"],
        )
        for protocol, counts in sorted(lateness.items()):
            bounds = [b / 1000.0 for b in LATENESS_BUCKETS_MS]
            late_hist.add_metric([protocol], _cumulative(counts, bounds), None)
        yield late_hist

        yield from self._outbox()
        yield from self._sinks()

    def _outbox(self) -> Iterator[Metric]:
        mapper = self.mapper
        link = mapper.link
        if link is not None:
            yield GaugeMetricFamily(
                "mapperkit_mqtt_connected",
                "1 while the twin broker link is up.",
                value=int(link.connected),
            )
            yield CounterMetricFamily(
                "mapperkit_mqtt_connects", "Connects of the twin broker link.", value=link.connects
            )
        yield CounterMetricFamily(
            "mapperkit_mqtt_malformed_messages",
            "Twin messages that were not JSON.",
            value=mapper.malformed_messages,
        )
        outbox = mapper.outbox
        if outbox is None:
            return
        yield GaugeMetricFamily(
            "mapperkit_outbox_depth", "Messages waiting in the outbox.", value=outbox.depth
        )
        yield CounterMetricFamily(
            "mapperkit_outbox_sent", "Messages the broker acknowledged.", value=outbox.sent
        )
        yield CounterMetricFamily(
            "mapperkit_outbox_dropped",
            "Messages dropped at the outbox bound.",
            value=outbox.dropped,
        )
        yield CounterMetricFamily(
            "mapperkit_outbox_spilled",
            "Messages written to the outbox store while the broker was away.",
            value=outbox.spilled,
        )

    def _sinks(self) -> Iterator[Metric]:
        families = {
            name: CounterMetricFamily(f"mapperkit_sink_{name}", doc, labels=_SINK)
            for name, doc in _SINK_COUNTERS
        }
        depth = GaugeMetricFamily(
            "mapperkit_sink_queue_depth", "Readings waiting in the sink's queue.", labels=_SINK
        )
        seen: set[tuple[str, str]] = set()
        for (kind, key), sink in list(self.mapper.sinks.items()):
            target = str(getattr(sink, "target", None) or key)[:200]
            labels = (kind, target)
            if labels in seen:
                target = f"{target}#{len(seen)}"
                labels = (kind, target)
            seen.add(labels)
            stats = sink.stats
            for name, _ in _SINK_COUNTERS:
                families[name].add_metric(list(labels), getattr(stats, name))
            depth.add_metric(list(labels), stats.depth)
        yield from families.values()
        yield depth


def _cumulative(counts: list[int], bounds: Iterable[float]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    running = 0
    for count, bound in zip(counts, bounds, strict=True):
        running += count
        out.append((_bucket_label(bound), float(running)))
    return out


def mapper_registry(mapper: Mapper, *, process: bool = True) -> CollectorRegistry:
    """A registry with the mapper's metrics (and the process's CPU and memory when ``process``)."""
    registry = CollectorRegistry()
    registry.register(MapperCollector(mapper))
    if process:
        from prometheus_client import ProcessCollector

        ProcessCollector(registry=registry)
    return registry
