"""The run directory: assembling tables from finished cells, the manifest and its provenance, stale temp files.

    RUN_DIR/manifest.json            what ran, versions, cells done/total
    RUN_DIR/cells/<key>.json         one finished cell: rows per table + telemetry (written atomically)
    RUN_DIR/tables/<name>.parquet    assembled from the grid's finished cells every run (+ .csv)
    RUN_DIR/figures/*.png            drawn by the task

What counts as finished is `load_cell`: a cell file that parses and has the cell's key and a tables
mapping. A damaged one is set aside (renamed `<key>.json.damaged-<time>`, never deleted) and its cell
computed again; a damaged manifest is set aside and rebuilt, tables are rebuilt from the cells every
run. A full disk or an unwritable folder is a `WriteError` (a UserError): one line with path and errno.
Imports no torch.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from harness import atomic
from harness.atomic import temp_owner
from harness.errors import UserError
from harness.task.params import params_to_dict
from harness.results.tables import MODEL_COLUMNS

SCHEMA_VERSION = 1

# Errors of the filesystem rather than of the program: reported as one line, the run resumes later.
WRITE_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EPERM, errno.EDQUOT, errno.EFBIG}


class WriteError(UserError):
    """A run-directory file could not be written (full disk, read-only or unwritable folder)."""


def write_error(path, e: OSError) -> WriteError:
    code = errno.errorcode.get(e.errno, str(e.errno))
    if e.filename and not atomic.is_temp_file(Path(e.filename)) and Path(e.filename) != Path(path):
        path = e.filename  # a file a task hook wrote inside `path`
    return WriteError(f"cannot write {path}: {os.strerror(e.errno)} ({code}); finished cells are kept, "
                      f"free space or fix permissions and rerun the same command to resume")


def writing(path, do):
    """Run `do()` (which writes `path`), turning a full disk or an unwritable folder into a WriteError."""
    try:
        return do()
    except OSError as e:
        if e.errno in WRITE_ERRNOS:
            raise write_error(path, e) from e
        raise


def write_json(path: Path, obj, **dump_kw) -> None:
    """Atomically write `obj` as JSON into the run directory (see `writing`)."""
    writing(path, lambda: atomic.write_json(path, obj, **dump_kw))


def atomic_write(path: Path, write) -> None:
    writing(path, lambda: atomic.atomic_write(path, write))


def load_cell(path: Path, key: str) -> dict | None:
    """A finished cell's saved document, or None if the file is missing, unreadable or damaged.

    Finished means: it parses as a JSON object with this cell's `key` and `tables` mapping table
    names to lists of row objects. `RunPlan.pending` and `assemble` both go by this.
    """
    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(saved, dict) and saved.get("key") == key and isinstance(saved.get("tables"), dict)
            and all(isinstance(rows, list) and all(isinstance(r, dict) for r in rows)
                    for rows in saved["tables"].values())
            and isinstance(saved.get("telemetry", {}), dict)):
        return None
    return saved


def set_aside(path: Path, why: str) -> Path:
    """Rename a damaged file to `<name>.damaged-<time>` (kept, never deleted), with a warning on stderr."""
    path = Path(path)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        target, n = path.with_name(f"{path.name}.damaged-{stamp}-{n}"), n + 1
    writing(target, lambda: os.replace(path, target))
    print(f"warning: {path} is {why}; kept as {target.name}, {_rebuilt(path)}", file=sys.stderr, flush=True)
    return target


def _rebuilt(path: Path) -> str:
    return "its cell is computed again" if path.parent.name == "cells" else "rebuilt from the cells"


def set_aside_damaged_cells(plan) -> int:
    """Set aside every cell file of the plan that exists but is not a finished cell; return how many."""
    count = 0
    for cell in plan.cells:
        path = plan.cell_path(cell)
        if (path.exists() or path.is_symlink()) and load_cell(path, cell.key) is None:
            set_aside(path, "damaged or unreadable")
            count += 1
    return count


def new_manifest(plan, previous: dict) -> dict:
    """The manifest of a run starting now (cells_done filled in by `assemble`)."""
    from harness.models.devices import runtime

    return {
        "schema_version": SCHEMA_VERSION, "task": plan.task.name, "params": params_to_dict(plan.params),
        "models": [i.as_dict() for i in plan.infos], "corpus_fingerprint": plan.corpus_fingerprint,
        "versions": versions(), "git_sha": git_sha(), "device": plan.infos[0].device,
        "dtype": plan.infos[0].dtype, "first_started_at": previous.get("first_started_at") or now(),
        "started_at": now(), "finished_at": None, "status": "running",
        "cells_total": len(plan.cells), "cells_done": None, "command": sys.argv,
        **runtime(),  # cuda_alloc_conf (the allocator setting in force) and device names
    }


def assemble(plan, manifest: dict, status: str, *, draw: bool) -> int:
    """Rebuild tables/ from the grid's finished cells and update the manifest; return cells done."""
    task, params, run_dir, infos = plan.task, plan.params, plan.run_dir, plan.infos
    rows: dict[str, list[dict]] = {t: [] for t in task.tables}
    labels = model_labels(infos)
    telemetry = []
    prefix: dict[int, list[dict]] = {}
    paths: dict[int, dict[str, int]] = {}
    done = 0
    for cell in plan.cells:  # grid order, so tables never depend on the order cells ran in
        saved = load_cell(plan.cell_path(cell), cell.key)
        if saved is None:  # missing or damaged: not finished
            continue
        info = infos[cell.model_index]
        front = {"model": labels[cell.model_index], "attention": info.attention, "rope_theta": info.rope_theta}
        for table, table_rows in saved["tables"].items():
            rows.setdefault(table, []).extend(
                {**front, **{k: v for k, v in r.items() if k not in front}} for r in table_rows)
        telemetry.append({**front, "cell": json.dumps(cell.coords, sort_keys=True), "key": cell.key,
                          "cost": cell.cost, **saved.get("telemetry", {})})
        if "prefix_cache" in saved.get("telemetry", {}):
            prefix.setdefault(cell.model_index, []).append(saved["telemetry"])
        for name, calls in parse_paths(saved.get("telemetry", {}).get("attention_paths")).items():
            paths.setdefault(cell.model_index, {}).setdefault(name, 0)
            paths[cell.model_index][name] += calls
        done += 1
    tables = {t: pd.DataFrame(r) if r else pd.DataFrame(columns=list(MODEL_COLUMNS)) for t, r in rows.items()}
    if done:
        tables.update(task.summarize(tables, params) or {})
    tables["cells"] = pd.DataFrame(telemetry) if telemetry else pd.DataFrame(columns=list(MODEL_COLUMNS))
    tables_dir = run_dir / "tables"
    writing(tables_dir, lambda: tables_dir.mkdir(exist_ok=True))
    # Optional tables that got no rows (e.g. prompts without save_prompts) are left out.
    tables = {t: df for t, df in tables.items() if len(df) or t in (task.tables[:1] + ("cells",))}
    for table, df in tables.items():
        atomic_write(tables_dir / f"{table}.parquet", lambda tmp, df=df: df.to_parquet(tmp, index=False))
        atomic_write(tables_dir / f"{table}.csv", lambda tmp, df=df: df.to_csv(tmp, index=False))
    manifest.update(cells_done=done, finished_at=now(), status=status, tables=sorted(tables))
    for m, cells_telemetry in prefix.items():
        manifest["models"][m]["prefix_cache"] = prefix_cache_summary(cells_telemetry)
    for m, calls in paths.items():
        manifest["models"][m]["attention_paths"] = dict(sorted(calls.items()))
    if draw and done:
        figures_dir = run_dir / "figures"
        drawn = writing(figures_dir, lambda: _draw(task, tables, manifest, figures_dir))
        manifest["figures"] = [str(Path(p).relative_to(run_dir)) if Path(p).is_relative_to(run_dir) else str(p)
                               for p in drawn]
        writing(run_dir, lambda: task.finalize(run_dir, tables, params))
    write_json(run_dir / "manifest.json", manifest)
    return done


def parse_paths(text: str | None) -> dict[str, int]:
    """The `attention_paths` telemetry ("split_lse:8,sdpa_decode:40") as {kernel: calls}; {} for old cells."""
    if not text or not isinstance(text, str):
        return {}
    return {name: int(calls) for name, _, calls in (item.rpartition(":") for item in text.split(","))}


def prefix_cache_summary(telemetry: list[dict]) -> dict:
    """A model's shared-prefix prefill over its finished cells: mode used / off / fallback (with the reason)."""
    kinds = [t.get("prefix_cache") for t in telemetry]
    reasons = [t["prefix_reason"] for t in telemetry if t.get("prefix_reason")]
    mode = "fallback" if reasons else "off" if all(k == "off" for k in kinds) else "used"
    out = {"mode": mode, "shared_cells": kinds.count("shared"), "fresh_cells": kinds.count("fresh"),
           "reused_tokens": sum(int(t.get("prefix_tokens") or 0) for t in telemetry)}
    return {**out, "reason": reasons[0]} if reasons else out


def _draw(task, tables, manifest, figures_dir) -> list:
    figures_dir.mkdir(exist_ok=True)
    drawn = task.figures(tables, manifest, figures_dir) or []
    if not any(figures_dir.iterdir()):
        figures_dir.rmdir()
    return drawn


def model_labels(infos) -> list[str]:
    """The `model` column: the model's name, with a fingerprint prefix where two different models share it."""
    names = [i.name for i in infos]
    clash = {n for n in names if len({i.fingerprint for i in infos if i.name == n}) > 1}
    return [f"{i.name}@{i.fingerprint[:8]}" if i.name in clash else i.name for i in infos]


def check_existing(run_dir: Path, task_name: str, *, repair: bool = False) -> dict:
    """The manifest of an earlier run of this task in run_dir ({} if none); refuse other folders.

    A damaged manifest counts as none (the run is rebuilt from its cells); `repair` sets it aside.
    """
    path = run_dir / "manifest.json"
    if path.is_file() or (path.exists() and (run_dir / "cells").is_dir()):
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        if not isinstance(old, dict) or not isinstance(old.get("task"), str):
            if not (run_dir / "cells").is_dir():
                raise UserError(f"{run_dir} holds a damaged {path.name} and no cells/; choose another --name")
            if repair:
                set_aside(path, "damaged or unreadable")
            return {}
        if old.get("task") != task_name:
            raise UserError(f"{run_dir} holds a run of task {old.get('task')!r}; choose another --name")
        return old
    if run_dir.exists() and any(run_dir.iterdir()) and not (run_dir / "cells").is_dir():
        raise UserError(f"{run_dir} exists and is not a run directory; choose another --name")
    return {}


def remove_stale_tmp(run_dir: Path) -> None:
    """Delete temp files of processes that died mid-write (their pid is in the name) in a run directory.

    They were never renamed onto their target, so they hold nothing finished.
    """
    run_dir = Path(run_dir)
    folders = [run_dir] if run_dir.name == "cells" else [run_dir, run_dir / "cells", run_dir / "tables"]
    for tmp in (t for folder in folders if folder.is_dir() for t in folder.glob(".*.tmp")):
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
