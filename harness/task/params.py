"""Typed task parameters: -T strings and YAML values -> a task's frozen Params dataclass, and back.

A task's Params is a frozen dataclass; every field is typed, has a default, and a docstring line
right under it (shown by `lch tasks TASK`). Imports no torch.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

from harness.errors import UserError


def check_params_class(name: str, params_cls) -> None:
    """TypeError unless `params_cls` is a frozen dataclass whose every field has a default."""
    if not (dataclasses.is_dataclass(params_cls) and params_cls.__dataclass_params__.frozen):
        raise TypeError(f"task {name!r}: Params must be a frozen dataclass")
    for f in dataclasses.fields(params_cls):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise TypeError(f"task {name!r}: parameter {f.name!r} needs a default")



@dataclasses.dataclass(frozen=True)
class ParamInfo:
    """One task parameter as `lch tasks TASK` shows it."""

    name: str
    type: str
    default: Any
    doc: str


def param_infos(task) -> list[ParamInfo]:
    """Name, type, default and docstring line of every parameter of a Task."""
    hints = typing.get_type_hints(task.Params)
    docs = _field_docs(task.Params)
    out = []
    for f in dataclasses.fields(task.Params):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append(ParamInfo(f.name, _type_name(hints[f.name]), default, docs.get(f.name, "")))
    return out


def _field_docs(cls) -> dict[str, str]:
    """Field docs along the dataclass hierarchy (a preset's Params inherits its parent's documentation)."""
    docs: dict[str, str] = {}
    for klass in reversed([c for c in cls.__mro__ if dataclasses.is_dataclass(c)]):
        docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls) -> dict[str, str]:
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
