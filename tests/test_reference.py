"""The reference pair's tokenizer, training rows, trainer and checkpoints (tiny and offline)."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from harness.data.corpus import load_corpus
from harness.errors import UserError
from harness.data.haystack import CITIES, QUESTION_TEMPLATE
from harness.reference import REFERENCE_DIR, build_reference
from harness.reference import train as tr
from harness.reference.data import Mixture, RowMaker, token_stream
from harness.reference.tokenizer import save_tokenizer, train_tokenizer

TINY = tr.ModelShape(layers=2, d_model=32, heads=2, ffn=64)
TINY_CFG = tr.TrainConfig(steps=40, batch_size=4, training_length=160, copy_steps=5, warmup=5, lr=3e-3,
                          eval_every=1000, eval_trials=4)


@pytest.fixture(scope="module")
def docs():
    return [d.text for d in load_corpus("builtin:stdlib", "train").documents[:30]]


@pytest.fixture(scope="module")
def tokenizer(docs, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    save_tokenizer(train_tokenizer(docs, vocab_size=1000), path)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def rows(tokenizer, docs):
    return RowMaker(tokenizer, token_stream(tokenizer, docs), TINY_CFG.seq_len, TINY_CFG.training_length)


def test_tokenizer_round_trips_and_prepends_bos(tokenizer):
    text = "def f(x):\n    return x * 31  # café\n\tüber"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.convert_ids_to_tokens([tokenizer.bos_token_id]) == ["<|endoftext|>"]


def test_tokenizer_splits_digits_one_per_token(tokenizer):
    ids = tokenizer(" 8106422.", add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode([i]) for i in ids]
    assert pieces == [" ", "8", "1", "0", "6", "4", "2", "2", "."]


def test_needle_rows_use_the_eval_format(tokenizer, rows):
    rng = np.random.default_rng(0)
    ids, w, answer_pos = rows.needle_example(rng, 160, 0.5)
    prompt = tokenizer.decode(ids[: answer_pos[0]])
    assert ids[0] == tokenizer.bos_token_id
    assert len(ids[: answer_pos[0]]) == 160  # exactly the requested prompt length
    city = next(c for c in CITIES if QUESTION_TEMPLATE.format(city=c) in prompt)
    assert prompt.endswith(QUESTION_TEMPLATE.format(city=city))
    answer = tokenizer.decode(ids[answer_pos])
    assert answer[0] == " " and answer[1:].isdigit() and len(answer) == 8
    assert f"The special magic {city} number is: {answer[1:]}." in prompt
    assert (w[answer_pos] == rows.answer_weight).all()


def test_batches_depend_only_on_seed_and_step(rows):
    a = rows.batch(np.random.default_rng([0, 7]), 6, Mixture(needle=0.5, copy=0.2, text=0.3))
    b = rows.batch(np.random.default_rng([0, 7]), 6, Mixture(needle=0.5, copy=0.2, text=0.3))
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert a[0].shape[0] == 6 and a[0].shape[1] <= TINY_CFG.seq_len
    short = rows.batch(np.random.default_rng(1), 4, Mixture(needle=0, copy=1, text=0), copy_k_max=10)
    assert short[0].shape[1] <= 21  # BOS + 2 x 10, the unused columns cut


def test_trainer_loss_falls(tokenizer, rows, tmp_path):
    model = tr.build_model("softmax", TINY, tokenizer, TINY_CFG)
    log = tr.train(model, "softmax", rows, rows, TINY_CFG, tmp_path / "train_log.csv", progress=False,
                   log_every=5, echo=lambda m: None)
    first, last = log[0]["loss"], np.mean([r["loss"] for r in log[-3:]])
    assert last < first - 0.5
    header = (tmp_path / "train_log.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["step", "loss", "tokens", "seconds"]


def test_random_positions_are_sorted_distinct_and_seeded():
    a = tr.random_positions(np.random.default_rng([0, 3]), 4, 50, 800)
    b = tr.random_positions(np.random.default_rng([0, 3]), 4, 50, 800)
    assert a.shape == (4, 50) and (a == b).all()
    assert (np.diff(a, axis=1) > 0).all() and a.min() >= 0 and a.max() < 800
    assert a.max() > 400  # spread over the span, not 0..49


def test_random_positions_keep_attention_causal_over_the_whole_row(tokenizer, rows):
    """Position ids that do not step by 1 must not be read as packed sequences (each token alone)."""
    model = tr.build_model("softmax", TINY, tokenizer, TINY_CFG).eval()
    ids = torch.as_tensor(rows.text_row(np.random.default_rng(0))[0][None, :40])
    pos = torch.as_tensor(tr.random_positions(np.random.default_rng(1), 1, 40, 16 * 40))
    changed = ids.clone()
    changed[0, 5] = (ids[0, 5] + 1) % len(tokenizer)
    w = torch.ones(ids.shape)
    with torch.no_grad():
        _, nll, _ = tr.weighted_loss(model, ids, w, pos)
        _, nll_changed, _ = tr.weighted_loss(model, changed, w, pos)
        _, nll_consecutive, _ = tr.weighted_loss(model, ids, w)
    assert torch.equal(nll[:4], nll_changed[:4])  # predictions before token 5 never see it
    assert not torch.allclose(nll[10:], nll_changed[10:])  # later ones do (they would not if packed)
    assert not torch.allclose(nll[1:], nll_consecutive[1:])  # the positions reach RoPE


def test_randpos_recipe_differs_from_base_only_in_positions():
    from harness.reference.recipes import RECIPES

    base, randpos = RECIPES["base"], RECIPES["randpos"]
    assert randpos.shape == base.shape
    assert replace(randpos.train, position_span=1) == base.train and randpos.train.position_span == 16


def test_loguniform_row_spans_cover_contiguous_and_16x_rows():
    from harness.reference.recipes import RECIPES

    cfg = RECIPES["randpos2"].train
    spans = tr.row_spans(np.random.default_rng([0, 7]), 4000, cfg)
    assert (spans == tr.row_spans(np.random.default_rng([0, 7]), 4000, cfg)).all()
    assert spans.min() == cfg.seq_len and spans.max() <= 16 * cfg.training_length
    factors = spans / cfg.training_length
    # log-uniform: each factor-of-2 band holds about a quarter of the rows (uniform in [1, 16] would give 1/15 below 2)
    for lo in (1, 2, 4, 8):
        assert 0.22 < ((factors >= lo) & (factors < 2 * lo)).mean() < 0.28
    some = np.concatenate([spans[spans == cfg.seq_len][:3], spans[:20]])  # 1.3% of rows are exactly contiguous
    pos = tr.random_positions(np.random.default_rng(0), len(some), cfg.seq_len, some)
    assert (pos.max(axis=1) < some).all() and (np.diff(pos, axis=1) > 0).all()
    assert (pos[:3] == np.arange(cfg.seq_len)).all()  # spacing 1, as in every test prompt
    near = pos[3:][factors[:20] < 2]
    assert (np.diff(near, axis=1) == 1).mean() > 0.5  # rows spread below 2x are mostly spacing 1
    assert tr.row_spans(np.random.default_rng(0), 3, RECIPES["randpos"].train) == 16 * 256  # fixed: no draw


def test_demo_raises_the_base_as_the_pair_recipe_says():
    from harness.cli.demo import demo_plan, pair_models
    from harness.reference.recipes import RECIPES

    raised = demo_plan(quick=True, **pair_models("base"))
    assert {m.rope_theta for m in raised.models} == {500_000.0}  # the paper's 50x on the base pair
    kept = demo_plan(quick=True, **pair_models("base"), theta_factor=RECIPES["randpos2"].eval_theta_factor)
    assert {m.rope_theta for m in kept.models} == {10_000.0}  # trained on positions up to 16x: no raise


def test_randpos2_recipe_differs_from_randpos_only_in_the_span_draw():
    from harness.reference.recipes import RECIPES

    randpos, randpos2 = RECIPES["randpos"], RECIPES["randpos2"]
    assert randpos2.shape == randpos.shape
    assert replace(randpos2.train, position_span_draw="fixed") == randpos.train
    with pytest.raises(ValueError, match="position_span_draw"):
        replace(randpos.train, position_span_draw="uniform")


def test_ssmax_checkpoint_saves_and_loads_its_s(tokenizer, rows, tmp_path):
    import harness
    from harness.attention import attention_modules

    cfg = replace(TINY_CFG, steps=8)
    model = tr.build_model("ssmax", TINY, tokenizer, cfg)
    tr.train(model, "ssmax", rows, rows, cfg, tmp_path / "train_log.csv", progress=False, echo=lambda m: None)
    trained = [m.ssmax_s.detach().clone() for _, m in attention_modules(model)]
    assert not torch.allclose(torch.stack(trained), torch.full_like(torch.stack(trained), cfg.init_s))
    tr.save_checkpoint(model, tokenizer, tmp_path, tr.recipe("ssmax", TINY, cfg, "x"))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["attention_variant"] == {"name": "ssmax", "bias": False}
    assert config["training_length"] == cfg.training_length
    loaded = harness.load_model(str(tmp_path))
    assert loaded.info.attention == "ssmax"
    for s, (_, module) in zip(trained, attention_modules(loaded.model)):
        assert torch.allclose(module.ssmax_s, s)
    ids = torch.as_tensor(rows.text_row(np.random.default_rng(0))[0][None])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, loaded.model(input_ids=ids).logits, atol=1e-5)


def test_variants_set_up_their_attention(tokenizer):
    from harness.attention import attention_modules

    fixed = tr.build_model("ssmax-fixed", TINY, tokenizer, TINY_CFG)
    assert all(float(m.ssmax_s.min()) == 1.0 and not m.ssmax_s.requires_grad for _, m in attention_modules(fixed))
    biased = tr.build_model("ssmax-bias", TINY, tokenizer, TINY_CFG)
    assert all(hasattr(m, "ssmax_b") for _, m in attention_modules(biased))
    learned = tr.build_model("ssmax", TINY, tokenizer, TINY_CFG)
    assert all(torch.all(m.ssmax_s == TINY_CFG.init_s) and m.ssmax_s.requires_grad for _, m in attention_modules(learned))
    plain = tr.build_model("softmax", TINY, tokenizer, TINY_CFG)
    assert not any(hasattr(m, "ssmax_s") for _, m in attention_modules(plain))


def test_build_reference_rejects_bad_input():
    with pytest.raises(UserError, match="variant"):
        build_reference("sofmax")
    with pytest.raises(UserError, match="steps"):
        build_reference("softmax", steps=0)


@pytest.fixture(scope="module")
def quick_tokenizer(tmp_path_factory):
    return tmp_path_factory.mktemp("quick-tok")  # the first quick build trains it here, the others load it


def _quick(variant, out, tokenizer_dir, **kw):
    return build_reference(variant, out, quick=True, steps=10, progress=False, threads=1, echo=lambda m: None,
                           overrides={"eval_every": 3}, tokenizer_dir=tokenizer_dir, **kw)


def _log_without_time(path):
    import csv

    return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(path.open())]


@pytest.mark.parametrize("variant,kept,recipe", [("ssmax", 3, "base"), ("ssmax-late", 9, "base"),  # late: after 8
                                                 ("softmax", 6, "randpos2")])  # positions drawn per row and step
def test_resumed_build_equals_an_uninterrupted_one(tmp_path, variant, kept, recipe, quick_tokenizer):
    import shutil

    from safetensors.torch import load_file

    whole = _quick(variant, tmp_path / "whole", quick_tokenizer, recipe=recipe)
    cut = _quick(variant, tmp_path / "cut", quick_tokenizer, keep_checkpoints=True, recipe=recipe)
    for later in sorted((cut / "checkpoints").glob("step_*")):
        if int(later.name.split("_")[1]) > kept:  # as if the run had died after step `kept`
            shutil.rmtree(later)
    for name in ("model.safetensors", "train_log.csv"):
        (cut / name).unlink()
    assert _quick(variant, tmp_path / "cut", quick_tokenizer, resume=True, recipe=recipe) == cut
    a, b = load_file(whole / "model.safetensors"), load_file(cut / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _log_without_time(whole / "train_log.csv") == _log_without_time(cut / "train_log.csv")


def test_ssmax_late_branched_from_softmax_equals_a_whole_run(tmp_path, quick_tokenizer):
    """ssmax-late is the softmax run up to its switch (after step 8): branching at the kept step 6 trains 4 steps."""
    from safetensors.torch import load_file

    whole = _quick("ssmax-late", tmp_path / "whole", quick_tokenizer, keep_checkpoints=True)
    softmax = _quick("softmax", tmp_path / "softmax", quick_tokenizer, keep_checkpoints=True)
    said = []
    branched = build_reference("ssmax-late", tmp_path / "late", quick=True, steps=10, progress=False, threads=1,
                               echo=said.append, overrides={"eval_every": 3}, branch_from=softmax)
    assert said[0] == (f"branching ssmax-late at step 6 from {softmax / 'checkpoints' / 'step_00006'}")
    a, b = load_file(whole / "model.safetensors"), load_file(branched / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _log_without_time(whole / "train_log.csv") == _log_without_time(branched / "train_log.csv")
    recipe = json.loads((branched / "train_recipe.json").read_text())
    assert recipe["variant"] == "ssmax-late" and recipe == json.loads((whole / "train_recipe.json").read_text())
    with pytest.raises(UserError, match="needs --variant ssmax-late"):
        _quick("ssmax", tmp_path / "x", quick_tokenizer, branch_from=softmax)
    with pytest.raises(UserError, match="not the softmax run"):
        _quick("ssmax-late", tmp_path / "y", quick_tokenizer, branch_from=whole)  # an ssmax-late run's checkpoints
    with pytest.raises(UserError, match="nothing to branch from"):
        _quick("ssmax-late", tmp_path / "z", quick_tokenizer, branch_from=tmp_path / "empty")


def test_resume_refuses_nothing_to_resume_and_another_recipe(tmp_path, quick_tokenizer):
    with pytest.raises(UserError, match="nothing to resume"):
        _quick("ssmax", tmp_path / "empty", quick_tokenizer, resume=True)
    _quick("ssmax", tmp_path / "run", quick_tokenizer, keep_checkpoints=True)
    with pytest.raises(UserError, match="another recipe"):
        _quick("softmax", tmp_path / "run", quick_tokenizer, resume=True)


def _shipped_pairs():
    from harness.reference.shipped import reference_models
    from harness.reference.recipes import RECIPES

    shipped = set(reference_models())
    return [r for r in RECIPES.values() if {r.model_name("softmax"), r.model_name("ssmax")} <= shipped]


PAIRS = _shipped_pairs()


@pytest.mark.parametrize("recipe", PAIRS, ids=lambda r: r.name)
def test_committed_pair_loads_and_differs_only_in_attention(recipe):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    configs, recipes = {}, {}
    for variant in ("softmax", "ssmax"):
        path = REFERENCE_DIR / recipe.model_name(variant)
        assert sum(f.stat().st_size for f in path.iterdir()) <= 10 * 2**20
        assert (path / "train_log.csv").read_text().startswith("step,loss,tokens,seconds")
        AutoModelForCausalLM.from_pretrained(str(path))
        AutoTokenizer.from_pretrained(str(path))
        configs[variant] = json.loads((path / "config.json").read_text())
        recipes[variant] = json.loads((path / "train_recipe.json").read_text())
    variant = configs["ssmax"].pop("attention_variant")
    assert variant == {"name": "ssmax", "bias": False}
    assert configs["softmax"] == configs["ssmax"]
    for r in recipes.values():
        r.pop("variant")
    assert recipes["softmax"] == recipes["ssmax"]  # the same recipe: shape, curriculum, data, seed
    assert recipes["softmax"].get("recipe", "base") == recipe.name
    assert recipes["softmax"]["train"]["steps"] == recipe.train.steps  # `lch reference build --recipe` reproduces it


# What the shipped pair measures at its training length (CPU, float32, greedy: deterministic), per recipe and
# variant: needle cells correct out of 12 (depths 0, 0.5, 1 x 4 trials) and mean position_loss NLL (4 docs).
# Ship a new pair -> measure it and pin it here.
MEASURED = {"base": {"softmax": (11, 2.484), "ssmax": (12, 2.580)},
            "randpos2": {"softmax": (2, 2.844), "ssmax": (9, 2.955)}}
CORRECT_MARGIN = 1  # cells of 12: one near-tie may flip on another BLAS or device
NLL_MARGIN = 0.02  # nats; the two variants differ by 0.096


@pytest.mark.parametrize("recipe", PAIRS, ids=lambda r: r.name)
def test_committed_pair_measures_what_it_measured_at_the_training_length(recipe, tmp_path):
    # the shipped weights, through the harness's own tasks
    import pandas as pd

    from harness.runner import run_task

    assert recipe.name in MEASURED, f"shipped pair {recipe.name!r} has no pinned measurement"
    models = {f"reference/{recipe.model_name(v)}": v for v in ("softmax", "ssmax")}
    length = recipe.train.training_length
    needle = run_task("needle", list(models), {"lengths": str(length), "depths": "0,0.5,1", "trials": 4},
                      out_root=tmp_path, progress=False)
    correct = pd.read_parquet(needle / "tables" / "needle.parquet").groupby("model")["correct"].agg(["sum", "size"])
    loss = run_task("position_loss", list(models), {"length": length, "docs": 4}, out_root=tmp_path, progress=False)
    nll = pd.read_parquet(loss / "tables" / "position_loss.parquet").groupby("model")["mean_nll"].mean()
    for model, variant in models.items():
        want_correct, want_nll = MEASURED[recipe.name][variant]
        assert correct.loc[model, "size"] == 12
        assert abs(correct.loc[model, "sum"] - want_correct) <= CORRECT_MARGIN, (model, correct.loc[model, "sum"])
        assert correct.loc[model, "sum"] / 12 >= recipe.min_retrieval
        assert abs(nll[model] - want_nll) <= NLL_MARGIN, (model, nll[model])
