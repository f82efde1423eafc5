"""Shared-prefix prefill (issue 18): the same predictions, answer NLLs and probe scores as one prefill per prompt.

Parity at three levels: the decoding functions on tiny random models (SSMax variants, a sliding-window
Mistral, a sliding-window softcapped Gemma 2, windows shorter than the prompts), the tasks through the
runner on the reference pair (needle, a retrieval preset, attention_probe; prefix_cache on vs off), and
the fallback when a cache cannot crop.
"""

import json

import pandas as pd
import pytest
import torch

from evals._probe_targets import ProbeTarget
from evals.attention_probe import probe_and_decode, probe_prompt
from harness.attention import apply_attention
from harness.inference.decode import greedy_answer, score_prompt
from harness.inference.prefix_cache import PrefixCache, common_prefix
from harness.task.grid import shared_fraction
from harness.runner.rundir import prefix_cache_summary
from tests.tiny import build_model

TOL = 1e-4
VOCAB = 400
W = 16  # sliding window, far shorter than the prompts
CASES = {  # id -> (family, attention spec, learned s, config overrides)
    "llama-ssmax": ("llama", "ssmax", True, {}),
    "llama-ssmax-bias": ("llama", "ssmax(s=0.3,b=0.1)", False, {}),
    "mistral-window": ("mistral", "ssmax", True, {"sliding_window": W}),
    "gemma2-window-softcap": ("gemma2", "ssmax(s=0.4)", False, {"sliding_window": W, "query_pre_attn_scalar": 8,
                                                                "attn_logit_softcapping": 2.0,
                                                                "final_logit_softcapping": 3.0}),
}
INSERTS = (100, 64, 30, 3)  # needle positions in the haystack, deepest first (as the tasks order depths)


def _model(case_id):
    family, spec, learned, overrides = CASES[case_id]
    model = build_model(family, vocab_size=VOCAB, ssmax=learned, initializer_range=0.2, **overrides)
    apply_attention(model, spec, training_length=64)
    return model


def _prompts(seed=0, length=110):
    """One haystack with a needle at each of INSERTS: prompts that share every token before their needle."""
    gen = torch.Generator().manual_seed(seed)
    hay, needle, question, answer = (torch.randint(1, VOCAB, (n,), generator=gen).tolist() for n in (length, 8, 6, 9))
    return [[0] + hay[:at] + needle + hay[at:] + question for at in INSERTS], needle, answer


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_prefill_after_a_cropped_cache_equals_a_full_forward(case_id, monkeypatch):
    from harness.attention.variants import reset_attention_paths

    reset_attention_paths()
    model = _model(case_id)
    prompts, _, _ = _prompts()
    prefix = PrefixCache()
    for k, ids in enumerate(prompts):
        with torch.inference_mode():
            last, cache = prefix.prefill(model, ids, "group")
            full = model(torch.tensor([ids])).logits[0, -1].float()
        torch.testing.assert_close(last, full, atol=TOL, rtol=0)
        # every later prompt reuses exactly the tokens before its needle (BOS + haystack[:at]), found by comparing ids
        assert prefix.last == ({"prefix_cache": "fresh", "prefix_tokens": 0} if k == 0 else
                               {"prefix_cache": "shared", "prefix_tokens": 1 + INSERTS[k]})
        prefix.keep("group", ids, cache)
    # every layer takes a mask-free path: causal after the cache (split by log-sum-exp on CPU), windows by row
    # blocks, softcap on materialised scores over each chunk's visible keys; never transformers' masked SDPA
    paths = reset_attention_paths()
    expected = {"llama-ssmax": "split_lse", "llama-ssmax-bias": "split_lse", "mistral-window": "window_blocks",
                "gemma2-window-softcap": "materialised_softcap"}[case_id]
    assert expected in paths and "sdpa_masked" not in paths, paths


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_score_prompt_with_a_shared_prefix_equals_per_prompt(case_id):
    model = _model(case_id)
    prompts, _, answer = _prompts(seed=1)
    prefix = PrefixCache()
    for ids in prompts:
        got = score_prompt(model, ids, answer, 6, prefix=prefix, group="g")
        want = score_prompt(model, ids, answer, 6)
        assert got[0] == want[0] and got[1] == pytest.approx(want[1], abs=TOL)
    assert prefix.last["prefix_cache"] == "shared"


def _target(ids, needle_at, answer):
    return ProbeTarget(tuple(ids), tuple(answer), (1 + needle_at, 1 + needle_at + 8), (1, 8), "", len(ids), 0.0,
                       score=None, record=None, stop=None)


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_probe_with_a_shared_prefix_equals_the_per_prompt_probe(case_id):
    model = _model(case_id)
    prompts, _, answer = _prompts(seed=2)
    prefix = PrefixCache()
    for k, (ids, at) in enumerate(zip(prompts, INSERTS)):
        t = _target(ids, at, answer)
        got, generated = probe_and_decode(model, t, 6, prefix=prefix, group="g", chunk_elements=256)
        want = probe_prompt(model, ids, answer, t.needle_span, t.answer_digit_span)
        assert prefix.last["prefix_cache"] == ("shared" if k else "fresh")
        assert got.points == want.points
        for name in ("needle_score", "first_digit_score", "max_weight", "entropy"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), atol=TOL, rtol=0)
        assert generated == greedy_answer(model, ids, 6)


def test_new_group_disabled_or_nothing_shared_prefills_from_scratch():
    model = _model("llama-ssmax")
    prompts, _, _ = _prompts()
    prefix = PrefixCache()
    _, cache = prefix.prefill(model, prompts[0], "a")
    prefix.keep("a", prompts[0], cache)
    prefix.prefill(model, prompts[1], "b")  # another group: nothing reused even though the ids share a prefix
    assert prefix.last["prefix_cache"] == "fresh"
    off = PrefixCache(enabled=False)
    _, cache = off.prefill(model, prompts[0], "a")
    off.keep("a", prompts[0], cache)
    off.prefill(model, prompts[1], "a")
    assert off.last == {"prefix_cache": "off", "prefix_tokens": 0}
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2 and common_prefix([1, 2], [1, 2, 3]) == 2
    assert shared_fraction({"context_length": 64, "depth": 1.0}, (32, 64), (0.0, 1.0)) == 1.0  # a trial's first prompt
    assert shared_fraction({"context_length": 32, "depth": 1.0}, (32, 64), (0.0, 1.0)) == 0.05
    assert shared_fraction({"context_length": 64, "depth": 0.25}, (32, 64), (0.0, 1.0)) == 0.75


def test_a_cache_that_cannot_crop_falls_back_to_per_prompt_prefill(monkeypatch):
    """A cache built from a sliding-window config drops keys past the window: it cannot crop, so every prompt is prefilled alone."""
    from transformers import DynamicCache

    import harness.inference.decode
    import harness.inference.prefix_cache

    model = _model("mistral-window")
    prompts, _, answer = _prompts(seed=3)
    want = [score_prompt(model, ids, answer, 6) for ids in prompts]

    def sliding():
        return DynamicCache(config=model.config)

    monkeypatch.setattr(harness.inference.decode, "new_cache", sliding)
    monkeypatch.setattr(harness.inference.prefix_cache, "new_cache", sliding)
    prefix = PrefixCache()
    for ids, (tokens, nll) in zip(prompts, want):
        got = score_prompt(model, ids, answer, 6, prefix=prefix, group="g")
        assert got[0] == tokens and got[1] == pytest.approx(nll, abs=TOL)
    assert prefix.last["prefix_cache"] == "fallback" and "cannot" in prefix.last["prefix_reason"]
    summary = prefix_cache_summary([{"prefix_cache": "fresh", "prefix_tokens": 0}, prefix.last])
    assert summary["mode"] == "fallback" and "cannot" in summary["reason"]


# ------------------------------------------------------------------------------ tasks on the reference pair

GRID = {"lengths": "256,384", "depths": "0,1", "trials": 2}  # 2 groups (trials) of 2 lengths x 2 depths per model
CELLS = 2 * 2 * 2
TASKS = {  # task -> (extra params, table, columns within TOL, columns that must be equal)
    "needle": ({}, "needle", ["answer_nll"], ["prediction", "correct", "first_digit_correct", "generated"]),
    "niah_multikey_1": ({}, "retrieval", ["answer_nll"], ["prediction", "correct", "recall", "first_token_correct"]),
    "attention_probe": ({}, "needle_score", ["needle_score", "first_digit_score"], ["prediction", "correct"]),
}


def _run(task, extra, prefix_cache, tmp_path):
    from harness.results import load
    from harness.runner import ModelRequest, run_task

    models = [ModelRequest("reference/softmax", rope_theta=5e5), ModelRequest("reference/ssmax", rope_theta=5e5)]
    params = {**GRID, **extra, "prefix_cache": prefix_cache}
    run = run_task(task, models, params, out_root=tmp_path, name=f"{task}-{prefix_cache}", progress=False)
    return load(run), json.loads((run / "manifest.json").read_text())


@pytest.mark.parametrize("task", sorted(TASKS))
def test_reference_pair_tables_equal_with_and_without_prefix_cache(task, tmp_path):
    extra, table, close, equal = TASKS[task]
    (on, on_manifest), (off, off_manifest) = (_run(task, extra, flag, tmp_path) for flag in ("true", "false"))
    keys = ["model", "context_length", "depth", "trial"] + (["layer", "head"] if task == "attention_probe" else [])
    a, b = (t[table].sort_values(keys).reset_index(drop=True) for t in (on, off))
    assert len(a) == len(b) == 2 * CELLS * (16 if task == "attention_probe" else 1)  # 2 models; 4 layers x 4 heads
    pd.testing.assert_frame_equal(a[keys + equal], b[keys + equal])
    for col in close:
        assert (a[col] - b[col]).abs().max() < TOL, col
    if task == "attention_probe":
        fa, fb = (t["attention_fading"].sort_values(keys[:4] + ["n", "layer", "head"]).reset_index(drop=True)
                  for t in (on, off))
        assert (fa["max_weight"] - fb["max_weight"]).abs().max() < TOL
        assert (fa["entropy"] - fb["entropy"]).abs().max() < TOL
    for model in on_manifest["models"]:  # each group: 1 fresh prefill, the other 3 cells shared
        assert model["prefix_cache"]["mode"] == "used"
        assert model["prefix_cache"]["shared_cells"] == CELLS - 2 and model["prefix_cache"]["fresh_cells"] == 2
        assert model["prefix_cache"]["reused_tokens"] > 0
    assert all(m["prefix_cache"]["mode"] == "off" for m in off_manifest["models"])
    cells = on["cells"]
    assert set(cells["prefix_cache"]) == {"fresh", "shared"}
    first = cells.loc[cells["prefix_cache"] == "fresh", "cell"].map(json.loads)
    assert all((c["context_length"], c["depth"]) == (384, 1.0) for c in first)  # each trial starts at its latest needle
