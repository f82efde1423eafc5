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
from harness.reference.cli import reference_app

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
    from harness.task.params import param_infos
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
    device_map: Annotated[Optional[str], typer.Option("--device-map", help="auto: spread one model too large for a GPU over all GPUs, layer by layer (needs accelerate); tp: split every layer's heads over the processes of torchrun (tensor parallel)")] = None,
    dtype: Annotated[Optional[DType], typer.Option(help="weights dtype (default: float32 on CPU, the checkpoint's bf16/fp16 on CUDA)")] = None,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="allow .bin/.pt weights (pickle)")] = False,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    include: Annotated[Optional[list[str]], typer.Option("--include", help="a task file (.py) to register before running (repeatable)")] = None,
):
    """Run TASK on one or more models; rerunning the same command resumes."""
    from harness.models.devices import set_allocator_default

    set_allocator_default()  # expandable segments, before anything initialises CUDA
    from harness.cli.run_config import parse_overrides, parse_rope_bases, read_run_config
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
    from harness.benchmarks.registry import get_bench, list_benches, run_bench

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
    from harness.results import load_run, read_manifest, require_tables
    from harness.task import get_task

    require_tables(run_dir)
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
    """Needle heatmaps of a run, or one per preset of a retrieval run: accuracy and answer NLL over length x depth."""
    from harness.plots import draw_heatmaps
    from harness.results import require_tables
    require_tables(run_dir)
    typer.echo("\n".join(str(p) for p in draw_heatmaps(run_dir, out)))


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="run directories (or folders of runs)")],
    out: Annotated[Path, typer.Option(help="folder for figures, headline.csv and report.html")] = Path("results/compare"),
    baseline: Annotated[Optional[str], typer.Option(
        help="variant the others are compared with on the same prompts: 'MODEL|ATTENTION|THETA' (default: the first)")] = None,
):
    """Compare runs side by side: headline table with intervals, paired tests against a baseline, figures, report.html."""
    from harness.report import compare_runs
    from harness.results import require_tables
    require_tables(*run_dirs)
    typer.echo(str(compare_runs(run_dirs, out, baseline=baseline)))


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output root")] = Path("results"),
    quick: Annotated[bool, typer.Option("--quick", help="a small grid of the same form")] = False,
    pair: Annotated[str, typer.Option(help="reference pair by recipe (lch reference list): randpos2 (default), base")] = "randpos2",
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
):
    """The main job on an embedded reference pair, offline; ends with a comparison report."""
    from harness.cli.demo import run_demo
    try:
        report = run_demo(out, quick=quick, progress=progress, pair=pair)
    except _interrupted() as e:
        _resume_hint(e)
    typer.echo(f"report: {report}")


def _interrupted():
    from harness.runner import RunInterrupted

    return RunInterrupted


from harness.cli.lmeval import register as _register_lm_eval; _register_lm_eval(app)  # noqa: E402  (`lch lm-eval`)

