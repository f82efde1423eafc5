"""Loading a described model: weights (safetensors), the SSMax convention, RoPE overrides, the attention variant.

`describe_model` (harness.models.checkpoint) resolves a request into a ModelInfo without weights;
`load_described(info)` loads exactly that; `load_model(...)` does both.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from harness.models.devices import TENSOR_PARALLEL, placement
from harness.models.checkpoint import LoadedModel, ModelInfo, describe_model, fingerprint, weight_files
from harness.errors import UserError

VERY_LARGE_LENGTH = int(1e30)  # transformers' own "no limit" for tokenizer.model_max_length


def load_model(spec: str, attention: str | None = None, rope_theta: float | None = None, *,
               training_length: int | None = None, rope_bases: dict[str, float] | None = None,
               device: str = "cpu", dtype: str | None = None, allow_pickle: bool = False,
               trust_remote_code: bool = False, device_map: str | None = None) -> LoadedModel:
    """Load a checkpoint with an attention variant and optional RoPE override, ready for evaluation.

    device_map="auto" (needs accelerate) spreads a model too large for one device over every visible
    GPU (then CPU memory) in this one process; `device` is then ignored.
    """
    info = describe_model(spec, attention, rope_theta, training_length=training_length, rope_bases=rope_bases,
                          allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, dtype=dtype, device=device,
                          device_map=device_map)
    return load_described(info)


def load_described(info: ModelInfo) -> LoadedModel:
    """Load exactly the model `info` describes (weights, SSMax parameters, RoPE bases, variant, device, and the
    pickle / remote-code / device-map choices it resolved)."""
    allow_pickle, trust_remote_code, device_map = info.allow_pickle, info.trust_remote_code, info.device_map
    from transformers.utils import logging as hf_logging

    from harness.models import families
    from harness.attention import apply_attention

    path = Path(info.path)
    if fingerprint(path, weight_files(path, allow_pickle)) != info.fingerprint:
        raise UserError(f"checkpoint {info.name!r} changed on disk after the run was planned; start the run again")
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # ssmax_s keys are loaded below, not "unexpected"
    hf_logging.disable_progress_bar()  # the harness shows its own progress
    try:
        config = _load_config(path, trust_remote_code)
        # the bases the description resolved, set per layer type wherever they differ from the config's
        current = families.rope_bases(config)
        changed = {kind: base for kind, base in info.rope_bases if base is not None and current.get(kind) != base}
        if changed:
            families.set_rope_theta(config, per_type=changed)
        if device_map == TENSOR_PARALLEL and not getattr(config, "base_model_tp_plan", None):
            raise UserError(f"{info.name!r} ({type(config).__name__}) has no tensor-parallel plan in transformers; "
                            f"use --device-map auto")
        # weights straight onto their device (a CUDA model never exists on the host first)
        model = _load_weights(path, config, info, allow_pickle, trust_remote_code, placement(info.device, device_map))
        tokenizer = _load_tokenizer(path, trust_remote_code)
    finally:
        hf_logging.set_verbosity(level)
    if info.checkpoint_attention == "ssmax":
        load_ssmax_parameters(model, path)
        if device_map == TENSOR_PARALLEL:
            keep_local_heads(model)
    apply_attention(model, info.spec, info.training_length)
    if device_map is None:
        model.to(info.device)  # a no-op for the weights; anything added on the host (none today) follows
    else:  # accelerate placed the layers; inputs go where the embeddings are
        info = replace(info, device=str(model.device))
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, info=info)


def _load_config(path: Path, trust_remote_code: bool):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise UserError(f"checkpoint config {str(path / 'config.json')!r} cannot be read by transformers: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _load_weights(path: Path, config, info: ModelInfo, allow_pickle: bool, trust_remote_code: bool, placement: dict):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            path, config=config, dtype=getattr(torch, info.dtype), use_safetensors=not allow_pickle or None,
            trust_remote_code=trust_remote_code, **placement)
    except (OSError, RuntimeError, ValueError) as e:
        if type(e).__name__ == "OutOfMemoryError":
            raise
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"weights of {info.name!r} ({path}) cannot be loaded: {type(e).__name__}: {first}") from None
    except Exception as e:  # safetensors' SafetensorError is not an OSError
        if type(e).__name__ != "SafetensorError":
            raise
        where = _damaged_file(path) or path
        raise UserError(f"weights of {info.name!r} are damaged: {str(where)!r}: {str(e).splitlines()[0]}") from None


def _damaged_file(path: Path) -> Path | None:
    """The first safetensors file under a checkpoint whose header does not open (the error itself names none)."""
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception:  # SafetensorError and OSError alike: this is the file
            return file
    return None


def _load_tokenizer(path: Path, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:
        # A damaged tokenizer.json fails as JSONDecodeError (not JSON), KeyError (JSON of another shape) or a
        # bare `Exception` raised by the Rust `tokenizers` library (JSON that does not describe a tokenizer);
        # a missing file as OSError. Anything else is a bug and keeps its traceback.
        if not isinstance(e, (OSError, ValueError, TypeError, KeyError)) and type(e) is not Exception:
            raise
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"tokenizer of {str(path)!r} cannot be loaded (damaged or missing files?): {first}") from None
    # The harness tokenises whole documents and never truncates: a context limit is the model's, not the tokenizer's.
    tokenizer.model_max_length = VERY_LARGE_LENGTH
    return tokenizer


def keep_local_heads(model) -> None:
    """Under tensor parallelism: slice each layer's ssmax_s (and ssmax_b) to the heads this process holds.

    transformers' tp_plan splits q_proj by output features, so rank r of w holds heads r*H/w .. (r+1)*H/w - 1.
    """
    import torch
    import torch.distributed as dist

    from harness.attention import attention_modules

    rank, world = dist.get_rank(), dist.get_world_size()
    for _, module in attention_modules(model):
        for name in ("ssmax_s", "ssmax_b"):
            full = getattr(module, name, None)
            if full is not None:
                local = full.shape[0] // world
                setattr(module, name, torch.nn.Parameter(full.detach()[rank * local:(rank + 1) * local].clone()))


def load_ssmax_parameters(model, path: Path) -> None:
    """Attach the checkpoint's per-layer `ssmax_s` (and `ssmax_b`) tensors as parameters."""
    import torch
    from safetensors import safe_open

    from harness.attention import add_ssmax_parameters

    variant = getattr(model.config, "attention_variant", None) or {}
    bias = bool(variant.get("bias"))
    add_ssmax_parameters(model, 0.0, bias=bias)
    wanted = {n for n, _ in model.named_parameters() if n.endswith((".ssmax_s", ".ssmax_b"))}
    found: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                if key.endswith((".ssmax_s", ".ssmax_b")):
                    found[_match_name(key, wanted)] = handle.get_tensor(key)
    missing = sorted(wanted - found.keys())
    if missing:
        raise UserError(f"SSMax checkpoint {str(path)!r} lacks {missing[0]} (and {len(missing) - 1} more); "
                        "its config says ssmax but the weights carry no learned s")
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, tensor in found.items():
            params[name].copy_(tensor.float())


def _match_name(key: str, wanted: set[str]) -> str:
    # Files name them model.layers.{i}.self_attn.ssmax_s; the live model may prefix differently.
    if key in wanted:
        return key
    for name in wanted:
        if name.endswith(key) or key.endswith(name):
            return name
    return key
