"""Haystack material: corpus documents tokenised with their insertion boundaries, the needle's text and tokens.

Prompts are assembled from these pieces in `harness.data.prompts` (token-exact, never re-tokenised as
one string). The haystack is cut from corpus documents concatenated in a (seed, trial) order.
"""

import random
from dataclasses import dataclass
from typing import Any, Sequence

from harness.errors import UserError

# The needle and question formats are shared with the reference trainer (harness.reference), which
# mixes the same retrieval examples into training. Change them only together.
NEEDLE_TEMPLATE = "The special magic {city} number is: {number}."
QUESTION_TEMPLATE = "\n\nQuestion: What is the special magic {city} number?\nAnswer: The special magic {city} number is:"
ANSWER_TEMPLATE = " {number}."

CITIES = (
    "Tokyo", "Paris", "Cairo", "Lima", "Oslo", "Berlin", "Madrid", "Rome", "Vienna", "Prague",
    "Dublin", "Lisbon", "Athens", "Warsaw", "Budapest", "Helsinki", "Stockholm", "Copenhagen",
    "Amsterdam", "Brussels", "Zurich", "Geneva", "Moscow", "Kyiv", "Istanbul", "Tehran", "Delhi",
    "Mumbai", "Dhaka", "Bangkok", "Hanoi", "Manila", "Jakarta", "Singapore", "Seoul", "Beijing",
    "Shanghai", "Sydney", "Melbourne", "Auckland", "Toronto", "Montreal", "Vancouver", "Chicago",
    "Boston", "Denver", "Seattle", "Houston", "Miami", "Havana", "Bogota", "Quito", "Santiago",
    "Caracas", "Nairobi", "Lagos", "Accra", "Dakar", "Tunis", "Algiers",
)
DEFAULT_DIGITS = 7
SENTENCE_ENDS = ".!?"  # a token ending in one of these, followed by whitespace, ends a sentence


@dataclass(frozen=True)
class Needle:
    """The needle drawn for one (seed, trial): its city and number (a string of digits)."""

    city: str
    """City named in the needle and in the question."""
    number: str
    """The number to retrieve, as digits (first digit never 0)."""

    @property
    def text(self) -> str:
        """The needle sentence."""
        return NEEDLE_TEMPLATE.format(city=self.city, number=self.number)


def special_prefix(tokenizer: Any) -> tuple[int, ...]:
    """Token ids the tokenizer puts before any text (BOS, if it adds one), as it gives them."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    n = len(without)
    for start in range(len(with_special) - n + 1):
        if list(with_special[start : start + n]) == list(without):
            return tuple(with_special[:start])
    return ()


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` without special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def draw_needle(seed: int, trial: int, *, cities: Sequence[str] = CITIES, digits: int = DEFAULT_DIGITS) -> Needle:
    """City and number for (seed, trial): identical for every length, depth and model."""
    if not cities:
        raise UserError("cities is empty; give at least one city name")
    if not isinstance(digits, int) or isinstance(digits, bool) or digits < 1:
        raise UserError(f"digits={digits!r} is not allowed; use an integer >= 1")
    rng = random.Random(f"lch-needle:{seed}:{trial}")
    city = rng.choice(list(cities))
    number = str(rng.randint(10 ** (digits - 1), 10**digits - 1))
    return Needle(city, number)


def _span_of_number(tokenizer: Any, ids: Sequence[int], span: tuple[int, int], number: str) -> bool:
    start, end = span
    return end > start and tokenizer.decode(list(ids[start:end])).strip() == number


def _digit_tokens(tokenizer: Any, ids: Sequence[int], start: int, end: int) -> tuple[int, int]:
    """[start, end) narrowed to its first..last token that holds a digit (drops a lone leading space token)."""
    has_digit = [any(c.isdigit() for c in tokenizer.decode([t])) for t in ids[start:end]]
    if not any(has_digit):
        return start, start
    first = has_digit.index(True)
    last = len(has_digit) - 1 - has_digit[::-1].index(True)
    return start + first, start + last + 1


def needle_tokens(tokenizer: Any, needle: Needle) -> tuple[list[int], tuple[int, int], list[str]]:
    """Needle sentence (ending with a newline) as ids and the [start, end) of its number's tokens.

    Tokenised whole when the tokenizer keeps the number on its own tokens (found by offsets);
    otherwise tokenised in three pieces so that the number's tokens are exact.
    """
    text = needle.text + "\n"
    lo = len(NEEDLE_TEMPLATE.split("{number}")[0].format(city=needle.city))
    hi = lo + len(needle.number)
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        inside = [i for i, (a, b) in enumerate(offsets) if a < hi and b > lo]
        if inside:
            span = (inside[0], inside[-1] + 1)
            whole_digits = all(lo - 1 <= offsets[i][0] and offsets[i][1] <= hi for i in inside)
            if whole_digits and _span_of_number(tokenizer, ids, span, needle.number):
                return ids, span, []
    except (NotImplementedError, TypeError, ValueError, KeyError):
        pass  # slow tokenizers have no offsets: fall through to pieces
    head, num, tail = encode(tokenizer, text[:lo].rstrip(" ")), encode(tokenizer, " " + needle.number), encode(tokenizer, text[hi:])
    ids = head + num + tail
    span = _digit_tokens(tokenizer, ids, len(head), len(head) + len(num))
    if not _span_of_number(tokenizer, ids, span, needle.number):
        raise UserError(f"this tokenizer cannot keep the needle number {needle.number} on tokens of its own")
    return ids, span, ["needle: tokenised in pieces (prefix, number, suffix) so the number keeps its own tokens"]


def answer_tokens(tokenizer: Any, number: str) -> tuple[list[int], tuple[int, int]]:
    """Gold answer " {number}." as ids, and the [start, end) of the number's tokens within it."""
    text = ANSWER_TEMPLATE.format(number=number)
    ids = encode(tokenizer, text)
    span = _digit_tokens(tokenizer, ids, 0, len(ids))
    if not _span_of_number(tokenizer, ids, span, number):  # the number merged with "." : tokenise in pieces
        head, tail = text.split(number)
        ids = encode(tokenizer, head + number) + encode(tokenizer, tail)
        span = _digit_tokens(tokenizer, ids, 0, len(ids))
    if not _span_of_number(tokenizer, ids, span, number):
        raise UserError(f"this tokenizer merges the answer number {number} with its neighbours; the answer cannot be scored")
    return ids, span


class HaystackSource:
    """Corpus documents tokenised lazily (each once) for one tokenizer, with their insertion boundaries."""

    def __init__(self, tokenizer: Any, documents: Sequence[str], *, name: str = "corpus", batch: int = 4):
        self.tokenizer = tokenizer
        self.texts = [d for d in documents if d.strip()]
        self.name = name
        self.batch = batch
        self._ids: dict[int, list[int]] = {}
        self._bounds: dict[int, list[int]] = {}
        self._token_flags: dict[int, tuple[int, bool]] = {}
        self.total_chars = sum(len(t) for t in self.texts)

    def __len__(self) -> int:
        return len(self.texts)

    def order(self, seed: int, trial: int) -> list[int]:
        """Document order for (seed, trial)."""
        order = list(range(len(self.texts)))
        random.Random(f"lch-haystack:{seed}:{trial}").shuffle(order)
        return order

    def _tokenize(self, indices: Sequence[int]) -> None:
        todo = [i for i in indices if i not in self._ids]
        if not todo:
            return
        enc = self.tokenizer([self.texts[i] for i in todo], add_special_tokens=False)["input_ids"]
        for i, ids in zip(todo, enc):
            ids = list(ids)
            self._ids[i] = ids
            self._bounds[i] = self._boundaries(ids)

    def _flags(self, tid: int) -> tuple[int, bool]:
        """(end kind, starts with whitespace) of a token id: kind 0 none, 1 line end, 2 sentence punctuation."""
        flags = self._token_flags.get(tid)
        if flags is None:
            text = self.tokenizer.decode([tid])
            piece = self.tokenizer.convert_ids_to_tokens(tid) or ""
            stripped = text.rstrip(" \t")
            kind = 1 if text.endswith("\n") else 2 if stripped.endswith(tuple(SENTENCE_ENDS)) else 0
            if kind == 2 and stripped != text:
                kind = 1  # punctuation followed by whitespace inside the token
            flags = (kind, text[:1].isspace() or piece[:1] in ("Ġ", "▁", "Ċ"))
            self._token_flags[tid] = flags
        return flags

    def _boundaries(self, ids: Sequence[int]) -> list[int]:
        """Token positions (0..len) where a needle may go: document start/end, after a line or sentence end."""
        flags = [self._flags(t) for t in ids]
        out = [0]
        for j in range(len(ids) - 1):
            kind = flags[j][0]
            if kind == 1 or (kind == 2 and flags[j + 1][1]):
                out.append(j + 1)
        out.append(len(ids))
        return out

    def haystack(self, n_tokens: int, seed: int, trial: int) -> tuple[list[int], list[int], int]:
        """First `n_tokens` corpus tokens in the (seed, trial) order, boundary positions, documents used.

        Raises CorpusTooSmall (a UserError) when the corpus holds fewer tokens.
        """
        ids: list[int] = []
        bounds: list[int] = [0]
        order = self.order(seed, trial)
        used = 0
        for k in range(0, len(order), self.batch):
            if len(ids) >= n_tokens:
                break
            chunk = order[k : k + self.batch]
            self._tokenize(chunk)
            for i in chunk:
                if len(ids) >= n_tokens:
                    break
                off = len(ids)
                bounds.extend(off + b for b in self._bounds[i][1:])
                ids.extend(self._ids[i])
                used += 1
        if len(ids) < n_tokens:
            raise CorpusTooSmall(len(ids), n_tokens, self.name)
        return ids[:n_tokens], [b for b in bounds if b <= n_tokens] + [n_tokens], used



class CorpusTooSmall(UserError):
    """The corpus holds fewer tokens than a haystack needs (`available` of them, for this tokenizer)."""

    def __init__(self, available: int, needed: int, name: str):
        super().__init__(f"a haystack of {needed} tokens was asked for but corpus {name!r} holds only {available} "
                         "for this tokenizer; use shorter lengths or a larger corpus")
        self.available, self.needed = available, needed


_SOURCES: dict[tuple[int, str], tuple[Any, HaystackSource]] = {}


def haystack_source(tokenizer: Any, corpus: Any) -> HaystackSource:
    """The cached HaystackSource of `corpus` (a harness.data.corpus.Corpus) for `tokenizer`: tokenised once."""
    key = (id(tokenizer), getattr(corpus, "fingerprint", str(id(corpus))))
    hit = _SOURCES.get(key)
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    texts = [d.text if hasattr(d, "text") else str(d) for d in corpus.documents]
    source = HaystackSource(tokenizer, texts, name=getattr(corpus, "spec", "corpus"))
    if len(_SOURCES) > 8:
        _SOURCES.clear()
    _SOURCES[key] = (tokenizer, source)  # keeps the tokenizer alive so its id is never reused
    return source


def check_depth(depth: float) -> float:
    """Depth as a float in [0, 1], else UserError."""
    try:
        d = float(depth)
    except (TypeError, ValueError):
        raise UserError(f"depth {depth!r} is not a number; depths are fractions in [0, 1]") from None
    if not 0.0 <= d <= 1.0:
        raise UserError(f"depth {depth!r} is outside [0, 1]; depths are fractions of the haystack (0 = start, 1 = end)")
    return d
