"""Training rows for the reference pair: plain text, copy tasks and needle-retrieval examples.

Every row is `T` token ids with a per-token loss weight (weight[i] weighs the prediction of ids[i]
from ids[:i]; 0 = no loss). Rows start with BOS, are padded with EOS at weight 0, and are drawn
from a numpy Generator seeded by (seed, step), so both models of the pair see identical batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.data.haystack import ANSWER_TEMPLATE, CITIES, DEFAULT_DIGITS, NEEDLE_TEMPLATE, QUESTION_TEMPLATE


@dataclass(frozen=True)
class Mixture:
    """Shares of row kinds in a batch (normalised when sampled)."""

    needle: float = 0.0
    copy: float = 0.0
    text: float = 1.0
    copy_kinds: tuple[float, float, float] = (0.6, 0.2, 0.2)
    """shares of copy rows made of random tokens, random digits, text windows"""


@dataclass(frozen=True)
class TokenStream:
    """A corpus split tokenised into one stream, with the positions right after a newline."""

    ids: np.ndarray
    """int32 token ids of all documents, concatenated in corpus order"""
    line_starts: np.ndarray
    """sorted positions p such that token p-1 holds a newline (needle insertion points)"""


class RowMaker:
    """Builds training/evaluation rows from a tokenizer and a token stream."""

    def __init__(self, tokenizer, stream: TokenStream, seq_len: int, prompt_len: int, answer_weight: float = 5.0,
                 distractor_p: float = 0.15):
        self.tok = tokenizer
        self.stream = stream
        self.T = seq_len
        self.prompt_len = prompt_len
        self.answer_weight = answer_weight
        self.distractor_p = distractor_p
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id
        self.digit_ids = np.array([self._enc(str(d))[0] for d in range(10)], dtype=np.int32)
        self.vocab = len(tokenizer)
        self._cache: dict[str, list[int]] = {}

    def _enc(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _enc_cached(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self._enc(text)
        return self._cache[text]

    def _pad(self, ids: list[int] | np.ndarray, weights: list[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64)[: self.T]
        w = np.asarray(weights, dtype=np.float32)[: self.T]
        out_ids = np.full(self.T, self.eos, dtype=np.int64)
        out_w = np.zeros(self.T, dtype=np.float32)
        out_ids[: len(ids)] = ids
        out_w[: len(w)] = w
        return out_ids, out_w

    # ---- plain language modelling
    def text_row(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """BOS + a random window of the stream; loss on every token."""
        n = self.T - 1
        start = int(rng.integers(0, len(self.stream.ids) - n))
        ids = np.concatenate([[self.bos], self.stream.ids[start:start + n]])
        w = np.ones(self.T, dtype=np.float32)
        w[0] = 0.0
        return self._pad(ids, w)

    # ---- copy tasks: a sequence followed by itself; loss on the repeat
    def copy_row(self, rng: np.random.Generator, kinds: tuple[float, float, float] = (0.6, 0.2, 0.2),
                 k_max: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """BOS + x + x (len(x) <= k_max) of random tokens, random digits or a text window; loss on the second x."""
        k_max = min(k_max or self.T, (self.T - 1) // 2)
        k = int(rng.integers(8, k_max + 1))
        kind = rng.random()
        if kind < kinds[0]:
            x = rng.integers(1, self.vocab, size=k)
        elif kind < kinds[0] + kinds[1]:
            # Low-entropy alphabet: copying needs more than the previous token (like 7-digit numbers).
            x = self.digit_ids[rng.integers(0, 10, size=k)]
        else:
            start = int(rng.integers(0, len(self.stream.ids) - k))
            x = self.stream.ids[start:start + k]
        ids = np.concatenate([[self.bos], x, x])
        w = np.zeros(len(ids), dtype=np.float32)
        w[k + 2:] = 1.0  # the first repeated token is not predictable
        return self._pad(ids, w)

    # ---- needle retrieval in the eval format
    def needle_example(self, rng: np.random.Generator, prompt_len: int, depth: float,
                       distractors: int = 0, weights: bool = True):
        """(ids, weights, answer_positions): BOS + haystack with needle at `depth` + question, then the answer.

        The prompt is exactly `prompt_len` tokens unless needles and question alone are longer.
        """
        n_digits = DEFAULT_DIGITS
        cities = rng.choice(len(CITIES), size=1 + distractors, replace=False)
        city = CITIES[cities[0]]
        number = str(int(rng.integers(10 ** (n_digits - 1), 10 ** n_digits)))
        line_form = rng.random() < 0.8
        needles = []
        for j, c in enumerate(cities):
            num = number if j == 0 else str(int(rng.integers(10 ** (n_digits - 1), 10 ** n_digits)))
            text = NEEDLE_TEMPLATE.format(city=CITIES[c], number=num)
            needles.append(self._enc(text + "\n") if line_form else self._enc(" " + text))
        question = self._enc_cached(QUESTION_TEMPLATE.format(city=city))
        answer = self._enc(ANSWER_TEMPLATE.format(number=number)) + [self.eos]
        hay_len = prompt_len - 1 - sum(len(n) for n in needles) - len(question)
        hay_len = max(hay_len, 0)
        start = int(rng.integers(0, len(self.stream.ids) - hay_len - 1))
        hay = self.stream.ids[start:start + hay_len]
        # Insertion points: line starts inside the window (or any position in the space form).
        ls = self.stream.line_starts
        lo, hi = np.searchsorted(ls, start), np.searchsorted(ls, start + hay_len, side="right")
        points = ls[lo:hi] - start if line_form else np.arange(hay_len + 1)
        if len(points) == 0:
            points = np.array([0, hay_len])
        depths = [depth] + list(rng.random(distractors))
        inserts = []
        for d, needle in zip(depths, needles):
            p = int(points[np.argmin(np.abs(points - d * hay_len))])
            inserts.append((p, needle))
        inserts.sort(key=lambda pair: pair[0])
        parts, prev = [[self.bos]], 0
        for p, needle in inserts:
            parts.append(hay[prev:p])
            parts.append(needle)
            prev = p
        parts.append(hay[prev:])
        parts.append(question)
        prompt = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])
        ids = np.concatenate([prompt, answer])
        # Answer positions: the space and the digits (what greedy decoding must reproduce).
        answer_pos = np.arange(len(prompt), len(prompt) + 1 + n_digits)
        w = np.ones(len(ids), dtype=np.float32)
        w[0] = 0.0
        w[answer_pos] = self.answer_weight if weights else 1.0
        return ids, w, answer_pos

    def needle_row(self, rng: np.random.Generator, max_prompt: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A needle example of random prompt length (biased to the longest, `max_prompt`) and depth."""
        longest = min(max_prompt or self.prompt_len, self.prompt_len)
        distractors = int(rng.random() < self.distractor_p) + int(rng.random() < self.distractor_p / 3)
        shortest = min(longest, 64 + 40 * distractors)  # room for needles and question
        if rng.random() < 0.5:
            prompt_len = int(rng.integers(max(shortest, longest * 3 // 4), longest + 1))
        else:
            prompt_len = int(rng.integers(shortest, longest + 1))
        ids, w, _ = self.needle_example(rng, prompt_len, float(rng.random()), distractors)
        return self._pad(ids, w)

    def batch(self, rng: np.random.Generator, batch_size: int, mix: Mixture, copy_k_max: int | None = None,
              needle_max: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A batch [B, <=T] of ids and loss weights with row kinds drawn from `mix` (kinds in a fixed order).

        Columns after the last weighted position of every row are cut (short batches run faster).
        """
        p = np.array([mix.needle, mix.copy, mix.text], dtype=np.float64)
        counts = np.floor(p / p.sum() * batch_size).astype(int)
        extra = rng.choice(3, size=batch_size - counts.sum(), p=p / p.sum())
        for e in extra:
            counts[e] += 1
        makers = [lambda r: self.needle_row(r, needle_max), lambda r: self.copy_row(r, mix.copy_kinds, copy_k_max),
                  self.text_row]
        rows = [makers[k](rng) for k in range(3) for _ in range(counts[k])]
        ids = np.stack([r[0] for r in rows])
        w = np.stack([r[1] for r in rows])
        used = int(np.nonzero(w.any(0))[0].max()) + 1
        return ids[:, :used], w[:, :used]


def token_stream(tokenizer, texts) -> TokenStream:
    """Tokenise documents (no special tokens) into one stream and find the line starts."""
    ids = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids = np.asarray(ids, dtype=np.int32)
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    newline = np.array([isinstance(t, str) and "\u010a" in t for t in vocab])  # byte-level "\n" is "Ċ"
    line_starts = np.nonzero(newline[ids[:-1]])[0].astype(np.int64) + 1
    return TokenStream(ids=ids, line_starts=line_starts)
