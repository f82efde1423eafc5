"""Task `needle`: scoring with the KV cache, stub copiers (1.0) and non-copiers (0.0), params, summary, plots, e2e."""

import json
import re
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from harness.task.params import parse_task_params
from harness.task import get_task
from evals.needle import NeedleParams
from harness.inference.decode import answer_nll, greedy_answer, parse_digits, score_prompt
from harness.results.tables import effective_length
from harness.data.corpus import load_corpus
from harness.errors import UserError
from harness.data.haystack import haystack_source
from tests import tiny
from tests.tiny import build_model, build_tokenizer

TEXT = ("The lighthouse keeper counted ships. Each night he wrote their names down!\n"
        "for ship in harbour:\n    log.write(ship.name)\n")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("haystack")
    for i in range(6):
        (folder / f"d{i}.txt").write_text(f"Log {i}.\n" + TEXT * 12)
    return folder


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("bpe")


def StubModel(tokenizer, wrong=False):
    """A stub that reads the needle's number from the context and copies it (or a wrong number)."""
    def answer(prompt: str) -> list[int]:
        number = re.search(r"number is: (\d+)", prompt).group(1)
        return tokenizer(f" {'0' * len(number) if wrong else number}.", add_special_tokens=False)["input_ids"]

    return tiny.StubModel(tokenizer, answer)


def _loaded(model, tok):
    return SimpleNamespace(model=model, tokenizer=tok, info=SimpleNamespace(name="stub", training_length=None))


def _run_grid(model, tok, corpus_dir, **overrides):
    task = get_task("needle")
    params = parse_task_params(task, {"corpus": str(corpus_dir), "lengths": "200,300", "depths": "0,0.5,1",
                                      "trials": 2, **overrides})
    loaded = _loaded(model, tok)
    state = task.prepare(params, loaded)
    rows = [r for cell in task.cells(params) for r in task.run_cell(params, loaded, cell, state, 0)["needle"]]
    return task, params, pd.DataFrame(rows)


def test_perfect_copier_scores_one(tok, corpus_dir):
    task, params, df = _run_grid(StubModel(tok), tok, corpus_dir)
    assert len(df) == 2 * 3 * 2
    assert df["correct"].all() and df["first_digit_correct"].all()
    assert (df["prediction"] == df["answer"]).all()
    assert (df["answer_nll"] < 1e-3).all()
    assert (df["prompt_tokens"] == df["context_length"]).all()
    summary = task.summarize({"needle": df}, params)
    assert summary["needle_summary"]["accuracy"].tolist() == [1.0, 1.0]
    assert summary["needle_effective_length"]["effective_length"].tolist() == [300]


def test_copier_in_the_shared_prefix_order_scores_one_and_shares(tok, corpus_dir):
    from harness.runner.distributed import schedule
    from harness.runner.plan import Cell

    task = get_task("needle")
    params = parse_task_params(task, {"corpus": str(corpus_dir), "lengths": "200,300", "depths": "0,0.5,1", "trials": 2})
    loaded = _loaded(StubModel(tok), tok)
    state = task.prepare(params, loaded)
    cells = [Cell(0, c, str(i), 1.0, task.group(params, c), task.order(params, c)) for i, c in enumerate(task.cells(params))]
    outs = [task.run_cell(params, loaded, c.coords, state, 0) for c in schedule(cells)]
    assert all(o["needle"][0]["correct"] for o in outs)
    kinds = [o["telemetry"]["prefix_cache"] for o in outs]
    assert kinds == (["fresh"] + ["shared"] * 5) * 2  # one trial at a time, across both lengths


def test_never_copier_scores_zero(tok, corpus_dir):
    task, params, df = _run_grid(StubModel(tok, wrong=True), tok, corpus_dir)
    assert not df["correct"].any() and not df["first_digit_correct"].any()
    assert (df["prediction"] == "0" * 7).all()
    assert (df["answer_nll"] > 1.0).all()
    assert task.summarize({"needle": df}, params)["needle_effective_length"]["effective_length"].tolist() == [0]


def test_kv_cache_scoring_matches_full_forwards(tok, monkeypatch):
    model = build_model(vocab_size=len(tok), seed=1)
    ids = tok("for ship in harbour: log the ship number is:", add_special_tokens=True)["input_ids"]
    answer = tok(" 1234567.", add_special_tokens=False)["input_ids"]
    with torch.no_grad():  # reference: greedy by full forwards, NLL by one forward on prompt + answer
        seq = list(ids)
        for _ in range(6):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
        logits = model(torch.tensor([ids + answer])).logits[0, len(ids) - 1:-1]
        ref_nll = float(torch.nn.functional.cross_entropy(logits, torch.tensor(answer)))
    assert greedy_answer(model, ids, 6) == seq[len(ids):]
    assert answer_nll(model, ids, answer) == pytest.approx(ref_nll, rel=1e-4)
    import harness.inference.decode as needle

    prefills = []
    monkeypatch.setattr(needle, "prefill", lambda *a, _real=needle.prefill: prefills.append(1) or _real(*a))
    generated, nll = score_prompt(model, ids, answer, 6)
    assert generated == seq[len(ids):] and nll == pytest.approx(ref_nll, rel=1e-4)
    assert len(prefills) == 1  # the cache was rewound after the teacher-forced answer, not rebuilt


def test_parse_digits():
    assert parse_digits(" 8106422.") == "8106422"
    assert parse_digits("\n 81 06") == "81"
    assert parse_digits(" The number") == ""


def test_effective_length():
    assert effective_length({256: 1.0, 512: 0.9, 1024: 0.5, 2048: 0.9}, 0.8) == 512
    assert effective_length({256: 0.2, 512: 1.0}, 0.8) == 0
    assert effective_length({256: 0.8}, 0.8) == 256


@pytest.mark.parametrize("overrides, pattern", [
    ({"depths": "0,1.5"}, r"depth 1\.5 is outside \[0, 1\]"),
    ({"trials": "2.5"}, r"trials.*expected int"),
    ({"trials": "0"}, r"trials=0"),
    ({"lengths": "0,256"}, r"context length 0"),
    ({"corpus": "/no/such/folder"}, r"/no/such/folder"),
    ({"threshold": "1.5"}, r"threshold"),
    ({"lengths": "256,100000000"}, r"more than corpus '.*haystack.*' can fill"),
])
def test_bad_params(overrides, pattern, corpus_dir):
    with pytest.raises(UserError, match=pattern):
        parse_task_params(get_task("needle"), {"corpus": str(corpus_dir), **overrides})


def test_prepare_rejects_lengths_the_prompt_cannot_hit(tok, corpus_dir):
    task = get_task("needle")
    loaded = _loaded(StubModel(tok), tok)
    with pytest.raises(UserError, match=r"the minimum is \d+"):
        task.prepare(NeedleParams(corpus=str(corpus_dir), lengths=(8, 256)), loaded)
    with pytest.raises(UserError, match=r"the maximum is \d+"):
        task.prepare(NeedleParams(corpus=str(corpus_dir), lengths=(256, 10**6)), loaded)


def test_heatmap_panels_and_scale():
    from matplotlib.figure import Figure

    from harness.plots import NIAH_CMAP, needle_heatmap, needle_heatmap_figure

    rows = [{"model": m, "attention": "softmax", "rope_theta": None, "context_length": n, "depth": d, "trial": t,
             "correct": (n <= 512) or m == "b"} for m in "ab" for n in (1024, 256, 512) for d in (0, 0.5, 1)
            for t in range(2)]
    df = pd.DataFrame(rows)
    ax = Figure().subplots()
    needle_heatmap(ax, df[df.model == "a"], train_length=512)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["256", "512", "1024"]
    assert ax.images[0].get_clim() == (0.0, 1.0) and ax.images[0].cmap is NIAH_CMAP
    assert ax.lines[0].get_xdata()[0] == 1.5 and ax.lines[0].get_linestyle() == "--"
    assert "a" in ax.get_title() and "softmax" in ax.get_title() and "θ" in ax.get_title()
    assert sorted(t.get_text() for t in ax.texts).count("0.00") == 3
    fig = needle_heatmap_figure(df, train_lengths={"a": 512})
    panels = [a for a in fig.axes if a.images]
    assert len(panels) == 2 and len(fig.axes) == 3  # two panels and one shared colorbar


def test_end_to_end_run(tiny_checkpoint, corpus_dir, tmp_path):
    from harness.plots import draw_needle_heatmaps
    from harness.results import load
    from harness.runner import run_task

    ckpt = tiny_checkpoint()
    params = {"corpus": str(corpus_dir), "lengths": "160,220", "depths": "0,1", "trials": 2, "save_prompts": True}
    run = run_task("needle", [str(ckpt)], params, out_root=tmp_path, name="e2e", progress=False)
    tables = load(run)
    df = tables["needle"]
    contract = ["model", "attention", "rope_theta", "context_length", "depth", "trial", "city", "answer",
                "prediction", "correct", "first_digit_correct", "answer_nll", "prompt_tokens"]
    assert set(contract) <= set(df.columns) and len(df) == 8
    assert (df["prompt_tokens"] == df["context_length"]).all()
    assert set(tables["needle_summary"]["context_length"]) == {160, 220}
    assert "effective_length" in tables["needle_effective_length"]
    assert (run / "figures" / "needle_heatmap.png").is_file()
    # which kernels ran, per cell and per model: a trial's first prompt, then suffixes after its shared prefix;
    # never a masked q x kv kernel
    paths = json.loads((run / "manifest.json").read_text())["models"][0]["attention_paths"]
    assert paths.get("split_lse") and paths.get("sdpa_causal") and "sdpa_masked" not in paths, paths
    assert tables["cells"]["attention_paths"].str.contains("split_lse|sdpa_causal").all()
    lines = [json.loads(x) for x in (run / "prompts.jsonl").read_text().splitlines()]
    assert len(lines) == 8
    tok = build_tokenizer("bpe")
    for rec in lines:
        assert {"model", "context_length", "depth", "trial", "input_ids", "needle_span", "answer_ids"} <= set(rec)
        assert len(rec["input_ids"]) == rec["context_length"]
        s, e = rec["needle_span"]
        assert tok.decode(rec["input_ids"][s:e]).strip() == rec["number"]
    out = draw_needle_heatmaps(run, tmp_path / "h.png")
    assert out.is_file() and out.stat().st_size > 1000
    from typer.testing import CliRunner

    from harness.cli import app

    res = CliRunner().invoke(app, ["heatmap", str(run), "--out", str(tmp_path / "cli.png")])
    assert res.exit_code == 0 and (tmp_path / "cli.png").is_file()
    res = CliRunner().invoke(app, ["run", "needle", "--model", str(ckpt), "--out", str(tmp_path), "-T", "depths=0,2"])
    assert res.exit_code == 2 and "depth 2.0 is outside [0, 1]" in res.output
    # determinism: a second run in another folder gives identical prompts and answers
    again = run_task("needle", [str(ckpt)], params, out_root=tmp_path, name="e2e-again", progress=False)
    assert (again / "prompts.jsonl").read_text() == (run / "prompts.jsonl").read_text()
    cols = ["context_length", "depth", "trial", "city", "answer", "prediction", "answer_nll"]
    pd.testing.assert_frame_equal(load(again)["needle"][cols], df[cols])


def test_source_reused_across_models_with_one_tokenizer(tok, corpus_dir):
    corpus = load_corpus(str(corpus_dir))
    assert haystack_source(tok, corpus) is haystack_source(tok, corpus)
