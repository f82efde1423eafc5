"""The `lch` command line: tasks, run, bench, plot, heatmap, compare, demo, reference build.

Bad input (a UserError or a bad option) ends with one line on stderr and exit code 2; `--debug` adds
the traceback. Heavy imports (torch, transformers) happen inside the commands that need them.
"""

from __future__ import annotations

import os
import shlex
import sys
import traceback
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from harness.errors import UserError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Group(TyperGroup):
    """Typer group that reports user errors as one line (exit 2) for both the script and CliRunner."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in args  # any command: tracebacks and library logging
        args = [a for a in args if a != "--debug"]
        quiet_libraries(not debug)
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
        except UserError as e:
            _fail(str(e), debug)
        except typer.Abort:
            _fail("aborted", debug, code=EXIT_INTERRUPTED)
        except Exception as e:
            if not hasattr(e, "format_message"):  # not a click usage error: a bug, show it
                raise
            _fail(e.format_message(), debug, code=getattr(e, "exit_code", EXIT_USAGE))
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def quiet_libraries(quiet: bool = True) -> None:
    """Library messages meant for their own users (transformers' logging and warnings) off, or on for --debug."""
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1" if quiet else "0")
    for name in ("transformers", "huggingface_hub", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR if quiet else logging.INFO)
    if quiet:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torch")


def _fail(message: str, debug: bool, code: int = EXIT_USAGE):
    if debug:
        traceback.print_exc()
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(code)


app = typer.Typer(cls=_Group, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Evaluate softmax and SSMax attention at long context.")
reference_app = typer.Typer(cls=_Group, no_args_is_help=True, help="The committed reference softmax/SSMax pair.")
app.add_typer(reference_app, name="reference")


class DType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"
    auto = "auto"


def format_table(rows: list[dict]) -> str:
    """Rows of dicts as an aligned plain-text table (floats with 4 significant digits)."""
    if not rows:
        return "(no rows)"
    cols = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v):
        if isinstance(v, float):
            return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.4g}"
        return "" if v is None else str(v)

    body = [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- tasks


@app.command()
def tasks(task: Annotated[Optional[str], typer.Argument(help="show this task's parameters")] = None,
          include: Annotated[Optional[list[str]], typer.Option("--include", help="a task file to register first (repeatable)")] = None):
    """List tasks; with TASK, its parameters, types, defaults and docs."""
    from harness.params import param_infos
    from harness.task import get_task, include as include_file, list_tasks

    for path in include or []:
        include_file(path)

    if task is None:
        rows = [{"task": n, "tables": ",".join(get_task(n).tables), "description": _first_line(get_task(n))}
                for n in list_tasks()]
        typer.echo(format_table(rows))
        return
    t = get_task(task)
    typer.echo(f"{t.name}: {_first_line(t)}\ntables: {', '.join(t.tables)}\n")
    rows = [{"parameter": p.name, "type": p.type, "default": _show(p.default), "doc": p.doc} for p in param_infos(t)]
    typer.echo(format_table(rows))
    typer.echo(f"\nset with -T name=value (lists as a,b,c), e.g. lch run {t.name} --model M -T seed=1")


def _first_line(obj) -> str:
    return ((type(obj).__doc__ or "").strip().splitlines() or [""])[0]


def _show(value, width: int = 40) -> str:
    text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    return text if len(text) <= width else text[: width - 3] + "..."


# --------------------------------------------------------------------------------------------- run

_CONFIG_KEYS = ("task", "params", "models")
_MODEL_KEYS = ("model", "attention", "rope_theta", "rope_bases", "training_length")


def read_run_config(path: Path) -> dict:
    """A run.yaml (task, params, models: [{model, attention, rope_theta}]) checked for shape."""
    import yaml

    if not path.is_file():
        raise UserError(f"--config {str(path)!r}: no such file")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"--config {str(path)!r}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        raise UserError(f"--config {str(path)!r}: expected a mapping with keys {', '.join(_CONFIG_KEYS)}")
    unknown = sorted(set(doc) - set(_CONFIG_KEYS))
    if unknown:
        raise UserError(f"--config {str(path)!r}: unknown key {unknown[0]!r}; allowed: {', '.join(_CONFIG_KEYS)}")
    if "task" in doc and not isinstance(doc["task"], str):
        raise UserError(f"--config {str(path)!r}: 'task' must be a task name, got {doc['task']!r}")
    if not isinstance(doc.get("params") or {}, dict):
        raise UserError(f"--config {str(path)!r}: 'params' must be a mapping of name: value")
    models = doc.get("models") or []
    if not isinstance(models, list):
        raise UserError(f"--config {str(path)!r}: 'models' must be a list of {{model, attention, rope_theta}}")
    parsed = []
    for i, entry in enumerate(models):
        entry = {"model": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise UserError(f"--config {str(path)!r}: models[{i}] needs 'model: <path or id>'")
        bad = sorted(set(entry) - set(_MODEL_KEYS))
        if bad:
            raise UserError(f"--config {str(path)!r}: models[{i}] has unknown key {bad[0]!r}; allowed: {', '.join(_MODEL_KEYS)}")
        theta = entry.get("rope_theta")
        if theta is not None and (isinstance(theta, bool) or not isinstance(theta, (int, float))):
            raise UserError(f"--config {str(path)!r}: models[{i}].rope_theta must be a number, got {theta!r}")
        length = entry.get("training_length")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int)):
            raise UserError(f"--config {str(path)!r}: models[{i}].training_length must be an integer, got {length!r}")
        bases = entry.get("rope_bases") or {}
        if not isinstance(bases, dict) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in bases.values()):
            raise UserError(f"--config {str(path)!r}: models[{i}].rope_bases must map layer types to numbers, "
                            "e.g. {{sliding_attention: 20000}}")
        if entry.get("attention") is not None and not isinstance(entry["attention"], str):
            raise UserError(f"--config {str(path)!r}: models[{i}].attention must be a spec string")
        parsed.append(entry)
    return {"task": doc.get("task"), "params": dict(doc.get("params") or {}), "models": parsed}


def parse_rope_bases(items: list[str]) -> dict[str, float]:
    """--rope-base TYPE=X strings -> {layer type: base}."""
    out = {}
    for item in items:
        kind, sep, value = item.partition("=")
        try:
            out[kind.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not kind.strip():
            raise UserError(f"bad --rope-base {item!r}: expected LAYER_TYPE=BASE, e.g. --rope-base sliding_attention=20000")
    return out


def parse_overrides(items: list[str]) -> dict[str, str]:
    """-T name=value strings -> {name: value} (the task's Params parse the values)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"bad -T {item!r}: expected name=value, e.g. -T lengths=256,512")
        out[key.strip()] = value
    return out


@app.command()
def run(
    task: Annotated[Optional[str], typer.Argument(help="task name (lch tasks); optional with --config")] = None,
    model: Annotated[Optional[list[str]], typer.Option("--model", "-m", help="local dir, hub id or reference/NAME (repeatable)")] = None,
    attention: Annotated[Optional[str], typer.Option(help="attention spec for --model, e.g. ssmax(s=auto)")] = None,
    rope_theta: Annotated[Optional[float], typer.Option("--rope-theta", help="RoPE base at evaluation (the full-context layers')")] = None,
    rope_base: Annotated[Optional[list[str]], typer.Option("--rope-base", help="LAYER_TYPE=BASE per layer type, e.g. sliding_attention=20000 (repeatable)")] = None,
    training_length: Annotated[Optional[int], typer.Option("--training-length", help="the model's training length (default: from its config)")] = None,
    task_param: Annotated[Optional[list[str]], typer.Option("--task-param", "-T", help="name=value (repeatable)")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="run.yaml: task, params, models")] = None,
    out: Annotated[Path, typer.Option(help="output root")] = Path("results"),
    name: Annotated[Optional[str], typer.Option(help="run name (default: task + hash of the configuration)")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:<index>")] = "auto",
    device_map: Annotated[Optional[str], typer.Option("--device-map", help="auto: spread one model too large for a GPU over all GPUs (needs accelerate)")] = None,
    dtype: Annotated[Optional[DType], typer.Option(help="weights dtype (default float32)")] = None,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="allow .bin/.pt weights (pickle)")] = False,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    include: Annotated[Optional[list[str]], typer.Option("--include", help="a task file (.py) to register before running (repeatable)")] = None,
):
    """Run TASK on one or more models; rerunning the same command resumes."""
    from harness.runner import ModelRequest, RunInterrupted, run_task
    from harness.task import include as include_file

    for path in include or []:
        include_file(path)

    cfg = read_run_config(config) if config else {"task": None, "params": {}, "models": []}
    if task and cfg["task"] and task != cfg["task"]:
        raise UserError(f"task {task!r} given, but --config says {cfg['task']!r}")
    task = task or cfg["task"]
    if not task:
        raise UserError("give a TASK (lch tasks lists them) or 'task:' in --config")
    params = {**cfg["params"], **parse_overrides(task_param or [])}
    bases = tuple(sorted(parse_rope_bases(rope_base or []).items()))
    models = [ModelRequest(m["model"], m.get("attention", attention), m.get("rope_theta", rope_theta),
                           m.get("training_length", training_length),
                           tuple(sorted((m.get("rope_bases") or {}).items())) or bases)
              for m in cfg["models"]]
    models += [ModelRequest(m, attention, rope_theta, training_length, bases) for m in model or []]
    if not models:
        raise UserError("give at least one --model (or 'models:' in --config)")
    try:
        run_dir = run_task(task, models, params, out_root=out, name=name, device=device,
                           dtype=dtype.value if dtype else None, allow_pickle=allow_pickle,
                           trust_remote_code=trust_remote_code, progress=progress, device_map=device_map)
    except RunInterrupted as e:
        _resume_hint(e)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary
        _print_summary(run_dir)


def _resume_hint(e):
    typer.echo(f"interrupted: {e.done}/{e.total} cells saved in {e.run_dir}. Resume with the same command:\n"
               f"  lch {shlex.join(sys.argv[1:])}", err=True)
    raise typer.Exit(EXIT_INTERRUPTED)


def _print_summary(run_dir: Path) -> None:
    from harness.results import load_run, read_manifest

    manifest, tables = read_manifest(run_dir), load_run(run_dir)
    cells = tables.get("cells")
    rows = []
    if cells is not None and len(cells):
        for (m, a, t), g in cells.groupby(["model", "attention", "rope_theta"], dropna=False, sort=False):
            rows.append({"model": m, "attention": a, "rope_theta": t, "cells": len(g),
                         "seconds": float(g["seconds"].sum())})
    typer.echo(format_table(rows))
    sizes = ", ".join(f"{n} ({len(df)} rows)" for n, df in tables.items() if n != "cells")
    typer.echo(f"{manifest['cells_done']}/{manifest['cells_total']} cells; tables: {sizes}")
    typer.echo(f"run dir: {run_dir}")


# ------------------------------------------------------------------------------------------- bench


@app.command()
def bench(
    name: Annotated[Optional[str], typer.Argument(help="benchmark name (default: all)")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="small sizes, for a smoke test")] = False,
    out: Annotated[Path, typer.Option(help="output root; JSON goes to OUT/bench/NAME.json")] = Path("results"),
    list_only: Annotated[bool, typer.Option("--list", help="list the benchmarks and exit")] = False,
):
    """Performance benchmarks: tables of ratios measured in one run, written as JSON."""
    from harness.bench import get_bench, list_benches, run_bench

    benches = [get_bench(name)] if name else list_benches()
    if list_only or not benches:
        typer.echo(format_table([{"benchmark": b.name, "description": b.description} for b in benches]))
        return
    for b in benches:
        typer.echo(f"== {b.name}: {b.description}")
        result, path = run_bench(b.name, quick=quick, out_root=out)
        typer.echo(format_table(result.get("rows", [])))
        ratios = result.get("ratios") or {}
        if ratios:
            typer.echo("ratios: " + ", ".join(f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}"
                                              for k, v in ratios.items()))
        typer.echo(f"wrote {path}\n")


# ------------------------------------------------------------------------------------ figures etc.


@app.command()
def plot(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    out: Annotated[Optional[Path], typer.Option(help="figure folder (default RUN_DIR/figures)")] = None,
):
    """Draw every figure the run's task draws."""
    from harness.results import load_run, read_manifest
    from harness.task import get_task

    manifest = read_manifest(run_dir)
    task = get_task(manifest["task"])
    out = out or Path(run_dir) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    paths = task.figures(load_run(run_dir), manifest, out) or []
    typer.echo("\n".join(map(str, paths)) if paths else f"task {task.name!r} draws no figures")


@app.command()
def heatmap(
    run_dir: Annotated[Path, typer.Argument(help="a needle run directory (or a folder of runs)")],
    out: Annotated[Optional[Path], typer.Option(help="PNG file (default RUN_DIR/figures/needle_heatmap.png)")] = None,
):
    """Needle heatmaps of a run (accuracy over context length x depth)."""
    from harness.plots import draw_needle_heatmaps as draw
    typer.echo(str(draw(run_dir, out)))


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="run directories (or folders of runs)")],
    out: Annotated[Path, typer.Option(help="folder for figures, headline.csv and report.html")] = Path("results/compare"),
):
    """Compare runs side by side: headline table, figures, report.html."""
    from harness.report import compare_runs
    typer.echo(str(compare_runs(run_dirs, out)))


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output root")] = Path("results"),
    quick: Annotated[bool, typer.Option("--quick", help="a small grid of the same form")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
):
    """The main job on the embedded reference pair, offline; ends with a comparison report."""
    from harness.demo import run_demo
    try:
        report = run_demo(out, quick=quick, progress=progress)
    except _interrupted() as e:
        _resume_hint(e)
    typer.echo(f"report: {report}")


def _interrupted():
    from harness.runner import RunInterrupted

    return RunInterrupted


@reference_app.command("list")
def reference_list():
    """Every shipped reference model, one per line: name, recipe, training length, attention."""
    import json

    from harness.checkpoint import REFERENCE_DIR, REFERENCE_PREFIX, reference_models

    for name in reference_models():
        config = json.loads((REFERENCE_DIR / name / "config.json").read_text())
        recipe_file = REFERENCE_DIR / name / "train_recipe.json"
        recipe = json.loads(recipe_file.read_text()).get("recipe", "base") if recipe_file.is_file() else "?"
        attention = (config.get("attention_variant") or {}).get("name", "softmax")
        typer.echo(f"{REFERENCE_PREFIX}{name}\trecipe={recipe}\ttraining_length={config.get('training_length')}"
                   f"\tattention={attention}")


@reference_app.command("recipes")
def reference_recipes():
    """The training recipes `lch reference build --recipe NAME` knows."""
    from harness.reference.recipes import RECIPES

    for recipe in RECIPES.values():
        typer.echo(f"{recipe.name}\t{recipe.about}")


@reference_app.command("build")
def reference_build(
    recipe: Annotated[str, typer.Option(help="training recipe (lch reference recipes)")] = "base",
    variant: Annotated[Optional[list[str]], typer.Option(help="variant to train (repeatable; default softmax and ssmax)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="models go to OUT/<model name> (default: the package's models/)")] = None,
    steps: Annotated[Optional[int], typer.Option(help="training steps (default: the recipe's)")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="a tiny model, a few steps: a smoke test")] = False,
    threads: Annotated[Optional[int], typer.Option(help="torch threads (e.g. 1 per model when training two at once)")] = None,
    keep_checkpoints: Annotated[bool, typer.Option("--keep-checkpoints", help="also save OUT/<model>/checkpoints/step_N at every held-out check")] = False,
):
    """Train a reference pair of a recipe (both models step for step as committed)."""
    from harness.reference import build_reference
    from harness.reference.recipes import get_recipe

    chosen = get_recipe(recipe)
    for v in variant or ["softmax", "ssmax"]:
        path = build_reference(v, out / chosen.model_name(v) if out else None, recipe=recipe, steps=steps, quick=quick,
                               threads=threads, keep_checkpoints=keep_checkpoints)
        typer.echo(f"{chosen.model_name(v)}: {path}")


if __name__ == "__main__":
    app()
