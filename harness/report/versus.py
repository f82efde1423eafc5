"""The report's statistics (`lch compare`): the versus-baseline section (paired differences, McNemar, Holm) and the
trials a ±0.1 interval needs. Pandas only; no torch."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness import results
from harness.results.intervals import trials_needed
from harness.results.paired import report_table, versus_baseline

VERSUS_NOTE = (
    "Each variant minus the baseline on the same prompts, per length: accuracy difference with a 95% Agresti-Min "
    "interval (variance inflated by the design effect of prompts sharing a trial's haystack), * where it excludes 0; "
    "exact McNemar p on the discordant prompts, Holm-corrected across the lengths of each variant; answer NLL "
    "difference (nats/token, negative = lower than the baseline) with a t interval over trials.")


def run_params(run_dirs) -> dict:
    """{run label as in results.load: the run's task parameters}."""
    dirs = results.expand_runs(run_dirs)
    names = [d.name for d in dirs]
    labels = names if len(set(names)) == len(names) else [str(d) for d in dirs]
    return {label: results.read_manifest(d).get("params", {}) or {} for label, d in zip(labels, dirs)}


def versus_tables(tables: dict, baseline: str | None, params: dict) -> tuple[pd.DataFrame, list[str]]:
    """versus_baseline over the needle, retrieval and ruler tables (a `table` column names which), with its notes."""
    parts, notes = [], []
    for name in ("needle", "retrieval", "ruler"):
        df = tables.get(name)
        if df is None or df.empty:
            continue
        table, found = versus_baseline(df, baseline, params)
        notes += [f"{name}: {note}" for note in found]
        if not table.empty:
            parts.append(table.assign(table=name))
    return (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()), notes


def trials_table(tables: dict) -> pd.DataFrame:
    """One row per task (needle; each retrieval preset; each RULER task): trials now and trials for a ±0.1 interval."""
    rows = []
    if (needle := tables.get("needle")) is not None:
        rows.append(trials_needed("needle", needle))
    for name in ("retrieval", "ruler"):
        if (df := tables.get(name)) is not None and not df.empty:
            rows += [trials_needed(str(task), part) for task, part in df.groupby("task", sort=True)]
    return pd.DataFrame([r for r in rows if r])


def statistics_section(section_type, tables: dict, baseline: str | None, run_dirs, out_dir: Path):
    """(the 'Versus baseline and precision' section or None, versus table); writes versus_baseline.csv."""
    from harness.atomic import write_text

    versus, notes = versus_tables(tables, baseline, run_params(run_dirs))
    trials = trials_table(tables)
    if not versus.empty:
        write_text(Path(out_dir) / "versus_baseline.csv", versus.to_csv(index=False))
    if versus.empty and trials.empty and not notes:
        return None, versus
    section = section_type("Versus baseline and precision", intro=" ".join(notes))
    if not versus.empty:
        for name, part in versus.groupby("table", sort=False):
            section.tables.append((f"{name}: {VERSUS_NOTE}", report_table(part.drop(columns="table"))))
    if not trials.empty:
        section.tables.append(("Trials per grid for a 95% interval of ±0.1 at every length, at the observed accuracy "
                               "and clustering (the hardest length of any variant decides).", trials))
    return section, versus
