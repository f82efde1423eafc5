"""Fault injection: runs killed (SIGKILL, SIGTERM) at chosen writes, run-directory files truncated or corrupted,
full or read-only disks. After every fault the same command again must leave each cell exactly once and
tables equal to an undisturbed run's.

Kills happen in a forked copy of this process (torch is already imported, so a fault costs milliseconds
instead of an interpreter start); the child patches `harness.atomic.atomic_write` to signal itself at the
Nth write of a chosen file, after the temp file is written and before it is renamed. One test runs the
real `lch` command in a subprocess, as tests/test_runner.py does. `FAULTS` counts what each fault ends in.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import tests.fake_tasks  # noqa: F401  (registers the fake tasks)
from harness import atomic, results
from harness.cli import app
from harness.errors import UserError
from harness.runner import RunInterrupted, plan_run, run_task
from harness.runner.rundir import WriteError, load_cell

ROOT = Path(__file__).resolve().parents[1]
CLI = "import sys; import tests.fake_tasks; from harness.cli import app; app()"
PARAMS = {"lengths": "8,12", "trials": 2}  # 4 cells
TIMING = ["seconds", "tokens_per_s", "peak_memory_mb", "finished_at"]
FAULTS: Counter = Counter()  # (kind of fault, what it ended in) -> count, printed at the end of the module


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    total = sum(FAULTS.values())
    lines = "\n".join(f"  {n:2d}  {kind:48s} -> {end}" for (kind, end), n in sorted(FAULTS.items()))
    print(f"\n{total} injected faults:\n{lines}", file=sys.stderr)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from tests.tiny import save_checkpoint

    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    """An undisturbed run: its directory and its tables."""
    out = tmp_path_factory.mktemp("ref")
    run_dir = run_task("fake", [model], PARAMS, out_root=out, name="r", progress=False)
    return run_dir, results.load_run(run_dir)


def _stable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in TIMING if c in df.columns]).reset_index(drop=True)


def rerun(model, out, **kw):
    return run_task("fake", [model], PARAMS, out_root=out, name="r", progress=False, **kw)


def check(model, out, reference, *, damaged: int = 0):
    """Every cell exactly once and finished, tables equal the reference's, manifest complete, no temp files."""
    run_dir = out / "r"
    plan = plan_run("fake", [model], PARAMS, out_root=out, name="r")
    assert plan.pending() == []
    files = sorted(p.name for p in (run_dir / "cells").glob("*.json"))
    assert files == sorted(f"{c.key}.json" for c in plan.cells)
    assert all(load_cell(plan.cell_path(c), c.key) for c in plan.cells)
    assert len(list((run_dir / "cells").glob("*.damaged-*"))) + len(list(run_dir.glob("*.damaged-*"))) == damaged
    tables = results.load_run(run_dir)
    assert sorted(tables) == sorted(reference[1])
    for name, df in reference[1].items():
        pd.testing.assert_frame_equal(_stable(tables[name]), _stable(df))
        csv = pd.read_csv(run_dir / "tables" / f"{name}.csv")
        assert len(csv) == len(df)
    manifest = results.read_manifest(run_dir)
    assert manifest["status"] == "complete" and manifest["cells_done"] == manifest["cells_total"] == 4
    assert not [p for p in run_dir.rglob("*.tmp") if atomic.temp_owner(p) != 1]


# ------------------------------------------------------------------------------------------ kills


def _child(model, out, kills) -> None:
    """In a forkserver child: run the grid, sending this process signal s at the nth write of file t
    for each (t, n, s) in `kills` (temp file written, not yet renamed)."""
    real, seen = atomic.atomic_write, Counter()

    def hooked(path, write):
        path = Path(path)
        name = "cell" if path.parent.name == "cells" else path.name
        seen[name] += 1

        def write_then_signal(tmp):
            write(tmp)
            for target, nth, sig in kills:
                if name == target and seen[name] == nth:
                    os.kill(os.getpid(), sig)

        real(path, write_then_signal)

    atomic.atomic_write = hooked
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    try:
        rerun(model, out)
    except RunInterrupted:
        sys.exit(130)


_CTX = None


def _killed_child(model, out, kills) -> int:
    """Run `_child` in a fresh process forked from a server that has imported torch but run nothing
    (so forking is safe and a fault costs no interpreter start); return its exit code (-signal if killed)."""
    global _CTX
    if _CTX is None:
        import multiprocessing

        _CTX = multiprocessing.get_context("forkserver")
        _CTX.set_forkserver_preload(["torch", "transformers", "tests.tiny", "transformers.models.llama.modeling_llama",
                                     "tests.fake_tasks", "harness.runner", "harness.models.loading", "harness.models.checkpoint",
                                     "harness.attention", "tqdm.auto",
                                     "tests.test_faults"])
    proc = _CTX.Process(target=_child, args=(model, out, kills))
    proc.start()
    proc.join(300)
    if proc.is_alive():
        proc.kill()
        proc.join()
        raise AssertionError("the child hung")
    return proc.exitcode


KILLS = [  # (file written when the signal arrives, which write of it, signal)
    ("manifest.json", 1, signal.SIGKILL),   # the manifest written at the start
    ("cell", 1, signal.SIGKILL),            # while the first cell is written
    ("cell", 3, signal.SIGKILL),
    ("cell", 4, signal.SIGKILL),            # the last cell
    ("fake.parquet", 1, signal.SIGKILL),    # while the tables are assembled
    ("fake.csv", 1, signal.SIGKILL),
    ("cells.parquet", 1, signal.SIGKILL),
    ("cells.csv", 1, signal.SIGKILL),
    ("manifest.json", 2, signal.SIGKILL),   # the final manifest
    ("cell", 2, signal.SIGTERM),            # stops after the cell in flight
    ("fake.parquet", 1, signal.SIGTERM),    # outside the cell loop SIGTERM kills
    ("manifest.json", 2, signal.SIGTERM),
]


@pytest.mark.parametrize("target,nth,sig", KILLS, ids=[f"{s.name}-{t}-{n}" for t, n, s in KILLS])
def test_killed_run_resumes(model, reference, tmp_path, target, nth, sig):
    code = _killed_child(model, tmp_path, [(target, nth, sig)])
    run_dir = tmp_path / "r"
    if code < 0:
        assert code == -sig
        end = f"killed by {sig.name}"
        if target in ("cell", "manifest.json") and nth == 1:
            assert list(run_dir.rglob("*.tmp")), "a half-written temp file is left behind"
        if (run_dir / "manifest.json").is_file():  # a killed run is refused by plot (exit 2, one line)
            res = CliRunner().invoke(app, ["plot", str(run_dir)])
            assert res.exit_code == 2 and "error:" in res.output, res.output
    else:
        assert sig == signal.SIGTERM and code == 130
        assert results.read_manifest(run_dir)["status"] == "interrupted"
        assert results.read_manifest(run_dir)["cells_done"] == nth  # the cell in flight was saved
        end = "stopped after the cell in flight (interrupted)"
    before = {p.name: p.read_bytes() for p in (run_dir / "cells").glob("*.json")}
    rerun(model, tmp_path)
    after = {p.name: p.read_bytes() for p in (run_dir / "cells").glob("*.json")}
    assert all(after[name] == data for name, data in before.items())  # finished cells untouched
    check(model, tmp_path, reference)
    FAULTS[(f"{sig.name} at write {nth} of {target}", end + ", resumed")] += 1


def test_sigterm_then_sigkill_while_interrupted_run_assembles(model, reference, tmp_path):
    # SIGTERM during cell 1 stops the loop; the interrupted run is then SIGKILLed writing its manifest.
    code = _killed_child(model, tmp_path, [("cell", 1, signal.SIGTERM), ("manifest.json", 2, signal.SIGKILL)])
    assert code == -signal.SIGKILL
    rerun(model, tmp_path)
    check(model, tmp_path, reference)
    FAULTS[("SIGTERM in a cell, then SIGKILL in its manifest", "killed, resumed")] += 1


@pytest.mark.parametrize("sig", [signal.SIGTERM])  # SIGKILL through `lch`: tests/test_runner.py
def test_cli_subprocess_killed_during_cells_resumes(model, reference, tmp_path, sig):
    """The real `lch run` in its own interpreter: the fake task signals itself during a length-12 cell."""
    args = [sys.executable, "-c", CLI, "run", "fake", "--model", str(model), "--out", str(tmp_path), "--name", "r",
            "-T", "lengths=8,12", "-T", "trials=2", "--no-progress"]
    res = subprocess.run(args + ["-T", "interrupt_length=12", "-T", f"interrupt_signal={sig.name}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    if sig == signal.SIGKILL:
        assert res.returncode == -signal.SIGKILL
        end = "killed"
    else:
        assert res.returncode == 130 and "Resume with the same command" in res.stderr, res.stderr[-2000:]
        end = "exit 130 after the cell in flight"
    done = len(list((tmp_path / "r" / "cells").glob("*.json")))
    assert 2 <= done < 4
    rerun(model, tmp_path)  # interrupt_length is a grid param: the same cells
    check(model, tmp_path, reference)
    FAULTS[(f"{sig.name} in a cell (lch subprocess)", end + ", resumed")] += 1


# ------------------------------------------------------------------------------------ damaged files


def _cells(run_dir):
    return sorted((run_dir / "cells").glob("*.json"))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


def _other_cell(path):  # a cell file holding another cell's document
    other = next(p for p in _cells(path.parent.parent) if p != path)
    path.write_bytes(other.read_bytes())


CORRUPTIONS = {  # name -> (damage done to a finished run dir, files set aside)
    "cell truncated": (lambda d: _truncate(_cells(d)[0]), 1),
    "cell '{trunc'": (lambda d: _cells(d)[1].write_text("{trunc"), 1),
    "cell empty": (lambda d: _cells(d)[2].write_bytes(b""), 1),
    "cell binary garbage": (lambda d: _cells(d)[0].write_bytes(os.urandom(64)), 1),
    "cell holds another cell": (lambda d: _other_cell(_cells(d)[3]), 1),
    "cell wrong shape": (lambda d: _cells(d)[0].write_text(json.dumps({"key": _cells(d)[0].stem, "tables": [1]})), 1),
    "cell is a JSON list": (lambda d: _cells(d)[0].write_text("[]"), 1),
    "cell is a directory": (lambda d: _dir_instead(_cells(d)[0]), 1),
    "every cell truncated": (lambda d: [_truncate(p) for p in _cells(d)], 4),
    "cell deleted": (lambda d: _cells(d)[0].unlink(), 0),
    "manifest truncated": (lambda d: _truncate(d / "manifest.json"), 1),
    "manifest empty": (lambda d: (d / "manifest.json").write_bytes(b""), 1),
    "manifest a JSON list": (lambda d: (d / "manifest.json").write_text("[1, 2]"), 1),
    "manifest deleted": (lambda d: (d / "manifest.json").unlink(), 0),
    "manifest and a cell truncated": (lambda d: (_truncate(d / "manifest.json"), _truncate(_cells(d)[0])), 2),
    "fake.parquet truncated": (lambda d: _truncate(d / "tables" / "fake.parquet"), 0),
    "fake.parquet garbage": (lambda d: (d / "tables" / "fake.parquet").write_bytes(os.urandom(100)), 0),
    "fake.parquet deleted": (lambda d: (d / "tables" / "fake.parquet").unlink(), 0),
    "cells.parquet truncated": (lambda d: _truncate(d / "tables" / "cells.parquet"), 0),
    "fake.csv truncated": (lambda d: _truncate(d / "tables" / "fake.csv"), 0),
    "cells.csv empty": (lambda d: (d / "tables" / "cells.csv").write_bytes(b""), 0),
    "tables/ deleted": (lambda d: shutil.rmtree(d / "tables"), 0),
    "stale .tmp in cells/": (lambda d: (d / "cells" / f".{_cells(d)[0].name}.999999999.tmp").write_text("{"), 0),
    "stale .tmp in tables/": (lambda d: (d / "tables" / ".fake.parquet.999999999.tmp").write_bytes(b"PAR"), 0),
    "stale .tmp of the manifest": (lambda d: (d / ".manifest.json.999999999.tmp").write_text("{"), 0),
    "live process's .tmp (pid 1)": (lambda d: (d / "cells" / ".x.json.1.tmp").write_text("{"), 0),
}


def _dir_instead(path):
    path.unlink()
    path.mkdir()


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_damaged_file_is_set_aside_or_rebuilt(model, reference, tmp_path, name, capfd):
    damage, set_aside = CORRUPTIONS[name]
    shutil.copytree(reference[0], tmp_path / "r")
    damage(tmp_path / "r")
    computed_again = set_aside if "cell" in name and "manifest" not in name or name.startswith("manifest and") else 0
    rerun(model, tmp_path)
    err = capfd.readouterr().err
    assert err.count("warning:") == set_aside and (not set_aside or "kept as" in err), err
    check(model, tmp_path, reference, damaged=set_aside)
    if "pid 1" in name:  # a temp file of a live process is left alone
        assert (tmp_path / "r" / "cells" / ".x.json.1.tmp").exists()
    end = (f"set aside, {set_aside} cell(s) recomputed" if computed_again else
           "set aside, manifest rebuilt" if set_aside else
           "cell recomputed" if name == "cell deleted" else "rebuilt from the cells")
    FAULTS[(name, end)] += 1


@pytest.mark.parametrize("name", ["fake.parquet truncated", "manifest truncated", "tables/ deleted"])
def test_readers_of_a_damaged_run_say_so(reference, tmp_path, name):
    shutil.copytree(reference[0], tmp_path / "r")
    CORRUPTIONS[name][0](tmp_path / "r")
    for args in (["plot", tmp_path / "r"], ["compare", tmp_path / "r", "--out", tmp_path / "cmp"]):
        res = CliRunner().invoke(app, [str(a) for a in args])
        assert res.exit_code == 2, res.output
        assert res.output.startswith("error: ") and res.output.count("\n") == 1, res.output
    FAULTS[(f"lch plot/compare on: {name}", "exit 2, one line")] += 1


def test_plot_heatmap_compare_refuse_a_running_or_tableless_run(model, reference, tmp_path):
    run_dir = tmp_path / "r"
    shutil.copytree(reference[0], run_dir)
    manifest = results.read_manifest(run_dir)
    atomic.write_json(run_dir / "manifest.json", {**manifest, "status": "running"})
    for cmd in (["plot", run_dir], ["heatmap", run_dir], ["compare", run_dir, "--out", tmp_path / "c"]):
        res = CliRunner().invoke(app, [str(a) for a in cmd])
        assert res.exit_code == 2 and "has not finished" in res.output and res.output.count("\n") == 1, res.output
    atomic.write_json(run_dir / "manifest.json", manifest)
    shutil.rmtree(run_dir / "tables")
    for cmd in (["plot", run_dir], ["heatmap", run_dir], ["compare", run_dir, "--out", tmp_path / "c"]):
        res = CliRunner().invoke(app, [str(a) for a in cmd])
        assert res.exit_code == 2 and "has no tables" in res.output, res.output
    FAULTS[("lch plot/heatmap/compare on a running run", "exit 2, one line")] += 3
    FAULTS[("lch plot/heatmap/compare on a run without tables", "exit 2, one line")] += 3


# ------------------------------------------------------------------------------ full or read-only disk


WRITE_FAULTS = [  # (file being written, which write of it, errno)
    ("cell", 1, errno.ENOSPC),
    ("cell", 3, errno.ENOSPC),
    ("fake.parquet", 1, errno.ENOSPC),
    ("cells.csv", 1, errno.ENOSPC),
    ("manifest.json", 1, errno.ENOSPC),
    ("manifest.json", 2, errno.ENOSPC),
    ("cell", 2, errno.EROFS),
    ("cell", 2, errno.EACCES),
]


@pytest.mark.parametrize("target,nth,code", WRITE_FAULTS,
                         ids=[f"{errno.errorcode[c]}-{t}-{n}" for t, n, c in WRITE_FAULTS])
def test_full_or_readonly_disk_is_one_line_and_resumes(model, reference, tmp_path, monkeypatch, target, nth, code):
    real, seen = atomic.atomic_write, Counter()

    def failing(path, write):
        name = "cell" if Path(path).parent.name == "cells" else Path(path).name
        seen[name] += 1
        if name == target and seen[name] >= nth:  # the disk stays full from then on
            raise OSError(code, os.strerror(code), str(path))
        real(path, write)

    monkeypatch.setattr(atomic, "atomic_write", failing)
    with pytest.raises(WriteError) as info:
        rerun(model, tmp_path)
    message = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in message
    assert errno.errorcode[code] in message and "cannot write" in message
    if target == "cell":
        assert f"{tmp_path / 'r' / 'cells'}" in message
        assert len(_cells(tmp_path / "r")) == nth - 1  # the cells finished before are intact
    else:
        assert target in message
    monkeypatch.setattr(atomic, "atomic_write", real)  # space freed
    rerun(model, tmp_path)
    check(model, tmp_path, reference)
    FAULTS[(f"{errno.errorcode[code]} at write {nth} of {target}", "UserError, one line; resumed")] += 1


def test_full_disk_through_the_cli_is_exit_2(model, reference, tmp_path, monkeypatch):
    real = atomic.atomic_write

    def failing(path, write):
        if Path(path).parent.name == "cells":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, write)

    monkeypatch.setattr(atomic, "atomic_write", failing)
    res = CliRunner().invoke(app, ["run", "fake", "--model", str(model), "--out", str(tmp_path), "--name", "r",
                                   "-T", "lengths=8,12", "-T", "trials=2", "--no-progress"])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: cannot write ") and "ENOSPC" in res.output
    assert res.output.count("\n") == 1 and "Traceback" not in res.output
    monkeypatch.setattr(atomic, "atomic_write", real)
    rerun(model, tmp_path)
    check(model, tmp_path, reference)
    FAULTS[("ENOSPC at the first cell (lch run)", "exit 2, one line; resumed")] += 1


def _mount_read_only(root: Path, monkeypatch) -> None:
    """Every write under `root` fails as on a read-only mount (EROFS); chmod would not stop root, CI runs as root."""
    import builtins
    import io

    def inside(path) -> bool:
        return Path(os.fsdecode(path)).resolve().is_relative_to(root.resolve())

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    def guard(real, *, paths=1, writes=lambda *a, **k: True, exists_first=False):
        def fake(*args, **kw):
            for path in args[:paths]:
                if inside(path) and writes(*args, **kw):
                    if exists_first and Path(os.fsdecode(path)).exists():
                        break  # mkdir of an existing folder: EEXIST before EROFS, as the kernel does
                    refuse(path)
            return real(*args, **kw)
        return fake

    def write_mode(path, mode="r", *a, **k):
        return isinstance(path, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+")

    def write_flags(path, flags, *a, **k):
        return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))

    for mod, name, kw in [(os, "replace", {"paths": 2}), (os, "rename", {"paths": 2}), (os, "unlink", {}),
                          (os, "remove", {}), (os, "rmdir", {}), (os, "mkdir", {"exists_first": True}),
                          (os, "open", {"writes": write_flags}), (builtins, "open", {"writes": write_mode}),
                          (io, "open", {"writes": write_mode})]:
        monkeypatch.setattr(mod, name, guard(getattr(mod, name), **kw))


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_read_only_run_dir(model, reference, tmp_path, monkeypatch):
    shutil.copytree(reference[0], tmp_path / "r")
    _truncate(_cells(tmp_path / "r")[0])
    before = _snapshot(tmp_path / "r")
    with monkeypatch.context() as m:
        _mount_read_only(tmp_path / "r", m)
        with pytest.raises(WriteError) as info:
            rerun(model, tmp_path)
    message = str(info.value)
    assert "EROFS" in message and str(tmp_path / "r") in message and "\n" not in message
    assert _snapshot(tmp_path / "r") == before  # nothing half-done on the read-only disk
    rerun(model, tmp_path)  # mounted writable again
    check(model, tmp_path, reference, damaged=1)
    FAULTS[("read-only run dir (EROFS on every write)", "UserError, one line; resumed")] += 1
