"""The lm-evaluation-harness backend `lch` (harness.lmeval) and `lch lm-eval` (harness.cli.lmeval), offline."""

import glob
import json
import logging
import os
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from typer.testing import CliRunner

from harness.cli import app

DATA = Path(__file__).parent / "data" / "lmeval"
DOCS = [json.loads(line)["text"] for line in (DATA / "docs.jsonl").read_text().splitlines() if line.strip()]
runner = CliRunner()


@pytest.fixture
def checkpoint(tiny_checkpoint):
    # large init: attention far from uniform, so attention and RoPE settings visibly change the loss
    return tiny_checkpoint("llama", ssmax=True, initializer_range=0.3)


@pytest.fixture
def only_local_tasks(monkeypatch):
    """lm-eval's TaskManager without indexing its thousands of built-in task YAMLs (16 s on 2 cores)."""
    from lm_eval.tasks import TaskManager

    original = TaskManager.__init__

    def init(self, *args, **kwargs):
        kwargs["include_defaults"] = False
        original(self, *args, **kwargs)

    monkeypatch.setattr(TaskManager, "__init__", init)
    # lm-eval's CLI adds a stderr handler to its logger; under CliRunner that stream closes after the call
    logger = logging.getLogger("lm_eval")
    handlers = list(logger.handlers)
    yield
    logger.handlers[:] = handlers


def lch_totals(path, attention=None, rope_theta=None):
    """lch's own per-document log-likelihood: -sum of per_position_nll over the tokenizer's ids."""
    from harness.models.loading import load_model
    from harness.inference.nll import per_position_nll

    lm = load_model(str(path), attention, rope_theta)
    return [-float(per_position_nll(lm.model, lm.tokenizer(d)["input_ids"]).sum()) for d in DOCS]


def backend(path, **model_args):
    from harness.lmeval import LchLM

    return LchLM.create_from_arg_obj({"pretrained": str(path), **model_args},
                                     {"batch_size": 1, "max_batch_size": None, "device": "cuda:0"})


def rolling(lm, docs=DOCS):
    from lm_eval.api.instance import Instance

    return lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (d,), i) for i, d in enumerate(docs)],
                                    disable_tqdm=True)


SETTINGS = [{}, {"attention": "ssmax(s=0.3)"}, {"rope_theta": 50.0}, {"attention": "softmax", "rope_theta": 50.0}]


def test_rolling_equals_lch_totals_for_every_setting(checkpoint):
    results = []
    for setting in SETTINGS:
        got = rolling(backend(checkpoint, **setting))
        want = lch_totals(checkpoint, setting.get("attention"), setting.get("rope_theta"))
        assert got == pytest.approx(want, abs=1e-3), setting
        results.append(got)
    # each setting changes the result (as lch's own computation does): not a no-op argument
    for i in range(len(results)):
        for j in range(i):
            assert max(abs(a - b) for a, b in zip(results[i], results[j])) > 1e-2, (SETTINGS[i], SETTINGS[j])


def test_rolling_scores_bos_once_where_plain_hflm_scores_it_twice(checkpoint):
    from lm_eval.models.huggingface import HFLM

    lm = backend(checkpoint)
    ids = lm.tokenizer(DOCS[0])["input_ids"]
    assert ids[0] == lm.tokenizer.bos_token_id and ids.count(ids[0]) == 1  # the tokenizer adds BOS itself
    plain = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, backend="causal")
    ours, theirs = rolling(lm, DOCS[:1])[0], rolling(plain, DOCS[:1])[0]
    assert theirs < ours - 0.5  # HFLM's default also scores a second BOS after its prefix BOS


def test_rolling_windows_when_longer_than_max_length(checkpoint):
    from harness.inference.nll import per_position_nll

    lm = backend(checkpoint, max_length=16)
    ids = lm.tokenizer(DOCS[0])["input_ids"]
    assert len(ids) > 16
    full = -float(per_position_nll(lm.model, ids).sum())
    windowed = rolling(lm, DOCS[:1])[0]
    assert windowed != pytest.approx(full, abs=1e-3)  # shorter contexts: lm-eval's rolling windows are in force
    assert rolling(backend(checkpoint, max_length=len(ids)), DOCS[:1])[0] == pytest.approx(full, abs=1e-3)


def greedy_by_full_forwards(model, ids, n_new, eos_token_id):
    """The reference: argmax of a full forward (no cache) over the sequence so far, n_new times or to EOS."""
    seq = list(ids)
    with torch.inference_mode():
        for _ in range(n_new):
            seq.append(int(model(torch.tensor([seq]), use_cache=False).logits[0, -1].argmax()))
            if seq[-1] == eos_token_id:
                break
    return seq[len(ids):]


def test_generate_until_is_greedy_decoding_with_the_variant(checkpoint):
    from lm_eval.api.instance import Instance

    lm = backend(checkpoint, attention="ssmax(s=0.3)", rope_theta=50.0)
    prompt = "def main(argv):\n"
    [text] = lm.generate_until([Instance("generate_until", {}, (prompt, {"until": ["zzz"], "max_gen_toks": 10}), 0)],
                               disable_tqdm=True)
    ids = lm.tokenizer(prompt)["input_ids"]
    tokens = greedy_by_full_forwards(lm.model, ids, 10, lm.tokenizer.eos_token_id)
    assert len(tokens) == 10
    assert text == lm.tokenizer.decode(tokens, skip_special_tokens=True)
    # transformers' generate with the "lch" attention implementation agrees (batch of one, no padding)
    with torch.inference_mode():
        out = lm.model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False,
                                eos_token_id=lm.tokenizer.eos_token_id)
    assert out[0, len(ids):].tolist() == tokens[: out.shape[1] - len(ids)]
    # a stop string cuts the text there
    stop = text[3:5]
    [cut] = lm.generate_until([Instance("generate_until", {}, (prompt, {"until": [stop], "max_gen_toks": 10}), 0)],
                              disable_tqdm=True)
    assert cut == text.split(stop)[0]


def test_lch_lm_eval_runs_local_tasks_and_writes_results(checkpoint, tmp_path, only_local_tasks):
    out = tmp_path / "out"
    res = runner.invoke(app, ["lm-eval", "--model", "lch", "--model_args",
                              f"pretrained={checkpoint},attention=ssmax(s=0.3),rope_theta=50",
                              "--tasks", "lch_tiny_ppl,lch_tiny_gen", "--include_path", str(DATA),
                              "--output_path", str(out), "--log_samples", "--device", "cpu"])
    assert res.exit_code == 0, res.output + res.stderr
    [results_file] = glob.glob(str(out / "*" / "results_*.json"))
    results = json.loads(Path(results_file).read_text())
    assert set(results["results"]) == {"lch_tiny_ppl", "lch_tiny_gen"}
    assert results["results"]["lch_tiny_ppl"]["word_perplexity,none"] > 1
    assert "exact_match,none" in results["results"]["lch_tiny_gen"]
    assert results["config"]["lch_attention"] == "ssmax(s=0.3)" and results["config"]["lch_rope_theta"] == 50.0
    [samples] = glob.glob(str(out / "*" / "samples_lch_tiny_ppl_*.jsonl"))
    rows = sorted((json.loads(line) for line in Path(samples).read_text().splitlines()), key=lambda r: r["doc_id"])
    got = [float(r["resps"][0][0]) for r in rows]
    assert got == pytest.approx(lch_totals(checkpoint, "ssmax(s=0.3)", 50.0), abs=1e-3)


@pytest.mark.parametrize("model_args, expected", [
    ("pretrained={ckpt},atention=softmax", "unknown lch model_args key 'atention'; did you mean 'attention'?"),
    ("attention=softmax", "lch model_args need pretrained="),
    ("pretrained={ckpt},attention=ssmax(q=1)", "attention spec 'ssmax(q=1)'"),
    ("pretrained={ckpt},rope_theta=abc", "rope_theta must be a number"),
])
def test_bad_model_args_are_one_line(checkpoint, model_args, expected, only_local_tasks):
    res = runner.invoke(app, ["lm-eval", "--model", "lch", "--model_args", model_args.format(ckpt=checkpoint),
                              "--tasks", "lch_tiny_ppl", "--include_path", str(DATA)])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], res.stderr


def test_bad_model_args_through_simple_evaluate_are_a_user_error(checkpoint):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import harness.lmeval  # noqa: F401  (registers `lch` for simple_evaluate)
    from harness.errors import UserError

    tasks = TaskManager(include_path=str(DATA), include_defaults=False)
    with pytest.raises(UserError, match="unknown lch model_args key 'rope_base'"):
        lm_eval.simple_evaluate(model="lch", model_args=f"pretrained={checkpoint},rope_base=5",
                                tasks=["lch_tiny_ppl"], task_manager=tasks)
