"""Attention-probe figures: needle score per head (Figures 7-8) and attention fading. Imports no torch."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from harness.columns import CORRECT
from harness.plots.curves import legend_with_shared, training_length_lines
from harness.plots.heatmaps import full_keys, panels
from harness.plots.labels import chars_per_line, figure_title, grid_shape, panel_names, shared_line, wrap_title
from harness.results.tables import fading_quantiles, head_ranking

PROBE_OUTCOMES = ((CORRECT, "#1a9850", "fully correct"), ("first_digit", "#f5a623", "first digit correct"),
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
    ax.set_ylabel(f"needle score\n(mean of {prompts} prompt{'s' if prompts != 1 else ''})")
    ax.set_ylim(0, max(1e-3, float(ranked["needle_score"].max()) * 1.1 if len(ranked) else 1.0))
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(title or f"top {len(ranked)} heads by needle score", fontsize=10)
    return ax


def _outcome(correct, first_digit) -> str:
    return CORRECT if bool(correct) else "first_digit" if bool(first_digit) else "wrong"


def best_head_trials(ax, df, *, head: tuple[int, int] | None = None, title=None):
    """Figure 8's form: the best head's needle score per prompt, descending, coloured by the greedy answer's outcome."""
    if head is None:
        best = head_ranking(df).iloc[0]
        head = (int(best["layer"]), int(best["head"]))
    rows = df[(df["layer"] == head[0]) & (df["head"] == head[1])].sort_values("needle_score", ascending=False)
    first = rows["first_digit_correct"] if "first_digit_correct" in rows.columns else rows[CORRECT]
    outcome = np.array([_outcome(c, f) for c, f in zip(rows[CORRECT], first)])
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


def attention_fading_curves(ax, df, *, value: str = "max_weight", band=(0.25, 0.75), reference: bool = True,
                            train_length=None):
    """Largest weight (or entropy) vs n on log x: median over heads per model, with an inter-quantile band.
    Line labels leave out what every line shares; the legend title says it. train_length (an int, a
    {model: length} dict, or None): a dotted vertical line at each distinct training length."""
    stats = fading_quantiles(df, value, band)
    panel_list, keys = panels(stats)
    names = panel_names(full_keys(panel_list, keys))
    for (key, part), label in zip(panel_list, names.titles):
        x = part["n"].to_numpy(float)
        line, = ax.plot(x, part["median"].to_numpy(float), marker=".", linewidth=1.5, label=label)
        ax.fill_between(x, part["low"].to_numpy(float), part["high"].to_numpy(float), color=line.get_color(),
                        alpha=0.2, linewidth=0)
    ns = np.unique(df["n"].to_numpy(float))
    if reference and len(ns):
        ref = 1.0 / ns if value == "max_weight" else np.log(ns)
        ax.plot(ns, ref, color="black", linestyle=":", linewidth=1,
                label="uniform (1/n)" if value == "max_weight" else "uniform (ln n)")
    training_length_lines(ax, train_length, df["model"].unique() if "model" in df.columns else None)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("keys visible to the query row (n)")
    names_of = {"max_weight": "largest attention weight", "entropy": "attention entropy (nats)"}
    ax.set_ylabel(f"{names_of.get(value, value)}\n(median over heads, {band[0]:.0%}-{band[1]:.0%} band)")
    ax.grid(True, which="both", alpha=0.3)
    legend_with_shared(ax, names.shared)
    return ax


def top_heads_figure(df, *, k: int = 25) -> Figure:
    """One top-k needle-score bar chart per (model, attention, theta), stacked; shared name parts in the suptitle."""
    panel_list, keys = panels(df)
    names = panel_names(full_keys(panel_list, keys))
    width = max(6.0, 0.32 * k + 1.5)
    fig = Figure(figsize=(width, 3.0 * len(panel_list) + 0.4), layout="constrained")
    axes = fig.subplots(len(panel_list), 1, squeeze=False)
    for ax, (key, part), name in zip(axes.flat, panel_list, names.titles):
        shown = min(k, len(part.groupby(["layer", "head"])))
        text = f"{name}: top {shown} heads by needle score" if name else f"top {shown} heads by needle score"
        top_heads_bar(ax, part, k=k, title=wrap_title(text, chars_per_line(width - 1.0)))
    if names.shared:
        fig.suptitle(shared_line(names.shared, width), fontsize=11)
    return fig


def best_head_figure(df) -> Figure:
    """The best head's needle score per prompt, one panel per (model, attention, theta)."""
    panel_list, keys = panels(df)
    names = panel_names(full_keys(panel_list, keys))
    width = 4.2
    ncols, nrows = grid_shape(len(panel_list), width)
    fig = Figure(figsize=(width * ncols, 3.3 * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (key, part), name in zip(axes.flat, panel_list, names.titles):
        best = head_ranking(part).iloc[0]
        head = (int(best["layer"]), int(best["head"]))
        text = figure_title(name, f"best head {head_label(*head)}").replace("\n", " · ")
        best_head_trials(ax, part, head=head, title=wrap_title(text, chars_per_line(width - 0.7)))
    for ax in list(axes.flat)[len(panel_list):]:
        ax.set_visible(False)
    if names.shared:
        fig.suptitle(shared_line(names.shared, width * ncols), fontsize=11)
    return fig


def attention_fading_figure(df, *, train_lengths=None) -> Figure:
    """Attention fading: largest weight and entropy vs n (log x), one line per (model, attention, theta);
    a dotted line at each training length (train_lengths: an int, a {model: length} dict, or None)."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    attention_fading_curves(left, df, value="max_weight", train_length=train_lengths)
    left.set_title("largest attention weight vs n", fontsize=10)
    attention_fading_curves(right, df, value="entropy", train_length=train_lengths)
    right.set_title("attention entropy vs n", fontsize=10)
    return fig
