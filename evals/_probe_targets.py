"""What attention_probe probes: the needle task's prompts, a retrieval preset's or a RULER task's, as one uniform
ProbeTarget.

A target is a prompt, its gold answer, the needle's key span in the prompt (the needle's number, the asked
needle's value tokens of a retrieval prompt, or a RULER prompt's evidence that holds the first reference) and
the answer tokens that copy it. Pure functions of the prompt; the probing itself is in evals/attention_probe.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from harness.errors import UserError


@dataclass(frozen=True)
class ProbeTarget:
    """One prompt to probe, whichever task built it."""

    input_ids: tuple[int, ...]
    """the prompt's token ids"""
    answer_ids: tuple[int, ...]
    """the gold continuation, teacher-forced for the answer rows"""
    needle_span: tuple[int, int]
    """[start, end) of the needle's number or value tokens in input_ids (the mass measured)"""
    answer_digit_span: tuple[int, int]
    """[start, end) of the same number or value within answer_ids (the rows that copy it)"""
    answer: str
    """the gold answer as text (the number, or the asked values joined by ', ')"""
    context_length: int
    """requested (and actual) prompt length"""
    depth: float
    """requested depth of the needle"""
    score: Callable[[list[int], str], dict]
    """(generated ids, generated text) -> prediction, correct, ... (the prompt task's own scoring)"""
    record: Callable[[int], dict]
    """trial -> the prompt task's prompts.jsonl row"""
    stop: Callable[[Any], Callable[[list[int]], bool]]
    """tokenizer -> the prompt task's greedy stop rule"""


def _content(tokenizer: Any, ids: Sequence[int], start: int, end: int) -> tuple[int, int]:
    """[start, end) without leading tokens that decode to whitespace only (a lone ' ' before a value)."""
    while start < end - 1 and not tokenizer.decode([ids[start]]).strip():
        start += 1
    return start, end


def needle_target(tokenizer: Any, p) -> ProbeTarget:
    """A needle task prompt (harness.data.prompts.NeedlePrompt) as a target."""
    from evals.needle import prompt_record, score
    from harness.inference.decode import digits_settled

    return ProbeTarget(p.input_ids, p.answer_ids, tuple(p.needle_span), tuple(p.answer_digit_span), p.number,
                       p.context_length, p.depth, score=lambda ids, text: score(p, text),
                       record=lambda trial: prompt_record(p, trial), stop=digits_settled)


def retrieval_target(tokenizer: Any, p, task: str) -> ProbeTarget:
    """A retrieval prompt as a target: the asked needle at the cell's depth (its value tokens) and its copy in the answer."""
    from evals._retrieval_prompts import answer_settled, prompt_record, score

    value, start, end = p.value_spans[0]  # the first insert: the asked key's first needle, at the cell's depth
    if value not in p.asked_values:
        raise AssertionError("retrieval prompt construction broke: the needle at the depth is not asked")  # internal bug
    a, b = p.answer_value_spans[p.asked_values.index(value)]
    return ProbeTarget(p.input_ids, p.answer_ids, _content(tokenizer, p.input_ids, start, end),
                       _content(tokenizer, p.answer_ids, a, b), ", ".join(p.asked_values), p.context_length, p.depth,
                       score=lambda ids, text: score(p, ids, text), record=lambda trial: prompt_record(p, trial, task),
                       stop=answer_settled)


def _strip(tokenizer: Any, ids: Sequence[int], start: int, end: int) -> tuple[int, int]:
    """[start, end) without leading or trailing tokens that decode to whitespace only."""
    start, end = _content(tokenizer, ids, start, end)
    while end > start + 1 and not tokenizer.decode([ids[end - 1]]).strip():
        end -= 1
    return start, end


def text_span(tokenizer: Any, ids: Sequence[int], text: str) -> tuple[int, int] | None:
    """[start, end) of the fewest tokens of `ids` whose decoded text holds the first occurrence of `text`, or None."""
    full = tokenizer.decode(list(ids))
    at = full.find(text)
    if at < 0 or not text:
        return None
    ends = [len(tokenizer.decode(list(ids[:k]))) for k in range(len(ids) + 1)]  # chars decoded after k tokens
    start = max(k for k in range(len(ids)) if ends[k] <= at)
    end = min(k for k in range(start + 1, len(ids) + 1) if ends[k] >= at + len(text))
    return start, end


def ruler_target(tokenizer: Any, p, task: str, depth: float) -> ProbeTarget:
    """A RULER prompt (evals._ruler_build.RulerPrompt) as a target: the first evidence span that holds the first
    reference (else the first evidence span), content tokens only, and the first reference's tokens in the answer."""
    from evals._ruler_score import METRICS
    from evals.ruler import prompt_record

    first = p.references[0]
    spans = [s for s in p.evidence if first in tokenizer.decode(list(p.input_ids[s[0]:s[1]]))] or list(p.evidence)
    answer_span = text_span(tokenizer, p.answer_ids, first) or (0, len(p.answer_ids))

    def score(ids: list[int], text: str) -> dict:
        clean = tokenizer.decode(list(ids), skip_special_tokens=True)  # RULER scores text without special tokens
        value = METRICS[p.metric](clean, p.references)
        return {"prediction": clean.strip(), "ruler_score": value, "correct": value == 1.0}

    return ProbeTarget(p.input_ids, p.answer_ids, _strip(tokenizer, p.input_ids, *spans[0]),
                       _strip(tokenizer, p.answer_ids, *answer_span), "; ".join(p.references), p.context_length,
                       depth, score=score, record=lambda trial: prompt_record(p, task, trial), stop=lambda tok: None)


def prompt_source(prompts: str, params):
    """(task, its params) whose prompts the probe uses: needle (the probe's own params), a retrieval preset or a
    RULER task (vt, cwe, fwe, qa_1, qa_2: at least RULER's generation budget beyond the answer)."""
    from evals.retrieval import RetrievalTask
    from evals.ruler import BUDGET, TASKS
    from harness.task import get_task, list_tasks

    if prompts == "needle":
        return get_task("needle"), params
    if prompts in TASKS:
        task = get_task(prompts)
        shared = {k: getattr(params, k) for k in ("lengths", "trials", "seed", "template")}
        extra = ({"data": params.data} if prompts.startswith("qa") else
                 {"icl": params.icl} if prompts in ("vt", "cwe") else {})
        return task, task.Params(**shared, **extra, max_new_tokens=max(params.max_new_tokens, BUDGET[prompts]))
    family = [n for n in list_tasks() if isinstance(get_task(n), RetrievalTask)]
    if prompts not in family:
        raise UserError(f"prompts={prompts!r} is not allowed; use needle, a retrieval preset "
                        f"({', '.join(family)}) or a RULER task ({', '.join(TASKS)})")
    task = get_task(prompts)
    base = task.Params()
    shared = {k: getattr(params, k) for k in ("corpus", "lengths", "depths", "trials", "seed", "template",
                                              "prefix_cache")}
    return task, task.Params(**shared, max_new_tokens=max(params.max_new_tokens, base.max_new_tokens))


def target(task, params, tokenizer: Any, state, length: int, depth: float, trial: int) -> ProbeTarget:
    """The target of one cell from the prompt task's own builder."""
    from evals.ruler import RulerTask

    if isinstance(task, RulerTask):  # no depth: the cell's is nominal
        return ruler_target(tokenizer, task.prompt(params, tokenizer, state, length, trial), task.name, depth)
    p = task.prompt(params, tokenizer, state, length, depth, trial)
    if task.name == "needle":
        return needle_target(tokenizer, p)
    return retrieval_target(tokenizer, p, task.name)
