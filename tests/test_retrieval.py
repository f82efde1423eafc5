"""Task family `retrieval` (RULER needle variants, passkey): stub copiers score 1 and non-copiers 0 on every
preset, prompt invariants, determinism, end-to-end runs on a tiny checkpoint, and bad input."""

import json
import re
from types import SimpleNamespace

import pandas as pd
import pytest

from evals._retrieval_prompts import draw, parse_values
from evals.retrieval import RetrievalParams
from evals.retrieval_presets import PRESETS
from harness.errors import UserError
from harness.task.params import parse_task_params
from harness.task import get_task
from tests import tiny
from tests.tiny import build_tokenizer

TEXT = ("The lighthouse keeper counted ships. Each night he wrote their names down!\n"
        "for ship in harbour:\n    log.write(ship.name)\n")
LENGTHS = {"niah_multiquery": "520,600", "niah_multikey_3": "420,480",  # uuids take many tokens of a 400-word BPE
           "niah_multikey_1": "400,480", "niah_multivalue": "400,480"}  # RULER's wording is longer than lch's


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("haystack")
    for i in range(6):
        (folder / f"d{i}.txt").write_text(f"Log {i}.\n" + TEXT * 12)
    return folder


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("bpe")


def _wrong(value: str) -> str:
    return re.sub(r"[0-9]", "0", value) if value.isdigit() else re.sub(r"[0-9a-z]", "x", value)


def read_answer(prompt: str, wrong: bool) -> str:
    """What a perfect reader answers: the asked keys from the answer prefix, their values from the needles."""
    if prompt.rstrip().endswith("The pass key is"):
        values = re.findall(r"The pass key is (\S+?)\. Remember", prompt)
    elif prompt.endswith("mentioned in the provided text is") or prompt.endswith("mentioned in the provided text are"):
        keys = re.search(r"The special magic \w+? for (.+) mentioned in the provided text (?:is|are)$", prompt).group(1)
        values = [v for key in re.split(r", and |, ", keys)
                  for v in re.findall(rf"One of the special magic \w+ for {re.escape(key)} is: (\S+?)\.\n", prompt)]
    else:
        last = prompt.rsplit("\n", 1)[-1]
        keys = re.match(r"Answer: The hidden \w+? of (.+) (?:is|are)$", last).group(1)
        values = [v for key in re.split(r", | and ", keys)
                  for v in re.findall(rf"One hidden \w+ of {re.escape(key)} is (\S+?)\.\n", prompt)]
    assert values
    return " " + ", ".join(_wrong(v) if wrong else v for v in values) + "."


def StubModel(tokenizer, wrong=False):
    """Reads the context like a perfect retriever and emits the answer (or the same shape with wrong values)."""
    def answer(prompt: str) -> list[int]:
        pieces = re.findall(r" [^,.]+|[,.]", read_answer(prompt, wrong))  # tokenised as the task tokenises the gold answer
        return [t for p in pieces for t in tokenizer(p, add_special_tokens=False)["input_ids"]]

    return tiny.StubModel(tokenizer, answer)


def _loaded(model, tok):
    return SimpleNamespace(model=model, tokenizer=tok, info=SimpleNamespace(name="stub", training_length=None))


def _params(name, corpus_dir, **overrides):
    base = {"corpus": str(corpus_dir), "lengths": LENGTHS.get(name, "300,400"), "depths": "0,0.5,1", "trials": 2}
    return parse_task_params(get_task(name), {**base, **overrides})


def _grid(name, model, tok, corpus_dir, **overrides):
    task = get_task(name)
    params = _params(name, corpus_dir, **overrides)
    loaded = _loaded(model, tok)
    state = task.prepare(params, loaded)
    rows = [r for cell in task.cells(params) for r in task.run_cell(params, loaded, cell, state, 0)["retrieval"]]
    return task, params, state, pd.DataFrame(rows)


@pytest.mark.parametrize("name", PRESETS)
def test_copier_scores_one_and_never_copier_zero(name, tok, corpus_dir):
    task, params, _, df = _grid(name, StubModel(tok), tok, corpus_dir)
    assert len(df) == 2 * 3 * 2 and (df["task"] == name).all()
    assert df["correct"].all() and (df["recall"] == 1.0).all() and df["first_token_correct"].all()
    assert (df["ruler_score"] == 1.0).all()
    assert (df["answer_nll"] < 1e-3).all()
    assert (df["prompt_tokens"] == df["context_length"]).all()
    summary = task.summarize({"retrieval": df}, params)
    assert summary["retrieval_summary"]["accuracy"].tolist() == [1.0, 1.0]
    assert summary["retrieval_effective_length"]["effective_length"].tolist() == [max(params.lengths)]
    _, _, _, bad = _grid(name, StubModel(tok, wrong=True), tok, corpus_dir)
    assert not bad["correct"].any() and (bad["recall"] == 0.0).all() and not bad["first_token_correct"].any()
    assert (bad["ruler_score"] == 0.0).all()
    assert (bad["answer_nll"] > 1.0).all()
    assert task.summarize({"retrieval": bad}, params)["retrieval_effective_length"]["effective_length"].tolist() == [0]


@pytest.mark.parametrize("name", PRESETS)
def test_prompt_invariants_and_determinism(name, tok, corpus_dir):
    task = get_task(name)
    params = _params(name, corpus_dir)
    state = task.prepare(params, _loaded(None, tok))
    for length in params.lengths:
        for depth in params.depths:
            for trial in range(params.trials):
                p = task.prompt(params, tok, state, length, depth, trial)
                assert len(p.input_ids) == length
                assert not set(p.distractor_keys) & set(p.asked_keys)
                assert len(set(p.asked_keys) | set(p.distractor_keys)) == params.keys
                text = tok.decode(list(p.input_ids))
                assert len(p.placed_values) == len(set(p.placed_values)) >= params.keys * params.values
                for value in p.placed_values:
                    assert text.count(value) == 1, (value, name)
                for value, s, e in p.value_spans:
                    assert tok.decode(list(p.input_ids[s:e])).strip() == value
                assert sorted(p.asked_values) == sorted(v for v, _, _ in p.value_spans[: params.queries * params.values])
                again = task.prompt(params, tok, task.prepare(params, _loaded(None, tok)), length, depth, trial)
                assert again == p
    d0, d1 = draw(params, 0), draw(params, 1)
    assert d0 == draw(params, 0) and d0 != d1


def test_depth_places_the_asked_needle(tok, corpus_dir):
    task = get_task("niah_multikey_1")
    params = _params("niah_multikey_1", corpus_dir, lengths="400")
    state = task.prepare(params, _loaded(None, tok))
    starts = [task.prompt(params, tok, state, 400, d, 0).needle_start for d in (0.0, 0.5, 1.0)]
    assert starts[0] < starts[1] < starts[2]


def test_parse_values():
    assert parse_values(" 123, 456 and 789.\nmore") == ["123", "456", "789"]
    assert parse_values(" amber-falcon.") == ["amber-falcon"]
    assert parse_values("\n123") == []
    assert parse_values(": 3390659.") == ["3390659"]  # RULER's wording invites a colon, quotes or bold
    assert parse_values(' "3390659", **4412345**.') == ["3390659", "4412345"]


def test_ruler_wording_is_the_presets_default_and_lch_stays_selectable(tok, corpus_dir):
    task = get_task("niah_multikey_1")
    for wording, needle in (("ruler", "One of the special magic numbers for"), ("lch", "One hidden number of")):
        params = _params("niah_multikey_1", corpus_dir, lengths="400", wording=wording)
        text = tok.decode(list(task.prompt(params, tok, task.prepare(params, _loaded(None, tok)), 400, 0.5, 0).input_ids))
        assert text.count(needle) == 4, wording
    assert get_task("niah_single_2").Params().wording == "ruler" and get_task("passkey").Params().wording == "lch"
    with pytest.raises(UserError, match="wording='x' is not allowed"):
        parse_task_params(get_task("niah_single_2"), {"wording": "x"})


@pytest.mark.parametrize("overrides, pattern", [
    ({"queries": "5", "keys": "2"}, r"queries=5 is more than keys=2"),
    ({"value_kind": "emoji"}, r"value_kind='emoji' is not allowed"),
    ({"key_kind": "int"}, r"key_kind='int' is not allowed"),
    ({"depths": "0,1.5"}, r"depth 1\.5 is outside \[0, 1\]"),
    ({"values": "0"}, r"values=0 is not allowed"),
    ({"keys": "100", "lengths": "256"}, r"100 needles .* cannot fit in context length 256"),
    ({"haystack": "noise"}, r"haystack='noise'"),
    ({"template": "fancy"}, r"template='fancy'"),
])
def test_bad_params(overrides, pattern, corpus_dir):
    with pytest.raises(UserError, match=pattern):
        parse_task_params(get_task("niah_single_2"), {"corpus": str(corpus_dir), **overrides})
    with pytest.raises(UserError, match="style=passkey has one pass key"):
        parse_task_params(get_task("passkey"), {"values": "2"})


def test_prepare_rejects_a_length_the_needles_cannot_fit(tok, corpus_dir):
    task = get_task("niah_multiquery")
    with pytest.raises(UserError, match=r"cannot hold 4 needle\(s\).*lengths >= \d+"):
        task.prepare(_params("niah_multiquery", corpus_dir, lengths="100"), _loaded(None, tok))


def test_presets_are_listed_with_a_description():
    from typer.testing import CliRunner

    from harness.cli import app

    res = CliRunner().invoke(app, ["tasks"])
    assert res.exit_code == 0
    for name in PRESETS:
        line = next(x for x in res.output.splitlines() if x.split() and x.split()[0] == name)
        assert "retrieval" in line and len(line.split()) > 3
    assert get_task("niah_multiquery").Params().queries == 4 and RetrievalParams().queries == 1
    assert get_task("retrieval").data_fingerprint(get_task("passkey").Params()).startswith("filler:")


def test_every_preset_end_to_end(tiny_checkpoint, corpus_dir, tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app
    from harness.results import load
    from harness.runner import run_task

    ckpt = tiny_checkpoint()
    contract = ["model", "attention", "rope_theta", "context_length", "depth", "trial", "task", "answer", "prediction",
                "correct", "recall", "first_token_correct", "answer_nll", "prompt_tokens"]
    for name in PRESETS:
        length = LENGTHS.get(name, "300").split(",")[0]
        params = {"corpus": str(corpus_dir), "lengths": length, "depths": "0,1", "trials": 1}
        run = run_task(name, [str(ckpt)], params, out_root=tmp_path, name=f"e2e-{name}", progress=False)
        tables = load(run)
        df = tables["retrieval"]
        assert set(contract) <= set(df.columns) and len(df) == 2, name
        assert (df["prompt_tokens"] == df["context_length"]).all() and (df["task"] == name).all()
        assert {"accuracy", "recall", "n"} <= set(tables["retrieval_summary"].columns)
        assert "effective_length" in tables["retrieval_effective_length"]
        assert (run / "figures" / f"retrieval_heatmap_{name}.png").is_file()
        if name == "passkey":  # `lch heatmap` draws a retrieval run too, one file per preset
            drawn = CliRunner().invoke(app, ["heatmap", str(run), "--out", str(tmp_path / "hm.png")])
            assert drawn.exit_code == 0, drawn.output
            assert drawn.output.strip() == str(tmp_path / "hm_passkey.png") and (tmp_path / "hm_passkey.png").is_file()
    res = CliRunner().invoke(app, ["run", "niah_multiquery", "--model", str(ckpt), "--out", str(tmp_path),
                                   "-T", "queries=5", "-T", "keys=2"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [res.output.strip()] and "queries=5 is more than keys=2" in res.output


def test_save_prompts_writes_every_prompt_with_the_asked_value_spans(tiny_checkpoint, corpus_dir, tmp_path, tok):
    from harness.runner import run_task

    ckpt = tiny_checkpoint()
    params = {"corpus": str(corpus_dir), "lengths": LENGTHS["niah_multiquery"], "depths": "0,1", "trials": 1,
              "save_prompts": True}
    run = run_task("niah_multiquery", [str(ckpt)], params, out_root=tmp_path, name="saved", progress=False)
    lines = [json.loads(x) for x in (run / "prompts.jsonl").read_text().splitlines()]
    assert len(lines) == 4
    task = get_task("niah_multiquery")
    p = _params("niah_multiquery", corpus_dir)
    state = task.prepare(p, _loaded(None, tok))
    for rec in lines:
        assert list(rec)[:4] == ["model", "attention", "rope_theta", "task"] and rec["task"] == "niah_multiquery"
        prompt = task.prompt(p, tok, state, rec["context_length"], rec["depth"], rec["trial"])
        assert rec["input_ids"] == list(prompt.input_ids) and len(rec["input_ids"]) == rec["context_length"]
        assert rec["answer_ids"] == list(prompt.answer_ids) and len(rec["asked_values"]) == 4
        for value, (s, e), (a, b) in zip(rec["asked_values"], rec["value_spans"], rec["answer_value_spans"]):
            assert tok.decode(rec["input_ids"][s:e]).strip() == value
            assert tok.decode(rec["answer_ids"][a:b]).strip() == value
        assert tok.decode(rec["answer_ids"]) == " " + ", ".join(rec["asked_values"]) + "."
    off = run_task("niah_multiquery", [str(ckpt)], {**params, "save_prompts": False}, out_root=tmp_path, name="off",
                   progress=False)
    assert not (off / "prompts.jsonl").exists() and not (off / "tables" / "prompts.parquet").exists()


def test_ruler_wording_draws_needles_per_depth_and_lch_per_trial(tok, corpus_dir):
    """wording=ruler: RULER draws every sample afresh, so a trial's keys and values differ across depths (depths x
    trials independent draws per length) but not across lengths; wording=lch keeps one draw per trial. The new draws
    change wording=ruler cell keys (data fingerprint) and nothing else."""
    from evals._retrieval_prompts import draw
    from evals.retrieval import DRAWS_PER_DEPTH

    task = get_task("niah_multikey_1")
    for wording in ("ruler", "lch"):
        params = _params("niah_multikey_1", corpus_dir, wording=wording, lengths="400,500")
        state = task.prepare(params, _loaded(None, tok))
        asked = {(length, depth): task.prompt(params, tok, state, length, depth, 0).asked_values
                 for length in params.lengths for depth in params.depths}
        per_length = [len({asked[(length, d)] for d in params.depths}) for length in params.lengths]
        assert per_length == ([3, 3] if wording == "ruler" else [1, 1]), wording
        assert all(asked[(400, d)] == asked[(500, d)] for d in params.depths)  # paired across lengths
        assert draw(params, 0, 0.5) != draw(params, 1, 0.5)
        assert task.data_fingerprint(params).endswith(DRAWS_PER_DEPTH) == (wording == "ruler")
