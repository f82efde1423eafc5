"""Planning a run: requests, cells and their content keys, seeds, run names; every check before a file is written.

A cell's key hashes everything that decides its result, so rerunning the same command skips every
finished cell, a larger grid reuses the cells it shares, and a changed model or data recomputes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from harness.errors import UserError
from harness.task.params import params_to_dict, parse_task_params
from harness.runner.rundir import SCHEMA_VERSION, check_existing
from harness.task import get_task


@dataclasses.dataclass(frozen=True)
class ModelRequest:
    """One model to evaluate, as asked: checkpoint spec, attention (None: the checkpoint's own), RoPE, lengths."""

    spec: str
    attention: str | None = None
    rope_theta: float | None = None
    training_length: int | None = None
    """overrides the training length the config records (ssmax(s=auto), figures, "x training length")"""
    rope_bases: tuple[tuple[str, float], ...] = ()
    """per-layer-type RoPE bases, e.g. (("sliding_attention", 20000.0),)"""


@dataclasses.dataclass(frozen=True)
class Cell:
    """One unit of work: a model (index into the plan's models) at one grid point, keyed by content."""

    model_index: int
    coords: dict
    key: str
    cost: float
    group: object = None
    """the task's group of this cell (task.group; None: a group of its own); cells of a group run consecutively"""
    order: object = 0
    """sort key within the group (task.order)"""


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Everything decided, and validated, before a file is written: task, params, models, keyed cells."""

    task: object
    params: object
    requests: tuple
    infos: tuple
    """harness.models.checkpoint.ModelInfo per request (no weights loaded)"""
    cells: tuple
    run_dir: Path
    corpus_fingerprint: str | None

    def cell_path(self, cell: Cell) -> Path:
        """Where a finished cell is saved."""
        return self.run_dir / "cells" / f"{cell.key}.json"

    def pending(self) -> list[Cell]:
        """Cells not finished yet (no cell file that parses with its key and tables: rundir.load_cell)."""
        from harness.runner.rundir import load_cell

        return [c for c in self.cells if load_cell(self.cell_path(c), c.key) is None]


def content_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def model_identity(info) -> tuple:
    """What of a described model enters cell keys: weights, attention in force, RoPE, dtype."""
    ident = (info.fingerprint, info.attention, info.rope_theta, info.dtype)
    return ident + (info.rope_overrides,) if info.rope_overrides else ident  # old keys stay valid


def cell_seed(base_seed: int, cell: dict) -> int:
    """Seed of one cell: from the task seed and the cell's coordinates only (never the model or order)."""
    return int(content_hash([base_seed, cell])[:8], 16)


def check_run_name(name: str) -> str:
    """A run name that stays inside the output root: no path separators, not '.' or '..'."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or os.sep in name or "\0" in name:
        raise UserError(f"bad run name {name!r}: use a plain folder name without '/', '\\' or '..'")
    return name


def plan_run(task_name: str, models, params=None, *, out_root="results", name: str | None = None,
             device: str = "cpu", dtype: str | None = None, allow_pickle: bool = False,
             trust_remote_code: bool = False, device_map: str | None = None) -> RunPlan:
    """Validate a run (task, params, models, corpus, name) and key its cells; loads no weights, writes nothing."""
    from harness.models import checkpoint

    task = get_task(task_name)
    if params is None or isinstance(params, dict):
        params = parse_task_params(task, params or {})
    elif isinstance(params, task.Params):
        task.validate(params)
    else:
        raise TypeError(f"params must be a dict or {task.Params.__name__}, got {type(params).__name__}")
    requests = tuple(m if isinstance(m, ModelRequest) else ModelRequest(str(m)) for m in models)
    if not requests:
        raise UserError("give at least one model (--model)")
    if name is not None:
        check_run_name(name)
    infos = tuple(checkpoint.describe_model(r.spec, r.attention, r.rope_theta, training_length=r.training_length,
                                            rope_bases=dict(r.rope_bases) or None, allow_pickle=allow_pickle,
                                            trust_remote_code=trust_remote_code, dtype=dtype, device=device,
                                            device_map=device_map)
                  for r in requests)
    idents = [model_identity(i) for i in infos]
    if len(set(idents)) < len(idents):
        raise UserError("the same model, attention and rope theta are given twice")
    corpus_fp = task.data_fingerprint(params)
    param_dict = params_to_dict(params)
    coords = task.cells(params)
    if len({content_hash(c) for c in coords}) < len(coords):
        raise RuntimeError(f"task {task.name!r} returned duplicate cells")

    # The key: everything that decides a cell's result. Grid-only params are left out, so a larger
    # grid reuses the cells it shares with a smaller one.
    # Parameters added after runs existed leave keys alone while at their old behaviour's value.
    # Execution-only parameters (how cells run, never what they give) leave keys and the run name alone;
    # so do added parameters at their old value (a new parameter renames no default run folder).
    named = {k: v for k, v in param_dict.items() if k not in task.execution_params
             and not (k in task.added_params and v == task.added_params[k])}
    keyed = {k: v for k, v in named.items() if k not in task.grid_params}
    base = {"schema": SCHEMA_VERSION, "task": task.name, "task_version": task.version,
            "params": keyed, "corpus": corpus_fp}
    cells = tuple(Cell(m, c, content_hash({**base, "model": idents[m], "cell": c}), float(task.cost(params, c)),
                       task.group(params, c), task.order(params, c))
                  for m in range(len(infos)) for c in coords)
    run_dir = Path(out_root) / (name or f"{task.name}-{content_hash([task.name, named, idents])[:8]}")
    check_existing(run_dir, task.name)
    return RunPlan(task, params, requests, infos, cells, run_dir, corpus_fp)
