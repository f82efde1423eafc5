"""Task registry: tasks register by exact name; their parameters are typed frozen dataclasses.

Add a task: write `evals/<name>.py` with a frozen dataclass of parameters (every field typed, with a
default and a docstring line right under it) and a `Task` subclass decorated `@register_task("name")`.
This package imports every module in it at the bottom, so the task appears in `lch tasks`.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import inspect
import pkgutil
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

from harness.errors import UserError

_TASKS: dict[str, type["Task"]] = {}


class Task:
    """Base class of a task: how its work splits into cells and how one cell runs on a loaded model."""

    name: str = ""  # set by register_task
    Params: type = None  # frozen dataclass of typed, documented parameters
    tables: tuple[str, ...] = ()  # tables the rows of run_cell go to
    grid_params: tuple[str, ...] = ()  # params that only choose which cells exist (left out of cell keys)
    version: int = 1  # bump when results of the same cell change meaning (invalidates finished cells)

    def cells(self, params) -> list[dict]:
        """The independent units of work: JSON-able coordinates, e.g. {"context_length": 256, "depth": 0.5}."""
        raise NotImplementedError

    def cost(self, params, cell: dict) -> float:
        """Relative cost of a cell (weights the progress bar's ETA)."""
        return 1.0

    def validate(self, params) -> None:
        """Raise UserError for bad parameters (runs before any weights are loaded)."""

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
        _check_params_class(name, cls.Params)
        cls.name = name
        _TASKS[name] = cls
        return cls

    return wrap


def _check_params_class(name: str, params_cls) -> None:
    if not (dataclasses.is_dataclass(params_cls) and params_cls.__dataclass_params__.frozen):
        raise TypeError(f"task {name!r}: Params must be a frozen dataclass")
    for f in dataclasses.fields(params_cls):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise TypeError(f"task {name!r}: parameter {f.name!r} needs a default")


def list_tasks() -> list[str]:
    """Names of the registered tasks, sorted."""
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    """The task registered under `name` (an instance); unknown names suggest the closest one."""
    if name not in _TASKS:
        close = difflib.get_close_matches(name, list(_TASKS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"unknown task {name!r}{hint} Tasks: {', '.join(list_tasks()) or '(none)'}")
    return _TASKS[name]()


def _as_task(task) -> Task:
    if isinstance(task, str):
        return get_task(task)
    return task() if isinstance(task, type) else task


# ---------------------------------------------------------------- parameters


@dataclasses.dataclass(frozen=True)
class ParamInfo:
    """One task parameter as `lch tasks TASK` shows it."""

    name: str
    type: str
    default: Any
    doc: str


def param_infos(task) -> list[ParamInfo]:
    """Name, type, default and docstring line of every parameter of a task."""
    task = _as_task(task)
    hints = typing.get_type_hints(task.Params)
    docs = _field_docs(task.Params)
    out = []
    for f in dataclasses.fields(task.Params):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append(ParamInfo(f.name, _type_name(hints[f.name]), default, docs.get(f.name, "")))
    return out


def _field_docs(cls) -> dict[str, str]:
    """The string literal right under each annotated field of a class (first line), from its source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}  # no source (e.g. defined in a REPL): no docs
    body = tree.body[0].body
    docs = {}
    for stmt, nxt in zip(body, body[1:]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[stmt.target.id] = inspect.cleandoc(nxt.value.value).splitlines()[0]
    return docs


def _unwrap_optional(tp):
    """(inner type, accepts None) for `X | None` / Optional[X]."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _type_name(tp) -> str:
    inner, optional = _unwrap_optional(tp)
    if typing.get_origin(inner) is tuple:
        args = typing.get_args(inner)
        name = f"list of {args[0].__name__}" if args else "list"
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{name} or none" if optional else name


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _convert(value, tp, where: str):
    """`value` (a -T string or a YAML value) as type `tp`, or UserError naming `where`."""
    inner, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
        if optional:
            return None
        raise UserError(f"{where}: a value is required ({_type_name(tp)})")
    if typing.get_origin(inner) is tuple:
        (elem, *rest) = typing.get_args(inner) or (str,)
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",")]
            if any(v == "" for v in items):
                raise UserError(f"{where}: expected a comma-separated list of {elem.__name__}, got {value!r}")
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            items = [value]
        return tuple(_scalar(v, elem, f"{where} (item {i + 1})") for i, v in enumerate(items))
    return _scalar(value, inner, where)


def _scalar(value, tp, where: str):
    bad = UserError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).strip().lower() in _TRUE | _FALSE:
            return str(value).strip().lower() in _TRUE
        raise UserError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                raise bad from None
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    if tp is Path:
        return Path(str(value))
    if isinstance(value, tp):
        return value
    raise bad


def parse_task_params(task, overrides: dict[str, Any] | None = None):
    """The task's Params from -T strings or YAML values; unknown names and bad values raise UserError."""
    task = _as_task(task)
    hints = typing.get_type_hints(task.Params)
    allowed = [f.name for f in dataclasses.fields(task.Params)]
    kwargs = {}
    for key, value in (overrides or {}).items():
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"unknown parameter {key!r} for task {task.name!r}{hint}; "
                            f"allowed: {', '.join(allowed)}")
        kwargs[key] = _convert(value, hints[key], f"parameter {key!r} of task {task.name!r}")
    try:
        params = task.Params(**kwargs)
    except UserError:
        raise
    except (TypeError, ValueError) as e:
        raise UserError(f"bad parameters for task {task.name!r}: {e}") from None
    task.validate(params)
    return params


def params_to_dict(params) -> dict:
    """JSON-able dict of a Params instance (tuples become lists)."""
    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return str(v) if isinstance(v, Path) else v

    return {f.name: plain(getattr(params, f.name)) for f in dataclasses.fields(params)}


# ------------------------------------------------- import the task modules (they register themselves)
# Every module in this package is a task module; one that exists and fails to import raises here.
for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")
