"""The shared runner: task grid -> keyed cells -> resumable execution -> tables, manifest, figures.

    plan         requests, cells, content keys, seeds, checks (writes nothing)
    execute      the loop, per-cell work, telemetry, Ctrl-C
    distributed  torchrun ranks, sharding by cost, barriers
    rundir       the run directory: table assembly, manifest, stale temp files
"""

from harness.runner.distributed import assign_cells
from harness.runner.execute import RunInterrupted, execute, run_task
from harness.runner.plan import Cell, ModelRequest, RunPlan, cell_seed, check_run_name, plan_run
from harness.runner.rundir import SCHEMA_VERSION

__all__ = ["Cell", "ModelRequest", "RunInterrupted", "RunPlan", "SCHEMA_VERSION", "assign_cells", "cell_seed",
           "check_run_name", "execute", "plan_run", "run_task"]
