"""Fake tasks for the runner/CLI tests: a forward pass per cell on a tiny model, optionally slow."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from evals import Task, _TASKS, register_task
from harness.errors import UserError


@dataclass(frozen=True)
class FakeParams:
    lengths: tuple[int, ...] = (8, 16)
    """Sequence lengths (tokens)."""
    trials: int = 2
    """Trials per length."""
    sleep: float = 0.0
    """Seconds each cell sleeps (to interrupt runs in tests)."""
    log: str = ""
    """File that gets one line per computed cell ('' for none)."""
    seed: int = 0
    """Base seed."""


class FakeTask(Task):
    """A fake task: random token ids per cell, one forward, mean NLL."""

    Params = FakeParams
    tables = ("fake",)
    grid_params = ("lengths", "trials", "sleep", "log")

    def validate(self, params):
        if any(n < 2 for n in params.lengths):
            raise UserError(f"lengths must be >= 2, got {params.lengths}")

    def cells(self, params):
        return [{"length": n, "trial": t} for n in params.lengths for t in range(params.trials)]

    def cost(self, params, cell):
        return float(cell["length"])

    def prepare(self, params, loaded):
        return {"vocab": loaded.model.config.vocab_size}

    def run_cell(self, params, loaded, cell, state, seed):
        import torch

        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(1, state["vocab"], (1, cell["length"]), generator=g)
        with torch.no_grad():
            logits = loaded.model(ids).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item()
        if params.log:
            with open(params.log, "a") as f:
                f.write(f"{os.getpid()} {cell['length']} {cell['trial']}\n")
        time.sleep(params.sleep)
        row = {**cell, "first_id": int(ids[0, 0]), "nll": nll, "noise": torch.rand(1).item()}
        return {"fake": [row], "telemetry": {"tokens": cell["length"]}}


if "fake" not in _TASKS:
    register_task("fake")(FakeTask)
