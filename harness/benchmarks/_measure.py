"""Run one benchmark measurement in a fresh Python subprocess, so peak memory is its own."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

MEMORY_LIMIT = 20 * 2**30  # RLIMIT_DATA per measurement: a failed allocation, never the OOM killer


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_measurement(script: str, config: dict) -> dict:
    """Run `script` with argv[1] = JSON config; it prints one JSON line. Returns it, or a failure status."""
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(config)], capture_output=True, text=True,
                          preexec_fn=_limit_memory)
    if proc.returncode != 0:
        lines = (proc.stderr or "").strip().splitlines()
        return {**config, "status": f"failed: {lines[-1] if lines else f'exit {proc.returncode}'}"[:200]}
    return {**config, "status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1])}


PEAK_RSS_SNIPPET = r"""
import resource
def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def current_rss_mib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
"""


BENCH_MODEL_SNIPPET = r"""
import json, sys
import torch
from transformers import LlamaConfig, LlamaForCausalLM
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
torch.manual_seed(0)
VOCAB = cfg.get("vocab", 2048)
config = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=cfg["length"])
model = LlamaForCausalLM(config).eval()  # the benchmarks' random model: d_model 256, 4 layers, 4 heads
ids = torch.randint(0, VOCAB, (1, cfg["length"]), generator=torch.Generator().manual_seed(1))
"""
