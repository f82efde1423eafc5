"""Part of `lch bench needle`: a needle grid with the shared-prefix prefill (prefix_cache) vs one prefill per prompt.

Each mode runs the same grid through the real runner in a fresh subprocess, so its peak RSS is its own;
both run in one bench invocation, one after the other, and the ratio is the grid time on / off. The
tables must agree (predictions equal, answer NLL within 1e-4): a ratio from wrong results counts nothing.
"""

from __future__ import annotations

from pathlib import Path

from harness.columns import ANSWER_NLL, CONTEXT_LENGTH, DEPTH, TRIAL
from harness.benchmarks._measure import PEAK_RSS_SNIPPET, run_measurement

GOAL = 0.75
TOL = 1e-4

_MEASURE = PEAK_RSS_SNIPPET + r"""
import json, sys, time
import pandas as pd
import torch
from harness.runner import ModelRequest, run_task

cfg = json.loads(sys.argv[1])
torch.set_num_threads(1)  # the machine is shared: one thread is faster and steadier than two
models = [ModelRequest(m) for m in cfg["models"]]
params = {**cfg["params"], "prefix_cache": cfg["prefix_cache"]}
start = time.perf_counter()
run = run_task("needle", models, params, out_root=cfg["out"], name=cfg["name"], progress=False)
seconds = time.perf_counter() - start
cells = pd.read_parquet(run / "tables" / "cells.parquet")
needle = pd.read_parquet(run / "tables" / "needle.parquet")
rows = needle[["model", "context_length", "depth", "trial", "prediction", "answer_nll"]].to_dict(orient="records")
per_model = cells.groupby("model")["seconds"].sum().to_dict()
print(json.dumps({"run_seconds": seconds, "cell_seconds": float(cells["seconds"].sum()), "model_seconds": per_model,
                  "peak_rss_mib": peak_rss_mib(), "rows": rows}))
"""


def random_checkpoint(path: Path, texts, hidden_size: int = 256, intermediate_size: int = 1024) -> Path:
    """Save a random Llama (4 layers, 4 heads; d_model 256 by default) and a BPE tokenizer (vocabulary 2048, the reference pair's builder)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.reference.tokenizer import train_tokenizer

    tok = train_tokenizer(texts, vocab_size=2048)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=8192,
                         tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)
    config.training_length = 256
    LlamaForCausalLM(config).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


def agreement(on: list[dict], off: list[dict]) -> dict:
    """Do the two modes' needle rows agree: predictions equal, largest answer NLL difference."""
    def key(r):
        return (r["model"], r[CONTEXT_LENGTH], r[DEPTH], r[TRIAL])

    a, b = sorted(on, key=key), sorted(off, key=key)
    same = len(a) == len(b) and all(key(x) == key(y) and x["prediction"] == y["prediction"] for x, y in zip(a, b))
    diff = max((abs(x[ANSWER_NLL] - y[ANSWER_NLL]) for x, y in zip(a, b)), default=float("nan"))
    return {"predictions_equal": same, "max_answer_nll_diff": diff, "tables_agree": same and diff <= TOL}


def measure_prefix(tmp: Path, models: list[str], params: dict) -> dict:
    """Run the grid without then with prefix sharing; rows per mode and model, ratios of time and peak memory."""
    modes = {}
    for flag in ("false", "true"):
        modes[flag] = run_measurement(_MEASURE, {"models": models, "params": params, "prefix_cache": flag,
                                                 "out": str(tmp), "name": f"prefix-{flag}"})
    off, on = modes["false"], modes["true"]
    rows = [{"part": "prefix_cache", "mode": "on" if flag == "true" else "off", "status": m["status"],
             "cell_seconds": m.get("cell_seconds"), "run_seconds": m.get("run_seconds"),
             "peak_rss_mib": m.get("peak_rss_mib"), **{f"seconds[{k}]": v for k, v in m.get("model_seconds", {}).items()}}
            for flag, m in modes.items()]
    if off["status"] != "ok" or on["status"] != "ok":
        return {"rows": rows, "ratios": {}}
    ratios = {"prefix_time_ratio": on["cell_seconds"] / off["cell_seconds"],
              "prefix_run_time_ratio": on["run_seconds"] / off["run_seconds"],
              "prefix_peak_rss_ratio": on["peak_rss_mib"] / off["peak_rss_mib"],
              "prefix_peak_rss_mib_on": on["peak_rss_mib"], "prefix_peak_rss_mib_off": off["peak_rss_mib"],
              **agreement(on["rows"], off["rows"])}
    return {"rows": rows, "ratios": ratios}
