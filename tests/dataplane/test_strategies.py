"""Report strategies with controlled value sequences, through a real Mapper and the mem driver.

The twin is a recorder (no broker needed) and a sink of the test's own is
registered through ``dbMethod`` as a plugin would be. Timing is only ever
asserted as a lower bound (report gaps never shorter than the period).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mapper_sdk.driver import DeviceState, Resources
from mapper_sdk.model import DeviceSpec, Value
from mapper_sdk.runtime import Mapper, MapperOptions, WorkerOptions
from mapper_sdk.runtime.reporters import Item, Reporter, ReporterContext

from ..sdk.memdriver import MemBus, MemDevice
from .conftest import DRIVERS, device, until


@dataclass
class Report:
    at: float
    reads: int
    values: dict[str, Value]


@dataclass
class RecordingTwin:
    """A TwinReporter that records every report with the time and the read count."""

    dev: MemDevice
    reports: list[Report] = field(default_factory=list)

    def report(
        self,
        device: DeviceSpec[Any, Any],
        items: Sequence[Item],
        acks: Mapping[int, Any] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.reports.append(
            Report(loop.time(), len(self.dev.reads), {p.name: v for p, v, _ in items})
        )

    def report_state(self, device: DeviceSpec[Any, Any], state: DeviceState) -> None:
        pass

    def series(self, name: str) -> list[Value]:
        return [r.values[name] for r in self.reports if name in r.values]


class CaptureReporter(Reporter):
    """A sink of the test's own, registered as the ``capture`` kind."""

    kind = "capture"
    offers: list[list[tuple[str, Value]]]

    def __init__(self, config: Mapping[str, Any], context: ReporterContext) -> None:
        super().__init__(config, context)
        self.offers = []

    def offer(self, device: DeviceSpec[Any, Any], items: Sequence[Item]) -> None:
        self.offers.append([(p.name, v) for p, v, _ in items])
        self.stats.queued += len(items)

    async def run(self) -> None:
        await asyncio.Event().wait()


@contextlib.asynccontextmanager
async def serve(
    spec: DeviceSpec[Any, Any], dev: MemDevice, bus: MemBus
) -> AsyncIterator[tuple[Mapper, RecordingTwin]]:
    twin = RecordingTwin(dev)
    resources = Resources()
    resources.extras["mem.bus"] = bus
    options = MapperOptions(mqtt=None, worker=WorkerOptions(backoff_initial=0.05, backoff_max=0.2))
    mapper = Mapper(
        [spec],
        DRIVERS,
        options,
        resources=resources,
        twin=twin,
        reporters={"capture": CaptureReporter},
    )
    async with mapper:
        yield mapper, twin


async def step(dev: MemDevice, values: Mapping[str, Value]) -> int:
    """Set device values and wait until the worker has read them; return the read count before."""
    dev.values.update(values)
    before = len(dev.reads)
    await until(lambda: len(dev.reads) >= before + 2)
    return before


STRATEGIES = """
devices:
  - name: strat
    protocol: mem
    connection: {device: strat}
    collectCycle: 20
    reportCycle: 60000
    reportStrategy: {mode: on-change}
    properties:
      - {name: level, type: float, visitor: {address: l},
         reportStrategy: {deadband: 0.5}, pushMethod: {dbMethod: {capture: {}}}}
      - {name: pct, type: float, visitor: {address: p},
         reportStrategy: {deadbandPercent: 10}, pushMethod: {dbMethod: {capture: {}}}}
      - {name: word, type: string, visitor: {address: w}, pushMethod: {dbMethod: {capture: {}}}}
      - {name: tick, type: int, visitor: {address: k}, reportStrategy: {mode: always}}
"""


async def test_deadbands_on_change_and_always() -> None:
    bus = MemBus()
    dev = bus.device("strat")
    level = [10.0, 10.3, 10.5, 10.6, 10.2, 10.0]
    pct = [100.0, 109.0, 110.0, 111.0, 100.0, 99.8]
    word = ["a", "a", "a", "b", "b", "a"]
    dev.values.update({"l": level[0], "p": pct[0], "w": word[0], "k": 1})
    spec = device(STRATEGIES)
    async with serve(spec, dev, bus) as (mapper, twin):
        await until(lambda: twin.reports)
        for values in zip(level[1:], pct[1:], word[1:], strict=True):
            await step(dev, dict(zip("lpw", values, strict=True)))
        reads = len(dev.reads)
        sink = next(iter(mapper.sinks.values()))
    # Absolute deadband 0.5: a change of exactly 0.5 stays quiet; compared with the last
    # value reported, not the last read.
    assert twin.series("level") == [10.0, 10.6, 10.0]
    # 10 %: 110 is exactly 10 % of 100 (quiet); 100 is within 10 % of 111; 99.8 is not.
    assert twin.series("pct") == [100.0, 111.0, 99.8]
    # The device default (on-change) applies to a property without its own strategy.
    assert twin.series("word") == ["a", "b", "a"]
    # 'always' reports every value collected.
    assert set(twin.series("tick")) == {1}
    assert len(twin.series("tick")) >= reads - 1
    # Everything that changed in one cycle goes out in one twin report and one sink offer.
    changed = [r.values.keys() - {"tick"} for r in twin.reports if r.values.keys() - {"tick"}]
    assert changed == [{"level", "pct", "word"}, {"level", "pct", "word"}, {"level", "pct", "word"}]
    assert isinstance(sink, CaptureReporter)
    assert [sorted(name for name, _ in offer) for offer in sink.offers] == [
        ["level", "pct", "word"]
    ] * 3
    assert sink.offers[1] == [("level", 10.6), ("pct", 111.0), ("word", "b")]


HEARTBEAT = """
devices:
  - name: beat
    protocol: mem
    connection: {device: beat}
    collectCycle: 20
    properties:
      - {name: v, type: int, visitor: {address: v},
         reportStrategy: {mode: on-change-or-heartbeat, heartbeat: 150}}
"""


async def test_heartbeat_repeats_an_unchanged_value_and_change_reports_at_once() -> None:
    bus = MemBus()
    dev = bus.device("beat")
    dev.values["v"] = 5
    spec = device(HEARTBEAT)
    async with serve(spec, dev, bus) as (_, twin):
        await until(lambda: len(twin.reports) >= 3)
        changed_at = await step(dev, {"v": 6})
        await until(lambda: len(twin.series("v")) >= 6)
    series = twin.series("v")
    first_six = series.index(6)
    assert series[:first_six] == [5] * first_six
    assert set(series[first_six:]) == {6}
    # The change is reported by the first read that saw it, not at the next heartbeat.
    change = next(r for r in twin.reports if r.values.get("v") == 6)
    assert change.reads == changed_at + 1
    # Unchanged values are repeated no more often than the heartbeat (a lower bound only),
    # counted from the last report, the change included.
    gaps = [b.at - a.at for a, b in itertools.pairwise(twin.reports)]
    change_index = twin.reports.index(change)
    quiet = gaps[: change_index - 1] + gaps[change_index:]
    assert min(quiet) >= 0.15 - 0.01, quiet
    # Heartbeats are not sent on every read: far fewer reports than reads.
    assert len(twin.reports) < len(dev.reads)


PERIOD = """
devices:
  - name: per
    protocol: mem
    connection: {device: per}
    collectCycle: 20
    reportCycle: 100
    properties:
      - {name: v, type: float, visitor: {address: v}}
"""


async def test_period_reports_the_latest_value_every_report_cycle() -> None:
    bus = MemBus()
    dev = bus.device("per")
    dev.values["v"] = 1.0
    spec = device(PERIOD)
    async with serve(spec, dev, bus) as (_, twin):
        await until(lambda: len(twin.reports) >= 2)
        await step(dev, {"v": 2.0})
        await until(lambda: twin.series("v")[-1:] == [2.0] and len(twin.reports) >= 5)
    series = twin.series("v")
    # The same value is reported again each cycle (the default, KubeEdge's behaviour) ...
    assert series.count(1.0) >= 2
    # ... and the latest value, never an older one after a newer.
    assert series == sorted(series)
    gaps = [b.at - a.at for a, b in itertools.pairwise(twin.reports)]
    assert min(gaps) >= 0.1 - 0.01, gaps
    assert len(twin.reports) < len(dev.reads)
