"""The family matrix: every attention variant, KV-cache decoding and probes on each supported family.

Each case is a tiny random model of one family (hidden 32, 2 layers, 4 query heads on 2 kv heads) with
prompts longer than its sliding window. The reference below is written from the families' documented
behaviour (the expected window of every layer, the attention scaling and the logit softcap are literals
of the case table) and independently of harness.attention: it ignores the mask transformers builds and
computes visibility, n_i and the variant factor itself. For softcapped families the variant scales the
capped logit: softmax(m(n_i) * cap*tanh(z/cap)) (the capped logit is the score that enters softmax).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from dataclasses import dataclass, field

import pytest
import torch
from transformers import AttentionInterface, AutoModelForCausalLM, GPT2Config, StaticCache
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from harness.attention import apply_attention, attention_modules, lch_attention
from harness.errors import UserError
from harness.models.families import (SUPPORTED_FAMILIES, check_architecture, context_length, rope_bases, set_rope_theta,
                              supported_models_table)
from harness.attention.probe import capture
from tests.tiny import build_model

TOL = 1e-4
TRAIN_LEN = 64
W = 16  # sliding window of every windowed case; prompts are 3-6x longer
VOCAB = 200
SPECS = ["softmax", "ssmax", "ssmax(s=0.4)", "ssmax(s=0.3,b=0.1)", "ssmax(s=auto)", "logn(L=64)", "temp(beta=0.5,floor=32)"]
LLAMA3 = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 256}


@dataclass(frozen=True)
class Case:
    id: str
    family: str
    overrides: dict = field(default_factory=dict)
    windows: tuple = (None, None)
    """expected sliding window of each layer (None = all causal keys), from the family's documentation"""
    scaling: float = 8**-0.5
    """expected attention scaling (head_dim 8)"""
    softcap: float | None = None
    """expected attention logit softcap"""


CASES = [
    Case("llama", "llama"),
    Case("llama-llama3", "llama", {"rope_parameters": dict(LLAMA3)}),
    Case("llama-linear", "llama", {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 4.0}}),
    Case("mistral", "mistral", {"sliding_window": W}, (W, W)),
    # Qwen2/3: layers from max_window_layers on slide
    Case("qwen2", "qwen2", {"use_sliding_window": True, "sliding_window": W, "max_window_layers": 1}, (None, W)),
    Case("qwen3", "qwen3", {"head_dim": 8, "use_sliding_window": True, "sliding_window": W, "max_window_layers": 1}, (None, W)),
    Case("gemma", "gemma"),
    # Gemma2: even layers slide; scaling query_pre_attn_scalar**-0.5; scores softcapped at 2
    Case("gemma2", "gemma2", {"sliding_window": W, "query_pre_attn_scalar": 12, "attn_logit_softcapping": 2.0,
                              "final_logit_softcapping": 3.0}, (W, None), scaling=12**-0.5, softcap=2.0),
    # Gemma3: layer_types, local base 1e4 / global 1e6, no attention softcap
    Case("gemma3", "gemma3_text", {"sliding_window": W, "query_pre_attn_scalar": 12,
                                   "layer_types": ["sliding_attention", "full_attention"]}, (W, None), scaling=12**-0.5),
    # SmolLM3: layer 1 is NoPE, and NoPE layers slide when use_sliding_window
    Case("smollm3", "smollm3", {"no_rope_layers": [1, 0], "use_sliding_window": True, "sliding_window": W}, (None, W)),
    Case("phi3", "phi3", {"sliding_window": W}, (W, W)),
    Case("olmo", "olmo"),
    Case("olmo2", "olmo2"),
    Case("cohere", "cohere"),
    Case("cohere2", "cohere2", {"sliding_window": W, "layer_types": ["sliding_attention", "full_attention"]}, (W, None)),
    Case("granite", "granite", {"attention_multiplier": 0.2}, scaling=0.2),
    Case("starcoder2", "starcoder2", {"sliding_window": W}, (W, W)),
    Case("helium", "helium"),
    Case("glm", "glm"),
    Case("exaone4", "exaone4", {"sliding_window": W, "layer_types": ["sliding_attention", "full_attention"]}, (W, None)),
]
BY_ID = {case.id: case for case in CASES}
SLIDING = [c for c in CASES if any(c.windows)]
SPECIFIC = [c for c in CASES if any(c.windows) or c.softcap or c.scaling != 8**-0.5]


def make(case: Case, ssmax: bool = True, seed: int = 0, **extra):
    # initializer_range 0.2: peaked attention, so windows, caps and scales change the logits visibly
    return build_model(case.family, vocab_size=VOCAB, ssmax=ssmax, training_length=TRAIN_LEN, seed=seed,
                       initializer_range=0.2, **{**case.overrides, **extra})


def tokens(length: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ reference


def multiplier(module, spec: str, n: list[int]) -> torch.Tensor:
    """The attention-spec table (docs/architecture.md, Contracts) for rows that see n[i] keys, as [H, q, 1] float64 (independent of query_scale)."""
    heads = module.config.num_attention_heads
    log_n = torch.tensor([math.log(k) for k in n], dtype=torch.float64).view(1, -1, 1)
    if spec == "softmax":
        return torch.ones(heads, len(n), 1, dtype=torch.float64)
    if spec == "ssmax":
        return module.ssmax_s.detach().double().view(-1, 1, 1) * log_n
    formula = {"ssmax(s=0.4)": lambda k: 0.4 * math.log(k), "ssmax(s=0.3,b=0.1)": lambda k: 0.3 * math.log(k) + 0.1,
               "ssmax(s=auto)": lambda k: math.log(k) / math.log(TRAIN_LEN),
               "logn(L=64)": lambda k: max(1.0, math.log(k) / math.log(64)),
               "temp(beta=0.5,floor=32)": lambda k: 1 + 0.5 * math.log(1 + math.floor(k / 32))}[spec]
    values = torch.tensor([formula(k) for k in n], dtype=torch.float64).view(1, -1, 1)
    return values.expand(heads, -1, -1)


def reference_attention(module, query, key, value, attention_mask, dropout=0.0, **kwargs):
    """softmax(m(n_i) * capped(z)) over the keys the family's window allows; a full causal pass, no cache."""
    case, spec, knobs = module.test_case, module.test_spec, module.test_knobs
    q_len, kv_len = query.shape[2], key.shape[2]
    assert q_len == kv_len, "the reference is for full forwards without a cache"
    window = None if knobs.get("no_window") else case.windows[module.layer_idx]
    scaling = query.shape[-1] ** -0.5 if knobs.get("default_scaling") else case.scaling
    k = repeat_kv(key, module.num_key_value_groups).double()
    v = repeat_kv(value, module.num_key_value_groups).double()
    z = query.double() @ k.transpose(-1, -2) * scaling  # (B, H, q, kv)
    if case.softcap and not knobs.get("no_softcap"):
        z = case.softcap * torch.tanh(z / case.softcap)
    i = torch.arange(q_len).view(-1, 1)
    j = torch.arange(kv_len).view(1, -1)
    allowed = j <= i
    if window is not None:
        allowed = allowed & (j > i - window)  # the last `window` keys, the query's own included
    n = [min(r + 1, window) if window is not None else r + 1 for r in range(q_len)]
    z = z * multiplier(module, spec, n)
    weights = torch.softmax(z.masked_fill(~allowed, float("-inf")), dim=-1)
    out = weights @ v
    return out.to(query.dtype).transpose(1, 2).contiguous(), weights.to(query.dtype)


AttentionInterface.register("test_family_reference", reference_attention)
AttentionMaskInterface.register("test_family_reference", eager_mask)


def reference(model, case, spec, ids, output_attentions=False, **knobs):
    """Logits (and per-layer weights) of the reference; leaves the model on the reference implementation."""
    for _, module in attention_modules(model):
        module.test_case, module.test_spec, module.test_knobs = case, spec, knobs
    model.set_attn_implementation("test_family_reference")
    with torch.no_grad():
        out = model(ids, output_attentions=output_attentions)
    return (out.logits, out.attentions) if output_attentions else out.logits


def fast(model, spec, ids):
    apply_attention(model, spec, training_length=TRAIN_LEN)
    with torch.no_grad():
        return model(ids).logits


def maxdiff(a, b) -> float:
    return (a.double() - b.double()).abs().max().item()


# ------------------------------------------------------------------------------------ 1. every variant


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_variant_equals_the_independent_reference(case):
    model = make(case)
    ids = tokens(96)
    for spec in SPECS:
        got = fast(model, spec, ids)
        assert torch.isfinite(got).all()
        assert maxdiff(got, reference(model, case, spec, ids)) <= TOL, spec


@pytest.mark.parametrize("case", SPECIFIC, ids=lambda c: c.id)
def test_reference_sees_each_family_specific(case):
    """The window, the softcap and the scaling of each case change the logits at this length: the matrix can fail."""
    model = make(case)
    ids = tokens(96)
    for spec in ("softmax", "ssmax(s=0.4)"):
        got = fast(model, spec, ids)
        if any(case.windows):
            assert maxdiff(got, reference(model, case, spec, ids, no_window=True)) > 1e-3, spec
        if case.softcap:
            assert maxdiff(got, reference(model, case, spec, ids, no_softcap=True)) > 1e-3, spec
        if case.scaling != 8**-0.5:
            assert maxdiff(got, reference(model, case, spec, ids, default_scaling=True)) > 1e-3, spec


def test_softcap_path_in_small_row_chunks(monkeypatch):
    """The materialised softcap path bounds memory by chunks of query rows; many chunks give the same logits."""
    import harness.attention.variants as variants

    case = BY_ID["gemma2"]
    model = make(case)
    ids = tokens(96)
    monkeypatch.setattr(variants, "MATERIALISED_ELEMENTS", 2 * 4 * 96 * 7)  # 7 rows of 96 keys per chunk
    monkeypatch.setattr(variants, "MATERIALISED_MIN_ROWS", 1)
    for spec in ("ssmax", "temp(beta=0.5,floor=32)"):
        assert maxdiff(fast(model, spec, ids), reference(model, case, spec, ids)) <= TOL, spec


@pytest.mark.parametrize("case", [BY_ID["gemma2"]], ids=lambda c: c.id)
def test_softcap_is_applied_before_the_variant_scale(case):
    """softmax(m * cap*tanh(z/cap)), not cap*tanh(m*z/cap): the two orders differ, the fast path takes the first."""
    model = make(case)
    ids = tokens(96)
    got = fast(model, "ssmax(s=0.4)", ids)

    def scale_then_cap(module, query, key, value, attention_mask, **kwargs):
        n = torch.arange(1, query.shape[2] + 1, dtype=torch.float64)
        if case.windows[module.layer_idx]:
            n = n.clamp(max=case.windows[module.layer_idx])
        query = (query.double() * (0.4 * torch.log(n)).view(1, 1, -1, 1)).to(query.dtype)
        module.test_spec = "softmax"
        return reference_attention(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("test_scale_then_cap", scale_then_cap)
    AttentionMaskInterface.register("test_scale_then_cap", eager_mask)
    for _, module in attention_modules(model):
        module.test_case, module.test_knobs = case, {}
    model.set_attn_implementation("test_scale_then_cap")
    with torch.no_grad():
        other = model(ids).logits
    assert maxdiff(got, other) > 1e-3


# ------------------------------------------------------------------------------------ 2. KV cache


def decode(model, ids, prefix, chunk, cache=None):
    """Prefill `prefix` tokens, one chunk of `chunk` tokens, then one token at a time; the logits of every step."""
    with torch.no_grad():
        out = model(ids[:, :prefix], use_cache=True, cache=cache)
        steps, cache = [out.logits], out.cache
        bounds = [prefix, prefix + chunk] + list(range(prefix + chunk + 1, ids.shape[1] + 1))
        for start, end in zip(bounds, bounds[1:]):
            out = model(ids[:, start:end], cache=cache, use_cache=True)
            steps.append(out.logits)
            cache = out.cache
    return torch.cat(steps, 1)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_kv_cache_decoding_equals_the_full_pass(case):
    model = make(case)
    ids = tokens(60, seed=1)
    for spec in ("softmax", "ssmax(s=0.4)", "ssmax"):
        full = fast(model, spec, ids)
        assert maxdiff(decode(model, ids, prefix=40, chunk=5), full) <= TOL, spec  # prefix 40 > window 16


@pytest.mark.parametrize("case", [BY_ID["llama"], BY_ID["gemma3"], BY_ID["gemma2"]], ids=lambda c: c.id)
def test_static_cache_decoding_equals_the_full_pass(case):
    """An empty static cache is longer than the prompt: n must count the prompt's keys, not the cache slots."""
    model = make(case)
    ids = tokens(48, seed=2)
    for spec in ("ssmax(s=0.4)", "ssmax"):
        full = fast(model, spec, ids)
        cache = StaticCache(config=model.config, max_cache_len=64)
        assert maxdiff(decode(model, ids, prefix=24, chunk=4, cache=cache), full) <= TOL, spec


# ------------------------------------------------------------------------------------ 3. probes


def probe_stats(model, spec, ids, rows, spans=None):
    apply_attention(model, spec, training_length=TRAIN_LEN)
    with torch.no_grad(), capture(model, rows, spans=spans) as probe:
        model(ids)
    return probe


@pytest.mark.parametrize("case", SLIDING + [BY_ID["llama"]], ids=lambda c: c.id)
def test_probe_rows_equal_reference_and_eager_weights(case):
    model = make(case)
    ids = tokens(48, seed=3)
    rows, span = [3, 20, 47], (8, 24)  # row 47 on a sliding layer sees keys 32..47 only
    for spec in ("softmax", "ssmax(s=0.4)", "ssmax"):
        probe = probe_stats(model, spec, ids, rows, spans={"s": span})
        _, attentions = reference(model, case, spec, ids, output_attentions=True)
        w = torch.stack(attentions).double()[:, :, :, rows]  # (layers, B, H, rows, kv)
        torch.testing.assert_close(probe.get("max_weight").double(), w.amax(-1), atol=TOL, rtol=0)
        torch.testing.assert_close(probe.get("entropy").double(), torch.special.entr(w).sum(-1), atol=TOL, rtol=0)
        torch.testing.assert_close(probe.get("mass:s").double(), w[..., span[0]:span[1]].sum(-1), atol=TOL, rtol=0)
        if spec == "softmax":  # the family's own eager attention agrees on softmax
            model.set_attn_implementation("eager")
            with torch.no_grad():
                eager = torch.stack(model(ids, output_attentions=True).attentions).double()[:, :, :, rows]
            torch.testing.assert_close(probe.get("max_weight").double(), eager.amax(-1), atol=TOL, rtol=0)
    for layer, window in enumerate(case.windows):
        if window:  # sanity of the reference itself: no weight outside the window
            assert w[layer, ..., 2, : 47 - window + 1].abs().max() == 0


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("case", SLIDING + [BY_ID["llama"]], ids=lambda c: c.id)
def test_probe_rows_and_spans_are_positions_with_a_sliding_cache(case, static):
    """Decoding past the window: a sliding cache hands attention window - 1 keys, a static cache all its slots;
    rows and spans stay positions in the full sequence."""
    model = make(case)
    ids = tokens(48, batch=1, seed=4)
    rows, span = [33, 40, 47], (30, 38)
    spec = "ssmax"
    apply_attention(model, spec, training_length=TRAIN_LEN)
    cache = StaticCache(config=model.config, max_cache_len=64) if static else None
    with torch.no_grad(), capture(model, rows, spans={"s": span}) as probe:
        out = model(ids[:, :30], use_cache=True, cache=cache)
        cache = out.cache
        for t in range(30, 48):
            cache = model(ids[:, t:t + 1], cache=cache, use_cache=True).cache
    assert probe.missing_rows() == []
    _, attentions = reference(model, case, spec, ids, output_attentions=True)
    w = torch.stack(attentions).double()[:, :, :, rows]
    torch.testing.assert_close(probe.get("max_weight").double(), w.amax(-1), atol=TOL, rtol=0)
    torch.testing.assert_close(probe.get("entropy").double(), torch.special.entr(w).sum(-1), atol=TOL, rtol=0)
    torch.testing.assert_close(probe.get("mass:s").double(), w[..., span[0]:span[1]].sum(-1), atol=TOL, rtol=0)


# ------------------------------------------------------------------------------------ 4. refusals


def test_supported_families_are_the_tested_ones():
    assert set(SUPPORTED_FAMILIES) == {c.family for c in CASES}
    table = supported_models_table()
    assert all(f"`{model_type}`" in table for model_type in SUPPORTED_FAMILIES)
    for model_type in SUPPORTED_FAMILIES:
        check_architecture({"model_type": model_type, "architectures": ["X"]})
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert table in readme  # the README's "Supported models" table is this one, so true by these tests


@pytest.mark.parametrize("config,name", [
    ({"model_type": "stablelm", "architectures": ["StableLmForCausalLM"]}, "StableLmForCausalLM"),
    ({"model_type": "falcon", "architectures": ["FalconForCausalLM"]}, "FalconForCausalLM"),
    ({"model_type": "mamba", "architectures": ["MambaForCausalLM"]}, "MambaForCausalLM"),
    ({"model_type": "bloom"}, "bloom"),
    ({"model_type": "gpt_oss", "architectures": ["GptOssForCausalLM"]}, "GptOssForCausalLM"),
    ({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]}, "T5ForConditionalGeneration"),
    ({"model_type": "no_such_model", "architectures": ["NoSuchForCausalLM"]}, "NoSuchForCausalLM"),
    ({"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], "use_bidirectional_attention": True},
     "Gemma3ForCausalLM"),
])
def test_check_architecture_refuses_with_one_line_naming_it(config, name):
    with pytest.raises(UserError) as err:
        check_architecture(config)
    assert name in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("config", [
    {"model_type": "apertus", "architectures": ["ApertusForCausalLM"]},  # untested, routes through the registry
    {"model_type": "seed_oss"},
    {"model_type": "whatever", "auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}},  # checked after loading
])
def test_check_architecture_lets_untested_backend_models_through(config):
    check_architecture(config)


def test_models_the_harness_cannot_serve_raise_user_error():
    model = build_model("stablelm", vocab_size=VOCAB)
    with pytest.raises(UserError, match="StableLmForCausalLM") as err:
        apply_attention(model, "ssmax(s=0.3)")
    assert "\n" not in str(err.value)
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=64))
    with pytest.raises(UserError, match="GPT2LMHeadModel.*q_proj"):
        apply_attention(gpt2, "softmax")


def test_attention_sinks_are_refused_not_dropped():
    module = attention_modules(build_model("llama", vocab_size=VOCAB))[0][1]
    q = k = v = torch.zeros(1, 4, 3, 8)
    with pytest.raises(UserError, match="sinks"):
        lch_attention(module, q, k[:, :2], v[:, :2], None, scaling=0.3, s_aux=torch.zeros(4))


# ------------------------------------------------------------------------------------ 5. RoPE


def default_inv_freq(theta: float, dim: int = 8) -> torch.Tensor:
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def llama3_inv_freq(theta, factor, low, high, original, dim=8):
    """Llama 3.1's frequency scaling, written out."""
    inv = default_inv_freq(theta, dim)
    wavelen = 2 * math.pi / inv
    low_wl, high_wl = original / low, original / high
    scaled = torch.where(wavelen > low_wl, inv / factor, inv)
    smooth = (original / wavelen - low) / (high - low)
    medium = (wavelen >= high_wl) & (wavelen <= low_wl)
    return torch.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)


def rotary(model, kind=None) -> torch.Tensor:
    emb = model.model.rotary_emb
    return (getattr(emb, f"{kind}_inv_freq") if kind else emb.inv_freq).double()


def rebuilt(case, seed=0, rope_parameters=None, **rope):
    """The case's model, and the same weights built from a copy of its config with the RoPE base overridden."""
    extra = {"rope_parameters": rope_parameters} if rope_parameters else {}
    model = make(case, ssmax=False, seed=seed, **extra)
    config = copy.deepcopy(model.config)
    set_rope_theta(config, **rope)
    torch.manual_seed(seed)
    other = AutoModelForCausalLM.from_config(config).eval()
    other.load_state_dict(model.state_dict())
    return model, other


def logits_differ(a, b, ids=None) -> bool:
    ids = tokens(64, batch=1, seed=5) if ids is None else ids
    with torch.no_grad():
        return maxdiff(a(ids).logits, b(ids).logits) > 1e-4


@pytest.mark.parametrize("case_id,expected", [
    ("llama", {"all": 1e4}), ("llama-llama3", {"all": 5e5}), ("llama-linear", {"all": 1e4}),
    ("mistral", {"all": 1e4}), ("gemma2", {"all": 1e4}),
    ("gemma3", {"sliding_attention": 1e4, "full_attention": 1e6}),
    ("smollm3", {"rope": 2e6, "nope": None}),
    ("cohere2", {"sliding_attention": 1e4, "full_attention": None}),
    ("exaone4", {"sliding_attention": 1e4, "full_attention": None}),
])
def test_rope_bases_per_layer_type(case_id, expected):
    config = make(BY_ID[case_id], ssmax=False).config
    assert rope_bases(config) == expected
    assert rope_bases(config.to_dict()) == expected  # the same from config.json


def test_rope_bases_of_legacy_and_nested_config_json():
    assert rope_bases({"model_type": "llama", "rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}) == {"all": 5e5}
    legacy_gemma3 = {"model_type": "gemma3_text", "rope_theta": 1e6, "rope_local_base_freq": 1e4}
    assert rope_bases(legacy_gemma3) == {"full_attention": 1e6, "sliding_attention": 1e4}
    assert rope_bases({"model_type": "gemma3", "text_config": legacy_gemma3}) == {"full_attention": 1e6, "sliding_attention": 1e4}
    assert rope_bases({"model_type": "gpt2", "n_positions": 1024}) == {"all": None}
    set_rope_theta(legacy_gemma3, 5e6)
    assert legacy_gemma3["rope_theta"] == 5e6 and legacy_gemma3["rope_local_base_freq"] == 1e4


def test_set_rope_theta_on_a_plain_model_changes_the_rotation_and_the_logits():
    model, raised = rebuilt(BY_ID["llama"], theta=5e5)
    torch.testing.assert_close(rotary(model), default_inv_freq(1e4), rtol=1e-6, atol=0)
    torch.testing.assert_close(rotary(raised), default_inv_freq(5e5), rtol=1e-6, atol=0)
    assert rope_bases(raised.config) == {"all": 5e5}
    assert logits_differ(model, raised)


def test_set_rope_theta_keeps_linear_and_llama3_scaling():
    _, linear = rebuilt(BY_ID["llama-linear"], theta=5e5)
    assert linear.config.rope_parameters == {"rope_type": "linear", "rope_theta": 5e5, "factor": 4.0}
    torch.testing.assert_close(rotary(linear), default_inv_freq(5e5) / 4.0, rtol=1e-6, atol=0)

    model, llama3 = rebuilt(BY_ID["llama-llama3"], theta=2e6)
    assert llama3.config.rope_parameters == {**LLAMA3, "rope_theta": 2e6}
    torch.testing.assert_close(rotary(model), llama3_inv_freq(5e5, 8.0, 1.0, 4.0, 256), rtol=1e-6, atol=0)
    torch.testing.assert_close(rotary(llama3), llama3_inv_freq(2e6, 8.0, 1.0, 4.0, 256), rtol=1e-6, atol=0)
    assert not torch.allclose(rotary(llama3), default_inv_freq(2e6))  # the scaling still applies
    assert logits_differ(model, llama3)


@pytest.mark.parametrize("case_id,rope", [
    ("llama", {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "original_max_position_embeddings": 256}),
    ("phi3", {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0, 1.5, 2.0, 2.5],
              "long_factor": [1.0, 2.0, 3.0, 4.0], "original_max_position_embeddings": 256}),
])
def test_set_rope_theta_keeps_yarn_and_longrope_parameters(case_id, rope):
    model, raised = rebuilt(BY_ID[case_id], rope_parameters=dict(rope), theta=4e4)
    assert raised.config.rope_parameters == {**model.config.rope_parameters, "rope_theta": 4e4}
    assert raised.config.rope_parameters["rope_type"] == rope["rope_type"]
    assert not torch.allclose(rotary(model), rotary(raised))
    assert logits_differ(model, raised)


def test_gemma3_theta_moves_only_the_global_layers_base():
    case = BY_ID["gemma3"]
    model, raised = rebuilt(case, theta=5e6)
    assert rope_bases(raised.config) == {"sliding_attention": 1e4, "full_attention": 5e6}
    torch.testing.assert_close(rotary(raised, "full_attention"), default_inv_freq(5e6), rtol=1e-6, atol=0)
    torch.testing.assert_close(rotary(raised, "sliding_attention"), rotary(model, "sliding_attention"), rtol=0, atol=0)
    torch.testing.assert_close(rotary(model, "sliding_attention"), default_inv_freq(1e4), rtol=1e-6, atol=0)
    assert logits_differ(model, raised)

    model, local = rebuilt(case, per_type={"sliding_attention": 2e4})
    assert rope_bases(local.config) == {"sliding_attention": 2e4, "full_attention": 1e6}
    torch.testing.assert_close(rotary(local, "sliding_attention"), default_inv_freq(2e4), rtol=1e-6, atol=0)
    torch.testing.assert_close(rotary(local, "full_attention"), default_inv_freq(1e6), rtol=1e-6, atol=0)
    assert logits_differ(model, local)


def test_gemma3_theta_keeps_the_global_layers_linear_scaling():
    rope = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
    model, raised = rebuilt(BY_ID["gemma3"], rope_parameters=rope, theta=5e6)
    assert raised.config.rope_parameters["full_attention"] == {"rope_type": "linear", "factor": 8.0, "rope_theta": 5e6}
    torch.testing.assert_close(rotary(model, "full_attention"), default_inv_freq(1e6) / 8.0, rtol=1e-6, atol=0)
    torch.testing.assert_close(rotary(raised, "full_attention"), default_inv_freq(5e6) / 8.0, rtol=1e-6, atol=0)
    torch.testing.assert_close(rotary(raised, "sliding_attention"), default_inv_freq(1e4), rtol=1e-6, atol=0)


class _QueryRecorder:
    """Attention implementation that records each layer's (rotated) query and key, then runs eager."""

    def __init__(self):
        self.seen = {}

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        self.seen[module.layer_idx] = (query.detach().clone(), key.detach().clone())
        from transformers.models.llama.modeling_llama import eager_attention_forward
        return eager_attention_forward(module, query, key, value, attention_mask, **kwargs)


def test_smollm3_nope_layers_stay_without_rotation():
    case = Case("smollm3-nope-first", "smollm3", {"no_rope_layers": [0, 1]})
    model, raised = rebuilt(case, theta=5e5)
    assert raised.config.no_rope_layers == [0, 1]
    assert rope_bases(raised.config) == {"rope": 5e5, "nope": None}
    torch.testing.assert_close(rotary(raised), default_inv_freq(5e5), rtol=1e-6, atol=0)
    recorded = []
    for m in (model, raised):
        recorder = _QueryRecorder()
        AttentionInterface.register("test_recorder", recorder)
        AttentionMaskInterface.register("test_recorder", eager_mask)
        m.set_attn_implementation("test_recorder")
        with torch.no_grad():
            m(tokens(40, batch=1))
        recorded.append(recorder.seen)
    assert torch.equal(recorded[0][0][0], recorded[1][0][0])  # NoPE layer 0: same q whatever the base
    assert not torch.allclose(recorded[0][1][0], recorded[1][1][0])  # RoPE layer 1 rotates with the new base
    with pytest.raises(UserError, match="NoPE"):
        set_rope_theta(raised.config, per_type={"nope": 1e4})


def test_cohere2_full_layers_are_nope_so_theta_needs_a_layer_type():
    case = BY_ID["cohere2"]
    config = make(case, ssmax=False).config
    with pytest.raises(UserError, match="NoPE.*sliding_attention"):
        set_rope_theta(config, 5e5)
    model, local = rebuilt(case, per_type={"sliding_attention": 5e5})
    assert rope_bases(local.config) == {"sliding_attention": 5e5, "full_attention": None}
    torch.testing.assert_close(rotary(local), default_inv_freq(5e5), rtol=1e-6, atol=0)
    assert logits_differ(model, local)


def test_set_rope_theta_refuses_what_it_cannot_set():
    with pytest.raises(UserError, match="GPT2Config has no RoPE base"):
        set_rope_theta(GPT2Config(), 5e5)
    config = make(BY_ID["gemma3"], ssmax=False).config
    with pytest.raises(UserError, match="no layer type 'global'"):
        set_rope_theta(config, per_type={"global": 5e5})
    with pytest.raises(UserError, match="> 0"):
        set_rope_theta(config, -1.0)
    assert rope_bases(config) == {"sliding_attention": 1e4, "full_attention": 1e6}  # untouched


# ------------------------------------------------------------------------------------ context length


@pytest.mark.parametrize("config,expected", [
    ({"training_length": 256, "max_position_embeddings": 4096}, (256, "config.training_length")),
    ({"max_position_embeddings": 131072, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
      "original_max_position_embeddings": 8192}}, (8192, "config.rope_scaling.original_max_position_embeddings")),
    ({"max_position_embeddings": 131072, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
      "original_max_position_embeddings": 32768}}, (32768, "config.rope_parameters.original_max_position_embeddings")),
    ({"max_position_embeddings": 131072, "rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "original_max_position_embeddings": 16384},
        "sliding_attention": {"rope_type": "default"}}},
     (16384, "config.rope_parameters.full_attention.original_max_position_embeddings")),
    ({"max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
      "rope_scaling": {"type": "longrope", "long_factor": [1.0], "short_factor": [1.0]}},
     (4096, "config.original_max_position_embeddings")),
    ({"max_position_embeddings": 2048, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}},
     (2048, "config.max_position_embeddings")),
    ({"model_type": "gemma3", "text_config": {"max_position_embeddings": 131072}}, (131072, "config.max_position_embeddings")),
    ({"model_type": "gpt2"}, (None, "absent")),
])
def test_context_length_and_its_source(config, expected):
    assert context_length(config) == expected
