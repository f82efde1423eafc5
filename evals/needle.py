"""Task `needle`: token-exact needle-in-a-haystack over context length x depth (the paper's Figure 6).

Prompts come from `harness.data.prompts` (pure functions); this module scores them on a model with
`harness.inference.decode`: greedy decoding with the KV cache (-> correct, first_digit_correct) and the
teacher-forced NLL of the gold answer, both from one prefill. With prefix_cache (default) the prompts of
one trial (every length and depth) run consecutively, latest needle first, and each reuses the previous
one's prefill up to their common prefix (harness.inference.prefix_cache): the same results, fewer prompt tokens.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.atomic import write_text
from harness.inference.decode import digits_settled, parse_digits, score_prompt
from harness.errors import UserError
from harness.data.haystack import CITIES, DEFAULT_DIGITS, check_depth, haystack_source
from harness.inference.prefix_cache import DepthGrid, PrefixCache
from harness.data.prompts import TEMPLATES, NeedlePrompt, build_needle_prompt, prompt_frame
from harness.results.intervals import add_effective_length_intervals, add_intervals, cell_summary
from harness.results.paired import prompt_fingerprint
from harness.results.tables import effective_lengths, model_columns
from harness.task import Task, register_task


@dataclass(frozen=True)
class NeedleParams:
    """Parameters of the needle task."""

    corpus: str = "builtin:stdlib"
    """Haystack text: builtin:stdlib, a .txt/.jsonl/.parquet file or folder of .txt, or hf:NAME[:CONFIG][:SPLIT] (held-out split)."""
    lengths: tuple[int, ...] = (256, 512, 1024)
    """Context lengths in tokens; each prompt is exactly this long (BOS, haystack, needle, question)."""
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    """Needle depths as fractions of the haystack: 0 = right after BOS, 1 = right before the question."""
    trials: int = 4
    """Prompts per (length, depth); trial t has the same city, number and haystack order at every length and depth."""
    seed: int = 0
    """Seed of cities, numbers and haystack document order (identical for every model)."""
    save_prompts: bool = False
    """Write RUN_DIR/prompts.jsonl (input_ids, needle_span, answer_ids per prompt) to inspect or re-score."""
    digits: int = DEFAULT_DIGITS
    """Digits of the needle's number (its first digit is never 0)."""
    cities: tuple[str, ...] = CITIES
    """City names the needle draws from."""
    max_new_tokens: int = 3
    """Tokens greedy decoding may generate beyond the gold answer's length."""
    threshold: float = 0.8
    """Accuracy a length (and every shorter one) must reach to count towards the effective length."""
    template: str = "plain"
    """plain: completion with an answer prefix (base models); chat: the tokenizer's chat template, answer prefix in the assistant turn."""
    prefix_cache: bool = True
    """Share each trial's haystack prefill across its depths and lengths (latest needle first); false: one prefill per prompt (same tables)."""


# ------------------------------------------------------------------------------------------ scoring


def score(prompt: NeedlePrompt, generated_text: str) -> dict:
    """prediction (leading digits of the answer), correct (all digits), first_digit_correct."""
    pred = parse_digits(generated_text)
    return {"prediction": pred, "correct": pred == prompt.number,
            "first_digit_correct": pred[:1] == prompt.number[:1]}


# --------------------------------------------------------------------------------------------- task


def prompt_record(p: NeedlePrompt, trial: int) -> dict:
    """One prompts.jsonl row (contract fields without the model columns the runner adds)."""
    return {"context_length": p.context_length, "depth": p.depth, "trial": trial, "city": p.city,
            "number": p.number, "input_ids": list(p.input_ids), "needle_span": list(p.needle_span),
            "answer_ids": list(p.answer_ids)}


@dataclass(frozen=True)
class NeedleState:
    """What a model's cells share: the tokenised haystack corpus and the prompt frame (plain or chat)."""

    source: object
    """harness.data.haystack.HaystackSource for the model's tokenizer"""
    frame: object
    """harness.data.prompts.PromptFrame"""
    prefix: PrefixCache = field(default_factory=PrefixCache)
    """the model's shared-prefix KV cache (one prompt's at most)"""


@register_task("needle")
class NeedleTask(DepthGrid, Task):
    """Needle in a haystack over context length x depth: greedy retrieval accuracy and answer NLL."""

    Params = NeedleParams
    tables = ("needle", "prompts")
    grid_params = ("lengths", "depths", "trials", "threshold")
    execution_params = ("prefix_cache",)
    added_params = {"template": "plain"}

    def validate(self, params: NeedleParams) -> None:
        """Check the grid and knobs (the corpus size per tokenizer is checked in `prepare`)."""
        if not params.lengths:
            raise UserError("lengths is empty; give context lengths in tokens, e.g. -T lengths=256,512,1024")
        for length in params.lengths:
            if isinstance(length, bool) or not isinstance(length, int) or length < 1:
                raise UserError(f"context length {length!r} is not allowed; lengths are positive integers")
        if not params.depths:
            raise UserError("depths is empty; give fractions in [0, 1], e.g. -T depths=0,0.5,1")
        for depth in params.depths:
            check_depth(depth)
        if isinstance(params.trials, bool) or not isinstance(params.trials, int) or params.trials < 1:
            raise UserError(f"trials={params.trials!r} is not allowed; use an integer >= 1")
        if isinstance(params.digits, bool) or not isinstance(params.digits, int) or not 1 <= params.digits <= 18:
            raise UserError(f"digits={params.digits!r} is not allowed; use an integer from 1 to 18")
        if not params.cities or any(not str(c).strip() for c in params.cities):
            raise UserError(f"cities={params.cities!r} is not allowed; give non-empty city names")
        if isinstance(params.max_new_tokens, bool) or not isinstance(params.max_new_tokens, int) or params.max_new_tokens < 0:
            raise UserError(f"max_new_tokens={params.max_new_tokens!r} is not allowed; use an integer >= 0")
        if not 0.0 <= params.threshold <= 1.0:
            raise UserError(f"threshold={params.threshold!r} is outside [0, 1]")
        if params.template not in TEMPLATES:
            raise UserError(f"template={params.template!r} is not allowed; use one of {', '.join(TEMPLATES)}")
        from harness.data.corpus import load_corpus

        corpus = load_corpus(params.corpus, split="heldout")  # unknown spec or missing file -> UserError now
        # A token covers at least one byte, so no tokenizer fills more than this (exact check: prepare).
        bound = sum(len(d.text.encode("utf-8")) for d in corpus.documents) + 256
        if max(params.lengths) > bound:
            raise UserError(f"context length {max(params.lengths)} is more than corpus {params.corpus!r} can fill "
                            f"(about {bound} tokens at most); use shorter lengths or a larger corpus")

    def data_fingerprint(self, params: NeedleParams) -> str:
        """The haystack corpus's fingerprint."""
        from harness.data.corpus import load_corpus

        return load_corpus(params.corpus).fingerprint

    def prepare(self, params: NeedleParams, loaded):
        """The held-out corpus tokenised (lazily, once) for this tokenizer; checks the extreme lengths."""
        from harness.data.corpus import load_corpus

        source = haystack_source(loaded.tokenizer, load_corpus(params.corpus, split="heldout"))
        state = NeedleState(source, prompt_frame(loaded.tokenizer, params.template), PrefixCache(params.prefix_cache))
        for trial in range(params.trials):  # too short / too long for this tokenizer: fail before any cell
            for length in (min(params.lengths), max(params.lengths)):
                self.prompt(params, loaded.tokenizer, state, length, 0.5, trial)
        return state

    @staticmethod
    def prompt(params: NeedleParams, tokenizer, state: "NeedleState", length: int, depth: float,
               trial: int) -> NeedlePrompt:
        """The prompt of one cell (depends on params.seed and trial, never on the model)."""
        return build_needle_prompt(tokenizer, state.source, int(length), float(depth), seed=params.seed,
                                   trial=int(trial), cities=params.cities, digits=params.digits, frame=state.frame)

    def run_cell(self, params: NeedleParams, loaded, cell: dict, state, seed: int) -> dict[str, list[dict]]:
        """Build the cell's prompt, decode greedily, score it and compute the answer NLL."""
        t0 = time.perf_counter()
        tok = loaded.tokenizer
        state = state if state is not None else self.prepare(params, loaded)
        p = self.prompt(params, tok, state, cell["context_length"], cell["depth"], cell["trial"])
        n_new = len(p.answer_ids) + params.max_new_tokens
        generated, nll = score_prompt(loaded.model, p.input_ids, p.answer_ids, n_new, eos_token_id=tok.eos_token_id,
                                      stop=digits_settled(tok), prefix=state.prefix, group=self.group(params, cell))
        text = tok.decode(generated)
        row = {
            "context_length": p.context_length, "depth": p.depth, "trial": int(cell["trial"]),
            "city": p.city, "answer": p.number, **score(p, text), "answer_nll": nll,
            "prompt_tokens": len(p.input_ids), "needle_start": p.needle_span[0], "needle_end": p.needle_span[1],
            "needle_position": p.needle_start, "generated": text, "seconds": time.perf_counter() - t0,
            "prompt_fingerprint": prompt_fingerprint(p.input_ids, p.answer_ids),
        }
        out = {"needle": [row], "telemetry": {"tokens": len(p.input_ids), **state.prefix.last}}
        if params.save_prompts:
            out["prompts"] = [prompt_record(p, int(cell["trial"]))]
        return out

    def summarize(self, tables: dict, params: NeedleParams) -> dict:
        """needle_summary (accuracy per model, attention, theta and length, with intervals), needle_effective_length
        (with its resampled 90% interval) and needle_cells (accuracy per length and depth, Wilson interval)."""

        df = tables.get("needle")
        if df is None or df.empty:
            return {}
        keys = model_columns(df)
        summary = (df.groupby(keys + ["context_length"], dropna=False)
                   .agg(accuracy=("correct", "mean"), first_digit_accuracy=("first_digit_correct", "mean"),
                        answer_nll=("answer_nll", "mean"), n=("correct", "size"))
                   .reset_index())
        summary = add_intervals(summary, df, keys + ["context_length"])
        effective = add_effective_length_intervals(effective_lengths(summary, keys, params.threshold), df, keys,
                                                   params.threshold)
        return {"needle_summary": summary, "needle_effective_length": effective, "needle_cells": cell_summary(df)}

    def figures(self, tables: dict, manifest: dict, out_dir: Path) -> list[Path]:
        """needle_heatmap.png: one panel per (model, attention, theta)."""
        from harness.plots import needle_heatmap_figure, training_lengths

        df = tables.get("needle")
        if df is None or df.empty:
            return []
        out = Path(out_dir) / "needle_heatmap.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        fig = needle_heatmap_figure(df, train_lengths=training_lengths(manifest))
        fig.savefig(out, dpi=120, bbox_inches="tight")
        return [out]

    def finalize(self, run_dir: Path, tables: dict, params: NeedleParams) -> None:
        """With save_prompts: RUN_DIR/prompts.jsonl, one JSON object per prompt (contract fields first)."""
        df = tables.get("prompts")
        if not params.save_prompts or df is None or df.empty:
            return
        write_prompts_jsonl(Path(run_dir) / "prompts.jsonl", df)


def write_prompts_jsonl(path: Path, df) -> Path:
    """Write prompt rows (model, context_length, depth, trial, input_ids, needle_span, answer_ids, ...) atomically."""
    first = ["model", "attention", "rope_theta", "task", "context_length", "depth", "trial", "input_ids", "needle_span",
             "value_spans", "answer_ids"]
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
