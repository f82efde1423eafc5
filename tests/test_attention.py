"""Parity: every variant through the SDPA fast path equals a hand-written materialised eager formula."""

import math

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from harness.errors import UserError
from harness.attention import (AttentionSpec, apply_attention, attention_modules, parse_spec,
                               visible_keys)
from tests.tiny import build_model

SPECS = ["softmax", "ssmax", "ssmax(s=0.4)", "ssmax(s=1)", "ssmax(s=0.3,b=0.1)", "ssmax(s=auto)",
         "logn(L=64)", "temp(beta=0.5,floor=32)"]
TRAIN_LEN = 64


def formula_multiplier(module, n):
    """The attention-spec table (docs/architecture.md, Contracts), written out independently of harness.attention.query_scale."""
    spec = module.test_spec
    heads = module.config.num_attention_heads
    if spec == "softmax":
        return torch.ones(heads, 1)
    if spec == "ssmax":
        return module.ssmax_s.detach().view(-1, 1) * math.log(n)
    table = {"ssmax(s=0.4)": 0.4 * math.log(n), "ssmax(s=1)": math.log(n),
             "ssmax(s=0.3,b=0.1)": 0.3 * math.log(n) + 0.1, "ssmax(s=auto)": math.log(n) / math.log(TRAIN_LEN),
             "logn(L=64)": max(1.0, math.log(n) / math.log(64)),
             "temp(beta=0.5,floor=32)": 1 + 0.5 * math.log(1 + math.floor(n / 32))}
    return torch.full((heads, 1), table[spec])


def reference_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """softmax(m(n_i) * z_i) row by row on materialised scores, causal, no cache offset tricks."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    z = query.double() @ key.double().transpose(-1, -2) * scaling  # (B, H, q, kv)
    q_len, kv_len = z.shape[-2:]
    out = torch.zeros_like(query, dtype=torch.float64)
    for i in range(q_len):
        n = kv_len - q_len + i + 1  # keys this row may see
        row = z[:, :, i, :n] * formula_multiplier(module, n).double()
        out[:, :, i] = (torch.softmax(row, -1).unsqueeze(-2) @ value.double()[:, :, :n]).squeeze(-2)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


AttentionInterface.register("test_reference", reference_attention)
AttentionMaskInterface.register("test_reference", eager_mask)


def reference_logits(model, spec, ids):
    for _, module in attention_modules(model):
        module.test_spec = spec
    model.set_attn_implementation("test_reference")
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_sdpa_path_matches_materialised_formula(family):
    model = build_model(family, vocab_size=300, ssmax=True, training_length=TRAIN_LEN, seed=1)
    ids = torch.randint(0, 300, (2, 200), generator=torch.Generator().manual_seed(0))
    for spec in SPECS:
        apply_attention(model, spec, training_length=TRAIN_LEN)
        with torch.no_grad():
            fast = model(ids).logits
        expected = reference_logits(model, spec, ids)
        assert (fast - expected).abs().max().item() <= 1e-4, spec


def test_variants_differ_from_softmax():
    model = build_model("llama", vocab_size=300, ssmax=True, seed=2)
    ids = torch.randint(0, 300, (1, 128))
    with torch.no_grad():
        apply_attention(model, "softmax")
        soft = model(ids).logits
        apply_attention(model, "ssmax(s=1)")
        assert (model(ids).logits - soft).abs().max() > 1e-3


def test_kv_cache_decoding_matches_full_forward():
    model = build_model("llama", vocab_size=300, ssmax=True, seed=3)
    apply_attention(model, "ssmax")
    ids = torch.randint(0, 300, (2, 120))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :90], use_cache=True)
        steps, cache = [out.logits], out.cache
        for t in range(90, 120):
            out = model(ids[:, t:t + 1], cache=cache, use_cache=True)
            steps.append(out.logits)
            cache = out.cache
    assert (torch.cat(steps, 1) - full).abs().max().item() <= 1e-4


def test_padding_excluded_from_n():
    model = build_model("llama", vocab_size=300, ssmax=True, seed=4)
    apply_attention(model, "ssmax")
    ids = torch.randint(1, 300, (1, 60))
    padded = torch.cat([torch.zeros(1, 7, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 7, dtype=torch.long), torch.ones(1, 60, dtype=torch.long)], 1)
    positions = torch.cat([torch.zeros(1, 7, dtype=torch.long), torch.arange(60).view(1, -1)], 1)
    with torch.no_grad():
        alone = model(ids).logits
        left_padded = model(padded, attention_mask=mask, position_ids=positions).logits[:, 7:]
    assert (alone - left_padded).abs().max().item() <= 1e-4


def test_auto_equals_softmax_at_training_length():
    # One layer: the last position's logits depend only on its own attention row (n = TRAIN_LEN).
    model = build_model("llama", vocab_size=300, training_length=TRAIN_LEN, seed=5, num_hidden_layers=1)
    ids = torch.randint(0, 300, (1, TRAIN_LEN))
    with torch.no_grad():
        apply_attention(model, "softmax")
        soft = model(ids).logits[0, -1]
        apply_attention(model, "ssmax(s=auto)", training_length=TRAIN_LEN)
        auto = model(ids).logits
    assert (auto[0, -1] - soft).abs().max().item() <= 1e-5
    with torch.no_grad():
        apply_attention(model, "softmax")
        soft_mid = model(ids).logits[0, TRAIN_LEN // 4]
    assert (auto[0, TRAIN_LEN // 4] - soft_mid).abs().max().item() > 1e-4  # n < L: sharper than softmax


def test_visible_keys_counts_cache_offset_and_mask():
    assert visible_keys(None, 3, 10).flatten().tolist() == [8.0, 9.0, 10.0]
    mask = torch.tensor([[True, False, True, True]]).view(1, 1, 1, 4)
    assert visible_keys(mask, 1, 4).item() == 3.0


@pytest.mark.parametrize("text,expected", [
    ("softmax", "softmax"), ("ssmax", "ssmax"), (" ssmax( s = 0.25 ) ", "ssmax(s=0.25)"),
    ("ssmax(s=auto)", "ssmax(s=auto)"), ("ssmax(s=0.3,b=0.1)", "ssmax(s=0.3,b=0.1)"),
    ("logn(L=256)", "logn(L=256)"), ("temp", "temp(beta=0.1,floor=8192)"), ("temp(beta=0.2,floor=16)", "temp(beta=0.2,floor=16)"),
])
def test_parse_spec_round_trips(text, expected):
    assert str(parse_spec(text)) == expected
    assert parse_spec(expected) == parse_spec(text)


@pytest.mark.parametrize("text", ["ssmax(s=abc)", "flash", "ssmax(s=-1)", "ssmax(q=1)", "logn", "logn(L=2.5)",
                                  "ssmax(b=0.1)", "ssmax(s=inf)", "softmax(s=1)", "ssmax(s=1"])
def test_parse_spec_rejects_bad_input(text):
    with pytest.raises(UserError) as err:
        parse_spec(text)
    assert text.strip() in str(err.value) and "\n" not in str(err.value)


def test_learned_ssmax_needs_parameters():
    model = build_model("llama", vocab_size=300)
    with pytest.raises(UserError, match="learned s"):
        apply_attention(model, "ssmax")
    assert parse_spec("ssmax") == AttentionSpec("ssmax")
