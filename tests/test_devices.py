"""Device and dtype defaults, refusals before weights load, placement, the allocator setting, multi-device helpers.

CPU only: CUDA is faked by monkeypatching torch.cuda where a rule depends on it.
"""

import json

import pytest
import torch

import tests.fake_tasks  # noqa: F401  (registers the fake tasks)
from harness import results
from harness.attention.probe import Probe
from harness.errors import UserError
from harness.inference.nll import per_position_nll
from harness.models import devices
from harness.models.checkpoint import describe_model
from harness.models.loading import load_model
from harness.runner import run_task
from tests.tiny import build_model


def _with_dtype(path, dtype):
    config = json.loads((path / "config.json").read_text())
    config["dtype"] = dtype
    config.pop("torch_dtype", None)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def fake_cuda(monkeypatch):
    """One visible 'GPU' with bf16 (set .bf16 = False to take it away)."""
    state = type("State", (), {"bf16": True})()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: state.bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Fake GPU")
    return state


def _refuse_weights(monkeypatch):
    from transformers import AutoModelForCausalLM

    def refuse(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


def _one_line(fn, match):
    with pytest.raises(UserError, match=match) as err:
        fn()
    assert "\n" not in str(err.value)


def test_cpu_default_stays_float32(tiny_checkpoint):
    path = _with_dtype(tiny_checkpoint(), "bfloat16")
    assert describe_model(str(path), device="cpu").dtype == "float32"
    assert describe_model(str(path), device="cpu", dtype="auto").dtype == "bfloat16"  # asked: the checkpoint's


def test_cuda_default_is_the_checkpoints_half_precision(tiny_checkpoint, fake_cuda, capsys):
    bf16 = _with_dtype(tiny_checkpoint(), "bfloat16")
    fp16 = _with_dtype(tiny_checkpoint(), "torch.float16")
    capsys.readouterr()
    assert describe_model(str(bf16), device="cuda").dtype == "bfloat16"
    assert describe_model(str(fp16), device="auto").dtype == "float16"
    assert describe_model(str(bf16), device="cuda:0").device == "cuda:0"
    assert "float32 on CUDA" not in capsys.readouterr().err


def test_float32_on_cuda_warns_once_per_model(tiny_checkpoint, fake_cuda, capsys):
    path, fp32 = _with_dtype(tiny_checkpoint(), "bfloat16"), _with_dtype(tiny_checkpoint(), "float32")
    capsys.readouterr()
    assert describe_model(str(path), device="cuda", dtype="float32").dtype == "float32"
    err = capsys.readouterr().err
    assert err.count("float32 on CUDA") == 1 and len(err.strip().splitlines()) == 1
    describe_model(str(fp32), device="cuda")  # an fp32 checkpoint: same line
    assert "float32 on CUDA" in capsys.readouterr().err


def test_unservable_requests_refused_before_weights_load(tiny_checkpoint, monkeypatch):
    path = tiny_checkpoint()
    _refuse_weights(monkeypatch)
    _one_line(lambda: load_model(str(path), dtype="float16"), "float16 on CPU")
    _one_line(lambda: load_model(str(_with_dtype(tiny_checkpoint(), "float16")), dtype="auto"), "float16 on CPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _one_line(lambda: load_model(str(path), device="cuda"), "CUDA is not available")
    _one_line(lambda: load_model(str(path), device_map="tp"), "processes of torchrun")
    monkeypatch.setenv("WORLD_SIZE", "3")  # 4 heads
    _one_line(lambda: load_model(str(path), device_map="tp"), "do not split evenly over 3")


def test_cuda_limits_refused(tiny_checkpoint, fake_cuda, monkeypatch):
    path = tiny_checkpoint()
    _refuse_weights(monkeypatch)
    _one_line(lambda: load_model(str(path), device="cuda:1"), "only 1 GPUs")
    fake_cuda.bf16 = False
    _one_line(lambda: load_model(str(path), device="cuda", dtype="bfloat16"), "Fake GPU has no bfloat16")
    assert describe_model(str(path), device="cuda", dtype="float16").dtype == "float16"


def test_placement_puts_weights_straight_on_the_device():
    assert devices.placement("cpu", None) == {}
    assert devices.placement("cuda:1", None) == {"device_map": {"": "cuda:1"}}
    assert devices.placement("cuda", "auto") == {"device_map": "auto"}


def test_cuda_load_passes_the_device_to_from_pretrained(tiny_checkpoint, fake_cuda, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = {}

    def spy(*a, **k):
        seen.update(k)
        raise AssertionError("stop here")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    with pytest.raises(AssertionError, match="stop here"):
        load_model(str(_with_dtype(tiny_checkpoint(), "bfloat16")), device="cuda")
    assert seen["device_map"] == {"": "cuda"} and seen["dtype"] == torch.bfloat16


def test_allocator_default_only_when_unset(monkeypatch):
    monkeypatch.delenv(devices.ALLOC_ENV, raising=False)
    assert devices.set_allocator_default() == "expandable_segments:True"
    monkeypatch.setenv(devices.ALLOC_ENV, "max_split_size_mb:128")
    assert devices.set_allocator_default() == "max_split_size_mb:128"


def test_manifest_records_allocator_device_and_dtype(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv(devices.ALLOC_ENV, "expandable_segments:True")
    run_dir = run_task("fake", [tiny_checkpoint()], {"lengths": "8"}, out_root=tmp_path / "out", progress=False)
    manifest = results.read_manifest(run_dir)
    assert manifest["cuda_alloc_conf"] == "expandable_segments:True"
    assert manifest["device_names"] == ["cpu"] and manifest["device"] == "cpu" and manifest["dtype"] == "float32"


def test_probe_stacks_layers_from_different_devices():
    probe = Probe(rows=(3,), reducers={"max_weight": None})
    probe.stats = {0: {"max_weight": torch.zeros(1, 2, 1, device="meta")}, 1: {"max_weight": torch.ones(1, 2, 1)}}
    stacked = probe.get("max_weight")
    assert stacked.shape == (2, 1, 2, 1) and stacked.device.type == "meta"


def test_nll_copies_to_the_host_once(monkeypatch):
    model = build_model("llama", vocab_size=97, seed=3)
    ids = torch.randint(0, 97, (300,))
    reference = per_position_nll(model, ids, chunk=16)
    calls = []
    original = torch.Tensor.cpu

    def counting(self, *a, **k):
        calls.append(tuple(self.shape))
        return original(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "cpu", counting)
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("a per-chunk .item() sync"))
    out = per_position_nll(model, ids, chunk=16, prefill_chunk=100)
    assert calls == [(299,)]  # 19 head chunks, 3 prefill chunks, one copy
    assert out.dtype == torch.float32 and torch.allclose(out, reference, atol=1e-5)
