"""`lch bench gpu` at toy sizes on CPU: every path runs, the kernels are the mask-free ones, JSON is written."""

import dataclasses
import json

import pytest
import torch

from harness.benchmarks import gpu
from harness.benchmarks.registry import run_bench

TOY = gpu.toy_shapes()


def _short(shapes):
    return [dataclasses.replace(s, lengths=(256,)) for s in shapes]


@pytest.fixture(scope="module")
def rows():
    return gpu.run_gpu_check(_short(gpu.toy_shapes()), "cpu", torch.float32)


def _row(rows, shape, path):
    return next(r for r in rows if r["shape"] == shape and r["path"] == path)


def test_every_path_runs_on_every_shape(rows):
    assert {(r["shape"], r["path"]) for r in rows} == {(s.name, p) for s in gpu.toy_shapes() for p in gpu.PATHS}
    assert all(r["status"] == "ok" and r["tokens_per_s"] > 0 and r["time_vs_sdpa"] > 0 for r in rows)


def test_kernels_that_ran_are_the_mask_free_ones(rows):
    assert _row(rows, "llama-toy", "sdpa")["kernels"] == {}  # transformers' own path: nothing of the harness
    assert set(_row(rows, "llama-toy", "lch_ssmax")["kernels"]) == {"sdpa_causal"}
    assert set(_row(rows, "llama-toy", "shared_prefix")["kernels"]) == {"sdpa_causal", "split_lse"}
    assert set(_row(rows, "mistral-toy", "lch_softmax")["kernels"]) == {"window_blocks"}
    assert set(_row(rows, "gemma2-toy", "nll")["kernels"]) == {"materialised_softcap"}
    assert _row(rows, "gemma2-toy", "sdpa")["implementation"] == "eager"  # Gemma 2 has no transformers SDPA path


def test_real_shapes_are_the_published_configs():
    llama, mistral, gemma = gpu.real_shapes()
    assert (llama.hidden, llama.heads, llama.kv_heads, llama.head_dim) == (4096, 32, 8, 128)
    assert max(llama.lengths) == 131072 and max(mistral.lengths) == max(gemma.lengths) == 65536
    assert mistral.window == gemma.window == 4096 and gemma.extra["attn_logit_softcapping"] == 50.0


def test_flop_floor_counts_the_window():
    llama, mistral, _ = gpu.real_shapes()
    windowless = dataclasses.replace(mistral, window=None)
    L, W, q = 65536, 4096, 32 * 128
    saved = 2 * 4 * q * (L * (L + 1) / 2 - (W * (W + 1) / 2 + (L - W) * W))  # 2 layers, QK^T and PV
    assert gpu.forward_flops(windowless, L) - gpu.forward_flops(mistral, L) == pytest.approx(saved)
    assert gpu.forward_flops(llama, 1024, head=True) - gpu.forward_flops(llama, 1024) == 2 * 1024 * 4096 * 128256


def test_time_budget_skips_rather_than_cuts():
    rows = gpu.run_gpu_check(_short(gpu.toy_shapes()[:1]), "cpu", torch.float32, budget_s=0.0)
    assert {r["status"] for r in rows} == {"skipped: time budget"}


def test_bench_writes_json(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu, "toy_shapes", lambda: _short(TOY[:1]))
    doc, path = run_bench("gpu", quick=True, out_root=tmp_path)
    saved = json.loads(path.read_text())
    assert path == tmp_path / "bench" / "gpu.json" and saved["toy"] is True and saved["device"] == "cpu"
    assert saved["cuda_alloc_conf"] and len(saved["rows"]) == len(gpu.PATHS)
    assert "llama-toy@256:time_vs_sdpa" in saved["ratios"]

