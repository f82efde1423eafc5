"""What `lch run` reads besides its options: run.yaml files, -T name=value, --rope-base TYPE=X. Imports no torch."""

from __future__ import annotations

from pathlib import Path

from harness.errors import UserError

_CONFIG_KEYS = ("task", "params", "models")
_MODEL_KEYS = ("model", "attention", "rope_theta", "rope_bases", "training_length")


def read_run_config(path: Path) -> dict:
    """A run.yaml (task, params, models: [{model, attention, rope_theta}]) checked for shape."""
    import yaml

    if not path.is_file():
        raise UserError(f"--config {str(path)!r}: no such file")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"--config {str(path)!r}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        raise UserError(f"--config {str(path)!r}: expected a mapping with keys {', '.join(_CONFIG_KEYS)}")
    unknown = sorted(set(doc) - set(_CONFIG_KEYS))
    if unknown:
        raise UserError(f"--config {str(path)!r}: unknown key {unknown[0]!r}; allowed: {', '.join(_CONFIG_KEYS)}")
    if "task" in doc and not isinstance(doc["task"], str):
        raise UserError(f"--config {str(path)!r}: 'task' must be a task name, got {doc['task']!r}")
    if not isinstance(doc.get("params") or {}, dict):
        raise UserError(f"--config {str(path)!r}: 'params' must be a mapping of name: value")
    models = doc.get("models") or []
    if not isinstance(models, list):
        raise UserError(f"--config {str(path)!r}: 'models' must be a list of {{model, attention, rope_theta}}")
    parsed = []
    for i, entry in enumerate(models):
        entry = {"model": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise UserError(f"--config {str(path)!r}: models[{i}] needs 'model: <path or id>'")
        bad = sorted(set(entry) - set(_MODEL_KEYS))
        if bad:
            raise UserError(f"--config {str(path)!r}: models[{i}] has unknown key {bad[0]!r}; allowed: {', '.join(_MODEL_KEYS)}")
        theta = entry.get("rope_theta")
        if theta is not None and (isinstance(theta, bool) or not isinstance(theta, (int, float))):
            raise UserError(f"--config {str(path)!r}: models[{i}].rope_theta must be a number, got {theta!r}")
        length = entry.get("training_length")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int)):
            raise UserError(f"--config {str(path)!r}: models[{i}].training_length must be an integer, got {length!r}")
        bases = entry.get("rope_bases") or {}
        if not isinstance(bases, dict) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in bases.values()):
            raise UserError(f"--config {str(path)!r}: models[{i}].rope_bases must map layer types to numbers, "
                            "e.g. {{sliding_attention: 20000}}")
        if entry.get("attention") is not None and not isinstance(entry["attention"], str):
            raise UserError(f"--config {str(path)!r}: models[{i}].attention must be a spec string")
        parsed.append(entry)
    return {"task": doc.get("task"), "params": dict(doc.get("params") or {}), "models": parsed}


def parse_rope_bases(items: list[str]) -> dict[str, float]:
    """--rope-base TYPE=X strings -> {layer type: base}."""
    out = {}
    for item in items:
        kind, sep, value = item.partition("=")
        try:
            out[kind.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not kind.strip():
            raise UserError(f"bad --rope-base {item!r}: expected LAYER_TYPE=BASE, e.g. --rope-base sliding_attention=20000")
    return out


def parse_overrides(items: list[str]) -> dict[str, str]:
    """-T name=value strings -> {name: value} (the task's Params parse the values)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"bad -T {item!r}: expected name=value, e.g. -T lengths=256,512")
        out[key.strip()] = value
    return out
