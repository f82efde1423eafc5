"""Line plots: per-position test loss, the RULER-style retrieval average and each RULER task by length. Imports no torch."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from harness.columns import ACCURACY, ANSWER_NLL, CONTEXT_LENGTH
from harness.plots.heatmaps import full_keys, panels
from harness.plots.labels import chars_per_line, panel_names, shared_line, wrap_title
from harness.results.tables import bucket_positions


def legend_with_shared(ax, shared: str, width_in: float = 3.5, **kwargs):
    """A legend whose title names what every line shares (wrapped), if anything."""
    if not ax.get_legend_handles_labels()[0]:
        return None
    title = shared_line(shared, width_in, "lines", 8) or None
    return ax.legend(fontsize=8, title=title, title_fontsize=8, **kwargs)


def training_length_lines(ax, train_length, models=None) -> None:
    """A dotted vertical line at each distinct training length (an int, a {model: length} dict, or None);
    with `models` (the plotted model names), only the lengths of those models of a dict."""
    if isinstance(train_length, dict):
        plotted = None if models is None else {str(m) for m in models}
        lengths = [n for m, n in train_length.items() if plotted is None or str(m) in plotted]
    else:
        lengths = [train_length]
    for length in sorted({int(n) for n in lengths if n}):
        ax.axvline(length, color="black", linestyle=":", linewidth=1.2, label=f"training length ({length} tokens)")


def position_loss_curves(ax, df, *, train_length=None, per_octave: int = 4):
    """Test loss vs position (log x), one line per (model, attention, theta), smoothed over log-spaced buckets.

    df: the `position_loss_buckets` table (bucket_start, bucket_end, mean_nll) or the per-position
    `position_loss` table (position, mean_nll), which is bucketed here. train_length: an int, a
    {model: length} dict, or None; a dotted vertical line marks each distinct length. Line labels leave
    out what every line shares; the legend title says it.
    """
    if "bucket_start" not in df.columns:
        df = bucket_positions(df, per_octave=per_octave)
    panel_list, keys = panels(df)
    names = panel_names(full_keys(panel_list, keys))
    for (key, part), label in zip(panel_list, names.titles):
        part = part.sort_values("bucket_start")
        # x = geometric middle of [start, end - 1], the positions the bucket averages
        x = np.sqrt(part["bucket_start"].to_numpy(float) * np.maximum(part["bucket_end"].to_numpy(float) - 1, 1))
        ax.plot(x, part["mean_nll"].to_numpy(float), marker=".", linewidth=1.5, label=label)
    training_length_lines(ax, train_length, df["model"].unique() if "model" in df.columns else None)
    ax.set_xscale("log")
    ax.set_xlabel("position of the predicted token (tokens)")
    ax.set_ylabel("test loss (nats / token)")
    ax.grid(True, which="both", alpha=0.3)
    legend_with_shared(ax, names.shared)
    return ax


def retrieval_average_figure(average, *, train_lengths=None, value: str = "accuracy", over: str = "presets") -> Figure:
    """RULER-style average over presets vs context length (log x): accuracy (left) and answer NLL (right),
    one line per (model, attention, theta). `average`: tables.retrieval_average's rows (or tables.ruler_average's
    with value="ruler_score", over="tasks")."""
    names_column = "preset_names" if over == "presets" else "task_names"
    presets = ", ".join(sorted({p for s in average.get(names_column, []) for p in str(s).split(", ") if p}))
    title = "retrieval average over presets" if over == "presets" else "RULER average over tasks"
    return length_curves_figure(average, value=value, value_label=f"{value.replace('_', ' ')} (mean over {over})",
                                nll_label=f"answer NLL (nats/token, mean over {over})", title=f"{title}: {presets}",
                                train_lengths=train_lengths)


def ruler_task_figure(summary, task: str, *, train_lengths=None) -> Figure:
    """One RULER task's score (left, 95% band where the summary has score_low/score_high) and answer NLL (right,
    band nll_low/nll_high) vs context length, one line per (model, attention, theta); `summary`: ruler_summary rows."""
    rows = summary[summary["task"] == task] if "task" in summary.columns else summary
    return length_curves_figure(rows, value="ruler_score", value_label="RULER score (mean over trials)",
                                nll_label="answer NLL (nats/token, mean over trials)", title=f"RULER {task}",
                                train_lengths=train_lengths,
                                bands={"ruler_score": ("score_low", "score_high"), ANSWER_NLL: ("nll_low", "nll_high")})


def length_curves_figure(rows, *, value: str, value_label: str, nll_label: str, title: str, train_lengths=None,
                         bands: dict | None = None) -> Figure:
    """`value` (left, on [0, 1]) and answer NLL (right, when present) vs context length (log x), one line per
    (model, attention, theta); bands: {column: (low column, high column)} shaded where both are present."""
    panel_list, keys = panels(rows)
    names = panel_names(full_keys(panel_list, keys))
    right = ANSWER_NLL in rows.columns and rows[ANSWER_NLL].notna().any()
    fig = Figure(figsize=(11.5 if right else 6.5, 4.2), layout="constrained")
    axes = fig.subplots(1, 2 if right else 1, squeeze=False)[0]
    columns = [(value, value_label)] + ([(ANSWER_NLL, nll_label)] if right else [])
    for ax, (column, label) in zip(axes, columns):
        low, high = (bands or {}).get(column, (None, None))
        for (key, part), name in zip(panel_list, names.titles):
            part = part.sort_values(CONTEXT_LENGTH)
            x = part[CONTEXT_LENGTH].to_numpy(float)
            line, = ax.plot(x, part[column].to_numpy(float), marker="o", linewidth=1.5, label=name)
            if low in part.columns and high in part.columns:
                ax.fill_between(x, part[low].to_numpy(float), part[high].to_numpy(float), color=line.get_color(),
                                alpha=0.15, linewidth=0)
        training_length_lines(ax, train_lengths, rows["model"].unique() if "model" in rows.columns else None)
        ax.set_xscale("log", base=2)
        lengths = sorted({int(n) for n in rows[CONTEXT_LENGTH]})
        ax.set_xticks(lengths, [str(n) for n in lengths], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylim(-0.03, 1.03)
    legend_with_shared(axes[0], names.shared)
    fig.suptitle(wrap_title(title, chars_per_line(11.0, 11)), fontsize=11)
    return fig
