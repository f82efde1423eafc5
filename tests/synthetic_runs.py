"""Synthetic run directories (manifest + tables, no model) for the report and figure tests."""

import json

import numpy as np
import pandas as pd

REFERENCE = [("reference/softmax", "softmax", 5e5), ("reference/ssmax", "ssmax", 5e5)]
LONG_NAME = "SmolLM2-135M-Instruct-Q4_1-dequant"
LONG = [(LONG_NAME, attention, theta) for theta in (1e5, 4e5) for attention in ("softmax", "ssmax(s=0.111)")]
"""The issue's case: one real checkpoint with a long directory name, two attentions, two RoPE bases."""
TWO_MODELS = [(f"SmolLM2-{size}-Instruct-Q4_1-dequant", attention, theta) for size in ("135M", "360M")
              for attention in ("softmax", "ssmax(s=0.111)") for theta in (1e5, 4e5)]
"""Eight variants whose names share a prefix and a suffix."""
UNRELATED = [("a-very-long-checkpoint-directory-name-from-a-cluster-job", "softmax", None),
             ("another-extremely-long-checkpoint-name-with-many-parts", "ssmax(s=0.111)", None)]
"""Long names that share nothing: only wrapping helps."""


def write_run(root, name, task, tables, variants=REFERENCE, train_length=256):
    """A finished run directory `root/name` of `task` with these tables and a manifest naming `variants`."""
    run = root / name
    (run / "tables").mkdir(parents=True)
    models = [{"name": m, "attention": a, "rope_theta": t, "training_length": train_length,
               "training_length_source": "config.max_position_embeddings", "fingerprint": f"{i:08x}" * 8}
              for i, (m, a, t) in enumerate(variants)]
    manifest = {"task": task, "models": models, "params": {}, "status": "complete", "cells_done": 1, "cells_total": 1}
    (run / "manifest.json").write_text(json.dumps(manifest))
    for table, df in tables.items():
        df.to_parquet(run / "tables" / f"{table}.parquet")
    return run


def _front(variant):
    model, attention, theta = variant
    return {"model": model, "attention": attention, "rope_theta": theta}


def grid_rows(variants=REFERENCE, lengths=(256, 512, 1024, 2048), depths=(0.0, 0.5, 1.0), good=None, trials=1,
              preset=None):
    """Needle-style rows: variant i is correct up to length good[i]; answer_nll grows with length past it."""
    good = good or [lengths[min(i, len(lengths) - 1)] for i in range(len(variants))]
    rows = []
    for i, variant in enumerate(variants):
        for length in lengths:
            for depth in depths:
                for trial in range(trials):
                    ok = length <= good[i]
                    row = {**_front(variant), "context_length": length, "depth": depth, "trial": trial, "correct": ok,
                           "first_digit_correct": True, "answer_nll": 0.1 + (0 if ok else np.log2(length / good[i]))}
                    if preset:
                        row.update(task=preset, recall=float(ok), first_token_correct=ok)
                    rows.append(row)
    return pd.DataFrame(rows)


def loss_rows(variants=REFERENCE, train=256, stop=1024):
    """position_loss rows: NLL 2.0 inside the training length, 2 + (i + 1) beyond it for variant i."""
    return pd.DataFrame([{**_front(v), "position": p, "mean_nll": 2.0 + (p >= train) * (i + 1), "n_docs": 2}
                         for i, v in enumerate(variants) for p in range(1, stop)])


def probe_rows(variants=REFERENCE, lengths=(256, 1024), layers=2, heads=4):
    """(needle_score, attention_fading) tables: head (1, 2) is the retrieval head, fading follows 1/n^0.5."""
    scores, fading = [], []
    for i, variant in enumerate(variants):
        for length in lengths:
            for trial in range(3):
                for layer in range(layers):
                    for head in range(heads):
                        score = 0.9 - 0.1 * trial if (layer, head) == (1, 2) else 0.02 * head
                        scores.append({**_front(variant), "context_length": length, "depth": 0.5, "trial": trial,
                                       "layer": layer, "head": head, "needle_score": score, "correct": trial == 0,
                                       "first_digit_correct": trial < 2})
                        for n in (1, 4, 16, 64, 256):
                            fading.append({**_front(variant), "context_length": length, "depth": 0.5, "trial": trial,
                                           "n": n, "layer": layer, "head": head, "max_weight": n ** -(0.5 + 0.1 * i),
                                           "entropy": np.log(n) * 0.8})
    return pd.DataFrame(scores), pd.DataFrame(fading)


def all_runs(root, variants, train_length, lengths, presets=("niah_single_1", "passkey"), loss=True):
    """Needle, one retrieval run per preset, position_loss (with `loss`) and attention_probe runs of `variants`."""
    good = [lengths[min(i, len(lengths) - 1)] for i in range(len(variants))]
    runs = [write_run(root, "needle", "needle", {"needle": grid_rows(variants, lengths, good=good)}, variants,
                      train_length)]
    for preset in presets:
        rows = grid_rows(variants, lengths, good=good[::-1], preset=preset)
        runs.append(write_run(root, preset, preset, {"retrieval": rows}, variants, train_length))
    if loss:
        runs.append(write_run(root, "loss", "position_loss",
                              {"position_loss": loss_rows(variants, train_length, 4 * train_length)}, variants, train_length))
    scores, fading = probe_rows(variants)
    runs.append(write_run(root, "probe", "attention_probe", {"needle_score": scores, "attention_fading": fading},
                          variants, train_length))
    return runs
