"""Table maths on run tables (pandas only; no torch, no drawing): groups, buckets, rankings, summaries."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.columns import ACCURACY, ANSWER_NLL, CONTEXT_LENGTH, CORRECT, DEPTH, MODEL_COLUMNS


def model_columns(df) -> list[str]:
    """The MODEL_COLUMNS present in `df`, in order."""
    return [c for c in MODEL_COLUMNS if c in df.columns]


def effective_length(accuracy_by_length: dict[int, float], threshold: float) -> int:
    """Longest length whose accuracy, and that of every shorter length, is >= threshold (0 if none)."""
    best = 0
    for length in sorted(accuracy_by_length):
        if accuracy_by_length[length] < threshold:
            break
        best = length
    return best


def effective_lengths(summary, keys: list[str], threshold: float) -> pd.DataFrame:
    """Per group of `keys` in an accuracy-by-context_length summary: effective_length, threshold, max_length."""
    rows = []
    for group, part in (summary.groupby(keys, dropna=False) if keys else [((), summary)]):
        group = group if isinstance(group, tuple) else (group,)
        acc = dict(zip(part[CONTEXT_LENGTH].astype(int), part[ACCURACY]))
        rows.append({**dict(zip(keys, group)), "effective_length": effective_length(acc, threshold),
                     "threshold": threshold, "max_length": max(acc)})
    return pd.DataFrame(rows)


def value_grid(df, value: str):
    """Mean of `value` per cell as a DataFrame: rows = depth (ascending), columns = context length (ascending)."""
    grid = df.assign(**{value: df[value].astype(float)}).pivot_table(
        index=DEPTH, columns=CONTEXT_LENGTH, values=value, aggfunc="mean", dropna=False)
    return grid.sort_index().sort_index(axis=1)


def needle_accuracy_grid(df):
    """Mean `correct` as a DataFrame: rows = depth (ascending), columns = context length (ascending)."""
    return value_grid(df, CORRECT)


def missing(value) -> bool:
    """True for None and NaN (how an unset rope_theta comes back from parquet)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def variant_key(model, attention, rope_theta) -> tuple:
    """(model, attention, rope_theta) with an unset theta as None, so None and NaN rows group together."""
    return (model, attention, None if missing(rope_theta) else float(rope_theta))


def variant_keys(df) -> list[tuple]:
    """The variant_key of every row of `df` (missing MODEL_COLUMNS count as None)."""
    cols = [df[c] if c in df.columns else pd.Series([None] * len(df), index=df.index) for c in MODEL_COLUMNS]
    return [variant_key(*row) for row in zip(*cols)]


def training_lengths(manifest: dict | None) -> dict:
    """{model: training length} from a run manifest's models, under its name and its `name@fingerprint` label.

    The runner labels the `model` column `name@<fingerprint[:8]>` when two different checkpoints share a
    name; both spellings are keys, so either finds the length. Entries without a length are left out.
    """
    out = {}
    for m in (manifest or {}).get("models", []) or []:
        if m.get("training_length"):
            out[m.get("name")] = int(m["training_length"])
            if m.get("fingerprint"):
                out[f"{m.get('name')}@{str(m['fingerprint'])[:8]}"] = int(m["training_length"])
    return out


def retrieval_average(df) -> pd.DataFrame:
    """RULER-style average per (model, attention, rope_theta, context_length) over the presets in `df` (the
    retrieval table): each preset's mean accuracy, recall and answer NLL, then the mean over presets (each
    preset weighs the same); `presets` counts them, `preset_names` lists them."""
    keys = model_columns(df)
    cols = {ACCURACY: (CORRECT, "mean")}
    cols.update({name: (name, "mean") for name in ("recall", ANSWER_NLL) if name in df.columns})
    per_preset = (df.assign(correct=df[CORRECT].astype(float))
                  .groupby([*keys, "task", CONTEXT_LENGTH], dropna=False, sort=False).agg(**cols).reset_index())
    grouped = per_preset.sort_values(CONTEXT_LENGTH, kind="stable").groupby([*keys, CONTEXT_LENGTH], dropna=False,
                                                                              sort=False)  # variants in order of appearance
    out = grouped[list(cols)].mean()
    out["presets"] = grouped["task"].nunique()
    out["preset_names"] = grouped["task"].agg(lambda s: ", ".join(sorted(map(str, set(s)))))
    return out.reset_index()


RULER_TASKS = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
               "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2")
"""RULER's thirteen tasks as this harness names them (the niah_* presets write `retrieval`, the rest `ruler`)."""


def ruler_average(*frames) -> pd.DataFrame:
    """RULER score per (model, attention, rope_theta, context_length): each RULER task's mean `ruler_score` (rows
    without one, e.g. from runs before it existed, are left out), then the mean over tasks (each weighs the same);
    also accuracy (full score) and answer NLL; `tasks` counts the tasks, `task_names` lists them."""
    parts = [f for f in frames if f is not None and not f.empty and "ruler_score" in f.columns]
    if not parts:
        return pd.DataFrame(columns=[*MODEL_COLUMNS, "context_length", "ruler_score", "accuracy", "tasks", "task_names"])
    df = pd.concat(parts, ignore_index=True)
    df = df[df["task"].isin(RULER_TASKS) & df["ruler_score"].notna()]
    keys = model_columns(df)
    cols = {"ruler_score": ("ruler_score", "mean"), "accuracy": ("correct", "mean")}
    if "answer_nll" in df.columns:
        cols["answer_nll"] = ("answer_nll", "mean")
    per_task = (df.assign(correct=df["correct"].astype(float))
                .groupby([*keys, "task", "context_length"], dropna=False, sort=False).agg(**cols).reset_index())
    grouped = per_task.sort_values("context_length", kind="stable").groupby([*keys, "context_length"], dropna=False,
                                                                            sort=False)
    out = grouped[list(cols)].mean()
    out["tasks"] = grouped["task"].nunique()
    out["task_names"] = grouped["task"].agg(lambda s: ", ".join(sorted(map(str, set(s)))))
    return out.reset_index()


def log_bucket_edges(stop: int, per_octave: int = 4) -> list[int]:
    """Integer edges 1 = e0 < e1 < ... < ek = stop of log-spaced buckets [e_i, e_{i+1}), `per_octave` per doubling."""
    if stop <= 1:
        return [1, 2]
    count = max(1, math.ceil(math.log2(stop) * per_octave))
    edges = np.unique(np.round(np.geomspace(1, stop, count + 1)).astype(int))
    return [int(e) for e in edges]


def bucket_positions(df, *, per_octave: int = 4, value: str = "mean_nll"):
    """Mean of `value` over log-spaced position buckets per (model, attention, rope_theta): bucket_start, bucket_end, mean_nll, n."""
    keys = model_columns(df)
    if df.empty:
        return pd.DataFrame(columns=[*keys, "bucket_start", "bucket_end", "mean_nll", "n"])
    edges = np.asarray(log_bucket_edges(int(df["position"].max()) + 1, per_octave))
    index = np.searchsorted(edges, df["position"].to_numpy(), side="right") - 1
    framed = df.assign(bucket_start=edges[index], bucket_end=edges[index + 1])
    out = (framed.groupby([*keys, "bucket_start", "bucket_end"], dropna=False, sort=True)[value]
           .agg(mean_nll="mean", n="size").reset_index())
    return out


def head_ranking(df):
    """Mean needle score per (model, attention, rope_theta, layer, head) over the prompts, best first, with `rank`."""
    keys = model_columns(df)
    ranked = (df.groupby([*keys, "layer", "head"], dropna=False)["needle_score"]
              .agg(needle_score="mean", prompts="size").reset_index())
    ranked = ranked.sort_values([*keys, "needle_score", "layer", "head"],
                                ascending=[True] * len(keys) + [False, True, True], kind="stable")
    ranked["rank"] = ranked.groupby(keys, dropna=False).cumcount() + 1 if keys else np.arange(1, len(ranked) + 1)
    return ranked.reset_index(drop=True)


def fading_quantiles(df, value: str = "max_weight", band=(0.25, 0.75)):
    """Median and band quantiles of `value` over heads (and prompts) per (model, attention, rope_theta, n)."""
    keys = model_columns(df)
    grouped = df.groupby([*keys, "n"], dropna=False)[value]
    out = grouped.median().rename("median").to_frame()
    out["low"] = grouped.quantile(band[0])
    out["high"] = grouped.quantile(band[1])
    return out.reset_index().sort_values([*keys, "n"])
