"""torchrun: ranks, this process's device, the process group, sharding cells by cost, barriers.

Under torchrun (WORLD_SIZE > 1) every process joins one process group (gloo on CPU, nccl on GPU),
runs its model on cuda:LOCAL_RANK (or the CPU), and computes its share of the pending cells, balanced
by cost (`assign_cells`); rank 0 assembles the tables after a barrier. Keys never depend on ranks, so
a run resumes under any world size. RUN_DIR must be on a filesystem that every process sees.
"""

from __future__ import annotations

import datetime as dt
import heapq
import os
from typing import TYPE_CHECKING

from harness.errors import UserError

if TYPE_CHECKING:
    from harness.runner.plan import Cell, RunPlan


def assign_cells(cells, world: int) -> list[list[Cell]]:
    """Split cells over `world` ranks, balanced by cost and deterministic; a task's group stays on one rank.

    With fewer groups than ranks the cells are dealt one by one instead (every rank busy; a rank still
    runs its cells of a group consecutively). Each share is in `schedule` order.
    """
    # LPT over groups: the most expensive group first, each to the least-loaded rank (ties: key, lowest rank).
    groups = list(_groups(cells).values())
    if len(groups) < world:
        groups = [[c] for c in cells]
    shares: list[list[Cell]] = [[] for _ in range(world)]
    loads = [(0.0, r) for r in range(world)]
    for members in sorted(groups, key=lambda g: (-sum(c.cost for c in g), min(c.key for c in g))):
        load, r = heapq.heappop(loads)
        shares[r].extend(members)
        heapq.heappush(loads, (load + sum(c.cost for c in members), r))
    return [schedule(share, grid=cells) for share in shares]


def _group_of(cell: Cell):
    """A cell's group across the plan: its model and the task's group (a cell without one is alone)."""
    return (cell.model_index, cell.group) if cell.group is not None else ("cell", cell.key)


def _groups(cells) -> dict:
    groups: dict = {}
    for cell in cells:
        groups.setdefault(_group_of(cell), []).append(cell)
    return groups


def schedule(cells, grid=None) -> list[Cell]:
    """The order cells run in: groups by their first cell in grid order, cells within a group by the task's order."""
    position = {c.key: i for i, c in enumerate(grid if grid is not None else cells)}
    groups = _groups(sorted(cells, key=lambda c: position[c.key]))
    ordered = [sorted(g, key=lambda c: (c.order, position[c.key])) for g in groups.values()]
    return [c for g in ordered for c in g]


def shard() -> tuple[int, int]:
    """(rank, world size) when started by torchrun, else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def local_device(device: str, world: int) -> str:
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


def join_group(world: int, device: str) -> bool:
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


def agreed_pending(plan: RunPlan, world: int) -> list[Cell]:
    """The plan's pending cells as rank 0 sees them (every rank gets the same list)."""
    pending = plan.pending()
    if world == 1:
        return pending
    import torch.distributed as dist

    keys = [[c.key for c in pending]]
    dist.broadcast_object_list(keys, src=0)
    wanted = set(keys[0])
    return [c for c in plan.cells if c.key in wanted]


def barrier(world: int) -> None:
    """Wait for every torchrun process (no-op in a single process)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
