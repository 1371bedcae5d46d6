"""Run every benchmark: ``python -m bench [--quick] [NAME ...]``.

Each ``bench/<name>_bench.py`` module has ``main(argv) -> int`` and runs in its
own process, so one benchmark's memory and CPU figures are not another's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ORDER = ("modbus", "opcua", "ble", "twin", "data_plane", "scale", "soak")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="short runs (a few seconds each)")
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    args = parser.parse_args()
    here = Path(__file__).parent
    found = sorted(p.stem[: -len("_bench")] for p in here.glob("*_bench.py"))
    found.append("soak")  # bench/soak.py: long by design; --quick makes it a minute
    names = args.names or sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else 99, n))
    failed = []
    for name in names:
        if name not in found:
            print(f"no benchmark named {name!r} (have: {', '.join(found)})", file=sys.stderr)
            return 2
        print(f"\n=== {name} ===", flush=True)
        module = "bench.soak" if name == "soak" else f"bench.{name}_bench"
        cmd = [sys.executable, "-m", module] + (["--quick"] if args.quick else [])
        if subprocess.run(cmd, check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
