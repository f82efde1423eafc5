"""Softcapped attention on FlexAttention (harness.attention.softcap) equals the rule written out and the materialised path.

On CPU the flex kernel runs uncompiled (the same score_mod and block mask the compiled CUDA kernel runs).
"""

import pytest
import torch

import harness.attention.softcap as softcap
from harness.attention import apply_attention
from harness.attention.key_pattern import KeyPattern
from harness.attention.variants import reset_attention_paths
from harness.inference.decode import cache_kwarg
from tests.test_key_pattern import dense_mask, qkv
from tests.tiny import build_model

TOL = 1e-5
CAP = 2.0


def capped_reference(q, k, v, mask, scale, cap, row_scale):
    """softmax(m_i * cap * tanh(q.k * scale / cap)) over the visible keys, grouped KV heads repeated."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    z = cap * torch.tanh(q @ k.transpose(-1, -2) * scale / cap)
    if row_scale is not None:
        z = z * row_scale
    return torch.softmax(z.masked_fill(~mask, float("-inf")), dim=-1) @ v


@pytest.mark.parametrize("q_len,shift,window", [(40, 0, None), (12, 28, None), (1, 39, None), (40, 0, 16),
                                                (12, 28, 16), (30, 5, 16), (150, 20, None)])
@pytest.mark.parametrize("scale_kind", ["softmax", "per_row", "per_head"])
def test_flex_softcap_equals_the_rule(q_len, shift, window, scale_kind):
    kv_len = shift + q_len
    q, k, v = qkv(q_len, kv_len)
    pattern = KeyPattern(q_len, kv_len, shift, window)
    n = pattern.counts()
    row_scale = {"softmax": None, "per_row": 0.4 * torch.log(n),
                 "per_head": torch.tensor([0.2, 0.3, 0.5, 0.7]).view(1, 4, 1, 1) * torch.log(n)}[scale_kind]
    got = softcap.flex_softcap(q, k, v, pattern, 0.3, CAP, row_scale)
    want = capped_reference(q, k, v, dense_mask(q_len, kv_len, shift, window), 0.3, CAP, row_scale)
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)
    other = KeyPattern(q_len, kv_len, shift, 4 if window is None else window + 1)  # a window off from the rule
    mutated = softcap.flex_softcap(q, k, v, other, 0.3, CAP, row_scale)
    assert not torch.allclose(mutated, want, atol=1e-3)  # the block mask reaches the kernel


def test_kernel_choice_follows_the_device(monkeypatch):
    assert not softcap.use_flex(torch.device("cpu")) and softcap.use_flex(torch.device("cuda", 0))
    monkeypatch.setattr(softcap, "SOFTCAP_KERNEL", "flex")
    assert softcap.use_flex(torch.device("cpu"))
    monkeypatch.setattr(softcap, "SOFTCAP_KERNEL", "fused")
    with pytest.raises(ValueError, match="SOFTCAP_KERNEL"):
        softcap.use_flex(torch.device("cpu"))


def _gemma2_run(kernel, monkeypatch):
    """Logits of a prompt, a suffix after a cache and a decode step of a windowed, softcapped Gemma 2 under SSMax."""
    from transformers import DynamicCache

    monkeypatch.setattr(softcap, "SOFTCAP_KERNEL", kernel)
    model = build_model("gemma2", vocab_size=300, sliding_window=16, attn_logit_softcapping=CAP)
    apply_attention(model, "ssmax(s=0.4)", training_length=32)
    ids = torch.randint(1, 300, (1, 60), generator=torch.Generator().manual_seed(1))
    kw = cache_kwarg(model.forward)
    reset_attention_paths()
    with torch.inference_mode():
        cache = DynamicCache()
        logits = [model(ids[:, a:b], **{kw: cache}, use_cache=True).logits for a, b in ((0, 40), (40, 59), (59, 60))]
    return torch.cat(logits, dim=1), reset_attention_paths()


def test_gemma2_flex_equals_materialised_for_prompt_suffix_and_decode(monkeypatch):
    flex, flex_paths = _gemma2_run("flex", monkeypatch)
    exact, exact_paths = _gemma2_run("materialised", monkeypatch)
    assert set(flex_paths) == {"flex_softcap"} and set(exact_paths) == {"materialised_softcap"}
    torch.testing.assert_close(flex, exact, atol=TOL, rtol=0)


def test_a_failing_flex_kernel_falls_back_to_the_exact_path_once(monkeypatch):
    exact, _ = _gemma2_run("materialised", monkeypatch)

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this GPU")

    monkeypatch.setattr(softcap, "_FLEX_BROKEN", [])
    monkeypatch.setattr("harness.attention.variants.flex_softcap", broken)
    with pytest.warns(UserWarning, match="FlexAttention softcap kernel unavailable") as record:
        got, paths = _gemma2_run("flex", monkeypatch)
    assert len([w for w in record if "FlexAttention" in str(w.message)]) == 1
    assert set(paths) == {"materialised_softcap"}
    torch.testing.assert_close(got, exact, atol=0, rtol=0)
