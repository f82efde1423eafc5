"""Benchmark `gpu`: the prepared check for a CUDA machine (no downloads; random 2-layer models from real configs).

Shapes: Llama-3.1-8B (hidden 4096, 32 heads, 8 KV heads, head_dim 128), Mistral-7B (sliding window 4096), Gemma-2-9B
(attention softcap 50, final softcap 30, window 4096 on its sliding layer). Paths on each: plain transformers SDPA
(`sdpa`, the reference), the harness with softmax (`lch_softmax`) and SSMax (`lch_ssmax`), the position-loss NLL
(`nll`: body + chunked head) and a shared-prefix suffix (`shared_prefix`: a prefill, the cache cropped to half, the
second half fed again). Per row: the kernels that ran (attention_paths), peak memory (torch.cuda.max_memory_allocated;
`forward_gib` is the peak over the weights), tokens/s, time and memory over `sdpa` at the same length, and achieved
TFLOP/s and time over the FLOP floor where the device's bf16 peak is known.
Lengths 32k/64k (128k for the Llama shape only) in bf16; without CUDA (or with --quick) toy sizes in fp32
(hidden 64, lengths 256/512), which the tests run. Measurements past the time budget are skipped, never cut.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from harness.benchmarks.registry import register_bench

PATHS = ("sdpa", "lch_softmax", "lch_ssmax", "nll", "shared_prefix")
BUDGET_S = 330.0
"""measurement seconds on a GPU (plus model builds and start-up: the whole check stays under 8 minutes on an H100)"""
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
               "L4": 121.0, "A10": 125.0}
"""dense bf16 tensor-core peak by device-name substring (the FLOP floor's denominator)"""


@dataclass(frozen=True)
class Shape:
    """A real model's attention/MLP shapes, built with 2 layers and random weights."""

    name: str
    family: str
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    lengths: tuple[int, ...]
    window: int | None = None
    extra: dict = field(default_factory=dict)


def real_shapes() -> list[Shape]:
    """Llama-3.1-8B, Mistral-7B (window 4096), Gemma-2-9B (softcap 50, window 4096); 128k for Llama only."""
    return [
        Shape("llama-3.1-8b", "llama", 4096, 32, 8, 128, 14336, 128256, (32768, 65536, 131072),
              extra={"rope_theta": 500000.0}),
        Shape("mistral-7b", "mistral", 4096, 32, 8, 128, 14336, 32768, (32768, 65536), window=4096),
        Shape("gemma-2-9b", "gemma2", 3584, 16, 8, 256, 14336, 256000, (32768, 65536), window=4096,
              extra={"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "query_pre_attn_scalar": 256,
                     "layer_types": ["sliding_attention", "full_attention"]}),
    ]


def toy_shapes() -> list[Shape]:
    """The same three families at toy sizes (hidden 64; windows of 128 that lengths 256/512 cross)."""
    gemma = {"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "query_pre_attn_scalar": 16,
             "layer_types": ["sliding_attention", "full_attention"]}
    return [Shape("llama-toy", "llama", 64, 4, 2, 16, 128, 512, (256, 512)),
            Shape("mistral-toy", "mistral", 64, 4, 2, 16, 128, 512, (256, 512), window=128),
            Shape("gemma2-toy", "gemma2", 64, 4, 2, 16, 128, 512, (256, 512), window=128, extra=gemma)]


def build(shape: Shape, device, dtype):
    """A random 2-layer model of `shape` on `device` in `dtype` (weights made there, never on the host first)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    window = {"sliding_window": shape.window} if shape.window else {}
    config = AutoConfig.for_model(shape.family, vocab_size=shape.vocab, hidden_size=shape.hidden,
                                  intermediate_size=shape.ffn, num_hidden_layers=2,
                                  num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                                  head_dim=shape.head_dim, max_position_embeddings=max(shape.lengths) * 2,
                                  **window, **shape.extra)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def forward_flops(shape: Shape, length: int, head: bool = False) -> float:
    """Matmul FLOPs of one 2-layer forward over `length` tokens (causal; a window bounds the keys per row)."""
    d, q, kv = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    dense = 2 * length * (2 * d * q + 2 * d * kv + 3 * d * shape.ffn)
    types = shape.extra.get("layer_types") or ["full_attention"] * 2
    attn = 0.0
    for kind in types:
        w = shape.window if shape.window and (kind == "sliding_attention" or "layer_types" not in shape.extra) else None
        keys = length * (length + 1) / 2 if not w or w >= length else w * (w + 1) / 2 + (length - w) * w
        attn += 4 * q * keys  # QK^T and PV
    return float(len(types) * dense + attn + (2 * length * d * shape.vocab if head else 0))


def _peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def _run_path(model, path: str, ids) -> int:
    """One measured call of `path` on `ids` [1, L]; returns the tokens it fed."""
    from transformers import DynamicCache

    from harness.inference.decode import cache_kwarg, crop_to
    from harness.inference.nll import per_position_nll

    if path == "nll":
        per_position_nll(model, ids[0])
        return ids.shape[1]
    if path == "shared_prefix":
        half, name = ids.shape[1] // 2, cache_kwarg(type(model.model).forward)
        cache = DynamicCache()
        model.model(ids, use_cache=True, **{name: cache})
        crop_to(cache, half)
        model.model(ids[:, half:], use_cache=True, **{name: cache})
        return ids.shape[1] + ids.shape[1] - half
    model.model(input_ids=ids, use_cache=False)
    return ids.shape[1]


def _select(model, path: str) -> str:
    """Switch the model to `path`'s attention; the implementation name (Gemma 2 has no SDPA path: eager)."""
    from harness.attention import apply_attention

    if path != "sdpa":
        apply_attention(model, "ssmax(s=0.4)" if path == "lch_ssmax" else "softmax", training_length=4096)
        return "lch"
    try:
        model.set_attn_implementation("sdpa")
        return "sdpa"
    except ValueError:  # transformers refuses SDPA for this family
        model.set_attn_implementation("eager")
        return "eager"


def measure(model, shape: Shape, path: str, length: int, device) -> dict:
    """Time, peak memory and kernels of one path at one length (after a short warm-up)."""
    import torch

    from harness.attention.variants import reset_attention_paths

    cuda = torch.device(device).type == "cuda"
    ids = torch.randint(0, shape.vocab, (1, length), generator=torch.Generator().manual_seed(1)).to(device)
    row: dict = {"shape": shape.name, "path": path, "length": length}
    try:
        with torch.inference_mode():
            row["implementation"] = _select(model, path)
            _run_path(model, path, ids[:, : min(length, 512)])  # warm-up: kernels chosen, caches allocated
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.empty_cache()
                base = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            reset_attention_paths()
            start = time.perf_counter()
            tokens = _run_path(model, path, ids)
            if cuda:
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {**row, "status": "out of memory"}
    row.update(status="ok", kernels=reset_attention_paths(), seconds=seconds, tokens_per_s=tokens / seconds)
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        row.update(peak_gib=peak / 2**30, forward_gib=(peak - base) / 2**30)
        floor_flops = forward_flops(shape, length, head=path == "nll")
        if path == "shared_prefix":
            floor_flops += forward_flops(shape, length) - forward_flops(shape, length // 2)
        row["tflops"] = floor_flops / seconds / 1e12
        peak_tf = _peak_tflops(torch.cuda.get_device_name(device))
        row["over_flop_floor"] = seconds / (floor_flops / (peak_tf * 1e12)) if peak_tf else None
    return row


def _add_ratios(rows: list[dict]) -> None:
    """time / memory over the plain transformers forward of the same shape and length."""
    ref = {(r["shape"], r["length"]): r for r in rows if r["path"] == "sdpa" and r["status"] == "ok"}
    for r in rows:
        base = ref.get((r["shape"], r["length"]))
        if r["status"] != "ok" or base is None:
            continue
        r["time_vs_sdpa"] = r["seconds"] / base["seconds"]
        if "forward_gib" in r:
            r["memory_vs_sdpa"] = r["forward_gib"] / max(base["forward_gib"], 1e-9)


def run_gpu_check(shapes: list[Shape], device, dtype, budget_s: float | None = None) -> list[dict]:
    """Every (shape, length, path) row; rows past `budget_s` measurement seconds are marked skipped."""
    import gc

    import torch

    rows: list[dict] = []
    start = time.perf_counter()
    for shape in shapes:
        model = build(shape, device, dtype)
        for length in shape.lengths:
            for path in PATHS:
                if budget_s is not None and time.perf_counter() - start > budget_s:
                    rows.append({"shape": shape.name, "path": path, "length": length, "status": "skipped: time budget"})
                    continue
                rows.append(measure(model, shape, path, length, device))
        del model
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    _add_ratios(rows)
    return rows


@register_bench("gpu", "prepared GPU check: Llama-3.1-8B / Mistral-7B / Gemma-2-9B shapes (2 random layers), "
                       "kernels, peak memory, tokens/s at 32k-128k (toy sizes on CPU or --quick)")
def bench_gpu(quick: bool) -> dict:
    """Per path and length: kernels, peak memory, tokens/s and ratios to the plain transformers forward."""
    from harness.models.devices import runtime, set_allocator_default

    set_allocator_default()  # before CUDA initialises
    import torch

    cuda = torch.cuda.is_available()
    toy = quick or not cuda
    device = "cuda" if cuda else "cpu"
    dtype = torch.float32 if toy and not cuda else torch.bfloat16
    rows = run_gpu_check(toy_shapes() if toy else real_shapes(), device, dtype, None if toy else BUDGET_S)
    lch = [r for r in rows if r["path"] == "lch_softmax" and "time_vs_sdpa" in r]
    ratios = {f"{r['shape']}@{r['length']}:{k}": r[k] for r in lch for k in ("time_vs_sdpa", "memory_vs_sdpa")
              if k in r}
    return {"rows": rows, "ratios": ratios, "device": device, "dtype": str(dtype).replace("torch.", ""),
            "toy": toy, "layers": 2, **runtime()}
