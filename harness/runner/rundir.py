"""The run directory: assembling tables from finished cells, the manifest and its provenance, stale temp files.

    RUN_DIR/manifest.json            what ran, versions, cells done/total
    RUN_DIR/cells/<key>.json         one finished cell: rows per table + telemetry (written atomically)
    RUN_DIR/tables/<name>.parquet    assembled from the grid's finished cells every run (+ .csv)
    RUN_DIR/figures/*.png            drawn by the task
Imports no torch.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from harness.atomic import atomic_write, temp_owner, write_json
from harness.errors import UserError
from harness.params import params_to_dict
from harness.tables import MODEL_COLUMNS

SCHEMA_VERSION = 1


def new_manifest(plan, previous: dict) -> dict:
    """The manifest of a run starting now (cells_done filled in by `assemble`)."""
    return {
        "schema_version": SCHEMA_VERSION, "task": plan.task.name, "params": params_to_dict(plan.params),
        "models": [i.as_dict() for i in plan.infos], "corpus_fingerprint": plan.corpus_fingerprint,
        "versions": versions(), "git_sha": git_sha(), "device": plan.infos[0].device,
        "dtype": plan.infos[0].dtype, "first_started_at": previous.get("first_started_at") or now(),
        "started_at": now(), "finished_at": None, "status": "running",
        "cells_total": len(plan.cells), "cells_done": None, "command": sys.argv,
    }


def assemble(plan, manifest: dict, status: str, *, draw: bool) -> int:
    """Rebuild tables/ from the grid's finished cells and update the manifest; return cells done."""
    task, params, run_dir, infos = plan.task, plan.params, plan.run_dir, plan.infos
    rows: dict[str, list[dict]] = {t: [] for t in task.tables}
    labels = model_labels(infos)
    telemetry = []
    done = 0
    for cell in plan.cells:  # grid order, so tables never depend on the order cells ran in
        path = plan.cell_path(cell)
        if not path.exists():
            continue
        saved = json.loads(path.read_text())
        info = infos[cell.model_index]
        front = {"model": labels[cell.model_index], "attention": info.attention, "rope_theta": info.rope_theta}
        for table, table_rows in saved["tables"].items():
            rows.setdefault(table, []).extend(
                {**front, **{k: v for k, v in r.items() if k not in front}} for r in table_rows)
        telemetry.append({**front, "cell": json.dumps(cell.coords, sort_keys=True), "key": cell.key,
                          "cost": cell.cost, **saved["telemetry"]})
        done += 1
    tables = {t: pd.DataFrame(r) if r else pd.DataFrame(columns=list(MODEL_COLUMNS)) for t, r in rows.items()}
    if done:
        tables.update(task.summarize(tables, params) or {})
    tables["cells"] = pd.DataFrame(telemetry) if telemetry else pd.DataFrame(columns=list(MODEL_COLUMNS))
    tables_dir = run_dir / "tables"
    tables_dir.mkdir(exist_ok=True)
    # Optional tables that got no rows (e.g. prompts without save_prompts) are left out.
    tables = {t: df for t, df in tables.items() if len(df) or t in (task.tables[:1] + ("cells",))}
    for table, df in tables.items():
        atomic_write(tables_dir / f"{table}.parquet", lambda tmp, df=df: df.to_parquet(tmp, index=False))
        atomic_write(tables_dir / f"{table}.csv", lambda tmp, df=df: df.to_csv(tmp, index=False))
    manifest.update(cells_done=done, finished_at=now(), status=status, tables=sorted(tables))
    if draw and done:
        figures_dir = run_dir / "figures"
        figures_dir.mkdir(exist_ok=True)
        drawn = task.figures(tables, manifest, figures_dir) or []
        if not any(figures_dir.iterdir()):
            figures_dir.rmdir()
        manifest["figures"] = [str(Path(p).relative_to(run_dir)) if Path(p).is_relative_to(run_dir) else str(p)
                               for p in drawn]
        task.finalize(run_dir, tables, params)
    write_json(run_dir / "manifest.json", manifest)
    return done


def model_labels(infos) -> list[str]:
    """The `model` column: the model's name, with a fingerprint prefix where two different models share it."""
    names = [i.name for i in infos]
    clash = {n for n in names if len({i.fingerprint for i in infos if i.name == n}) > 1}
    return [f"{i.name}@{i.fingerprint[:8]}" if i.name in clash else i.name for i in infos]


def check_existing(run_dir: Path, task_name: str) -> dict:
    """The manifest of an earlier run of this task in run_dir ({} if none); refuse other folders."""
    if (run_dir / "manifest.json").is_file():
        old = json.loads((run_dir / "manifest.json").read_text())
        if old.get("task") != task_name:
            raise UserError(f"{run_dir} holds a run of task {old.get('task')!r}; choose another --name")
        return old
    if run_dir.exists() and any(run_dir.iterdir()) and not (run_dir / "cells").is_dir():
        raise UserError(f"{run_dir} exists and is not a run directory; choose another --name")
    return {}


def remove_stale_tmp(cells_dir: Path) -> None:
    """Delete temp files of processes that died mid-write (their pid is in the name)."""
    for tmp in cells_dir.glob(".*.tmp"):
        pid = temp_owner(tmp)
        if pid is None:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:
            pass


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for dist in ("long-context-harness", "torch", "transformers"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def git_sha() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
