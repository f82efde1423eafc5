"""Benchmark: per-position NLL through the harness vs the naive full-logits way.

Each measurement runs in a fresh Python subprocess and reports its own peak RSS
(`ru_maxrss`), so measurements never contaminate each other. The model is a random Llama with a
32k vocabulary (d_model 256, 4 layers), routed through the harness's attention path.
"""

from __future__ import annotations

from harness.benchmarks.registry import register_bench
from harness.benchmarks._measure import BENCH_MODEL_SNIPPET, run_measurement

VOCAB = 32_000
COMPARE_LENGTH = 16_384
LADDER = (131_072, 65_536, 32_768)  # longest-length search, longest first (harness only)
LADDER_PREFILL = 2_048  # prefill chunk on the ladder: SDPA turns the [chunk x keys] mask into floats (4 GiB at 8192 x 128k)
MEMORY_GOAL, TIME_GOAL, LENGTH_GOAL = 0.35, 1.0, 131_072

_MEASURE = BENCH_MODEL_SNIPPET + r"""
import json, resource, sys, time
import torch
import torch.nn.functional as F
from harness.attention import apply_attention
from harness.inference.nll import per_position_nll

apply_attention(model, "softmax")

def naive(x):
    with torch.inference_mode():
        logits = model(x).logits  # [1, L, V]: the whole thing at once
        return F.cross_entropy(logits[0, :-1], x[0, 1:], reduction="none")

def harness(x):
    return per_position_nll(model, x, chunk=cfg["chunk"], prefill_chunk=cfg["prefill_chunk"] or None)

fn = naive if cfg["method"] == "naive" else harness
fn(ids[:, :256])  # warm-up (kernel selection, allocator)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
nll = fn(ids)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_rss_mib": peak / 1024, "base_rss_mib": base / 1024,
                  "mean_nll": float(nll.float().mean())}))
"""


def measure(method: str, length: int, *, chunk: int | None = None, prefill_chunk: int = 0, threads: int = 2,
            vocab: int = VOCAB) -> dict:
    """Run one measurement in a fresh subprocess (chunk: harness.inference.nll.HEAD_CHUNK unless given); returns a row."""
    if chunk is None:
        from harness.inference.nll import HEAD_CHUNK  # here, not at import: listing benchmarks needs no torch

        chunk = HEAD_CHUNK
    return run_measurement(_MEASURE, dict(method=method, length=length, chunk=chunk, prefill_chunk=prefill_chunk,
                                          threads=threads, vocab=vocab))


def _best(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return rows[0]
    return {**ok[0], "seconds": min(r["seconds"] for r in ok), "peak_rss_mib": min(r["peak_rss_mib"] for r in ok)}


@register_bench("position_loss", "per-position NLL: harness vs naive full logits (memory, time, longest length)")
def bench_position_loss(quick: bool) -> dict:
    """Peak RSS and time of the harness vs naive `model(ids).logits -> cross_entropy`, and the longest length reached."""
    length = 2_048 if quick else COMPARE_LENGTH
    repeats = 1 if quick else 3
    naive, harness = [], []
    for _ in range(repeats):  # interleaved, so background load hits both alike
        naive.append(measure("naive", length))
        harness.append(measure("harness", length))
    naive_row, harness_row = _best(naive), _best(harness)
    rows = [naive_row, harness_row]
    ratios = {}
    if naive_row["status"] == "ok" and harness_row["status"] == "ok":
        ratios["memory_ratio"] = harness_row["peak_rss_mib"] / naive_row["peak_rss_mib"]
        ratios["time_ratio"] = harness_row["seconds"] / naive_row["seconds"]
        ratios["abs_mean_nll_diff"] = abs(harness_row["mean_nll"] - naive_row["mean_nll"])

    longest = None
    for target in ((4_096,) if quick else LADDER):
        row = measure("harness", target, prefill_chunk=1_024 if quick else LADDER_PREFILL)
        rows.append(row)
        if row["status"] == "ok":
            longest = row
            break
    if longest is not None:
        ratios["longest_length"] = longest["length"]
        ratios["longest_peak_rss_mib"] = longest["peak_rss_mib"]
        ratios["longest_seconds"] = longest["seconds"]
        # what the naive way would need there, logits alone: [L, V] fp32 plus its log-softmax
        ratios["naive_logits_gib_at_longest"] = 2 * longest["length"] * VOCAB * 4 / 2**30
    goals = {"memory_ratio": f"<= {MEMORY_GOAL}", "time_ratio": f"<= {TIME_GOAL}", "longest_length": f">= {LENGTH_GOAL}"}
    return {"rows": rows, "ratios": ratios, "goals": goals}
