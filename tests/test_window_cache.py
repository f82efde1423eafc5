"""Sliding-window caches bounded by what a rewind needs (harness.inference.window_cache): W - 1 + r keys, same results."""

import pytest
import torch

from harness.attention import apply_attention
from harness.inference.decode import prefill, rewind, score_prompt
from harness.inference.prefix_cache import PrefixCache
from harness.inference.window_cache import WindowLayer, bounded_cache
from tests.tiny import build_model

W = 16
FAMILIES = [("mistral", {"sliding_window": W}),
            ("gemma2", {"sliding_window": W, "attn_logit_softcapping": 2.0, "query_pre_attn_scalar": 8})]


def _model(family, overrides):
    model = build_model(family, vocab_size=300, **overrides)
    apply_attention(model, "ssmax(s=0.4)", training_length=32)
    return model


def _ids(n, seed=0):
    return torch.randint(1, 300, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("family,overrides", FAMILIES, ids=[f for f, _ in FAMILIES])
def test_bounded_window_cache_gives_the_same_answer_and_nll_as_a_full_one(family, overrides):
    model = _model(family, overrides)
    for length, seed in ((90, 0), (40, 1), (14, 2)):  # past the window, just past it, inside it
        ids, answer = _ids(length, seed), _ids(6, seed + 10)
        bounded = score_prompt(model, ids, answer, 8)  # no shared prefix: window layers bounded
        full = score_prompt(model, ids, answer, 8, prefix=PrefixCache(True), group="g")  # every key kept
        assert bounded[0] == full[0]
        assert abs(bounded[1] - full[1]) < 1e-5


@pytest.mark.parametrize("family,overrides", FAMILIES, ids=[f for f, _ in FAMILIES])
def test_window_layers_hold_at_most_window_minus_one_plus_rewind_keys(family, overrides):
    model = _model(family, overrides)
    with torch.inference_mode():
        for length in (90, 200):
            _, cache = prefill(model, _ids(length), rewind=5)
            windows = [layer for layer in cache.layers if isinstance(layer, WindowLayer)]
            assert windows and all(layer.held() == W - 1 + 5 for layer in windows)  # not `length`
            assert cache.get_seq_length() == length
            full = [layer for layer in cache.layers if not isinstance(layer, WindowLayer)]
            assert all(layer.keys.shape[-2] == length for layer in full)  # full-attention layers keep every key


def test_a_rewind_past_the_bound_is_refused_and_a_plain_model_gets_no_bounded_cache():
    model = _model(*FAMILIES[0])
    with torch.inference_mode():
        _, cache = prefill(model, _ids(90), rewind=3)
        assert rewind(cache, 3, 87)  # within the bound
        assert not rewind(cache, 2, 85)  # would need keys it dropped
    assert bounded_cache(build_model("llama", vocab_size=300).config, 3) is None
