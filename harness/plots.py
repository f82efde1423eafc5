"""Plot functions `f(ax, df, ...) -> ax` over the run tables. Imports no torch, ever."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure

from harness.tables import (MODEL_COLUMNS as PANEL_KEYS, bucket_positions, fading_quantiles, head_ranking,  # noqa: F401
                            needle_accuracy_grid, training_lengths)

# ------------------------------------------------------------------------------------ needle heatmaps

NIAH_CMAP = LinearSegmentedColormap.from_list("niah", ["#d7301f", "#f5a623", "#fee08b", "#66bd63", "#1a9850"])
"""The needle-in-a-haystack palette: red (0) -> amber -> green (1)."""



def _theta_label(theta) -> str:
    if theta is None or (isinstance(theta, float) and math.isnan(theta)):
        return "θ=checkpoint"
    return f"θ={float(theta):g}"


def panel_title(model=None, attention=None, rope_theta=None) -> str:
    """'model · attention · θ=...' for a panel."""
    return " · ".join(p for p in (str(model) if model is not None else None,
                                   str(attention) if attention is not None else None,
                                   _theta_label(rope_theta)) if p)


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


def run_training_lengths(run_dir: Path) -> dict:
    """{model name: training length} over a run directory's manifest, or every run's in a folder of runs."""
    from harness import results

    dirs = [run_dir] if (run_dir / results.MANIFEST).is_file() else sorted(
        p.parent for p in run_dir.glob(f"*/{results.MANIFEST}"))
    train = {}
    for d in dirs:
        train.update(training_lengths(results.read_manifest(d)))
    return train


def draw_needle_heatmaps(run_dir, out_file=None) -> Path:
    """Draw the needle heatmaps of a run (`lch heatmap RUN_DIR`); default RUN_DIR/figures/needle_heatmap.png."""
    from harness import results
    from harness.errors import UserError

    run_dir = Path(run_dir)
    tables = results.load(run_dir)
    df = tables.get("needle")
    if df is None or df.empty:
        raise UserError(f"{run_dir}: no needle results (tables/needle.parquet is missing or empty)")
    train = run_training_lengths(run_dir)
    out = Path(out_file) if out_file else run_dir / "figures" / "needle_heatmap.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    needle_heatmap_figure(df, train_lengths=train).savefig(out, dpi=120, bbox_inches="tight")
    return out


def draw_heatmaps(run_dir, out_file=None) -> list[Path]:
    """`lch heatmap RUN_DIR`: the needle heatmaps, or one retrieval heatmap per preset (`<out>_<preset>.png`)."""
    from harness import results
    from harness.errors import UserError

    run_dir = Path(run_dir)
    tables = results.load(run_dir)
    if tables.get("needle") is not None and not tables["needle"].empty:
        return [draw_needle_heatmaps(run_dir, out_file)]
    df = tables.get("retrieval")
    if df is None or df.empty:
        raise UserError(f"{run_dir}: no needle or retrieval results to draw (tables/needle.parquet, tables/retrieval.parquet)")
    train = run_training_lengths(run_dir)
    base = Path(out_file) if out_file else run_dir / "figures" / "retrieval_heatmap.png"
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for task, part in df.groupby("task", sort=True):
        fig = needle_heatmap_figure(part, train_lengths=train, suptitle=str(task))
        fig.axes[-1].set_ylabel("accuracy (every asked value)")  # the shared colorbar
        out = base.with_name(f"{base.stem}_{task}{base.suffix or '.png'}")
        fig.savefig(out, dpi=120, bbox_inches="tight")
        paths.append(out)
    return paths


# ------------------------------------------------------------------------------- position loss curves


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
    for length in sorted({int(n) for n in lengths if n}):
        ax.axvline(length, color="black", linestyle=":", linewidth=1.2, label=f"training length ({length} tokens)")
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


# ------------------------------------------------------------------ attention probes (needle score, fading)

PROBE_OUTCOMES = (("correct", "#1a9850", "fully correct"), ("first_digit", "#f5a623", "first digit correct"),
                  ("wrong", "#d7301f", "wrong"))
"""Outcome of a greedy answer -> (colour, legend label), for the best-head plot."""


def head_label(layer, head) -> str:
    """'L{layer}H{head}', the paper's name of an attention head."""
    return f"L{int(layer)}H{int(head)}"


def top_heads_bar(ax, df, *, k: int = 25, title=None):
    """Figure 7's form: the k heads with the highest mean needle score of one model, as labelled bars."""
    ranked = head_ranking(df).head(k)
    labels = [head_label(layer, head) for layer, head in zip(ranked["layer"], ranked["head"])]
    ax.bar(range(len(ranked)), ranked["needle_score"].to_numpy(float), color="#3b6ea5")
    ax.set_xticks(range(len(ranked)), labels, rotation=90, fontsize=7)
    ax.set_xlim(-0.6, max(len(ranked), 1) - 0.4)
    ax.set_xlabel("attention head (layer, head)")
    prompts = int(ranked["prompts"].max()) if len(ranked) else 0
    ax.set_ylabel(f"needle score (mean of {prompts} prompt{'s' if prompts != 1 else ''})")
    ax.set_ylim(0, max(1e-3, float(ranked["needle_score"].max()) * 1.1 if len(ranked) else 1.0))
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(title or f"top {len(ranked)} heads by needle score", fontsize=10)
    return ax


def _outcome(correct, first_digit) -> str:
    return "correct" if bool(correct) else "first_digit" if bool(first_digit) else "wrong"


def best_head_trials(ax, df, *, head: tuple[int, int] | None = None, title=None):
    """Figure 8's form: the best head's needle score per prompt, descending, coloured by the greedy answer's outcome."""
    if head is None:
        best = head_ranking(df).iloc[0]
        head = (int(best["layer"]), int(best["head"]))
    rows = df[(df["layer"] == head[0]) & (df["head"] == head[1])].sort_values("needle_score", ascending=False)
    first = rows["first_digit_correct"] if "first_digit_correct" in rows.columns else rows["correct"]
    outcome = np.array([_outcome(c, f) for c, f in zip(rows["correct"], first)])
    x = np.arange(1, len(rows) + 1)
    y = rows["needle_score"].to_numpy(float)
    ax.plot(x, y, color="0.75", linewidth=1, zorder=1)
    for key, colour, label in PROBE_OUTCOMES:
        hit = outcome == key
        ax.scatter(x[hit], y[hit], s=18, color=colour, zorder=2, label=f"{label} ({int(hit.sum())})")
    ax.set_xlabel("prompt, sorted by needle score")
    ax.set_ylabel(f"needle score of {head_label(*head)}")
    ax.set_ylim(0, max(1e-3, float(y.max()) * 1.1) if len(y) else 1.0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"best head {head_label(*head)} per prompt", fontsize=10)
    return ax


def attention_fading_curves(ax, df, *, value: str = "max_weight", band=(0.25, 0.75), reference: bool = True):
    """Largest weight (or entropy) vs n on log x: median over heads per model, with an inter-quantile band."""
    stats = fading_quantiles(df, value, band)
    panels, keys = _panels(stats)
    for key, part in panels:
        named = dict(zip(keys, key))
        x = part["n"].to_numpy(float)
        line, = ax.plot(x, part["median"].to_numpy(float), marker=".", linewidth=1.5,
                        label=panel_title(*(named.get(k) for k in PANEL_KEYS)))
        ax.fill_between(x, part["low"].to_numpy(float), part["high"].to_numpy(float), color=line.get_color(),
                        alpha=0.2, linewidth=0)
    ns = np.unique(df["n"].to_numpy(float))
    if reference and len(ns):
        ref = 1.0 / ns if value == "max_weight" else np.log(ns)
        ax.plot(ns, ref, color="black", linestyle=":", linewidth=1,
                label="uniform (1/n)" if value == "max_weight" else "uniform (ln n)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("keys visible to the query row (n)")
    names = {"max_weight": "largest attention weight", "entropy": "attention entropy (nats)"}
    ax.set_ylabel(f"{names.get(value, value)}\n(median over heads, {band[0]:.0%}-{band[1]:.0%} band)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def top_heads_figure(df, *, k: int = 25) -> Figure:
    """One top-k needle-score bar chart per (model, attention, theta)."""
    panels, keys = _panels(df)
    fig = Figure(figsize=(max(6.0, 0.32 * k + 1.5), 3.4 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)
    for ax, (key, part) in zip(axes.flat, panels):
        name = panel_title(*(dict(zip(keys, key)).get(k2) for k2 in PANEL_KEYS))
        shown = min(k, len(part.groupby(["layer", "head"])))
        top_heads_bar(ax, part, k=k, title=f"{name}: top {shown} heads by needle score")
    return fig


def best_head_figure(df) -> Figure:
    """The best head's needle score per prompt, one panel per (model, attention, theta)."""
    panels, keys = _panels(df)
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (key, part) in zip(axes.flat, panels):
        best = head_ranking(part).iloc[0]
        head = (int(best["layer"]), int(best["head"]))
        name = panel_title(*(dict(zip(keys, key)).get(k) for k in PANEL_KEYS))
        best_head_trials(ax, part, head=head, title=f"{name}\nbest head {head_label(*head)}")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    return fig


def attention_fading_figure(df) -> Figure:
    """Attention fading: largest weight and entropy vs n (log x), one line per (model, attention, theta)."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    attention_fading_curves(left, df, value="max_weight")
    left.set_title("largest attention weight vs n", fontsize=10)
    attention_fading_curves(right, df, value="entropy")
    right.set_title("attention entropy vs n", fontsize=10)
    return fig
