"""Token-exact prompts of RULER's non-needle tasks: vt, cwe, fwe, qa. Pure functions; imports no torch.

Every prompt is joined from token pieces (never re-tokenised as one string): frame head, RULER's preamble,
the task's context, RULER's question and answer prefix (evals/_ruler_text.py). The context is grown to the
largest size that fits (as RULER's sizing loop does, but counting every token of the prompt), and the few
tokens left over are padding right after the preamble: whole lines of RULER's noise, then newline tokens.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from evals._ruler_text import (CWE_PREAMBLE, CWE_PREFIX, CWE_QUESTION, FWE_PREAMBLE, FWE_PREFIX, FWE_QUESTION,
                               NOISE, QA_DOCUMENT, QA_PREAMBLE, QA_PREFIX, QA_QUESTION, VT_PREAMBLE, VT_PREFIX,
                               VT_QUESTION, ruler_suffix)
from harness.errors import UserError
from harness.data.filler import FillerSource, LineSource
from harness.data.haystack import encode
from harness.data.prompts import Insert, PromptFrame, build_prompt

WORDS_FILE = Path(__file__).parent / "data" / "ruler_words.txt"


@dataclass(frozen=True)
class RulerPrompt:
    """A token-exact prompt of a RULER task, its references and where the evidence sits."""

    input_ids: tuple[int, ...]
    """exactly `context_length` token ids; the answer prefix ends them"""
    answer_ids: tuple[int, ...]
    """gold continuation as token ids (teacher-forced for answer_nll)"""
    references: tuple[str, ...]
    """what RULER's scorer looks for in the generation"""
    metric: str
    """all (every reference) or part (any reference)"""
    context_length: int
    """requested (and actual) prompt length"""
    evidence: tuple[tuple[int, int], ...]
    """[start, end) token spans in input_ids that hold the answer's evidence"""
    padding: int
    """noise tokens added to hit the exact length"""


@dataclass(frozen=True)
class Frame:
    """What every prompt of one model shares: the prompt frame and the noise source for padding."""

    frame: PromptFrame
    noise: FillerSource


def noise_frame(tokenizer: Any, frame: PromptFrame) -> Frame:
    """The frame plus RULER's noise sentence (one per line) as a padding source."""
    return Frame(frame, FillerSource(tokenizer, NOISE + "\n", name="ruler-noise"))


def _rng(task: str, seed: int, trial: int, *extra) -> random.Random:
    return random.Random(":".join(map(str, ("lch-ruler", task, seed, trial, *extra))))


def _too_short(task: str, length: int, need: int, what: str) -> UserError:
    return UserError(f"{task}: context length {length} is too short: {what} takes {need} tokens; use lengths >= {need}")


def assemble(tokenizer: Any, fr: Frame, length: int, preamble: str, body: Sequence[int], question: str,
             answer_prefix: str, task: str, example: Sequence[int] = ()) -> tuple[list[int], int, int]:
    """(ids, offset of body in ids, padding): head + solved example + preamble + noise padding + body + question +
    answer prefix."""
    head = list(fr.frame.head) + list(example) + encode(tokenizer, preamble)
    suffix = ruler_suffix(fr.frame, tokenizer, question, answer_prefix)
    pad = length - len(head) - len(body) - len(suffix)
    if pad < 0:
        raise _too_short(task, length, len(head) + len(body) + len(suffix), "the prompt")
    ids = head + padding(tokenizer, fr, pad) + list(body) + suffix
    return ids, len(head) + pad, pad


def padding(tokenizer: Any, fr: Frame, n: int) -> list[int]:
    """n tokens of padding: whole noise lines, then newline tokens (or the noise cut, where a newline is not one token)."""
    unit = list(fr.noise.unit)
    whole = unit * (n // len(unit))
    newline = encode(tokenizer, "\n")
    rest = n - len(whole)
    return whole + (newline * rest if len(newline) == 1 else unit[:rest])


def fixed_tokens(tokenizer: Any, fr: Frame, preamble: str, question: str, answer_prefix: str,
                 example: Sequence[int] = ()) -> int:
    """Tokens of a prompt outside its context."""
    return len(fr.frame.head) + len(example) + len(encode(tokenizer, preamble)) + len(
        ruler_suffix(fr.frame, tokenizer, question, answer_prefix))


EXAMPLE_TOKENS = 500
"""RULER sizes vt's solved example to this many tokens, its generation budget included"""


def solved(preamble: str, context: str, question: str, answer_prefix: str, answer: str, gap: str) -> str:
    """A solved example as RULER writes it: the task's template filled in, the answer after the prefix, a gap."""
    return f"{preamble}{context}{question} {answer_prefix} {answer}{gap}"


def vt_example(tokenizer: Any, length: int, *, seed: int, trial: int, hops: int, avoid: str,
               generate: int = 30) -> list[int]:
    """RULER's solved vt example: one chain of min(hops, 10) hops over 3-letter names among noise lines, as many
    lines (a multiple of 5) as keep it and the generation budget within EXAMPLE_TOKENS (within a quarter of the
    prompt below 2000 tokens, where RULER has no lengths); its value is never `avoid`."""
    budget = min(EXAMPLE_TOKENS, length // 4)
    rng = _rng("vt-example", seed, trial, hops)
    hops = min(hops, 10)
    names: list[str] = []
    while len(names) < hops + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=3))
        if name not in names:
            names.append(name)
    value = avoid
    while value == avoid:
        value = str(rng.randint(10000, 99999))
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {b} = VAR {a}" for a, b in zip(names, names[1:])]
    slots = [rng.random() for _ in chain]

    def text(noises: int) -> str:
        lines = [NOISE] * noises
        for j, (line, at) in enumerate(zip(chain, sorted(slots))):  # RULER: sorted positions, chain in order
            lines.insert(int(at * (noises + 1)) + j, line)
        return solved(VT_PREAMBLE, "".join(x + "\n" for x in lines), VT_QUESTION.format(query=value),
                      VT_PREFIX.format(num_v=hops + 1, query=value), " ".join(names), "\n\n")

    noises = 0
    while len(encode(tokenizer, text(noises + 5))) + generate <= budget:
        noises += 5
    return encode(tokenizer, text(noises))


def cwe_example(tokenizer: Any, length: int, *, seed: int, trial: int, common: int, avoid: Sequence[str],
                pool: Sequence[str]) -> list[int]:
    """RULER's solved cwe example: `common` words x 3 and 10 others once below 4096 tokens (x 10 and 30 others x 3
    from 4096), numbered and shuffled, then its answer; words outside `avoid` (the prompt's own common words)."""
    rng = _rng("cwe-example", seed, trial, length >= 4096)
    others, (cr, ur) = (10, (3, 1)) if length < 4096 else (30, (10, 3))
    words = rng.sample([w for w in pool if w not in set(avoid)], common + others)
    listing = words[:common] * cr + words[common:] * ur
    rng.shuffle(listing)
    numbered = lambda ws: " ".join(f"{i}. {w}" for i, w in enumerate(ws, 1))  # noqa: E731
    return encode(tokenizer, solved(CWE_PREAMBLE, numbered(listing), CWE_QUESTION, CWE_PREFIX,
                                    numbered(words[:common]), "\n"))


# ---------------------------------------------------------------------------------------------- vt


def draw_chains(seed: int, trial: int, chains: int, hops: int) -> tuple[list[list[str]], list[str]]:
    """Variable names (5 upper-case letters, all distinct) per chain and each chain's 5-digit value (distinct)."""
    rng = _rng("vt", seed, trial, chains, hops)
    names: list[str] = []
    while len(names) < chains * (hops + 1):
        name = "".join(rng.choices(string.ascii_uppercase, k=5))
        if name not in names:
            names.append(name)
    values: list[str] = []
    while len(values) < chains:
        value = str(rng.randint(10000, 99999))
        if value not in values:
            values.append(value)
    return [names[i * (hops + 1):(i + 1) * (hops + 1)] for i in range(chains)], values


def vt_prompt(tokenizer: Any, fr: Frame, length: int, *, seed: int, trial: int, chains: int = 1,
              hops: int = 4, icl: bool = False) -> RulerPrompt:
    """Variable tracking: chains 'VAR A = 12345', 'VAR B = VAR A', ... as lines among noise lines; asked: chain 0;
    with icl, RULER's solved example (vt_example) first."""
    names, values = draw_chains(seed, trial, chains, hops)
    example = vt_example(tokenizer, length, seed=seed, trial=trial, hops=hops, avoid=values[0]) if icl else []
    rng = _rng("vt-depths", seed, trial, chains, hops)
    inserts = []
    for chain, value in zip(names, values):
        lines = [f"VAR {chain[0]} = {value}\n"] + [f"VAR {b} = VAR {a}\n" for a, b in zip(chain, chain[1:])]
        for text, depth in zip(lines, sorted(rng.random() for _ in lines)):
            ids = encode(tokenizer, text)
            inserts.append(Insert(tuple(ids), depth, (("line", 0, len(ids)),)))
    question = VT_QUESTION.format(query=values[0])
    prefix_text = VT_PREFIX.format(num_v=hops + 1, query=values[0])
    head = list(fr.frame.head) + example + encode(tokenizer, VT_PREAMBLE)
    suffix = ruler_suffix(fr.frame, tokenizer, question, prefix_text)
    fixed = len(head) + sum(len(i.ids) for i in inserts) + len(suffix)
    if fixed > length:
        raise _too_short("vt", length, fixed, f"{chains} chain(s) of {hops} hop(s) with the question"
                         + (" and RULER's solved example (-T icl=false leaves it out)" if icl else ""))
    noise_ids = tuple(fr.noise.unit)
    source = LineSource(lambda: itertools.repeat((noise_ids, None)), fr.noise, name="ruler-noise")
    built = build_prompt(source, length, prefix=head, inserts=inserts, suffix=suffix, seed=seed, trial=trial)
    evidence = tuple(s["line"] for s in built.spans[: hops + 1])
    answer = encode(tokenizer, " " + " ".join(names[0]))
    padding = (length - fixed) % len(noise_ids)
    return RulerPrompt(built.input_ids, tuple(answer), tuple(names[0]), "all", length, evidence, padding)


# ---------------------------------------------------------------------------------------------- cwe


def word_pool() -> list[str]:
    """The cwe word list (evals/data/ruler_words.txt), in file order."""
    lines = (line.strip() for line in WORDS_FILE.read_text().splitlines())
    return [w for w in lines if w and not w.startswith("#")]


def cwe_repeats(length: int, common: int, uncommon: int) -> tuple[int, int]:
    """RULER's repeats of common and uncommon words: 6 and 1 below 4096 tokens, 30 and 3 from 4096 (0 = RULER's)."""
    small = length < 4096
    return common or (6 if small else 30), uncommon or (1 if small else 3)


def cwe_prompt(tokenizer: Any, fr: Frame, length: int, *, seed: int, trial: int, common: int = 10,
               common_repeats: int = 0, uncommon_repeats: int = 0, pool: Sequence[str] | None = None,
               icl: bool = False) -> RulerPrompt:
    """Common words extraction: a numbered list where `common` words appear more often than every other word;
    with icl, RULER's solved example (cwe_example) first."""
    pool = list(pool if pool is not None else word_pool())
    cr, ur = cwe_repeats(length, common_repeats, uncommon_repeats)
    if cr <= ur:
        raise UserError(f"cwe: common_repeats={cr} must be more than uncommon_repeats={ur}")
    words = _rng("cwe", seed, trial).sample(pool, len(pool))
    top, rest = words[:common], words[common:]
    example = cwe_example(tokenizer, length, seed=seed, trial=trial, common=common, avoid=top, pool=pool) if icl else []
    budget = length - fixed_tokens(tokenizer, fr, CWE_PREAMBLE, CWE_QUESTION, CWE_PREFIX, example)
    cost = {w: len(encode(tokenizer, " " + w)) for w in top}
    number = lambda i: encode(tokenizer, (" " if i > 1 else "") + f"{i}.")  # noqa: E731
    number_cost: list[int] = [0]  # number_cost[n]: tokens of the numbers 1..n
    def numbers(n: int) -> int:
        while len(number_cost) <= n:
            number_cost.append(number_cost[-1] + len(number(len(number_cost))))
        return number_cost[n]
    words_cost, entries = cr * sum(cost.values()), cr * common
    if numbers(entries) + words_cost > budget:
        raise _too_short("cwe", length, length - budget + numbers(entries) + words_cost,
                         f"{common} words x {cr} repeats (fewer with -T common_repeats=N)"
                         + (" and RULER's solved example (-T icl=false leaves it out)" if icl else ""))
    used = 0
    while used < len(rest):
        w = rest[used]
        cost[w] = len(encode(tokenizer, " " + w))
        if numbers(entries + ur) + words_cost + ur * cost[w] > budget:
            break
        words_cost, entries, used = words_cost + ur * cost[w], entries + ur, used + 1
    else:
        raise UserError(f"cwe: context length {length} needs more than the {len(pool)} words of {WORDS_FILE.name}; "
                        f"use shorter lengths")
    listing = top * cr + rest[:used] * ur
    _rng("cwe-order", seed, trial, length).shuffle(listing)
    body, spans = [], []
    for i, w in enumerate(listing, 1):
        body += number(i)
        piece = encode(tokenizer, " " + w)
        if w in top:
            spans.append((len(body), len(body) + len(piece)))
        body += piece
    ids, offset, pad = assemble(tokenizer, fr, length, CWE_PREAMBLE, body, CWE_QUESTION, CWE_PREFIX, "cwe", example)
    answer = encode(tokenizer, "".join(f" {i}. {w}" for i, w in enumerate(top, 1)))
    return RulerPrompt(tuple(ids), tuple(answer), tuple(top), "all", length,
                       tuple((offset + a, offset + b) for a, b in spans), pad)


# ---------------------------------------------------------------------------------------------- fwe


@functools.lru_cache(maxsize=16)
def zeta(alpha: float) -> float:
    """Riemann zeta(alpha) for alpha > 1 (partial sum plus the integral of the tail)."""
    n = 100_000
    return math.fsum(k ** -alpha for k in range(1, n + 1)) + n ** (1 - alpha) / (alpha - 1)


def fwe_counts(n_words: int, vocab: int, alpha: float) -> list[int]:
    """RULER's Zipf counts: int(n_words * k^-alpha / zeta(alpha)) for ranks k = 1..vocab."""
    z = zeta(alpha)
    return [int(n_words * k ** -alpha / z) for k in range(1, vocab + 1)]


def coded_words(seed: int, trial: int, vocab: int, size: int) -> list[str]:
    """`vocab` distinct coded words of `size` lower-case letters; the first is '...' (RULER's noise rank)."""
    rng = _rng("fwe", seed, trial, vocab, size)
    words: list[str] = []
    while len(words) < vocab:
        w = "".join(rng.choices(string.ascii_lowercase, k=size))
        if w not in words:
            words.append(w)
    words[0] = "..."
    return words


def fwe_prompt(tokenizer: Any, fr: Frame, length: int, *, seed: int, trial: int, vocab: int = 0, alpha: float = 2.0,
               word_length: int = 6) -> RulerPrompt:
    """Frequent words extraction: coded words with Zipf counts; the answer is ranks 2-4 (rank 1 is '...' noise)."""
    vocab = vocab or length // 50
    if vocab < 5:
        raise UserError(f"fwe: vocabulary {vocab} is below 5 (noise, 3 answers, one other); use -T vocab=5 or more, "
                        f"or lengths >= 250 (RULER's vocabulary is length // 50)")
    words = coded_words(seed, trial, vocab, word_length)
    cost = [len(encode(tokenizer, " " + w)) for w in words]
    budget = length - fixed_tokens(tokenizer, fr, FWE_PREAMBLE, FWE_QUESTION, FWE_PREFIX)
    total = lambda n: sum(c * k for c, k in zip(fwe_counts(n, vocab, alpha), cost))  # noqa: E731
    lo, hi = 0, max(budget, 0) * 4 + 64  # every word costs >= 1 token, and the counts sum to < n
    while lo < hi:  # largest n whose words fit
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if total(mid) <= budget else (lo, mid - 1)
    counts = fwe_counts(lo, vocab, alpha)
    if budget < 0 or counts[3] <= max(counts[4:]) or counts[4] < 1:  # three clear winners, and a fourth word to beat
        raise UserError(f"fwe: context length {length} is too short for three clearly most frequent words among "
                        f"others (counts {counts[1:5]} at alpha={alpha}); use longer lengths")
    stream = [w for w, c in zip(words, counts) for _ in range(c)]
    _rng("fwe-order", seed, trial, length).shuffle(stream)
    answers = words[1:4]
    body, spans = [], []
    for w in stream:
        piece = encode(tokenizer, " " + w)
        if w in answers:
            spans.append((len(body), len(body) + len(piece)))
        body += piece
    ids, offset, pad = assemble(tokenizer, fr, length, FWE_PREAMBLE, body, FWE_QUESTION, FWE_PREFIX, "fwe")
    answer = encode(tokenizer, " " + " ".join(answers))
    return RulerPrompt(tuple(ids), tuple(answer), tuple(answers), "all", length,
                       tuple((offset + a, offset + b) for a, b in spans), pad)


# ---------------------------------------------------------------------------------------------- qa


@dataclass(frozen=True)
class QaData:
    """Questions with their gold documents, and every distinct document of the file (the distractor pool)."""

    records: tuple[tuple[str, tuple[str, ...], tuple[int, ...]], ...]
    """(question, answers, indices of its gold documents)"""
    documents: tuple[str, ...]


def qa_prompt(tokenizer: Any, fr: Frame, length: int, data: QaData, *, seed: int, trial: int,
              cache: dict | None = None) -> RulerPrompt:
    """QA: the trial's gold documents plus as many distractor documents as fit, shuffled, numbered, then the question."""
    cache = cache if cache is not None else {}
    order = _rng("qa", seed, 0).sample(range(len(data.records)), len(data.records))
    if trial >= len(order):
        raise UserError(f"qa: trial {trial} needs more questions than the file's {len(order)}; use fewer trials")
    question, answers, gold = data.records[order[trial]]

    def doc(i: int) -> list[int]:
        if i not in cache:
            cache[i] = encode(tokenizer, data.documents[i])
        return cache[i]

    header = lambda n: encode(tokenizer, ("\n\n" if n > 1 else "") + QA_DOCUMENT.format(i=n, document=""))  # noqa: E731
    q = QA_QUESTION.format(query=question)
    budget = length - fixed_tokens(tokenizer, fr, QA_PREAMBLE, q, QA_PREFIX)
    chosen = list(gold)
    used = sum(len(header(n)) for n in range(1, len(chosen) + 1)) + sum(len(doc(i)) for i in chosen)
    if used > budget:
        raise _too_short("qa", length, length - budget + used, f"question {trial}'s {len(gold)} gold document(s)")
    rng = _rng("qa-docs", seed, trial)
    others = [i for i in rng.sample(range(len(data.documents)), len(data.documents)) if i not in gold]
    for i in others:
        more = len(header(len(chosen) + 1)) + len(doc(i))
        if used + more > budget:
            break
        chosen.append(i)
        used += more
    _rng("qa-order", seed, trial, length).shuffle(chosen)
    body, spans = [], []
    for n, i in enumerate(chosen, 1):
        body += header(n)
        if i in gold:
            spans.append((len(body), len(body) + len(doc(i))))
        body += doc(i)
    ids, offset, pad = assemble(tokenizer, fr, length, QA_PREAMBLE, body, q, QA_PREFIX, "qa")
    answer = encode(tokenizer, " " + answers[0])
    return RulerPrompt(tuple(ids), tuple(answer), tuple(answers), "part", length,
                       tuple((offset + a, offset + b) for a, b in spans), pad)
