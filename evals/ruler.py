"""RULER's non-needle tasks: `vt` (variable tracking), `cwe` (common words extraction), `fwe` (frequent words
extraction), `qa_1` (SQuAD-style) and `qa_2` (HotpotQA-style) over context length x trial.

Prompts are token-exact (evals/_ruler_build.py) in RULER's wording (evals/_ruler_text.py); each cell decodes
greedily (RULER's generation budget per task) and scores the generation as RULER does (evals/_ruler_score.py:
string_match_all, string_match_part for qa) -> `ruler_score`; `correct` is a full score; `answer_nll` is the
teacher-forced NLL of the gold answer. Rows go to the `ruler` table; with the niah_* presets' `retrieval`
rows they make the RULER average (harness.results.tables.ruler_average). QA reads a local file (-T data=FILE, JSON,
JSONL or parquet through `datasets`): nothing is downloaded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from evals._ruler_build import (QaData, RulerPrompt, cwe_prompt, fwe_prompt, noise_frame, qa_prompt, vt_prompt,
                                word_pool)
from evals._prompted import length_summary, validate_decoding, validate_lengths, write_prompts_jsonl
from evals._retrieval_prompts import _positive_int
from evals._ruler_score import METRICS
from harness.errors import UserError
from harness.data.filler import filler_fingerprint
from harness.data.prompts import prompt_frame
from harness.results.paired import prompt_fingerprint
from harness.results.tables import model_columns
from harness.task import Task, register_task


@dataclass(frozen=True)
class RulerParams:
    """Parameters every RULER task shares."""

    lengths: tuple[int, ...] = (256, 512, 1024)
    """Context lengths in tokens; each prompt is exactly this long."""
    trials: int = 4
    """Prompts per length (independent draws; trial t is the same draw at every length where the task allows)."""
    seed: int = 0
    """Seed of every draw (identical for every model)."""
    template: str = "plain"
    """plain: completion, question and answer prefix joined as RULER's base template; chat: the tokenizer's chat template."""
    max_new_tokens: int = 0
    """Tokens greedy decoding may generate; 0: RULER's budget for the task (vt 30, cwe 120, fwe 50, qa 32), at least twice the gold answer's tokens."""
    threshold: float = 0.8
    """Accuracy (full RULER score) a length (and every shorter one) must reach to count towards the effective length."""
    save_prompts: bool = False
    """Write RUN_DIR/prompts.jsonl (input_ids, references, evidence spans, answer_ids per prompt)."""


@dataclass(frozen=True)
class VtParams(RulerParams):
    """vt parameters (RULER: 1 chain of 4 hops)."""

    chains: int = 1
    """Chains of assignments in the prompt; the first one is asked, the others are distractors."""
    hops: int = 4
    """Assignments after the value in each chain (the answer names hops + 1 variables)."""
    icl: bool = True
    """Put RULER's solved example first (3-letter names; up to 500 tokens with the generation budget, a quarter of the prompt below 2000); false: none."""


@dataclass(frozen=True)
class CweParams(RulerParams):
    """cwe parameters (RULER: 10 common words; repeats 6/1 below 4096 tokens, 30/3 from 4096)."""

    common: int = 10
    """Words that appear more often than every other one (the answer); RULER's question asks for 10."""
    common_repeats: int = 0
    """Repeats of each common word; 0: RULER's (6 below 4096 tokens, 30 from 4096)."""
    uncommon_repeats: int = 0
    """Repeats of each other word; 0: RULER's (1 below 4096 tokens, 3 from 4096)."""
    icl: bool = True
    """Put RULER's solved example first (10 words x 3 and 10 once below 4096 tokens; x 10 and 30 x 3 from 4096)."""


@dataclass(frozen=True)
class FweParams(RulerParams):
    """fwe parameters (RULER: Zipf alpha 2, vocabulary length // 50, 6-letter coded words)."""

    alpha: float = 2.0
    """Zipf exponent of the word counts (> 1)."""
    vocab: int = 0
    """Distinct coded words; 0: RULER's length // 50."""
    word_length: int = 6
    """Letters per coded word."""


@dataclass(frozen=True)
class QaParams(RulerParams):
    """qa parameters: the questions come from a local file."""

    data: str = ""
    """JSON, JSONL or parquet file of questions (qa_1: question, context, answers; qa_2: question, answer, context as [title, sentences] pairs)."""


BUDGET = {"vt": 30, "cwe": 120, "fwe": 50, "qa_1": 32, "qa_2": 32}
"""RULER's tokens_to_generate per task."""


def prompt_record(p: RulerPrompt, task: str, trial: int) -> dict:
    """One prompts.jsonl row of a RULER prompt (without the model columns the runner adds)."""
    return {"task": task, "context_length": p.context_length, "trial": trial, "input_ids": list(p.input_ids),
            "references": list(p.references), "evidence_spans": [list(s) for s in p.evidence],
            "answer_ids": list(p.answer_ids)}


class RulerTask(Task):
    """Shared machinery of the RULER tasks: cells, decoding, scoring, summary."""

    Params = RulerParams
    tables = ("ruler", "prompts")
    grid_params = ("lengths", "trials", "threshold")

    def validate(self, params) -> None:
        """One clear line per bad parameter (budgets per tokenizer are checked in `prepare`)."""
        validate_lengths(params)
        validate_decoding(params)

    def data_fingerprint(self, params) -> str:
        """RULER's noise text (the padding) names the data of the synthetic tasks."""
        from evals._ruler_text import NOISE

        return filler_fingerprint(NOISE + "\n")

    def cells(self, params) -> list[dict]:
        return [{"context_length": int(length), "trial": t} for length in params.lengths for t in range(params.trials)]

    def prepare(self, params, loaded) -> dict:
        """The frame for this tokenizer; builds the extreme prompts once to fail before any cell."""
        state = {"frame": noise_frame(loaded.tokenizer, prompt_frame(loaded.tokenizer, params.template)), "cache": {}}
        for trial in range(params.trials):
            for length in (min(params.lengths), max(params.lengths)):
                self.prompt(params, loaded.tokenizer, state, length, trial)
        return state

    def prompt(self, params, tokenizer, state: dict, length: int, trial: int) -> RulerPrompt:  # pragma: no cover
        raise NotImplementedError

    def run_cell(self, params, loaded, cell: dict, state, seed: int) -> dict[str, list[dict]]:
        """Build the cell's prompt, decode greedily, score it as RULER does, and the gold answer's NLL."""
        from harness.inference.decode import score_prompt

        t0 = time.perf_counter()
        tok = loaded.tokenizer
        state = state if state is not None else self.prepare(params, loaded)
        p = self.prompt(params, tok, state, int(cell["context_length"]), int(cell["trial"]))
        n_new = params.max_new_tokens or max(BUDGET.get(self.name, 32), 2 * len(p.answer_ids))  # room for the gold
        generated, nll = score_prompt(loaded.model, p.input_ids, p.answer_ids, n_new, eos_token_id=tok.eos_token_id)
        clean = tok.decode(generated, skip_special_tokens=True)
        ruler_score = METRICS[p.metric](clean, p.references)
        row = {"context_length": p.context_length, "trial": int(cell["trial"]), "task": self.name,
               "answer": "; ".join(p.references), "prediction": clean.strip(), "ruler_score": ruler_score,
               "correct": ruler_score == 1.0, "answer_nll": nll, "prompt_tokens": len(p.input_ids),
               "padding": p.padding, "generated": tok.decode(generated), "seconds": time.perf_counter() - t0,
               "prompt_fingerprint": prompt_fingerprint(p.input_ids, p.answer_ids)}
        out = {"ruler": [row], "telemetry": {"tokens": len(p.input_ids) + len(generated)}}
        if params.save_prompts:
            out["prompts"] = [prompt_record(p, self.name, int(cell["trial"]))]
        return out

    def summarize(self, tables: dict, params) -> dict:
        """ruler_summary per (model, attention, theta, task, length): RULER score with its 95% t interval over trials
        (score_low, score_high), accuracy (acc_low, acc_high, n_eff), answer NLL (nll_low, nll_high); and
        ruler_effective_length with its resampled 90% interval."""
        from harness.results.stats import mean_interval

        df = tables.get("ruler")
        if df is None or df.empty:
            return {}
        keys = model_columns(df) + ["task"]
        means = {"ruler_score": ("ruler_score", "mean"), "accuracy": ("correct", "mean"),
                 "answer_nll": ("answer_nll", "mean"), "n": ("correct", "size")}
        summary, effective = length_summary(df.assign(correct=df["correct"].astype(float)), keys, means,
                                            params.threshold)
        bounds = [mean_interval(part["ruler_score"].to_numpy(float), part["trial"].to_numpy())[1:]
                  for _, part in df.groupby(keys + ["context_length"], dropna=False, sort=True)]
        summary["score_low"] = [max(0.0, low) if low == low else low for low, _ in bounds]  # a score lies in [0, 1]
        summary["score_high"] = [min(1.0, high) if high == high else high for _, high in bounds]
        return {"ruler_summary": summary, "ruler_effective_length": effective}

    def figures(self, tables: dict, manifest: dict, out_dir: Path) -> list[Path]:
        """ruler_<task>.png per RULER task present: RULER score and answer NLL vs length, one line per model."""
        from harness.plots import ruler_task_figure, save, training_lengths

        summary = tables.get("ruler_summary")
        if summary is None or summary.empty or "score_low" not in summary.columns:
            summary = self.summarize(tables, self.Params()).get("ruler_summary")  # merged or older runs: from the rows
        if summary is None or summary.empty:
            return []
        lengths = training_lengths(manifest) or None
        return [save(ruler_task_figure(summary, task, train_lengths=lengths), Path(out_dir) / f"ruler_{task}.png")
                for task in sorted(summary["task"].unique())]

    def finalize(self, run_dir: Path, tables: dict, params) -> None:
        """With save_prompts: RUN_DIR/prompts.jsonl, one JSON object per prompt."""
        df = tables.get("prompts")
        if params.save_prompts and df is not None and not df.empty:
            write_prompts_jsonl(Path(run_dir) / "prompts.jsonl", df)


@register_task("vt")
class VariableTracking(RulerTask):
    """RULER vt: follow a chain of variable assignments hidden among noise lines; name every variable of the value."""

    Params = VtParams
    added_params = {"icl": False}  # runs from before the solved example keep their keys and names

    def validate(self, params) -> None:
        super().validate(params)
        _positive_int("chains", params.chains)
        _positive_int("hops", params.hops)

    def prompt(self, params, tokenizer, state, length, trial) -> RulerPrompt:
        return vt_prompt(tokenizer, state["frame"], length, seed=params.seed, trial=trial, chains=params.chains,
                         hops=params.hops, icl=params.icl)


@register_task("cwe")
class CommonWords(RulerTask):
    """RULER cwe: a numbered word list; name the 10 words that appear most often."""

    Params = CweParams
    added_params = {"icl": False}  # runs from before the solved example keep their keys and names

    def validate(self, params) -> None:
        super().validate(params)
        _positive_int("common", params.common)
        for name in ("common_repeats", "uncommon_repeats"):
            value = getattr(params, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UserError(f"{name}={value!r} is not allowed; use an integer >= 0 (0: RULER's)")

    def data_fingerprint(self, params) -> str:
        import hashlib

        words = hashlib.sha256(" ".join(word_pool()).encode()).hexdigest()[:16]
        return f"{super().data_fingerprint(params)}+words:{words}"

    def prompt(self, params, tokenizer, state, length, trial) -> RulerPrompt:
        return cwe_prompt(tokenizer, state["frame"], length, seed=params.seed, trial=trial, common=params.common,
                          common_repeats=params.common_repeats, uncommon_repeats=params.uncommon_repeats,
                          icl=params.icl)


@register_task("fwe")
class FrequentWords(RulerTask):
    """RULER fwe: coded words with Zipf counts; name the three most frequent (ignoring the '...' noise)."""

    Params = FweParams

    def validate(self, params) -> None:
        super().validate(params)
        if not params.alpha > 1.0:
            raise UserError(f"alpha={params.alpha!r} is not allowed; use a Zipf exponent > 1")
        if isinstance(params.vocab, bool) or not isinstance(params.vocab, int) or params.vocab < 0:
            raise UserError(f"vocab={params.vocab!r} is not allowed; use an integer >= 5, or 0 for RULER's length // 50")
        _positive_int("word_length", params.word_length)

    def prompt(self, params, tokenizer, state, length, trial) -> RulerPrompt:
        return fwe_prompt(tokenizer, state["frame"], length, seed=params.seed, trial=trial, vocab=params.vocab,
                          alpha=params.alpha, word_length=params.word_length)


class QaTask(RulerTask):
    """RULER qa: documents (the question's gold ones among distractors) and a question; scored string_match_part."""

    Params = QaParams
    style = "squad"

    def validate(self, params) -> None:
        super().validate(params)
        data = load_qa(params.data, self.style, self.name)
        if params.trials > len(data.records):
            raise UserError(f"{self.name}: trials={params.trials} is more than the {len(data.records)} questions in "
                            f"{params.data}; use fewer trials")

    def data_fingerprint(self, params) -> str:
        import hashlib

        digest = hashlib.sha256(Path(params.data).read_bytes()).hexdigest()[:16]
        return f"{self.style}:{digest}"

    def prepare(self, params, loaded) -> dict:
        state = {"frame": noise_frame(loaded.tokenizer, prompt_frame(loaded.tokenizer, params.template)), "cache": {},
                 "data": load_qa(params.data, self.style, self.name)}
        for trial in range(params.trials):
            self.prompt(params, loaded.tokenizer, state, min(params.lengths), trial)
        return state

    def prompt(self, params, tokenizer, state, length, trial) -> RulerPrompt:
        if "data" not in state:
            state["data"] = load_qa(params.data, self.style, self.name)
        return qa_prompt(tokenizer, state["frame"], length, state["data"], seed=params.seed, trial=trial,
                         cache=state["cache"])


@register_task("qa_1")
class QaSquad(QaTask):
    """RULER qa_1: SQuAD-style questions over one gold paragraph among distractor paragraphs (-T data=FILE)."""

    style = "squad"


@register_task("qa_2")
class QaHotpot(QaTask):
    """RULER qa_2: HotpotQA-style multi-hop questions over their paragraphs among distractors (-T data=FILE)."""

    style = "hotpot"


# ------------------------------------------------------------------------------------------ qa data

NEEDED = {"squad": "question, context and answers (a list of strings or {text: [...]})",
          "hotpot": "question, answer and context ([title, sentences] pairs, or {title: [...], sentences: [...]})"}


def _answers(value) -> tuple[str, ...]:
    if isinstance(value, dict):
        value = value.get("text", [])
    if isinstance(value, str):
        value = [value]
    return tuple(str(a) for a in (value or []) if str(a).strip())


def _hotpot_documents(context) -> list[str]:
    if isinstance(context, dict):
        pairs = zip(context.get("title", []), context.get("sentences", []))
    else:
        pairs = ((c[0], c[1]) for c in context)
    return [f"{title}\n{''.join(sentences)}" for title, sentences in pairs]


_QA_CACHE: dict = {}


def load_qa(path: str, style: str, task: str) -> QaData:
    """Questions and documents of a local JSON/JSONL/parquet file (read through `datasets`); UserError if unusable."""
    if not path:
        raise UserError(f"{task} reads its questions from a local file (nothing is downloaded): give -T data=FILE, "
                        f"a JSON, JSONL or parquet file with {NEEDED[style]}")
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{task}: data file {path} does not exist")
    key = (str(file.resolve()), file.stat().st_mtime_ns, style)
    if key in _QA_CACHE:
        return _QA_CACHE[key]
    kind = "parquet" if file.suffix == ".parquet" else "json"
    try:
        import datasets

        rows = datasets.load_dataset(kind, data_files=str(file), split="train")
    except Exception as e:  # noqa: BLE001 (any reader error is the user's file)
        raise UserError(f"{task}: cannot read {path} as {kind}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    needed = ("question", "context", "answers") if style == "squad" else ("question", "answer", "context")
    missing = [f for f in needed if f not in rows.column_names]
    if missing:
        raise UserError(f"{task}: {path} lacks field(s) {', '.join(missing)}; each record needs {NEEDED[style]}")
    docs: dict[str, int] = {}
    records = []
    for row in rows:
        texts = [row["context"]] if style == "squad" else _hotpot_documents(row["context"])
        answers = _answers(row["answers"] if style == "squad" else row["answer"])
        if not answers or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            continue  # unanswerable (SQuAD 2.0) or empty: RULER skips these too
        gold = tuple(docs.setdefault(t, len(docs)) for t in dict.fromkeys(texts))
        records.append((str(row["question"]), answers, gold))
    if not records:
        raise UserError(f"{task}: {path} holds no answerable question with {NEEDED[style]}")
    data = QaData(tuple(records), tuple(docs))
    _QA_CACHE[key] = data
    return data


TASKS = ("vt", "cwe", "fwe", "qa_1", "qa_2")
"""RULER's non-needle tasks, as RULER names them."""
__all__ = ["BUDGET", "TASKS", "RulerTask", "load_qa", "prompt_record",
           *(c.__name__ for c in (VtParams, CweParams, FweParams, QaParams))]
