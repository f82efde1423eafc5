"""Benchmarks for `lch bench`: one module per benchmark, each registering with harness.benchmarks.registry.register_bench."""
