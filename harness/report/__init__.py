"""Compare runs (`lch compare`): every task's figures over the merged tables, difference maps (needle and each
retrieval preset), the RULER-style retrieval average, a headline table per model variant, and one
self-contained report.html with a caption under every figure. Imports no torch."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.columns import ROPE_THETA
from harness import results
from harness.atomic import write_text
from harness.results.headline import headline_table, retrieval_preset_table  # noqa: F401 (headline_table: public here too)
from harness.plots import difference_figure, panel_title, retrieval_average_figure, save, training_lengths
from harness.report.html import render_html
from harness.report.versus import statistics_section
from harness.results.intervals import headline_with_intervals, retrieval_average_intervals
from harness.results.tables import MODEL_COLUMNS as PANEL_KEYS, retrieval_average, ruler_average, variant_keys


@dataclass
class Section:
    """One part of the report: a heading, an optional line under it, tables and captioned figures."""

    title: str
    intro: str = ""
    tables: list = field(default_factory=list)
    """[(caption, DataFrame)]"""
    figures: list = field(default_factory=list)
    """[(png path, one-line caption)]"""


def merged_manifest(run_dirs) -> dict:
    """One manifest-like dict whose `models` holds every model of every run (for training lengths)."""
    models = []
    for run_dir in results.expand_runs(run_dirs):
        models += results.read_manifest(run_dir).get("models", [])
    return {"models": models}


def variants(df: pd.DataFrame) -> list[tuple]:
    """The (model, attention, rope_theta) combinations present, in order of appearance (unset theta as None)."""
    return list(dict.fromkeys(variant_keys(df)))


SECTIONS = (("needle", "Needle in a haystack"), ("retrieval", "Retrieval presets (RULER-style needles, passkey)"),
            ("position_loss", "Per-position test loss"), ("attention_probe", "Attention probes"), ("other", "Other figures"))
"""Report sections in order: (key, heading)."""

CAPTIONS = (
    (r"needle_heatmap", "needle",
     "Needle retrieval per context length (x) and needle depth (y). Top: share of prompts whose greedy answer has every "
     "digit right. Bottom: the teacher-forced answer NLL (nats/token, lower is better), graded where accuracy is all 0 "
     "or 1. Dashed line: the model's training length."),
    (r"needle_difference", "needle",
     "Each variant minus A ({reference}), per cell: accuracy (top; blue = retrieves more than A) and answer NLL "
     "(bottom; blue = lower NLL than A)."),
    (r"retrieval_average", "retrieval",
     "RULER-style average over the presets that ran: each preset's accuracy (left) and answer NLL (right) at a length, "
     "then their mean, one line per variant; dotted line: training length."),
    (r"ruler_average", "retrieval",
     "RULER average over the RULER tasks that ran (niah_* presets, vt, cwe, fwe, qa): each task's score as RULER "
     "scores it (share of references in the generation) at a length, then their mean, one line per variant; right: "
     "answer NLL; dotted line: training length."),
    (r"ruler_(?P<preset>vt|cwe|fwe|qa_\d)", "retrieval",
     "RULER {preset}: score as RULER scores it (left, share of references in the generation, 95% band over trials) "
     "and the teacher-forced answer NLL (right, nats/token) per context length, one line per variant; dotted line: "
     "training length."),
    (r"retrieval_heatmap_(?P<preset>.+)", "retrieval",
     "{preset}: share of prompts with every asked value exact (top) and the answer NLL (bottom, nats/token) per "
     "context length and depth of the asked needle; dashed line: training length."),
    (r"retrieval_difference_(?P<preset>.+)", "retrieval",
     "{preset}: each variant minus A ({reference}): accuracy (top) and answer NLL (bottom); blue = better than A."),
    (r"position_loss", "position_loss",
     "Mean next-token test loss by position (log x, log-spaced buckets); dotted line: training length. A curve that "
     "rises past it is hurt by the far context; one that keeps falling still uses it."),
    (r"needle_score_top_heads", "attention_probe",
     "Heads ranked by needle score: the attention the answer-predicting positions put on the needle's tokens, mean "
     "over prompts; retrieval lives in the few heads near 1."),
    (r"needle_score_best_head", "attention_probe",
     "The best head's needle score per prompt, sorted, coloured by the greedy answer: fully right, first digit right, "
     "or wrong."),
    (r"attention_fading", "attention_probe",
     "Largest attention weight (left) and attention entropy (right) against the keys a query row sees (n): median "
     "over heads with the 25-75% band; dotted: uniform attention (1/n, ln n)."),
)
"""(file stem pattern, section, caption) for the figures lch draws; {reference} and {preset} are filled in."""


def caption_for(path, reference: str = "the first variant") -> tuple[str, str]:
    """(section key, one-line caption) of a figure file; unknown figures go to 'other' under their name."""
    return _describe(path, reference)[:2]


def _describe(path, reference: str = "the first variant") -> tuple[str, str, tuple]:
    """(section, caption, sort key): by section, then preset (a preset's heatmap beside its difference map)."""
    stem = Path(path).stem
    order = [key for key, _ in SECTIONS]
    for rank, (pattern, section, caption) in enumerate(CAPTIONS):
        if match := re.fullmatch(pattern, stem):
            groups = match.groupdict()
            return section, caption.format(reference=reference, **groups), (order.index(section), groups.get("preset", ""), rank)
    return "other", stem.replace("_", " "), (order.index("other"), stem, 0)


def task_figures(run_dirs, tables, manifest, figures_dir: Path) -> list[Path]:
    """Every task's own figures over the merged tables (each file once)."""
    from harness.task import get_task

    names = {results.read_manifest(d).get("task") for d in results.expand_runs(run_dirs)}
    drawers = {}  # the retrieval presets share one figures method, which draws every preset present
    for name in sorted(filter(None, names)):
        task = get_task(name)
        drawers.setdefault(getattr(type(task).figures, "__code__", name), task)
    drawn = [Path(p) for task in drawers.values() for p in task.figures(tables, manifest, figures_dir) or []]
    return list(dict.fromkeys(drawn))


def comparison_figures(tables, train, figures_dir: Path) -> list[Path]:
    """Difference maps (needle; each retrieval preset) and the retrieval average across presets."""
    drawn = []
    needle = tables.get("needle")
    if needle is not None and not needle.empty and (fig := difference_figure(needle, train_lengths=train)) is not None:
        drawn.append(save(fig, figures_dir / "needle_difference.png"))
    retrieval = tables.get("retrieval")
    ruler = ruler_average(retrieval, tables.get("ruler"))
    if not ruler.empty and ruler["tasks"].max() > 1:
        drawn.append(save(retrieval_average_figure(ruler, train_lengths=train, value="ruler_score", over="tasks"),
                          figures_dir / "ruler_average.png"))
    if retrieval is None or retrieval.empty:
        return drawn
    if retrieval["task"].nunique() > 1:
        drawn.append(save(retrieval_average_figure(retrieval_average(retrieval), train_lengths=train),
                          figures_dir / "retrieval_average.png"))
    for preset, part in retrieval.groupby("task", sort=True):
        if (fig := difference_figure(part, suptitle=str(preset), train_lengths=train)) is not None:
            drawn.append(save(fig, figures_dir / f"retrieval_difference_{preset}.png"))
    return drawn


def _reference_name(tables) -> str:
    for name in ("needle", "retrieval"):
        df = tables.get(name)
        if df is not None and not df.empty:
            return panel_title(*variants(df)[0])
    return "the first variant"


def build_sections(tables, train, figures: list[Path]) -> list[Section]:
    """The report's sections: retrieval tables first in their section, then every figure with its caption."""
    sections = {key: Section(title) for key, title in SECTIONS}
    retrieval = tables.get("retrieval")
    if retrieval is not None and not retrieval.empty:
        sections["retrieval"].tables.append(
            ("Per preset: accuracy by length (× training length), effective length (longest length at which it, and "
             "every shorter length, is ≥ 0.8), recall (share of asked values returned), answer NLL beyond the "
             "training length.", retrieval_preset_table(retrieval, train)))
    reference = _reference_name(tables)
    for path in sorted(figures, key=lambda p: _describe(p)[2]):
        section, caption = caption_for(path, reference)
        sections[section].figures.append((path, caption))
    return [s for s in sections.values() if s.tables or s.figures]


def run_rows(run_dirs) -> pd.DataFrame:
    """One row per run: folder, task, status, cells done / total, and its models."""
    rows = []
    for d in results.expand_runs(run_dirs):
        m = results.read_manifest(d)
        rows.append({"run": str(d), "task": m.get("task"), "status": m.get("status"),
                     "cells": f"{m.get('cells_done')}/{m.get('cells_total')}" if m.get("cells_total") else None,
                     "variants": len(m.get("models", []))})
    return pd.DataFrame(rows)


def model_rows(manifest: dict) -> pd.DataFrame:
    """One row per model variant of the manifests: training length and where it came from, checkpoint attention."""
    rows = [{"model": m.get("name"), "attention": m.get("attention"), ROPE_THETA: m.get(ROPE_THETA),
             "training length": m.get("training_length"), "training length from": m.get("training_length_source"),
             "checkpoint attention": m.get("checkpoint_attention"), "architecture": m.get("architecture")}
            for m in manifest.get("models", [])]
    return pd.DataFrame(rows).drop_duplicates(subset=list(PANEL_KEYS)) if rows else pd.DataFrame()


def compare_runs(run_dirs, out_dir, baseline: str | None = None) -> Path:
    """Draw the comparison of `run_dirs` into `out_dir` and write `out_dir/report.html`; returns its path.

    Also writes headline.csv (headline_intervals.csv: the cells with their intervals), versus_baseline.csv (each
    variant against `baseline`, 'MODEL|ATTENTION|THETA', default the first), retrieval_presets.csv /
    retrieval_average.csv when retrieval runs are present, and ruler_average.csv when RULER tasks (niah_* presets,
    vt, cwe, fwe, qa_1, qa_2) are.
    """
    out_dir = Path(out_dir)
    runs = results.expand_runs(run_dirs)
    tables, manifest = results.load(*runs), merged_manifest(runs)
    train = training_lengths(manifest)
    figures_dir = out_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    figures = task_figures(runs, tables, manifest, figures_dir) + comparison_figures(tables, train, figures_dir)
    headline = headline_table(tables, train)
    write_text(out_dir / "headline.csv", headline.to_csv(index=False))
    shown = headline_with_intervals(headline, tables, train)
    write_text(out_dir / "headline_intervals.csv", shown.to_csv(index=False))
    statistics, _ = statistics_section(Section, tables, baseline, runs, out_dir)
    retrieval = tables.get("retrieval")
    if retrieval is not None and not retrieval.empty:
        write_text(out_dir / "retrieval_presets.csv", retrieval_preset_table(retrieval, train).to_csv(index=False))
        write_text(out_dir / "retrieval_average.csv", retrieval_average_intervals(retrieval).to_csv(index=False))
    if not (ruler := ruler_average(retrieval, tables.get("ruler"))).empty:
        write_text(out_dir / "ruler_average.csv", ruler.to_csv(index=False))
    report = out_dir / "report.html"
    sections = ([statistics] if statistics else []) + build_sections(tables, train, figures)
    write_text(report, render_html(shown, sections, run_rows(runs), model_rows(manifest)))
    return report
