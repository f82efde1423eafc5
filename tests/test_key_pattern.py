"""Mask-free attention (harness.attention.key_pattern): patterns instead of q x kv masks, kernels equal to masked SDPA.

References are written here from first principles: a dense bool mask from the index rule, and SDPA (math) over it.
"""

import pytest
import torch
import torch.nn.functional as F
import transformers.masking_utils as masking

from harness.attention import apply_attention
from harness.attention.key_pattern import KeyPattern, causal_after, pattern_attention, pattern_mask
from harness.attention.variants import reset_attention_paths
from harness.inference.decode import cache_kwarg
from tests.tiny import build_model

TOL = 1e-5


def dense_mask(q_len, kv_len, shift, window=None):
    """The rule, written out: row i sees key j iff j <= i + shift and (no window or j > i + shift - window)."""
    i = torch.arange(q_len).view(-1, 1) + shift
    j = torch.arange(kv_len).view(1, -1)
    ok = j <= i
    if window is not None:
        ok &= j > i - window
    return ok


def reference(q, k, v, mask, scale):
    g = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1),
                                          attn_mask=mask, scale=scale)


def qkv(q_len, kv_len, heads=4, kv_heads=2, dim=8, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(2, heads, q_len, dim, generator=gen).to(dtype),
            torch.randn(2, kv_heads, kv_len, dim, generator=gen).to(dtype),
            torch.randn(2, kv_heads, kv_len, dim, generator=gen).to(dtype))


@pytest.mark.parametrize("q_len,shift,window", [
    (40, 0, None), (12, 28, None), (1, 39, None),            # fresh prefill, suffix after p keys, decode
    (40, 0, 16), (12, 28, 16), (1, 39, 16), (30, 5, 16),     # windows crossed inside the suffix and at its start
    (12, 28, 64), (700, 100, 300),                           # a window no row reaches; blocks of rows over a window
])
def test_pattern_attention_equals_masked_sdpa(q_len, shift, window):
    kv_len = shift + q_len
    q, k, v = qkv(q_len, kv_len)
    pattern = KeyPattern(q_len, kv_len, shift, window)
    assert torch.equal(pattern.dense().view(q_len, kv_len), dense_mask(q_len, kv_len, shift, window))
    assert pattern.counts().flatten().tolist() == dense_mask(q_len, kv_len, shift, window).sum(-1).float().tolist()
    got, path = pattern_attention(q, k, v, pattern, 0.3)
    torch.testing.assert_close(got, reference(q, k, v, dense_mask(q_len, kv_len, shift, window), 0.3), atol=TOL, rtol=0)
    assert path == ("window_blocks" if pattern.windowed else
                    {0: "sdpa_causal"}.get(shift, "sdpa_decode" if q_len == 1 else "split_lse"))


def test_row_blocks_are_the_cpu_fallback_for_a_suffix(monkeypatch):
    """Without the CPU flash op (another dtype, an older torch) a suffix runs in row blocks, still exact."""
    import harness.attention.key_pattern as kp

    monkeypatch.setattr(kp, "usable", lambda *a: False)
    q, k, v = qkv(600, 700)
    got, path = causal_after(q, k, v, 100, None)
    assert path == "row_blocks"
    torch.testing.assert_close(got, reference(q, k, v, dense_mask(600, 700, 100), None), atol=TOL, rtol=0)


def test_bf16_within_a_stated_tolerance():
    """bf16 paths agree with the fp32 reference to bf16 precision (2e-2 on unit-scale values)."""
    q, k, v = qkv(64, 96, dtype=torch.bfloat16)
    for pattern in (KeyPattern(64, 96, 32), KeyPattern(64, 96, 32, 24)):
        got, _ = pattern_attention(q, k, v, pattern, None)
        want = reference(q.float(), k.float(), v.float(), pattern.dense().view(64, 96), None)
        torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=0)


def _call(mask_function, q_len=6, kv_len=10, q_offset=4, kv_offset=0, **kw):
    return pattern_mask(batch_size=1, q_length=q_len, kv_length=kv_len, q_offset=q_offset, kv_offset=kv_offset,
                        mask_function=mask_function, **kw)


def test_pattern_mask_describes_causal_and_windowed_rows_and_builds_the_mask_otherwise():
    assert _call(masking.causal_mask_function) == KeyPattern(6, 10, 4)
    assert _call(masking.sliding_window_causal_mask_function(3), local_size=3) == KeyPattern(6, 10, 4, 3)
    assert _call(masking.causal_mask_function, q_offset=torch.tensor([4])) == KeyPattern(6, 10, 4)
    # padding: a real mask, built as transformers would
    padding = torch.ones(1, 10, dtype=torch.bool)
    padding[0, :2] = False
    built = _call(masking.causal_mask_function, attention_mask=padding)
    assert isinstance(built, torch.Tensor) and built.shape[-2:] == (6, 10)
    # a mask function that is not the pattern (bidirectional; causal claimed with a window it does not apply)
    assert isinstance(_call(masking.bidirectional_mask_function), torch.Tensor)
    assert isinstance(_call(masking.causal_mask_function, local_size=3), torch.Tensor)
    assert isinstance(_call(masking.causal_mask_function, use_vmap=True), torch.Tensor)
    # an all-true padding mask is no padding
    assert _call(masking.causal_mask_function, attention_mask=torch.ones(1, 10, dtype=torch.bool)) == KeyPattern(6, 10, 4)


@pytest.mark.parametrize("family,overrides", [("llama", {}), ("mistral", {"sliding_window": 16}),
                                              ("gemma2", {"sliding_window": 16, "attn_logit_softcapping": 2.0})])
def test_no_q_by_kv_mask_is_built_for_prefill_suffix_or_decode(family, overrides, monkeypatch):
    """transformers' mask builder is never reached: every forward of a prompt, a suffix and a decode step is a pattern."""
    from transformers import DynamicCache

    model = build_model(family, vocab_size=300, **overrides)
    apply_attention(model, "ssmax(s=0.4)", training_length=32)

    def refuse(*a, **k):
        raise AssertionError("a q x kv mask was built")

    monkeypatch.setattr(masking, "sdpa_mask", refuse)
    ids = torch.randint(1, 300, (1, 60), generator=torch.Generator().manual_seed(1))
    reset_attention_paths()
    kw = cache_kwarg(model.forward)
    with torch.inference_mode():
        cache = DynamicCache()
        model(ids[:, :40], **{kw: cache}, use_cache=True)
        model(ids[:, 40:59], **{kw: cache}, use_cache=True)
        model(ids[:, 59:], **{kw: cache}, use_cache=True)
    assert reset_attention_paths(), "no attention call was counted"


def test_long_context_bench_measures_the_paths_it_names():
    """`lch bench long_context` at toy size: each case runs in its own process on the kernels it claims."""
    from harness.benchmarks.long_context import _measure

    shared = _measure(family="llama", impl="lch", mode="shared", length=256)
    window = _measure(family="mistral", impl="lch", mode="prefill", length=256, window=64)
    capped = _measure(family="gemma2", impl="lch", mode="prefill", length=128, softcap=50.0)
    assert shared["status"] == window["status"] == capped["status"] == "ok", (shared, window, capped)
    assert shared["paths"] == {"sdpa_causal": 4, "split_lse": 4}
    assert window["paths"] == {"window_blocks": 4}
    assert capped["paths"] == {"materialised_softcap": 4}
    assert shared["forward_mib"] >= 0 and window["seconds"] > 0
