"""Benchmarks: each bench_*.py prints a JSON document and a table; `make bench` runs them all."""
