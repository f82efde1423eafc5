"""Attention probes: weights of a few query rows, reduced on the fly, without materialising n^2.

`with capture(model, rows=[...], spans={"needle": (a, b)}) as probe:` switches the model to the
"lch_probe" implementation for the block. Every attention call still produces its ordinary output
through the fast path (`harness.attention.lch_attention`: the variant's query scale + SDPA); in
addition, for the selected query rows only, it computes their weights over all visible keys with
the variant's own scale and mask, a chunk of rows at a time, and reduces them per (layer, head,
row) to a few numbers: the largest weight, the entropy, and the mass on each named key span.
Memory grows with n (one chunk of rows x n keys), never with n^2; `output_attentions` is never used.

A row is a query position in the full sequence (0-based): row i sees i + 1 keys in a causal
forward. With a KV cache the rows of one call are the positions after the cached ones.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from harness.attention import attention_modules, lch_attention, query_scale

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
        return torch.stack([self.stats[layer][name] for layer in sorted(self.stats)])

    def missing_rows(self) -> list[int]:
        """Rows no forward pass reached (their statistics are NaN)."""
        if not self.stats:
            return list(self.rows)
        first = self.stats[min(self.stats)][next(iter(self.reducers))]
        seen = ~torch.isnan(first).all(dim=0).all(dim=0)  # [rows]
        return [r for r, ok in zip(self.rows, seen.tolist()) if not ok]

    def observe(self, module: nn.Module, query, key, attention_mask, scaling) -> None:
        """Reduce the weights of the captured rows present in this attention call into `stats`."""
        batch, heads, q_len, head_dim = query.shape
        kv_heads, kv_len = key.shape[1], key.shape[2]
        offset = kv_len - q_len  # cached keys before this call's first query row
        hits = [(slot, r - offset) for slot, r in enumerate(self.rows) if offset <= r < kv_len]
        if not hits:
            return
        layer = int(module.layer_idx)
        store = self.stats.get(layer)
        if store is None:
            store = self.stats[layer] = {name: torch.full((batch, heads, len(self.rows)), float("nan"),
                                                           device=query.device) for name in self.reducers}
        scaling = head_dim**-0.5 if scaling is None else scaling
        groups = heads // kv_heads
        keys_t = key.float().transpose(2, 3)  # (B, Hkv, D, kv): O(n) copy, no repeat_kv
        chunk = max(1, self.chunk_elements // max(1, batch * heads * kv_len))
        with torch.no_grad():
            for i in range(0, len(hits), chunk):
                part = hits[i : i + chunk]
                slots = torch.tensor([s for s, _ in part], device=query.device)
                local = torch.tensor([q for _, q in part], device=query.device)
                c = len(part)
                q = query.index_select(2, local).float()  # (B, H, c, D)
                # GQA: query heads g*k .. g*k+groups-1 share kv head k, so pack them as rows of one group.
                scores = torch.matmul(q.reshape(batch, kv_heads, groups * c, head_dim), keys_t)
                scores = scores.view(batch, heads, c, kv_len) * scaling  # (B, H, c, kv)
                allowed = _allowed_rows(attention_mask, local, offset, kv_len)  # (B|1, 1|H, c, kv)
                n = allowed.sum(-1, keepdim=True, dtype=torch.float32).clamp_(min=1.0)
                scale = query_scale(module, n)
                if scale is not None:
                    scores = scores * scale
                weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num_(0.0)
                for name, reduce in self.reducers.items():
                    store[name][:, :, slots] = reduce(weights).float().to(store[name].device)


def _allowed_rows(attention_mask, local: torch.Tensor, offset: int, kv_len: int) -> torch.Tensor:
    """Which keys the given local query rows may see, as bool [B|1, 1|H, rows, kv]."""
    if attention_mask is None:  # causal without padding (the SDPA mask was skipped)
        keys = torch.arange(kv_len, device=local.device)
        return (keys.view(1, -1) <= (local + offset).view(-1, 1)).view(1, 1, -1, kv_len)
    mask = attention_mask.index_select(-2, local)
    if mask.dtype != torch.bool:  # additive float mask: 0 where allowed, very negative where not
        mask = mask > torch.finfo(mask.dtype).min / 2
    mask = mask[..., -kv_len:]
    return mask if mask.dim() == 4 else mask.view(1, 1, *mask.shape[-2:])


def probe_attention(module, query, key, value, attention_mask, **kwargs):
    """The fast path's output; when a probe is attached to the module, also reduce the captured rows."""
    out = lch_attention(module, query, key, value, attention_mask, **kwargs)
    probe: Probe | None = getattr(module, "lch_probe", None)
    if probe is not None:
        probe.observe(module, query, key, attention_mask, kwargs.get("scaling"))
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
    for module in modules:
        module.lch_probe = probe
    try:
        model.set_attn_implementation(PROBE_IMPLEMENTATION)
        yield probe
    finally:
        for module in modules:
            module.lch_probe = None
        model.set_attn_implementation(previous)


AttentionInterface.register(PROBE_IMPLEMENTATION, probe_attention)
AttentionMaskInterface.register(PROBE_IMPLEMENTATION, sdpa_mask)
