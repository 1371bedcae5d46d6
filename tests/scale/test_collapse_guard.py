"""Regression guard for scale: a short run that fails only on a collapse, not on noise.

The full figures come from ``make bench`` (bench/scale_bench.py). Here 10 Modbus
devices x 100 registers every 100 ms (10,000 points/s) run for a few seconds with
every part in its own process; the run fails only when less than half of the
requested rate reaches the broker, or when what was published does not arrive.
"""

from __future__ import annotations

from bench.scale_bench import run_workload


def test_ten_thousand_points_per_second_do_not_collapse() -> None:
    result = run_workload(10, 100, 100, 3.0, 1, 1.0, baselines=False)
    requested = result["requested"]
    assert result["delivered_rate"] >= 0.5 * requested, result
    assert result["arrived"] >= 0.9, result
    assert result["read_errors"] == 0, result
    assert result["outbox_dropped"] == 0, result
