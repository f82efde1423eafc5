"""Token-exact prompts: a frame (plain or chat) around a haystack with any number of inserts at given depths.

A prompt is joined from token pieces, never re-tokenised as one string, so its length is exact and
the inserted tokens are known:  head + haystack[:at] + insert + haystack[at:] + question (+ answer prefix).
`at` is the last line or sentence boundary at or before depth * len(haystack). Pure functions.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Sequence

from harness.errors import UserError
from harness.data.haystack import (CITIES, DEFAULT_DIGITS, QUESTION_TEMPLATE, CorpusTooSmall, HaystackSource, answer_tokens,
                              check_depth, draw_needle, encode, needle_tokens, special_prefix)


@dataclass(frozen=True)
class NeedlePrompt:
    """A token-exact needle prompt: ids, where the number sits, the gold answer and what was adjusted."""

    input_ids: tuple[int, ...]
    """Prompt token ids, exactly `context_length` of them (BOS, haystack with needle, question)."""
    needle_span: tuple[int, int]
    """[start, end) of the needle number's tokens in `input_ids` (they decode to `number`)."""
    answer_ids: tuple[int, ...]
    """Gold continuation " {number}." as token ids (teacher-forced for answer_nll)."""
    city: str
    """City named in the needle and the question."""
    number: str
    """The needle's number as a string of digits."""
    depth: float
    """Requested depth in [0, 1]."""
    context_length: int
    """Requested (and actual) prompt length in tokens."""
    adjustments: tuple[str, ...]
    """One line per piece that was adjusted to hit the exact length or a boundary."""
    needle_start: int = 0
    """Index of the needle sentence's first token in `input_ids`."""
    haystack_tokens: int = 0
    """Number of corpus tokens in the prompt."""
    answer_digit_span: tuple[int, int] = (0, 0)
    """[start, end) of the number's tokens within `answer_ids`."""


CHAT_MARK = "\u2063lch-user-message\u2063"  # stands for the user message while the chat template renders


@dataclass(frozen=True)
class PromptFrame:
    """What surrounds the haystack: plain completion (BOS ... question, answer prefix) or a chat template."""

    head: tuple[int, ...]
    """tokens before the haystack: BOS, or the chat template up to the user message"""
    user_end: tuple[int, ...] = ()
    """chat only: tokens closing the user turn and opening the assistant's"""
    plain: bool = True
    """plain completion (True) or chat (False)"""

    def suffix(self, tokenizer: Any, question: str, answer_prefix: str) -> list[int]:
        """Tokens after the haystack: the question, then (in the assistant's turn for chat) the answer prefix."""
        if self.plain:  # one piece, as base models read it
            return encode(tokenizer, f"{question}\nAnswer: {answer_prefix}")
        return encode(tokenizer, question) + list(self.user_end) + encode(tokenizer, answer_prefix)


TEMPLATES = ("plain", "chat")


def plain_frame(tokenizer: Any) -> PromptFrame:
    """Plain completion: the tokenizer's BOS (if it adds one) before the haystack."""
    return PromptFrame(head=special_prefix(tokenizer))


def chat_frame(tokenizer: Any) -> PromptFrame:
    """The tokenizer's chat template around one user message (haystack + question), generation prompt on."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("template=chat needs a tokenizer with a chat template, and this one has none; use template=plain")
    text = tokenizer.apply_chat_template([{"role": "user", "content": CHAT_MARK}], tokenize=False,
                                         add_generation_prompt=True)
    if text.count(CHAT_MARK) != 1:
        raise UserError("template=chat: the tokenizer's chat template does not place the user message verbatim")
    head, tail = text.split(CHAT_MARK)
    return PromptFrame(head=tuple(encode(tokenizer, head)), user_end=tuple(encode(tokenizer, tail)), plain=False)


def prompt_frame(tokenizer: Any, template: str) -> PromptFrame:
    """The frame of a `template` task parameter: plain or chat."""
    if template not in TEMPLATES:
        raise UserError(f"unknown template {template!r}; allowed: {', '.join(TEMPLATES)}")
    return plain_frame(tokenizer) if template == "plain" else chat_frame(tokenizer)


@dataclass(frozen=True)
class Insert:
    """Tokens to place into a haystack at a depth, with named spans inside them (e.g. a value's tokens)."""

    ids: tuple[int, ...]
    """the inserted tokens (a needle sentence ending with a newline)"""
    depth: float
    """where it goes: fraction of the haystack in [0, 1], backed off to a line or sentence boundary"""
    spans: tuple[tuple[str, int, int], ...] = ()
    """(name, start, end) token spans relative to the insert's first token"""


@dataclass(frozen=True)
class BuiltPrompt:
    """A token-exact prompt: prefix + haystack with inserts + suffix, and where each insert landed."""

    input_ids: tuple[int, ...]
    """exactly the requested number of tokens"""
    starts: tuple[int, ...]
    """absolute index of each insert's first token, in the order the inserts were given"""
    spans: tuple[dict[str, tuple[int, int]], ...]
    """per insert: name -> absolute [start, end)"""
    haystack_tokens: int
    """corpus tokens in the prompt"""
    adjustments: tuple[str, ...]
    """one line per piece that was cut or moved to hit the exact length or a boundary"""


def build_prompt(source: HaystackSource, length: int, *, prefix: Sequence[int], inserts: Sequence[Insert],
                 suffix: Sequence[int], seed: int = 0, trial: int = 0) -> BuiltPrompt:
    """Exactly `length` tokens: prefix, the (seed, trial) haystack with every insert at its depth, suffix.

    Each insert goes on the last line or sentence boundary at or before depth * haystack length;
    inserts landing on the same boundary keep their given order. Raises UserError when the fixed parts
    alone exceed `length` or the corpus is too short.
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise UserError(f"context length {length!r} is not allowed; use a positive integer")
    for ins in inserts:
        check_depth(ins.depth)
    fixed = len(prefix) + sum(len(i.ids) for i in inserts) + len(suffix)
    n_hay = length - fixed
    if n_hay < 0:
        raise UserError(f"context length {length} is below the prompt's fixed parts (prefix, inserts, question: "
                        f"{fixed} tokens); the minimum is {fixed}")
    try:
        hay, bounds, used = source.haystack(n_hay, seed, trial)
    except CorpusTooSmall as e:
        raise UserError(f"context length {length} needs {n_hay} haystack tokens but corpus {source.name!r} holds "
                        f"only {e.available} for this tokenizer; the maximum is {e.available + fixed}") from None
    adjustments = [f"haystack: {used} document(s) cut to {n_hay} tokens to make the prompt exactly {length}"]
    places = []
    for k, ins in enumerate(inserts):
        target = int(ins.depth * n_hay)
        at = bounds[bisect.bisect_right(bounds, target) - 1]
        if at != target:
            adjustments.append(f"insert {k}: moved back {target - at} token(s) from {target} to the boundary at {at}")
        places.append((at, k))
    ids, starts, cursor = list(prefix), [0] * len(inserts), 0
    for at, k in sorted(places):
        ids += hay[cursor:at]
        cursor = at
        starts[k] = len(ids)
        ids += inserts[k].ids
    ids += hay[cursor:] + list(suffix)
    if len(ids) != length:
        raise AssertionError(f"prompt construction broke: {len(ids)} tokens for {length}")  # internal bug
    spans = tuple({name: (starts[k] + a, starts[k] + b) for name, a, b in ins.spans} for k, ins in enumerate(inserts))
    return BuiltPrompt(tuple(ids), tuple(starts), spans, n_hay, tuple(adjustments))


def build_needle_prompt(
    tokenizer: Any,
    source: HaystackSource,
    length: int,
    depth: float,
    *,
    seed: int = 0,
    trial: int = 0,
    cities: Sequence[str] = CITIES,
    digits: int = DEFAULT_DIGITS,
    frame: "PromptFrame | None" = None,
) -> NeedlePrompt:
    """A prompt of exactly `length` tokens: BOS, haystack with the needle at `depth`, question and answer prefix.

    The needle goes on the last line or sentence boundary at or before the depth-fraction point of
    the haystack (depth 0: right after BOS; depth 1: right before the question). `frame` wraps the
    haystack and question in a chat template (default: plain completion). Pure and deterministic in
    (seed, trial, length, depth).
    """
    depth = check_depth(depth)
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise UserError(f"context length {length!r} is not allowed; use a positive integer")
    needle = draw_needle(seed, trial, cities=cities, digits=digits)
    needle_ids, (n0, n1), adjustments = needle_tokens(tokenizer, needle)
    frame = frame or plain_frame(tokenizer)
    question, answer_prefix = QUESTION_TEMPLATE.format(city=needle.city).split("\nAnswer: ")
    suffix = frame.suffix(tokenizer, question, answer_prefix)
    answer, answer_span = answer_tokens(tokenizer, needle.number)
    built = build_prompt(source, length, prefix=frame.head, inserts=[Insert(tuple(needle_ids), depth, (("number", n0, n1),))],
                         suffix=suffix, seed=seed, trial=trial)
    span = built.spans[0]["number"]
    if tokenizer.decode(list(built.input_ids[span[0]:span[1]])).strip() != needle.number:
        raise AssertionError("needle prompt construction broke: the number's tokens moved")  # internal bug
    return NeedlePrompt(
        input_ids=built.input_ids, needle_span=span, answer_ids=tuple(answer), city=needle.city,
        number=needle.number, depth=depth, context_length=length,
        adjustments=tuple(adjustments) + built.adjustments, needle_start=built.starts[0],
        haystack_tokens=built.haystack_tokens, answer_digit_span=answer_span,
    )
