"""Length x depth heatmaps: accuracy and answer NLL per variant, and B-minus-A difference maps. Imports no torch."""

from __future__ import annotations

import math

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure

from harness.columns import ACCURACY, ANSWER_NLL, CONTEXT_LENGTH, CORRECT, DEPTH
from harness.plots.labels import (TITLE_SIZE, chars_per_line, figure_title, grid_shape, panel_names, panel_title,
                                  shared_line, wrap_title)
from harness.results.tables import MODEL_COLUMNS as PANEL_KEYS, value_grid, variant_keys

NIAH_CMAP = LinearSegmentedColormap.from_list("niah", ["#d7301f", "#f5a623", "#fee08b", "#66bd63", "#1a9850"])
"""The needle-in-a-haystack palette: red (0) -> amber -> green (1)."""

NLL_CMAP = colormaps["viridis_r"]
"""Answer NLL: light yellow (low, the model expects the answer) -> dark purple (high)."""

DIFF_CMAP = "RdBu"
"""Diverging palette for B minus A accuracy: red where B is worse, blue where B is better."""

NLL_DIFF_CMAP = "RdBu_r"
"""Diverging palette for B minus A answer NLL: blue where B's NLL is lower (better), red where higher."""

ACCURACY_LABEL = "accuracy (all digits)"
NLL_LABEL = "answer NLL (nats/token, teacher-forced)"


def panels(df):
    """([(key tuple, rows)] per (model, attention, rope_theta) present, in order of appearance; key names)."""
    keys = [k for k in PANEL_KEYS if k in df.columns]
    if not keys:
        return [((), df)], keys
    groups = df.groupby(keys, dropna=False, sort=False)
    return [(k if isinstance(k, tuple) else (k,), part) for k, part in groups], keys


def full_keys(panel_list, keys) -> list[tuple]:
    """(model, attention, rope_theta) per panel, None for a column the table does not have."""
    return [tuple(dict(zip(keys, key)).get(k) for k in PANEL_KEYS) for key, _ in panel_list]


def _train_line_x(lengths, train_length) -> float:
    """x of the line between the last length <= train_length and the next (categorical axis)."""
    inside = sum(1 for length in lengths if length <= train_length)
    return inside - 0.5


def _text_colour(cmap, norm_value: float) -> str:
    """White on dark cells, black on light ones."""
    r, g, b, _ = colormaps[cmap](norm_value) if isinstance(cmap, str) else cmap(norm_value)
    return "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"


def grid_heatmap(ax, grid, *, cmap, vmin, vmax, fmt, train_length=None, title=None, annotate=True):
    """Draw a depth x length grid (from value_grid) on a categorical axis; a dashed line at train_length."""
    lengths, depths = [int(c) for c in grid.columns], [float(d) for d in grid.index]
    values = grid.to_numpy(dtype=float)
    ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], fontsize=8)
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=8)
    ax.set_xlabel("context length (tokens)", fontsize=9)
    ax.set_ylabel("needle depth", fontsize=9)
    if annotate:
        size = 8 if len(lengths) <= 8 else 6
        for (i, j), value in np.ndenumerate(values):
            if not math.isnan(value):
                ax.text(j, i, fmt(value), ha="center", va="center", fontsize=size,
                        color=_text_colour(cmap, (value - vmin) / (vmax - vmin or 1.0)))
    if train_length:
        ax.axvline(_train_line_x(lengths, train_length), color="black", linestyle="--", linewidth=1.5,
                   label=f"training length {train_length}")
    if title is not None:
        ax.set_title(title, fontsize=TITLE_SIZE)
    return ax


def format_nll(value: float) -> str:
    """An NLL (or a difference of NLLs) in a cell: two decimals below 10, one above."""
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def _default_title(df) -> str:
    first = df.iloc[0] if len(df) else {}
    return panel_title(*(first.get(k) if k in df.columns else None for k in PANEL_KEYS))


def needle_heatmap(ax, df, *, train_length=None, title=None, annotate=True, colorbar=False):
    """Accuracy heatmap of one model's needle rows: x = context length, y = depth, colour fixed on 0..1."""
    grid_heatmap(ax, value_grid(df, CORRECT), cmap=NIAH_CMAP, vmin=0.0, vmax=1.0, fmt=lambda v: f"{v:.2f}",
                 train_length=train_length, title=_default_title(df) if title is None else title, annotate=annotate)
    ax.set_xlabel(f"context length (tokens); {prompts_per_cell(df)} per cell", fontsize=9)
    if colorbar:
        ax.figure.colorbar(ax.images[0], ax=ax, label=ACCURACY)
    return ax


def prompts_per_cell(df) -> str:
    """'n = 4' prompts in every (depth, length) cell, or 'n = 2-4' when cells differ."""
    counts = df.groupby(["depth", "context_length"]).size()
    low, high = (int(counts.min()), int(counts.max())) if len(counts) else (0, 0)
    return f"n = {low}" if low == high else f"n = {low}-{high}"


def nll_heatmap(ax, df, *, vmax=None, train_length=None, title=None, annotate=True):
    """Mean teacher-forced answer NLL per (depth, context length) of one model's rows, on 0..vmax."""
    grid = value_grid(df, ANSWER_NLL)
    vmax = vmax or max(float(np.nanmax(grid.to_numpy(dtype=float))), 1e-3)
    return grid_heatmap(ax, grid, cmap=NLL_CMAP, vmin=0.0, vmax=vmax, fmt=format_nll,
                        train_length=train_length, title=_default_title(df) if title is None else title,
                        annotate=annotate)


def has_nll(df) -> bool:
    """True when the rows carry a teacher-forced answer NLL worth drawing."""
    return ANSWER_NLL in df.columns and bool(df[ANSWER_NLL].notna().any())


def panel_size(df) -> tuple[float, float]:
    """(width, height) in inches of one heatmap panel, from the number of lengths and depths."""
    lengths, depths = df[CONTEXT_LENGTH].nunique(), df[DEPTH].nunique()
    return max(3.0, 0.5 * lengths + 1.3), max(2.3, 0.32 * depths + 1.5)


def _train_for(train_lengths, model):
    return train_lengths.get(model) if isinstance(train_lengths, dict) else train_lengths


def _block_axes(fig, n, ncols, nrows, blocks):
    """Axes in `blocks` stacked blocks of nrows x ncols; the unused cells of each block hidden."""
    axes = fig.subplots(nrows * blocks, ncols, squeeze=False)
    out = []
    for b in range(blocks):
        flat = list(axes[b * nrows:(b + 1) * nrows].flat)
        for ax in flat[n:]:
            ax.set_visible(False)
        out.append(flat[:n])
    return out


def needle_heatmap_figure(df, *, train_lengths=None, suptitle=None, ncols=None, nll=None,
                          accuracy_label=ACCURACY_LABEL) -> Figure:
    """Accuracy heatmaps (top block, shared 0..1 colorbar) and, when the rows have answer_nll, answer-NLL
    heatmaps (bottom block, one shared NLL scale) per (model, attention, theta); no pyplot state.

    train_lengths: {model name: training length} (or one int for all panels); a dashed line marks it.
    Titles leave out what every panel shares; the suptitle says it. The accuracy colorbar is the last axes.
    """
    panel_list, keys = panels(df)
    names = panel_names(full_keys(panel_list, keys))
    nll = has_nll(df) if nll is None else nll
    width, height = panel_size(df)
    ncols, nrows = grid_shape(len(panel_list), width, ncols=ncols)
    blocks = 2 if nll else 1
    fig = Figure(figsize=(width * ncols + 1.4, height * nrows * blocks + 0.5), layout="constrained")
    axes = _block_axes(fig, len(panel_list), ncols, nrows, blocks)
    wrap = chars_per_line(width - 0.6)
    vmax = max(float(df.groupby([DEPTH, CONTEXT_LENGTH] + keys, dropna=False)[ANSWER_NLL].mean().max()), 1e-3) if nll else None
    for i, ((key, part), title) in enumerate(zip(panel_list, names.titles)):
        train = _train_for(train_lengths, dict(zip(keys, key)).get("model"))
        needle_heatmap(axes[0][i], part, train_length=train, title=wrap_title(title, wrap))
        if nll:
            nll_heatmap(axes[1][i], part, vmax=vmax, train_length=train, title=wrap_title(title, wrap))
    if nll:
        fig.colorbar(axes[1][0].images[0], ax=axes[1], label=NLL_LABEL, shrink=0.9)
    fig.colorbar(axes[0][0].images[0], ax=axes[0], label=accuracy_label, shrink=0.9)
    if title := figure_title(suptitle, shared_line(names.shared, width * ncols)):
        fig.suptitle(title, fontsize=11)
    return fig


# ---------------------------------------------------------------------------- comparison (lch compare)


def needle_difference_heatmap(ax, df_a, df_b, *, title=None, annotate=True, value=CORRECT, limit=None,
                              train_length=None):
    """B minus A per (depth, context length): accuracy on a fixed -1..1 scale, answer_nll on +-limit."""
    diff = value_grid(df_b, value).sub(value_grid(df_a, value)).dropna(how="all").dropna(axis=1, how="all")
    if value == CORRECT:
        cmap, limit, fmt = DIFF_CMAP, 1.0, (lambda v: f"{v:+.2f}")
    else:
        cmap, fmt = NLL_DIFF_CMAP, (lambda v: ("+" if v >= 0 else "") + format_nll(v))
        limit = limit or max(float(np.nanmax(np.abs(diff.to_numpy(dtype=float)))), 1e-3)
    grid_heatmap(ax, diff, cmap=cmap, vmin=-limit, vmax=limit, fmt=fmt, annotate=annotate, train_length=train_length,
                 title=title or f"{'accuracy' if value == 'correct' else 'answer NLL'} difference (B − A)")
    return ax


def _rows_of(df, key):
    return df[[k == key for k in variant_keys(df)]]


def difference_figure(df, *, suptitle=None, nll=None, train_lengths=None) -> Figure | None:
    """Every variant minus the first one present: accuracy (top block, -1..1) and, with answer_nll, answer NLL
    (bottom block, one symmetric scale); None with fewer than two variants."""
    keys = list(dict.fromkeys(variant_keys(df)))
    if len(keys) < 2:
        return None
    names = panel_names(keys)
    first, others = _rows_of(df, keys[0]), keys[1:]
    nll = has_nll(df) if nll is None else nll
    width, height = panel_size(df)
    ncols, nrows = grid_shape(len(others), width)
    blocks = 2 if nll else 1
    fig = Figure(figsize=(width * ncols + 1.4, height * nrows * blocks + 0.7), layout="constrained")
    axes = _block_axes(fig, len(others), ncols, nrows, blocks)
    wrap = chars_per_line(width - 0.6)
    parts = [_rows_of(df, key) for key in others]
    limit = None
    if nll:
        diffs = [value_grid(p, ANSWER_NLL).sub(value_grid(first, ANSWER_NLL)).to_numpy(dtype=float) for p in parts]
        limit = max([float(np.nanmax(np.abs(d))) for d in diffs if np.isfinite(d).any()] + [1e-3])
    for i, (key, part, title) in enumerate(zip(others, parts, names.titles[1:])):
        train = _train_for(train_lengths, key[0])
        needle_difference_heatmap(axes[0][i], first, part, title=wrap_title(title, wrap), train_length=train)
        if nll:
            needle_difference_heatmap(axes[1][i], first, part, title=wrap_title(title, wrap), value=ANSWER_NLL,
                                      limit=limit, train_length=train)
    if nll:
        fig.colorbar(axes[1][0].images[0], ax=axes[1], label="answer NLL minus A's\n(blue: lower, better)", shrink=0.9)
    fig.colorbar(axes[0][0].images[0], ax=axes[0], label="accuracy minus A's\n(blue: higher, better)", shrink=0.9)
    reference = f"each panel minus A = {names.titles[0] or panel_title(*keys[0])}"
    fig.suptitle(figure_title(suptitle, wrap_title(reference, chars_per_line(width * ncols, 11)),
                              shared_line(names.shared, width * ncols)), fontsize=11)
    return fig
