"""The runner: resume after SIGKILL, nothing recomputed, seeds from cells, Ctrl-C, failures, results.load."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import tests.fake_tasks  # noqa: F401  (registers the fake tasks)
from harness import results
from harness.models import loading
from harness.errors import UserError
from harness.runner import ModelRequest, RunInterrupted, cell_seed, check_run_name, plan_run, run_task

ROOT = Path(__file__).resolve().parents[1]
CLI = "import sys; import tests.fake_tasks; from harness.cli import app; app()"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """One tiny random Llama checkpoint for the whole module (runs never modify it)."""
    from tests.tiny import save_checkpoint

    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def _no_loading(monkeypatch):
    """Make any model load fail, to prove a run computes nothing."""
    def refuse(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loading, "load_described", refuse)


def _data(run_dir, table="fake"):
    return results.load_run(run_dir)[table]


def test_run_dir_layout_and_manifest(model, tmp_path):
    run_dir = run_task("fake", [model], {"lengths": "8,16"}, out_root=tmp_path / "out", progress=False)
    assert run_dir.parent == tmp_path / "out" and run_dir.name.startswith("fake-") and len(run_dir.name) == 13
    df = _data(run_dir)
    assert list(df.columns[:3]) == ["model", "attention", "rope_theta"]
    assert len(df) == 4 and set(df["model"]) == {"tiny"} and set(df["attention"]) == {"softmax"}
    assert (run_dir / "tables" / "fake.csv").is_file() and len(list((run_dir / "cells").glob("*.json"))) == 4
    cells = _data(run_dir, "cells")
    assert {"seconds", "tokens", "tokens_per_s", "peak_memory_mb", "memory_kind", "key"} <= set(cells.columns)
    assert (cells["tokens_per_s"] > 0).all() and (cells["peak_memory_mb"] > 0).all()
    manifest = results.read_manifest(run_dir)
    assert manifest["task"] == "fake" and manifest["params"]["lengths"] == [8, 16]
    assert manifest["cells_done"] == manifest["cells_total"] == 4 and manifest["status"] == "complete"
    assert manifest["models"][0]["fingerprint"] and manifest["versions"]["torch"]
    assert not list(run_dir.rglob("*.tmp"))


def test_rerun_computes_nothing_and_loads_no_model(model, tmp_path, monkeypatch):
    plan = plan_run("fake", [model], {}, out_root=tmp_path / "out")
    assert len(plan.pending()) == 4 and not (tmp_path / "out").exists()  # planning writes nothing
    first = run_task("fake", [model], {}, out_root=tmp_path, progress=False)
    assert plan_run("fake", [model], {}, out_root=tmp_path).pending() == []
    before = _data(first)
    _no_loading(monkeypatch)
    start = time.perf_counter()
    again = run_task("fake", [model], {}, out_root=tmp_path, progress=False)
    assert again == first and time.perf_counter() - start < 5
    pd.testing.assert_frame_equal(_data(again), before)


def test_same_seed_same_tables_and_order_independent(model, tmp_path):
    full = run_task("fake", [model], {"lengths": "8,16,24"}, out_root=tmp_path, name="full", progress=False)
    # Same grid computed in another order, in pieces: cells 24 and 8 first, then the rest.
    run_task("fake", [model], {"lengths": "24,8"}, out_root=tmp_path, name="pieces", progress=False)
    pieces = run_task("fake", [model], {"lengths": "8,16,24"}, out_root=tmp_path, name="pieces", progress=False)
    pd.testing.assert_frame_equal(_data(full), _data(pieces))
    other = run_task("fake", [model], {"lengths": "8,16,24", "seed": 1}, out_root=tmp_path, progress=False)
    assert not _data(other)["first_id"].equals(_data(full)["first_id"])


def test_seed_depends_on_cell_only():
    assert cell_seed(0, {"a": 1, "b": 2}) == cell_seed(0, {"b": 2, "a": 1})
    assert cell_seed(0, {"a": 1}) != cell_seed(1, {"a": 1}) != cell_seed(0, {"a": 2})


def test_models_get_identical_inputs_and_own_keys(model, tmp_path):
    run_dir = run_task("fake", [model, ModelRequest(str(model), "ssmax(s=auto)", 5e5)], {},
                       out_root=tmp_path, progress=False)
    df = _data(run_dir)
    assert len(df) == 8 and len(list((run_dir / "cells").glob("*.json"))) == 8
    soft, ssmax = df[df["attention"] == "softmax"], df[df["attention"] != "softmax"]
    assert list(soft["first_id"]) == list(ssmax["first_id"])  # same prompts for every model
    assert set(ssmax["rope_theta"]) == {5e5}


def test_sigkill_then_resume_every_cell_once(model, tmp_path, monkeypatch):
    log, out = tmp_path / "log.txt", tmp_path / "out"
    args = [sys.executable, "-c", CLI, "run", "fake", "--model", str(model), "--out", str(out), "--name", "k",
            "-T", "lengths=8,12,16,20", "-T", "trials=2", "-T", f"log={log}", "--no-progress"]
    proc = subprocess.Popen(args + ["-T", "sleep=1"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # the interpreter, torch and the model load first (slow on a busy machine)
    while time.time() < deadline and proc.poll() is None and len(list((out / "k" / "cells").glob("*.json"))) < 2:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list((out / "k" / "cells").glob("*.json")))
    assert 2 <= done_before < 8
    for f in (out / "k" / "cells").glob("*.json"):
        json.loads(f.read_text())  # never half-written

    params = {"lengths": "8,12,16,20", "trials": 2, "log": str(log)}
    run_task("fake", [model], params, out_root=out, name="k", progress=False)  # the same command again
    computed = log.read_text().splitlines()
    df = _data(out / "k")
    assert len(df) == 8 and not df.duplicated(["length", "trial"]).any()
    # every cell computed once, except at most the one in flight when killed
    cells = [tuple(line.split()[1:]) for line in computed]
    assert len(set(cells)) == 8 and len(cells) <= 9

    _no_loading(monkeypatch)  # a third start computes nothing and loads no model
    start = time.perf_counter()
    run_task("fake", [model], params, out_root=out, name="k", progress=False)
    assert log.read_text().splitlines() == computed and time.perf_counter() - start < 5
    assert results.read_manifest(out / "k")["cells_done"] == 8


def test_ctrl_c_stops_after_cell_in_flight(model, tmp_path):
    params = {"lengths": "8,16,24", "trials": 1, "interrupt_length": 16}
    with pytest.raises(RunInterrupted) as info:
        run_task("fake", [model], params, out_root=tmp_path, name="c", progress=False)
    assert (info.value.done, info.value.total) == (2, 3)  # the cell in flight (16) finished
    assert len(_data(tmp_path / "c")) == 2
    assert results.read_manifest(tmp_path / "c")["status"] == "interrupted"
    run_task("fake", [model], {**params, "interrupt_length": 0}, out_root=tmp_path, name="c", progress=False)
    assert len(_data(tmp_path / "c")) == 3


def test_failing_cell_keeps_finished_cells(model, tmp_path):
    with pytest.raises(RuntimeError, match="fake failure"):
        run_task("fake", [model], {"lengths": "8,16", "fail_length": 16}, out_root=tmp_path, name="f",
                 progress=False)
    assert len(_data(tmp_path / "f")) == 2 and results.read_manifest(tmp_path / "f")["status"] == "failed"


def test_bad_input_found_after_loading_leaves_nothing_behind(model, tmp_path):
    with pytest.raises(UserError, match="after loading"):
        run_task("fake", [model], {"prepare_error": True}, out_root=tmp_path, name="bad", progress=False)
    assert not (tmp_path / "bad").exists()
    # an existing run keeps its finished cells and says it failed
    run_task("fake", [model], {"lengths": "8"}, out_root=tmp_path, name="kept", progress=False)
    with pytest.raises(UserError):
        run_task("fake", [model], {"lengths": "8,16", "prepare_error": True}, out_root=tmp_path, name="kept",
                 progress=False)
    assert len(_data(tmp_path / "kept")) == 2  # length 8 x 2 trials
    assert results.read_manifest(tmp_path / "kept")["status"] == "failed"


def test_corpus_fingerprint_is_part_of_the_key(model, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("first version of the text")
    params = {"corpus": str(corpus)}
    run_dir = run_task("fake_corpus", [model], params, out_root=tmp_path / "out", name="c", progress=False)
    assert results.read_manifest(run_dir)["corpus_fingerprint"]
    (corpus / "a.txt").write_text("second version")
    run_task("fake_corpus", [model], params, out_root=tmp_path / "out", name="c", progress=False)
    assert len(list((run_dir / "cells").glob("*.json"))) == 2
    assert list(_data(run_dir, "heads")["head"]) == ["second ver"]


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", "", "a\\b"])
def test_run_name_cannot_escape(name):
    with pytest.raises(UserError, match="bad run name"):
        check_run_name(name)


def test_validation_happens_before_anything_is_written(model, tmp_path):
    out = tmp_path / "out"
    for kwargs in [dict(models=[tmp_path / "missing"]), dict(models=[ModelRequest(str(model), "nope(1)")]),
                   dict(models=[model], name="../x"), dict(models=[model], params={"lengths": "1"})]:
        kwargs.setdefault("params", {})
        with pytest.raises(UserError):
            run_task("fake", out_root=out, progress=False, **kwargs)
    assert not out.exists()


def test_other_task_in_run_dir_is_refused(model, tmp_path):
    run_task("fake", [model], {"lengths": "8", "trials": 1}, out_root=tmp_path, name="x", progress=False)
    with pytest.raises(UserError, match="holds a run of task 'fake'"):
        run_task("fake_corpus", [model], {}, out_root=tmp_path, name="x", progress=False)


def test_results_load_several_runs(model, tmp_path):
    a = run_task("fake", [model], {"lengths": "8", "trials": 1}, out_root=tmp_path, name="a", progress=False)
    b = run_task("fake", [model], {"lengths": "8", "trials": 1, "seed": 3}, out_root=tmp_path, name="b",
                 progress=False)
    tables = results.load(a, b)
    assert list(tables["fake"]["run"]) == ["a", "b"] and tables["fake"].columns[0] == "run"
    assert set(results.load(tmp_path)["fake"]["run"]) == {"a", "b"}  # a folder of runs
    with pytest.raises(UserError, match="not a run directory"):
        results.load(tmp_path / "nothing")


def test_results_and_plots_import_no_torch():
    code = ("import sys, harness.results, harness.plots, harness.errors; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_same_name_different_models_are_told_apart(tiny_checkpoint, tmp_path):
    a = tiny_checkpoint(name="a/model", seed=0)
    b = tiny_checkpoint(name="b/model", seed=1)
    run_dir = run_task("fake", [a, b], {"lengths": "8", "trials": 1}, out_root=tmp_path / "out", progress=False)
    labels = list(_data(run_dir)["model"])
    assert len(set(labels)) == 2 and all(label.startswith("model@") for label in labels)


@pytest.mark.slow
def test_torchrun_shards_cells_across_processes(model, tmp_path):
    script = tmp_path / "lch_fake.py"
    script.write_text(f"import sys; sys.path.insert(0, {str(ROOT)!r}); {CLI}\n")
    log, out = tmp_path / "log.txt", tmp_path / "out"
    res = subprocess.run(["torchrun", "--standalone", "--nproc_per_node=2", str(script), "run", "fake",
                          "--model", str(model), "--out", str(out), "--name", "d", "-T", "lengths=8,12,16,20",
                          "-T", f"log={log}", "--no-progress", "--device", "cpu"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [line.split() for line in log.read_text().splitlines()]
    assert len(lines) == 8 and len({tuple(x[1:]) for x in lines}) == 8 and len({x[0] for x in lines}) == 2
    assert len(_data(out / "d")) == 8 and results.read_manifest(out / "d")["status"] == "complete"
