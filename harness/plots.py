"""Plot functions `f(ax, df, ...) -> ax` over the run tables. Imports no torch, ever."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure

# ------------------------------------------------------------------------------------ needle heatmaps

NIAH_CMAP = LinearSegmentedColormap.from_list("niah", ["#d7301f", "#f5a623", "#fee08b", "#66bd63", "#1a9850"])
"""The needle-in-a-haystack palette: red (0) -> amber -> green (1)."""

PANEL_KEYS = ("model", "attention", "rope_theta")


def _theta_label(theta) -> str:
    if theta is None or (isinstance(theta, float) and math.isnan(theta)):
        return "θ=checkpoint"
    return f"θ={float(theta):g}"


def panel_title(model=None, attention=None, rope_theta=None) -> str:
    """'model · attention · θ=...' for a panel."""
    return " · ".join(p for p in (str(model) if model is not None else None,
                                   str(attention) if attention is not None else None,
                                   _theta_label(rope_theta)) if p)


def needle_accuracy_grid(df):
    """Mean `correct` as a DataFrame: rows = depth (ascending), columns = context length (ascending)."""
    grid = df.assign(correct=df["correct"].astype(float)).pivot_table(
        index="depth", columns="context_length", values="correct", aggfunc="mean")
    return grid.sort_index().sort_index(axis=1)


def _train_line_x(lengths, train_length) -> float:
    """x of the line between the last length <= train_length and the next (categorical axis)."""
    inside = sum(1 for length in lengths if length <= train_length)
    return inside - 0.5


def needle_heatmap(ax, df, *, train_length=None, title=None, annotate=True, colorbar=False):
    """Accuracy heatmap of one model's needle rows: x = context length, y = depth, colour fixed on 0..1."""
    grid = needle_accuracy_grid(df)
    lengths, depths = [int(c) for c in grid.columns], [float(d) for d in grid.index]
    image = ax.imshow(grid.to_numpy(dtype=float), cmap=NIAH_CMAP, vmin=0.0, vmax=1.0, aspect="auto",
                      interpolation="nearest")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    if annotate:
        for (i, j), value in np.ndenumerate(grid.to_numpy(dtype=float)):
            if not math.isnan(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if value < 0.25 or value > 0.85 else "black")
    if train_length:
        ax.axvline(_train_line_x(lengths, train_length), color="black", linestyle="--", linewidth=1.5,
                   label=f"training length {train_length}")
    if title is None:
        first = df.iloc[0] if len(df) else {}
        title = panel_title(*(first.get(k) if k in df.columns else None for k in PANEL_KEYS))
    ax.set_title(title, fontsize=10)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, label="accuracy")
    return ax


def _panels(df):
    """([(key tuple, rows)] per (model, attention, rope_theta) present, in order of appearance; key names)."""
    keys = [k for k in PANEL_KEYS if k in df.columns]
    if not keys:
        return [((), df)], keys
    groups = df.groupby(keys, dropna=False, sort=False)
    return [(k if isinstance(k, tuple) else (k,), part) for k, part in groups], keys


def needle_heatmap_figure(df, *, train_lengths=None, suptitle=None, ncols=None) -> Figure:
    """One needle heatmap per (model, attention, theta) with a shared 0..1 colorbar (no pyplot state).

    train_lengths: {model name: training length} (or one int for all panels); a dashed line marks it.
    """
    panels, keys = _panels(df)
    n = len(panels)
    ncols = ncols or min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.2 * ncols + 1.0, 3.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (key, part) in zip(axes.flat, panels):
        named = dict(zip(keys, key))
        train = train_lengths
        if isinstance(train_lengths, dict):
            train = train_lengths.get(named.get("model"))
        needle_heatmap(ax, part, train_length=train, title=panel_title(*(named.get(k) for k in PANEL_KEYS)))
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    mappable = axes.flat[0].images[0]
    fig.colorbar(mappable, ax=axes.ravel().tolist(), label="accuracy (all digits)", shrink=0.9)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def training_lengths(manifest: dict | None) -> dict:
    """{model name: training length} from a run manifest's models (entries without one are left out)."""
    out = {}
    for m in (manifest or {}).get("models", []) or []:
        if m.get("training_length"):
            out[m.get("name")] = int(m["training_length"])
    return out


def draw_needle_heatmaps(run_dir, out_file=None) -> Path:
    """Draw the needle heatmaps of a run (`lch heatmap RUN_DIR`); default RUN_DIR/figures/needle_heatmap.png."""
    from harness import results
    from harness.errors import UserError

    run_dir = Path(run_dir)
    tables = results.load(run_dir)
    df = tables.get("needle")
    if df is None or df.empty:
        raise UserError(f"{run_dir}: no needle results (tables/needle.parquet is missing or empty)")
    manifests = [results.read_manifest(d) for d in ([run_dir] if (run_dir / results.MANIFEST).is_file()
                                                    else sorted(p.parent for p in run_dir.glob(f"*/{results.MANIFEST}")))]
    train = {}
    for manifest in manifests:
        train.update(training_lengths(manifest))
    out = Path(out_file) if out_file else run_dir / "figures" / "needle_heatmap.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    needle_heatmap_figure(df, train_lengths=train).savefig(out, dpi=120, bbox_inches="tight")
    return out


# ------------------------------------------------------------------------------- position loss curves


def log_bucket_edges(stop: int, per_octave: int = 4) -> list[int]:
    """Integer edges 1 = e0 < e1 < ... < ek = stop of log-spaced buckets [e_i, e_{i+1}), `per_octave` per doubling."""
    if stop <= 1:
        return [1, 2]
    count = max(1, math.ceil(math.log2(stop) * per_octave))
    edges = np.unique(np.round(np.geomspace(1, stop, count + 1)).astype(int))
    return [int(e) for e in edges]


def bucket_positions(df, *, per_octave: int = 4, value: str = "mean_nll"):
    """Mean of `value` over log-spaced position buckets per (model, attention, rope_theta): bucket_start, bucket_end, mean_nll, n."""
    import pandas as pd

    keys = [k for k in PANEL_KEYS if k in df.columns]
    if df.empty:
        return pd.DataFrame(columns=[*keys, "bucket_start", "bucket_end", "mean_nll", "n"])
    edges = np.asarray(log_bucket_edges(int(df["position"].max()) + 1, per_octave))
    index = np.searchsorted(edges, df["position"].to_numpy(), side="right") - 1
    framed = df.assign(bucket_start=edges[index], bucket_end=edges[index + 1])
    out = (framed.groupby([*keys, "bucket_start", "bucket_end"], dropna=False, sort=True)[value]
           .agg(mean_nll="mean", n="size").reset_index())
    return out


def position_loss_curves(ax, df, *, train_length=None, per_octave: int = 4):
    """Test loss vs position (log x), one line per (model, attention, theta), smoothed over log-spaced buckets.

    df: the `position_loss_buckets` table (bucket_start, bucket_end, mean_nll) or the per-position
    `position_loss` table (position, mean_nll), which is bucketed here. train_length: an int, a
    {model: length} dict, or None; a dotted vertical line marks each distinct length.
    """
    if "bucket_start" not in df.columns:
        df = bucket_positions(df, per_octave=per_octave)
    panels, keys = _panels(df)
    for key, part in panels:
        named = dict(zip(keys, key))
        part = part.sort_values("bucket_start")
        # x = geometric middle of [start, end - 1], the positions the bucket averages
        x = np.sqrt(part["bucket_start"].to_numpy(float) * np.maximum(part["bucket_end"].to_numpy(float) - 1, 1))
        ax.plot(x, part["mean_nll"].to_numpy(float), marker=".", linewidth=1.5,
                label=panel_title(*(named.get(k) for k in PANEL_KEYS)))
    lengths = train_length.values() if isinstance(train_length, dict) else [train_length]
    for i, length in enumerate(sorted({int(n) for n in lengths if n})):
        ax.axvline(length, color="black", linestyle=":", linewidth=1.2,
                   label="training length" if i == 0 else None)
    ax.set_xscale("log")
    ax.set_xlabel("position of the predicted token (tokens)")
    ax.set_ylabel("test loss (nats / token)")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return ax


# ---------------------------------------------------------------------------- comparison (lch compare)

DIFF_CMAP = "RdBu"
"""Diverging palette for B minus A: red where B is worse, blue where B is better."""


def needle_difference_heatmap(ax, df_a, df_b, *, title=None, annotate=True):
    """Accuracy of B minus A per (depth, context length) on a fixed -1..1 scale."""
    grid_a, grid_b = needle_accuracy_grid(df_a), needle_accuracy_grid(df_b)
    diff = grid_b.sub(grid_a).dropna(how="all").dropna(axis=1, how="all")
    lengths, depths = [int(c) for c in diff.columns], [float(d) for d in diff.index]
    values = diff.to_numpy(dtype=float)
    ax.imshow(values, cmap=DIFF_CMAP, vmin=-1.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    if annotate:
        for (i, j), value in np.ndenumerate(values):
            if not math.isnan(value):
                ax.text(j, i, f"{value:+.2f}", ha="center", va="center", fontsize=8,
                        color="white" if abs(value) > 0.6 else "black")
    ax.set_title(title or "accuracy difference (B − A)", fontsize=9)
    return ax
