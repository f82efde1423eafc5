"""Paired comparison of model variants on the same prompts (`lch compare --baseline`): per length, the accuracy
difference with an Agresti-Min interval (trials as clusters) and an exact McNemar p, Holm-corrected across
lengths, and the answer-NLL difference with a t interval over trials. Pandas + harness.results.stats; no torch.

Prompts pair by their coordinates (task, context_length, depth, trial) and must be the same tokens: rows carry a
`prompt_fingerprint` (hash of the prompt and answer token ids); rows of older runs without it pair by
coordinates alone, and the table says so.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd

from harness.results import stats
from harness.errors import UserError
from harness.results.tables import MODEL_COLUMNS, variant_keys

PAIR_KEYS = ("task", "context_length", "depth", "trial")
"""Coordinates that name one prompt of a run (those present in the table)."""

FINGERPRINT = "prompt_fingerprint"


class UnpairedPrompts(UserError):
    """Two variants' prompts at the same coordinates are not the same tokens."""


def prompt_fingerprint(input_ids, answer_ids=()) -> str:
    """16 hex digits of sha256 over the prompt's and the gold answer's token ids."""
    text = ",".join(map(str, input_ids)) + "|" + ",".join(map(str, answer_ids))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_baseline(text: str, keys: list[tuple]) -> tuple:
    """The variant key named by 'MODEL|ATTENTION|THETA' (attention and theta optional; theta '' / 'checkpoint' /
    'none' = unset) among `keys`; a UserError lists them when none or several match."""
    parts = [p.strip() for p in str(text).split("|")]
    if len(parts) > 3 or not parts[0]:
        raise UserError(f"--baseline {text!r} is not MODEL|ATTENTION|THETA")

    def fits(key) -> bool:
        if key[0] != parts[0] or (len(parts) > 1 and parts[1] and key[1] != parts[1]):
            return False
        if len(parts) < 3:
            return True
        theta = parts[2].lower()
        if theta in ("", "checkpoint", "none", "nan"):
            return key[2] is None
        try:
            return key[2] is not None and math.isclose(float(theta), key[2])
        except ValueError:
            return False

    found = [k for k in keys if fits(k)]
    if len(found) != 1:
        listed = "; ".join("|".join("" if v is None else str(v) for v in k) for k in keys)
        raise UserError(f"--baseline {text!r} matches {len(found)} variants; give one of: {listed}")
    return found[0]


def _explain(a: pd.DataFrame, b: pd.DataFrame, run_params: dict) -> str:
    """Why two variants' prompts differ: another seed, corpus or tokenizer, from the runs' params and rows."""
    causes = []
    pa, pb = (run_params.get(df["run"].iloc[0], {}) if "run" in df.columns else {} for df in (a, b))
    for name in ("seed", "corpus", "template", "digits", "cities"):
        if name in pa and name in pb and pa[name] != pb[name]:
            causes.append(f"another {name} ({pa[name]} vs {pb[name]})")
    if not causes and a["model"].iloc[0] != b["model"].iloc[0]:
        causes.append(f"another tokenizer ({a['model'].iloc[0]} vs {b['model'].iloc[0]} tokenise the text differently)")
    return ", ".join(causes) or "other prompt parameters"


def pair(a: pd.DataFrame, b: pd.DataFrame, run_params: dict | None = None) -> tuple[pd.DataFrame, str]:
    """Rows of variants A and B joined on the prompt coordinates; ('fingerprint' | 'coordinates', how they paired).

    Raises UnpairedPrompts (naming the cause) when matched prompts carry different fingerprints.
    """
    keys = [k for k in PAIR_KEYS if k in a.columns and k in b.columns]
    cols = [c for c in ("correct", "answer_nll", FINGERPRINT, "model", "run") if c in a.columns]
    joined = a[keys + cols].merge(b[keys + [c for c in cols if c in b.columns]], on=keys, suffixes=("_a", "_b"))
    fa, fb = f"{FINGERPRINT}_a", f"{FINGERPRINT}_b"
    if fa in joined.columns and fb in joined.columns:
        both = joined[fa].notna() & joined[fb].notna()
        differ = both & (joined[fa] != joined[fb])
        if differ.any():
            raise UnpairedPrompts(
                f"{int(differ.sum())} of {len(joined)} prompts of {label(variant_keys(a)[0])} and "
                f"{label(variant_keys(b)[0])} are not the same tokens: {_explain(a, b, run_params or {})}; "
                "not paired")
        how = "fingerprint" if both.all() else "coordinates"
    else:
        how = "coordinates"
    return joined, how


def label(key: tuple) -> str:
    """'MODEL|ATTENTION|THETA' of a variant key (the --baseline spelling)."""
    return "|".join("" if v is None else (f"{v:g}" if isinstance(v, float) else str(v)) for v in key)


def compare_pair(joined: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per `by` group of paired rows: accuracy of each, B - A with its interval, McNemar p, NLL difference."""
    rows = []
    for group, part in joined.groupby(by, sort=True):
        group = group if isinstance(group, tuple) else (group,)
        clusters = part["trial"].to_numpy() if "trial" in part.columns else None
        a, b = part["correct_a"].astype(bool).to_numpy(), part["correct_b"].astype(bool).to_numpy()
        diff = stats.paired_difference(a, b, clusters)
        row = {**dict(zip(by, group)), "n": diff["n"], "baseline_acc": float(a.mean()), "acc": float(b.mean()),
               "diff": diff["diff"], "diff_low": diff["diff_low"], "diff_high": diff["diff_high"],
               "only_baseline": diff["only_a"], "only_variant": diff["only_b"], "p_mcnemar": diff["p_value"]}
        if "answer_nll_a" in part.columns and "answer_nll_b" in part.columns:
            mean, low, high = stats.paired_mean_difference(part["answer_nll_a"], part["answer_nll_b"], clusters)
            row.update(nll_diff=mean, nll_diff_low=low, nll_diff_high=high)
        rows.append(row)
    out = pd.DataFrame(rows)
    if not out.empty:
        out["p_holm"] = stats.holm(out["p_mcnemar"].tolist())
        out["excludes_0"] = (out["diff_low"] > 0) | (out["diff_high"] < 0)
    return out


def versus_baseline(df: pd.DataFrame, baseline: str | None = None, run_params: dict | None = None
                    ) -> tuple[pd.DataFrame, list[str]]:
    """Every variant of `df` (a needle or retrieval table) against the baseline (default: the first), per
    (task,) context_length; Holm across the lengths of each (variant, task). Returns (table, notes)."""
    keys = list(dict.fromkeys(variant_keys(df)))
    base = keys[0] if baseline is None else parse_baseline(baseline, keys)
    per_row = variant_keys(df)
    rows_of = {k: df[[r == k for r in per_row]] for k in keys}
    by = [c for c in ("task", "context_length") if c in df.columns]
    tables, notes = [], []
    for key in keys:
        if key == base:
            continue
        try:
            joined, how = pair(rows_of[base], rows_of[key], run_params)
        except UnpairedPrompts as e:
            notes.append(str(e))
            continue
        if joined.empty:
            notes.append(f"{label(key)} shares no prompt coordinates with {label(base)}; not paired")
            continue
        if how == "coordinates":
            notes.append(f"{label(key)}: paired by coordinates (task, length, depth, trial) only; a run without "
                         f"{FINGERPRINT} cannot show the prompts are the same tokens")
        part = compare_pair(joined, by)
        part.insert(0, "baseline", label(base))
        for i, column in enumerate(MODEL_COLUMNS):
            part.insert(i, column, key[i])
        part["paired_by"] = how
        tables.append(part)
    return (pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()), notes


def report_table(table: pd.DataFrame) -> pd.DataFrame:
    """versus_baseline for reading: 'B - A [low-high]' with a mark where the interval excludes 0, p values."""
    if table.empty:
        return table
    out = table[[c for c in (*MODEL_COLUMNS, "task", "context_length", "n") if c in table.columns]].copy()
    out["baseline acc"] = table["baseline_acc"].round(2)
    out["acc"] = table["acc"].round(2)
    out["difference [95%]"] = [f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]" + (" *" if ex else "")
                               for d, lo, hi, ex in zip(table["diff"], table["diff_low"], table["diff_high"],
                                                        table["excludes_0"])]
    out["McNemar p"] = [f"{p:.3g}" for p in table["p_mcnemar"]]
    out["Holm p"] = [f"{p:.3g}" for p in table["p_holm"]]
    if "nll_diff" in table.columns:
        out["answer NLL difference [95%]"] = [
            "–" if np.isnan(d) else (f"{d:+.3f}" if np.isnan(lo) else f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]")
            for d, lo, hi in zip(table["nll_diff"], table["nll_diff_low"], table["nll_diff_high"])]
    return out

