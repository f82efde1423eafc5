"""Task family `retrieval`: RULER-style needle variants and passkey retrieval as presets of one task.

One prompt: a frame (plain or chat), a short preamble, a haystack (corpus text, repeated filler, or
distractor needles only) with `keys x values` needles inserted token-exactly (harness.prompts.build_prompt),
then a question about `queries` of the keys and an answer prefix that ends the prompt. The asked key's
first needle sits at the cell's depth; every other needle is spread evenly over the haystack. The gold
answer is every asked value, joined as " v1, v2, v3." (prompt order per key, keys in question order).
Scoring: greedy decoding (harness.decode.score_prompt) parsed back into values, plus the gold answer's NLL.

Presets (`lch tasks`) are subclasses whose Params only change defaults: niah_single_1/2/3,
niah_multikey_1/2/3, niah_multivalue, niah_multiquery and passkey. Keys, values and distractor order
depend on (seed, trial) only: the same at every length and depth, for every model.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.decode import score_prompt
from harness.errors import UserError
from harness.filler import FillerSource, LineSource, filler_fingerprint
from harness.haystack import check_depth, encode, haystack_source
from harness.prompts import TEMPLATES, Insert, PromptFrame, build_prompt, prompt_frame
from harness.tables import effective_length, model_columns
from harness.task import Task, register_task

KINDS = ("word", "number", "uuid")
"""Key and value kinds: word (adjective-noun), number (7 digits, first never 0), uuid (version 4)."""
HAYSTACKS = ("corpus", "filler", "needles")
"""corpus: text of `corpus`; filler: repeated filler sentences; needles: distractor needles only."""
STYLES = ("niah", "passkey")
"""niah: keyed needles ("One hidden number of K is V."); passkey: one unkeyed "The pass key is V." line."""
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
    """Prompts per (length, depth); trial t has the same keys, values and haystack order at every length and depth."""
    seed: int = 0
    """Seed of keys, values, needle order and haystack order (identical for every model)."""
    template: str = "plain"
    """plain: completion with an answer prefix (base models); chat: the tokenizer's chat template, answer prefix in the assistant turn."""
    max_new_tokens: int = 4
    """Tokens greedy decoding may generate beyond the gold answer's length."""
    threshold: float = 0.8
    """Accuracy a length (and every shorter one) must reach to count towards the effective length."""


# ------------------------------------------------------------------------------------ keys and values


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


def draw(params: RetrievalParams, trial: int) -> Draw:
    """Keys, values and the spread of the non-primary needles for (params.seed, trial): any length, any depth."""
    rng = random.Random(f"lch-retrieval:{params.seed}:{trial}:{params.key_kind}:{params.value_kind}")
    used: set = set()
    n_keys = params.keys
    keys = tuple("pass key" if params.style == "passkey" else draw_item(params.key_kind, rng, used)
                 for _ in range(n_keys))
    values = tuple(tuple(draw_item(params.value_kind, rng, used) for _ in range(params.values)) for _ in keys)
    others = n_keys * params.values - 1
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


def _needle_pieces(style: str, value_kind: str, key: str) -> tuple[str, str]:
    """(text before the value, text after it) of a needle line."""
    if style == "passkey":
        return "The pass key is", ". Remember it.\n"
    return f"One hidden {VALUE_NOUN[value_kind]} of {key} is", ".\n"


def needle_ids(tokenizer: Any, style: str, value_kind: str, key: str, value: str) -> tuple[list[int], tuple[int, int]]:
    """A needle line as ids (before, value, after tokenised apart: the value keeps its own tokens) and its value span."""
    head, tail = _needle_pieces(style, value_kind, key)
    a, v, b = encode(tokenizer, head), encode(tokenizer, " " + value), encode(tokenizer, tail)
    return a + v + b, (len(a), len(a) + len(v))


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def question_and_prefix(style: str, value_kind: str, asked: Sequence[str], n_values: int) -> tuple[str, str]:
    """(question after the haystack, answer prefix that ends the prompt)."""
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
    """Values in a generated answer: up to the first '.' or newline, split on ',' (and ' and ')."""
    head = re.split(r"[.\n]", text.lstrip(" "), maxsplit=1)[0]
    parts = re.split(r",| and ", head)
    return [p.strip() for p in parts if p.strip()]


def answer_settled(tokenizer) -> Any:
    """Stop rule for greedy decoding: the answer has reached its '.' or a newline (the parse cannot change)."""
    def stop(tokens: list[int]) -> bool:
        text = tokenizer.decode(tokens).lstrip(" ")
        return bool(re.search(r"[.\n]", text))
    return stop


def score(prompt: RetrievalPrompt, generated_ids: Sequence[int], generated_text: str) -> dict:
    """prediction, correct (every asked value back), recall (fraction back), first_token_correct."""
    pred = parse_values(generated_text)
    gold = list(prompt.asked_values)
    hits = sum(1 for v in gold if v in pred)
    first_end = prompt.first_value_token + 1  # up to and including the first value's first real token
    return {"prediction": ", ".join(pred), "correct": hits == len(gold), "recall": hits / len(gold),
            "first_token_correct": list(generated_ids[:first_end]) == list(prompt.answer_ids[:first_end])}


@dataclass(frozen=True)
class RetrievalState:
    """What a model's cells share: the haystack source (corpus or filler) and the prompt frame."""

    source: object
    """HaystackSource of the corpus, or a FillerSource (also the padding of a needles haystack)"""
    frame: PromptFrame
    """harness.prompts.PromptFrame (plain or chat)"""


def build_retrieval_prompt(params: RetrievalParams, tokenizer: Any, state: RetrievalState, length: int,
                           depth: float, trial: int) -> RetrievalPrompt:
    """The prompt of one (length, depth, trial): pure and deterministic in (params, trial, length, depth)."""
    depth = check_depth(depth)
    d = draw(params, trial)
    style, vk = params.style, params.value_kind
    inserts, order = [], []
    spread = iter(d.spread)
    for k, key in enumerate(d.keys):
        for j, value in enumerate(d.values[k]):
            ids, (a, b) = needle_ids(tokenizer, style, vk, key, value)
            at = depth if (k, j) == (0, 0) else next(spread)
            inserts.append(Insert(tuple(ids), at, (("value", a, b),)))
            order.append((k, j))
    question, prefix_text = question_and_prefix(style, vk, d.asked, params.values)
    prefix = list(state.frame.head) + encode(tokenizer, PREAMBLE[style].format(noun=VALUE_NOUN[vk]))
    suffix = state.frame.suffix(tokenizer, question, prefix_text)
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


def _haystack_needles(params: RetrievalParams, tokenizer: Any, d: Draw, trial: int):
    """Distractor needle lines for a needles haystack: fresh keys and values, never an inserted one."""
    rng = random.Random(f"lch-retrieval-haystack:{params.seed}:{trial}:{params.key_kind}:{params.value_kind}")
    used = set(d.keys) | {v for vs in d.values for v in vs}
    while True:
        try:
            key, value = draw_item(params.key_kind, rng, used), draw_item(params.value_kind, rng, used)
        except UserError:
            return  # the word pool ran out: the rest of the haystack is filler
        ids, _ = needle_ids(tokenizer, params.style, params.value_kind, key, value)
        yield ids, value


# --------------------------------------------------------------------------------------------- task


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name}={value!r} is not allowed; use an integer >= 1")


@register_task("retrieval")
class RetrievalTask(Task):
    """Keyed retrieval (RULER-style needles, passkey) over length x depth; every knob a parameter."""

    Params = RetrievalParams
    tables = ("retrieval",)
    grid_params = ("lengths", "depths", "trials", "threshold")

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
            from harness.corpus import load_corpus

            corpus = load_corpus(params.corpus, split="heldout")  # unknown spec or missing file -> UserError
            bound = sum(len(d.text.encode("utf-8")) for d in corpus.documents) + 256 + 100 * needles
            if max(params.lengths) > bound:
                raise UserError(f"context length {max(params.lengths)} is more than corpus {params.corpus!r} can fill "
                                f"(about {bound} tokens at most); use shorter lengths, a larger corpus or haystack=filler")

    def data_fingerprint(self, params: RetrievalParams) -> str:
        """The corpus's fingerprint for haystack=corpus; a fixed string naming the filler text otherwise."""
        if params.haystack != "corpus":
            return filler_fingerprint()
        from harness.corpus import load_corpus

        return load_corpus(params.corpus).fingerprint

    def cells(self, params: RetrievalParams) -> list[dict]:
        """One cell per (context_length, depth, trial)."""
        return [{"context_length": int(length), "depth": float(depth), "trial": trial}
                for length in sorted(set(params.lengths)) for depth in sorted(set(params.depths))
                for trial in range(params.trials)]

    def cost(self, params: RetrievalParams, cell: dict) -> float:
        """Proportional to the context length."""
        return cell["context_length"] / min(params.lengths)

    def prepare(self, params: RetrievalParams, loaded) -> RetrievalState:
        """Haystack source and frame for this tokenizer; builds the extreme prompts once to fail before any cell."""
        tok = loaded.tokenizer
        if params.haystack == "corpus":
            from harness.corpus import load_corpus

            source = haystack_source(tok, load_corpus(params.corpus, split="heldout"))
        else:
            source = FillerSource(tok)
        state = RetrievalState(source, prompt_frame(tok, params.template))
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
        generated, nll = score_prompt(loaded.model, p.input_ids, p.answer_ids, n_new,
                                      eos_token_id=tok.eos_token_id, stop=answer_settled(tok))
        text = tok.decode(generated)
        row = {
            "context_length": p.context_length, "depth": p.depth, "trial": int(cell["trial"]), "task": self.name,
            "answer": ", ".join(p.asked_values), **score(p, generated, text), "answer_nll": nll,
            "prompt_tokens": len(p.input_ids), "keys": ", ".join(p.asked_keys), "needles": len(p.value_spans),
            "needle_position": p.needle_start, "generated": text, "seconds": time.perf_counter() - t0,
        }
        return {"retrieval": [row], "telemetry": {"tokens": len(p.input_ids) + len(generated)}}

    def summarize(self, tables: dict, params: RetrievalParams) -> dict:
        """retrieval_summary per (model, attention, theta, task, length) and retrieval_effective_length."""
        import pandas as pd

        df = tables.get("retrieval")
        if df is None or df.empty:
            return {}
        keys = model_columns(df) + ["task"]
        summary = (df.groupby(keys + ["context_length"], dropna=False)
                   .agg(accuracy=("correct", "mean"), recall=("recall", "mean"),
                        first_token_accuracy=("first_token_correct", "mean"), answer_nll=("answer_nll", "mean"),
                        n=("correct", "size"))
                   .reset_index())
        rows = []
        for group, part in summary.groupby(keys, dropna=False):
            group = group if isinstance(group, tuple) else (group,)
            acc = dict(zip(part["context_length"].astype(int), part["accuracy"]))
            rows.append({**dict(zip(keys, group)), "effective_length": effective_length(acc, params.threshold),
                         "threshold": params.threshold, "max_length": max(acc)})
        return {"retrieval_summary": summary, "retrieval_effective_length": pd.DataFrame(rows)}

    def figures(self, tables: dict, manifest: dict, out_dir: Path) -> list[Path]:
        """retrieval_heatmap_<task>.png per preset: accuracy over length x depth, one panel per model."""
        from harness.plots import needle_heatmap_figure, training_lengths

        df = tables.get("retrieval")
        if df is None or df.empty:
            return []
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for task, part in df.groupby("task", sort=True):
            fig = needle_heatmap_figure(part, train_lengths=training_lengths(manifest), suptitle=str(task))
            fig.axes[-1].set_ylabel("accuracy (every asked value)")  # the shared colorbar
            out = out_dir / f"retrieval_heatmap_{task}.png"
            fig.savefig(out, dpi=120, bbox_inches="tight")
            paths.append(out)
        return paths


# ------------------------------------------------------------------------------------------ presets
# Each preset's Params subclass only changes defaults (every field stays settable with -T).


@dataclass(frozen=True)
class NiahSingle1Params(RetrievalParams):
    """niah_single_1 defaults."""

    haystack: str = "filler"
    """What surrounds the needles: corpus, filler (repeated filler sentences: this preset) or needles."""


@register_task("niah_single_1")
class NiahSingle1(RetrievalTask):
    """RULER niah_single_1: one keyed 7-digit number in repeated filler sentences."""

    Params = NiahSingle1Params


@register_task("niah_single_2")
class NiahSingle2(RetrievalTask):
    """RULER niah_single_2: one keyed 7-digit number in corpus text (essay-style haystack)."""

    Params = RetrievalParams


@dataclass(frozen=True)
class NiahSingle3Params(RetrievalParams):
    """niah_single_3 defaults."""

    value_kind: str = "uuid"
    """Kind of the values: word, number or uuid (this preset)."""
    max_new_tokens: int = 8
    """Tokens greedy decoding may generate beyond the gold answer's length."""


@register_task("niah_single_3")
class NiahSingle3(RetrievalTask):
    """RULER niah_single_3: one keyed uuid in corpus text."""

    Params = NiahSingle3Params


@dataclass(frozen=True)
class NiahMultikey1Params(RetrievalParams):
    """niah_multikey_1 defaults."""

    keys: int = 4
    """Keys with needles in the prompt: the asked one plus 3 distractors with other keys."""


@register_task("niah_multikey_1")
class NiahMultikey1(RetrievalTask):
    """RULER niah_multikey_1: the asked needle among distractor needles with other keys, in corpus text."""

    Params = NiahMultikey1Params


@dataclass(frozen=True)
class NiahMultikey2Params(RetrievalParams):
    """niah_multikey_2 defaults."""

    haystack: str = "needles"
    """What surrounds the needles: corpus, filler or needles (distractor needles only: this preset)."""


@register_task("niah_multikey_2")
class NiahMultikey2(RetrievalTask):
    """RULER niah_multikey_2: a haystack made only of distractor needles (word keys, number values)."""

    Params = NiahMultikey2Params


@dataclass(frozen=True)
class NiahMultikey3Params(RetrievalParams):
    """niah_multikey_3 defaults."""

    haystack: str = "needles"
    """What surrounds the needles: corpus, filler or needles (distractor needles only: this preset)."""
    key_kind: str = "uuid"
    """Kind of the keys: word, number or uuid (this preset)."""
    value_kind: str = "uuid"
    """Kind of the values: word, number or uuid (this preset)."""
    max_new_tokens: int = 8
    """Tokens greedy decoding may generate beyond the gold answer's length."""


@register_task("niah_multikey_3")
class NiahMultikey3(RetrievalTask):
    """RULER niah_multikey_3: uuid keys and uuid values, a haystack of distractor needles only."""

    Params = NiahMultikey3Params


@dataclass(frozen=True)
class NiahMultivalueParams(RetrievalParams):
    """niah_multivalue defaults."""

    values: int = 4
    """Values (needles) per key; all 4 must come back."""


@register_task("niah_multivalue")
class NiahMultivalue(RetrievalTask):
    """RULER niah_multivalue: one key with 4 values in corpus text; every value must come back."""

    Params = NiahMultivalueParams


@dataclass(frozen=True)
class NiahMultiqueryParams(RetrievalParams):
    """niah_multiquery defaults."""

    keys: int = 4
    """Keys with needles in the prompt (all of them asked here)."""
    queries: int = 4
    """Keys asked at once; at most `keys`."""


@register_task("niah_multiquery")
class NiahMultiquery(RetrievalTask):
    """RULER niah_multiquery: 4 keys asked at once in corpus text; every value must come back."""

    Params = NiahMultiqueryParams


@dataclass(frozen=True)
class PasskeyParams(RetrievalParams):
    """passkey defaults."""

    style: str = "passkey"
    """passkey: one "The pass key is V." line (this preset); niah: keyed needles."""
    haystack: str = "filler"
    """What surrounds the pass key: filler (repeated filler sentences: this preset), corpus or needles."""


@register_task("passkey")
class Passkey(RetrievalTask):
    """Passkey retrieval (Mohtashami & Jaggi 2023): one pass key line in repeated filler text."""

    Params = PasskeyParams


PRESETS = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
           "niah_multikey_3", "niah_multivalue", "niah_multiquery", "passkey")
"""The named presets, each its own task name."""
