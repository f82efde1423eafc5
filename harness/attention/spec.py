"""Attention spec strings (`ssmax(s=0.3,b=0.1)`, ...) <-> frozen AttentionSpec. Imports no torch."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from harness.errors import UserError

_PARAMS = {"softmax": (), "ssmax": ("s", "b"), "logn": ("L",), "temp": ("beta", "floor")}
_SPEC_RE = re.compile(r"^\s*([a-z]+)\s*(?:\(\s*(.*?)\s*\))?\s*$")
SPEC_HELP = "softmax, ssmax, ssmax(s=0.3), ssmax(s=auto), ssmax(s=0.3,b=0.1), logn(L=256), temp(beta=0.1,floor=8192)"


@dataclass(frozen=True)
class AttentionSpec:
    """One attention normalisation: a name and its parameters (None = taken from the checkpoint)."""

    name: str = "softmax"
    """softmax | ssmax | logn | temp"""
    s: float | str | None = None
    """ssmax: scale s (a number, "auto" = 1/ln(training length), None = the checkpoint's learned s)"""
    b: float | None = None
    """ssmax: bias b added to s*ln(n)"""
    L: int | None = None
    """logn: the training length L of max(1, log_L(n))"""
    beta: float | None = None
    """temp: beta of 1 + beta*ln(1 + floor(n/F))"""
    floor: int | None = None
    """temp: F of 1 + beta*ln(1 + floor(n/F))"""

    def __str__(self) -> str:
        args = [f"{k}={_fmt(getattr(self, k))}" for k in _PARAMS[self.name] if getattr(self, k) is not None]
        return f"{self.name}({','.join(args)})" if args else self.name

    @property
    def learned(self) -> bool:
        """True when the scale comes from the checkpoint's per-head `ssmax_s` parameters."""
        return self.name == "ssmax" and self.s is None


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_spec(text: str | AttentionSpec) -> AttentionSpec:
    """Parse an attention spec string such as `ssmax(s=0.3,b=0.1)`; raises UserError with the allowed forms."""
    if isinstance(text, AttentionSpec):
        return text
    match = _SPEC_RE.match(str(text))
    if not match or match.group(1) not in _PARAMS:
        raise UserError(f"unknown attention spec {text!r}; allowed: {SPEC_HELP}")
    name, body = match.group(1), match.group(2)
    values: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in (body or "").split(","))):
        key, eq, raw = (x.strip() for x in item.partition("="))
        if not eq or key not in _PARAMS[name]:
            allowed = ", ".join(_PARAMS[name]) or "none"
            raise UserError(f"bad parameter {item!r} in attention spec {text!r}; {name} takes: {allowed}")
        values[key] = _parse_value(text, name, key, raw)
    spec = AttentionSpec(name=name, **values)
    if name == "ssmax" and spec.b is not None and spec.s is None:
        raise UserError(f"attention spec {text!r} gives b without s; use ssmax(s=...,b=...)")
    if name == "logn" and spec.L is None:
        raise UserError(f"attention spec {text!r} needs L, e.g. logn(L=256)")
    if name == "temp":
        spec = replace(spec, beta=0.1 if spec.beta is None else spec.beta, floor=8192 if spec.floor is None else spec.floor)
    return spec


def _parse_value(text, name, key, raw):
    if key == "s" and raw == "auto":
        return "auto"
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"attention spec {text!r}: {key}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"attention spec {text!r}: {key} must be finite")
    if key in ("L", "floor"):
        if value != int(value) or value < 2:
            raise UserError(f"attention spec {text!r}: {key} must be an integer >= 2")
        return int(value)
    if key in ("s", "beta") and value <= 0:
        raise UserError(f"attention spec {text!r}: {key} must be > 0")
    return value


def resolve_spec(spec: str | AttentionSpec, training_length: int | None) -> AttentionSpec:
    """Replace s=auto by 1/ln(training length) (SSMax then equals softmax at n = training length)."""
    spec = parse_spec(spec)
    if spec.s == "auto":
        if not training_length or training_length < 2:
            raise UserError(f"attention spec {spec} needs the training length, which the checkpoint does not record; give s=... instead")
        spec = replace(spec, s=1.0 / math.log(training_length))
    return spec
