"""Compare runs: every task's figures over the merged tables, a needle difference heatmap, a headline
table per model, and one self-contained report.html. Imports no torch."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from harness import results
from harness.atomic import write_text
from harness.plots import PANEL_KEYS, needle_difference_heatmap, panel_title, training_lengths


def merged_manifest(run_dirs) -> dict:
    """One manifest-like dict whose `models` holds every model of every run (for training lengths)."""
    models = []
    for run_dir in results.expand_runs(run_dirs):
        models += results.read_manifest(run_dir).get("models", [])
    return {"models": models}


def variants(df: pd.DataFrame) -> list[tuple]:
    """The (model, attention, rope_theta) combinations present, in order of appearance."""
    return list(df[list(PANEL_KEYS)].drop_duplicates().itertuples(index=False, name=None))


def headline_table(tables: dict[str, pd.DataFrame], train_lengths: dict[str, int]) -> pd.DataFrame:
    """Per model variant: effective needle length, accuracy at each length, mean NLL inside/beyond training."""
    from harness.tables import effective_length

    rows: dict[tuple, dict] = {}
    needle = tables.get("needle")
    if needle is not None and not needle.empty:
        for key, part in needle.groupby(list(PANEL_KEYS), dropna=False, sort=False):
            row = rows.setdefault(key, {})
            by_length = part.groupby("context_length")["correct"].mean().sort_index()
            row.update({f"needle acc @{length}": round(float(acc), 3) for length, acc in by_length.items()})
            row["effective length"] = effective_length(by_length.to_dict(), threshold=0.8)
    loss = tables.get("position_loss")
    if loss is not None and not loss.empty:
        for key, part in loss.groupby(list(PANEL_KEYS), dropna=False, sort=False):
            row = rows.setdefault(key, {})
            train = train_lengths.get(key[0])
            if train:
                inside, beyond = part[part["position"] < train], part[part["position"] >= train]
                row["NLL inside training length"] = _mean(inside["mean_nll"])
                row["NLL beyond training length"] = _mean(beyond["mean_nll"])
            row["NLL all positions"] = _mean(part["mean_nll"])
    out = pd.DataFrame([{**dict(zip(PANEL_KEYS, key)), "training length": train_lengths.get(key[0]), **row}
                        for key, row in rows.items()])
    return out


def _mean(series: pd.Series) -> float | None:
    return round(float(series.mean()), 4) if len(series) else None


def difference_figure(needle: pd.DataFrame) -> Figure | None:
    """B minus A accuracy heatmaps: every variant against the first one present (None with one variant)."""
    keys = variants(needle)
    if len(keys) < 2:
        return None
    first = needle[(needle[list(PANEL_KEYS)].apply(tuple, axis=1)) == keys[0]]
    others = keys[1:]
    fig = Figure(figsize=(4.4 * len(others) + 1.0, 3.6), layout="constrained")
    axes = fig.subplots(1, len(others), squeeze=False)[0]
    for ax, key in zip(axes, others):
        part = needle[(needle[list(PANEL_KEYS)].apply(tuple, axis=1)) == key]
        needle_difference_heatmap(ax, first, part, title=f"{panel_title(*key)}\nminus {panel_title(*keys[0])}")
    fig.colorbar(axes[0].images[0], ax=list(axes), label="accuracy difference (B − A)", shrink=0.9)
    return fig


def compare_runs(run_dirs, out_dir) -> Path:
    """Draw the comparison of `run_dirs` into `out_dir` and write `out_dir/report.html`; returns its path."""
    from harness.task import get_task

    out_dir = Path(out_dir)
    tables = results.load(*run_dirs)
    manifest = merged_manifest(run_dirs)
    train = training_lengths(manifest)
    figures_dir = out_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    figures: list[Path] = []
    task_names = {results.read_manifest(d).get("task") for d in results.expand_runs(run_dirs)}
    for name in sorted(filter(None, task_names)):
        figures += get_task(name).figures(tables, manifest, figures_dir) or []
    if "needle" in tables and (fig := difference_figure(tables["needle"])) is not None:
        path = figures_dir / "needle_difference.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        figures.append(path)
    headline = headline_table(tables, train)
    write_text(out_dir / "headline.csv", headline.to_csv(index=False))
    report = out_dir / "report.html"
    write_text(report, render_html(headline, figures, [str(d) for d in results.expand_runs(run_dirs)]))
    return report


def render_html(headline: pd.DataFrame, figures: list[Path], runs: list[str]) -> str:
    """A self-contained HTML page: the headline table and every figure embedded as base64 PNG."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>lch comparison</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "img{max-width:100%;margin:1em 0}</style></head><body>",
             "<h1>Long-context comparison</h1>",
             "<p>Runs: " + ", ".join(f"<code>{html.escape(r)}</code>" for r in runs) + "</p>",
             "<h2>Headline numbers</h2>", headline.to_html(index=False, na_rep="–", float_format=_fmt),
             "<h2>Figures</h2>"]
    for figure in figures:
        data = base64.b64encode(Path(figure).read_bytes()).decode()
        parts.append(f"<h3>{html.escape(Path(figure).stem.replace('_', ' '))}</h3>"
                     f"<img alt='{html.escape(Path(figure).name)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _fmt(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"
