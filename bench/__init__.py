"""Benchmarks: each prints its figures and writes
bench/results/NAME.json. CI never fails on timing."""
