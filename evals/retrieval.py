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
niah_multikey_1/2/3, niah_multivalue, niah_multiquery and passkey. Keys, values and distractor depths
depend on (seed, trial) only under wording=lch (the same at every length and depth), and on (seed, trial, depth)
under wording=ruler (RULER draws every sample afresh: depths x trials independent draws per length; the same
at every length, so length curves stay paired); never on the model.
"""


from __future__ import annotations

from pathlib import Path

from evals._prompted import PromptedTask, PromptState
from evals._retrieval_prompts import (HAYSTACKS, KINDS, MIN_NEEDLE_TOKENS, STYLES, WORDINGS, RetrievalParams,
                                      RetrievalPrompt, _positive_int, answer_settled, build_retrieval_prompt,
                                      prompt_record, score)
from evals._ruler_text import NOISE
from harness.data.filler import FILLER_TEXT, FillerSource, filler_fingerprint
from harness.data.haystack import haystack_source
from harness.errors import UserError
from harness.task import register_task

DRAWS_PER_DEPTH = "+draws:per-depth"
"""Mark in a wording=ruler preset's data fingerprint: its needles are drawn per depth (cells from before differ)."""


def filler_text(params: RetrievalParams) -> str:
    """The filler haystack's text: this project's paragraph, or RULER's noise one per line (wording=ruler)."""
    return NOISE + "\n" if params.wording == "ruler" else FILLER_TEXT


@register_task("retrieval")
class RetrievalTask(PromptedTask):
    """Keyed retrieval (RULER-style needles, passkey) over length x depth; every knob a parameter."""

    Params = RetrievalParams
    tables = ("retrieval", "prompts")
    table = "retrieval"
    summary_columns = {"recall": "recall", "first_token_accuracy": "first_token_correct"}
    summary_keys = ("task",)
    added_params = {"save_prompts": False, "wording": "lch"}

    def validate(self, params: RetrievalParams) -> None:
        """One clear line per bad parameter (the exact token budget is checked in `prepare`)."""
        self.validate_grid(params)
        for name in ("keys", "values", "queries"):
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
        if params.wording not in WORDINGS:
            raise UserError(f"wording={params.wording!r} is not allowed; use one of {', '.join(WORDINGS)}")
        needles = params.keys * params.values
        if needles * MIN_NEEDLE_TOKENS > min(params.lengths):
            raise UserError(f"{needles} needles ({params.keys} key(s) x {params.values} value(s)) cannot fit in context "
                            f"length {min(params.lengths)} (each takes at least {MIN_NEEDLE_TOKENS} tokens); use fewer "
                            f"keys/values or longer lengths")
        if params.haystack == "corpus":
            self.check_corpus_fills(params, extra_tokens=100 * needles)

    def data_fingerprint(self, params: RetrievalParams) -> str:
        """The corpus's fingerprint for haystack=corpus; a fixed string naming the filler text otherwise."""
        mark = DRAWS_PER_DEPTH if params.wording == "ruler" else ""  # new draws: new cell keys, same run names
        if params.haystack != "corpus":
            return filler_fingerprint(filler_text(params)) + mark
        from harness.data.corpus import load_corpus

        return load_corpus(params.corpus).fingerprint + mark

    def haystack(self, params: RetrievalParams, tokenizer):
        """The held-out corpus for haystack=corpus, else filler sentences (also the padding of a needles haystack)."""
        if params.haystack == "corpus":
            from harness.data.corpus import load_corpus

            return haystack_source(tokenizer, load_corpus(params.corpus, split="heldout"))
        return FillerSource(tokenizer, filler_text(params))

    def prompt(self, params: RetrievalParams, tokenizer, state: PromptState, length: int, depth: float,
               trial: int) -> RetrievalPrompt:
        """The prompt of one cell (depends on params and trial, never on the model)."""
        return build_retrieval_prompt(params, tokenizer, state, int(length), float(depth), int(trial))

    def stop_rule(self, params: RetrievalParams, tokenizer):
        """Stop once every asked value is out (RULER's wording ends an answer with its own punctuation)."""
        return answer_settled(tokenizer, params.wording)

    def score_row(self, params: RetrievalParams, prompt: RetrievalPrompt, generated: list[int], text: str) -> dict:
        """task, answer, the parsed values and their scores, the asked keys and the number of needles."""
        return {"task": self.name, "answer": ", ".join(prompt.asked_values), **score(prompt, generated, text),
                "keys": ", ".join(prompt.asked_keys), "needles": len(prompt.value_spans)}

    def prompt_record(self, prompt: RetrievalPrompt, trial: int) -> dict:
        """One prompts.jsonl row."""
        return prompt_record(prompt, trial, self.name)

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


# ------------------------------------------------------------------------------------------ presets
# Each preset's Params subclass only changes defaults (every field stays settable with -T).


