"""Summarise a py-spy profile in collapsed-stack ("raw") format.

``python -m bench.profile_summary PROFILE.txt [--top N]``

A profile of the mapper at the scale bench's load is taken with::

    MAPPERKIT_SCALE_PROFILE=/tmp/mapper.prof python -m bench.scale_bench --seconds 20

(py-spy samples the mapper process during the measured window, 100 samples/s).
This prints where the time goes: the share of samples per area (our runtime,
the Modbus driver, pymodbus, paho/MQTT, asyncio, SQLite, ...) by the innermost
frame that belongs to an area, then the functions with the most self time.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::(?P<line>\d+))?\)$")

# Ordered: the first pattern that matches a frame's file names its area.
AREAS: tuple[tuple[str, str], ...] = (
    ("mappers/modbus", "Modbus driver (planning, decoding)"),
    ("mapper_sdk/runtime/outbox", "outbox (SQLite window)"),
    ("mapper_sdk/runtime", "runtime (cycles, readings, twin documents)"),
    ("mapper_sdk/mqtt", "MQTT link"),
    ("mapper_sdk/codec", "value codec"),
    ("mapper_sdk", "other SDK code"),
    ("pymodbus", "pymodbus (framing, transport)"),
    ("paho", "paho-mqtt (packets, socket)"),
    ("aiomqtt", "aiomqtt"),
    ("sqlite3", "SQLite"),
    ("json", "json"),
    ("asyncio", "asyncio event loop"),
    ("selectors", "asyncio event loop"),
)


# Leaf frames that are a thread waiting for work (py-spy cannot always tell such
# a wait from running code): an executor thread parked on its queue.
IDLE_LEAVES = (("_worker", "concurrent/futures/thread.py"),)


def area_of(file: str) -> str | None:
    for pattern, name in AREAS:
        if pattern in file:
            return name
    return None


def summarise(path: Path, top: int) -> str:
    by_area: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total = idle = 0
    for raw in path.read_text().splitlines():
        stack, _, count_s = raw.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        parsed = [FRAME.match(f) for f in frames]
        leaf = parsed[-1]
        if leaf is not None and any(
            leaf["func"] == func and leaf["file"].endswith(file) for func, file in IDLE_LEAVES
        ):
            idle += count
            continue
        total += count
        if leaf is not None:
            short = "/".join(Path(leaf["file"]).parts[-2:])
            self_time[f"{leaf['func']} ({short})"] += count
        else:
            self_time[frames[-1]] += count
        area = None
        for m in reversed(parsed):
            if m is not None and (area := area_of(m["file"])) is not None:
                break
        by_area[area or "other (interpreter, libraries)"] += count
    if total == 0:
        return f"{path}: no samples"
    lines = [f"{total:,} samples ({idle:,} more of idle executor threads left out)"]
    lines.append("by area (innermost frame in the area):")
    for name, count in by_area.most_common():
        lines.append(f"  {count / total:6.1%} {count:7,}  {name}")
    lines.append(f"top {top} functions by self time:")
    for name, count in self_time.most_common(top):
        lines.append(f"  {count / total:6.1%} {count:7,}  {name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_summary")
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    print(summarise(args.profile, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
