"""Checkpoints: a model request (local dir, hub id, reference/NAME) -> a resolved ModelInfo, without weights.

Loading the weights is `harness.models.loading`. Imports no torch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.atomic import write_json
from harness.attention.spec import AttentionSpec, parse_spec, resolve_spec
from harness.errors import UserError
from harness.reference.shipped import REFERENCE_PREFIX, shipped_model_dir

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DTYPES = ("float32", "bfloat16", "float16", "auto")
_FINGERPRINT_CACHE = Path(os.environ.get("LCH_CACHE", Path.home() / ".cache" / "lch")) / "fingerprints.json"


@dataclass(frozen=True)
class ModelInfo:
    """The one resolved description of a model to evaluate: checkpoint identity, attention, RoPE, lengths.

    Built by `describe_model` from a request without loading weights; `load_described` loads exactly
    this (no request is parsed twice).
    """

    name: str
    """display name: reference/NAME, the hub id, or the directory name"""
    path: str
    """absolute path of the checkpoint directory"""
    fingerprint: str
    """sha256 over config.json and the weight files"""
    spec: AttentionSpec
    """attention variant in force (s=auto already resolved)"""
    rope_theta: float | None
    """RoPE base in force on the layers that see the whole context (after any override); None without RoPE"""
    training_length: int | None
    """context length the checkpoint's attention was trained at (see training_length_source)"""
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
    training_length_source: str = "absent"
    """where training_length came from: argument, config.training_length, config.max_position_embeddings, ..."""
    rope_bases: tuple[tuple[str, float | None], ...] = ()
    """RoPE base in force per layer type, e.g. (("full_attention", 1e6), ("sliding_attention", 1e4)); None = NoPE"""
    rope_overrides: tuple[tuple[str, float], ...] = ()
    """the per-layer-type bases the request set (beyond rope_theta)"""
    allow_pickle: bool = False
    """pickle-format weights may be read (--allow-pickle); else safetensors only"""
    trust_remote_code: bool = False
    """the checkpoint's own code may run (--trust-remote-code)"""
    device_map: str | None = None
    """accelerate's placement over several devices (--device-map), or None: the whole model on `device`"""

    @property
    def attention(self) -> str:
        """Canonical attention spec string (the `attention` column)."""
        return str(self.spec)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field (the spec as its string)."""
        out = asdict(self)
        out["attention"] = self.attention
        out["rope_bases"] = dict(self.rope_bases)
        out["rope_overrides"] = dict(self.rope_overrides)
        del out["spec"]
        return out


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
        return spec, shipped_model_dir(spec)
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"model path {spec!r} is a file; give a checkpoint directory (config.json + weights)")
        return local_display_name(path), path.resolve()
    if _looks_like_hub_id(spec):
        return spec, _download(spec, allow_pickle)
    raise UserError(f"model {spec!r} not found: not a directory, a hub id (org/name) or reference/softmax|ssmax")


_NUMBERED = re.compile(r"(checkpoint|ckpt|step|iter|global_step)[-_]?\d+", re.IGNORECASE)
_GENERIC = {"checkpoints", "checkpoint", "ckpts", "ckpt", "models", "outputs", "output"}


def local_display_name(path: Path) -> str:
    """A local checkpoint's name in tables: its folder as given (a symlink keeps its own name); numbered
    folders such as `checkpoint-500` or `step_03000` with the run folder above them (`run-a/checkpoint-500`,
    `run-a/checkpoints/step_03000` -> `run-a/step_03000`)."""
    path = Path(os.path.abspath(path))  # normalises . and .. without following symlinks
    if not _NUMBERED.fullmatch(path.name):
        return path.name
    run = next((p.name for p in path.parents if p.name and p.name.lower() not in _GENERIC), "")
    return f"{run}/{path.name}" if run else path.name


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


def describe_model(spec: str, attention: str | AttentionSpec | None = None, rope_theta: float | None = None, *,
                   training_length: int | None = None, rope_bases: dict[str, float] | None = None,
                   allow_pickle: bool = False, trust_remote_code: bool = False, dtype: str | None = None,
                   device: str = "cpu", device_map: str | None = None) -> ModelInfo:
    """Validate a model request and resolve it into a ModelInfo without loading weights (cheap; used for cell keys).

    training_length: explicit length (else config `training_length`, else the config's context length:
    see harness.models.families.context_length). rope_theta: base of the full-context layers; rope_bases: per
    layer type (keys as in ModelInfo.rope_bases). Every load choice (device, dtype, pickle, remote code,
    device map) is resolved here, once; loading reads it from the ModelInfo.
    """
    from harness.models import devices, families

    if device_map is not None:
        check_device_map(device_map)
    device = resolve_device(device)

    name, path = resolve_checkpoint(spec, allow_pickle)
    config = read_config(path)
    families.check_architecture(config)
    if device_map == devices.TENSOR_PARALLEL:
        check_tensor_parallel(name, config)
    files = weight_files(path, allow_pickle)
    if config.get("auto_map") and not trust_remote_code:
        raise UserError(f"checkpoint {name!r} needs custom code (auto_map); pass --trust-remote-code if you trust it")
    trained_with = checkpoint_attention(config)
    requested = parse_spec(attention) if attention is not None else parse_spec(trained_with)
    if requested.learned and trained_with != "ssmax":
        raise UserError(f"attention 'ssmax' uses learned s, but {name!r} is a softmax checkpoint; use ssmax(s=auto) or ssmax(s=<number>)")
    if rope_theta is not None and not (isinstance(rope_theta, (int, float)) and math.isfinite(rope_theta) and rope_theta > 0):
        raise UserError(f"--rope-theta must be a finite number > 0, got {rope_theta}")
    if training_length is not None:
        if isinstance(training_length, bool) or not isinstance(training_length, int) or training_length < 2:
            raise UserError(f"--training-length must be an integer >= 2, got {training_length!r}")
        length, source = int(training_length), "argument"
    else:
        length, source = families.context_length(config)
    cuda = devices.on_cuda(device, device_map)
    dtype = _dtype_name(dtype, config) if dtype is not None else devices.default_dtype(config, cuda)
    devices.check_serving(device, dtype, device_map)
    bases = families.rope_bases(config)
    if rope_theta is not None or rope_bases:
        bases = families.set_rope_theta(copy.deepcopy(config), rope_theta, per_type=rope_bases)
    return ModelInfo(
        name=name, path=str(path), fingerprint=fingerprint(path, files),
        spec=resolve_spec(requested, length), rope_theta=_full_context_base(bases),
        training_length=length, training_length_source=source,
        architecture=families.architecture_name(config),
        num_layers=int(config.get("num_hidden_layers", 0)), num_heads=int(config.get("num_attention_heads", 0)),
        checkpoint_attention=trained_with, dtype=dtype, device=device,
        rope_bases=tuple(bases.items()), rope_overrides=tuple(sorted((rope_bases or {}).items())),
        allow_pickle=bool(allow_pickle), trust_remote_code=bool(trust_remote_code), device_map=device_map,
    )


def _full_context_base(bases: dict[str, float | None]) -> float | None:
    """The base of the layers that see the whole context (the `rope_theta` column)."""
    for kind in ("all", "rope", "full_attention"):
        if bases.get(kind) is not None:
            return float(bases[kind])
    present = [b for b in bases.values() if b is not None]
    return float(max(present)) if present else None


def _dtype_name(dtype: str, config: dict[str, Any]) -> str:
    from harness.models.devices import checkpoint_dtype

    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    return checkpoint_dtype(config) if dtype == "auto" else dtype


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device_map(device_map: str) -> None:
    """Refuse an unknown device_map, or an accelerate map given without accelerate installed."""
    from harness.models.devices import TENSOR_PARALLEL

    if device_map == TENSOR_PARALLEL:
        return
    if device_map not in DEVICE_MAPS:
        raise UserError(f"unknown device map {device_map!r}; allowed: {', '.join(DEVICE_MAPS)}, {TENSOR_PARALLEL}")
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise UserError(f"device_map={device_map!r} needs accelerate: "
                        "pip install 'long-context-harness[scale]'") from None


def check_tensor_parallel(name: str, config: dict[str, Any]) -> None:
    """Refuse --device-map tp outside torchrun or for heads that do not split evenly over its processes."""
    import os

    world = int(os.environ.get("WORLD_SIZE", 1))
    if world < 2:
        raise UserError("--device-map tp splits every layer's heads over the processes of torchrun; start it as "
                        "torchrun --nproc_per_node N lch run ... (one process per GPU)")
    heads = int(config.get("num_attention_heads", 0))
    kv_heads = int(config.get("num_key_value_heads") or heads)
    if heads % world or kv_heads % world:
        raise UserError(f"{name!r} has {heads} attention heads and {kv_heads} key/value heads, which do not split "
                        f"evenly over {world} tensor-parallel processes")


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
