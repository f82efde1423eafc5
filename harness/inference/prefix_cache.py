"""Shared-prefix prefill: prompts of one group (a needle grid's trial) reuse each other's KV cache.

Every prompt of one trial is cut from the same haystack token stream, so two prompts share every token
before the earlier of their needles (at any lengths: a shorter haystack is a prefix of a longer one).
A `PrefixCache` (one per model, in the task's state) keeps the last prompt's KV cache; the next prompt
of the same group compares token ids (never trusts coordinates), crops the cache to their common prefix
and feeds only the rest. `harness.task.grid.DepthGrid` runs a trial's cells with the latest needle first (depth x length,
descending), so each prompt shares everything before its own needle. A new group, nothing in common,
or a cache that cannot crop gives a fresh prefill; a cache that cannot crop also stops sharing for the
model (`reason`, reported per cell as telemetry and in the manifest). At most one cache is held.
Results equal per-prompt prefill: with the cache, positions and n_i (the keys a row sees) come from the
cache length, so each row's attention is the one of a full prefill (harness.attention.split keeps the
suffix's attention on the fast kernels).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from harness.inference.decode import crop_to, forward, new_cache

def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading token ids `a` and `b` have in common."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class PrefixCache:
    """One model's shared-prefix KV cache: the last prompt's cache, for the next prompt of its group.

    `memo` holds values per sequence position (e.g. probe rows) that stay valid while the kept cache
    holds that position; `last` is the telemetry of the last prompt started.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = bool(enabled)
        self.reason: str | None = None
        """why sharing stopped for this model (a cache that cannot crop); None while it works"""
        self.memo: dict[int, object] = {}
        self.last: dict = {}
        self._group: Hashable | None = None
        self._ids: tuple[int, ...] = ()
        self._cache = None

    def start(self, group: Hashable | None, ids: Sequence[int], needed: Sequence[int] = ()) -> tuple[object, int]:
        """(cache holding ids[:n], n): the kept cache cropped to the common prefix, or a fresh cache and 0.

        n < len(ids) (one token is always fed, for the logits); positions in `needed` below the prefix
        must be in `memo`, else the prefix stops before the first missing one.
        """
        ids = tuple(ids)
        kept, kept_ids, same = self._cache, self._ids, group is not None and group == self._group
        self._drop()
        if not self.enabled or self.reason is not None or kept is None or not same:
            return self._fresh()
        n = min(common_prefix(kept_ids, ids), len(ids) - 1)
        n = min([n] + [r for r in needed if r < n and r not in self.memo])
        if n <= 0:
            return self._fresh()
        if not crop_to(kept, n):
            self.fail(f"{type(kept).__name__} cannot crop to a prefix")
            return self._fresh()
        self.memo = {r: v for r, v in self.memo.items() if r < n}
        self.last = {"prefix_cache": "shared", "prefix_tokens": n}
        return kept, n

    def prefill(self, model, ids: Sequence[int], group: Hashable | None):
        """Like decode.prefill, feeding only the tokens after the shared prefix: (last logits [V], cache)."""
        cache, n = self.start(group, ids)
        logits, cache = forward(model, list(ids)[n:], cache, logits_to_keep=1)
        return logits[-1], cache

    def keep(self, group: Hashable | None, ids: Sequence[int], cache) -> None:
        """Keep `cache` (its first len(ids) tokens are `ids`; answer tokens after them are cropped later)."""
        if self.enabled and self.reason is None and group is not None:
            self._group, self._ids, self._cache = group, tuple(ids), cache

    def fail(self, reason: str) -> None:
        """Stop sharing for this model: every later prompt is prefilled on its own."""
        self.reason = reason
        self._drop()
        self.last = self._status()

    def _fresh(self):
        self.memo = {}
        self.last = self._status()
        return new_cache(), 0

    def _status(self) -> dict:
        if not self.enabled:
            return {"prefix_cache": "off", "prefix_tokens": 0}
        if self.reason is not None:
            return {"prefix_cache": "fallback", "prefix_tokens": 0, "prefix_reason": self.reason}
        return {"prefix_cache": "fresh", "prefix_tokens": 0}

    def _drop(self) -> None:
        self._group, self._ids, self._cache = None, (), None


__all__ = ["PrefixCache", "common_prefix"]
