"""Request coalescing: the properties due in one cycle, read in the fewest requests.

Properties of the same table whose addresses are adjacent or close are merged
into one read, up to ``maxRegistersPerRequest`` registers (16 times as many
coils, at most 2000) and across unused gaps of up to ``maxGap`` registers
(16 times as many coils). A plan is computed once per distinct set of due
properties and cached.

Devices do not always answer a merged read: a gap may hold addresses the
device does not implement, or one property may point at such an address. When
a merged read fails with an address-type exception, the driver reads its
properties one by one and reports what it learned back with :meth:`Planner.learn`.
The planner then remembers *cuts* — addresses a request must not straddle — and
plans again; a property that fails alone is isolated, a bridge that fails is
not built again. Cuts are kept for the planner's lifetime.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mapper_sdk.model import Value

from .config import MAX_BITS_PER_READ, Table

__all__ = ["Item", "Planner", "Request"]

Convert = Callable[[Sequence[Any]], Value]
"""Decode one property from its slice of a response (registers or bits)."""

MAX_CACHED_PLANS = 64


@dataclass(frozen=True, slots=True)
class Item:
    """One property's span in a table and how to decode it."""

    name: str
    table: Table
    start: int
    count: int
    convert: Convert

    @property
    def end(self) -> int:
        return self.start + self.count


class Request:
    """One read: a table, a range, and the properties it serves.

    ``parts`` holds ``(name, offset, count, convert)`` per property, the offset
    being relative to ``start``, so decoding a response is a slice per property.
    """

    __slots__ = ("count", "items", "parts", "start", "table")

    def __init__(self, table: Table, items: Sequence[Item]) -> None:
        self.table = table
        self.items = tuple(items)
        self.start = min(it.start for it in items)
        self.count = max(it.end for it in items) - self.start
        self.parts = tuple((it.name, it.start - self.start, it.count, it.convert) for it in items)

    @property
    def end(self) -> int:
        return self.start + self.count

    def __repr__(self) -> str:
        names = ",".join(it.name for it in self.items)
        return f"Request({self.table.value} {self.start}+{self.count}: {names})"


class Planner:
    """Plans coalesced reads for one device.

    Args:
        items: every property of the device, by name.
        max_registers: the longest register read (``maxRegistersPerRequest``).
        max_gap: unused registers a read may bridge (``maxGap``).
    """

    def __init__(self, items: Mapping[str, Item], *, max_registers: int, max_gap: int) -> None:
        self._items = dict(items)
        self._span = {
            Table.HOLDING: max_registers,
            Table.INPUT: max_registers,
            Table.COIL: min(MAX_BITS_PER_READ, 16 * max_registers),
            Table.DISCRETE: min(MAX_BITS_PER_READ, 16 * max_registers),
        }
        self._gap = {
            Table.HOLDING: max_gap,
            Table.INPUT: max_gap,
            Table.COIL: 16 * max_gap,
            Table.DISCRETE: 16 * max_gap,
        }
        self._cuts: dict[Table, set[int]] = {t: set() for t in Table}
        self._plans: dict[tuple[str, ...], tuple[Request, ...]] = {}
        self._singles: dict[str, Request] = {}

    # ---- planning ----------------------------------------------------------------
    def plan(self, names: tuple[str, ...]) -> tuple[Request, ...]:
        """The requests that read ``names`` (cached per distinct tuple of names)."""
        plan = self._plans.get(names)
        if plan is None:
            if len(self._plans) >= MAX_CACHED_PLANS:
                self._plans.clear()
            plan = self._build(names)
            self._plans[names] = plan
        return plan

    def single(self, name: str) -> Request:
        """A request that reads property ``name`` alone."""
        req = self._singles.get(name)
        if req is None:
            item = self._items[name]
            req = self._singles[name] = Request(item.table, (item,))
        return req

    def _build(self, names: Iterable[str]) -> tuple[Request, ...]:
        by_table: dict[Table, list[Item]] = {}
        seen: set[str] = set()
        for name in names:
            if name in seen:
                continue
            seen.add(name)
            item = self._items[name]
            by_table.setdefault(item.table, []).append(item)
        requests: list[Request] = []
        for table in Table:
            items = by_table.get(table)
            if not items:
                continue
            items.sort(key=lambda it: (it.start, -it.count))
            span, gap, cuts = self._span[table], self._gap[table], self._cuts[table]
            group = [items[0]]
            lo, hi = items[0].start, items[0].end
            for item in items[1:]:
                new_hi = max(hi, item.end)
                if (
                    item.start - hi <= gap
                    and new_hi - lo <= span
                    and not any(lo < c < new_hi for c in cuts)
                ):
                    group.append(item)
                    hi = new_hi
                else:
                    requests.append(Request(table, group))
                    group = [item]
                    lo, hi = item.start, item.end
            requests.append(Request(table, group))
        return tuple(requests)

    # ---- learning from exceptions ---------------------------------------------------
    def isolate(self, name: str) -> bool:
        """Never merge property ``name`` with its neighbours again. True if that is news."""
        item = self._items[name]
        return self._add_cuts(item.table, (item.start, item.end))

    def learn(self, request: Request, failed: Iterable[str]) -> bool:
        """Record the outcome of reading a refused merged ``request`` property by property.

        Args:
            request: the merged request the device refused.
            failed: the properties that were refused when read alone as well.

        Returns:
            True when the plan changed (the cache is then cleared).
        """
        failed = list(failed)
        if failed:
            changed = False
            for name in failed:
                changed |= self.isolate(name)
            return changed
        # Every property answers alone: the device refuses the bridge, not the data.
        # Cut at the start of each gap-separated run; with no gap, between all of them.
        items = sorted(request.items, key=lambda it: it.start)
        cuts: list[int] = []
        hi = items[0].end
        for item in items[1:]:
            if item.start > hi:
                cuts.append(item.start)
            hi = max(hi, item.end)
        if not cuts:
            cuts = [it.start for it in items[1:]]
        return self._add_cuts(request.table, cuts)

    def _add_cuts(self, table: Table, cuts: Iterable[int]) -> bool:
        known = self._cuts[table]
        new = set(cuts) - known
        if not new:
            return False
        known |= new
        self._plans.clear()
        return True

    def cuts(self, table: Table) -> frozenset[int]:
        """The addresses of ``table`` that no request straddles (for diagnostics)."""
        return frozenset(self._cuts[table])
