"""Tasks as plug-ins: the Task base class, the registry, and discovery of task modules.

A task is a `Task` subclass registered by exact name with `@register_task("name")`, whose `Params`
is a frozen dataclass of typed, documented parameters (harness.task.params). Tasks are found lazily, on
the first lookup, in three places:
- every module of the packages in TASK_PACKAGES (this repository's `evals/`);
- the entry-point group `lch.tasks` of installed packages (a module, or a Task subclass);
- files given explicitly with `include(path)` (`lch run --include my_task.py ...`).
Imports no torch.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pkgutil
import sys
import warnings
from importlib.metadata import entry_points
from pathlib import Path

from harness.errors import UserError, unknown_name
from harness.task.params import check_params_class

TASK_PACKAGES = ("evals",)
ENTRY_POINT_GROUP = "lch.tasks"

_TASKS: dict[str, type["Task"]] = {}
_discovered = False


class Task:
    """Base class of a task: how its work splits into cells and how one cell runs on a loaded model."""

    name: str = ""  # set by register_task
    Params: type = None  # frozen dataclass of typed, documented parameters
    tables: tuple[str, ...] = ()  # tables the rows of run_cell go to
    grid_params: tuple[str, ...] = ()  # params that only choose which cells exist (left out of cell keys)
    execution_params: tuple[str, ...] = ()  # params that change how cells run, never their results (left out of
    # cell keys and of the default run name: toggling one resumes the same run)
    version: int = 1  # bump when results of the same cell change meaning (invalidates finished cells)
    added_params: dict = {}  # parameter -> value: added later, left out of cell keys at that value (old runs resume)
    tensor_parallel: bool = True  # whether cells can run on a model whose heads are split over processes

    def cells(self, params) -> list[dict]:
        """The independent units of work: JSON-able coordinates, e.g. {"context_length": 256, "depth": 0.5}."""
        raise NotImplementedError

    def cost(self, params, cell: dict) -> float:
        """Relative cost of a cell (weights the progress bar's ETA and torchrun's sharding)."""
        return 1.0

    def group(self, params, cell: dict) -> object:
        """Cells of one model with the same (hashable) group run consecutively, on one rank; None: no group.

        A group is a unit of shared work (e.g. one trial's haystack, prefilled once for its prompts); cells and
        keys stay as they are, so an interrupted group loses at most its cell in flight.
        """
        return None

    def order(self, params, cell: dict) -> object:
        """Sort key of a cell within its group (e.g. latest needle first); ties keep grid order."""
        return 0

    def validate(self, params) -> None:
        """Raise UserError for bad parameters (runs before any weights are loaded)."""

    def data_fingerprint(self, params) -> str | None:
        """What identifies the task's data (e.g. its corpus); part of every cell key. None: no data."""
        return None

    def base_seed(self, params) -> int:
        """The seed every cell seed derives from: the contract's `seed` parameter (0 if Params has none)."""
        return int(params.seed) if "seed" in getattr(self.Params, "__dataclass_fields__", {}) else 0

    def prepare(self, params, loaded) -> object:
        """Per-(task, model) state shared by that model's cells, e.g. a tokenised corpus."""
        return None

    def run_cell(self, params, loaded, cell: dict, state, seed: int) -> dict[str, list[dict]]:
        """Rows per table for one cell, without model/attention/rope_theta (the runner adds them).

        An optional key "telemetry" holds a dict such as {"tokens": 4096}; it is not a table.
        """
        raise NotImplementedError

    def summarize(self, tables: dict, params) -> dict:
        """Derived tables computed from the assembled ones (name -> DataFrame)."""
        return {}

    def figures(self, tables: dict, manifest: dict, out_dir: Path) -> list[Path]:
        """Draw the task's PNGs into out_dir; return their paths."""
        return []

    def finalize(self, run_dir: Path, tables: dict, params) -> None:
        """Write extra artefacts into the run directory (e.g. prompts.jsonl)."""


def register_task(name: str):
    """Class decorator registering a Task subclass under `name`; a duplicate name fails at import."""

    def wrap(cls):
        if name in _TASKS:
            raise ValueError(f"a task named {name!r} is already registered ({_TASKS[name].__module__})")
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"@register_task({name!r}) expects a Task subclass, got {cls!r}")
        check_params_class(name, cls.Params)
        cls.name = name
        _TASKS[name] = cls
        return cls

    return wrap


def discover() -> None:
    """Import the task packages' modules and the `lch.tasks` entry points (once; later calls do nothing)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for package in TASK_PACKAGES:
        try:
            pkg = importlib.import_module(package)
        except ModuleNotFoundError as e:
            if e.name != package:
                raise
            continue  # an installation without the package: its tasks are simply absent
        for mod in pkgutil.iter_modules(pkg.__path__):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{package}.{mod.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = ep.load()
        except Exception as e:  # one broken plug-in must not hide every other task
            warnings.warn(f"task plug-in {ep.name!r} ({ep.value}) failed to load: {e}", stacklevel=2)
            continue
        if isinstance(loaded, type) and issubclass(loaded, Task) and not loaded.name:
            register_task(ep.name)(loaded)


def include(path: str | Path) -> list[str]:
    """Import a task file (it registers its tasks); returns the names it registered."""
    path = Path(path).expanduser()
    if not path.is_file() or path.suffix != ".py":
        raise UserError(f"--include {str(path)!r}: not a Python file")
    resolved = path.resolve()
    module_name = f"lch_included_{resolved.stem}_{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}"
    if module_name in sys.modules:
        return []
    before = set(_TASKS)
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (SyntaxError, ImportError, ValueError, TypeError) as e:
        del sys.modules[module_name]
        raise UserError(f"--include {str(path)!r} failed to import: {type(e).__name__}: {e}") from None
    return sorted(set(_TASKS) - before)


def list_tasks() -> list[str]:
    """Names of the registered tasks, sorted."""
    discover()
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    """The task registered under `name` (an instance); unknown names suggest the closest one."""
    discover()
    if name not in _TASKS:
        raise unknown_name("task", name, _TASKS)
    return _TASKS[name]()


def as_task(task) -> Task:
    """A Task instance from a name, a Task subclass or an instance."""
    if isinstance(task, str):
        return get_task(task)
    return task() if isinstance(task, type) else task


__all__ = ["Task", "register_task", "discover", "include", "list_tasks", "get_task", "as_task",
           "TASK_PACKAGES", "ENTRY_POINT_GROUP"]
