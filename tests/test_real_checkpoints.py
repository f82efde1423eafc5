"""Real-checkpoint behaviour: every task on each family's tiny checkpoint with prompts longer than its sliding
window (results equal a plain full forward), training length from the config, chat templates, corpora, quiet output."""

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from harness import results
from harness.models.checkpoint import describe_model
from harness.cli import app
from harness.errors import UserError
from harness.models.loading import load_model
from harness.runner import ModelRequest, run_task
from tests.test_families import BY_ID, SLIDING
from tests.tiny import SAMPLE_TEXT, build_model, build_tokenizer

FAMILY_CASES = [BY_ID["llama"], BY_ID["gemma2"], BY_ID["smollm3"]] + [c for c in SLIDING if c.id not in ("gemma2", "smollm3")]
LENGTH = 120  # tokens per prompt: 7x the windows (16) of the sliding cases


def save(path, case, tokenizer=None, **extra):
    tok = tokenizer or build_tokenizer()
    model = build_model(case.family, vocab_size=len(tok), training_length=None, initializer_range=0.2,
                        **{**case.overrides, **extra})
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(4):
        (folder / f"doc{i}.md").write_text((f"# Notes {i}\n" + SAMPLE_TEXT) * 3)
    return folder


def full_forward_answer(model, ids, answer, n_new, eos_token_id=None):
    """Greedy by full forwards (no cache, stopping only at EOS) and the answer NLL from one forward over prompt + answer."""
    with torch.no_grad():
        seq = list(ids)
        for _ in range(n_new):
            seq.append(int(model(torch.tensor([seq]), use_cache=False).logits[0, -1].argmax()))
            if seq[-1] == eos_token_id:
                break
        logits = model(torch.tensor([list(ids) + list(answer)]), use_cache=False).logits[0, len(ids) - 1:-1]
        nll = float(F.cross_entropy(logits.float(), torch.tensor(list(answer))))
    return seq[len(ids):], nll


@pytest.mark.parametrize("case", FAMILY_CASES, ids=lambda c: c.id)
def test_every_task_runs_and_needle_equals_a_full_forward(case, corpus, tmp_path, monkeypatch):
    import evals.needle

    # the stop rule off (it settles after a token or two on random weights): whole greedy sequences are compared
    monkeypatch.setattr(evals.needle, "digits_settled", lambda tokenizer: lambda tokens: False)
    path = save(tmp_path / case.id, case)
    params = {"corpus": str(corpus), "lengths": str(LENGTH), "depths": "0.3,1", "trials": 1, "save_prompts": True,
              "max_new_tokens": 0}
    run = run_task("needle", [ModelRequest(str(path), "ssmax(s=0.4)")], params, out_root=tmp_path, name="n",
                   progress=False)
    tables = results.load_run(run)
    needle = tables["needle"].sort_values("depth")
    prompts = tables["prompts"].sort_values("depth")
    loaded = load_model(str(path), attention="ssmax(s=0.4)")
    tok = loaded.tokenizer
    for (_, row), (_, prompt) in zip(needle.iterrows(), prompts.iterrows()):
        ids, answer = list(prompt["input_ids"]), list(prompt["answer_ids"])
        assert len(ids) == LENGTH
        greedy, nll = full_forward_answer(loaded.model, ids, answer, len(answer), tok.eos_token_id)
        assert row["answer_nll"] == pytest.approx(nll, abs=1e-4)
        assert len(greedy) == len(answer) and row["generated"] == tok.decode(greedy)
    # the other tasks' model-facing code on this family (the runner around them is tested once, elsewhere)
    [probe] = task_cells("attention_probe", loaded, {**params, "depths": "1", "save_prompts": False})
    scores = probe["needle_score"]
    assert all(0 <= r["needle_score"] <= 1 for r in scores) and len(scores) == loaded.info.num_layers * loaded.info.num_heads
    [loss] = task_cells("position_loss", loaded, {"corpus": str(corpus), "length": LENGTH, "docs": 1})
    assert len(loss["position_nll"]) == LENGTH - 1


def task_cells(name, loaded, raw: dict) -> list[dict]:
    """Every cell of a task on a loaded model, through the Task API without the runner (no run directory)."""
    from harness.task import get_task
    from harness.task.params import parse_task_params

    task = get_task(name)
    params = parse_task_params(task, raw)
    state = task.prepare(params, loaded)
    return [task.run_cell(params, loaded, cell, state, 0) for cell in task.cells(params)]


def test_training_length_comes_from_the_config_and_can_be_given(tmp_path):
    path = save(tmp_path / "llama", BY_ID["llama"], max_position_embeddings=2048)
    info = describe_model(str(path), "ssmax(s=auto)")
    assert (info.training_length, info.training_length_source) == (2048, "config.max_position_embeddings")
    assert info.spec.s == pytest.approx(1 / torch.log(torch.tensor(2048.0)).item())
    given = describe_model(str(path), "ssmax(s=auto)", training_length=512)
    assert (given.training_length, given.training_length_source) == (512, "argument")
    scaled = save(tmp_path / "l3", BY_ID["llama-llama3"])  # llama3 scaling: the pre-extension length counts
    assert describe_model(str(scaled)).training_length == 256
    run = run_task("position_loss", [ModelRequest(str(path), "ssmax(s=auto)", training_length=512)],
                   {"length": 80, "docs": 1}, out_root=tmp_path, name="r", progress=False)
    model = results.read_manifest(run)["models"][0]
    assert model["training_length"] == 512 and model["training_length_source"] == "argument"
    assert model["rope_bases"] == {"all": 10000.0}


def test_rope_bases_per_layer_type_reach_the_manifest_and_the_model(tmp_path):
    path = save(tmp_path / "g3", BY_ID["gemma3"])
    info = describe_model(str(path), rope_theta=5e6, rope_bases={"sliding_attention": 2e4})
    assert dict(info.rope_bases) == {"sliding_attention": 2e4, "full_attention": 5e6} and info.rope_theta == 5e6
    loaded = load_model(str(path), rope_theta=5e6, rope_bases={"sliding_attention": 2e4})
    params = loaded.model.config.rope_parameters
    assert params["full_attention"]["rope_theta"] == 5e6 and params["sliding_attention"]["rope_theta"] == 2e4
    only_global = describe_model(str(path), rope_theta=5e6)
    assert dict(only_global.rope_bases)["sliding_attention"] == dict(describe_model(str(path)).rope_bases)["sliding_attention"]


CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def test_chat_template_prompts_are_token_exact_with_the_answer_prefix_in_the_assistant_turn(corpus, tmp_path):
    from harness.data.corpus import load_corpus
    from harness.data.haystack import haystack_source
    from harness.data.prompts import build_needle_prompt, chat_frame

    tok = build_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    frame = chat_frame(tok)
    source = haystack_source(tok, load_corpus(str(corpus)))
    p = build_needle_prompt(tok, source, 200, 0.5, frame=frame)
    text = tok.decode(list(p.input_ids))
    assert len(p.input_ids) == 200 and text.startswith("<|endoftext|><|user|>\n")
    assert text.endswith("number?<|end|>\n<|assistant|>\nThe special magic " + p.city + " number is:")
    assert tok.decode(list(p.input_ids[slice(*p.needle_span)])).strip() == p.number
    path = save(tmp_path / "chat", BY_ID["llama"], tokenizer=tok)
    run = run_task("needle", [str(path)], {"corpus": str(corpus), "lengths": "200", "depths": "0.5", "trials": 1,
                                           "template": "chat"}, out_root=tmp_path, name="c", progress=False)
    assert results.load_run(run)["needle"]["prompt_tokens"].tolist() == [200]


def _cli(args):
    return CliRunner().invoke(app, args)


def test_bad_real_checkpoint_input_is_one_line_and_writes_nothing(corpus, tmp_path):
    plain = save(tmp_path / "plain", BY_ID["llama"])
    nope = save(tmp_path / "nope", BY_ID["smollm3"], no_rope_layers=[0, 0])
    out = tmp_path / "out"
    cases = [
        (["run", "needle", "--model", str(plain), "--training-length", "0"], "--training-length"),
        (["run", "needle", "--model", str(plain), "-T", "template=chat", "-T", f"corpus={corpus}"], "chat template"),
        (["run", "needle", "--model", str(nope), "--rope-theta", "5e5"], "no RoPE base"),
        (["run", "needle", "--model", str(plain), "--rope-base", "sliding_attention=2e4"], "sliding_attention"),
        (["run", "needle", "--model", str(plain), "-T", "template=fancy"], "template"),
    ]
    for args, needle in cases:
        res = _cli(args + ["--out", str(out), "--no-progress"])
        assert res.exit_code == 2, (args, res.output)
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.output
    assert not out.exists() or not any(out.iterdir())


def test_unsupported_architecture_is_refused_before_weights_load(tmp_path):
    path = tmp_path / "stablelm"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "stablelm", "architectures": ["StableLmForCausalLM"]}))
    (path / "model.safetensors").write_bytes(b"not weights at all")
    with pytest.raises(UserError, match="StableLm"):
        describe_model(str(path))


@pytest.mark.parametrize("progress", ["--no-progress", "--progress"])
def test_damaged_weights_are_one_line(tmp_path, progress):
    # with the progress bar on, too: it is drawn only once weights have loaded, never as "0/N cells" before the error
    path = save(tmp_path / "cut", BY_ID["llama"])
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    res = _cli(["run", "position_loss", "--model", str(path), "-T", "length=50", "-T", "docs=1",
                "--out", str(tmp_path / "o"), progress])
    assert res.exit_code == 2 and f"{str(weights)!r}: Error while deserializing header" in res.output, res.output
    assert len([x for x in res.output.splitlines() if x.strip()]) == 1


def _damage_tokenizer(text: str, how: str) -> str | None:
    doc = json.loads(text)
    if how == "truncated":
        return text[: len(text) // 2]
    if how == "other_json":
        return json.dumps({"version": "1.0"})
    if how == "bad_model":  # valid JSON the Rust tokenizers library rejects with a bare Exception
        doc["model"]["vocab"] = "not a map"
        return json.dumps(doc)
    return None  # missing


@pytest.mark.parametrize("how", ["truncated", "other_json", "bad_model", "missing"])
def test_damaged_tokenizer_is_one_line(tmp_path, how):
    path = save(tmp_path / "tok", BY_ID["llama"])
    tok = path / "tokenizer.json"
    damaged = _damage_tokenizer(tok.read_text(), how)
    tok.unlink() if damaged is None else tok.write_text(damaged)
    if how == "missing":
        for extra in path.glob("*token*"):
            extra.unlink()
    with pytest.raises(UserError, match="tokenizer of .* cannot be loaded") as err:
        load_model(str(path))
    assert "\n" not in str(err.value)


def test_any_utf8_file_is_a_document_and_binary_is_one_line(tmp_path):
    from harness.data.corpus import load_corpus

    (tmp_path / "notes.md").write_text("# Notes\nSome text.\n")
    (tmp_path / "README").write_text("no suffix at all\n")
    assert load_corpus(str(tmp_path / "notes.md")).documents[0].text.startswith("# Notes")
    assert [d.doc_id for d in load_corpus(str(tmp_path)).documents] == ["README", "notes.md"]
    (tmp_path / "blob.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(UserError, match="blob.bin.*not UTF-8 text"):
        load_corpus(str(tmp_path / "blob.bin"))


def test_normal_output_carries_no_library_warnings(corpus, tmp_path):
    import subprocess
    import sys

    path = save(tmp_path / "m", BY_ID["mistral"])
    (corpus / "long.txt").write_text(SAMPLE_TEXT * 200) if not (corpus / "long.txt").exists() else None
    res = subprocess.run([sys.executable, "-m", "harness.cli", "run", "needle", "--model", str(path), "-T",
                          f"corpus={corpus}", "-T", "lengths=150", "-T", "depths=0.5", "-T", "trials=1",
                          "--out", str(tmp_path / "o"), "--no-progress"], capture_output=True, text=True,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr
    for noise in ("deprecated", "Token indices sequence length", "Warning", "warn"):
        assert noise not in res.stderr + res.stdout, res.stderr
