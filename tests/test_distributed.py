"""Scale-out: cost-balanced sharding (LPT), torchrun runs equal single-process runs, resume across world sizes
(a real 2-process torchrun in the default set), device_map."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import tests.fake_tasks  # noqa: F401  (registers the fake tasks)
from harness import results
from harness.models import loading
from harness.runner import distributed
from harness.errors import UserError
from harness.runner import Cell, assign_cells, plan_run, run_task

ROOT = Path(__file__).resolve().parents[1]
# Rank 1 dies (SIGKILL) right after saving its first cell when LCH_TEST_KILL_RANK1 is set.
SCRIPT = """import os, signal, sys
sys.path.insert(0, {root!r})
import tests.fake_tasks
if os.environ.get("LCH_TEST_KILL_RANK1") and os.environ.get("RANK") == "1":
    import harness.runner.rundir as r
    write = r.write_json
    def dying_write(path, obj):
        write(path, obj)
        if path.parent.name == "cells":
            os.kill(os.getpid(), signal.SIGKILL)
    r.write_json = dying_write
from harness.cli import app
app()
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """One tiny random Llama checkpoint for the whole module."""
    from tests.tiny import save_checkpoint

    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def _cells(costs):
    return [Cell(0, {"i": i}, f"k{i:02d}", float(c)) for i, c in enumerate(costs)]


def _loads(shares):
    return [sum(c.cost for c in share) for share in shares]


def test_lpt_balances_by_cost_deterministically():
    cells = _cells([1, 2, 4, 8, 16, 32, 1, 2, 4, 8, 16, 32])
    shares = assign_cells(cells, 2)
    assert _loads(shares) == [63.0, 63.0]
    assert sorted(c.key for s in shares for c in s) == sorted(c.key for c in cells)  # each cell once
    assert all(s == sorted(s, key=lambda c: c.key) for s in shares)  # grid order within a share
    assert [[c.key for c in s] for s in assign_cells(cells, 2)] == [[c.key for c in s] for s in shares]
    # a grid whose long cells alternate with short ones: dealing every other cell would give 128 vs 4
    skewed = _cells([32, 1, 32, 1, 32, 1, 32, 1])
    assert _loads(assign_cells(skewed, 2)) == [66.0, 66.0]


@pytest.mark.parametrize("world", [1, 2, 3, 5, 16])
def test_lpt_covers_every_cell_once_and_is_within_one_cell_of_balance(world):
    import random

    rng = random.Random(world)
    cells = _cells([rng.choice([1, 2, 4, 8, 16]) for _ in range(37)])
    shares = assign_cells(cells, world)
    assert len(shares) == world
    keys = [c.key for s in shares for c in s]
    assert len(keys) == len(set(keys)) == len(cells)
    loads = _loads(shares)
    assert max(loads) - min(loads) <= max(c.cost for c in cells)
    # ties (equal costs) are broken by key, so a shuffled input gives the same shares
    shuffled = cells[:]
    rng.shuffle(shuffled)
    assert [{c.key for c in s} for s in assign_cells(shuffled, world)] == [{c.key for c in s} for s in shares]


def _grouped(world):
    """A needle-like grid: 3 lengths x 2 trials, 5 depths each; group (length, trial), deepest first."""
    cells = [Cell(0, {"length": n, "depth": d, "trial": t}, f"k{n}-{d}-{t}", float(n) * (1.0 if d == 1 else 1 - d + 0.05),
                  (n, t), -d) for n in (8, 16, 32) for d in (0.0, 0.25, 0.5, 0.75, 1.0) for t in range(2)]
    return cells, assign_cells(cells, world)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_groups_stay_on_one_rank_and_run_consecutively_deepest_first(world):
    cells, shares = _grouped(world)
    assert sorted(c.key for s in shares for c in s) == sorted(c.key for c in cells)
    for share in shares:
        groups = [c.group for c in share]
        runs = [g for i, g in enumerate(groups) if i == 0 or g != groups[i - 1]]
        assert len(runs) == len(set(runs))  # each group in one consecutive run
        for g in set(groups):
            depths = [c.coords["depth"] for c in share if c.group == g]
            assert depths == [1.0, 0.75, 0.5, 0.25, 0.0]
    owner = {c.group: r for r, share in enumerate(shares) for c in share}
    assert all(owner[c.group] == r for r, share in enumerate(shares) for c in share)  # a group never splits
    loads = _loads(shares)
    group_cost = max(sum(c.cost for c in cells if c.group == g) for g in owner)
    assert max(loads) - min(loads) <= group_cost  # LPT over groups
    assert [{c.key for c in s} for s in assign_cells(cells[::-1], world)] == [{c.key for c in s} for s in shares]


def test_fewer_groups_than_ranks_are_dealt_cell_by_cell():
    cells, _ = _grouped(1)
    two = [c for c in cells if c.coords["length"] == 32]  # 2 groups (trials) of 5 cells
    shares = assign_cells(two, 3)
    assert all(shares) and sorted(c.key for s in shares for c in s) == sorted(c.key for c in two)
    for share in shares:  # still deepest first within what a rank holds of a group
        for g in {c.group for c in share}:
            depths = [c.coords["depth"] for c in share if c.group == g]
            assert depths == sorted(depths, reverse=True)


def test_plan_gives_needle_cells_their_group_and_order(model, tmp_path):
    params = {"lengths": "64,96", "depths": "0,0.5,1", "trials": 2}
    plan = plan_run("needle", [model], params, out_root=tmp_path)
    c = next(c for c in plan.cells if c.coords == {"context_length": 96, "depth": 0.5, "trial": 1})
    assert c.group == ("trial", 1) and c.order == -48.0 and c.cost == pytest.approx(96 / 64 * 0.5)
    order = [(c.coords["trial"], c.coords["context_length"], c.coords["depth"]) for c in distributed.schedule(plan.cells)]
    assert order[:6] == [(0, 96, 1.0), (0, 64, 1.0), (0, 96, 0.5), (0, 64, 0.5), (0, 64, 0.0), (0, 96, 0.0)]
    off = plan_run("needle", [model], {**params, "prefix_cache": "false"}, out_root=tmp_path)
    assert all(c.group is None for c in off.cells) and distributed.schedule(off.cells) == list(off.cells)
    assert [c.key for c in off.cells] == [c.key for c in plan.cells] and off.run_dir == plan.run_dir


def test_device_map_needs_accelerate_and_a_known_map(model, monkeypatch):
    with pytest.raises(UserError, match="unknown device map 'everywhere'"):
        loading.load_model(str(model), device_map="everywhere")
    monkeypatch.setitem(sys.modules, "accelerate", None)  # import accelerate -> ImportError
    with pytest.raises(UserError, match=r"needs accelerate: pip install 'long-context-harness\[scale\]'"):
        loading.load_model(str(model), device_map="auto")


def test_device_map_with_torchrun_is_refused(model, tmp_path, monkeypatch):
    pytest.importorskip("accelerate")
    monkeypatch.setattr(distributed, "shard", lambda: (0, 2))
    with pytest.raises(UserError, match="do not combine it with torchrun"):
        run_task("fake", [model], {}, out_root=tmp_path, progress=False, device_map="auto")
    assert not (tmp_path / "fake").exists() and not list(tmp_path.iterdir())


def test_device_map_auto_loads_and_runs_like_a_plain_load(model, tmp_path):
    pytest.importorskip("accelerate")
    import torch

    plain = loading.load_model(str(model))
    mapped = loading.load_model(str(model), device_map="auto")
    assert mapped.info.device == "cpu"  # no GPU here: accelerate keeps every layer on the CPU
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        torch.testing.assert_close(mapped.model(ids).logits, plain.model(ids).logits)
    params = {"lengths": "8,16", "trials": 1}
    a = run_task("fake", [model], params, out_root=tmp_path, name="plain", progress=False)
    b = run_task("fake", [model], params, out_root=tmp_path, name="mapped", progress=False, device_map="auto")
    pd.testing.assert_frame_equal(results.load_run(a)["fake"], results.load_run(b)["fake"])


def _torchrun(tmp_path, args, **env):
    script = tmp_path / "lch_dist.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           "run", "fake", *args, "--no-progress", "--device", "cpu"]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


GRID = ["-T", "lengths=8,12,16,20,24", "-T", "trials=2"]
GRID_PARAMS = {"lengths": "8,12,16,20,24", "trials": 2}


def test_torchrun_resumes_a_single_process_run_and_computes_only_missing_cells(model, tmp_path):
    # real torchrun, 2 CPU processes, real process group: shard, agreed_pending and barrier are not faked
    log, out = tmp_path / "log.txt", tmp_path / "out"
    single = run_task("fake", [model], GRID_PARAMS, out_root=out, name="r", progress=False)  # world size 1
    want = results.load_run(single)["fake"]
    plan = plan_run("fake", [model], GRID_PARAMS, out_root=out, name="r")
    missing = {(c.coords["length"], c.coords["trial"]) for c in plan.cells if c.coords["length"] in (8, 16, 24)}
    for c in plan.cells:
        if (c.coords["length"], c.coords["trial"]) in missing:
            plan.cell_path(c).unlink()
    res = _torchrun(tmp_path, ["--model", str(model), "--out", str(out), "--name", "r", *GRID, "-T", f"log={log}"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("run dir:") == 1  # one summary, from rank 0
    lines = [x.split() for x in log.read_text().splitlines()]
    assert sorted((int(length), int(trial)) for _, length, trial in lines) == sorted(missing)  # each once, no others
    assert len({pid for pid, _, _ in lines}) == 2  # both ranks computed a share
    pd.testing.assert_frame_equal(results.load_run(out / "r")["fake"], want)
    assert results.read_manifest(out / "r")["status"] == "complete"


@pytest.mark.slow
def test_torchrun_tables_equal_single_process_and_shares_are_balanced(model, tmp_path):
    log, out = tmp_path / "log.txt", tmp_path / "out"
    res = _torchrun(tmp_path, ["--model", str(model), "--out", str(out), "--name", "sharded", *GRID,
                               "-T", f"log={log}"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("run dir:") == 1  # one summary, from rank 0
    single = run_task("fake", [model], GRID_PARAMS, out_root=out, name="single", progress=False)
    pd.testing.assert_frame_equal(results.load_run(out / "sharded")["fake"], results.load_run(single)["fake"])
    assert results.read_manifest(out / "sharded")["status"] == "complete"
    lines = [x.split() for x in log.read_text().splitlines()]
    assert len(lines) == 10 and len({tuple(x[1:]) for x in lines}) == 10
    cost = {}
    for pid, length, _ in lines:
        cost[pid] = cost.get(pid, 0) + int(length)
    assert sorted(cost.values()) == [80, 80]  # LPT: 24+20+16+12+8 on each rank


@pytest.mark.slow
def test_killed_rank_then_world_size_one_finishes_every_cell_once(model, tmp_path):
    log, out = tmp_path / "log.txt", tmp_path / "out"
    params = {**GRID_PARAMS, "sleep": 0.5, "log": str(log)}
    res = _torchrun(tmp_path, ["--model", str(model), "--out", str(out), "--name", "k", *GRID, "-T", "sleep=0.5",
                               "-T", f"log={log}"], LCH_TEST_KILL_RANK1="1")
    assert res.returncode != 0  # torchrun reports the dead rank and stops the other one
    saved = {p.stem for p in (out / "k" / "cells").glob("*.json")}
    assert 1 <= len(saved) < 10
    before = len(log.read_text().splitlines())
    run_task("fake", [model], params, out_root=out, name="k", progress=False)  # world size 1
    rerun = log.read_text().splitlines()[before:]
    assert len(rerun) == 10 - len(saved)  # only the missing cells
    df = results.load_run(out / "k")["fake"]
    assert len(df) == 10 and not df.duplicated(["length", "trial"]).any()
    assert len(list((out / "k" / "cells").glob("*.json"))) == 10
    assert results.read_manifest(out / "k")["cells_done"] == 10


TP_SCRIPT = """import sys
sys.path.insert(0, {root!r})
from harness.cli import app
app()
"""


@pytest.fixture(scope="module")
def ssmax_model(tmp_path_factory):
    """A tiny Llama with learned SSMax s that differs per head (so a head given another's s changes the answer)."""
    from tests.tiny import save_checkpoint

    return save_checkpoint(tmp_path_factory.mktemp("ssmax") / "tiny-ssmax", ssmax=True, seed=5)


def _torchrun_cli(tmp_path, args):
    script = tmp_path / "lch_tp.py"
    script.write_text(TP_SCRIPT.format(root=str(ROOT)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), *args,
           "--no-progress", "--device", "cpu"]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_tensor_parallel_needle_equals_a_single_process_run(ssmax_model, tmp_path):
    # real torchrun, 2 CPU processes, transformers' tp_plan: each process holds 2 of the 4 heads and their s
    params = {"lengths": "96,160", "depths": "0,1", "trials": 2}
    out = tmp_path / "out"
    single = run_task("needle", [str(ssmax_model)], params, out_root=out, name="single", progress=False)
    grid = [x for k, v in params.items() for x in ("-T", f"{k}={v}")]
    res = _torchrun_cli(tmp_path, ["run", "needle", "--model", str(ssmax_model), "--device-map", "tp", *grid,
                                   "--out", str(out), "--name", "tp"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("run dir:") == 1  # rank 0 alone saves and reports
    want, got = results.load_run(single)["needle"], results.load_run(out / "tp")["needle"]
    assert len(got) == 8
    same = ["context_length", "depth", "trial", "answer", "prediction", "correct", "attention"]
    pd.testing.assert_frame_equal(got[same], want[same])
    assert (got["answer_nll"] - want["answer_nll"]).abs().max() < 1e-4  # a head given another's s moves it ~0.1
    # the probe's tables are per head: refused in one line, before any weights load
    res = _torchrun_cli(tmp_path, ["run", "attention_probe", "--model", str(ssmax_model), "--device-map", "tp",
                                   "-T", "lengths=96", "--out", str(out), "--name", "probe"])
    assert res.returncode != 0 and "exitcode  : 2" in res.stderr  # torchrun reports each process's exit 2
    # the first process to exit makes torchrun stop the other, which may not have printed yet
    assert res.stderr.count("error: task 'attention_probe' reads attention per head") >= 1


def test_tensor_parallel_keeps_each_process_its_own_heads_s(ssmax_model, monkeypatch):
    import torch

    from harness.attention import attention_modules

    model = loading.load_model(str(ssmax_model)).model
    full = [m.ssmax_s.detach().clone() for _, m in attention_modules(model)]
    assert all(len(set(s.tolist())) == 4 for s in full)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    loading.keep_local_heads(model)
    for s, (_, m) in zip(full, attention_modules(model)):
        assert torch.equal(m.ssmax_s, s[2:]) and isinstance(m.ssmax_s, torch.nn.Parameter)
