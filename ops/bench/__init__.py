"""Benchmarks: each prints a table and writes JSON under ops/bench/results/."""
