"""The report's tables: one headline row per model variant (accuracy by length as a multiple of the training
length, effective length, NLL beyond the training length) and retrieval per preset. Pandas only, no torch."""

from __future__ import annotations

import re

import pandas as pd

from harness.columns import ACCURACY, ANSWER_NLL, CONTEXT_LENGTH, CORRECT
from harness.results.tables import MODEL_COLUMNS, effective_length, retrieval_average, ruler_average, variant_keys

THRESHOLD = 0.8
"""Accuracy a length (and every shorter one) must reach to count towards the effective length."""

BEYOND = "beyond training length"


def multiple(length, train) -> str:
    """A length as a multiple of the training length: '1×', '16×', '0.5×'."""
    m = float(length) / float(train)
    return f"{round(m)}×" if m >= 1 and abs(m - round(m)) < 0.01 * m else f"{m:.3g}×"


def length_column(prefix: str, length, train) -> str:
    """'needle acc @2×' (training length known) or 'needle acc @4096' (tokens)."""
    return f"{prefix} @{multiple(length, train)}" if train else f"{prefix} @{int(length)}"


def by_variant(df):
    """[(variant key, rows)] in order of first appearance; None and NaN thetas are the same variant."""
    keys = variant_keys(df)
    positions: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        positions.setdefault(key, []).append(i)
    return [(key, df.iloc[rows]) for key, rows in positions.items()]


def _present(tables, name):
    df = tables.get(name)
    return df if df is not None and not df.empty else None


def _mean(series) -> float | None:
    return round(float(series.mean()), 4) if len(series) and series.notna().any() else None


def accuracy_row(prefix: str, accuracy: dict, train, threshold: float = THRESHOLD) -> dict:
    """'{prefix}acc @…' at every length (multiples of `train` when known) and '{prefix}effective length'."""
    row = {length_column(f"{prefix}acc", length, train): round(float(acc), 3) for length, acc in sorted(accuracy.items())}
    row[f"{prefix}effective length"] = effective_length(accuracy, threshold)
    return row


def needle_rows(needle, train_lengths, threshold=THRESHOLD) -> dict:
    """{variant: headline columns} of the needle table."""
    out = {}
    for key, part in by_variant(needle):
        train = train_lengths.get(key[0])
        accuracy = part.assign(correct=part[CORRECT].astype(float)).groupby(CONTEXT_LENGTH)[CORRECT].mean()
        row = accuracy_row("needle ", accuracy.to_dict(), train, threshold)
        if train and ANSWER_NLL in part.columns:
            row[f"needle answer NLL {BEYOND}"] = _mean(part.loc[part[CONTEXT_LENGTH] > train, ANSWER_NLL])
        out[key] = row
    return out


def retrieval_rows(retrieval, train_lengths, threshold=THRESHOLD) -> dict:
    """{variant: headline columns} of the retrieval table, RULER-style: the mean over presets at each length."""
    out = {}
    for key, part in by_variant(retrieval_average(retrieval)):
        train = train_lengths.get(key[0])
        row = accuracy_row("retrieval ", dict(zip(part[CONTEXT_LENGTH], part[ACCURACY])), train, threshold)
        if train and ANSWER_NLL in part.columns:
            row[f"retrieval answer NLL {BEYOND}"] = _mean(part.loc[part[CONTEXT_LENGTH] > train, ANSWER_NLL])
        out[key] = row
    return out


def ruler_rows(retrieval, ruler, train_lengths) -> dict:
    """{variant: 'RULER score @…' per length and 'RULER tasks'}: the mean RULER score over the RULER tasks that ran."""
    out = {}
    for key, part in by_variant(ruler_average(retrieval, ruler)):
        train = train_lengths.get(key[0])
        row = {length_column("RULER score", length, train): round(float(score), 3)
               for length, score in sorted(zip(part["context_length"], part["ruler_score"]))}
        row["RULER tasks"] = int(part["tasks"].max())
        out[key] = row
    return out


def loss_rows(loss, train_lengths) -> dict:
    """{variant: headline columns} of the per-position loss: mean NLL inside / beyond the training length."""
    out = {}
    for key, part in by_variant(loss):
        train, row = train_lengths.get(key[0]), {}
        if train:
            row["NLL inside training length"] = _mean(part.loc[part["position"] < train, "mean_nll"])
            row[f"NLL {BEYOND}"] = _mean(part.loc[part["position"] >= train, "mean_nll"])
        row["NLL all positions"] = _mean(part["mean_nll"])
        out[key] = row
    return out


GROUPS = ("needle acc", "needle effective length", f"needle answer NLL {BEYOND}", "retrieval acc",
          "retrieval effective length", f"retrieval answer NLL {BEYOND}", "RULER score", "RULER tasks", "NLL inside training length", f"NLL {BEYOND}",
          "NLL all positions")
"""Headline column groups, in the order they are shown."""


def _column_order(column: str) -> tuple:
    group, _, at = column.partition(" @")
    rank = GROUPS.index(group) if group in GROUPS else len(GROUPS)
    if not at:
        return rank, 0, 0.0
    times = re.fullmatch(r"([0-9.e+-]+)×", at)
    return (rank, 0, float(times.group(1))) if times else (rank, 1, float(at))


def headline_table(tables: dict, train_lengths: dict, threshold: float = THRESHOLD) -> pd.DataFrame:
    """Per model variant: training length, needle and retrieval accuracy by length (as multiples of the
    training length when known), effective lengths, answer NLL beyond the training length, the RULER score
    by length (mean over the RULER tasks that ran), and the mean per-position NLL inside / beyond it."""
    parts = []
    if (needle := _present(tables, "needle")) is not None:
        parts.append(needle_rows(needle, train_lengths, threshold))
    if (retrieval := _present(tables, "retrieval")) is not None:
        parts.append(retrieval_rows(retrieval, train_lengths, threshold))
    if (ruler := ruler_rows(_present(tables, "retrieval"), _present(tables, "ruler"), train_lengths)):
        parts.append(ruler)
    if (loss := _present(tables, "position_loss")) is not None:
        parts.append(loss_rows(loss, train_lengths))
    rows: dict[tuple, dict] = {}
    for part in parts:
        for key, row in part.items():
            rows.setdefault(key, {}).update(row)
    out = pd.DataFrame([{**dict(zip(MODEL_COLUMNS, key)), "training length": train_lengths.get(key[0]), **row}
                        for key, row in rows.items()])
    if out.empty:
        return pd.DataFrame(columns=[*MODEL_COLUMNS, "training length"])
    front = [*MODEL_COLUMNS, "training length"]
    out = out[front + sorted((c for c in out.columns if c not in front), key=_column_order)]
    return _integer_columns(out)


def _integer_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Training and effective lengths as nullable integers (no '256.0' where a row has none)."""
    for column in df.columns:
        if column in ("training length", "RULER tasks") or column.endswith("effective length"):
            df[column] = pd.array([None if pd.isna(v) else int(v) for v in df[column]], dtype="Int64")
    return df


def retrieval_preset_table(retrieval, train_lengths: dict, threshold: float = THRESHOLD) -> pd.DataFrame:
    """Per (variant, preset): accuracy by length (multiples of the training length), effective length,
    mean recall and answer NLL beyond the training length."""
    rows = []
    for preset, part in retrieval.groupby("task", sort=True):
        for key, rows_of in by_variant(part):
            train = train_lengths.get(key[0])
            accuracy = rows_of.assign(correct=rows_of[CORRECT].astype(float)).groupby(CONTEXT_LENGTH)[CORRECT].mean()
            row = {**dict(zip(MODEL_COLUMNS, key)), "preset": preset, "training length": train,
                   **accuracy_row("", accuracy.to_dict(), train, threshold)}
            row["recall"] = _mean(rows_of["recall"]) if "recall" in rows_of.columns else None
            if train and ANSWER_NLL in rows_of.columns:
                row[f"answer NLL {BEYOND}"] = _mean(rows_of.loc[rows_of[CONTEXT_LENGTH] > train, ANSWER_NLL])
            rows.append(row)
    out = pd.DataFrame(rows)
    front = [*MODEL_COLUMNS, "preset", "training length"]
    acc = sorted((c for c in out.columns if c.startswith("acc @")), key=_column_order)
    return _integer_columns(out[front + acc + [c for c in out.columns if c not in front and c not in acc]])
