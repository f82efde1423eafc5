"""Task family `retrieval`: RULER-style needle variants and passkey retrieval as presets of one task.

One prompt: a frame (plain or chat), a short preamble, a haystack (corpus text, repeated filler, or
distractor needles only) with `keys x values` needles inserted token-exactly (harness.data.prompts.build_prompt),
then a question about `queries` of the keys and an answer prefix that ends the prompt. The asked key's
first needle sits at the cell's depth; every other needle is spread evenly over the haystack. The gold
answer is every asked value, joined as " v1, v2, v3." (prompt order per key, keys in question order).
Scoring: greedy decoding (harness.inference.decode.score_prompt) parsed back into values, plus the gold answer's NLL.
With prefix_cache (default) the prompts of one trial run latest needle first and share the prefill of
their common prefix (harness.inference.prefix_cache); save_prompts writes RUN_DIR/prompts.jsonl.

Presets (`lch tasks`) are subclasses whose Params only change defaults: niah_single_1/2/3,
niah_multikey_1/2/3, niah_multivalue, niah_multiquery and passkey. Keys, values and distractor order
depend on (seed, trial) only: the same at every length and depth, for every model.
"""


from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from harness.inference.decode import score_prompt
from harness.errors import UserError
from harness.data.filler import FILLER_TEXT, FillerSource, filler_fingerprint
from harness.data.haystack import check_depth, haystack_source
from harness.inference.prefix_cache import DepthGrid, PrefixCache
from harness.data.prompts import TEMPLATES, prompt_frame
from harness.results.tables import effective_lengths, model_columns
from harness.task import Task, register_task
from evals._ruler_text import NOISE
from evals._retrieval_prompts import (WORDINGS, RetrievalParams, KINDS, HAYSTACKS, STYLES, MIN_NEEDLE_TOKENS, RetrievalPrompt, answer_ids, answer_settled, score, RetrievalState, build_retrieval_prompt, _positive_int, prompt_record)



def filler_text(params: RetrievalParams) -> str:
    """The filler haystack's text: this project's paragraph, or RULER's noise one per line (wording=ruler)."""
    return NOISE + "\n" if params.wording == "ruler" else FILLER_TEXT



@register_task("retrieval")
class RetrievalTask(DepthGrid, Task):
    """Keyed retrieval (RULER-style needles, passkey) over length x depth; every knob a parameter."""

    Params = RetrievalParams
    tables = ("retrieval", "prompts")
    grid_params = ("lengths", "depths", "trials", "threshold")
    execution_params = ("prefix_cache",)
    added_params = {"save_prompts": False, "wording": "lch"}

    def validate(self, params: RetrievalParams) -> None:
        """One clear line per bad parameter (the exact token budget is checked in `prepare`)."""
        if not params.lengths:
            raise UserError("lengths is empty; give context lengths in tokens, e.g. -T lengths=256,512,1024")
        for length in params.lengths:
            if isinstance(length, bool) or not isinstance(length, int) or length < 1:
                raise UserError(f"context length {length!r} is not allowed; lengths are positive integers")
        if not params.depths:
            raise UserError("depths is empty; give fractions in [0, 1], e.g. -T depths=0,0.5,1")
        for depth in params.depths:
            check_depth(depth)
        for name in ("trials", "keys", "values", "queries"):
            _positive_int(name, getattr(params, name))
        if params.queries > params.keys:
            raise UserError(f"queries={params.queries} is more than keys={params.keys}: only keys in the prompt can "
                            f"be asked; use queries <= keys")
        for name in ("key_kind", "value_kind"):
            if getattr(params, name) not in KINDS:
                raise UserError(f"{name}={getattr(params, name)!r} is not allowed; use one of {', '.join(KINDS)}")
        if params.haystack not in HAYSTACKS:
            raise UserError(f"haystack={params.haystack!r} is not allowed; use one of {', '.join(HAYSTACKS)}")
        if params.style not in STYLES:
            raise UserError(f"style={params.style!r} is not allowed; use one of {', '.join(STYLES)}")
        if params.style == "passkey" and (params.keys, params.values, params.queries) != (1, 1, 1):
            raise UserError("style=passkey has one pass key: use keys=1, values=1, queries=1")
        if params.style == "passkey" and params.haystack == "needles":
            raise UserError("style=passkey needs haystack=filler or haystack=corpus (a needles haystack holds other keys)")
        if params.template not in TEMPLATES:
            raise UserError(f"template={params.template!r} is not allowed; use one of {', '.join(TEMPLATES)}")
        if params.wording not in WORDINGS:
            raise UserError(f"wording={params.wording!r} is not allowed; use one of {', '.join(WORDINGS)}")
        if isinstance(params.max_new_tokens, bool) or not isinstance(params.max_new_tokens, int) or params.max_new_tokens < 0:
            raise UserError(f"max_new_tokens={params.max_new_tokens!r} is not allowed; use an integer >= 0")
        if not 0.0 <= params.threshold <= 1.0:
            raise UserError(f"threshold={params.threshold!r} is outside [0, 1]")
        needles = params.keys * params.values
        if needles * MIN_NEEDLE_TOKENS > min(params.lengths):
            raise UserError(f"{needles} needles ({params.keys} key(s) x {params.values} value(s)) cannot fit in context "
                            f"length {min(params.lengths)} (each takes at least {MIN_NEEDLE_TOKENS} tokens); use fewer "
                            f"keys/values or longer lengths")
        if params.haystack == "corpus":
            from harness.data.corpus import load_corpus

            corpus = load_corpus(params.corpus, split="heldout")  # unknown spec or missing file -> UserError
            bound = sum(len(d.text.encode("utf-8")) for d in corpus.documents) + 256 + 100 * needles
            if max(params.lengths) > bound:
                raise UserError(f"context length {max(params.lengths)} is more than corpus {params.corpus!r} can fill "
                                f"(about {bound} tokens at most); use shorter lengths, a larger corpus or haystack=filler")

    def data_fingerprint(self, params: RetrievalParams) -> str:
        """The corpus's fingerprint for haystack=corpus; a fixed string naming the filler text otherwise."""
        if params.haystack != "corpus":
            return filler_fingerprint(filler_text(params))
        from harness.data.corpus import load_corpus

        return load_corpus(params.corpus).fingerprint

    def prepare(self, params: RetrievalParams, loaded) -> RetrievalState:
        """Haystack source and frame for this tokenizer; builds the extreme prompts once to fail before any cell."""
        tok = loaded.tokenizer
        if params.haystack == "corpus":
            from harness.data.corpus import load_corpus

            source = haystack_source(tok, load_corpus(params.corpus, split="heldout"))
        else:
            source = FillerSource(tok, filler_text(params))
        state = RetrievalState(source, prompt_frame(tok, params.template), PrefixCache(params.prefix_cache))
        for trial in range(params.trials):
            for length in (min(params.lengths), max(params.lengths)):
                self.prompt(params, tok, state, length, 0.5, trial)
        return state

    @staticmethod
    def prompt(params: RetrievalParams, tokenizer, state: RetrievalState, length: int, depth: float,
               trial: int) -> RetrievalPrompt:
        """The prompt of one cell (depends on params and trial, never on the model)."""
        return build_retrieval_prompt(params, tokenizer, state, int(length), float(depth), int(trial))

    def run_cell(self, params: RetrievalParams, loaded, cell: dict, state, seed: int) -> dict[str, list[dict]]:
        """Build the cell's prompt, decode greedily, parse and score the values, and the gold answer's NLL."""
        t0 = time.perf_counter()
        tok = loaded.tokenizer
        state = state if state is not None else self.prepare(params, loaded)
        p = self.prompt(params, tok, state, cell["context_length"], cell["depth"], cell["trial"])
        n_new = len(p.answer_ids) + params.max_new_tokens
        generated, nll = score_prompt(loaded.model, p.input_ids, p.answer_ids, n_new, eos_token_id=tok.eos_token_id,
                                      stop=answer_settled(tok, params.wording), prefix=state.prefix,
                                      group=self.group(params, cell))
        text = tok.decode(generated)
        row = {
            "context_length": p.context_length, "depth": p.depth, "trial": int(cell["trial"]), "task": self.name,
            "answer": ", ".join(p.asked_values), **score(p, generated, tok.decode(generated, skip_special_tokens=True)),
            "answer_nll": nll,
            "prompt_tokens": len(p.input_ids), "keys": ", ".join(p.asked_keys), "needles": len(p.value_spans),
            "needle_position": p.needle_start, "generated": text, "seconds": time.perf_counter() - t0,
        }
        prefix = state.prefix.last if state.prefix is not None else {}
        out = {"retrieval": [row], "telemetry": {"tokens": len(p.input_ids) + len(generated), **prefix}}
        if params.save_prompts:
            out["prompts"] = [prompt_record(p, int(cell["trial"]), self.name)]
        return out

    def summarize(self, tables: dict, params: RetrievalParams) -> dict:
        """retrieval_summary per (model, attention, theta, task, length) and retrieval_effective_length."""

        df = tables.get("retrieval")
        if df is None or df.empty:
            return {}
        keys = model_columns(df) + ["task"]
        summary = (df.groupby(keys + ["context_length"], dropna=False)
                   .agg(accuracy=("correct", "mean"), recall=("recall", "mean"),
                        first_token_accuracy=("first_token_correct", "mean"), answer_nll=("answer_nll", "mean"),
                        n=("correct", "size"))
                   .reset_index())
        return {"retrieval_summary": summary, "retrieval_effective_length": effective_lengths(summary, keys, params.threshold)}

    def figures(self, tables: dict, manifest: dict, out_dir: Path) -> list[Path]:
        """retrieval_heatmap_<task>.png per preset: accuracy over length x depth, one panel per model."""
        from harness.plots import retrieval_heatmap_figures, training_lengths

        df = tables.get("retrieval")
        if df is None or df.empty:
            return []
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for task, fig in retrieval_heatmap_figures(df, train_lengths=training_lengths(manifest)).items():
            out = out_dir / f"retrieval_heatmap_{task}.png"
            fig.savefig(out, dpi=120, bbox_inches="tight")
            paths.append(out)
        return paths

    def finalize(self, run_dir: Path, tables: dict, params: RetrievalParams) -> None:
        """With save_prompts: RUN_DIR/prompts.jsonl, one JSON object per prompt (model columns first)."""
        from evals.needle import write_prompts_jsonl

        df = tables.get("prompts")
        if params.save_prompts and df is not None and not df.empty:
            write_prompts_jsonl(Path(run_dir) / "prompts.jsonl", df)


# ------------------------------------------------------------------------------------------ presets
# Each preset's Params subclass only changes defaults (every field stays settable with -T).


