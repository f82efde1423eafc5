"""position_loss: exact per-position NLL (parity with full logits), chunking invariance, the task end to end."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from harness.models.loading import load_model
from harness.errors import UserError
from harness.inference.nll import per_position_nll

LENGTH = 96


def naive_nll(model, ids):
    """The reference: full logits, then cross-entropy over every position."""
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].float()
    return F.cross_entropy(logits, ids[0, 1:], reduction="none")


def random_ids(vocab, length=LENGTH, seed=0):
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("ssmax_ckpt, attention, theta", [
    (False, None, None),
    (False, None, 5e5),
    (False, "ssmax(s=0.3)", None),
    (False, "ssmax(s=0.3)", 5e5),
    (True, "ssmax", None),
    (True, "ssmax", 5e5),
])
def test_parity_with_full_logits(tiny_checkpoint, ssmax_ckpt, attention, theta):
    loaded = load_model(str(tiny_checkpoint(ssmax=ssmax_ckpt)), attention, theta)
    assert loaded.model.dtype == torch.float32
    ids = random_ids(loaded.model.config.vocab_size)
    got = per_position_nll(loaded.model, ids)
    assert got.shape == (LENGTH - 1,) and got.dtype == torch.float32
    torch.testing.assert_close(got, naive_nll(loaded.model, ids), atol=1e-4, rtol=0)


def test_theta_override_changes_the_loss(tiny_checkpoint):
    path = str(tiny_checkpoint())
    model = load_model(path).model
    ids = random_ids(model.config.vocab_size)
    base = per_position_nll(model, ids)
    raised = per_position_nll(load_model(path, rope_theta=5e5).model, ids)
    assert not torch.allclose(base, raised, atol=1e-4)


@pytest.fixture(scope="module")
def ssmax_model(tmp_path_factory):
    """A tiny learned-SSMax checkpoint loaded with a raised theta, shared by the chunking tests."""
    from tests.tiny import save_checkpoint

    path = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "ssmax", ssmax=True)
    model = load_model(str(path), "ssmax", 5e5).model
    ids = random_ids(model.config.vocab_size, seed=1)
    return model, ids, per_position_nll(model, ids)


@pytest.mark.parametrize("chunk, prefill_chunk", [(1, None), (7, None), (1000, None), (16, 1), (5, 33), (1024, 64)])
def test_chunking_does_not_change_the_result(ssmax_model, chunk, prefill_chunk):
    # learned SSMax: the query scale depends on n, so chunked prefill must count cached keys
    model, ids, one_pass = ssmax_model
    got = per_position_nll(model, ids, chunk=chunk, prefill_chunk=prefill_chunk)
    torch.testing.assert_close(got, one_pass, atol=1e-5, rtol=0)


def test_task_default_chunk_is_the_harness_default():
    from evals.position_loss import PositionLossParams
    from harness.inference.nll import HEAD_CHUNK

    assert PositionLossParams().chunk == HEAD_CHUNK


def test_final_logit_softcapping_is_honoured():
    from tests.tiny import build_model

    model = build_model("llama", vocab_size=100)
    ids = random_ids(100, length=40)
    with torch.no_grad():
        logits = model(ids).logits[0, :-1]
    model.config.final_logit_softcapping = 0.5  # tiny cap: a large effect on the loss
    want = F.cross_entropy(torch.tanh(logits / 0.5) * 0.5, ids[0, 1:], reduction="none")
    torch.testing.assert_close(per_position_nll(model, ids, chunk=9), want, atol=1e-5, rtol=0)


def test_bad_inputs_are_user_errors():
    from tests.tiny import build_model

    model = build_model("llama", vocab_size=100)
    with pytest.raises(UserError, match="batch"):
        per_position_nll(model, torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(UserError, match=">= 2 tokens"):
        per_position_nll(model, torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(UserError, match="chunk"):
        per_position_nll(model, torch.zeros(1, 8, dtype=torch.long), chunk=0)


# ---------------------------------------------------------------------------------------- the task


@pytest.fixture
def text_folder(tmp_path):
    """A folder corpus: five .txt documents of different lengths."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i, repeats in enumerate([40, 0, 25, 60, 30]):
        words = " ".join(f"word{(i * 7 + k) % 13} is {k % 10}." for k in range(repeats * 4))
        (folder / f"doc{i}.txt").write_text(f"Document {i}.\n{words}\n")
    return folder


def test_documents_are_seeded_and_prefix_exact(text_folder):
    from evals.position_loss import PositionLossParams, document_order, first_tokens, select_documents
    from harness.data.corpus import load_corpus
    from tests.tiny import build_tokenizer

    tok = build_tokenizer()
    corpus = load_corpus(str(text_folder))
    params = PositionLossParams(corpus=str(text_folder), length=64, docs=3, seed=0)
    chosen = select_documents(corpus, tok, params)
    assert chosen == select_documents(corpus, tok, params)
    assert [len(ids) for _, ids in chosen] == [64, 64, 64]
    assert "doc1.txt" not in {doc_id for doc_id, _ in chosen}  # too short: skipped
    # a document's place in the order does not depend on the other documents present
    ids = [d.doc_id for d in corpus.documents]
    order = [ids[i] for i in document_order(ids, 0)]
    assert [ids[:-1][i] for i in document_order(ids[:-1], 0)] == [d for d in order if d != ids[-1]]
    assert document_order(ids, 1) != document_order(ids, 0) or len(ids) < 3
    # tokenising a prefix gives exactly the first tokens of the whole text
    text = corpus.documents[3].text
    assert first_tokens(tok, text, 10) == tok(text)["input_ids"][:10]
    assert first_tokens(tok, text, 10)[0] == tok.bos_token_id  # the tokenizer's own special tokens


def test_corpus_too_short_says_what_it_can(text_folder):
    from evals.position_loss import PositionLossParams, select_documents
    from harness.data.corpus import load_corpus
    from tests.tiny import build_tokenizer

    tok = build_tokenizer()
    corpus = load_corpus(str(text_folder))
    counts = sorted((len(tok(d.text)["input_ids"]) for d in corpus.documents), reverse=True)
    params = PositionLossParams(corpus=str(text_folder), length=counts[1] + 1, docs=3)
    with pytest.raises(UserError, match=rf"has 1 documents of >= {counts[1] + 1} tokens, docs=3 needed; "
                                        rf"the longest length for docs=3 is {counts[2]}"):
        select_documents(corpus, tok, params)


def test_validate_rejects_bad_params(text_folder):
    from harness.task import get_task
    from harness.task.params import parse_task_params

    for bad, match in [({"length": 1}, "length"), ({"docs": 0}, "docs"), ({"docs": 9}, "5 documents"),
                       ({"prefill_chunk": -1}, "prefill_chunk"), ({"corpus": str(text_folder / "nope.txt")}, "nope")]:
        with pytest.raises(UserError, match=match):
            parse_task_params(get_task("position_loss"), {"corpus": str(text_folder), **bad})


def test_task_end_to_end(tiny_checkpoint, text_folder, tmp_path):
    import hashlib

    from harness.runner import run_task

    ckpt = str(tiny_checkpoint(ssmax=True, training_length=32))
    params = {"corpus": str(text_folder), "length": 64, "docs": 2, "chunk": 16}
    run = run_task("position_loss", [ckpt], params, out_root=tmp_path / "runs", name="pl", progress=False)

    table = pd.read_parquet(run / "tables" / "position_loss.parquet")
    assert {"model", "attention", "rope_theta", "position", "mean_nll", "n_docs", "stderr"} <= set(table.columns)
    assert table["position"].tolist() == list(range(1, 64)) and (table["n_docs"] == 2).all()
    assert set(table["attention"]) == {"ssmax"}

    # the table is the mean over documents of the NLL from full logits, computed here from the files themselves:
    # the first 2 files (in sha256("seed:name") order) with >= 64 tokens, their first 64 tokens, one forward each
    loaded = load_model(ckpt)
    tokens = {p.name: loaded.tokenizer(p.read_text())["input_ids"] for p in text_folder.iterdir()}
    order = sorted(tokens, key=lambda name: hashlib.sha256(f"0:{name}".encode()).hexdigest())
    chosen = [name for name in order if len(tokens[name]) >= 64][:2]
    scored = pd.read_parquet(run / "tables" / "position_nll.parquet").drop_duplicates("doc").sort_values("doc")
    assert scored["doc_id"].tolist() == chosen
    want = torch.stack([naive_nll(loaded.model, torch.tensor([tokens[name][:64]])) for name in chosen]).mean(0).numpy()
    np.testing.assert_allclose(table["mean_nll"].to_numpy(), want, atol=1e-5)

    buckets = pd.read_parquet(run / "tables" / "position_loss_buckets.parquet")
    assert {"bucket_start", "bucket_end", "mean_nll", "n", "n_docs", "stderr"} <= set(buckets.columns)
    assert buckets["n"].sum() == 2 * 63 and buckets["bucket_start"].min() == 1 and buckets["bucket_end"].max() == 64
    assert (buckets["bucket_start"] < buckets["bucket_end"]).all()
    np.testing.assert_allclose((buckets["mean_nll"] * buckets["n"]).sum() / buckets["n"].sum(), want.mean(), atol=1e-5)
    assert (run / "figures" / "position_loss.png").stat().st_size > 0

    # resume: more documents reuse the finished ones; another prefill_chunk changes nothing
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["cells_done"] == 2
    run_task("position_loss", [ckpt], {**params, "docs": 3, "prefill_chunk": 24}, out_root=tmp_path / "runs",
             name="pl", progress=False)
    again = pd.read_parquet(run / "tables" / "position_nll.parquet")
    first = again[again["doc"] < 2].groupby("position")["nll"].mean().to_numpy()
    np.testing.assert_allclose(first, want, atol=1e-6)
    assert sorted(again["doc"].unique()) == [0, 1, 2]


def test_position_loss_curves_draws_one_line_per_variant():
    from matplotlib.figure import Figure

    from harness.plots import position_loss_curves

    positions = np.arange(1, 300)
    df = pd.concat([pd.DataFrame({"model": "m", "attention": att, "rope_theta": 5e5, "position": positions,
                                  "mean_nll": np.log(positions + 1) * k})
                    for att, k in [("softmax", 1.0), ("ssmax", 0.5)]])
    ax = Figure().subplots()
    position_loss_curves(ax, df, train_length={"m": 64})
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[:2] == ["softmax", "ssmax"] and "training length (64 tokens)" in labels
    assert ax.get_legend().get_title().get_text() == "all lines: model m · θ=500000"  # what every line shares, once
    assert ax.get_xscale() == "log" and "tokens" in ax.get_xlabel()
    assert len(ax.get_lines()[0].get_xdata()) < 60  # smoothed over log-spaced buckets
