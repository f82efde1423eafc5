"""Attention variants (softmax, SSMax, log-n, temperature) as per-query-row scales on q.

Every variant multiplies query row i by a factor that depends only on n_i, the number of keys the
row may see, so the ordinary SDPA kernel stays the fast path. The variant lives on each attention
module (`module.lch_variant`); the model's attention implementation is "lch", registered in both of
transformers' registries (a name missing from the mask registry silently builds no mask).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from harness.attention_spec import SPEC_HELP, AttentionSpec, parse_spec, resolve_spec  # noqa: F401 (re-exported)
from harness.errors import UserError

IMPLEMENTATION = "lch"
EAGER_IMPLEMENTATION = "lch_eager"


def attention_modules(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """The decoder's self-attention modules as (layer index, module), in layer order."""
    found = [(m.layer_idx, m) for _, m in model.named_modules() if hasattr(m, "layer_idx") and hasattr(m, "q_proj")]
    return sorted(found, key=lambda pair: pair[0])


def check_supported(model: nn.Module) -> None:
    """Raise UserError unless the model routes attention through transformers' attention registry."""
    name = type(model).__name__
    if not getattr(model, "_supports_attention_backend", False) or not attention_modules(model):
        raise UserError(f"architecture {name} does not route attention through transformers' AttentionInterface; "
                        "supported: decoder families such as Llama, Mistral, Qwen2/Qwen3, Gemma")


def add_ssmax_parameters(model: nn.Module, init_s: float, bias: bool = False, init_b: float = 0.0) -> None:
    """Give every attention module a trainable per-head `ssmax_s` (and `ssmax_b`) and mark the config as SSMax."""
    heads = model.config.num_attention_heads
    for _, module in attention_modules(model):
        weight = next(module.parameters())
        module.ssmax_s = nn.Parameter(torch.full((heads,), float(init_s), device=weight.device, dtype=torch.float32))
        if bias:
            module.ssmax_b = nn.Parameter(torch.full((heads,), float(init_b), device=weight.device, dtype=torch.float32))
    model.config.attention_variant = {"name": "ssmax", "bias": bool(bias)}


def has_ssmax_parameters(model: nn.Module) -> bool:
    """True when every attention module carries learned `ssmax_s`."""
    modules = attention_modules(model)
    return bool(modules) and all(isinstance(getattr(m, "ssmax_s", None), torch.Tensor) for _, m in modules)


def apply_attention(model: nn.Module, spec: str | AttentionSpec, training_length: int | None = None,
                    implementation: str = IMPLEMENTATION) -> AttentionSpec:
    """Route every attention layer through SDPA with the variant's query scale; returns the resolved spec."""
    check_supported(model)
    spec = resolve_spec(spec, training_length)
    if spec.learned and not has_ssmax_parameters(model):
        raise UserError("attention 'ssmax' uses the checkpoint's learned s, but this checkpoint has none; "
                        "use ssmax(s=auto) or ssmax(s=<number>)")
    for _, module in attention_modules(model):
        module.lch_variant = spec
    model.set_attn_implementation(implementation)
    return spec


def visible_keys(attention_mask: torch.Tensor | None, q_len: int, kv_len: int, device=None) -> torch.Tensor:
    """Number of keys each query row may see, as fp32 broadcastable to [B, H, q_len, 1]."""
    if attention_mask is None:
        # Causal without padding: the q_len new rows follow kv_len - q_len cached keys.
        n = torch.arange(kv_len - q_len + 1, kv_len + 1, device=device, dtype=torch.float32)
        return n.view(1, 1, q_len, 1)
    if attention_mask.dtype == torch.bool:
        allowed = attention_mask
    else:  # additive float mask: 0 where allowed, a very negative number where not
        allowed = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    return allowed.sum(-1, keepdim=True, dtype=torch.float32).clamp_(min=1.0)[..., -q_len:, :]


def query_scale(module: nn.Module, n: torch.Tensor) -> torch.Tensor | None:
    """Multiplier of each query row for the module's variant: [B|1, H|1, q, 1] fp32, or None for softmax."""
    spec: AttentionSpec = getattr(module, "lch_variant", None) or AttentionSpec()
    if spec.name == "softmax":
        return None
    log_n = torch.log(n)
    if spec.name == "ssmax":
        if spec.learned:
            scale = module.ssmax_s.float().view(1, -1, 1, 1) * log_n
            bias = getattr(module, "ssmax_b", None)
            return scale + bias.float().view(1, -1, 1, 1) if bias is not None else scale
        return spec.s * log_n + (spec.b or 0.0)
    if spec.name == "logn":
        return (log_n / math.log(spec.L)).clamp(min=1.0)
    return 1.0 + spec.beta * torch.log1p(torch.floor(n / spec.floor))


def scaled_query(module, query, attention_mask, kv_len) -> torch.Tensor:
    """The query with each row multiplied by its variant scale (unchanged for softmax)."""
    n = visible_keys(attention_mask, query.shape[2], kv_len, device=query.device)
    scale = query_scale(module, n)
    return query if scale is None else query * scale.to(query.dtype)


def lch_attention(module, query, key, value, attention_mask, **kwargs):
    """The fast path: scale query rows, then transformers' ordinary SDPA attention."""
    query = scaled_query(module, query, attention_mask, key.shape[2])
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def eager_reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Materialised reference: softmax(scale_i * z) over the full score matrix; returns (output, weights)."""
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    q_len, kv_len = query.shape[2], key.shape[2]
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query.float(), key.float().transpose(2, 3)) * scaling  # (B, H, q, kv)
    if attention_mask is None:
        rows = torch.arange(q_len, device=query.device).view(-1, 1) + (kv_len - q_len)
        allowed = torch.arange(kv_len, device=query.device).view(1, -1) <= rows
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask
    else:
        allowed = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    allowed = allowed.expand_as(scores) if allowed.dim() == 4 else allowed.view(1, 1, q_len, kv_len).expand_as(scores)
    n = allowed.sum(-1, keepdim=True).clamp(min=1).float()  # counted on the materialised mask
    scale = query_scale(module, n)
    if scale is not None:
        scores = scores * scale
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num(0.0)
    output = torch.matmul(weights, value.float()).to(query.dtype)
    return output.transpose(1, 2).contiguous(), weights


AttentionInterface.register(IMPLEMENTATION, lch_attention)
AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)
AttentionInterface.register(EAGER_IMPLEMENTATION, eager_reference_attention)
AttentionMaskInterface.register(EAGER_IMPLEMENTATION, eager_mask)
