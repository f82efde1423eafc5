"""Plot functions `f(ax, df, ...) -> ax` and figures over the run tables. Imports no torch, ever.

labels (titles that fit), heatmaps (accuracy, answer NLL, differences), curves (position loss, retrieval
average), probes (needle score, fading), draw (PNG files of a run directory). Everything is importable
from `harness.plots` directly.
"""

from harness.plots.curves import (legend_with_shared, length_curves_figure, position_loss_curves,
                                  retrieval_average_figure, ruler_task_figure, training_length_lines)
from harness.plots.draw import (DPI, draw_heatmaps, draw_needle_heatmaps, retrieval_heatmap_figures,
                                run_training_lengths, save)
from harness.plots.heatmaps import (ACCURACY_LABEL, DIFF_CMAP, NIAH_CMAP, NLL_CMAP, NLL_DIFF_CMAP, NLL_LABEL,
                                    difference_figure, grid_heatmap, has_nll, needle_difference_heatmap, needle_heatmap,
                                    needle_heatmap_figure, nll_heatmap, panel_size)
from harness.plots.labels import PanelNames, chars_per_line, common_affixes, panel_names, panel_title, theta_label, wrap_title
from harness.plots.probes import (PROBE_OUTCOMES, attention_fading_curves, attention_fading_figure, best_head_figure,
                                  best_head_trials, head_label, top_heads_bar, top_heads_figure)
from harness.results.tables import (MODEL_COLUMNS as PANEL_KEYS, bucket_positions, fading_quantiles, head_ranking,
                            needle_accuracy_grid, training_lengths, value_grid)

__all__ = [
    "ACCURACY_LABEL", "DIFF_CMAP", "DPI", "NIAH_CMAP", "NLL_CMAP", "NLL_DIFF_CMAP", "NLL_LABEL", "PANEL_KEYS",
    "PROBE_OUTCOMES", "PanelNames", "attention_fading_curves", "attention_fading_figure", "best_head_figure",
    "best_head_trials", "bucket_positions", "chars_per_line", "common_affixes", "difference_figure", "draw_heatmaps",
    "draw_needle_heatmaps", "fading_quantiles", "grid_heatmap", "has_nll", "head_label", "head_ranking",
    "legend_with_shared", "length_curves_figure", "needle_accuracy_grid", "needle_difference_heatmap",
    "needle_heatmap", "needle_heatmap_figure", "nll_heatmap", "panel_names", "panel_size", "panel_title",
    "position_loss_curves", "retrieval_average_figure", "retrieval_heatmap_figures", "ruler_task_figure",
    "run_training_lengths", "save", "theta_label", "top_heads_bar", "top_heads_figure", "training_length_lines",
    "training_lengths", "value_grid", "wrap_title",
]
