"""The shape every prompted retrieval task shares (needle, the retrieval family and its presets).

A `PromptedTask` is a length x depth x trial grid (harness.task.grid.DepthGrid) of token-exact prompts. Per model,
`prepare` builds a haystack source and a prompt frame once and fails early on prompts that cannot be built;
per cell, `run_cell` builds the prompt, decodes greedily with a stop rule, scores the text and computes the
teacher-forced answer NLL, both from one prefill (harness.inference.decode.score_prompt, sharing the trial's
prefix through the state's PrefixCache); `summarize` gives accuracy and answer NLL per length and the
effective length; `finalize` writes prompts.jsonl. A subclass says only what differs: its table, how the
haystack and the prompt are made, how an answer is scored and which extra columns are summarised.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from harness.atomic import write_text
from harness.columns import ANSWER_NLL, CONTEXT_LENGTH, CORRECT, DEPTH, MODEL_COLUMNS, TRIAL
from harness.data.haystack import check_depth
from harness.data.prompts import TEMPLATES, prompt_frame
from harness.errors import UserError
from harness.inference.decode import score_prompt
from harness.inference.prefix_cache import PrefixCache
from harness.results.intervals import add_effective_length_intervals, add_intervals, cell_summary
from harness.results.paired import prompt_fingerprint
from harness.results.tables import effective_lengths, model_columns
from harness.task import Task
from harness.task.grid import DepthGrid


@dataclass(frozen=True)
class PromptState:
    """What a model's cells share: the haystack source, the prompt frame, the shared-prefix cache."""

    source: object
    """harness.data.haystack.HaystackSource of the corpus, or a harness.data.filler.FillerSource"""
    frame: object
    """harness.data.prompts.PromptFrame (plain or chat)"""
    prefix: PrefixCache
    """the model's shared-prefix KV cache (one prompt's at most)"""


class PromptedTask(DepthGrid, Task):
    """Base of prompted retrieval tasks; subclasses set `table`, `summary_columns` and the hooks below."""

    table: str = ""
    """the per-prompt table (one row per cell); its summary is `<table>_summary`"""
    summary_columns: dict = {}
    """extra per-length means: output column -> per-prompt column (accuracy and answer_nll are always there)"""
    summary_keys: tuple[str, ...] = ()
    """columns beyond the model columns that split the summary (e.g. the preset name)"""
    grid_params = ("lengths", "depths", "trials", "threshold")
    execution_params = ("prefix_cache",)

    # ---- what a subclass says
    def haystack(self, params, tokenizer):
        """The haystack source for this tokenizer (held-out corpus, filler, ...)."""
        raise NotImplementedError

    def prompt(self, params, tokenizer, state: PromptState, length: int, depth: float, trial: int):
        """The prompt of one cell (pure in params and trial, never the model); has input_ids and answer_ids."""
        raise NotImplementedError

    def stop_rule(self, params, tokenizer):
        """Stop rule of greedy decoding (generated ids -> done), or None."""
        return None

    def score_row(self, params, prompt, generated: list[int], text: str) -> dict:
        """The per-prompt columns that depend on the task: the answer, the prediction, `correct`, ...

        `text` is the decoded answer without special tokens (the `generated` column keeps them)."""
        raise NotImplementedError

    def prompt_record(self, prompt, trial: int) -> dict:
        """One prompts.jsonl row (contract fields, without the model columns the runner adds)."""
        raise NotImplementedError

    # ---- shared
    def validate_grid(self, params) -> None:
        """The checks every prompted task makes: lengths, depths, trials, template, max_new_tokens, threshold."""
        validate_lengths(params)
        if not params.depths:
            raise UserError("depths is empty; give fractions in [0, 1], e.g. -T depths=0,0.5,1")
        for depth in params.depths:
            check_depth(depth)
        validate_decoding(params)

    @staticmethod
    def check_corpus_fills(params, extra_tokens: int = 0) -> None:
        """Refuse a longest length the held-out corpus cannot fill (a token covers at least one byte)."""
        from harness.data.corpus import load_corpus

        corpus = load_corpus(params.corpus, split="heldout")  # unknown spec or missing file -> UserError now
        bound = sum(len(d.text.encode("utf-8")) for d in corpus.documents) + 256 + extra_tokens
        if max(params.lengths) > bound:
            raise UserError(f"context length {max(params.lengths)} is more than corpus {params.corpus!r} can fill "
                            f"(about {bound} tokens at most); use shorter lengths or a larger corpus")

    def prepare(self, params, loaded) -> PromptState:
        """Haystack source and frame for this tokenizer; builds the extreme prompts once to fail before any cell."""
        tok = loaded.tokenizer
        state = PromptState(self.haystack(params, tok), prompt_frame(tok, params.template),
                            PrefixCache(params.prefix_cache))
        for trial in range(params.trials):
            for length in (min(params.lengths), max(params.lengths)):
                self.prompt(params, tok, state, length, 0.5, trial)
        return state

    def run_cell(self, params, loaded, cell: dict, state, seed: int) -> dict[str, list[dict]]:
        """Build the cell's prompt, decode greedily, score it and compute the gold answer's NLL."""
        t0 = time.perf_counter()
        tok = loaded.tokenizer
        state = state if state is not None else self.prepare(params, loaded)
        p = self.prompt(params, tok, state, cell[CONTEXT_LENGTH], cell[DEPTH], cell[TRIAL])
        n_new = len(p.answer_ids) + params.max_new_tokens
        generated, nll = score_prompt(loaded.model, p.input_ids, p.answer_ids, n_new, eos_token_id=tok.eos_token_id,
                                      stop=self.stop_rule(params, tok), prefix=state.prefix, group=self.group(params, cell))
        text = tok.decode(generated)
        row = {CONTEXT_LENGTH: p.context_length, DEPTH: p.depth, TRIAL: int(cell[TRIAL]),
               **self.score_row(params, p, generated, tok.decode(generated, skip_special_tokens=True)), ANSWER_NLL: nll, "prompt_tokens": len(p.input_ids),
               "needle_position": p.needle_start, "generated": text, "seconds": time.perf_counter() - t0,
               "prompt_fingerprint": prompt_fingerprint(p.input_ids, p.answer_ids)}
        out = {self.table: [row], "telemetry": {"tokens": len(p.input_ids) + len(generated), **state.prefix.last}}
        if params.save_prompts:
            out["prompts"] = [self.prompt_record(p, int(cell[TRIAL]))]
        return out

    def summarize(self, tables: dict, params) -> dict:
        """<table>_summary (accuracy with its interval, answer NLL and the extra means per model and length),
        <table>_effective_length (with its resampled 90% interval) and <table>_cells (accuracy per length and depth)."""
        df = tables.get(self.table)
        if df is None or df.empty:
            return {}
        extra = [k for k in self.summary_keys if k in df.columns]
        means = {"accuracy": (CORRECT, "mean"), **{out: (col, "mean") for out, col in self.summary_columns.items()},
                 "answer_nll": (ANSWER_NLL, "mean"), "n": (CORRECT, "size")}
        summary, effective = length_summary(df, model_columns(df) + extra, means, params.threshold)
        return {f"{self.table}_summary": summary, f"{self.table}_effective_length": effective,
                f"{self.table}_cells": cell_summary(df, extra)}

    def finalize(self, run_dir: Path, tables: dict, params) -> None:
        """With save_prompts: RUN_DIR/prompts.jsonl, one JSON object per prompt (contract fields first)."""
        df = tables.get("prompts")
        if params.save_prompts and df is not None and not df.empty:
            write_prompts_jsonl(Path(run_dir) / "prompts.jsonl", df)


def validate_lengths(params) -> None:
    """lengths are positive integers and trials an integer >= 1 (UserError otherwise)."""
    if not params.lengths:
        raise UserError("lengths is empty; give context lengths in tokens, e.g. -T lengths=256,512,1024")
    for length in params.lengths:
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise UserError(f"context length {length!r} is not allowed; lengths are positive integers")
    if isinstance(params.trials, bool) or not isinstance(params.trials, int) or params.trials < 1:
        raise UserError(f"trials={params.trials!r} is not allowed; use an integer >= 1")


def validate_decoding(params) -> None:
    """template, max_new_tokens and threshold are allowed values (UserError otherwise)."""
    if params.template not in TEMPLATES:
        raise UserError(f"template={params.template!r} is not allowed; use one of {', '.join(TEMPLATES)}")
    if isinstance(params.max_new_tokens, bool) or not isinstance(params.max_new_tokens, int) or params.max_new_tokens < 0:
        raise UserError(f"max_new_tokens={params.max_new_tokens!r} is not allowed; use an integer >= 0")
    if not 0.0 <= params.threshold <= 1.0:
        raise UserError(f"threshold={params.threshold!r} is outside [0, 1]")


def length_summary(df, keys: list[str], means: dict, threshold: float):
    """(summary: `means` per keys + context_length with acc/nll intervals, effective length with its interval)."""
    summary = df.groupby(keys + [CONTEXT_LENGTH], dropna=False).agg(**means).reset_index()
    summary = add_intervals(summary, df, keys + [CONTEXT_LENGTH])
    effective = add_effective_length_intervals(effective_lengths(summary, keys, threshold), df, keys, threshold)
    return summary, effective


def write_prompts_jsonl(path: Path, df) -> Path:
    """Write prompt rows (model, context_length, depth, trial, input_ids, spans, answer_ids, ...) atomically."""
    first = [*MODEL_COLUMNS, "task", CONTEXT_LENGTH, DEPTH, TRIAL, "input_ids", "needle_span", "value_spans",
             "answer_ids"]
    cols = [c for c in first if c in df.columns] + [c for c in df.columns if c not in first and c != "run"]
    lines = (json.dumps({k: _plain(v) for k, v in rec.items()}) + "\n" for rec in df[cols].to_dict(orient="records"))
    write_text(path, "".join(lines))
    return path


def _plain(v):
    """JSON-able value from a pandas/numpy/pyarrow cell."""
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, float) and v != v:
        return None
    return v.item() if hasattr(v, "item") else v


__all__ = ["PromptState", "PromptedTask", "length_summary", "validate_decoding", "validate_lengths",
           "write_prompts_jsonl"]
