"""Prompt material of the retrieval family: keys and values, needle lines, questions, answers, scoring.

Pure functions of (params, tokenizer, seed, trial); the task is in evals/retrieval.py, the presets in
evals/retrieval_presets.py. Imports no torch.
"""


from __future__ import annotations

import random
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evals._prompted import PromptState
from harness.columns import CONTEXT_LENGTH, CORRECT, DEPTH, TRIAL
from harness.errors import UserError
from harness.data.filler import LineSource
from harness.data.haystack import check_depth, encode
from harness.data.prompts import Insert, build_prompt
from evals._ruler_score import string_match_all
from evals._ruler_text import NIAH_NEEDLE, NIAH_NOUN, niah_strings, ruler_query, ruler_suffix

KINDS = ("word", "number", "uuid")
"""Key and value kinds: word (adjective-noun), number (7 digits, first never 0), uuid (version 4)."""
HAYSTACKS = ("corpus", "filler", "needles")
"""corpus: text of `corpus`; filler: repeated filler sentences; needles: distractor needles only."""
STYLES = ("niah", "passkey")
"""niah: keyed needles ("One hidden number of K is V."); passkey: one unkeyed "The pass key is V." line."""
WORDINGS = ("lch", "ruler")
"""lch: this project's needle, preamble and question; ruler: RULER's strings (evals/_ruler_text.py), its noise
filler, a space before a needle in corpus text, and distractor depths drawn from RULER's 40-point depth grid."""
RULER_DEPTHS = tuple(round(i * 100 / 39) / 100 for i in range(40))
"""RULER's needle depths: round(linspace(0, 100, 40)) percent."""
NUMBER_DIGITS = 7
MIN_NEEDLE_TOKENS = 6  # no tokenizer we know puts a needle line in fewer tokens (exact check: when building)

ADJECTIVES = (
    "amber", "brisk", "calm", "dusty", "eager", "faint", "gentle", "hollow", "icy", "jolly", "keen", "lanky",
    "mellow", "narrow", "olive", "pale", "quiet", "rusty", "silent", "tidy", "upper", "vivid", "wary", "young",
    "bold", "crisp", "dim", "early", "fuzzy", "grand", "hasty", "idle", "jagged", "kind", "loud", "misty",
    "noble", "odd", "proud", "rapid",
)
NOUNS = (
    "anchor", "basket", "candle", "desert", "engine", "falcon", "garden", "harbor", "island", "jacket",
    "kettle", "ladder", "meadow", "needle", "orchard", "pepper", "quarry", "river", "saddle", "tunnel",
    "valley", "wagon", "willow", "yard", "bridge", "castle", "dragon", "feather", "glacier", "hammer",
    "lantern", "marble", "nest", "oyster", "pillow", "rocket", "shovel", "teapot", "violin", "window",
    "acorn", "button", "cobweb", "dolphin", "ember", "fountain", "goblet", "helmet", "iris", "jungle",
    "kitten", "lemon", "mirror", "napkin", "otter", "pebble", "ribbon", "spoon", "thimble", "umbrella",
)
VALUE_NOUN = {"number": "number", "uuid": "code", "word": "word"}

PREAMBLE = {
    "niah": "Hidden {noun}s are scattered through the text below. Remember them: a question about them follows.\n",
    "passkey": "Somewhere in the filler below there is one pass key. Find it and keep it in mind; you will be asked for it.\n",
}



@dataclass(frozen=True)
class RetrievalParams:
    """Parameters of the retrieval family (the presets change only defaults)."""

    haystack: str = "corpus"
    """What surrounds the needles: corpus (text of `corpus`), filler (repeated filler sentences) or needles (distractor needles only)."""
    corpus: str = "builtin:stdlib"
    """Haystack text when haystack=corpus: builtin:stdlib, a .txt/.jsonl/.parquet file or folder, or hf:NAME[:CONFIG][:SPLIT] (held-out split)."""
    keys: int = 1
    """Keys with needles in the prompt: the asked ones plus distractors (other keys of the same kind)."""
    values: int = 1
    """Values (needles) per key; every value of an asked key must come back."""
    queries: int = 1
    """Keys asked at once (the first `queries` keys; the rest are distractors); at most `keys`."""
    key_kind: str = "word"
    """Kind of the keys: word (adjective-noun), number (7 digits) or uuid."""
    value_kind: str = "number"
    """Kind of the values: word (adjective-noun), number (7 digits) or uuid."""
    style: str = "niah"
    """niah: keyed needles and a question naming the keys; passkey: one "pass key" line (keys=values=queries=1)."""
    lengths: tuple[int, ...] = (256, 512, 1024)
    """Context lengths in tokens; each prompt is exactly this long."""
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    """Depths of the asked key's first needle (0 = haystack start, 1 = right before the question); other needles spread evenly."""
    trials: int = 4
    """Prompts per (length, depth); trial t has the same haystack order everywhere and the same keys and values at every length (and, with wording=lch, every depth; RULER's wording draws them per depth)."""
    seed: int = 0
    """Seed of keys, values, needle order and haystack order (identical for every model)."""
    template: str = "plain"
    """plain: completion with an answer prefix (base models); chat: the tokenizer's chat template, answer prefix in the assistant turn."""
    max_new_tokens: int = 4
    """Tokens greedy decoding may generate beyond the gold answer's length."""
    threshold: float = 0.8
    """Accuracy a length (and every shorter one) must reach to count towards the effective length."""
    save_prompts: bool = False
    """Write RUN_DIR/prompts.jsonl (input_ids, asked values and their spans, answer_ids per prompt) to inspect or re-score."""
    prefix_cache: bool = True
    """Share each trial's haystack prefill across its depths and lengths (latest needle first); false: one prefill per prompt (same tables)."""
    wording: str = "lch"
    """lch: this project's needle, preamble and question; ruler: RULER's strings, noise filler and depth sampling (niah_* presets)."""


def draw_item(kind: str, rng: random.Random, used: set) -> str:
    """A fresh key or value of `kind` (never one in `used`, which it joins); UserError if words run out."""
    if kind not in KINDS:
        raise UserError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    for _ in range(10_000):
        if kind == "number":
            item = str(rng.randint(10 ** (NUMBER_DIGITS - 1), 10**NUMBER_DIGITS - 1))
        elif kind == "uuid":
            item = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        else:
            item = f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"
        if item not in used:
            used.add(item)
            return item
    raise UserError(f"ran out of distinct {kind} keys/values ({len(used)} drawn); use key_kind=uuid or fewer needles")


@dataclass(frozen=True)
class Draw:
    """The needles of one (seed, trial): keys (asked first), their values, and where the other needles go."""

    keys: tuple[str, ...]
    """every key with needles; the first `queries` are asked, the rest are distractors"""
    values: tuple[tuple[str, ...], ...]
    """values per key (same order as keys)"""
    queries: int
    """how many of the keys are asked"""
    spread: tuple[float, ...]
    """depths of the needles after the first (key 0, value 0), in needle order (key-major)"""

    @property
    def asked(self) -> tuple[str, ...]:
        return self.keys[: self.queries]

    @property
    def distractors(self) -> tuple[str, ...]:
        return self.keys[self.queries:]


def draw(params: RetrievalParams, trial: int, depth: float = 0.0) -> Draw:
    """Keys, values and the spread of the non-primary needles for (params.seed, trial), the same at every length;
    under wording=ruler also per depth (RULER draws every sample afresh), else the same at every depth."""
    per_depth = f":{float(depth)!r}" if params.wording == "ruler" else ""
    rng = random.Random(f"lch-retrieval:{params.seed}:{trial}:{params.key_kind}:{params.value_kind}{per_depth}")
    used: set = set()
    n_keys = params.keys
    keys = tuple("pass key" if params.style == "passkey" else draw_item(params.key_kind, rng, used)
                 for _ in range(n_keys))
    values = tuple(tuple(draw_item(params.value_kind, rng, used) for _ in range(params.values)) for _ in keys)
    others = n_keys * params.values - 1
    if params.wording == "ruler":  # RULER samples every needle's depth; the asked one is the cell's
        spread = rng.sample(RULER_DEPTHS, others) if others <= len(RULER_DEPTHS) else [rng.random() for _ in range(others)]
    else:
        spread = [(i + 0.5) / others for i in range(others)]
        rng.shuffle(spread)
    return Draw(keys, values, params.queries, tuple(spread))


# ------------------------------------------------------------------------------------------ prompts


@dataclass(frozen=True)
class RetrievalPrompt:
    """A token-exact retrieval prompt, its gold answer, and every value placed in it."""

    input_ids: tuple[int, ...]
    """prompt token ids, exactly `context_length` of them; the answer prefix ends them"""
    answer_ids: tuple[int, ...]
    """gold continuation " v1, v2." as token ids (teacher-forced for answer_nll)"""
    answer_value_spans: tuple[tuple[int, int], ...]
    """[start, end) of each asked value's tokens within answer_ids"""
    first_value_token: int
    """index in answer_ids of the first token holding a character of the first value (not a lone space)"""
    asked_keys: tuple[str, ...]
    """keys the question asks for"""
    asked_values: tuple[str, ...]
    """the gold values, in answer order"""
    distractor_keys: tuple[str, ...]
    """keys of the inserted distractor needles"""
    placed_values: tuple[str, ...]
    """every value in the prompt (inserted needles, then haystack needles)"""
    value_spans: tuple[tuple[str, int, int], ...]
    """(value, start, end) of each inserted needle's value tokens in input_ids"""
    depth: float
    """requested depth of the asked key's first needle"""
    context_length: int
    """requested (and actual) prompt length"""
    needle_start: int
    """index of the asked key's first needle's first token"""
    adjustments: tuple[str, ...]
    """one line per piece that was moved or cut to hit the exact length or a boundary"""


def _needle_pieces(style: str, value_kind: str, key: str, wording: str = "lch", lead: str = "") -> tuple[str, str]:
    """(text before the value, text after it) of a needle line; `lead` goes before it (a space in running text)."""
    if wording == "ruler" and style == "niah":
        return lead + NIAH_NEEDLE.format(noun=NIAH_NOUN[value_kind], key=key), ".\n"
    if style == "passkey":
        return "The pass key is", ". Remember it.\n"
    return f"One hidden {VALUE_NOUN[value_kind]} of {key} is", ".\n"


def needle_ids(tokenizer: Any, style: str, value_kind: str, key: str, value: str, wording: str = "lch",
               lead: str = "") -> tuple[list[int], tuple[int, int]]:
    """A needle line as ids (before, value, after tokenised apart: the value keeps its own tokens) and its value span."""
    head, tail = _needle_pieces(style, value_kind, key, wording, lead)
    a, v, b = encode(tokenizer, head), encode(tokenizer, " " + value), encode(tokenizer, tail)
    return a + v + b, (len(a), len(a) + len(v))


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def question_and_prefix(style: str, value_kind: str, asked: Sequence[str], n_values: int,
                        wording: str = "lch") -> tuple[str, str]:
    """(question after the haystack, answer prefix that ends the prompt)."""
    if wording == "ruler" and style == "niah":
        _, question, prefix = niah_strings(NIAH_NOUN[value_kind], ruler_query(asked), len(asked) * n_values == 1)
        return question, prefix
    if style == "passkey":
        return "\n\nQuestion: What is the pass key?", "The pass key is"
    noun = VALUE_NOUN[value_kind]
    if len(asked) == 1 and n_values == 1:
        return f"\n\nQuestion: What is the hidden {noun} of {asked[0]}?", f"The hidden {noun} of {asked[0]} is"
    keys = _join(list(asked))
    every = "all " if n_values > 1 else ""
    return f"\n\nQuestion: What are {every}the hidden {noun}s of {keys}?", f"The hidden {noun}s of {keys} are"


def answer_ids(tokenizer: Any, values: Sequence[str]) -> tuple[list[int], tuple[tuple[int, int], ...]]:
    """Gold answer " v1, v2, v3." as ids (each value tokenised on its own) and each value's span."""
    ids: list[int] = []
    spans = []
    for i, value in enumerate(values):
        if i:
            ids += encode(tokenizer, ",")
        piece = encode(tokenizer, " " + value)
        spans.append((len(ids), len(ids) + len(piece)))
        ids += piece
    ids += encode(tokenizer, ".")
    return ids, tuple(spans)


def parse_values(text: str) -> list[str]:
    """Values in a generated answer: up to the first '.' or newline, split on ',' (and ' and '); a leading ':' and
    quotes or '**' around a value are dropped (RULER's wording invites ': 3390659.')."""
    head = re.split(r"[.\n]", re.sub(r"^[ :]*", "", text), maxsplit=1)[0]
    parts = re.split(r",| and ", head)
    return [v for v in (p.strip().strip("*\"'`").strip() for p in parts) if v]


def answer_settled(tokenizer, wording: str = "lch") -> Any:
    """Stop rule for greedy decoding: the answer has reached its '.' or a newline (the parse cannot change);
    under RULER's wording only a '.' or newline after some word character (RULER reads the whole generation)."""
    pattern = r"\w[^\n]*?[.\n]" if wording == "ruler" else r"[.\n]"

    def stop(tokens: list[int]) -> bool:
        text = tokenizer.decode(tokens, skip_special_tokens=True).lstrip(" ")
        return bool(re.search(pattern, text))
    return stop


def score(prompt: RetrievalPrompt, generated_ids: Sequence[int], generated_text: str) -> dict:
    """prediction, correct (every asked value back), recall (fraction back), first_token_correct, and
    ruler_score (RULER's string_match_all); pass the text decoded without special tokens."""
    pred = parse_values(generated_text)
    gold = list(prompt.asked_values)
    hits = sum(1 for v in gold if v in pred)
    first_end = prompt.first_value_token + 1  # up to and including the first value's first real token
    return {"prediction": ", ".join(pred), CORRECT: hits == len(gold), "recall": hits / len(gold),
            "first_token_correct": list(generated_ids[:first_end]) == list(prompt.answer_ids[:first_end]),
            "ruler_score": string_match_all(generated_text, gold)}


def build_retrieval_prompt(params: RetrievalParams, tokenizer: Any, state: PromptState, length: int,
                           depth: float, trial: int) -> RetrievalPrompt:
    """The prompt of one (length, depth, trial): pure and deterministic in (params, trial, length, depth)."""
    depth = check_depth(depth)
    d = draw(params, trial, depth)
    style, vk, wording = params.style, params.value_kind, params.wording
    lead = " " if wording == "ruler" and params.haystack == "corpus" else ""
    inserts, order = [], []
    spread = iter(d.spread)
    for k, key in enumerate(d.keys):
        for j, value in enumerate(d.values[k]):
            ids, (a, b) = needle_ids(tokenizer, style, vk, key, value, wording, lead)
            at = depth if (k, j) == (0, 0) else next(spread)
            inserts.append(Insert(tuple(ids), at, (("value", a, b),)))
            order.append((k, j))
    question, prefix_text = question_and_prefix(style, vk, d.asked, params.values, wording)
    if wording == "ruler" and style == "niah":
        preamble = niah_strings(NIAH_NOUN[vk], "", len(d.asked) * params.values == 1)[0]
        suffix = ruler_suffix(state.frame, tokenizer, question, prefix_text)
    else:
        preamble = PREAMBLE[style].format(noun=VALUE_NOUN[vk])
        suffix = state.frame.suffix(tokenizer, question, prefix_text)
    prefix = list(state.frame.head) + encode(tokenizer, preamble)
    fixed = len(prefix) + sum(len(i.ids) for i in inserts) + len(suffix)
    if fixed > length:
        raise UserError(f"context length {length} cannot hold {len(inserts)} needle(s) ({params.keys} key(s) x "
                        f"{params.values} value(s)) with the preamble and question: they take {fixed} tokens; "
                        f"use fewer keys/values or lengths >= {fixed}")
    source = state.source
    if params.haystack == "needles":
        source = LineSource(lambda: _haystack_needles(params, tokenizer, d, trial), state.source, name="needles")
    built = build_prompt(source, int(length), prefix=prefix, inserts=inserts, suffix=suffix, seed=params.seed,
                         trial=int(trial))
    value_spans = []
    for (k, j), spans in zip(order, built.spans):
        s, e = spans["value"]
        value_spans.append((d.values[k][j], s, e))
    placed = [v for v, _, _ in value_spans] + list(getattr(source, "used", []) if params.haystack == "needles" else [])
    # gold order: asked keys in question order, each key's values in prompt order
    starts = {(k, j): built.starts[i] for i, (k, j) in enumerate(order)}
    gold = [d.values[k][j] for k in range(d.queries)
            for j in sorted(range(params.values), key=lambda j, k=k: starts[(k, j)])]
    ans, ans_spans = answer_ids(tokenizer, gold)
    first = next((i for i in range(*ans_spans[0]) if tokenizer.decode([ans[i]]).strip()), ans_spans[0][0])
    return RetrievalPrompt(
        input_ids=built.input_ids, answer_ids=tuple(ans), answer_value_spans=ans_spans,
        first_value_token=first, asked_keys=d.asked,
        asked_values=tuple(gold), distractor_keys=d.distractors, placed_values=tuple(placed),
        value_spans=tuple(value_spans), depth=depth, context_length=int(length), needle_start=built.starts[0],
        adjustments=built.adjustments,
    )


def prompt_record(p: RetrievalPrompt, trial: int, task: str) -> dict:
    """One prompts.jsonl row: ids, the asked values with their spans in input_ids and in answer_ids, answer_ids."""
    where = {value: [s, e] for value, s, e in p.value_spans}
    return {"task": task, CONTEXT_LENGTH: p.context_length, DEPTH: p.depth, TRIAL: int(trial),
            "input_ids": list(p.input_ids), "asked_values": list(p.asked_values),
            "value_spans": [where[v] for v in p.asked_values], "answer_ids": list(p.answer_ids),
            "answer_value_spans": [list(s) for s in p.answer_value_spans], "asked_keys": list(p.asked_keys)}


def _haystack_needles(params: RetrievalParams, tokenizer: Any, d: Draw, trial: int):
    """Distractor needle lines for a needles haystack: fresh keys and values, never an inserted one."""
    rng = random.Random(f"lch-retrieval-haystack:{params.seed}:{trial}:{params.key_kind}:{params.value_kind}")
    used = set(d.keys) | {v for vs in d.values for v in vs}
    while True:
        try:
            key, value = draw_item(params.key_kind, rng, used), draw_item(params.value_kind, rng, used)
        except UserError:
            return  # the word pool ran out: the rest of the haystack is filler
        ids, _ = needle_ids(tokenizer, params.style, params.value_kind, key, value, params.wording)
        yield ids, value


# --------------------------------------------------------------------------------------------- task


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name}={value!r} is not allowed; use an integer >= 1")
