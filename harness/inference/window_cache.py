"""KV caches whose sliding-window layers hold what the next queries and a rewind need, not every key of the prompt.

A layer with window W answers a query at position t from keys t - W + 1 .. t, so after a prompt of L tokens it needs
only its last W - 1 keys; the harness also rewinds up to r tokens (the teacher-forced answer, before greedy decoding),
after which the next query needs the W - 1 keys before the rewind point. `WindowLayer` therefore keeps at most
W - 1 + r keys (the bound, whatever L is), reports the offset of what it holds to the mask (`get_mask_sizes`: the
harness's KeyPattern takes it as `shift = q_offset - kv_offset`), and refuses a crop it cannot serve (a shared prefix
shorter than what it dropped), which the harness treats as "cannot rewind" (a fresh prefill).

Full-attention layers keep every key (`DynamicLayer`). `bounded_cache(config, rewind)` builds the cache for a
model; `None` when the model has no sliding layers (the caller then uses a plain DynamicCache).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer


class WindowLayer(DynamicSlidingWindowLayer):
    """A sliding-window layer's KV cache holding the last `window - 1 + rewind` keys."""

    def __init__(self, sliding_window: int, rewind: int = 0, **kwargs):
        super().__init__(sliding_window=sliding_window)
        self.keep = int(sliding_window) - 1 + max(0, int(rewind))

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append the new keys and values; return the held ones plus the new (what the mask sizes announced)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.cumulative_length += key_states.shape[-2]
        keys = torch.cat([self.keys, key_states], dim=-2)
        values = torch.cat([self.values, value_states], dim=-2)
        self.keys, self.values = keys[:, :, -self.keep:], values[:, :, -self.keep:]
        return keys, values

    def held(self) -> int:
        """Keys held now (at most `keep`; fewer right after a rewind)."""
        return self.keys.shape[-2] if self.is_initialized else 0

    def get_mask_sizes(self, query_length: int, *args) -> tuple[int, int]:
        """(kv_length, kv_offset) of the next forward: the held keys plus the new ones, starting at the first held."""
        held = self.held()
        return held + int(query_length), self.cumulative_length - held

    def get_seq_length(self) -> int:
        """Tokens seen (positions), not keys held."""
        return self.cumulative_length

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last `-tokens_to_remove` tokens; RuntimeError when the keys the next query needs were dropped."""
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        n = -int(tokens_to_remove)
        if n == 0 or not self.is_initialized:
            return
        held = self.held()
        starts_at_zero = held == self.cumulative_length
        if n > held or (not starts_at_zero and held - n < self.sliding_window - 1):
            raise RuntimeError(f"a window cache holding {held} keys cannot rewind {n} tokens (it keeps "
                               f"window - 1 + rewind = {self.keep})")
        self.keys, self.values = self.keys[:, :, :held - n], self.values[:, :, :held - n]
        self.cumulative_length -= n


class BoundedCache(DynamicCache):
    """A DynamicCache whose sliding-window layers are `WindowLayer`s (full-attention layers keep every key)."""

    def __init__(self, layers: list):
        Cache.__init__(self, layers=layers)


def bounded_cache(config, rewind: int = 0) -> BoundedCache | None:
    """A cache for `config`'s decoder with sliding layers bounded to window - 1 + rewind keys; None without them."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    window = getattr(text, "sliding_window", None)
    types = getattr(text, "layer_types", None) or (["sliding_attention"] * text.num_hidden_layers if window else [])
    if not window or "sliding_attention" not in types:
        return None
    return BoundedCache([WindowLayer(window, rewind) if kind == "sliding_attention" else DynamicLayer()
                         for kind in types])


__all__ = ["BoundedCache", "WindowLayer", "bounded_cache"]
