"""Figures of a run directory, written to PNG files (`lch heatmap`). Imports no torch."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from harness.plots.heatmaps import needle_heatmap_figure
from harness.results.tables import training_lengths

DPI = 120
"""Resolution of every PNG lch writes."""

RETRIEVAL_ACCURACY_LABEL = "accuracy (every asked value)"


def save(fig: Figure, path) -> Path:
    """Write `fig` as a PNG at DPI, trimmed to its content; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def run_training_lengths(run_dir: Path) -> dict:
    """{model name: training length} over a run directory's manifest, or every run's in a folder of runs."""
    from harness import results

    run_dir = Path(run_dir)
    dirs = [run_dir] if (run_dir / results.MANIFEST).is_file() else sorted(
        p.parent for p in run_dir.glob(f"*/{results.MANIFEST}"))
    train = {}
    for d in dirs:
        train.update(training_lengths(results.read_manifest(d)))
    return train


def retrieval_heatmap_figures(df, *, train_lengths=None) -> dict:
    """{preset: Figure} for a retrieval table: accuracy and answer-NLL heatmaps per variant, titled by preset."""
    return {str(task): needle_heatmap_figure(part, train_lengths=train_lengths, suptitle=str(task),
                                             accuracy_label=RETRIEVAL_ACCURACY_LABEL)
            for task, part in df.groupby("task", sort=True)}


def draw_needle_heatmaps(run_dir, out_file=None) -> Path:
    """Draw the needle heatmaps of a run (`lch heatmap RUN_DIR`); default RUN_DIR/figures/needle_heatmap.png."""
    from harness import results
    from harness.errors import UserError

    run_dir = Path(run_dir)
    df = results.load(run_dir).get("needle")
    if df is None or df.empty:
        raise UserError(f"{run_dir}: no needle results (tables/needle.parquet is missing or empty)")
    out = Path(out_file) if out_file else run_dir / "figures" / "needle_heatmap.png"
    return save(needle_heatmap_figure(df, train_lengths=run_training_lengths(run_dir)), out)


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
    base = Path(out_file) if out_file else run_dir / "figures" / "retrieval_heatmap.png"
    figures = retrieval_heatmap_figures(df, train_lengths=run_training_lengths(run_dir))
    return [save(fig, base.with_name(f"{base.stem}_{task}{base.suffix or '.png'}")) for task, fig in figures.items()]
