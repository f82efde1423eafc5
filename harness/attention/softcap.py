"""Softcapped attention (Gemma 2 style) on FlexAttention: the cap and the variant's row scale inside the kernel.

A softcapped family scores z = q.k * scaling as cap * tanh(z / cap); a variant then multiplies row i by m(n_i).
SDPA cannot apply either, so the generic path materialises the scores a chunk of rows at a time
(`variants.materialised_attention`, also the reference the tests compare against). FlexAttention takes the
whole rule as a `score_mod`, m_i * cap * tanh(z / cap), and the KeyPattern as a block mask, so a compiled
kernel skips the blocks no row sees and never writes a score to memory.

Which kernel runs is decided per device: compiled FlexAttention on CUDA; the materialised path on CPU, where
compiled FlexAttention measured 3.8x SDPA's time at 4k after a 60 s compile while the materialised path costs
1.3-1.55x an uncapped forward (see docs/architecture.md). `SOFTCAP_KERNEL` overrides the choice (the tests run the flex kernel
uncompiled on CPU against the materialised reference).
"""

from __future__ import annotations

import functools
import warnings

import torch

from harness.attention.key_pattern import KeyPattern

SOFTCAP_KERNEL: str | None = None
"""None: "flex" on CUDA, "materialised" elsewhere; set "flex" or "materialised" to force one"""

_FLEX_BROKEN: list[str] = []
"""names of the errors FlexAttention raised in this process (non-empty: the materialised path from then on)"""


def use_flex(device: torch.device) -> bool:
    """Whether softcapped attention on `device` runs the FlexAttention kernel."""
    if _FLEX_BROKEN:
        return False
    choice = SOFTCAP_KERNEL or ("flex" if device.type == "cuda" else "materialised")
    if choice not in ("flex", "materialised"):
        raise ValueError(f"SOFTCAP_KERNEL must be 'flex', 'materialised' or None, got {choice!r}")
    return choice == "flex"


@functools.lru_cache(maxsize=16)
def _block_mask(pattern: KeyPattern, device: str):
    """FlexAttention block mask of a KeyPattern (blocks no row sees are skipped, not computed)."""
    from torch.nn.attention.flex_attention import create_block_mask

    shift, window = pattern.shift, pattern.window

    def visible(b, h, q_idx, kv_idx):
        seen = kv_idx <= q_idx + shift
        return seen if window is None else seen & (kv_idx > q_idx + shift - window)

    return create_block_mask(visible, None, None, pattern.q_len, pattern.kv_len, device=device)


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def _flex_kernel(device: torch.device):
    """Compiled FlexAttention on CUDA; the uncompiled (reference) implementation elsewhere."""
    if device.type == "cuda":
        return _compiled_flex()
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention


def flex_softcap(query, key, value, pattern: KeyPattern, scaling: float | None, softcap: float,
                 row_scale: torch.Tensor | None) -> torch.Tensor:
    """Attention [B, H, q, D] with scores row_scale_i * cap * tanh(q.k * scaling / cap) over the pattern's keys.

    row_scale: the variant's m(n_i) as fp32 [B|1, H|1, q, 1], or None (softmax). Grouped KV heads are not repeated.
    """
    batch, heads, q_len, head_dim = query.shape
    scaling = head_dim**-0.5 if scaling is None else scaling
    # cap * m_i per (batch, head, row) in fp32: the scale never passes through bf16
    mult = torch.full((1, 1, q_len, 1), float(softcap), device=query.device) if row_scale is None \
        else row_scale.float() * softcap
    mult = mult.expand(batch, heads, q_len, 1)[..., 0].contiguous()  # (B, H, q)

    def capped(score, b, h, q_idx, kv_idx):
        return torch.tanh(score / softcap) * mult[b, h, q_idx]

    kernel = _flex_kernel(query.device)
    with warnings.catch_warnings():  # uncompiled flex_attention warns that it runs unfused: expected off CUDA
        warnings.simplefilter("ignore")
        return kernel(query, key, value, score_mod=capped, block_mask=_block_mask(pattern, str(query.device)),
                      scale=scaling, enable_gqa=key.shape[1] != heads)


def flex_failed(error: Exception) -> None:
    """Remember that FlexAttention cannot run here (the materialised path takes over), warning once."""
    if not _FLEX_BROKEN:
        warnings.warn(f"FlexAttention softcap kernel unavailable ({type(error).__name__}: {error}); "
                      f"using materialised softcap attention", stacklevel=3)
    _FLEX_BROKEN.append(type(error).__name__)


__all__ = ["SOFTCAP_KERNEL", "flex_failed", "flex_softcap", "use_flex"]
