"""Attention probes: weights of a few query rows, reduced on the fly, without materialising n^2.

`with capture(model, rows=[...], spans={"needle": (a, b)}) as probe:` switches the model to the
"lch_probe" implementation for the block. Every attention call still produces its ordinary output
through the fast path (`harness.attention.lch_attention`: the variant's query scale + SDPA); in
addition, for the selected query rows only, it computes their weights over all visible keys with
the variant's own scale and mask, a chunk of rows at a time, and reduces them per (layer, head,
row) to a few numbers: the largest weight, the entropy, and the mass on each named key span.
Memory grows with n (one chunk of rows x n keys), never with n^2; `output_attentions` is never used.

A row is a query position in the full sequence (0-based): row i sees i + 1 keys in a causal
forward (min(i + 1, window) on a sliding-window layer). With a KV cache the rows of one call are the
positions after the cached ones; a forward pre-hook reads from the cache where the call's queries and
keys sit in the sequence (a sliding-window cache keeps only the last window - 1 keys), so rows and key
spans stay positions in the full sequence. Families that softcap logits (Gemma2) are probed on the
softcapped, then variant-scaled scores, like the fast path.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from harness.attention.key_pattern import pattern_mask

from harness.attention import attention_modules, attention_weights, lch_attention

PROBE_IMPLEMENTATION = "lch_probe"
CHUNK_ELEMENTS = 1 << 22  # score elements per row chunk (16 MiB in fp32); bounds the probe's memory

Reducer = Callable[[torch.Tensor], torch.Tensor]
"""weights [B, H, rows, keys] (fp32, rows sum to 1, masked keys 0) -> one number per row [B, H, rows]."""


def max_weight(weights: torch.Tensor) -> torch.Tensor:
    """Largest attention weight of each row."""
    return weights.amax(dim=-1)


def entropy(weights: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row; masked keys (weight 0) contribute 0."""
    return torch.special.entr(weights).sum(dim=-1)


def span_mass(start: int, end: int) -> Reducer:
    """Reducer: attention mass of each row on keys [start, end)."""
    if not 0 <= start < end:
        raise ValueError(f"span [{start}, {end}) is empty or negative")

    def mass(weights: torch.Tensor) -> torch.Tensor:
        return weights[..., start:end].sum(dim=-1)

    return mass


DEFAULT_REDUCERS: dict[str, Reducer] = {"max_weight": max_weight, "entropy": entropy}


@dataclass
class Probe:
    """What one `capture` collected: per layer, per reducer, a [B, H, rows] fp32 tensor (NaN = row not seen)."""

    rows: tuple[int, ...]
    """The captured query positions, in the order of the last axis of every statistic."""
    reducers: dict[str, Reducer]
    """Statistic name -> reducer (`max_weight`, `entropy`, `mass:<span name>`, and any given)."""
    chunk_elements: int = CHUNK_ELEMENTS
    """Score elements per row chunk."""
    stats: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    """layer index -> statistic name -> [B, H, rows]."""

    def get(self, name: str) -> torch.Tensor:
        """One statistic for all layers: [layers, B, H, rows] (layers in index order)."""
        if name not in self.reducers:
            raise KeyError(f"no statistic {name!r}; captured: {', '.join(self.reducers)}")
        if not self.stats:
            raise RuntimeError("nothing was captured: no forward pass ran inside the capture block")
        layers = [self.stats[layer][name] for layer in sorted(self.stats)]
        # under --device-map layers sit on different devices: gather on the first layer's before stacking
        return torch.stack([t.to(layers[0].device) for t in layers])

    def missing_rows(self) -> list[int]:
        """Rows no forward pass reached (their statistics are NaN)."""
        if not self.stats:
            return list(self.rows)
        first = self.stats[min(self.stats)][next(iter(self.reducers))]
        seen = ~torch.isnan(first).all(dim=0).all(dim=0)  # [rows]
        return [r for r, ok in zip(self.rows, seen.tolist()) if not ok]

    def observe(self, module: nn.Module, query, key, attention_mask, scaling, softcap=None) -> None:
        """Reduce the weights of the captured rows present in this attention call into `stats`."""
        batch, heads, q_len, head_dim = query.shape
        kv_len = key.shape[2]
        # Positions in the full sequence of this call's first query row and first key (see _record_positions):
        # a sliding-window cache hands attention only the last window - 1 cached keys, a static cache all its slots.
        q_start, k_start = getattr(module, "lch_probe_positions", None) or (kv_len - q_len, 0)
        hits = [(slot, r - q_start) for slot, r in enumerate(self.rows) if q_start <= r < q_start + q_len]
        if not hits:
            return
        layer = int(module.layer_idx)
        store = self.stats.get(layer)
        if store is None:
            store = self.stats[layer] = {name: torch.full((batch, heads, len(self.rows)), float("nan"),
                                                           device=query.device) for name in self.reducers}
        scaling = head_dim**-0.5 if scaling is None else scaling
        keys_t = key.float().transpose(2, 3)  # (B, Hkv, D, kv): O(n) copy, no repeat_kv
        chunk = max(1, self.chunk_elements // max(1, batch * heads * (k_start + kv_len)))
        with torch.no_grad():
            for i in range(0, len(hits), chunk):
                part = hits[i : i + chunk]
                slots = torch.tensor([s for s, _ in part], device=query.device)
                local = torch.tensor([q for _, q in part], device=query.device)
                weights = attention_weights(module, query, keys_t, attention_mask, local, q_len, scaling, softcap)
                if k_start:  # keys indexed by their position in the full sequence (spans are positions)
                    weights = torch.nn.functional.pad(weights, (k_start, 0))
                for name, reduce in self.reducers.items():
                    store[name][:, :, slots] = reduce(weights).float().to(store[name].device)


def _record_positions(module: nn.Module, args, kwargs) -> None:
    """Forward pre-hook: before the cache update, where this call's queries and keys sit in the full sequence."""
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    if cache is None or hidden is None or not hasattr(cache, "get_mask_sizes"):
        module.lch_probe_positions = None
        return
    q_len = hidden.shape[1]
    _, k_start = cache.get_mask_sizes(q_len, module.layer_idx)
    module.lch_probe_positions = (int(cache.get_seq_length(module.layer_idx)), int(k_start))


def probe_attention(module, query, key, value, attention_mask, **kwargs):
    """The fast path's output; when a probe is attached to the module, also reduce the captured rows."""
    out = lch_attention(module, query, key, value, attention_mask, **kwargs)
    probe: Probe | None = getattr(module, "lch_probe", None)
    if probe is not None:
        probe.observe(module, query, key, attention_mask, kwargs.get("scaling"), kwargs.get("softcap"))
    return out


@contextlib.contextmanager
def capture(model: nn.Module, rows: Sequence[int], *, spans: Mapping[str, tuple[int, int]] | None = None,
            reducers: Mapping[str, Reducer] | None = None, chunk_elements: int = CHUNK_ELEMENTS) -> Iterator[Probe]:
    """Within the block, forward passes record per-(layer, head, row) weight statistics into the yielded Probe.

    rows: query positions in the full sequence. spans: name -> [start, end) key span, recorded as
    `mass:<name>`. reducers: extra (or replacement) statistics; default max_weight and entropy.
    The previous attention implementation is restored on exit.
    """
    rows = tuple(int(r) for r in rows)
    if not rows or min(rows) < 0:
        raise ValueError(f"rows must be non-empty query positions >= 0, got {rows[:8]}")
    if len(set(rows)) != len(rows):
        raise ValueError("rows must not repeat")
    table = dict(DEFAULT_REDUCERS)
    for name, (start, end) in (spans or {}).items():
        table[f"mass:{name}"] = span_mass(int(start), int(end))
    table.update(reducers or {})
    probe = Probe(rows=rows, reducers=table, chunk_elements=int(chunk_elements))
    modules = [m for _, m in attention_modules(model)]
    if not modules:
        raise ValueError(f"{type(model).__name__} has no attention modules the probe understands")
    if any(getattr(m, "lch_probe", None) is not None for m in modules):
        raise RuntimeError("a probe is already capturing on this model; captures do not nest")
    previous = model.config._attn_implementation
    hooks = []
    for module in modules:
        module.lch_probe = probe
        hooks.append(module.register_forward_pre_hook(_record_positions, with_kwargs=True))
    try:
        model.set_attn_implementation(PROBE_IMPLEMENTATION)
        yield probe
    finally:
        for module, hook in zip(modules, hooks):
            hook.remove()
            module.lch_probe = None
            module.lch_probe_positions = None
        model.set_attn_implementation(previous)


AttentionInterface.register(PROBE_IMPLEMENTATION, probe_attention)
AttentionMaskInterface.register(PROBE_IMPLEMENTATION, pattern_mask)
