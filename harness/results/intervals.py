"""Intervals on the result tables (pandas + harness.results.stats; no torch): accuracy and answer NLL per length and per
(length, depth) cell, effective length resampled over trials, the retrieval average, trials needed.

Column names: `acc_low`/`acc_high` (95% interval of `accuracy`), `n` (prompts), `n_eff` (prompts after the
design effect of sharing a trial's haystack), `nll_low`/`nll_high` (95% interval of the mean `answer_nll`, t over
trial means), `effective_length_median`/`_low`/`_high` (90% interval over resampled trials).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.results import stats
from harness.results.headline import THRESHOLD, by_variant, length_column, multiple
from harness.results.tables import model_columns, retrieval_average

CLUSTER = "trial"
"""The column whose rows share a haystack (a needle trial): the unit of resampling."""


def _clusters(part):
    return part[CLUSTER].to_numpy() if CLUSTER in part.columns else None


def group_intervals(part) -> dict:
    """acc_low, acc_high, n_eff (and nll_low, nll_high with answer_nll) of one group's prompt rows."""
    acc = stats.proportion_interval(part["correct"].astype(float).to_numpy(), _clusters(part))
    out = {"acc_low": acc["acc_low"], "acc_high": acc["acc_high"], "n_eff": round(acc["n_eff"], 2)}
    if "answer_nll" in part.columns:
        _, low, out["nll_high"] = stats.mean_interval(part["answer_nll"].to_numpy(float), _clusters(part))
        out["nll_low"] = max(0.0, low) if low == low else low  # an NLL is >= 0; a t interval on few trials can cross it
    return out


def add_intervals(summary: pd.DataFrame, df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """`summary` (one row per groupby(keys, dropna=False), sorted) with group_intervals columns added."""
    rows = [group_intervals(part) for _, part in df.groupby(keys, dropna=False, sort=True)]
    extra = pd.DataFrame(rows, index=summary.index)
    return pd.concat([summary, extra], axis=1)


def cell_summary(df: pd.DataFrame, extra_keys=()) -> pd.DataFrame:
    """Accuracy per (variant, *extra_keys, context_length, depth) with a Wilson interval and n (one prompt per trial)."""
    keys = model_columns(df) + list(extra_keys) + ["context_length", "depth"]
    out = (df.assign(correct=df["correct"].astype(float)).groupby(keys, dropna=False, sort=True)
           .agg(accuracy=("correct", "mean"), n=("correct", "size")).reset_index())
    bounds = [stats.wilson(int(round(a * n)), int(n)) for a, n in zip(out["accuracy"], out["n"])]
    out["acc_low"], out["acc_high"] = [b[0] for b in bounds], [b[1] for b in bounds]
    return out


def trial_blocks(df: pd.DataFrame, lengths) -> tuple[np.ndarray, np.ndarray]:
    """(right, asked) [trials, lengths] of one variant's (one preset's) prompt rows."""
    counted = df.assign(correct=df["correct"].astype(float), trial=df[CLUSTER] if CLUSTER in df.columns else 0)
    right = counted.pivot_table(index="trial", columns="context_length", values="correct", aggfunc="sum")
    asked = counted.pivot_table(index="trial", columns="context_length", values="correct", aggfunc="size")
    right, asked = right.reindex(columns=lengths).fillna(0.0), asked.reindex(columns=lengths).fillna(0.0)
    return right.to_numpy(float), asked.to_numpy(float)


def effective_length_uncertainty(df: pd.DataFrame, threshold: float, by: str | None = None, seed: int = 0) -> dict:
    """{median, low, high} of the effective length of one variant's rows, trials resampled (within each `by` group,
    the groups averaged: retrieval presets)."""
    lengths = sorted(int(x) for x in df["context_length"].unique())
    parts = [part for _, part in df.groupby(by, sort=True)] if by else [df]
    return stats.effective_length_interval(lengths, [trial_blocks(p, lengths) for p in parts], threshold, seed=seed)


def add_effective_length_intervals(effective: pd.DataFrame, df: pd.DataFrame, keys: list[str],
                                   threshold: float) -> pd.DataFrame:
    """The effective-length table (one row per groupby(keys, dropna=False), sorted) with
    effective_length_median/_low/_high (90%, trials resampled)."""
    rows = []
    for _, part in df.groupby(keys, dropna=False, sort=True) if keys else [((), df)]:
        got = effective_length_uncertainty(part, threshold)
        rows.append({f"effective_length_{k}": v for k, v in got.items()})
    return pd.concat([effective, pd.DataFrame(rows, index=effective.index)], axis=1)


def retrieval_average_intervals(df: pd.DataFrame, resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """retrieval_average(df) with acc_low/acc_high: a 95% percentile interval, trials resampled within each preset."""
    out = retrieval_average(df)
    keys = model_columns(df)
    bounds = {}
    for group, part in df.groupby(keys, dropna=False, sort=False) if keys else [((), df)]:
        group = group if isinstance(group, tuple) else (group,)
        lengths = sorted(int(x) for x in part["context_length"].unique())
        blocks = [trial_blocks(p, lengths) for _, p in part.groupby("task", sort=True)]
        acc = stats.resample_accuracy(blocks, resamples, seed)
        low, high = np.nanquantile(acc, [0.025, 0.975], axis=0)
        for j, length in enumerate(lengths):
            bounds[(*_keyed(group), length)] = (float(low[j]), float(high[j]))
    pairs = [bounds.get((*_keyed(tuple(r[k] for k in keys)), int(r["context_length"])), (math.nan, math.nan))
             for _, r in out.iterrows()]
    out["acc_low"], out["acc_high"] = [p[0] for p in pairs], [p[1] for p in pairs]
    return out


def _keyed(values: tuple) -> tuple:
    """Group values with NaN as None (so NaN keys compare equal)."""
    return tuple(None if isinstance(v, float) and math.isnan(v) else v for v in values)


def trials_needed(task: str, df: pd.DataFrame, half_width: float = 0.1) -> dict | None:
    """{task, trials now, trials for ±0.1, hardest cell}: trials that give a ±half_width interval at every length
    of every variant, at the observed accuracy and design effect (the hardest length decides)."""
    if df is None or df.empty or "correct" not in df.columns:
        return None
    worst = None
    for keys, part in df.groupby(model_columns(df) + ["context_length"], dropna=False, sort=True):
        trials = part[CLUSTER].nunique() if CLUSTER in part.columns else 1
        per_trial = max(1, int(round(len(part) / max(trials, 1))))
        deff = stats.design_effect(part["correct"].astype(float).to_numpy(), _clusters(part), small_sample=False)
        acc = float(part["correct"].astype(float).mean())
        need = stats.trials_needed(acc, per_trial, deff, half_width)
        if worst is None or need > worst[0]:
            worst = (need, trials, acc, keys)
    need, trials, acc, keys = worst
    return {"task": task, "trials now": trials, f"trials for ±{half_width:g}": need,
            "hardest": f"accuracy {acc:.2f} at {int(keys[-1])} tokens ({keys[0]}, {keys[1] if len(keys) > 2 else ''})"
            .replace(", )", ")")}


def interval_text(value, low, high, digits: int = 2) -> str:
    """'0.50 [0.08-0.92]' (or the value alone when the bounds are missing)."""
    if value is None or pd.isna(value):
        return "–"
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}-{high:.{digits}f}]"


def headline_with_intervals(headline: pd.DataFrame, tables: dict, train_lengths: dict) -> pd.DataFrame:
    """The headline table for reading: accuracy cells as '0.50 [0.08-0.92]' (95%, trials as clusters; retrieval:
    resampled within presets) and effective lengths as '1024 (4×), 90%: 512-2048'."""
    out = headline.copy().astype(object)
    index = {(r["model"], r["attention"], None if pd.isna(r["rope_theta"]) else float(r["rope_theta"])): i
             for i, r in out.iterrows()}
    for name, prefix in (("needle", "needle"), ("retrieval", "retrieval")):
        df = tables.get(name)
        if df is None or df.empty:
            continue
        for key, part in by_variant(df):
            i, train = index.get(key), train_lengths.get(key[0])
            if i is None:
                continue
            if name == "needle":
                cells = {int(length): stats.proportion_interval(p["correct"].astype(float).to_numpy(), _clusters(p))
                         for length, p in part.groupby("context_length")}
                cells = {k: (v["accuracy"], v["acc_low"], v["acc_high"]) for k, v in cells.items()}
            else:
                avg = retrieval_average_intervals(part)
                cells = {int(r["context_length"]): (r["accuracy"], r["acc_low"], r["acc_high"]) for _, r in avg.iterrows()}
            for length, (acc, low, high) in cells.items():
                column = length_column(f"{prefix} acc", length, train)
                if column in out.columns:
                    out.at[i, column] = interval_text(acc, low, high)
            column = f"{prefix} effective length"
            if column in out.columns and not pd.isna(out.at[i, column]):
                eff = effective_length_uncertainty(part, THRESHOLD, by="task" if name == "retrieval" else None)
                value = int(out.at[i, column])
                times = f" ({multiple(value, train)})" if train and value else ""
                out.at[i, column] = f"{value}{times}, 90%: {eff['low']}-{eff['high']}"
    return out


def add_band_intervals(buckets: pd.DataFrame, per_doc: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per-position NLL bands (one row per groupby(keys, dropna=False), sorted, with mean_nll) with nll_low/nll_high:
    a t interval over the documents' means in the band (documents are the independent unit), centred on mean_nll."""
    lows, highs = [], []
    for (_, part), centre in zip(per_doc.groupby(keys, dropna=False, sort=True), buckets["mean_nll"]):
        mean, low, high = stats.mean_interval(part["doc_mean"].to_numpy(float))
        lows.append(low + centre - mean)
        highs.append(high + centre - mean)
    return buckets.assign(nll_low=lows, nll_high=highs)
