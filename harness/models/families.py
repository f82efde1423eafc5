"""Model families: which architectures the harness serves, their RoPE bases, and their context length.

Real checkpoints differ from Llama in masks (sliding windows per layer type), caches, RoPE bases (one, one
per layer type, or none on NoPE layers) and softcapping. `SUPPORTED_FAMILIES` lists the families that
tests/test_families.py runs through the whole matrix (every attention variant against an independent
reference, KV-cache decoding, probes on sliding layers, RoPE overrides); the README's "Supported models"
table is `supported_models_table()`.

Everything here reads a config.json dict or a transformers config object; nothing loads weights, and
only `check_architecture` imports transformers (lazily, for model types outside the allow-list).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from harness.errors import UserError


@dataclass(frozen=True)
class Family:
    """What one family needs beyond a Llama-style decoder (the README table's columns)."""

    name: str
    """display name"""
    sliding: str
    """which layers attend within a sliding window"""
    rope: str
    """RoPE bases, NoPE layers, rope scaling"""
    notes: str = ""
    """anything else the harness keeps (scaling, softcapping, projections)"""


SUPPORTED_FAMILIES: dict[str, Family] = {
    "llama": Family("Llama", "none", "one base; rope scaling (llama3, linear, yarn) kept when the base is overridden"),
    "mistral": Family("Mistral", "every layer (`sliding_window`)", "one base"),
    "qwen2": Family("Qwen2 / Qwen2.5", "layers >= `max_window_layers` when `use_sliding_window`", "one base"),
    "qwen3": Family("Qwen3", "layers >= `max_window_layers` when `use_sliding_window`", "one base", "q/k RMSNorm"),
    "gemma": Family("Gemma", "none", "one base", "head_dim independent of hidden size"),
    "gemma2": Family("Gemma 2", "alternate layers (`layer_types`)", "one base",
                     "attention logit softcapping: the variant scales the capped logit (FlexAttention on CUDA, "
                     "materialised on CPU); `query_pre_attn_scalar` scaling; final logit softcapping"),
    "gemma3_text": Family("Gemma 3 (text)", "`layer_types` (5 local : 1 global)",
                          "two bases: `full_attention` (global; the one --rope-theta sets) and `sliding_attention` (local)",
                          "`query_pre_attn_scalar` scaling; q/k RMSNorm"),
    "smollm3": Family("SmolLM3", "NoPE layers, when `use_sliding_window`",
                      "NoPE layers (`no_rope_layers`: 0 = no rotation); one base for the others"),
    "phi3": Family("Phi-3", "every layer when `sliding_window` is set", "one base; longrope kept",
                   "packed `qkv_proj`"),
    "olmo": Family("OLMo", "none", "one base"),
    "olmo2": Family("OLMo 2", "none", "one base", "q/k RMSNorm over all heads"),
    "cohere": Family("Cohere (Command R)", "none", "one base (interleaved rotation)", "parallel attention/MLP block"),
    "cohere2": Family("Cohere2 (Command R7B)", "`layer_types` (3 local : 1 global)",
                      "RoPE on sliding layers only; full-attention layers are NoPE (a base override must name `sliding_attention`)"),
    "granite": Family("Granite", "none", "one base", "`attention_multiplier` as the attention scaling"),
    "starcoder2": Family("StarCoder2", "every layer when `sliding_window` is set", "one base"),
    "helium": Family("Helium", "none", "one base"),
    "glm": Family("GLM", "none", "one base (partial rotary)"),
    "exaone4": Family("EXAONE 4", "`layer_types`",
                      "with a sliding window: RoPE on sliding layers only, full-attention layers NoPE (as Cohere2)"),
}

KNOWN_UNSUPPORTED: dict[str, str] = {  # route attention through AttentionInterface, but change its math
    "gpt_oss": "attention sinks (s_aux)",
}


def supported_models_table() -> str:
    """The README's "Supported models" table (markdown), generated from SUPPORTED_FAMILIES."""
    lines = ["| model_type | family | sliding-window layers | RoPE | also |", "|---|---|---|---|---|"]
    for model_type, fam in SUPPORTED_FAMILIES.items():
        lines.append(f"| `{model_type}` | {fam.name} | {fam.sliding} | {fam.rope} | {fam.notes or '-'} |")
    return "\n".join(lines)


def architecture_name(config: dict[str, Any]) -> str:
    """The architecture a config.json names (its first `architectures` entry, else its model_type)."""
    archs = config.get("architectures") or []
    return str(archs[0]) if archs else str(config.get("model_type") or "unknown")


def check_architecture(config: dict[str, Any]) -> None:
    """Raise UserError (one line, naming the architecture) unless the harness can serve this config.json.

    Decided before any weights load: the tested families pass; a model type known to change attention's
    math (sinks) fails; any other model type passes when transformers' causal-LM class for it declares
    `_supports_attention_backend` (imported from the auto mapping, never instantiated). Custom code
    (`auto_map`) is checked after loading, by harness.attention.check_supported.
    """
    model_type = config.get("model_type")
    arch = architecture_name(config)
    if model_type in KNOWN_UNSUPPORTED:
        raise UserError(f"architecture {arch} is not supported: it uses {KNOWN_UNSUPPORTED[model_type]}")
    if config.get("use_bidirectional_attention"):
        raise UserError(f"architecture {arch} is configured with bidirectional attention; the harness evaluates causal LMs")
    if model_type in SUPPORTED_FAMILIES:
        return
    auto_map = config.get("auto_map") or {}
    if isinstance(auto_map, dict) and "AutoModelForCausalLM" in auto_map:
        return  # remote code decides the class; check_supported runs on the loaded model
    cls = _causal_lm_class(model_type)
    if cls is None:
        raise UserError(f"architecture {arch} (model_type {model_type!r}) has no causal-LM class in transformers; "
                        f"tested families: {', '.join(SUPPORTED_FAMILIES)}")
    if not getattr(cls, "_supports_attention_backend", False):
        raise UserError(f"architecture {arch} ({cls.__name__}) does not route attention through transformers' "
                        "AttentionInterface, so attention variants cannot be applied; see the README's supported models")


def _causal_lm_class(model_type: str | None):
    """transformers' AutoModelForCausalLM class for a model type, imported without instantiating, or None."""
    if not model_type:
        return None
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if not name:
        return None
    try:
        return getattr(transformers, name)
    except (ImportError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------------- RoPE


def _get(config, key: str, default=None):
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def _text_config(config):
    """The text part of a multimodal config (Gemma 3 checkpoints nest the decoder's fields in text_config)."""
    if isinstance(config, dict):
        text = config.get("text_config")
        own = any(k in config for k in ("rope_parameters", "rope_theta", "num_hidden_layers"))
        return text if isinstance(text, dict) and not own else config
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def _setter(target, key: str) -> Callable[[float], None]:
    def set_value(value: float) -> None:
        if isinstance(target, dict):
            target[key] = float(value)
        else:
            setattr(target, key, float(value))
    return set_value


def _both(*setters: Callable[[float], None]) -> Callable[[float], None]:
    def set_value(value: float) -> None:
        for setter in setters:
            setter(value)
    return set_value


def _rope_slots(config) -> dict[str, tuple[float | None, Callable[[float], None] | None]]:
    """Layer kind -> (RoPE base in force, setter of that base); base None = the layers do not rotate (NoPE)."""
    config = _text_config(config)
    model_type = _get(config, "model_type")
    params = _get(config, "rope_parameters")
    layer_types = _get(config, "layer_types")
    kinds = list(dict.fromkeys(layer_types)) if layer_types else None

    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        # one rope_parameters dict per layer type (Gemma 3: full_attention = global, sliding_attention = local)
        slots = {}
        for kind in kinds or list(params):
            sub = params.get(kind)
            if isinstance(sub, dict) and sub.get("rope_theta") is not None:
                slots[kind] = (float(sub["rope_theta"]), _setter(sub, "rope_theta"))
            else:
                slots[kind] = (None, None)
        return slots

    setters = []
    theta = None
    if isinstance(params, dict) and params.get("rope_theta") is not None:
        theta = float(params["rope_theta"])
        setters.append(_setter(params, "rope_theta"))
    if _get(config, "rope_theta") is not None:  # legacy config.json key (kept in step with rope_parameters)
        theta = float(_get(config, "rope_theta")) if theta is None else theta
        setters.append(_setter(config, "rope_theta"))
    if theta is None:
        return {"all": (None, None)}
    set_theta = _both(*setters)

    local = _get(config, "rope_local_base_freq")
    if local is not None:  # legacy Gemma 3 config.json: rope_theta is the global base
        return {"full_attention": (theta, set_theta), "sliding_attention": (float(local), _setter(config, "rope_local_base_freq"))}
    if model_type == "cohere2" or (model_type == "exaone4" and _get(config, "sliding_window") is not None):
        # RoPE only on sliding layers; full-attention layers are NoPE
        present = kinds or ["sliding_attention", "full_attention"]
        return {k: ((theta, set_theta) if k == "sliding_attention" else (None, None)) for k in present}
    no_rope = _get(config, "no_rope_layers")
    if no_rope:  # SmolLM3: 1 = the layer rotates, 0 = NoPE
        layers = int(_get(config, "num_hidden_layers") or len(no_rope))
        present = {bool(flag) for flag in list(no_rope)[:layers]}
        slots = {}
        if True in present:
            slots["rope"] = (theta, set_theta)
        if False in present:
            slots["nope"] = (None, None)
        return slots
    return {"all": (theta, set_theta)}


def rope_bases(config) -> dict[str, float | None]:
    """RoPE base in force per kind of layer, from a transformers config or a config.json dict.

    {"all": 1e4} for one base on every layer; {"full_attention": 1e6, "sliding_attention": 1e4} for Gemma 3;
    {"rope": 2e6, "nope": None} for SmolLM3 (None = NoPE layers, no rotation);
    {"sliding_attention": 5e4, "full_attention": None} for Cohere2; {"all": None} without RoPE.
    """
    return {kind: base for kind, (base, _) in _rope_slots(config).items()}


def set_rope_theta(config, theta: float | None = None, *, per_type: dict[str, float] | None = None) -> dict[str, float | None]:
    """Override RoPE bases in a config (before the model is built); returns the bases now in force.

    `theta` sets the base of the layers that attend over the whole context: the one base of a single-base
    model (also with rope scaling: llama3, linear, yarn, longrope keep their parameters, which then apply on
    top of the new base, so a llama3-scaled model keeps its scaling factors and original length), the
    RoPE layers of a model with NoPE layers (SmolLM3; NoPE layers stay without rotation), and only the
    FULL (global) layers of a model with one base per layer type (Gemma 3): local layers see at most the
    window, so their relative positions never go beyond what they were trained on and raising their base
    only perturbs them. `per_type={"sliding_attention": X}` (keys as in `rope_bases`) sets any other kind.
    A model whose full-attention layers are NoPE (Cohere2) needs per_type; one without RoPE raises UserError.
    """
    slots = _rope_slots(config)
    arch = type(config).__name__ if not isinstance(config, dict) else architecture_name(config)
    if all(base is None for base, _ in slots.values()):
        raise UserError(f"a RoPE base override was given, but {arch} has no RoPE base to override")
    targets: dict[str, float] = {}
    if theta is not None:
        kind = next((k for k in ("all", "rope", "full_attention") if slots.get(k, (None,))[0] is not None), None)
        if kind is None:
            raise UserError(f"{arch}: its full-attention layers have no RoPE (NoPE), so a RoPE base would only move "
                            f"the sliding layers'; give it per layer type ({', '.join(k for k, (b, _) in slots.items() if b is not None)})")
        targets[kind] = theta
    for kind, value in (per_type or {}).items():
        if kind not in slots:
            raise UserError(f"{arch} has no layer type {kind!r} with a RoPE base; it has: {', '.join(slots)}")
        if slots[kind][0] is None:
            raise UserError(f"{arch}: {kind} layers have no RoPE (NoPE), so their base cannot be set")
        targets[kind] = value
    for kind, value in targets.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise UserError(f"RoPE base for {kind} must be a finite number > 0, got {value!r}")
        slots[kind][1](float(value))
    return rope_bases(config)


def context_length(config: dict[str, Any]) -> tuple[int | None, str]:
    """The context length a checkpoint's attention was trained at, and the config key it came from.

    `training_length` (the harness's own convention) first; else, for a model extended by rope scaling,
    the pre-extension length (`original_max_position_embeddings` in rope_scaling / rope_parameters, per
    layer type, or top level as in Phi-3): the attention was trained at that length, the extension is a
    RoPE trick on top; else `max_position_embeddings`. (None, "absent") when the config has none.
    """
    config = _text_config(config)
    if config.get("training_length"):
        return int(config["training_length"]), "config.training_length"
    for key in ("rope_scaling", "rope_parameters"):
        params = config.get(key)
        if not isinstance(params, dict):
            continue
        if params.get("original_max_position_embeddings"):
            return int(params["original_max_position_embeddings"]), f"config.{key}.original_max_position_embeddings"
        for kind, sub in params.items():
            if isinstance(sub, dict) and sub.get("original_max_position_embeddings"):
                return int(sub["original_max_position_embeddings"]), f"config.{key}.{kind}.original_max_position_embeddings"
    if config.get("original_max_position_embeddings"):
        return int(config["original_max_position_embeddings"]), "config.original_max_position_embeddings"
    if config.get("max_position_embeddings"):
        return int(config["max_position_embeddings"]), "config.max_position_embeddings"
    return None, "absent"
