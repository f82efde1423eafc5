"""Task `position_loss`: exact test loss at every position of long documents (the paper's Fig. 5).

Each document contributes its first `length` tokens as one sequence; one full-context forward gives
the NLL of every next token (harness.inference.nll: chunked LM head, optional chunked prefill). One cell per
document, so an interrupted run resumes per document.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError
from harness.results.tables import model_columns
from harness.task import Task, register_task

PER_OCTAVE = 4  # log-spaced buckets per doubling of position, for the summary table and the figure
_MARGIN = 64  # tokens past `length` a text prefix must give, so cutting the text cannot change them


@dataclass(frozen=True)
class PositionLossParams:
    """Parameters of the position_loss task."""

    corpus: str = "builtin:stdlib"
    """text source: builtin:stdlib (held-out split), a .txt/.jsonl/.parquet file, a folder of .txt, or hf:NAME"""
    length: int = 1024
    """tokens per document (its first `length` tokens, special tokens included); shorter documents are skipped"""
    docs: int = 8
    """number of documents (each one full-context forward)"""
    seed: int = 0
    """seed of the document order (the same documents for every model with the same tokenizer)"""
    chunk: int = 256
    """positions per LM-head + cross-entropy chunk (memory and speed, not results; = harness.inference.nll.HEAD_CHUNK)"""
    prefill_chunk: int = 0
    """tokens per prefill chunk through the KV cache when activations are the limit; 0 = one pass"""


def document_order(doc_ids, seed: int) -> list[int]:
    """Indices of the documents in a seeded order that does not depend on the other documents present."""
    def key(i):
        return hashlib.sha256(f"{seed}:{doc_ids[i]}".encode("utf-8")).hexdigest()

    return sorted(range(len(doc_ids)), key=key)


def first_tokens(tokenizer, text: str, length: int) -> list[int]:
    """The first `length` ids of `tokenizer(text)` (fewer if the text is shorter), tokenising only a prefix."""
    chars = 4 * (length + _MARGIN)
    while chars < len(text):
        ids = tokenizer(text[:chars])["input_ids"]
        if len(ids) >= length + _MARGIN:
            return ids[:length]
        chars *= 2
    return tokenizer(text)["input_ids"][:length]


def select_documents(corpus, tokenizer, params) -> list[tuple[str, list[int]]]:
    """(doc_id, first `length` token ids) of the first `docs` documents long enough, in seeded order."""
    docs = corpus.documents
    chosen = []
    for i in document_order([d.doc_id for d in docs], params.seed):
        ids = first_tokens(tokenizer, docs[i].text, params.length)
        if len(ids) >= params.length:
            chosen.append((docs[i].doc_id, ids))
            if len(chosen) == params.docs:
                return chosen
    # Not enough: say how many there are, and how long they could be for `docs` documents.
    counts = sorted((len(tokenizer(d.text)["input_ids"]) for d in docs), reverse=True)
    enough = sum(c >= params.length for c in counts)
    longest = (f"the longest length for docs={params.docs} is {counts[params.docs - 1]}"
               if len(counts) >= params.docs else f"it has only {len(counts)} documents in all")
    raise UserError(f"corpus {params.corpus!r} has {enough} documents of >= {params.length} tokens, "
                    f"docs={params.docs} needed; {longest}")


@register_task("position_loss")
class PositionLossTask(Task):
    """Per-position NLL of `docs` documents of `length` tokens, one full-context forward each."""

    Params = PositionLossParams
    tables = ("position_nll",)
    # docs only chooses how many cells exist (document i is the same for any docs >= i + 1);
    # chunk and prefill_chunk change memory, not results: finished cells stay valid across them.
    grid_params = ("docs", "chunk", "prefill_chunk")

    def validate(self, params) -> None:
        """Check ranges and that the corpus loads (before any weights are loaded)."""
        if params.length < 2:
            raise UserError(f"length={params.length}: need >= 2 tokens per document")
        if params.docs < 1:
            raise UserError(f"docs={params.docs}: need >= 1 document")
        if params.chunk < 1:
            raise UserError(f"chunk={params.chunk}: need >= 1")
        if params.prefill_chunk < 0:
            raise UserError(f"prefill_chunk={params.prefill_chunk}: need >= 0 (0 = one pass)")
        from harness.data.corpus import load_corpus

        corpus = load_corpus(params.corpus, split="heldout")
        if len(corpus) < params.docs:
            raise UserError(f"corpus {params.corpus!r} has {len(corpus)} documents, docs={params.docs} needed")

    def data_fingerprint(self, params) -> str:
        """The corpus's fingerprint."""
        from harness.data.corpus import load_corpus

        return load_corpus(params.corpus).fingerprint

    def cells(self, params) -> list[dict]:
        """One cell per document."""
        return [{"doc": i} for i in range(params.docs)]

    def cost(self, params, cell: dict) -> float:
        """Every document has the same length: equal cost."""
        return 1.0

    def prepare(self, params, loaded) -> list[tuple[str, list[int]]]:
        """Choose and tokenise the documents with this model's tokenizer."""
        from harness.data.corpus import load_corpus

        corpus = load_corpus(params.corpus, split="heldout")
        return select_documents(corpus, loaded.tokenizer, params)

    def run_cell(self, params, loaded, cell: dict, state, seed: int) -> dict[str, list[dict]]:
        """NLL of every next token of one document: rows (doc, doc_id, position, nll)."""
        from harness.inference.nll import per_position_nll

        doc = cell["doc"]
        doc_id, ids = state[doc]
        nll = per_position_nll(loaded.model, ids, chunk=params.chunk, prefill_chunk=params.prefill_chunk or None)
        rows = [{"doc": doc, "doc_id": doc_id, "position": p, "nll": v} for p, v in enumerate(nll.tolist(), start=1)]
        return {"position_nll": rows, "telemetry": {"tokens": len(ids)}}

    def summarize(self, tables: dict, params) -> dict:
        """`position_loss` (mean over documents per position) and `position_loss_buckets` (log-spaced)."""
        import numpy as np

        from harness.results.intervals import add_band_intervals
        from harness.results.tables import log_bucket_edges

        raw = tables.get("position_nll")
        if raw is None or raw.empty:
            return {}
        keys = model_columns(raw)
        per_pos = (raw.groupby([*keys, "position"], dropna=False, sort=True)["nll"]
                   .agg(mean_nll="mean", n_docs="size", std="std").reset_index())
        per_pos["stderr"] = per_pos.pop("std") / per_pos["n_docs"].pow(0.5)

        edges = np.asarray(log_bucket_edges(int(raw["position"].max()) + 1, PER_OCTAVE))
        index = np.searchsorted(edges, raw["position"].to_numpy(), side="right") - 1
        framed = raw.assign(bucket_start=edges[index], bucket_end=edges[index + 1])
        bucket = [*keys, "bucket_start", "bucket_end"]
        per_doc = framed.groupby([*bucket, "doc"], dropna=False, sort=True)["nll"].agg(["sum", "size"]).reset_index()
        per_doc["doc_mean"] = per_doc["sum"] / per_doc["size"]
        # stderr over documents (the independent unit), from each document's mean in the bucket
        buckets = (per_doc.groupby(bucket, dropna=False, sort=True)
                   .agg(total=("sum", "sum"), n=("size", "sum"), n_docs=("doc", "size"), std=("doc_mean", "std"))
                   .reset_index())
        buckets.insert(len(bucket), "mean_nll", buckets.pop("total") / buckets["n"])
        buckets["stderr"] = buckets.pop("std") / buckets["n_docs"].pow(0.5)
        buckets = add_band_intervals(buckets, per_doc, bucket)
        return {"position_loss": per_pos, "position_loss_buckets": buckets}

    def figures(self, tables: dict, manifest: dict, out_dir: Path) -> list[Path]:
        """Loss vs position (log x), one line per model/variant, a dotted line at the training length."""
        from matplotlib.figure import Figure

        from harness.plots import position_loss_curves, training_lengths

        df = tables.get("position_loss_buckets")
        if df is None or df.empty:
            df = tables.get("position_loss")
        if df is None or df.empty:
            return []
        fig = Figure(figsize=(7.5, 4.5), layout="constrained")
        ax = fig.subplots()
        position_loss_curves(ax, df, train_length=training_lengths(manifest) or None, per_octave=PER_OCTAVE)
        ax.set_title("per-position test loss")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "position_loss.png"
        fig.savefig(path, dpi=120)
        return [path]

