"""Executing a plan: the loop over models and cells, per-cell work and telemetry, Ctrl-C and SIGTERM, status.

A run interrupted at any moment loses at most the cell in flight: each finished cell is saved at once
(atomically), and the tables and manifest are rebuilt from the saved cells. A damaged cell file is set
aside and its cell computed again; a full disk or an unwritable folder ends the run with one line
(`rundir.WriteError`), finished cells kept.
"""

from __future__ import annotations

import dataclasses
import random
import resource
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from harness.errors import UserError
from harness.models.devices import TENSOR_PARALLEL
from harness.runner import distributed, rundir
from harness.runner.plan import Cell, RunPlan, cell_seed, plan_run



class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the grid after the cell in flight; finished cells are saved in `run_dir`."""

    def __init__(self, run_dir: Path, done: int, total: int):
        super().__init__(f"interrupted with {done}/{total} cells done in {run_dir}")
        self.run_dir, self.done, self.total = run_dir, done, total


def run_task(task_name: str, models, params=None, *, out_root="results", name: str | None = None,
             device: str = "cpu", dtype: str | None = None, allow_pickle: bool = False,
             trust_remote_code: bool = False, progress: bool = True, device_map: str | None = None) -> Path:
    """Run a task's grid on each model (resuming finished cells) and return the run directory."""
    plan = plan_run(task_name, models, params, out_root=out_root, name=name, device=device, dtype=dtype,
                    allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, device_map=device_map)
    return execute(plan, progress=progress)


def execute(plan: RunPlan, *, progress: bool = True) -> Path:
    """Compute the plan's pending cells (this process's share under torchrun), then assemble the run dir.

    Models load exactly as the plan describes them (`plan.infos`); under torchrun each process puts them on
    its own GPU (cuda:LOCAL_RANK), the one placement decided here.
    """
    rank, world = distributed.shard()
    mapped = next((i.device_map for i in plan.infos if i.device_map is not None), None)
    tensor_parallel = mapped == TENSOR_PARALLEL
    if world > 1 and mapped is not None and not tensor_parallel:
        raise UserError(f"--device-map spreads one model over all devices in one process; do not combine it "
                        f"with torchrun (WORLD_SIZE={world})")
    if tensor_parallel and not plan.task.tensor_parallel:
        raise UserError(f"task {plan.task.name!r} reads attention per head, and --device-map tp splits the heads over "
                        f"processes; run it with torchrun alone (one model copy per GPU) or --device-map auto")
    device = distributed.local_device(plan.infos[0].device, world)
    joined = distributed.join_group(world, device)
    try:
        return _execute(plan, rank, world, progress, device, tensor_parallel)
    finally:
        if joined:
            import torch.distributed as dist

            dist.destroy_process_group()


def _execute(plan: RunPlan, rank: int, world: int, progress: bool, device: str, tensor_parallel: bool) -> Path:
    run_dir, cells = plan.run_dir, plan.cells
    fresh = not run_dir.exists()
    rundir.writing(run_dir / "cells", lambda: (run_dir / "cells").mkdir(parents=True, exist_ok=True))
    if rank == 0:
        rundir.remove_stale_tmp(run_dir)
        rundir.set_aside_damaged_cells(plan)  # before rank 0 decides what is pending
    previous = rundir.check_existing(run_dir, plan.task.name, repair=rank == 0)
    manifest = rundir.new_manifest(plan, previous)
    if rank == 0:
        rundir.write_json(run_dir / "manifest.json", manifest)

    # Only pending cells are shared out; every rank uses rank 0's view of what is pending, taken
    # before anyone computes, so no cell is skipped or done twice.
    pending = distributed.agreed_pending(plan, world)
    # tensor parallel: every process computes every cell together (each holds some heads); rank 0 saves them
    mine = pending if tensor_parallel else distributed.assign_cells(pending, world)[rank]
    try:
        with _deferred_sigint() as stop:
            _run_pending(plan, mine, stop, progress=progress and rank == 0, device=device,
                         save=rank == 0 or not tensor_parallel)
    except BaseException as e:
        if isinstance(e, UserError) and fresh and world == 1 and not any((run_dir / "cells").iterdir()):
            # bad input found once the model was loaded (e.g. a tokenizer-dependent minimum length):
            # this call made the folder and nothing finished, so leave nothing behind
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        try:
            rundir.assemble(plan, manifest, status, draw=False)
        except rundir.WriteError:
            if not isinstance(e, rundir.WriteError):
                raise
            # the disk is still full: the cells are saved, the tables are rebuilt by the next run
        raise
    if stop.is_set():
        done = rundir.assemble(plan, manifest, "interrupted", draw=False)
        raise RunInterrupted(run_dir, done, len(cells))
    distributed.barrier(world)  # every process has saved its cells
    if rank == 0:
        rundir.assemble(plan, manifest, "complete", draw=True)
    distributed.barrier(world)
    return run_dir


def _run_pending(plan: RunPlan, cells, stop, *, progress: bool, device: str, save: bool = True) -> None:
    """Compute the unfinished ones of `cells`, one model loaded at a time, each saved as soon as it is done
    (`save` False: computed only, as a tensor-parallel process other than rank 0 does)."""
    from tqdm.auto import tqdm

    from harness.models import loading

    # a tensor-parallel rank 0 saves cells while the others still list theirs: those lists are the agreed ones
    pending = [c for c in cells if not save or rundir.load_cell(plan.cell_path(c), c.key) is None]
    total_cost = sum(c.cost for c in cells)
    done = len(cells) - len(pending)
    bar = None  # drawn once the first weights have loaded: a loading error is not preceded by a "0/N cells" bar
    try:
        for m, request in enumerate(plan.requests):
            todo = [c for c in pending if c.model_index == m]
            if not todo or stop.is_set():
                continue
            # the plan's description, on this process's device (cuda:LOCAL_RANK under torchrun)
            loaded = loading.load_described(dataclasses.replace(plan.infos[m], device=device))
            state = plan.task.prepare(plan.params, loaded)
            if bar is None:
                bar = tqdm(total=total_cost, initial=total_cost - sum(c.cost for c in pending), disable=not progress,
                           desc=plan.task.name, unit="cost", file=sys.stderr, dynamic_ncols=True,
                           bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")
                bar.set_postfix_str(f"{done}/{len(cells)} cells")
            for cell in todo:
                if stop.is_set():
                    break
                document = _run_cell(plan.task, plan.params, loaded, state, cell)
                if save:
                    rundir.write_json(plan.cell_path(cell), document)
                done += 1
                bar.set_postfix_str(f"{done}/{len(cells)} cells")
                bar.update(cell.cost)
            del loaded, state
            _free_memory()
    finally:
        if bar is not None:
            bar.close()


def _run_cell(task, params, loaded, state, cell: Cell) -> dict:
    """One cell with its telemetry, as the JSON document saved under cells/."""
    seed = cell_seed(task.base_seed(params), cell.coords)
    _seed_everything(seed)
    cuda = str(loaded.info.device).startswith("cuda")
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats(loaded.info.device)
    from harness.attention.variants import reset_attention_paths

    reset_attention_paths()
    start = time.perf_counter()
    out = dict(task.run_cell(params, loaded, cell.coords, state, seed))
    seconds = time.perf_counter() - start
    telemetry = dict(out.pop("telemetry", None) or {})
    telemetry["attention_paths"] = format_paths(reset_attention_paths())
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
                     peak_memory_mb=peak / 2**20, memory_kind=how, seed=seed, finished_at=rundir.now())
    return {"key": cell.key, "cell": cell.coords, "tables": out, "telemetry": telemetry}


def format_paths(paths: dict[str, int]) -> str:
    """Attention kernels and their calls as one cell of the `cells` table: "split_lse:8,sdpa_decode:40"."""
    return ",".join(f"{name}:{calls}" for name, calls in sorted(paths.items()))


@contextmanager
def _deferred_sigint():
    """First Ctrl-C or SIGTERM (schedulers, torchrun) sets the yielded event: stop after the cell in flight.

    A second one aborts at once.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        what = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        print(f"\n{what}: stopping after the cell in flight (again to abort it)", file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


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
