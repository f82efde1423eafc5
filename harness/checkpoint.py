"""Checkpoints: a model spec (local dir, hub id, reference/NAME) -> LoadedModel(model, tokenizer, info)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from harness.atomic import write_json
from harness.errors import UserError

REFERENCE_PREFIX = "reference/"
REFERENCE_DIR = Path(__file__).parent / "reference" / "models"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DTYPES = ("float32", "bfloat16", "float16", "auto")
_FINGERPRINT_CACHE = Path(os.environ.get("LCH_CACHE", Path.home() / ".cache" / "lch")) / "fingerprints.json"


@dataclass(frozen=True)
class ModelInfo:
    """What produced a result: checkpoint identity, attention variant and RoPE theta."""

    name: str
    """display name: reference/NAME, the hub id, or the directory name"""
    path: str
    """absolute path of the checkpoint directory"""
    fingerprint: str
    """sha256 over config.json and the weight files"""
    attention: str
    """canonical attention spec in force (s=auto already resolved)"""
    rope_theta: float | None
    """RoPE base in force (after any override)"""
    training_length: int | None
    """context length the checkpoint was trained at, when config.json records it"""
    architecture: str
    """model class, e.g. LlamaForCausalLM"""
    num_layers: int
    """number of decoder layers"""
    num_heads: int
    """attention heads per layer"""
    checkpoint_attention: str = "softmax"
    """the normalisation the checkpoint was trained with (softmax or ssmax)"""
    dtype: str = "float32"
    """dtype the weights run in"""
    device: str = "cpu"
    """device the model runs on"""

    def as_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field."""
        return asdict(self)


@dataclass
class LoadedModel:
    """A model ready to evaluate: transformers model (variant applied), its tokenizer, and its info."""

    model: Any
    tokenizer: Any
    info: ModelInfo


def resolve_checkpoint(spec: str, allow_pickle: bool = False) -> tuple[str, Path]:
    """Map a model spec to (display name, local directory); hub ids are fetched (or found in the cache)."""
    spec = str(spec).strip()
    if spec.startswith(REFERENCE_PREFIX) and not Path(spec).exists():
        variant = spec[len(REFERENCE_PREFIX):]
        path = REFERENCE_DIR / variant
        if variant not in ("softmax", "ssmax"):
            raise UserError(f"unknown reference model {spec!r}; allowed: reference/softmax, reference/ssmax")
        if not (path / "config.json").is_file():
            raise UserError(f"reference model {spec!r} is not built yet; run `lch reference build`")
        return spec, path
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"model path {spec!r} is a file; give a checkpoint directory (config.json + weights)")
        return path.resolve().name, path.resolve()
    if _looks_like_hub_id(spec):
        return spec, _download(spec, allow_pickle)
    raise UserError(f"model {spec!r} not found: not a directory, a hub id (org/name) or reference/softmax|ssmax")


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~", "/"))


def _download(repo_id: str, allow_pickle: bool) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]
    patterns += [f"*{suffix}" for suffix in PICKLE_SUFFIXES] if allow_pickle else []
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:  # offline, unknown repo, gated: one line either way
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"model {repo_id!r} is not a local directory and could not be fetched from the hub: {reason}") from None


def weight_files(path: Path, allow_pickle: bool = False) -> list[Path]:
    """The checkpoint's weight files: safetensors, or pickle files only when allowed."""
    safe = sorted(path.glob("*.safetensors"))
    if safe:
        return safe
    pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles and not allow_pickle:
        raise UserError(f"checkpoint {str(path)!r} has only pickle weights ({pickles[0].name}); "
                        "pickle can run code: pass --allow-pickle (allow_pickle=True) if you trust it")
    if not pickles:
        raise UserError(f"checkpoint {str(path)!r} has no weights (*.safetensors)")
    return pickles


def fingerprint(path: Path, files: list[Path]) -> str:
    """sha256 over config.json and the weight files; cached on disk by (path, size, mtime)."""
    members = [path / "config.json", *files]
    stamp = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in members)
    cache = _read_cache()
    if stamp in cache:
        return cache[stamp]
    digest = hashlib.sha256()
    for member in members:
        with open(member, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    cache[stamp] = digest.hexdigest()
    _write_cache(cache)
    return cache[stamp]


def _read_cache() -> dict[str, str]:
    try:
        return json.loads(_FINGERPRINT_CACHE.read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(cache: dict[str, str]) -> None:
    try:
        _FINGERPRINT_CACHE.parent.mkdir(parents=True, exist_ok=True)
        write_json(_FINGERPRINT_CACHE, cache)
    except OSError:
        pass  # a read-only home only costs a re-hash next time


def read_config(path: Path) -> dict[str, Any]:
    """config.json as a dict, with a clear error when missing or malformed."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"checkpoint {str(path)!r} has no config.json (Hugging Face layout expected)")
    try:
        return json.loads(config_file.read_text())
    except ValueError as err:
        raise UserError(f"checkpoint config {str(config_file)!r} is not valid JSON: {err}") from None


def checkpoint_attention(config: dict[str, Any]) -> str:
    """The normalisation a checkpoint was trained with, from the SSMax checkpoint convention."""
    variant = config.get("attention_variant") or {}
    return "ssmax" if isinstance(variant, dict) and variant.get("name") == "ssmax" else "softmax"


def config_rope_theta(config: dict[str, Any]) -> float | None:
    """RoPE base recorded in a config dict (transformers 5 `rope_parameters`, or the legacy key)."""
    params = config.get("rope_parameters") or {}
    if "rope_theta" in params:
        return float(params["rope_theta"])
    nested = [v["rope_theta"] for v in params.values() if isinstance(v, dict) and "rope_theta" in v]
    if nested:
        return float(max(nested))
    return float(config["rope_theta"]) if "rope_theta" in config else None


def describe_model(spec: str, attention: str | None = None, rope_theta: float | None = None, *,
                   allow_pickle: bool = False, trust_remote_code: bool = False,
                   dtype: str | None = None, device: str = "cpu") -> ModelInfo:
    """Validate a model request and describe it without loading weights (cheap; used for cell keys)."""
    from harness.attention_spec import parse_spec, resolve_spec

    name, path = resolve_checkpoint(spec, allow_pickle)
    config = read_config(path)
    files = weight_files(path, allow_pickle)
    if config.get("auto_map") and not trust_remote_code:
        raise UserError(f"checkpoint {name!r} needs custom code (auto_map); pass --trust-remote-code if you trust it")
    trained_with = checkpoint_attention(config)
    requested = parse_spec(attention) if attention is not None else parse_spec(trained_with)
    if requested.learned and trained_with != "ssmax":
        raise UserError(f"attention 'ssmax' uses learned s, but {name!r} is a softmax checkpoint; use ssmax(s=auto) or ssmax(s=<number>)")
    if rope_theta is not None and not rope_theta > 0:
        raise UserError(f"--rope-theta must be > 0, got {rope_theta}")
    training_length = config.get("training_length")
    resolved = resolve_spec(requested, training_length)
    return ModelInfo(
        name=name, path=str(path), fingerprint=fingerprint(path, files), attention=str(resolved),
        rope_theta=float(rope_theta) if rope_theta is not None else config_rope_theta(config),
        training_length=int(training_length) if training_length else None,
        architecture=(config.get("architectures") or [config.get("model_type", "unknown")])[0],
        num_layers=int(config.get("num_hidden_layers", 0)), num_heads=int(config.get("num_attention_heads", 0)),
        checkpoint_attention=trained_with, dtype=_dtype_name(dtype, config), device=resolve_device(device),
    )


def _dtype_name(dtype: str | None, config: dict[str, Any]) -> str:
    if dtype is None:
        return "float32"
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    if dtype == "auto":
        return str(config.get("dtype") or config.get("torch_dtype") or "float32").replace("torch.", "")
    return dtype


def resolve_device(device: str) -> str:
    """auto -> cuda if available else cpu; validates cpu, cuda, cuda:i."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not (device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise UserError(f"unknown device {device!r}; allowed: auto, cpu, cuda, cuda:<index>")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return device


def set_rope_theta(config, theta: float) -> None:
    """Override RoPE's base in a transformers config (every rope_parameters entry that has one)."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        params["rope_theta"] = float(theta)
    elif isinstance(params, dict) and any(isinstance(v, dict) and "rope_theta" in v for v in params.values()):
        for value in params.values():
            if isinstance(value, dict) and "rope_theta" in value:
                value["rope_theta"] = float(theta)
    elif hasattr(config, "rope_theta"):
        config.rope_theta = float(theta)
    else:
        raise UserError(f"--rope-theta given, but {type(config).__name__} has no RoPE base to override")


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device_map(device_map: str) -> None:
    """Refuse an unknown device_map, or one given without accelerate installed."""
    if device_map not in DEVICE_MAPS:
        raise UserError(f"unknown device map {device_map!r}; allowed: {', '.join(DEVICE_MAPS)}")
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise UserError(f"device_map={device_map!r} needs accelerate: "
                        "pip install 'long-context-harness[scale]'") from None


def load_model(spec: str, attention: str | None = None, rope_theta: float | None = None, *,
               device: str = "cpu", dtype: str | None = None, allow_pickle: bool = False,
               trust_remote_code: bool = False, device_map: str | None = None) -> LoadedModel:
    """Load a checkpoint with an attention variant and optional RoPE base override, ready for evaluation.

    device_map="auto" (needs accelerate) spreads a model too large for one device over every visible
    GPU (then CPU memory) in this one process; `device` is then ignored.
    """
    if device_map is not None:
        check_device_map(device_map)
    info = describe_model(spec, attention, rope_theta, allow_pickle=allow_pickle,
                          trust_remote_code=trust_remote_code, dtype=dtype, device=device)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from harness.attention import apply_attention

    path = Path(info.path)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    if rope_theta is not None:
        set_rope_theta(config, rope_theta)
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # ssmax_s keys are loaded below, not "unexpected"
    hf_logging.disable_progress_bar()  # the harness shows its own progress
    placement = {"device_map": device_map} if device_map is not None else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, config=config, dtype=getattr(torch, info.dtype), use_safetensors=not allow_pickle or None,
            trust_remote_code=trust_remote_code, **placement)
    finally:
        hf_logging.set_verbosity(level)
    if info.checkpoint_attention == "ssmax":
        load_ssmax_parameters(model, path)
    apply_attention(model, info.attention, info.training_length)
    if device_map is None:
        model.to(info.device)
    else:  # accelerate placed the layers; inputs go where the embeddings are
        info = replace(info, device=str(model.device))
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return LoadedModel(model=model, tokenizer=tokenizer, info=info)


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
