"""Mapperkit benchmarks: each `*_bench.py` prints figures beside a baseline from the same run."""
