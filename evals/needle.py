"""Task `needle`: token-exact needle-in-a-haystack over context length x depth (the paper's Figure 6).

Prompts come from `harness.data.prompts` (pure functions); the cell's work (greedy decoding and the answer
NLL from one prefill, shared-prefix prefill across a trial) is the PromptedTask's (evals._prompted). This
module says what a needle is: a city's number in the held-out corpus, scored digit by digit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evals._prompted import PromptedTask, PromptState
from harness.columns import CONTEXT_LENGTH, CORRECT, DEPTH, TRIAL
from harness.data.haystack import CITIES, DEFAULT_DIGITS, haystack_source
from harness.data.prompts import NeedlePrompt, build_needle_prompt
from harness.errors import UserError
from harness.inference.decode import digits_settled, parse_digits
from harness.task import register_task


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
    return {"prediction": pred, CORRECT: pred == prompt.number,
            "first_digit_correct": pred[:1] == prompt.number[:1]}


# --------------------------------------------------------------------------------------------- task


def prompt_record(p: NeedlePrompt, trial: int) -> dict:
    """One prompts.jsonl row (contract fields without the model columns the runner adds)."""
    return {CONTEXT_LENGTH: p.context_length, DEPTH: p.depth, TRIAL: trial, "city": p.city,
            "number": p.number, "input_ids": list(p.input_ids), "needle_span": list(p.needle_span),
            "answer_ids": list(p.answer_ids)}


@register_task("needle")
class NeedleTask(PromptedTask):
    """Needle in a haystack over context length x depth: greedy retrieval accuracy and answer NLL."""

    Params = NeedleParams
    tables = ("needle", "prompts")
    table = "needle"
    summary_columns = {"first_digit_accuracy": "first_digit_correct"}
    added_params = {"template": "plain"}

    def validate(self, params: NeedleParams) -> None:
        """Check the grid and knobs (the corpus size per tokenizer is checked in `prepare`)."""
        self.validate_grid(params)
        if isinstance(params.digits, bool) or not isinstance(params.digits, int) or not 1 <= params.digits <= 18:
            raise UserError(f"digits={params.digits!r} is not allowed; use an integer from 1 to 18")
        if not params.cities or any(not str(c).strip() for c in params.cities):
            raise UserError(f"cities={params.cities!r} is not allowed; give non-empty city names")
        self.check_corpus_fills(params)

    def data_fingerprint(self, params: NeedleParams) -> str:
        """The haystack corpus's fingerprint."""
        from harness.data.corpus import load_corpus

        return load_corpus(params.corpus).fingerprint

    def haystack(self, params: NeedleParams, tokenizer):
        """The held-out corpus, tokenised lazily (once) for this tokenizer."""
        from harness.data.corpus import load_corpus

        return haystack_source(tokenizer, load_corpus(params.corpus, split="heldout"))

    def prompt(self, params: NeedleParams, tokenizer, state: PromptState, length: int, depth: float,
               trial: int) -> NeedlePrompt:
        """The prompt of one cell (depends on params.seed and trial, never on the model)."""
        return build_needle_prompt(tokenizer, state.source, int(length), float(depth), seed=params.seed,
                                   trial=int(trial), cities=params.cities, digits=params.digits, frame=state.frame)

    def stop_rule(self, params: NeedleParams, tokenizer):
        """Stop once the digits of the answer are settled."""
        return digits_settled(tokenizer)

    def score_row(self, params: NeedleParams, prompt: NeedlePrompt, generated: list[int], text: str) -> dict:
        """city, answer, prediction, correct, first_digit_correct and the needle's span."""
        return {"city": prompt.city, "answer": prompt.number, **score(prompt, text),
                "needle_start": prompt.needle_span[0], "needle_end": prompt.needle_span[1]}

    def prompt_record(self, prompt: NeedlePrompt, trial: int) -> dict:
        """One prompts.jsonl row."""
        return prompt_record(prompt, trial)

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
