"""Benchmark: memory and time of long-context forwards on the mask-free paths (harness.attention.key_pattern).

Each measurement runs in its own process (peak memory is its own), on a random model built from a config:
- shared prefix: a prompt's prefill, then the next prompt of its trial fed after half of it (crop, suffix), against
  two fresh prefills (per-prompt); the harness ("lch") and transformers' own SDPA path (what a user runs) alike;
- window: a Mistral-style model with a 256-key window against the same model without one (one prefill);
- softcap: a Gemma 2-style model with attention logit softcapping against the same without (one prefill).
Memory is the forward's growth of the resident set over the model's; the goals are the issue's (<= 1.15 memory for
shared prefixes and windows, <= 1.1 time for windows, <= 1.5 time for softcap).
"""

from __future__ import annotations

from harness.benchmarks._measure import PEAK_RSS_SNIPPET, run_measurement
from harness.benchmarks.registry import register_bench

_SCRIPT = PEAK_RSS_SNIPPET + r"""
import json, sys, time
import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache
import harness.attention  # registers "lch"
from harness.attention import apply_attention
from harness.attention.variants import reset_attention_paths
from harness.inference.decode import cache_kwarg, crop_to

cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
torch.manual_seed(0)
extra = {"sliding_window": cfg["window"]} if cfg["family"] == "mistral" else {}  # None: no window (not 4096)
if cfg["family"] == "gemma2":
    extra.update(attn_logit_softcapping=cfg.get("softcap"), final_logit_softcapping=None, query_pre_attn_scalar=64,
                 sliding_window=cfg.get("window") or cfg["length"], layer_types=["full_attention"] * 4)
config = AutoConfig.for_model(cfg["family"], vocab_size=2048, hidden_size=256, intermediate_size=512,
                              num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                              max_position_embeddings=cfg["length"], **extra)
model = AutoModelForCausalLM.from_config(config).eval()
if cfg["impl"] == "lch":
    apply_attention(model, "ssmax(s=0.4)", training_length=256)
else:
    model.set_attn_implementation("sdpa")
ids = torch.randint(0, 2048, (1, cfg["length"]), generator=torch.Generator().manual_seed(1))
L = cfg["length"]
kw = cache_kwarg(model.model.forward)
with torch.inference_mode():
    model.model(ids[:, :128])  # warm-up
    base = current_rss_mib()
    reset_attention_paths()
    start = time.perf_counter()
    if cfg["mode"] == "prefill":
        for _ in range(cfg["prompts"]):
            model.model(ids, **{kw: DynamicCache()}, use_cache=True)
    else:  # shared: the first prompt in full, the next after half of it (the cache cropped to the shared prefix)
        cache = DynamicCache()
        model.model(ids, **{kw: cache}, use_cache=True)
        crop_to(cache, L // 2)
        model.model(ids[:, L // 2:], **{kw: cache}, use_cache=True)
    seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "forward_mib": peak_rss_mib() - base,
                  "paths": reset_attention_paths()}))
"""


def _measure(**config) -> dict:
    return run_measurement(_SCRIPT, {"threads": 1, "window": None, "softcap": None, "prompts": 1, **config})


def _ratio(a: dict, b: dict, key: str) -> float | None:
    if a["status"] != "ok" or b["status"] != "ok":
        return None
    return a[key] / max(b[key], 1.0 if key == "forward_mib" else 1e-9)


@register_bench("long_context", "mask-free long-context paths: shared-prefix suffix, sliding window, softcap (32k/4k)")
def bench_long_context(quick: bool) -> dict:
    """Peak-memory and time ratios of the mask-free paths against per-prompt prefill, windowless and uncapped models."""
    long_len, cap_len = (2048, 1024) if quick else (32768, 4096)
    rows = {
        "lch_per_prompt": _measure(family="llama", impl="lch", mode="prefill", length=long_len, prompts=2),
        "lch_shared": _measure(family="llama", impl="lch", mode="shared", length=long_len),
        "sdpa_per_prompt": _measure(family="llama", impl="sdpa", mode="prefill", length=long_len, prompts=2),
        "sdpa_shared": _measure(family="llama", impl="sdpa", mode="shared", length=long_len),
        "lch_windowless": _measure(family="mistral", impl="lch", mode="prefill", length=long_len),
        "lch_window": _measure(family="mistral", impl="lch", mode="prefill", length=long_len, window=256),
        "sdpa_window": _measure(family="mistral", impl="sdpa", mode="prefill", length=long_len, window=256),
        "lch_uncapped": _measure(family="gemma2", impl="lch", mode="prefill", length=cap_len),
        "lch_softcap": _measure(family="gemma2", impl="lch", mode="prefill", length=cap_len, softcap=50.0),
    }
    ratios = {
        "shared_over_per_prompt_memory": _ratio(rows["lch_shared"], rows["lch_per_prompt"], "forward_mib"),
        "naive_shared_over_per_prompt_memory": _ratio(rows["sdpa_shared"], rows["sdpa_per_prompt"], "forward_mib"),
        "window_over_windowless_memory": _ratio(rows["lch_window"], rows["lch_windowless"], "forward_mib"),
        "window_over_windowless_time": _ratio(rows["lch_window"], rows["lch_windowless"], "seconds"),
        "naive_window_over_windowless_memory": _ratio(rows["sdpa_window"], rows["lch_windowless"], "forward_mib"),
        "softcap_over_uncapped_time": _ratio(rows["lch_softcap"], rows["lch_uncapped"], "seconds"),
    }
    goals = {"shared_over_per_prompt_memory": "<= 1.15", "window_over_windowless_memory": "<= 1.15",
             "window_over_windowless_time": "<= 1.1", "softcap_over_uncapped_time": "<= 1.5"}
    return {"rows": [{"case": name, **row} for name, row in rows.items()], "ratios": ratios, "goals": goals,
            "lengths": {"long": long_len, "softcap": cap_len}}
