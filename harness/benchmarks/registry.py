"""A small registry of performance benchmarks: each measures ratios within one run (never timed tests).

A benchmark lives in `harness/benchmarks/<name>.py`:

    @register_bench("attention", "SSMax (SDPA + query scale) vs plain SDPA, and vs the eager reference")
    def attention(quick: bool) -> dict:
        return {"rows": [{"n": 1024, "ssmax_ms": 1.2, "sdpa_ms": 1.1}], "ratios": {"ssmax/sdpa": 1.09}}

`rows` are printed as a table and everything is written to `<out>/bench/<name>.json`.
"""

from __future__ import annotations

import datetime as dt
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.atomic import write_json
from harness.errors import unknown_name


@dataclass(frozen=True)
class Bench:
    """A registered benchmark: name, one-line description, and fn(quick) -> dict."""

    name: str
    description: str
    fn: Callable[[bool], dict]


_BENCHES: dict[str, Bench] = {}


def register_bench(name: str, description: str):
    """Decorator registering fn(quick: bool) -> {"rows": [...], "ratios": {...}, ...} under `name`."""

    def wrap(fn):
        if name in _BENCHES:
            raise ValueError(f"a benchmark named {name!r} is already registered")
        _BENCHES[name] = Bench(name, description, fn)
        return fn

    return wrap


def _import_all() -> None:
    """Import every module of harness.benchmarks (lazily: benchmarks pull in torch)."""
    import harness.benchmarks as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{mod.name}")


def list_benches() -> list[Bench]:
    """Every registered benchmark, sorted by name."""
    _import_all()
    return [_BENCHES[n] for n in sorted(_BENCHES)]


def get_bench(name: str) -> Bench:
    """The benchmark registered under `name`; unknown names suggest the closest one."""
    _import_all()
    if name not in _BENCHES:
        raise unknown_name("benchmark", name, _BENCHES)
    return _BENCHES[name]


def run_bench(name: str, quick: bool = False, out_root="results") -> tuple[dict, Path]:
    """Run one benchmark, write `<out_root>/bench/<name>.json`, return (result, json path)."""
    bench = get_bench(name)
    result = bench.fn(quick)
    if not isinstance(result, dict) or not isinstance(result.get("rows", []), list):
        raise RuntimeError(f"benchmark {name!r} must return a dict with a list of 'rows'")
    doc = {"name": name, "description": bench.description, "quick": quick,
           "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **result}
    out = Path(out_root) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    write_json(path, doc, indent=2, default=_jsonable)
    return doc, path


def _jsonable(value):
    # numpy / torch scalars and anything else with .item(); else its string
    return value.item() if hasattr(value, "item") else str(value)
