"""The shared runner: task grid -> cells with content keys; resume, atomic cell files, tables, manifest.

Layout of a run directory (DESIGN.md):
    RUN_DIR/manifest.json            what ran, versions, cells done/total
    RUN_DIR/cells/<key>.json         one finished cell: rows per table + telemetry (written atomically)
    RUN_DIR/tables/<name>.parquet    assembled from the grid's finished cells every run (+ .csv)
    RUN_DIR/figures/*.png            drawn by the task
A cell's key hashes everything that decides its result, so rerunning the same command skips every
finished cell, a larger grid reuses the cells it shares, and a changed model or corpus recomputes.

Under torchrun (WORLD_SIZE > 1) every process joins one process group (gloo on CPU, nccl on GPU),
runs its model on cuda:LOCAL_RANK (or the CPU), and computes its share of the pending cells, balanced
by cost (`assign_cells`); rank 0 assembles the tables after a barrier. Keys never depend on ranks, so
a run resumes under any world size. RUN_DIR must be on a filesystem that every process sees.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import heapq
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from evals import get_task, parse_task_params, params_to_dict
from harness.errors import UserError

SCHEMA_VERSION = 1
MODEL_COLUMNS = ("model", "attention", "rope_theta")


@dataclasses.dataclass(frozen=True)
class ModelRequest:
    """One model to evaluate: checkpoint spec, attention spec (None: the checkpoint's own), RoPE base."""

    spec: str
    attention: str | None = None
    rope_theta: float | None = None


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the grid after the cell in flight; finished cells are saved in `run_dir`."""

    def __init__(self, run_dir: Path, done: int, total: int):
        super().__init__(f"interrupted with {done}/{total} cells done in {run_dir}")
        self.run_dir, self.done, self.total = run_dir, done, total


@dataclasses.dataclass(frozen=True)
class Cell:
    """One unit of work: a model (index into the plan's models) at one grid point, keyed by content."""

    model_index: int
    coords: dict
    key: str
    cost: float


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Everything decided, and validated, before a file is written: task, params, models, keyed cells."""

    task: object
    params: object
    requests: tuple
    infos: tuple
    """harness.checkpoint.ModelInfo per request (no weights loaded)"""
    cells: tuple
    run_dir: Path
    corpus_fingerprint: str | None

    def cell_path(self, cell: Cell) -> Path:
        """Where a finished cell is saved."""
        return self.run_dir / "cells" / f"{cell.key}.json"

    def pending(self) -> list[Cell]:
        """Cells not finished yet."""
        return [c for c in self.cells if not self.cell_path(c).exists()]


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def cell_seed(base_seed: int, cell: dict) -> int:
    """Seed of one cell: from the task seed and the cell's coordinates only (never the model or order)."""
    return int(_sha([base_seed, cell])[:8], 16)


def check_run_name(name: str) -> str:
    """A run name that stays inside the output root: no path separators, not '.' or '..'."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or os.sep in name or "\0" in name:
        raise UserError(f"bad run name {name!r}: use a plain folder name without '/', '\\' or '..'")
    return name


def _atomic_write(path: Path, write) -> None:
    """Write through `write(tmp_path)`, then rename: readers never see a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, obj) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, default=str)
            f.flush()
            os.fsync(f.fileno())

    _atomic_write(path, write)


def plan_run(task_name: str, models, params=None, *, out_root="results", name: str | None = None,
             device: str = "cpu", dtype: str | None = None, allow_pickle: bool = False,
             trust_remote_code: bool = False) -> RunPlan:
    """Validate a run (task, params, models, corpus, name) and key its cells; loads no weights, writes nothing."""
    from harness import checkpoint

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
    infos = tuple(checkpoint.describe_model(r.spec, r.attention, r.rope_theta, allow_pickle=allow_pickle,
                                            trust_remote_code=trust_remote_code, dtype=dtype, device=device)
                  for r in requests)
    idents = [(i.fingerprint, i.attention, i.rope_theta, i.dtype) for i in infos]
    if len(set(idents)) < len(idents):
        raise UserError("the same model, attention and rope theta are given twice")
    corpus_fp = _corpus_fingerprint(params)
    param_dict = params_to_dict(params)
    coords = task.cells(params)
    if len({_sha(c) for c in coords}) < len(coords):
        raise RuntimeError(f"task {task.name!r} returned duplicate cells")

    # The key: everything that decides a cell's result. Grid-only params are left out, so a larger
    # grid reuses the cells it shares with a smaller one.
    keyed = {k: v for k, v in param_dict.items() if k not in task.grid_params}
    base = {"schema": SCHEMA_VERSION, "task": task.name, "task_version": task.version,
            "params": keyed, "corpus": corpus_fp}
    cells = tuple(Cell(m, c, _sha({**base, "model": idents[m], "cell": c}), float(task.cost(params, c)))
                  for m in range(len(infos)) for c in coords)
    run_dir = Path(out_root) / (name or f"{task.name}-{_sha([task.name, param_dict, idents])[:8]}")
    _check_existing(run_dir, task.name)
    return RunPlan(task, params, requests, infos, cells, run_dir, corpus_fp)


def run_task(task_name: str, models, params=None, *, out_root="results", name: str | None = None,
             device: str = "cpu", dtype: str | None = None, allow_pickle: bool = False,
             trust_remote_code: bool = False, progress: bool = True, device_map: str | None = None) -> Path:
    """Run a task's grid on each model (resuming finished cells) and return the run directory."""
    if device_map is not None:
        from harness.checkpoint import check_device_map

        check_device_map(device_map)
    plan = plan_run(task_name, models, params, out_root=out_root, name=name, device=device, dtype=dtype,
                    allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    extra = {"device_map": device_map} if device_map is not None else {}
    return execute(plan, progress=progress, device=device, dtype=dtype, allow_pickle=allow_pickle,
                   trust_remote_code=trust_remote_code, **extra)


def execute(plan: RunPlan, *, progress: bool = True, **load_kw) -> Path:
    """Compute the plan's pending cells (this process's share under torchrun), then assemble the run dir."""
    rank, world = _shard()
    if world > 1 and load_kw.get("device_map") is not None:
        raise UserError(f"--device-map spreads one model over all devices in one process; do not combine it "
                        f"with torchrun (WORLD_SIZE={world})")
    load_kw["device"] = _local_device(load_kw.get("device", "cpu"), world)
    joined = _join_group(world, load_kw["device"])
    try:
        return _execute(plan, rank, world, progress, load_kw)
    finally:
        if joined:
            import torch.distributed as dist

            dist.destroy_process_group()


def _execute(plan: RunPlan, rank: int, world: int, progress: bool, load_kw: dict) -> Path:
    run_dir, cells = plan.run_dir, plan.cells
    fresh = not run_dir.exists()
    (run_dir / "cells").mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(run_dir / "cells")
    previous = _check_existing(run_dir, plan.task.name)
    manifest = {
        "schema_version": SCHEMA_VERSION, "task": plan.task.name, "params": params_to_dict(plan.params),
        "models": [i.as_dict() for i in plan.infos], "corpus_fingerprint": plan.corpus_fingerprint,
        "versions": _versions(), "git_sha": _git_sha(), "device": plan.infos[0].device,
        "dtype": plan.infos[0].dtype, "first_started_at": previous.get("first_started_at") or _now(),
        "started_at": _now(), "finished_at": None, "status": "running",
        "cells_total": len(cells), "cells_done": None, "command": sys.argv,
    }
    if rank == 0:
        _write_json(run_dir / "manifest.json", manifest)

    # Only pending cells are shared out; every rank uses rank 0's view of what is pending, taken
    # before anyone computes, so no cell is skipped or done twice.
    pending = _agreed_pending(plan, world)
    mine = assign_cells(pending, world)[rank]
    try:
        with _deferred_sigint() as stop:
            _run_pending(plan, mine, stop, progress=progress and rank == 0, **load_kw)
    except BaseException as e:
        if isinstance(e, UserError) and fresh and world == 1 and not any((run_dir / "cells").iterdir()):
            # bad input found once the model was loaded (e.g. a tokenizer-dependent minimum length):
            # this call made the folder and nothing finished, so leave nothing behind
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        _assemble(plan, manifest, status, draw=False)
        raise
    if stop.is_set():
        done = _assemble(plan, manifest, "interrupted", draw=False)
        raise RunInterrupted(run_dir, done, len(cells))
    _barrier(world)  # every process has saved its cells
    if rank == 0:
        _assemble(plan, manifest, "complete", draw=True)
    _barrier(world)
    return run_dir


def assign_cells(cells, world: int) -> list[list[Cell]]:
    """Split cells over `world` ranks, balanced by cost and deterministic; each share in grid order."""
    # LPT: the most expensive cell first, each to the least-loaded rank (ties: cell key, lowest rank).
    order = {c.key: i for i, c in enumerate(cells)}
    shares: list[list[Cell]] = [[] for _ in range(world)]
    loads = [(0.0, r) for r in range(world)]
    for cell in sorted(cells, key=lambda c: (-c.cost, c.key)):
        load, r = heapq.heappop(loads)
        shares[r].append(cell)
        heapq.heappush(loads, (load + cell.cost, r))
    return [sorted(share, key=lambda c: order[c.key]) for share in shares]


def _run_pending(plan: RunPlan, cells, stop, *, progress: bool, **load_kw) -> None:
    """Compute the unfinished ones of `cells`, one model loaded at a time, each saved as soon as it is done."""
    from tqdm.auto import tqdm

    from harness import checkpoint

    pending = [c for c in cells if not plan.cell_path(c).exists()]
    total_cost = sum(c.cost for c in cells)
    bar = tqdm(total=total_cost, initial=total_cost - sum(c.cost for c in pending), disable=not progress,
               desc=plan.task.name, unit="cost", file=sys.stderr, dynamic_ncols=True,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")
    done = len(cells) - len(pending)
    bar.set_postfix_str(f"{done}/{len(cells)} cells")
    try:
        for m, request in enumerate(plan.requests):
            todo = [c for c in pending if c.model_index == m]
            if not todo or stop.is_set():
                continue
            loaded = checkpoint.load_model(request.spec, request.attention, request.rope_theta, **load_kw)
            if loaded.info.fingerprint != plan.infos[m].fingerprint:
                raise RuntimeError(f"{request.spec}: checkpoint changed after the run started")
            state = plan.task.prepare(plan.params, loaded)
            for cell in todo:
                if stop.is_set():
                    break
                _write_json(plan.cell_path(cell), _run_cell(plan.task, plan.params, loaded, state, cell))
                done += 1
                bar.set_postfix_str(f"{done}/{len(cells)} cells")
                bar.update(cell.cost)
            del loaded, state
            _free_memory()
    finally:
        bar.close()


def _run_cell(task, params, loaded, state, cell: Cell) -> dict:
    """One cell with its telemetry, as the JSON document saved under cells/."""
    seed = cell_seed(getattr(params, "seed", 0), cell.coords)
    _seed_everything(seed)
    cuda = str(loaded.info.device).startswith("cuda")
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats(loaded.info.device)
    start = time.perf_counter()
    out = dict(task.run_cell(params, loaded, cell.coords, state, seed))
    seconds = time.perf_counter() - start
    telemetry = dict(out.pop("telemetry", None) or {})
    unknown = set(out) - set(task.tables)
    if unknown:
        raise RuntimeError(f"task {task.name!r} returned rows for undeclared tables {sorted(unknown)}")
    tokens = telemetry.get("tokens", cell.coords.get("context_length"))
    if cuda:
        peak, how = torch.cuda.max_memory_allocated(loaded.info.device), "cuda_max_allocated"
    else:
        # CPU: the process's peak resident set so far (ru_maxrss, KiB on Linux); it never decreases,
        # so it is an upper bound for this cell, not the cell's own peak.
        peak, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process_max_rss"
    telemetry.update(seconds=seconds, tokens=tokens, tokens_per_s=(tokens / seconds if tokens and seconds else None),
                     peak_memory_mb=peak / 2**20, memory_kind=how, seed=seed, finished_at=_now())
    return {"key": cell.key, "cell": cell.coords, "tables": out, "telemetry": telemetry}


def _assemble(plan: RunPlan, manifest: dict, status: str, *, draw: bool) -> int:
    """Rebuild tables/ from the grid's finished cells and update the manifest; return cells done."""
    task, params, run_dir, infos = plan.task, plan.params, plan.run_dir, plan.infos
    rows: dict[str, list[dict]] = {t: [] for t in task.tables}
    labels = _model_labels(infos)
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
        _atomic_write(tables_dir / f"{table}.parquet", lambda tmp, df=df: df.to_parquet(tmp, index=False))
        _atomic_write(tables_dir / f"{table}.csv", lambda tmp, df=df: df.to_csv(tmp, index=False))
    manifest.update(cells_done=done, finished_at=_now(), status=status, tables=sorted(tables))
    if draw and done:
        figures_dir = run_dir / "figures"
        figures_dir.mkdir(exist_ok=True)
        drawn = task.figures(tables, manifest, figures_dir) or []
        if not any(figures_dir.iterdir()):
            figures_dir.rmdir()
        manifest["figures"] = [str(Path(p).relative_to(run_dir)) if Path(p).is_relative_to(run_dir) else str(p)
                               for p in drawn]
        task.finalize(run_dir, tables, params)
    _write_json(run_dir / "manifest.json", manifest)
    return done


def _model_labels(infos) -> list[str]:
    """The `model` column: the model's name, with a fingerprint prefix where two different models share it."""
    names = [i.name for i in infos]
    clash = {n for n in names if len({i.fingerprint for i in infos if i.name == n}) > 1}
    return [f"{i.name}@{i.fingerprint[:8]}" if i.name in clash else i.name for i in infos]


def _check_existing(run_dir: Path, task_name: str) -> dict:
    """The manifest of an earlier run of this task in run_dir ({} if none); refuse other folders."""
    if (run_dir / "manifest.json").is_file():
        old = json.loads((run_dir / "manifest.json").read_text())
        if old.get("task") != task_name:
            raise UserError(f"{run_dir} holds a run of task {old.get('task')!r}; choose another --name")
        return old
    if run_dir.exists() and any(run_dir.iterdir()) and not (run_dir / "cells").is_dir():
        raise UserError(f"{run_dir} exists and is not a run directory; choose another --name")
    return {}


def _remove_stale_tmp(cells_dir: Path) -> None:
    """Delete temp files of processes that died mid-write (their pid is in the name)."""
    for tmp in cells_dir.glob(".*.tmp"):
        try:
            os.kill(int(tmp.name.split(".")[-2]), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            pass


def _shard() -> tuple[int, int]:
    """(rank, world size) when started by torchrun, else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _local_device(device: str, world: int) -> str:
    """Under torchrun with --device auto|cuda and CUDA present: this process's GPU, cuda:LOCAL_RANK."""
    if world == 1 or device not in ("auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    local = int(os.environ.get("LOCAL_RANK", 0))
    if local >= torch.cuda.device_count():
        raise UserError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} GPUs are visible; "
                        "start at most one process per GPU (torchrun --nproc_per_node)")
    return f"cuda:{local}"


def _join_group(world: int, device: str) -> bool:
    """Join torchrun's process group (nccl on GPU, gloo on CPU); True if this call created it."""
    if world == 1:
        return False
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(device)
    # Ranks wait at barriers for the slowest one, which may be busy with a long cell for hours; a rank
    # that dies is noticed by torchrun, which stops the others, so the timeout is only a last resort.
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=dt.timedelta(hours=24))
    return True


def _agreed_pending(plan: RunPlan, world: int) -> list[Cell]:
    """The plan's pending cells as rank 0 sees them (every rank gets the same list)."""
    pending = plan.pending()
    if world == 1:
        return pending
    import torch.distributed as dist

    keys = [[c.key for c in pending]]
    dist.broadcast_object_list(keys, src=0)
    wanted = set(keys[0])
    return [c for c in plan.cells if c.key in wanted]


def _barrier(world: int) -> None:
    """Wait for every torchrun process (no-op in a single process)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _corpus_fingerprint(params) -> str | None:
    """Fingerprint of the task's corpus (part of every cell key), or None for tasks without one."""
    if not hasattr(params, "corpus"):
        return None
    try:
        from harness.corpus import load_corpus
    except ImportError as e:
        raise RuntimeError(f"the task has a corpus parameter but harness.corpus is unavailable: {e}") from e
    return load_corpus(params.corpus).fingerprint


@contextmanager
def _deferred_sigint():
    """First Ctrl-C sets the yielded event (stop after the cell in flight); a second one aborts at once."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nstopping after the cell in flight (Ctrl-C again to abort it)", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(seed)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


def _free_memory() -> None:
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for dist in ("long-context-harness", "torch", "transformers"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def _git_sha() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
