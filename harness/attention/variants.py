"""Attention variants (softmax, SSMax, log-n, temperature) as per-query-row scales on q.

Every variant multiplies query row i by a factor that depends only on n_i, the number of keys the
row may see, so mask-free SDPA kernels stay the fast path. The variant lives on each attention
module (`module.lch_variant`); the model's attention implementation is "lch", registered in both of
transformers' registries: its mask function (harness.attention.key_pattern.pattern_mask) describes causal and
windowed rows as a KeyPattern instead of a q x kv tensor, and builds a real mask only for padding and the like.

Family specifics the fast path keeps (tests/test_families.py checks each against a hand-written reference):
- the module's `scaling` (Gemma's query_pre_attn_scalar, Granite's attention_multiplier) goes to SDPA unchanged;
- sliding windows come from the pattern (or the real mask), so n_i counts only the keys inside the window; a mask
  skipped altogether (`None`) means plain causal rows, aligned the way SDPA's `is_causal` aligns them;
- logit softcapping (Gemma2's `softcap`: z -> cap*tanh(z/cap)) cannot be expressed as a scale on q. The softcapped
  logit is the score that enters softmax, so the variant scales it AFTER capping: softmax(m(n_i) * cap*tanh(z/cap)).
  Such calls take FlexAttention on CUDA (harness.attention.softcap: the cap and m(n_i) in its score_mod) and
  `materialised_attention` elsewhere (exact, a chunk of query rows at a time over the keys the chunk sees);
- attention sinks (`s_aux`) or a position bias are refused with a UserError rather than silently dropped.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from harness.attention.spec import AttentionSpec, resolve_spec
from harness.errors import UserError
from harness.attention.key_pattern import KeyPattern, pattern_attention, pattern_mask
from harness.attention.softcap import flex_failed, flex_softcap, use_flex

IMPLEMENTATION = "lch"
EAGER_IMPLEMENTATION = "lch_eager"
QUERY_PROJECTIONS = ("q_proj", "qkv_proj")  # Phi-3 packs q, k, v in one projection
MATERIALISED_ELEMENTS = 1 << 20  # score elements per row chunk of the materialised (softcap) path: 4 MiB of fp32
# scores stay in cache through tanh, scale and softmax (measured at 4k: 10% faster than 1 << 22)
MATERIALISED_MIN_ROWS = 32  # but never fewer rows: each chunk reads every key it sees once (at 128k, 2-row chunks
# would read the keys 64k times)


def attention_modules(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """The decoder's self-attention modules as (layer index, module), in layer order."""
    found = [(m.layer_idx, m) for _, m in model.named_modules()
             if hasattr(m, "layer_idx") and any(hasattr(m, p) for p in QUERY_PROJECTIONS)]
    return sorted(found, key=lambda pair: pair[0])


def check_supported(model: nn.Module) -> None:
    """Raise UserError unless the model routes attention through transformers' attention registry."""
    name = type(model).__name__
    if not getattr(model, "_supports_attention_backend", False):
        raise UserError(f"architecture {name} does not route attention through transformers' AttentionInterface; "
                        "supported: decoder families such as Llama, Mistral, Qwen2/Qwen3, Gemma (see README)")
    if not attention_modules(model):
        raise UserError(f"architecture {name} has no attention modules with a layer_idx and a q_proj (or qkv_proj); "
                        "supported: decoder families such as Llama, Mistral, Qwen2/Qwen3, Gemma (see README)")


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
    if isinstance(attention_mask, KeyPattern):
        return attention_mask.counts(device)
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


def causal_offset(q_len: int, kv_len: int) -> int:
    """Without a mask, row i may see keys 0 .. i + offset: how transformers' SDPA call aligns `is_causal`.

    One new row sees every key (decoding); several rows are aligned top-left (SDPA crops the keys to q_len,
    as with an empty static cache whose kv_len is the cache size): row i sees i + 1 keys.
    """
    return kv_len - 1 if q_len == 1 else 0


def allowed_keys(attention_mask: torch.Tensor | None, rows: torch.Tensor, q_len: int, kv_len: int) -> torch.Tensor:
    """Which keys the given local query rows may see, as bool [B|1, 1|H, len(rows), kv]."""
    if isinstance(attention_mask, KeyPattern):
        return attention_mask.allowed(rows, 0, kv_len)
    if attention_mask is None:
        keys = torch.arange(kv_len, device=rows.device)
        return (keys.view(1, -1) <= (rows + causal_offset(q_len, kv_len)).view(-1, 1)).view(1, 1, -1, kv_len)
    mask = attention_mask.index_select(-2, rows) if attention_mask.shape[-2] > 1 else attention_mask
    if mask.dtype != torch.bool:  # additive float mask: 0 where allowed, very negative where not
        mask = mask > torch.finfo(mask.dtype).min / 2
    mask = mask[..., -kv_len:]
    mask = mask if mask.dim() == 4 else mask.view(1, 1, *mask.shape[-2:])
    return mask.expand(*mask.shape[:2], len(rows), kv_len)


def scaled_query(module, query, attention_mask, kv_len) -> torch.Tensor:
    """The query with each row multiplied by its variant scale (unchanged for softmax)."""
    q_len = query.shape[2]
    if attention_mask is None:  # SDPA's is_causal: rows follow kv_len - q_len cached keys only when decoding
        kv_len = causal_offset(q_len, kv_len) + q_len
    n = visible_keys(attention_mask, q_len, kv_len, device=query.device)
    scale = query_scale(module, n)
    # the scale meets q in fp32 (a bf16 ln(n) factor would round the scale itself)
    return query if scale is None else (query.float() * scale).to(query.dtype)


def _refuse_unsupported(module, kwargs) -> None:
    for name, what in (("s_aux", "attention sinks"), ("position_bias", "a position bias")):
        if kwargs.get(name) is not None:
            raise UserError(f"{type(module).__name__} uses {what} ({name}), which lch attention does not support")


PATHS: dict[str, int] = {}
"""attention calls per kernel since the last `reset_attention_paths` (per cell telemetry and the manifest)"""


def reset_attention_paths() -> dict[str, int]:
    """The kernels that ran since the last reset, as {name: calls}; starts counting afresh."""
    seen = dict(PATHS)
    PATHS.clear()
    return seen


def _ran(path: str) -> None:
    PATHS[path] = PATHS.get(path, 0) + 1


def lch_attention(module, query, key, value, attention_mask, **kwargs):
    """The fast path: scale query rows by the variant, then a mask-free kernel for a KeyPattern (harness.attention.
    key_pattern), SDPA for a real mask (padding), or exact materialised scores for a softcapped family."""
    _refuse_unsupported(module, kwargs)
    dropout = kwargs.get("dropout", 0.0) if module.training else 0.0
    if isinstance(attention_mask, KeyPattern) and dropout:
        attention_mask = attention_mask.dense(query.device)  # training with dropout: the ordinary masked path
    if kwargs.get("softcap") is not None:
        if isinstance(attention_mask, KeyPattern) and use_flex(query.device):
            try:
                scale = query_scale(module, attention_mask.counts(query.device))
                output = flex_softcap(query, key, value, attention_mask, kwargs.get("scaling"), kwargs["softcap"],
                                      scale)
                _ran("flex_softcap")
                return output.transpose(1, 2).contiguous(), None
            except torch.OutOfMemoryError:
                raise
            except Exception as error:  # e.g. no Triton kernel for this GPU and head size: the exact path below
                flex_failed(error)
        output, _ = materialised_attention(module, query, key, value, attention_mask, **kwargs)
        _ran("materialised_softcap")
        return output, None
    if isinstance(attention_mask, KeyPattern):
        query = scaled_query(module, query, attention_mask, key.shape[2])
        output, path = pattern_attention(query, key, value, attention_mask, kwargs.get("scaling"))
        _ran(path)
        return output.transpose(1, 2).contiguous(), None
    query = scaled_query(module, query, attention_mask, key.shape[2])
    _ran("sdpa_masked" if attention_mask is not None else "sdpa")
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def attention_weights(module, query, keys_t, attention_mask, rows, q_len, scaling, softcap=None,
                      key_range: tuple[int, int] | None = None, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Weights of the given local query rows over all keys (or keys k0 .. k1 - 1): [B, H, rows, keys] fp32 (masked 0).

    query: the call's query [B, H, q, D]; keys_t: its keys as fp32 [B, Hkv, D, kv] (no repeat_kv: the query
    heads sharing a kv head are packed as rows of one group). The score is z = q.k * scaling, softcapped
    (cap*tanh(z/cap)) when the family caps logits, then multiplied by the variant's factor m(n_i). `scratch`, a
    flat fp32 CPU buffer of at least B * H * rows * keys elements, receives the scores and then the weights in place
    (a fresh tensor of that size costs a page fault per 4 KiB: 25% of this function's time at 4k).
    """
    batch, heads, _, head_dim = query.shape
    kv_heads, kv_len = keys_t.shape[1], keys_t.shape[-1]
    k0, k1 = key_range or (0, kv_len)
    groups, c = heads // kv_heads, len(rows)
    # z / cap (or z) straight from the matmul: the constant is folded into the c x D query, not the c x keys scores
    q = query.index_select(2, rows).float() * (scaling / softcap if softcap is not None else scaling)  # (B, H, c, D)
    out = None if scratch is None else scratch[:batch * heads * c * (k1 - k0)].view(batch, kv_heads, groups * c, k1 - k0)
    scores = torch.matmul(q.reshape(batch, kv_heads, groups * c, head_dim), keys_t[..., k0:k1], out=out)
    scores = scores.view(batch, heads, c, k1 - k0)
    if isinstance(attention_mask, KeyPattern):  # n_i from the pattern (the range may hold fewer keys than a row sees)
        allowed = attention_mask.allowed(rows, k0, k1)
        n = attention_mask.counts(rows.device)[..., rows, :]
    else:
        allowed = allowed_keys(attention_mask, rows, q_len, kv_len)  # (B|1, 1|H, c, kv)
        n = allowed.sum(-1, keepdim=True, dtype=torch.float32).clamp_(min=1.0)  # counted on the materialised mask
        allowed = allowed[..., k0:k1]
    scale = query_scale(module, n)  # m(n_i) per row, times the cap: one pass over the scores
    if softcap is not None:
        scores = scores.tanh_()
        scale = softcap if scale is None else scale * softcap
    if scale is not None:
        scores = scores.mul_(scale)
    _mask_columns(scores, allowed)
    if scratch is None:
        weights = torch.softmax(scores, dim=-1)
    else:  # the CPU kernel reads each row before it writes it: in place is exact
        weights = torch.ops.aten._softmax.out(scores, -1, False, out=scores)
    return weights if isinstance(attention_mask, KeyPattern) else weights.nan_to_num_(0.0)


def _mask_columns(scores: torch.Tensor, allowed: torch.Tensor) -> None:
    """scores = -inf where not allowed, touching only the leading and trailing columns some row may not see."""
    seen_by_all = allowed.all(dim=-2).reshape(-1, allowed.shape[-1]).all(dim=0)  # (keys,)
    if bool(seen_by_all.all()):
        return
    inside = seen_by_all.nonzero()
    a, b = (int(inside[0]), int(inside[-1]) + 1) if len(inside) else (0, 0)
    if b - a != len(inside):  # columns seen by every row are not one run: mask everything
        a = b = 0
    for lo, hi in ((0, a), (b, scores.shape[-1])):
        if hi > lo:
            scores[..., lo:hi].masked_fill_(~allowed[..., lo:hi], float("-inf"))


def materialised_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None,
                           return_weights=False, chunk_elements: int | None = None, **kwargs):
    """Exact attention on materialised scores, a chunk of query rows at a time; returns (output, weights|None).

    Used by the fast path when the family softcaps logits, and (with return_weights) as the eager reference.
    """
    batch, heads, q_len, head_dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    scaling = head_dim**-0.5 if scaling is None else scaling
    keys_t = key.float().transpose(2, 3)
    values = value.float()
    chunk_elements = MATERIALISED_ELEMENTS if chunk_elements is None else chunk_elements
    chunk = q_len if return_weights else max(MATERIALISED_MIN_ROWS, chunk_elements // max(1, batch * heads * kv_len))
    outputs, all_weights = [], []
    pattern = attention_mask if isinstance(attention_mask, KeyPattern) and not return_weights else None
    scratch = None
    if not return_weights and query.device.type == "cpu":
        scratch = torch.empty(batch * heads * min(chunk, q_len) * kv_len, dtype=torch.float32)
    for start in range(0, q_len, chunk):
        rows = torch.arange(start, min(q_len, start + chunk), device=query.device)
        k0, k1 = pattern.key_range(start, start + len(rows)) if pattern is not None else (0, kv_len)
        weights = attention_weights(module, query, keys_t, attention_mask, rows, q_len, scaling, softcap, (k0, k1),
                                    scratch)
        if dropout and module.training:
            weights = torch.nn.functional.dropout(weights, p=dropout)
        c = len(rows)
        out = torch.matmul(weights.reshape(batch, kv_heads, groups * c, k1 - k0), values[:, :, k0:k1])  # (B, Hkv, g*c, D)
        outputs.append(out.view(batch, heads, c, -1))
        if return_weights:
            all_weights.append(weights)
    output = torch.cat(outputs, dim=2).to(query.dtype).transpose(1, 2).contiguous()
    return output, (torch.cat(all_weights, dim=2) if return_weights else None)


def eager_reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Materialised reference: softmax(scale_i * z) over the full score matrix; returns (output, weights)."""
    _refuse_unsupported(module, kwargs)
    return materialised_attention(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                  softcap=kwargs.get("softcap"), return_weights=True)


AttentionInterface.register(IMPLEMENTATION, lch_attention)
AttentionMaskInterface.register(IMPLEMENTATION, pattern_mask)
AttentionInterface.register(EAGER_IMPLEMENTATION, eager_reference_attention)
AttentionMaskInterface.register(EAGER_IMPLEMENTATION, eager_mask)
