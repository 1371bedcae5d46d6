"""The request planner on its own: merging rules, caching, and learning from refusals."""

from __future__ import annotations

from mappers.modbus import Planner, Table
from mappers.modbus.planner import Item


def items(*spans: tuple[str, Table, int, int]) -> dict[str, Item]:
    return {name: Item(name, table, start, count, list) for name, table, start, count in spans}


H, C = Table.HOLDING, Table.COIL


def ranges(planner: Planner, names: tuple[str, ...]) -> list[tuple[str, int, int]]:
    return [(r.table.name, r.start, r.count) for r in planner.plan(names)]


def test_merges_adjacent_and_near_and_splits_far() -> None:
    planner = Planner(
        items(("a", H, 0, 2), ("b", H, 2, 1), ("c", H, 11, 2), ("d", H, 30, 1)),
        max_registers=125,
        max_gap=8,
    )
    # a-b adjacent, c after a gap of 8 (bridged), d after a gap of 17.
    assert ranges(planner, ("a", "b", "c", "d")) == [("HOLDING", 0, 13), ("HOLDING", 30, 1)]
    assert ranges(planner, ("d", "a")) == [("HOLDING", 0, 2), ("HOLDING", 30, 1)]


def test_overlapping_properties_share_a_read() -> None:
    planner = Planner(
        items(("word", H, 5, 1), ("bit0", H, 5, 1), ("pair", H, 4, 2)),
        max_registers=125,
        max_gap=0,
    )
    (request,) = planner.plan(("word", "bit0", "pair"))
    assert (request.start, request.count) == (4, 2)
    assert {name: offset for name, offset, _, _ in request.parts} == {
        "pair": 0,
        "word": 1,
        "bit0": 1,
    }


def test_limits_per_table() -> None:
    spans = [(f"h{i}", H, i, 1) for i in range(10)] + [(f"c{i}", C, i * 10, 1) for i in range(10)]
    planner = Planner(items(*spans), max_registers=4, max_gap=0)
    names = tuple(name for name, *_ in spans)
    plan = ranges(planner, names)
    assert [r for r in plan if r[0] == "HOLDING"] == [
        ("HOLDING", 0, 4),
        ("HOLDING", 4, 4),
        ("HOLDING", 8, 2),
    ]
    # Coils: 16 x 4 = 64 per read, gaps of 9 coils exceed 16 x 0.
    assert [r for r in plan if r[0] == "COIL"] == [("COIL", i * 10, 1) for i in range(10)]
    wide = Planner(items(*spans), max_registers=4, max_gap=1)  # coil gap 16
    assert [r for r in ranges(wide, names) if r[0] == "COIL"] == [("COIL", 0, 61), ("COIL", 70, 21)]


def test_plan_is_cached_and_duplicates_ignored() -> None:
    planner = Planner(items(("a", H, 0, 1), ("b", H, 1, 1)), max_registers=125, max_gap=8)
    first = planner.plan(("a", "b", "a"))
    assert first is planner.plan(("a", "b", "a"))
    assert [r.count for r in first] == [2]
    assert planner.single("a") is planner.single("a")


def test_isolating_a_refused_property() -> None:
    planner = Planner(
        items(("a", H, 0, 1), ("bad", H, 1, 1), ("c", H, 2, 1)), max_registers=125, max_gap=8
    )
    names = ("a", "bad", "c")
    (merged,) = planner.plan(names)
    assert planner.learn(merged, ["bad"])
    assert ranges(planner, names) == [("HOLDING", 0, 1), ("HOLDING", 1, 1), ("HOLDING", 2, 1)]
    assert not planner.learn(merged, ["bad"])  # nothing new


def test_refused_bridge() -> None:
    planner = Planner(
        items(("a", H, 0, 1), ("b", H, 1, 1), ("c", H, 5, 1), ("d", H, 6, 1)),
        max_registers=125,
        max_gap=8,
    )
    names = ("a", "b", "c", "d")
    (merged,) = planner.plan(names)
    assert planner.learn(merged, [])
    assert ranges(planner, names) == [("HOLDING", 0, 2), ("HOLDING", 5, 2)]
    assert planner.cuts(H) == frozenset({5})


def test_refused_contiguous_read_is_split_everywhere() -> None:
    planner = Planner(items(("a", H, 0, 2), ("b", H, 2, 2)), max_registers=125, max_gap=8)
    (merged,) = planner.plan(("a", "b"))
    assert planner.learn(merged, [])
    assert ranges(planner, ("a", "b")) == [("HOLDING", 0, 2), ("HOLDING", 2, 2)]
