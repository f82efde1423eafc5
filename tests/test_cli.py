"""The `lch` CLI: real runs, YAML configs, bench, and one-line exit-2 errors that write nothing."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tests.fake_tasks  # noqa: F401  (registers the fake tasks)
from harness import results
from harness.benchmarks import registry as bench
from harness.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """One tiny random Llama checkpoint for the whole module (runs never modify it)."""
    from tests.tiny import save_checkpoint

    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty working directory: the test checks that nothing lands outside --out."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_tasks_lists_and_describes():
    res = invoke("tasks")
    assert res.exit_code == 0 and "fake" in res.stdout
    res = invoke("tasks", "fake")
    assert res.exit_code == 0
    assert "lengths" in res.stdout and "list of int" in res.stdout and "Sequence lengths (tokens)." in res.stdout


def test_run_prints_summary_and_writes_run_dir(model, work):
    res = invoke("run", "fake", "--model", model, "--out", "out", "-T", "lengths=8,16", "-T", "trials=1",
                 "--device", "cpu", "--dtype", "float32", "--no-progress")
    assert res.exit_code == 0, res.output
    run_dir = next((work / "out").iterdir())
    assert f"run dir: {Path('out') / run_dir.name}" in res.stdout and "2/2 cells" in res.stdout
    assert "tiny" in res.stdout and "softmax" in res.stdout
    assert sorted(p.name for p in work.iterdir()) == ["out"]
    # the same command again resumes into the same directory
    again = invoke("run", "fake", "--model", model, "--out", "out", "-T", "lengths=8,16", "-T", "trials=1",
                   "--device", "cpu", "--dtype", "float32", "--no-progress")
    assert again.exit_code == 0 and len(list((work / "out").iterdir())) == 1


def test_config_yaml_with_several_models(model, work):
    (work / "run.yaml").write_text(f"""
task: fake
params:
  lengths: [8, 12]
  trials: 1
models:
  - model: {model}
  - model: {model}
    attention: ssmax(s=auto)
    rope_theta: 500000
""")
    res = invoke("run", "--config", "run.yaml", "--out", "out", "--name", "cfg", "-T", "seed=2", "--no-progress")
    assert res.exit_code == 0, res.output
    manifest = results.read_manifest(work / "out" / "cfg")
    assert manifest["params"]["lengths"] == [8, 12] and manifest["params"]["seed"] == 2
    assert [m["attention"] for m in manifest["models"]][0] == "softmax"
    assert manifest["models"][1]["attention"].startswith("ssmax(s=") and manifest["models"][1]["rope_theta"] == 5e5
    assert len(results.load(work / "out" / "cfg")["fake"]) == 4


def _pickle_only(model, tmp_path):
    path = tmp_path / "pickled"
    shutil.copytree(model, path)
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    return path


BAD = {
    "missing model": (["run", "fake", "--model", "{tmp}/nope"], "nope"),
    "unknown task": (["run", "nedle", "--model", "{model}"], "did you mean 'needle'"),
    "unknown -T": (["run", "fake", "--model", "{model}", "-T", "lenghts=8"], "unknown parameter 'lenghts'"),
    "ill-typed -T": (["run", "fake", "--model", "{model}", "-T", "trials=two"], "expected int, got 'two'"),
    "-T without =": (["run", "fake", "--model", "{model}", "-T", "trials"], "expected name=value"),
    "task validate": (["run", "fake", "--model", "{model}", "-T", "lengths=1"], "lengths must be >= 2"),
    "malformed yaml": (["run", "--config", "{tmp}/bad.yaml", "--model", "{model}"], "not valid YAML"),
    "yaml unknown key": (["run", "--config", "{tmp}/keys.yaml"], "unknown key 'modles'"),
    "yaml bad model": (["run", "--config", "{tmp}/model.yaml"], "models[0]"),
    "missing config": (["run", "fake", "--config", "{tmp}/none.yaml", "--model", "{model}"], "no such file"),
    "unknown attention": (["run", "fake", "--model", "{model}", "--attention", "sparsemax"], "sparsemax"),
    "pickle weights": (["run", "fake", "--model", "{pickled}"], "--allow-pickle"),
    "name escapes": (["run", "fake", "--model", "{model}", "--name", "../x"], "bad run name '../x'"),
    "name with slash": (["run", "fake", "--model", "{model}", "--name", "a/b"], "bad run name"),
    "bad rope theta": (["run", "fake", "--model", "{model}", "--rope-theta", "big"], "--rope-theta"),
    "bad dtype": (["run", "fake", "--model", "{model}", "--dtype", "int3"], "--dtype"),
    "bad device": (["run", "fake", "--model", "{model}", "--device", "tpu"], "unknown device 'tpu'"),
    "no model": (["run", "fake"], "--model"),
    "unknown command": (["rnu"], "rnu"),
    "unknown bench": (["bench", "atention"], "unknown benchmark 'atention'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, model, work, tmp_path):
    (tmp_path / "bad.yaml").write_text("task: fake\nparams: [1, 2\n")
    (tmp_path / "keys.yaml").write_text("task: fake\nmodles: []\n")
    (tmp_path / "model.yaml").write_text("task: fake\nmodels:\n  - attention: softmax\n")
    pickled = _pickle_only(model, tmp_path) if case == "pickle weights" else None
    args, expected = BAD[case]
    args = [a.format(tmp=tmp_path, model=model, pickled=pickled) for a in args]
    res = invoke(*args, "--out", "out") if args[0] == "run" else invoke(*args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], res.stderr
    assert "Traceback" not in res.output
    assert list(work.iterdir()) == []  # no run dir, not even --out


def test_debug_shows_traceback(model, work):
    res = invoke("run", "fake", "--model", model, "-T", "trials=two", "--debug")
    assert res.exit_code == 2 and "Traceback" in res.stderr and "expected int" in res.stderr


def test_console_script_error_is_one_line(work):
    code = "import tests.fake_tasks; from harness.cli import app; app()"
    res = subprocess.run([sys.executable, "-c", code, "run", "nedle", "--model", "x"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0
    assert res.stderr.startswith("error: unknown task 'nedle'; did you mean 'needle'?")


def test_ctrl_c_exits_130_and_says_how_to_resume(model, work):
    res = invoke("run", "fake", "--model", model, "--out", "out", "-T", "lengths=8,16,24", "-T", "trials=1",
                 "-T", "interrupt_length=8", "--no-progress")
    assert res.exit_code == 130 and "Resume with the same command" in res.stderr
    assert results.read_manifest(next((work / "out").iterdir()))["cells_done"] == 1


def test_sigterm_stops_after_the_cell_in_flight_like_ctrl_c(model, work):
    res = invoke("run", "fake", "--model", model, "--out", "out", "--name", "t", "-T", "lengths=8,16,24",
                 "-T", "trials=1", "-T", "interrupt_length=8", "-T", "interrupt_signal=SIGTERM", "--no-progress")
    assert res.exit_code == 130 and "SIGTERM" in res.stderr and "Resume with the same command" in res.stderr
    assert results.read_manifest(work / "out" / "t")["status"] == "interrupted"
    again = invoke("run", "fake", "--model", model, "--out", "out", "--name", "t", "-T", "lengths=8,16,24",
                   "-T", "trials=1", "--no-progress")
    assert again.exit_code == 0 and results.read_manifest(work / "out" / "t")["cells_done"] == 3


def test_plot_without_figures(model, work):
    invoke("run", "fake", "--model", model, "--out", "out", "--name", "p", "-T", "lengths=8", "-T", "trials=1")
    res = invoke("plot", "out/p")
    assert res.exit_code == 0 and "draws no figures" in res.stdout


@pytest.fixture
def toy_bench():
    @bench.register_bench("toy", "a toy benchmark")
    def toy(quick):
        return {"rows": [{"n": 4 if quick else 8, "ms": 1.5}], "ratios": {"a/b": 1.25}}

    yield
    bench._BENCHES.pop("toy")


def test_bench_prints_table_and_writes_json(toy_bench, work):
    res = invoke("bench", "toy", "--quick", "--out", "out")
    assert res.exit_code == 0, res.output
    assert "a/b = 1.25" in res.stdout and "ms" in res.stdout
    doc = json.loads((work / "out" / "bench" / "toy.json").read_text())
    assert doc["rows"] == [{"n": 4, "ms": 1.5}] and doc["quick"] is True and doc["ratios"]["a/b"] == 1.25
    listed = invoke("bench", "--list")
    assert listed.exit_code == 0 and "toy" in listed.stdout


def test_reference_build_quick_keeps_checkpoints(work):
    res = invoke("reference", "build", "--quick", "--steps", "3", "--variant", "ssmax", "--out", "ref", "--threads", "1",
                 "--keep-checkpoints")
    assert res.exit_code == 0, res.output
    model_dir = work / "ref" / "ssmax"
    assert (model_dir / "model.safetensors").is_file()
    assert (model_dir / "checkpoints" / "step_00003" / "train_log.csv").is_file()
    bad = invoke("reference", "build", "--quick", "--threads", "0", "--out", "ref")
    assert bad.exit_code == 2 and "--threads" in bad.output
