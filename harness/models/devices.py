"""What a device can serve: the default dtype per device, refusals before any weight loads, the allocator setting.

CPU runs float32 unless asked otherwise; CUDA runs the checkpoint's own half precision (bf16/fp16 from
config.json `dtype` / `torch_dtype`), with one warning when float32 is in force there. A dtype or device the
harness cannot serve is a UserError (one line) raised while planning, before weights are read.
Imports torch only inside functions (planning stays light).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from harness.errors import UserError

HALF = ("bfloat16", "float16")
ALLOC_ENV = "PYTORCH_CUDA_ALLOC_CONF"
ALLOC_DEFAULT = "expandable_segments:True"
TENSOR_PARALLEL = "tp"
"""--device-map tp: every layer's heads split over the processes of torchrun (transformers' tp_plan)"""


def checkpoint_dtype(config: dict[str, Any]) -> str:
    """The dtype config.json records (`dtype`, else `torch_dtype`), float32 when absent."""
    return str(config.get("dtype") or config.get("torch_dtype") or "float32").replace("torch.", "")


def on_cuda(device: str, device_map: str | None) -> bool:
    """Whether the weights will sit on GPUs: a cuda device, or a device map with CUDA present."""
    if device.startswith("cuda"):
        return True
    if device_map is None:
        return False
    import torch

    return torch.cuda.is_available()


def default_dtype(config: dict[str, Any], cuda: bool) -> str:
    """float32 on CPU; on CUDA the checkpoint's half precision, float32 when it records none."""
    own = checkpoint_dtype(config)
    return own if cuda and own in HALF else "float32"


def check_serving(device: str, dtype: str, device_map: str | None = None, *, warn=None) -> None:
    """Refuse (one line) a device/dtype pair the harness cannot run; warn once for float32 on CUDA."""
    cuda = on_cuda(device, device_map)
    if not cuda and dtype == "float16":
        raise UserError("float16 on CPU is not supported (many CPU kernels lack it, and it overflows); "
                        "use --dtype float32 or bfloat16")
    if device.startswith("cuda"):
        import torch

        index = int(device[5:]) if device.startswith("cuda:") else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"device {device!r} requested but only {torch.cuda.device_count()} GPUs are visible")
        if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            raise UserError(f"{torch.cuda.get_device_name(index)} has no bfloat16 support; use --dtype float16")
    if cuda and dtype == "float32":
        (warn or _warn)("warning: float32 on CUDA is slow (no flash attention) and doubles memory; "
                        "--dtype auto runs the checkpoint's own dtype")


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def placement(device: str, device_map: str | None) -> dict[str, Any]:
    """from_pretrained arguments that put the weights straight where they run (no CPU copy then .to())."""
    if device_map == TENSOR_PARALLEL:  # transformers joins the process group's mesh and binds cuda:LOCAL_RANK
        return {"tp_plan": "auto"}
    if device_map is not None:
        return {"device_map": device_map}
    if device == "cpu":
        return {}
    return {"device_map": {"": device}}


def set_allocator_default() -> str | None:
    """Set PYTORCH_CUDA_ALLOC_CONF to expandable segments when unset (call before CUDA initialises); the value."""
    os.environ.setdefault(ALLOC_ENV, ALLOC_DEFAULT)
    return os.environ.get(ALLOC_ENV)


def runtime() -> dict[str, Any]:
    """The allocator setting and device names for the manifest (no CUDA initialisation on a CPU machine)."""
    out: dict[str, Any] = {"cuda_alloc_conf": os.environ.get(ALLOC_ENV), "device_names": ["cpu"]}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        out["device_names"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return out
