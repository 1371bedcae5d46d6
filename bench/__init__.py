"""Mapperkit benchmarks: each `*_bench.py` module prints figures beside a baseline from the same run."""
