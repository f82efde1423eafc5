"""Fake tasks for the runner/CLI tests: a forward pass per cell on a tiny model, optionally slow."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from harness.task import _TASKS, Task, register_task
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
    interrupt_length: int = 0
    """Send interrupt_signal to this process while computing cells of this length (0: never)."""
    interrupt_signal: str = "SIGINT"
    """Signal sent at interrupt_length: SIGINT (Ctrl-C) or SIGTERM (schedulers, torchrun)."""
    fail_length: int = 0
    """Raise while computing cells of this length (0: never)."""
    prepare_error: bool = False
    """Raise a UserError in prepare: bad input only found once the model is loaded."""


class FakeTask(Task):
    """A fake task: random token ids per cell, one forward, mean NLL."""

    Params = FakeParams
    tables = ("fake",)
    grid_params = ("lengths", "trials", "sleep", "log", "interrupt_length", "interrupt_signal", "fail_length", "prepare_error")

    def validate(self, params):
        if any(n < 2 for n in params.lengths):
            raise UserError(f"lengths must be >= 2, got {params.lengths}")

    def cells(self, params):
        return [{"length": n, "trial": t} for n in params.lengths for t in range(params.trials)]

    def cost(self, params, cell):
        return float(cell["length"])

    def prepare(self, params, loaded):
        if params.prepare_error:
            raise UserError("fake: bad input found after loading")
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
        if cell["length"] == params.fail_length:
            raise RuntimeError("fake failure")
        if cell["length"] == params.interrupt_length:
            os.kill(os.getpid(), getattr(signal, params.interrupt_signal))
        row = {**cell, "first_id": int(ids[0, 0]), "nll": nll, "noise": torch.rand(1).item()}
        return {"fake": [row], "telemetry": {"tokens": cell["length"]}}


if "fake" not in _TASKS:
    register_task("fake")(FakeTask)


@dataclass(frozen=True)
class CorpusParams:
    corpus: str = "builtin:stdlib"
    """Corpus spec."""
    seed: int = 0
    """Base seed."""


class CorpusTask(Task):
    """A fake task that reads its corpus: the first characters of every document."""

    Params = CorpusParams
    tables = ("heads",)

    def data_fingerprint(self, params):
        from harness.data.corpus import load_corpus

        return load_corpus(params.corpus).fingerprint

    def cells(self, params):
        return [{"doc": 0}]

    def run_cell(self, params, loaded, cell, state, seed):
        from harness.data.corpus import load_corpus

        docs = load_corpus(params.corpus).documents
        return {"heads": [{"doc_id": d.doc_id, "head": d.text[:10]} for d in docs]}


if "fake_corpus" not in _TASKS:
    register_task("fake_corpus")(CorpusTask)
