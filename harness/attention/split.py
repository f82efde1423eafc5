"""Causal attention of query rows that follow cached keys, without a materialised mask (the shared-prefix fast path).

Feeding q new tokens after p cached ones (a prompt's suffix after a shared prefix) gives transformers'
attention an explicit [q, p + q] causal mask: SDPA then runs its masked kernel over the whole rectangle,
about twice the cost per element of the causal kernel, plus the mask's conversions. When the mask is
exactly "row i sees keys 0 .. p + i" (no window, no padding), the same attention is two mask-free
calls merged by their log-sum-exp: every row over the p cached keys (a rectangle, no mask), and the rows
over the q new keys (a causal triangle, `is_causal`). Exact up to rounding; the work is the rows' own
(p*q + q^2/2), not the rectangle's. CPU only (PyTorch's flash kernel returns the log-sum-exp there);
anything else takes the ordinary SDPA path.
"""

from __future__ import annotations

import torch

_OP = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_DTYPES = (torch.float32, torch.bfloat16)


def usable(query: torch.Tensor, dropout: float, training: bool) -> bool:
    """Whether the split path can run here: CPU, fp32/bf16, no dropout, PyTorch's kernel present."""
    return _OP is not None and query.device.type == "cpu" and query.dtype in _DTYPES and not (dropout and training)


def split_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, offset: int,
                    scaling: float | None) -> torch.Tensor:
    """Attention of q rows after `offset` cached keys: [B, H, q, D] (like SDPA's output)."""
    heads, kv_heads = query.shape[1], key.shape[1]
    if heads != kv_heads:  # grouped-query attention: one copy of the keys per query head (as repeat_kv)
        key = key.repeat_interleave(heads // kv_heads, dim=1)
        value = value.repeat_interleave(heads // kv_heads, dim=1)
    old, lse_old = _OP(query, key[:, :, :offset], value[:, :, :offset], 0.0, False, scale=scaling)
    new, lse_new = _OP(query, key[:, :, offset:], value[:, :, offset:], 0.0, True, scale=scaling)
    lse = torch.logaddexp(lse_old.float(), lse_new.float())
    out = old.float() * torch.exp(lse_old.float() - lse).unsqueeze(-1) + new.float() * torch.exp(lse_new.float() - lse).unsqueeze(-1)
    return out.to(query.dtype)


__all__ = ["usable", "split_attention"]
