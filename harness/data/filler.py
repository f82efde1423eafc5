"""Synthetic haystacks: repeated filler sentences, and a haystack of fixed token lines.

Both behave as a `harness.data.haystack.HaystackSource` for `harness.data.prompts.build_prompt`: `haystack(n,
seed, trial)` returns exactly n tokens, the boundaries an insert may go on, and a count of pieces used.
The filler text is this project's own; it is the same for every seed and trial (only the inserts vary).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from harness.data.haystack import HaystackSource

FILLER_TEXT = (
    "The kettle sat on the stove. Rain tapped on the window. A dog slept by the door. "
    "The clock on the wall kept time. Nothing in the kitchen moved.\n"
)
"""One paragraph of filler; a filler haystack repeats it (token-exact: its tokens are tiled, never re-tokenised)."""


def filler_fingerprint(text: str = FILLER_TEXT) -> str:
    """A fixed string naming the filler text (a run's data fingerprint for a filler haystack)."""
    return "filler:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class FillerSource(HaystackSource):
    """A haystack of `text` repeated: its tokens tiled to any length, boundaries after each sentence or line."""

    def __init__(self, tokenizer: Any, text: str = FILLER_TEXT, *, name: str = "filler"):
        super().__init__(tokenizer, [text], name=name)
        self._tokenize([0])
        self.unit, self.unit_bounds = list(self._ids[0]), list(self._bounds[0])
        if not self.unit:
            raise ValueError("the filler text tokenises to nothing")

    def haystack(self, n_tokens: int, seed: int = 0, trial: int = 0) -> tuple[list[int], list[int], int]:
        """The first n_tokens of the repeated text (any seed and trial: the same), its boundaries, repeats used."""
        unit, size = self.unit, len(self.unit)
        reps = -(-n_tokens // size) if n_tokens else 0
        ids = (unit * reps)[:n_tokens]
        bounds = sorted({r * size + b for r in range(reps) for b in self.unit_bounds if r * size + b <= n_tokens}
                        | {0, n_tokens})
        return ids, bounds, reps


class LineSource:
    """A haystack of whole token lines from `lines()` (as many as fit), padded at the end from `pad`.

    Boundaries sit between lines. `used` holds the payload of every line that went in (in order) after
    the last `haystack` call, e.g. the values of distractor needles.
    """

    def __init__(self, lines: Callable[[], Iterable[tuple[Sequence[int], object]]], pad: HaystackSource,
                 *, name: str = "lines"):
        self.lines, self.pad, self.name = lines, pad, name
        self.used: list = []

    def haystack(self, n_tokens: int, seed: int = 0, trial: int = 0) -> tuple[list[int], list[int], int]:
        ids: list[int] = []
        bounds = [0]
        self.used = []
        for line, payload in self.lines():
            if len(ids) + len(line) > n_tokens:
                break
            ids.extend(line)
            bounds.append(len(ids))
            self.used.append(payload)
        if len(ids) < n_tokens:
            pad, _, _ = self.pad.haystack(n_tokens - len(ids), seed, trial)
            ids.extend(pad)
        return ids, sorted(set(bounds) | {n_tokens}), len(self.used)


__all__ = ["FILLER_TEXT", "FillerSource", "LineSource", "filler_fingerprint"]
