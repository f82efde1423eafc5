"""load_model: local checkpoints, SSMax convention, RoPE override, and clear errors for bad input."""

import json
from pathlib import Path

import pytest
import torch

from harness.attention import apply_attention, attention_modules
from harness.models.checkpoint import describe_model
from harness.models.loading import load_model
from harness.errors import UserError
from tests.tiny import build_model, build_tokenizer


def test_ssmax_round_trip_keeps_logits(tmp_path):
    tok = build_tokenizer()
    model = build_model("llama", vocab_size=len(tok), ssmax=True, seed=7)
    apply_attention(model, "ssmax")
    ids = torch.randint(0, len(tok), (1, 80))
    with torch.no_grad():
        before = model(ids).logits
    model.save_pretrained(tmp_path / "ck")
    tok.save_pretrained(tmp_path / "ck")
    loaded = load_model(str(tmp_path / "ck"))
    assert loaded.info.attention == "ssmax" and loaded.info.checkpoint_attention == "ssmax"
    with torch.no_grad():
        after = loaded.model(ids).logits
    assert torch.equal(before, after)
    s_values = [m.ssmax_s for _, m in attention_modules(loaded.model)]
    assert all(s.requires_grad for s in s_values)  # still trainable parameters
    assert torch.equal(s_values[0], attention_modules(model)[0][1].ssmax_s)


def test_ssmax_checkpoint_runs_as_softmax_only_when_asked(tiny_checkpoint):
    path = tiny_checkpoint(ssmax=True)
    default = load_model(str(path))
    explicit = load_model(str(path), attention="softmax")
    ids = torch.randint(0, 300, (1, 50))
    with torch.no_grad():
        assert not torch.allclose(default.model(ids).logits, explicit.model(ids).logits)
    assert explicit.info.attention == "softmax"


def test_info_fields_and_theta_override(tiny_checkpoint):
    path = tiny_checkpoint(training_length=64)
    info = load_model(str(path), attention="ssmax(s=auto)", rope_theta=5e5).info
    assert info.training_length == 64 and info.rope_theta == 5e5
    assert info.attention.startswith("ssmax(s=0.24")
    assert len(info.fingerprint) == 64 and info.architecture == "LlamaForCausalLM"
    assert describe_model(str(path)).fingerprint == info.fingerprint


def test_theta_override_changes_rope(tiny_checkpoint):
    path = tiny_checkpoint()
    base, raised = load_model(str(path)), load_model(str(path), rope_theta=5e5)
    assert raised.model.config.rope_parameters["rope_theta"] == 5e5
    ids = torch.randint(0, 300, (1, 64))
    with torch.no_grad():
        assert not torch.allclose(base.model(ids).logits, raised.model(ids).logits)


@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen3", "gemma"])
def test_other_families_load_with_ssmax(tiny_checkpoint, family):
    loaded = load_model(str(tiny_checkpoint(family)), attention="ssmax(s=0.3)")
    assert loaded.model.config._attn_implementation == "lch"
    with torch.no_grad():
        assert torch.isfinite(loaded.model(torch.randint(0, 300, (1, 40))).logits).all()


def test_fingerprint_changes_with_weights(tiny_checkpoint):
    assert describe_model(str(tiny_checkpoint(seed=1))).fingerprint != describe_model(str(tiny_checkpoint(seed=2))).fingerprint


def one_line_error(fn, match):
    with pytest.raises(UserError, match=match) as err:
        fn()
    assert "\n" not in str(err.value)


def test_bad_inputs(tmp_path, tiny_checkpoint):
    one_line_error(lambda: load_model(str(tmp_path / "missing")), "not found")
    (tmp_path / "empty").mkdir()
    one_line_error(lambda: load_model(str(tmp_path / "empty")), "no config.json")
    path = tiny_checkpoint()
    one_line_error(lambda: load_model(str(path), attention="flash"), "unknown attention spec")
    one_line_error(lambda: load_model(str(path), attention="ssmax"), "softmax checkpoint")
    one_line_error(lambda: load_model(str(path), rope_theta=-1.0), "rope-theta")
    one_line_error(lambda: load_model("reference/bogus"), "unknown reference model")
    one_line_error(lambda: load_model(str(path), device="tpu"), "unknown device")
    one_line_error(lambda: load_model(str(path), dtype="int8"), "unknown dtype")


def test_pickle_refused_unless_allowed(tmp_path, tiny_checkpoint):
    path = tiny_checkpoint()
    model = load_model(str(path)).model
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((path / "config.json").read_text())
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    one_line_error(lambda: load_model(str(pickled)), "allow-pickle")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (pickled / name).write_text((path / name).read_text())
    assert load_model(str(pickled), allow_pickle=True).info.name == "pickled"


def test_remote_code_refused_unless_asked(tiny_checkpoint):
    path = tiny_checkpoint()
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (path / "config.json").write_text(json.dumps(config))
    one_line_error(lambda: load_model(str(path)), "trust-remote-code")


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    one_line_error(lambda: describe_model("no-such-org/no-such-model"), "could not be fetched")


def test_reference_not_built_is_clear(monkeypatch, tmp_path):
    import harness.reference.shipped as shipped

    monkeypatch.setattr(shipped, "REFERENCE_DIR", tmp_path)
    one_line_error(lambda: load_model("reference/ssmax"), "not built yet")


def test_local_names_tell_numbered_checkpoints_apart(tmp_path, tiny_checkpoint):
    """Two runs' `checkpoint-500` (or `checkpoints/step_03000`) folders get different names; symlinks keep theirs."""
    from harness.models.checkpoint import local_display_name, resolve_checkpoint

    assert local_display_name(tmp_path / "run-a" / "checkpoint-500") == "run-a/checkpoint-500"
    assert local_display_name(tmp_path / "run-b" / "checkpoints" / "step_03000") == "run-b/step_03000"
    assert local_display_name(tmp_path / "run-a" / "final") == "final"
    assert local_display_name(tmp_path / "run-a" / "x" / ".." / "final") == "final"
    target = Path(tiny_checkpoint())
    link = tmp_path / "my-model"
    link.symlink_to(target)
    name, path = resolve_checkpoint(str(link))
    assert name == "my-model" and path == target.resolve()
