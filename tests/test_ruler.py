"""RULER's non-needle tasks (vt, cwe, fwe, qa_1, qa_2) and RULER scoring: token-exact prompts whose answers are
recomputed from the prompt text alone, copier/never-copier oracles, hand-computed scores, bad input, the average."""

import json
import re
from collections import Counter
from types import SimpleNamespace

import pandas as pd
import pytest

from evals._ruler_score import postprocess, string_match_all, string_match_part
from harness.errors import UserError
from harness.task.params import parse_task_params
from harness.task import get_task
from tests import tiny
from tests.tiny import build_tokenizer

ICL = {"vt": "1000,1100", "cwe": "1700,1900"}  # lengths that hold RULER's solved example (the tiny tokenizer is wordy)
LENGTHS = {"vt": "420,520", "cwe": "900,1100", "fwe": "700,900", "qa_1": "300,420", "qa_2": "420,520"}
SQUAD = [{"question": f"Which colour is the door of house {n}?", "context": f"House {n} stands on a hill. Its door is {c}.",
          "answers": {"text": [c, f"{c} door"]}} for n, c in zip(range(1, 9), ("red", "blue", "green", "grey", "pink",
                                                                                   "black", "white", "brown"))]
SQUAD.append({"question": "Unanswerable?", "context": "Nothing here.", "answers": {"text": []}})
HOTPOT = [{"question": f"Who owns the boat that sails from port {n}?", "answer": name,
           "context": [[f"Port {n}", [f"Port {n} sends one boat. ", f"The boat is the Gull {n}."]],
                       [f"Gull {n}", [f"The Gull {n} belongs to {name}."]]]}
          for n, name in zip(range(1, 7), ("Ada", "Ben", "Cleo", "Dov", "Eli", "Fay"))]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("bpe")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qa")
    (folder / "squad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SQUAD))
    (folder / "hotpot.json").write_text(json.dumps(HOTPOT))
    (folder / "bad.jsonl").write_text(json.dumps({"question": "q", "text": "t"}) + "\n")
    return folder


def _params(name, folder, **overrides):
    base = {"lengths": LENGTHS[name], "trials": 2, **({"icl": "false"} if name in ICL else {})}
    if name == "qa_1":
        base["data"] = str(folder / "squad.jsonl")
    if name == "qa_2":
        base["data"] = str(folder / "hotpot.json")
    return parse_task_params(get_task(name), {**base, **overrides})


def _loaded(model, tok):
    return SimpleNamespace(model=model, tokenizer=tok, info=SimpleNamespace(name="stub", training_length=None))


# ------------------------------------------------------------------- answers recomputed from the prompt text


def read_vt(text):
    text = text.rsplit("Memorize and track", 1)[-1]  # after the solved example, if any
    value = re.search(r"assigned the value (\d+) in the text above", text).group(1)
    names = {a for a, v in re.findall(r"VAR ([A-Z]+) = (\d+)\n", text) if v == value}
    links = re.findall(r"VAR ([A-Z]+) = VAR ([A-Z]+)\n", text)
    grew = True
    while grew:
        new = {a for a, b in links if b in names} - names
        names |= new
        grew = bool(new)
    return sorted(names)


def read_cwe(text):
    text = text.rsplit("Below is a numbered list", 1)[-1]  # after the solved example, if any
    body = text.split("appear most often.\n", 1)[1].split("\nQuestion:", 1)[0]
    entries = re.findall(r"(\d+)\. ([a-z]+)", body)
    assert [int(i) for i, _ in entries] == list(range(1, len(entries) + 1))
    counts = Counter(w for _, w in entries).most_common()
    assert counts[9][1] > counts[10][1]  # ten words clearly most common
    return sorted(w for w, _ in counts[:10])


def read_fwe(text):
    body = text.split("coded words.", 1)[1].split("\nQuestion:", 1)[0]
    counts = Counter(w for w in body.split() if w != "...").most_common()
    assert counts[2][1] > counts[3][1]
    return sorted(w for w, _ in counts[:3])


def read_qa(text):
    question = re.search(r"Question: (.+) Answer:$", text).group(1)
    record = next(r for r in SQUAD + HOTPOT if r["question"] == question)
    answer = record["answers"]["text"][0] if "answers" in record else record["answer"]
    assert answer in text.split("Question:")[0]  # the evidence is in the documents
    return [answer]


READ = {"vt": read_vt, "cwe": read_cwe, "fwe": read_fwe, "qa_1": read_qa, "qa_2": read_qa}


def Stub(tok, name, wrong=False):
    def answer(prompt):
        words = READ[name](prompt)
        text = " " + (" ".join("zz" + w[::-1] for w in words) if wrong else ", ".join(words))
        return tok(text, add_special_tokens=False)["input_ids"]

    return tiny.StubModel(tok, answer)


@pytest.mark.parametrize("name", sorted(READ))
def test_prompts_are_token_exact_and_hold_the_answer(name, tok, data):
    task = get_task(name)
    params = _params(name, data)
    state = task.prepare(params, _loaded(None, tok))
    for length in params.lengths:
        for trial in range(params.trials):
            p = task.prompt(params, tok, state, length, trial)
            assert len(p.input_ids) == length
            text = tok.decode(list(p.input_ids))
            assert sorted(READ[name](text)) == sorted(p.references[:1] if name.startswith("qa") else p.references)
            assert p.evidence and all(0 <= a < b <= length for a, b in p.evidence)
            again = task.prompt(params, tok, task.prepare(params, _loaded(None, tok)), length, trial)
            assert again == p
    other = _params(name, data, seed=1)
    assert task.prompt(other, tok, task.prepare(other, _loaded(None, tok)), params.lengths[0], 0) != \
        task.prompt(params, tok, state, params.lengths[0], 0)


@pytest.mark.parametrize("name", sorted(READ))
def test_copier_scores_one_and_never_copier_zero(name, tok, data):
    task = get_task(name)
    params = _params(name, data)
    for wrong, expected in ((False, 1.0), (True, 0.0)):
        loaded = _loaded(Stub(tok, name, wrong), tok)
        state = task.prepare(params, loaded)
        rows = pd.DataFrame([r for cell in task.cells(params) for r in task.run_cell(params, loaded, cell, state, 0)["ruler"]])
        assert len(rows) == 4 and (rows["ruler_score"] == expected).all(), (name, wrong, rows["generated"].tolist())
        assert (rows["correct"] == (expected == 1.0)).all() and (rows["prompt_tokens"] == rows["context_length"]).all()
        summary = task.summarize({"ruler": rows}, params)["ruler_summary"]
        assert summary["ruler_score"].tolist() == [expected, expected]


def test_cwe_word_pool_is_plain_words_none_inside_another():
    from evals._ruler_build import word_pool

    pool = word_pool()
    assert len(pool) == len(set(pool)) > 800 and all(w.isalpha() and w.islower() and len(w) >= 4 for w in pool)
    assert "the" not in pool and not [w for w in pool if any(w != o and w in o for o in pool)]


def test_vt_distractor_chains_never_hold_the_answer(tok, data):
    task = get_task("vt")
    params = _params("vt", data, chains=3, lengths="700")
    p = task.prompt(params, tok, task.prepare(params, _loaded(None, tok)), 700, 0)
    text = tok.decode(list(p.input_ids))
    assert len(re.findall(r"VAR [A-Z]+ = \d+\n", text)) == 3 and sorted(read_vt(text)) == sorted(p.references)


def test_ruler_scores_by_hand():
    assert string_match_all(" FQNHE, kepac and more", ["FQNHE", "KEPAC", "QMQET"]) == pytest.approx(2 / 3)
    assert string_match_all("3730165", ["3730165"]) == 1.0 and string_match_all("", ["a"]) == 0.0
    assert string_match_all(": 3390659.", ["3390659"]) == 1.0  # RULER accepts anything around the value
    assert string_match_part("The door is Red.", ["red", "red door"]) == 1.0
    assert string_match_part("blue", ["red", "red door"]) == 0.0
    assert postprocess("  a\x00b\tc  ") == "a\nb\nc"


@pytest.mark.parametrize("name, overrides, pattern", [
    ("vt", {"hops": "0"}, r"hops=0 is not allowed"),
    ("cwe", {"common_repeats": "-1"}, r"common_repeats=-1 is not allowed"),
    ("fwe", {"alpha": "1"}, r"alpha=1\.0 is not allowed"),
    ("fwe", {"vocab": "-2"}, r"vocab=-2 is not allowed"),
    ("qa_1", {"data": ""}, r"qa_1 reads its questions from a local file .* -T data=FILE"),
    ("qa_1", {"data": "/nonexistent/q.jsonl"}, r"data file /nonexistent/q.jsonl does not exist"),
    ("qa_2", {"data": "BAD"}, r"lacks field\(s\) answer, context"),
    ("qa_1", {"trials": "50"}, r"trials=50 is more than the 8 questions"),
])
def test_bad_params(name, overrides, pattern, data):
    if overrides.get("data") == "BAD":
        overrides = {"data": str(data / "bad.jsonl")}
    with pytest.raises(UserError, match=pattern):
        _params(name, data, **overrides)


@pytest.mark.parametrize("name, length, pattern", [
    ("vt", 60, r"vt: context length 60 is too short: .* use lengths >= \d+"),
    ("cwe", 300, r"cwe: context length 300 is too short"),
    ("fwe", 200, r"fwe: vocabulary 4 is below 5"),
    ("qa_2", 80, r"qa: context length 80 is too short"),
])
def test_a_length_too_short_for_the_task_is_one_clear_error(name, length, pattern, tok, data):
    task = get_task(name)
    with pytest.raises(UserError, match=pattern):
        task.prepare(_params(name, data, lengths=str(length)), _loaded(None, tok))


def test_cli_without_qa_data_exits_2_with_one_line(tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app

    res = CliRunner().invoke(app, ["run", "qa_1", "--model", "reference/softmax", "--out", str(tmp_path)])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and "-T data=FILE" in res.output


def test_end_to_end_run_and_ruler_average(tiny_checkpoint, tmp_path, data):
    from harness.results import load
    from harness.runner import run_task
    from harness.results.tables import ruler_average

    ckpt = tiny_checkpoint()
    run = run_task("vt", [str(ckpt)], {"lengths": "420", "trials": 1, "max_new_tokens": 2, "icl": "false"}, out_root=tmp_path,
                   name="vt", progress=False)
    tables = load(run)
    ruler = tables["ruler"]
    assert len(ruler) == 1 and {"ruler_score", "correct", "answer_nll", "task"} <= set(ruler.columns)
    assert "ruler_summary" in tables and "ruler_effective_length" in tables
    assert {"acc_low", "acc_high", "n_eff", "nll_low", "score_low", "score_high"} <= set(tables["ruler_summary"].columns)
    assert "effective_length_median" in tables["ruler_effective_length"].columns
    assert ruler["prompt_fingerprint"].str.fullmatch(r"[0-9a-f]{16}").all()
    assert sorted(p.name for p in (run / "figures").iterdir()) == ["ruler_vt.png"]
    from harness.report import compare_runs

    compare_runs([run], tmp_path / "report")
    average = pd.read_csv(tmp_path / "report" / "ruler_average.csv")
    assert average["task_names"].tolist() == ["vt"] and average["ruler_score"].tolist() == ruler["ruler_score"].tolist()
    assert any(c.startswith("RULER score @") for c in pd.read_csv(tmp_path / "report" / "headline.csv").columns)
    retrieval = pd.DataFrame({"model": "m", "attention": "softmax", "rope_theta": None, "task": ["niah_single_1"] * 2 +
                              ["passkey"] * 2, "context_length": 256, "correct": [True, False, True, True],
                              "ruler_score": [1.0, 0.0, 1.0, 1.0], "answer_nll": 0.5})
    other = pd.DataFrame({"model": "m", "attention": "softmax", "rope_theta": None, "task": ["vt", "cwe"],
                          "context_length": 256, "ruler_score": [1.0, 0.4], "correct": [True, False], "answer_nll": 1.0})
    avg = ruler_average(retrieval, other)
    assert avg["tasks"].tolist() == [3]  # passkey is not a RULER task
    assert avg["ruler_score"].tolist() == [pytest.approx((0.5 + 1.0 + 0.4) / 3)]


def test_headline_has_the_ruler_score_per_length():
    from harness.results.headline import headline_table

    retrieval = pd.DataFrame({"model": "m", "attention": "softmax", "rope_theta": None, "task": "niah_single_1",
                              "depth": 0.5, "context_length": [256, 512], "correct": [True, False],
                              "recall": [1.0, 0.0], "ruler_score": [1.0, 0.0], "answer_nll": 0.1})
    ruler = pd.DataFrame({"model": "m", "attention": "softmax", "rope_theta": None, "task": "fwe",
                          "context_length": [256, 512], "ruler_score": [0.5, 1 / 3], "correct": False, "answer_nll": 1.0})
    head = headline_table({"retrieval": retrieval, "ruler": ruler}, {"m": 256})
    assert head.loc[0, "RULER score @1×"] == 0.75 and head.loc[0, "RULER score @2×"] == round(1 / 6, 3)
    assert head.loc[0, "RULER tasks"] == 2 and "retrieval acc @1×" in head.columns
    assert "RULER score @1×" not in headline_table({"retrieval": retrieval.drop(columns="ruler_score")}, {}).columns


def test_compare_draws_the_ruler_average_with_its_caption(tmp_path):
    from harness.report import caption_for, comparison_figures

    rows = pd.DataFrame({"model": "m", "attention": "softmax", "rope_theta": None, "task": ["vt", "vt", "fwe", "fwe"],
                         "context_length": [256, 512] * 2, "ruler_score": [1.0, 0.5, 0.0, 0.5], "correct": False,
                         "answer_nll": 1.0})
    drawn = comparison_figures({"ruler": rows}, {"m": 256}, tmp_path)
    assert [p.name for p in drawn] == ["ruler_average.png"] and drawn[0].is_file()
    assert "RULER average" in caption_for(drawn[0], "A")[1]


@pytest.mark.parametrize("name", ["vt", "fwe", "qa_1"])
def test_chat_template_puts_the_answer_prefix_in_the_assistant_turn(name, data):
    from tests.test_real_checkpoints import CHAT_TEMPLATE

    chat = build_tokenizer("bpe")
    chat.chat_template = CHAT_TEMPLATE
    task = get_task(name)
    params = _params(name, data, template="chat", lengths=LENGTHS[name].split(",")[1])
    p = task.prompt(params, chat, task.prepare(params, _loaded(None, chat)), params.lengths[0], 0)
    text = chat.decode(list(p.input_ids))
    assert len(p.input_ids) == params.lengths[0] and "<|user|>\n" in text
    assert re.search(r"<\|end\|>\n<\|assistant\|>\nAnswer:[^\n]*$", text), text[-200:]


# ------------------------------------------------------------------- attention_probe -T prompts=<RULER task>


@pytest.mark.parametrize("name", sorted(READ))
def test_probe_target_of_a_ruler_prompt_is_its_evidence_and_first_reference(name, tok, data):
    """The probe's prompt is the task's own; the needle span is evidence holding the first reference, content only;
    the answer span is that reference's tokens; a copier of answer_ids scores 1 under RULER's scorer."""
    from evals._probe_targets import target

    probe, task = get_task("attention_probe"), get_task(name)
    length = int(LENGTHS[name].split(",")[0])
    extra = {"data": str(data / ("squad.jsonl" if name == "qa_1" else "hotpot.json"))} if name.startswith("qa") else {}
    extra = {**extra, **({"icl": "false"} if name in ICL else {})}
    params = parse_task_params(probe, {"prompts": name, "lengths": str(length), "trials": 1, **extra})
    assert [c["depth"] for c in probe.cells(params)] == [0.5]  # no depth: one nominal cell per length and trial
    state = probe.prepare(params, _loaded(None, tok))
    t = target(state.task, state.params, tok, state.state, length, 0.5, 0)
    p = task.prompt(_params(name, data, lengths=str(length), trials=1), tok, state.state, length, 0)
    assert t.input_ids == p.input_ids and t.answer_ids == p.answer_ids and t.depth == 0.5
    s, e = t.needle_span
    assert any(a <= s < e <= b for a, b in p.evidence)
    needle = tok.decode(list(p.input_ids[s:e]))
    assert p.references[0] in needle and tok.decode([p.input_ids[s]]).strip() and tok.decode([p.input_ids[e - 1]]).strip()
    a, b = t.answer_digit_span
    assert tok.decode(list(p.answer_ids[a:b])).strip() == p.references[0]
    assert t.score(list(p.answer_ids), "")["ruler_score"] == 1.0 and t.score([], "")["ruler_score"] == 0.0
    assert state.params.max_new_tokens >= 30


def test_probe_runs_on_vt_prompts_through_the_runner(tiny_checkpoint, tmp_path):
    from harness.results import load
    from harness.runner import run_task

    run = run_task("attention_probe", [str(tiny_checkpoint())],
                   {"prompts": "vt", "lengths": "420,520", "depths": "0,1", "trials": 1, "save_prompts": True,
                    "icl": False},
                   out_root=tmp_path, progress=False)
    tables = load(run)
    scores = tables["needle_score"]
    assert len(scores) == 2 * 2 * 4 and (scores["depth"] == 0.5).all()  # 2 lengths x 1 trial x layers x heads
    assert {"ruler_score", "correct", "needle_score"} <= set(scores.columns) and scores["needle_score"].between(0, 1).all()
    saved = [json.loads(line) for line in (run / "prompts.jsonl").read_text().splitlines()]
    assert sorted(r["context_length"] for r in saved) == [420, 520] and all(r["task"] == "vt" for r in saved)
    for rec in saved:
        starts = scores.loc[scores["context_length"] == rec["context_length"], "needle_start"]
        assert starts.nunique() == 1 and rec["evidence_spans"][0][0] <= starts.iloc[0] < rec["evidence_spans"][0][1]


def test_ruler_summary_intervals_and_the_per_task_figure(tmp_path):
    from harness.plots import ruler_task_figure
    from harness.report import caption_for

    rows = pd.DataFrame({"model": "m", "attention": "softmax", "rope_theta": None, "task": "cwe",
                         "context_length": [256] * 4 + [512] * 4, "trial": [0, 1, 2, 3] * 2,
                         "ruler_score": [1.0, 0.8, 0.9, 1.0, 0.0, 0.2, 0.1, 0.0], "correct": [1, 0, 0, 1, 0, 0, 0, 0],
                         "answer_nll": [0.5, 0.7, 0.6, 0.4, 2.0, 2.5, 2.2, 2.1]}).assign(correct=lambda d: d["correct"] == 1)
    summary = get_task("cwe").summarize({"ruler": rows}, get_task("cwe").Params())["ruler_summary"]
    assert summary["ruler_score"].tolist() == [pytest.approx(0.925), pytest.approx(0.075)]
    assert summary["accuracy"].tolist() == [0.5, 0.0] and (summary["acc_low"] <= summary["accuracy"]).all()
    assert ((summary["score_low"] < summary["ruler_score"]) & (summary["ruler_score"] < summary["score_high"])).all()
    assert summary["score_high"].max() <= 1.0 and summary["score_low"].min() >= 0.0
    drawn = get_task("vt").figures({"ruler": rows}, {}, tmp_path)  # one RulerTask.figures draws every task present
    assert [p.name for p in drawn] == ["ruler_cwe.png"] and drawn[0].is_file()
    assert caption_for(drawn[0])[0] == "retrieval" and "RULER cwe" in caption_for(drawn[0])[1]
    fig = ruler_task_figure(summary, "cwe")
    assert len(fig.axes) == 2 and len(fig.axes[0].collections) == 1  # the score's interval band


def test_compare_baseline_pairs_ruler_rows_by_fingerprint():
    from harness.report.versus import trials_table, versus_tables

    base = pd.DataFrame({"model": "m", "attention": "softmax", "rope_theta": None, "task": "vt", "context_length": 256,
                         "trial": [0, 1, 2, 3], "correct": [True, True, False, True], "ruler_score": 1.0,
                         "answer_nll": 0.5, "prompt_fingerprint": ["a", "b", "c", "d"]})
    other = base.assign(attention="ssmax", correct=[True, False, False, False])
    table, notes = versus_tables({"ruler": pd.concat([base, other])}, "m|softmax", {})
    assert table["table"].tolist() == ["ruler"] and table["paired_by"].tolist() == ["fingerprint"] and not notes
    assert table["diff"].tolist() == [pytest.approx(-0.5)]
    _, notes = versus_tables({"ruler": pd.concat([base, other.assign(prompt_fingerprint="z")])}, None, {})
    assert len(notes) == 1 and "not the same tokens" in notes[0]
    assert trials_table({"ruler": base})["task"].tolist() == ["vt"]


@pytest.mark.parametrize("name", sorted(ICL))
def test_solved_example_comes_first_and_lengths_stay_exact(name, tok, data):
    """RULER's one-shot example (icl, the default) sits between the frame head and the task, answered; the prompt
    stays token-exact, its answer is recomputed from the text after the example, a copier scores 1, a never-copier 0."""
    task = get_task(name)
    params = _params(name, data, icl="true", lengths=ICL[name])
    assert parse_task_params(task, {}).icl is True
    loaded = _loaded(Stub(tok, name), tok)
    state = task.prepare(params, loaded)
    preamble = "Memorize and track" if name == "vt" else "Below is a numbered list"
    for length in params.lengths:
        for trial in range(params.trials):
            p = task.prompt(params, tok, state, length, trial)
            text = tok.decode(list(p.input_ids))
            assert len(p.input_ids) == length and text.count(preamble) == 2 and text.count("Answer:") == 2
            example = text.split(preamble)[1]
            assert not set(p.references) & set(re.findall(r"[A-Za-z]+", example))  # the example never holds the answer
            assert sorted(READ[name](text)) == sorted(p.references)
            plain = task.prompt(_params(name, data, lengths=ICL[name]), tok, state, length, trial)
            assert plain.references == p.references and len(p.evidence) == len(plain.evidence)
    if name == "vt":  # RULER's example: 3-letter names, the chain solved after the answer prefix
        example = text.split(preamble)[1]
        assert re.search(r"they are: (?:[A-Z]{3} ){4}[A-Z]{3}\n\n$", example)
    for wrong, expected in ((False, 1.0), (True, 0.0)):
        loaded = _loaded(Stub(tok, name, wrong), tok)
        rows = [r for cell in task.cells(params) for r in task.run_cell(params, loaded, cell, state, 0)["ruler"]]
        assert [r["ruler_score"] for r in rows] == [expected] * 4
    with pytest.raises(UserError, match=r"solved example \(-T icl=false leaves it out\)"):
        task.prepare(_params(name, data, icl="true"), _loaded(None, tok))
