"""Benchmarks for `lch bench`: one module per benchmark, each registering with harness.bench.register_bench."""
