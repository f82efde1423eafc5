"""Cell keys are a contract: the same inputs give the same keys, so finished runs keep resuming across versions.

The keys below were computed by the code before the architecture rework (commit 0798f8e) for a fixed
small run: the committed reference pair, a fixed corpus folder, three tasks.
"""

import pytest

from harness.runner import ModelRequest, plan_run

PINNED = {"needle": ["fda857a60d969ff2", "22ff8031e1283e96", "d7a25caa80bc304a", "b2af92c5bc354683", "6f88bca62d16c156", "a6af009eb3dbb3e4", "aaf6e6f57c76d41e", "d8282fae539fd78f"], "position_loss": ["de11995288b299bf", "66bedda43510c39c", "e7bbcf103744c1b5", "5477ec310b6f02a3"], "attention_probe": ["5b1c19d6e0d2dc77", "8e032782631da86e"]}
# niah_single_2 was niah_single_2-1a6c0a5f before issue 30: the niah_* presets now default to wording=ruler (RULER's
# strings), which changes every prompt, so their old runs must not resume (wording=lch keeps the old name and keys).
PINNED_NAMES = {"needle": "needle-f9390627", "niah_single_2": "niah_single_2-3d122b92",
                "attention_probe": "attention_probe-ab665d28"}
CORPUS = "/tmp/lch-pinned-corpus"  # part of the params, so part of the keys: a fixed path
PARAMS = {
    "needle": {"corpus": CORPUS, "lengths": "128,256", "depths": "0,1", "trials": 1},
    "position_loss": {"corpus": CORPUS, "length": 128, "docs": 2},
    "attention_probe": {"corpus": CORPUS, "lengths": "128", "depths": "0.5", "trials": 1},
}


@pytest.mark.parametrize("task", sorted(PARAMS))
def test_keys_of_a_fixed_run_are_pinned(task, tmp_path):
    from pathlib import Path

    folder = Path(CORPUS)
    folder.mkdir(exist_ok=True)
    (folder / "a.txt").write_text("The quick brown fox.\n" * 400)
    (folder / "b.txt").write_text("Jumps over the lazy dog!\n" * 400)
    models = [ModelRequest("reference/softmax"), ModelRequest("reference/ssmax", "ssmax(s=auto)", 5e5)]
    plan = plan_run(task, models, PARAMS[task], out_root=tmp_path)
    assert [c.key[:16] for c in plan.cells] == PINNED[task]


@pytest.mark.parametrize("task", ["needle", "niah_single_2", "attention_probe"])
def test_execution_params_leave_keys_and_the_run_name_alone(task, tmp_path):
    """prefix_cache only changes how cells run: toggling it resumes the same run; an added param at its old value too."""
    params = {"corpus": "builtin:stdlib", "lengths": "128,256", "depths": "0,1", "trials": 1}
    plans = [plan_run(task, ["reference/softmax"], {**params, **extra}, out_root=tmp_path)
             for extra in ({}, {"prefix_cache": "false"}, {"prefix_cache": "true"})]
    assert len({tuple(c.key for c in p.cells) for p in plans}) == 1 and len({p.run_dir for p in plans}) == 1
    added = {"niah_single_2": {"save_prompts": "false"}, "attention_probe": {"prompts": "needle"}}.get(task)
    if added:
        same = plan_run(task, ["reference/softmax"], {**params, **added}, out_root=tmp_path)
        assert [c.key for c in same.cells] == [c.key for c in plans[0].cells] and same.run_dir == plans[0].run_dir
    changed = plan_run(task, ["reference/softmax"], {**params, "seed": 1}, out_root=tmp_path)
    assert not {c.key for c in changed.cells} & {c.key for c in plans[0].cells}  # a result-changing param does change them
    assert changed.run_dir != plans[0].run_dir


def test_default_run_names_are_pinned(tmp_path):
    """Default run folders keep their names across versions (added params at their old value change nothing)."""
    params = {"corpus": "builtin:stdlib", "lengths": "128,256", "depths": "0,1", "trials": 1}
    names = {task: plan_run(task, ["reference/softmax"], params, out_root=tmp_path).run_dir.name
             for task in ("needle", "niah_single_2", "attention_probe")}
    assert names == PINNED_NAMES
    old = plan_run("niah_single_2", ["reference/softmax"], {**params, "wording": "lch"}, out_root=tmp_path)
    assert old.run_dir.name == "niah_single_2-1a6c0a5f"  # the pre-issue-30 default, still reachable
