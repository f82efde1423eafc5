"""Run directories <-> pandas DataFrames. Imports no torch, so notebooks that only read results start fast."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from harness.errors import UserError

MANIFEST = "manifest.json"
TABLES = "tables"


def read_manifest(run_dir) -> dict:
    """The manifest.json of a run directory as a dict."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"{run_dir}: not a run directory (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is damaged or unreadable ({type(e).__name__}); rerun the run's command to "
                        "rebuild it from the cells") from e
    if not isinstance(manifest, dict):
        raise UserError(f"{path} is damaged (not a JSON object); rerun the run's command to rebuild it")
    return manifest


def require_tables(*run_dirs) -> None:
    """Refuse runs still running (or killed while running) and runs without tables: a UserError naming the run."""
    for d in _expand(run_dirs):
        status = read_manifest(d).get("status")
        if status == "running":
            raise UserError(f"{d}: the run has not finished (manifest status 'running': in progress, or killed); "
                            "wait for it, or rerun its command to resume it")
        if not list((d / TABLES).glob("*.parquet")):
            raise UserError(f"{d}: the run has no tables ({TABLES}/ is missing or empty); "
                            "rerun its command to rebuild them from the cells")


def _expand(run_dirs) -> list[Path]:
    """Run dirs as given; a folder without a manifest stands for the runs directly inside it."""
    out = []
    for d in map(Path, run_dirs):
        if (d / MANIFEST).is_file():
            out.append(d)
        elif d.is_dir() and (children := sorted(c for c in d.iterdir() if (c / MANIFEST).is_file())):
            out.extend(children)
        else:
            raise UserError(f"{d}: not a run directory (no {MANIFEST}) and holds none")
    return out


def expand_runs(run_dirs) -> list[Path]:
    """Run directories as given, a folder of runs (such as a demo's) standing for the runs inside it."""
    return _expand(run_dirs)


def load_run(run_dir) -> dict[str, pd.DataFrame]:
    """The tables of one run directory (name -> DataFrame), without a `run` column."""
    tables_dir = Path(run_dir) / TABLES
    if not tables_dir.is_dir():
        return {}
    out = {}
    for p in sorted(tables_dir.glob("*.parquet")):
        try:
            out[p.stem] = pd.read_parquet(p)
        except Exception as e:  # pyarrow raises several types for a truncated or foreign file
            raise UserError(f"{p} is damaged or unreadable ({type(e).__name__}); rerun the run's command to "
                            "rebuild the tables from the cells") from e
    return out


def load(*run_dirs) -> dict[str, pd.DataFrame]:
    """Tables of one or more runs (any mix of tasks), concatenated per name, with a leading `run` column."""
    dirs = _expand(run_dirs)
    if not dirs:
        raise UserError("give at least one run directory")
    names = [d.name for d in dirs]
    labels = names if len(set(names)) == len(names) else [str(d) for d in dirs]
    parts: dict[str, list[pd.DataFrame]] = {}
    for label, d in zip(labels, dirs):
        for name, df in load_run(d).items():
            df = df.drop(columns="run", errors="ignore")
            parts.setdefault(name, []).append(df.assign(run=label)[["run", *df.columns]])
    return {name: pd.concat(dfs, ignore_index=True) for name, dfs in parts.items()}
