"""Causal key patterns without a q x kv mask: what each query row sees, said in three numbers, and kernels for it.

transformers builds a [B, 1, q, kv] mask for every forward whose rows do not start at key 0 (a suffix after p cached
keys, a chunk of a long prefill, a decode step past a sliding window) and for every sliding-window layer; SDPA then
adds its own float copy and runs the masked kernel over the whole rectangle. For the patterns the harness meets,
the mask carries no information beyond

    row i sees key j  <=>  i + shift - window < j <= i + shift       (window None: no lower bound)

so `pattern_mask`, registered as the "lch" mask function, returns a `KeyPattern` instead of a tensor whenever the
requested mask is exactly that (no padding, no packed sequences, no custom mask functions: checked on a sample of
rows), and falls back to transformers' `sdpa_mask` otherwise. `pattern_attention` computes attention for a pattern
with mask-free kernels:

- no window (or a window no row reaches): SDPA `is_causal` when the rows start at key 0; one row over all keys when
  decoding; for q rows after p keys, on CUDA SDPA's bottom-right causal bias (flash / efficient kernels), on CPU two
  flash calls merged by log-sum-exp (harness.attention.split);
- a window crossed by some row: blocks of rows, each over only the keys the block can see (a [B, B + W] mask per
  block), so time and memory grow with L x W, not L^2;
- a softcapped family: exact scores a chunk of rows at a time over each chunk's visible keys only.

n_i, the number of keys row i sees, is min(i + shift + 1, window): every variant stays an exact per-row query scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.attention.split import split_attention, usable

SAMPLE_ROWS = 64
"""rows of a requested mask checked against the pattern before it replaces the mask"""
WINDOW_BLOCK = 512
"""query rows per block on a windowed layer (each block sees at most WINDOW_BLOCK + window - 1 keys)"""


@dataclass(frozen=True)
class KeyPattern:
    """Row i (of q_len) sees key j (of kv_len) iff i + shift - window < j <= i + shift; window None: no lower bound."""

    q_len: int
    kv_len: int
    shift: int
    window: int | None = None

    @property
    def windowed(self) -> bool:
        """Whether the window hides a key from some row (else the pattern is plain causal after `shift` keys)."""
        return self.window is not None and self.shift + self.q_len > self.window

    def counts(self, device=None) -> torch.Tensor:
        """n_i for every row: fp32 [1, 1, q_len, 1]."""
        n = torch.arange(self.shift + 1, self.shift + self.q_len + 1, device=device, dtype=torch.float32)
        if self.window is not None:
            n = n.clamp(max=float(self.window))
        return n.view(1, 1, -1, 1)

    def key_range(self, r0: int, r1: int) -> tuple[int, int]:
        """[k0, k1): the keys rows r0 .. r1 - 1 see between them."""
        k0 = 0 if self.window is None else max(0, r0 + self.shift - self.window + 1)
        return k0, min(self.kv_len, r1 + self.shift)

    def allowed(self, rows: torch.Tensor, k0: int = 0, k1: int | None = None) -> torch.Tensor:
        """Which of keys k0 .. k1 - 1 the given rows see: bool [1, 1, len(rows), k1 - k0] (small: rows x range)."""
        k1 = self.kv_len if k1 is None else k1
        keys = torch.arange(k0, k1, device=rows.device).view(1, -1)
        last = (rows + self.shift).view(-1, 1)
        ok = keys <= last
        if self.window is not None:
            ok &= keys > last - self.window
        return ok.view(1, 1, len(rows), k1 - k0)

    def dense(self, device=None) -> torch.Tensor:
        """The whole q x kv bool mask: only for paths that need one (training dropout), never on the fast path."""
        return self.allowed(torch.arange(self.q_len, device=device))


def _matches(mask_function, pattern: KeyPattern, q_offset: int, kv_offset: int, device) -> bool:
    """True when `mask_function` (absolute indices) gives the pattern on a sample of rows (first, last, spread)."""
    q = pattern.q_len
    rows = torch.unique(torch.linspace(0, q - 1, steps=min(q, SAMPLE_ROWS), device=device).round().long())
    zero = torch.zeros((), dtype=torch.long, device=device)
    kv = torch.arange(pattern.kv_len, device=device)
    with torch.no_grad():
        got = mask_function(zero, zero, (rows + q_offset).view(-1, 1), (kv + kv_offset).view(1, -1))
    return bool(torch.equal(got.expand(len(rows), pattern.kv_len), pattern.allowed(rows).view(len(rows), -1)))


def _offset(x) -> int | None:
    if isinstance(x, torch.Tensor):
        return int(x.reshape(-1)[0]) if x.numel() else None
    return int(x)


def pattern_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset=0,
                 mask_function=None, attention_mask: torch.Tensor | None = None, local_size: int | None = None,
                 **kwargs):
    """transformers' mask interface for "lch": a KeyPattern for causal (optionally windowed) rows without padding,
    else transformers' own `sdpa_mask` (the tensor it would build anyway)."""
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    def fallback():
        return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                         kv_offset=kv_offset, mask_function=mask_function or causal_mask_function,
                         attention_mask=attention_mask, local_size=local_size, **kwargs)

    if attention_mask is not None and not bool(attention_mask.all()):
        return fallback()
    qo, ko = _offset(q_offset), _offset(kv_offset)
    if qo is None or ko is None or mask_function is None or kwargs.get("use_vmap"):
        return fallback()
    pattern = KeyPattern(int(q_length), int(kv_length), qo - ko, int(local_size) if local_size else None)
    if pattern.shift < 0 or pattern.shift + pattern.q_len > pattern.kv_len:
        return fallback()
    if not _matches(mask_function, pattern, qo, ko, kwargs.get("device", "cpu")):
        return fallback()
    return pattern


# ---------------------------------------------------------------------------------------------------- kernels


def _sdpa(query, key, value, scaling, **kw) -> torch.Tensor:
    gqa = query.shape[1] != key.shape[1]
    return F.scaled_dot_product_attention(query, key, value, scale=scaling, enable_gqa=gqa, **kw)


def causal_after(query, key, value, shift: int, scaling) -> tuple[torch.Tensor, str]:
    """Rows after `shift` keys, each seeing every key up to its own: [B, H, q, D] and the kernel's name."""
    q_len = query.shape[2]
    key, value = key[:, :, :shift + q_len], value[:, :, :shift + q_len]
    if shift == 0:
        return _sdpa(query, key, value, scaling, is_causal=True), "sdpa_causal"
    if q_len == 1:
        return _sdpa(query, key, value, scaling), "sdpa_decode"
    if query.device.type == "cuda":
        from torch.nn.attention.bias import causal_lower_right

        return _sdpa(query, key, value, scaling, attn_mask=causal_lower_right(q_len, shift + q_len)), "sdpa_lower_right"
    if usable(query, 0.0, False):
        return split_attention(query, key, value, shift, scaling), "split_lse"
    return _blocks(query, key, value, KeyPattern(q_len, shift + q_len, shift), scaling), "row_blocks"


def _blocks(query, key, value, pattern: KeyPattern, scaling, block: int = WINDOW_BLOCK) -> torch.Tensor:
    """Attention a block of rows at a time over the keys the block sees, with the block's small mask."""
    outputs = []
    for r0 in range(0, pattern.q_len, block):
        r1 = min(pattern.q_len, r0 + block)
        k0, k1 = pattern.key_range(r0, r1)
        rows = torch.arange(r0, r1, device=query.device)
        mask = pattern.allowed(rows, k0, k1)
        outputs.append(_sdpa(query[:, :, r0:r1], key[:, :, k0:k1], value[:, :, k0:k1], scaling, attn_mask=mask))
    return torch.cat(outputs, dim=2)


def pattern_attention(query, key, value, pattern: KeyPattern, scaling) -> tuple[torch.Tensor, str]:
    """Attention of (already scaled) query rows under `pattern`: [B, H, q, D] and the kernel's name."""
    if not pattern.windowed:
        return causal_after(query, key, value, pattern.shift, scaling)
    return _blocks(query, key, value, pattern, scaling), "window_blocks"


__all__ = ["KeyPattern", "causal_after", "pattern_attention", "pattern_mask", "SAMPLE_ROWS", "WINDOW_BLOCK"]
