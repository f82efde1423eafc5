"""Attention probes: parity with materialised eager weights, logits untouched, rows with a cache, the task end to end."""

import json
import math

import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from evals.attention_probe import answer_rows, fading_points, probe_prompt
from harness.attention import apply_attention, attention_modules
from harness.attention.probe import PROBE_IMPLEMENTATION, capture
from tests.tiny import build_model

TOL = 1e-4
VARIANTS = [  # (spec, checkpoint with learned s)
    ("softmax", False),
    ("ssmax", True),
    ("ssmax(s=0.3)", False),
    ("ssmax(s=0.3,b=0.1)", False),
    ("logn(L=8)", False),
]


def _model(spec, learned, **kw):
    model = build_model("llama", ssmax=learned, **kw)  # 4 query heads on 2 kv heads: GQA
    apply_attention(model, spec, training_length=64)
    return model


def _multiplier(module, spec: str, n: int) -> torch.Tensor:
    """The attention-spec table (docs/architecture.md, Contracts) written out for one row that sees n keys: [H] float64 (not harness.attention.query_scale)."""
    heads = module.config.num_attention_heads
    if spec == "ssmax":
        return module.ssmax_s.detach().double() * math.log(n)
    value = {"softmax": 1.0, "ssmax(s=0.3)": 0.3 * math.log(n), "ssmax(s=0.5)": 0.5 * math.log(n),
             "ssmax(s=0.3,b=0.1)": 0.3 * math.log(n) + 0.1, "logn(L=8)": max(1.0, math.log(n) / math.log(8))}[spec]
    return torch.full((heads,), value, dtype=torch.float64)


def _reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Row by row: softmax(m(n_i) * z_i) over the keys the mask allows, n_i counted on that row's mask."""
    groups = query.shape[1] // key.shape[1]
    k = key.double().repeat_interleave(groups, dim=1)
    v = value.double().repeat_interleave(groups, dim=1)
    z = query.double() @ k.transpose(-1, -2) * scaling  # (B, H, q, kv)
    allowed = attention_mask[..., : k.shape[2]] > -1 if attention_mask is not None else None  # 0 = allowed
    weights = torch.zeros_like(z)
    for b in range(z.shape[0]):
        for i in range(z.shape[2]):
            row_ok = allowed[b, 0, i] if allowed is not None else torch.arange(z.shape[3]) <= i
            n = int(row_ok.sum())
            if n == 0:  # a padding row sees no key: all weights 0
                continue
            scaled = z[b, :, i] * _multiplier(module, module.test_spec, n).view(-1, 1)
            weights[b, :, i] = torch.softmax(scaled.masked_fill(~row_ok, float("-inf")), dim=-1)
    out = (weights @ v).to(query.dtype).transpose(1, 2).contiguous()
    return out, weights


AttentionInterface.register("test_probe_reference", _reference_attention)
AttentionMaskInterface.register("test_probe_reference", eager_mask)


def _eager_weights(model, spec, ids, attention_mask=None):
    """Weights of every layer [layers, B, H, q, kv] from the independent reference; restores "lch"."""
    for _, module in attention_modules(model):
        module.test_spec = spec
    model.set_attn_implementation("test_probe_reference")
    try:
        with torch.no_grad():
            out = model(ids, attention_mask=attention_mask, output_attentions=True)
    finally:
        apply_attention(model, spec, training_length=64)
    return torch.stack(out.attentions).float()


@pytest.mark.parametrize("spec,learned", VARIANTS)
def test_needle_score_and_fading_equal_eager_weights(spec, learned):
    model = _model(spec, learned)
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(1, 400, (37,), generator=gen).tolist()
    answer = torch.randint(1, 400, (9,), generator=gen).tolist()
    span, digits = (11, 18), (1, 8)  # needle number at prompt[11:18]; answer digits answer[1:8]
    got = probe_prompt(model, prompt, answer, span, digits, chunk_elements=64)  # tiny chunks: many per layer

    w = _eager_weights(model, spec, torch.tensor([prompt + answer]))[:, 0]  # (layers, H, q, kv)
    rows = answer_rows(len(prompt), digits)
    assert rows == list(range(37, 44))
    needle = w[:, :, rows, span[0]:span[1]].sum(-1)  # (layers, H, digits)
    torch.testing.assert_close(got.needle_score, needle.mean(-1), atol=TOL, rtol=0)
    torch.testing.assert_close(got.first_digit_score, needle[..., 0], atol=TOL, rtol=0)
    assert got.points == (1, 2, 4, 8, 16, 32, 37)
    fade = w[:, :, [n - 1 for n in got.points]]  # the row at n keys is row n - 1
    torch.testing.assert_close(got.max_weight, fade.amax(-1), atol=TOL, rtol=0)
    torch.testing.assert_close(got.entropy, torch.special.entr(fade).sum(-1), atol=TOL, rtol=0)
    assert got.needle_score.shape == (2, 4)


def test_ssmax_changes_the_statistics():
    """Guard against a probe that ignores the variant: s=0.3 and s=1 give different weights."""
    ids = torch.randint(1, 400, (1, 40), generator=torch.Generator().manual_seed(2))
    out = {}
    for spec in ("ssmax(s=0.3)", "ssmax(s=1)"):
        model = _model(spec, False)
        with torch.no_grad(), capture(model, [39]) as probe:
            model(ids)
        out[spec] = probe.get("max_weight")
    assert not torch.allclose(out["ssmax(s=0.3)"], out["ssmax(s=1)"], atol=1e-3)


@pytest.mark.parametrize("spec,learned", VARIANTS[:2])
def test_probe_leaves_logits_unchanged_and_restores_the_implementation(spec, learned):
    model = _model(spec, learned)
    ids = torch.randint(1, 400, (1, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = model(ids).logits
        with capture(model, [0, 5, 29], spans={"x": (2, 4)}) as probe:
            assert model.config._attn_implementation == PROBE_IMPLEMENTATION
            probed = model(ids).logits
    assert torch.equal(plain, probed)
    assert model.config._attn_implementation == "lch"
    assert all(getattr(m, "lch_probe", None) is None for m in model.model.layers.modules())
    assert set(probe.reducers) == {"max_weight", "entropy", "mass:x"}
    assert probe.get("mass:x").shape == (2, 1, 4, 3)
    assert probe.missing_rows() == []
    # the first row sees one key: all its weight is on it
    assert torch.allclose(probe.get("max_weight")[..., 0], torch.ones(2, 1, 4))


def test_rows_are_positions_in_the_full_sequence_with_a_kv_cache():
    """Prefill then one cached decode step: row 20 is captured in the second call, with its true n."""
    spec = "ssmax"
    model = _model(spec, True)
    ids = torch.randint(1, 400, (1, 21), generator=torch.Generator().manual_seed(4))
    rows = [3, 19, 20]
    with torch.no_grad(), capture(model, rows) as probe:
        out = model(ids[:, :20], use_cache=True)
        assert probe.missing_rows() == [20]
        model(ids[:, 20:], cache=out.cache, use_cache=True)
    w = _eager_weights(model, spec, ids)[:, :, :, rows]  # (layers, B, H, rows, kv)
    torch.testing.assert_close(probe.get("max_weight"), w.amax(-1), atol=TOL, rtol=0)
    torch.testing.assert_close(probe.get("entropy"), torch.special.entr(w).sum(-1), atol=TOL, rtol=0)


def test_padding_mask_counts_only_visible_keys():
    """Left padding in a batch of two: n and the mask come from the attention mask, as in the eager reference."""
    spec = "ssmax(s=0.5)"
    model = _model(spec, False)
    ids = torch.randint(1, 400, (2, 16), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, :5] = 0
    rows = [7, 15]
    with torch.no_grad(), capture(model, rows, spans={"early": (5, 9)}) as probe:
        model(ids, attention_mask=mask)
    w = _eager_weights(model, spec, ids, attention_mask=mask)[:, :, :, rows]
    torch.testing.assert_close(probe.get("max_weight"), w.amax(-1), atol=TOL, rtol=0)
    torch.testing.assert_close(probe.get("mass:early"), w[..., 5:9].sum(-1), atol=TOL, rtol=0)


def test_capture_rejects_bad_rows_and_nesting():
    model = _model("softmax", False)
    with pytest.raises(ValueError, match="rows"):
        with capture(model, []):
            pass
    with pytest.raises(ValueError, match="repeat"):
        with capture(model, [1, 1]):
            pass
    with capture(model, [1]):
        with pytest.raises(RuntimeError, match="nest"):
            with capture(model, [2]):
                pass
    assert model.config._attn_implementation == "lch"


def test_fading_points_and_answer_rows():
    assert fading_points(1) == [1]
    assert fading_points(8) == [1, 2, 4, 8]
    assert fading_points(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert answer_rows(50, (0, 3)) == [49, 50, 51]  # the last prompt row predicts the first answer token


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("haystack")
    text = ("The lighthouse keeper counted ships. Each night he wrote their names down!\n"
            "for ship in harbour:\n    log.write(ship.name)\n")
    for i in range(6):
        (folder / f"d{i}.txt").write_text(f"Log {i}.\n" + text * 12)
    return folder


def test_task_end_to_end_through_the_runner(tiny_checkpoint, corpus_dir, tmp_path):
    from harness.task.params import parse_task_params
    from harness.task import get_task
    from harness import results
    from harness.runner import ModelRequest, run_task

    ckpt = tiny_checkpoint(ssmax=True, name="tiny-ssmax")
    params = {"corpus": str(corpus_dir), "lengths": "100,160", "depths": "0,1", "trials": 1, "save_prompts": True}
    run = run_task("attention_probe", [ModelRequest(str(ckpt), rope_theta=50_000.0)], params,
                   out_root=tmp_path, progress=False)
    tables = results.load(run)
    scores, fading = tables["needle_score"], tables["attention_fading"]
    contract = ["model", "attention", "rope_theta", "context_length", "depth", "trial", "layer", "head",
                "needle_score", "correct"]
    assert set(contract) <= set(scores.columns)
    assert set(["model", "attention", "rope_theta", "n", "layer", "head", "max_weight", "entropy"]) <= set(fading.columns)
    assert len(scores) == 2 * 2 * 1 * 2 * 4  # (lengths x depths x trials) cells x layers x heads
    assert scores["needle_score"].between(0, 1).all() and (scores["rope_theta"] == 50_000.0).all()
    assert sorted(fading["n"].unique()) == [1, 2, 4, 8, 16, 32, 64, 100, 128, 160]
    assert (fading.loc[fading["n"] == 1, "max_weight"] == 1.0).all()
    assert set(tables["head_ranking"]["rank"]) == set(range(1, 9))
    figures = sorted(p.name for p in (run / "figures").iterdir())
    assert figures == ["attention_fading.png", "needle_score_best_head.png", "needle_score_top_heads.png"]

    # the prompts are the needle task's prompts for the same settings
    task = get_task("needle")
    needle_params = parse_task_params(task, params)
    from harness.models.loading import load_model

    loaded = load_model(str(ckpt))
    source = task.prepare(needle_params, loaded)
    saved = [json.loads(line) for line in (run / "prompts.jsonl").read_text().splitlines()]
    assert len(saved) == 4
    for rec in saved:
        p = task.prompt(needle_params, loaded.tokenizer, source, rec["context_length"], rec["depth"], rec["trial"])
        assert rec["input_ids"] == list(p.input_ids) and rec["needle_span"] == list(p.needle_span)
        rows = scores[(scores["context_length"] == rec["context_length"]) & (scores["depth"] == rec["depth"])
                      & (scores["trial"] == rec["trial"])]
        assert (rows["needle_start"] == p.needle_span[0]).all()
    assert scores["correct"].isin([True, False]).all() and scores["first_digit_correct"].isin([True, False]).all()


def test_probe_scores_a_retrieval_presets_prompts_on_the_asked_value(tiny_checkpoint, corpus_dir, tmp_path):
    """-T prompts=<preset>: the preset's own prompts; the needle span is the asked value's tokens (lone space trimmed)."""
    from evals._probe_targets import target
    from harness import results
    from harness.models.loading import load_model
    from harness.errors import UserError
    from harness.task.params import parse_task_params
    from harness.runner import run_task
    from harness.task import get_task

    ckpt = tiny_checkpoint()
    grid = {"corpus": str(corpus_dir), "lengths": "400", "depths": "0,0.5,1", "trials": 1}
    probe, preset = get_task("attention_probe"), get_task("niah_multikey_1")
    loaded = load_model(str(ckpt))
    tok = loaded.tokenizer
    state = probe.prepare(parse_task_params(probe, {**grid, "prompts": "niah_multikey_1"}), loaded)
    preset_params = parse_task_params(preset, grid)
    preset_state = preset.prepare(preset_params, loaded)
    spans = {}
    for depth in (0.0, 0.5, 1.0):
        t = target(state.task, state.params, tok, state.state, 400, depth, 0)
        p = preset.prompt(preset_params, tok, preset_state, 400, depth, 0)
        assert t.input_ids == p.input_ids and t.answer_ids == p.answer_ids
        value, s, e = p.value_spans[0]
        assert p.asked_values == (value,) and t.answer == value
        assert t.needle_span[1] == e and s <= t.needle_span[0] < e and not tok.decode(list(p.input_ids[s:t.needle_span[0]])).strip()
        assert tok.decode(list(p.input_ids[t.needle_span[0]:e])).strip() == value
        a, b = t.answer_digit_span
        assert tok.decode(list(p.answer_ids[a:b])).strip() == value and tok.decode([p.answer_ids[a]]).strip()
        spans[depth] = t.needle_span
    run = run_task("attention_probe", [str(ckpt)], {**grid, "prompts": "niah_multikey_1", "save_prompts": True},
                   out_root=tmp_path, progress=False)
    tables = results.load(run)
    scores = tables["needle_score"]
    assert len(scores) == 3 * 2 * 4 and {"recall", "first_token_correct"} <= set(scores.columns)
    for depth, (s, e) in spans.items():
        rows = scores[scores["depth"] == depth]
        assert (rows["needle_start"] == s).all() and (rows["needle_end"] == e).all()
    saved = [json.loads(line) for line in (run / "prompts.jsonl").read_text().splitlines()]
    assert len(saved) == 3 and all(rec["task"] == "niah_multikey_1" for rec in saved)
    with pytest.raises(UserError, match="prompts='nope' is not allowed"):
        parse_task_params(probe, {"prompts": "nope"})
