"""The task registry: registration, did-you-mean, typed -T / YAML parameter parsing, field docs."""

import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import harness.task
from harness.errors import UserError
from harness.task.params import param_infos, params_to_dict, parse_task_params
from harness.task import Task, get_task, list_tasks, register_task

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class _Params:
    lengths: tuple[int, ...] = (256, 512)
    """Context lengths in tokens.

    More text that `lch tasks` does not show."""
    depths: tuple[float, ...] = (0.0, 0.5)
    """Needle depths in [0, 1]."""
    names: tuple[str, ...] = ("a",)
    """Some names."""
    save_prompts: bool = False
    """Write prompts.jsonl."""
    corpus: str = "builtin:stdlib"
    """Corpus spec."""
    scale: float = 1.0
    """A float."""
    seed: int = 0
    """Base seed."""
    limit: int | None = None
    """Optional cap."""


class _ProbeTask(Task):
    """A registry test task."""

    Params = _Params
    tables = ("probe",)

    def validate(self, params):
        if any(d < 0 or d > 1 for d in params.depths):
            raise UserError(f"depths must lie in [0, 1], got {params.depths}")


@pytest.fixture
def probe_task():
    register_task("registry_probe")(_ProbeTask)
    yield get_task("registry_probe")
    harness.task._TASKS.pop("registry_probe", None)


def test_register_get_and_list(probe_task):
    assert probe_task.name == "registry_probe" and isinstance(probe_task, _ProbeTask)
    assert "registry_probe" in list_tasks() and list_tasks() == sorted(list_tasks())


def test_duplicate_name_fails(probe_task):
    with pytest.raises(ValueError, match="already registered"):
        register_task("registry_probe")(_ProbeTask)


def test_params_must_be_frozen_with_defaults():
    @dataclass
    class Loose:
        x: int = 1

    @dataclass(frozen=True)
    class NoDefault:
        x: int

    for params in (Loose, NoDefault):
        cls = type("T", (Task,), {"Params": params})
        with pytest.raises(TypeError):
            register_task("registry_bad")(cls)
    assert "registry_bad" not in list_tasks()


def test_unknown_task_suggests(probe_task):
    with pytest.raises(UserError, match=r"unknown task 'registry_prob'; did you mean 'registry_probe'\? Tasks: "):
        get_task("registry_prob")


def test_parse_strings(probe_task):
    p = parse_task_params(probe_task, {"lengths": "128, 256,1024", "depths": "0,1", "names": "x,y",
                                       "save_prompts": "yes", "scale": "2", "seed": "7", "limit": "none"})
    assert p.lengths == (128, 256, 1024) and p.depths == (0.0, 1.0) and p.names == ("x", "y")
    assert p.save_prompts is True and p.scale == 2.0 and p.seed == 7 and p.limit is None
    assert isinstance(p.depths[0], float)
    for text, value in [("true", True), ("1", True), ("no", False), ("False", False), ("0", False)]:
        assert parse_task_params(probe_task, {"save_prompts": text}).save_prompts is value


def test_parse_yaml_values(probe_task):
    p = parse_task_params(probe_task, {"lengths": [64, 128], "depths": [0, 0.25], "save_prompts": True,
                                       "scale": 3, "limit": 5, "names": "solo"})
    assert p.lengths == (64, 128) and p.depths == (0.0, 0.25) and p.scale == 3.0 and p.limit == 5
    assert p.names == ("solo",)
    assert parse_task_params(probe_task, {"lengths": 64}).lengths == (64,)
    assert params_to_dict(p)["lengths"] == [64, 128]


@pytest.mark.parametrize("overrides, match", [
    ({"lenghts": "1"}, r"unknown parameter 'lenghts'.*did you mean 'lengths'.*allowed: lengths, depths"),
    ({"lengths": "1,,2"}, "comma-separated list of int"),
    ({"lengths": "1.5"}, "expected int, got '1.5'"),
    ({"lengths": [1, "x"]}, r"\(item 2\): expected int"),
    ({"seed": True}, "expected int"),
    ({"save_prompts": "maybe"}, "expected true/false"),
    ({"scale": "fast"}, "expected float"),
    ({"corpus": ["a"]}, "expected str"),
    ({"seed": None}, "a value is required"),
    ({"depths": "0.5,2"}, r"depths must lie in \[0, 1\]"),  # the task's own validate
])
def test_bad_values(probe_task, overrides, match):
    with pytest.raises(UserError, match=match):
        parse_task_params(probe_task, overrides)


def test_field_docs(probe_task):
    infos = {p.name: p for p in param_infos(probe_task)}
    assert infos["lengths"].doc == "Context lengths in tokens."
    assert infos["lengths"].type == "list of int" and infos["lengths"].default == (256, 512)
    assert infos["limit"].type == "int or none"
    assert infos["seed"].doc == "Base seed."


def _copy_evals_with(tmp_path, name, source):
    pkg = tmp_path / "evals"
    pkg.mkdir()
    (pkg / "__init__.py").write_text((ROOT / "evals" / "__init__.py").read_text())
    (pkg / f"{name}.py").write_text(textwrap.dedent(source))
    return subprocess.run([sys.executable, "-c", "from harness.task import list_tasks; print(list_tasks())"], cwd=tmp_path,
                          capture_output=True, text=True, env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": ""})


def test_task_modules_are_imported(tmp_path):
    res = _copy_evals_with(tmp_path, "mini", """
        from dataclasses import dataclass
        from harness.task import Task, register_task

        @dataclass(frozen=True)
        class P:
            seed: int = 0

        @register_task("mini")
        class Mini(Task):
            Params = P
    """)
    assert res.returncode == 0, res.stderr
    assert "'mini'" in res.stdout


def test_broken_task_module_fails_loudly(tmp_path):
    res = _copy_evals_with(tmp_path, "broken", "raise ImportError('half-written module')\n")
    assert res.returncode != 0 and "half-written module" in res.stderr


PLUGIN = """
from dataclasses import dataclass

from harness.task import Task, register_task


@dataclass(frozen=True)
class P:
    n: int = 3
    \"\"\"How many rows.\"\"\"
    seed: int = 0
    \"\"\"Seed.\"\"\"


@register_task("{name}")
class Outside(Task):
    \"\"\"A task from outside the repository.\"\"\"

    Params = P
    tables = ("outside",)

    def cells(self, params):
        return [{{"i": i}} for i in range(params.n)]

    def run_cell(self, params, loaded, cell, state, seed):
        return {{"outside": [{{"i": cell["i"], "vocab": loaded.model.config.vocab_size, "seed": seed}}]}}
"""


def test_entry_point_tasks_register(tmp_path):
    (tmp_path / "lch_outside_pkg.py").write_text(PLUGIN.format(name="outside_ep"))
    dist = tmp_path / "lch_outside-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lch-outside\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[lch.tasks]\noutside_ep = lch_outside_pkg\n")
    res = subprocess.run([sys.executable, "-c", "from harness.task import list_tasks; print(list_tasks())"],
                         cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": ""})
    assert res.returncode == 0, res.stderr
    assert "'outside_ep'" in res.stdout and "'needle'" in res.stdout


def test_included_task_file_runs_from_the_cli(tmp_path, tiny_checkpoint):
    import pandas as pd
    from typer.testing import CliRunner

    from harness.cli import app

    task_file = tmp_path / "my_task.py"
    task_file.write_text(PLUGIN.format(name="outside_file"))
    model = tiny_checkpoint()
    runner = CliRunner()
    listed = runner.invoke(app, ["tasks", "--include", str(task_file)])
    assert listed.exit_code == 0 and "outside_file" in listed.output
    res = runner.invoke(app, ["run", "--include", str(task_file), "outside_file", "--model", str(model),
                              "-T", "n=2", "--out", str(tmp_path / "runs"), "--name", "r", "--no-progress"])
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(tmp_path / "runs" / "r" / "tables" / "outside.parquet")
    import json

    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    assert sorted(df["i"]) == [0, 1] and set(df["vocab"]) == {vocab}
    bad = runner.invoke(app, ["run", "--include", str(tmp_path / "nope.py"), "outside_file", "--model", str(model)])
    assert bad.exit_code == 2 and "not a Python file" in bad.output
