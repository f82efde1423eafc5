"""Benchmark: the attention probe's memory at long context vs `output_attentions=True` with eager attention.

Model: a random Llama, 4 layers, 4 heads, d_model 256, 32k vocabulary, SSMax with learned s (the
probe must apply the variant's scale). Each measurement runs in a fresh subprocess and reports its
own peak RSS:
- `probe`: one forward under `harness.attention.probe.capture` with the attention_probe task's rows (7 answer
  rows on a needle span, the fading rows at n = 1, 2, 4, ..., L) -- the task's forward;
- `plain`: the same forward without the probe (what the fast path alone needs);
- `output_attentions`: the eager reference with `output_attentions=True`, at shorter lengths only;
  its extra memory over the model is extrapolated to the probe's length as n^2.
"""

from __future__ import annotations

from harness.benchmarks.registry import register_bench
from harness.benchmarks._measure import BENCH_MODEL_SNIPPET, PEAK_RSS_SNIPPET, run_measurement

VOCAB = 32_000
LENGTH, QUICK_LENGTH = 32_768, 4_096
EAGER_LENGTHS, QUICK_EAGER_LENGTHS = (2_048, 4_096, 8_192), (1_024, 2_048)
PEAK_GOAL_GIB = 3.0

_MEASURE = PEAK_RSS_SNIPPET + BENCH_MODEL_SNIPPET + r"""
import json, sys, time
import torch
from harness.attention import add_ssmax_parameters, apply_attention
from harness.attention.probe import capture

add_ssmax_parameters(model, 0.3)
method, length = cfg["method"], cfg["length"]
apply_attention(model, "ssmax", implementation="lch_eager" if method == "output_attentions" else "lch")

def fading_rows(n):
    rows, k = [], 1
    while k < n:
        rows.append(k - 1)
        k *= 2
    return rows + [n - 1]

def run(x):
    n = x.shape[1]
    with torch.inference_mode():
        if method == "output_attentions":
            out = model(x, output_attentions=True, logits_to_keep=1)
            return sum(float(a[0, :, -1].amax(-1).sum()) for a in out.attentions)
        if method == "plain":
            model(x, logits_to_keep=1)
            return 0.0
        rows = sorted(set(fading_rows(n)) | set(range(n - 8, n - 1)))
        with capture(model, rows, spans={"needle": (n // 2, n // 2 + 7)}) as probe:
            model(x, logits_to_keep=1)
        return float(probe.get("max_weight")[..., -1].sum())

run(ids[:, :256])  # warm-up (kernel selection, allocator)
base = current_rss_mib()
start = time.perf_counter()
check = run(ids)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_rss_mib(), "base_rss_mib": base, "check": check}))
"""


def measure(method: str, length: int, threads: int = 2) -> dict:
    """One measurement in a fresh subprocess: peak RSS (MiB), RSS before the forward, seconds."""
    return run_measurement(_MEASURE, {"method": method, "length": length, "threads": threads, "vocab": VOCAB})


@register_bench("probe", "attention probe at 32k tokens (peak RSS) vs output_attentions=True with eager, n^2")
def probe(quick: bool) -> dict:
    """Peak RSS of the probed forward at 32k (4k quick), the plain forward, and output_attentions at shorter n."""
    length = QUICK_LENGTH if quick else LENGTH
    rows = [measure("probe", length), measure("plain", length)]
    rows += [measure("output_attentions", n) for n in (QUICK_EAGER_LENGTHS if quick else EAGER_LENGTHS)]
    ratios: dict = {}
    probe_row, plain_row = rows[0], rows[1]
    if probe_row["status"] == "ok":
        ratios["probe_length"] = length
        ratios["probe_peak_gib"] = probe_row["peak_rss_mib"] / 1024
        ratios["probe_within_goal"] = ratios["probe_peak_gib"] <= PEAK_GOAL_GIB
        if plain_row["status"] == "ok":
            ratios["probe/plain_peak"] = probe_row["peak_rss_mib"] / plain_row["peak_rss_mib"]
            ratios["probe/plain_seconds"] = probe_row["seconds"] / plain_row["seconds"]
    eager = [r for r in rows[2:] if r["status"] == "ok"]
    if eager:
        top = max(eager, key=lambda r: r["length"])
        extra = top["peak_rss_mib"] - top["base_rss_mib"]  # grows as n^2 (weights of every layer are kept)
        ratios["output_attentions_length"] = top["length"]
        ratios["output_attentions_peak_gib"] = top["peak_rss_mib"] / 1024
        ratios["output_attentions_est_peak_gib_at_probe_length"] = (
            top["base_rss_mib"] + extra * (length / top["length"]) ** 2) / 1024
        ratios["weights_alone_gib_at_probe_length"] = 4 * 4 * length**2 * 4 / 2**30  # layers x heads x n^2 fp32
        if probe_row["status"] == "ok":
            ratios["output_attentions_at_shorter/probe_peak"] = top["peak_rss_mib"] / probe_row["peak_rss_mib"]
    return {"rows": rows, "ratios": ratios, "goals": {"probe_peak_gib": f"<= {PEAK_GOAL_GIB}"}}
