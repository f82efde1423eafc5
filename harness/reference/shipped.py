"""The reference models shipped in the package (`reference/NAME`): where they lie and how a name resolves.

The one place that knows REFERENCE_DIR; `harness.models.checkpoint` resolves `reference/NAME` through it.
Imports no torch.
"""

from __future__ import annotations

from pathlib import Path

from harness.errors import UserError

REFERENCE_PREFIX = "reference/"
REFERENCE_DIR = Path(__file__).parent / "models"


def reference_models() -> list[str]:
    """Names (without `reference/`) of the reference models shipped in the package, sorted."""
    if not REFERENCE_DIR.is_dir():
        return []
    return sorted(p.name for p in REFERENCE_DIR.iterdir() if (p / "config.json").is_file() and any(p.glob("*.safetensors")))


def shipped_model_dir(spec: str) -> Path:
    """The directory of `reference/NAME`; a UserError that says how to build it when it is a recipe's unbuilt model."""
    from harness.reference.recipes import RECIPES

    name = spec[len(REFERENCE_PREFIX):]
    shipped = reference_models()
    if name in shipped:
        return REFERENCE_DIR / name
    for recipe in RECIPES.values():
        if name in (recipe.model_name("softmax"), recipe.model_name("ssmax")):
            raise UserError(f"reference model {spec!r} is not built yet; run `lch reference build --recipe {recipe.name}`")
    raise UserError(f"unknown reference model {spec!r}; shipped: {', '.join(REFERENCE_PREFIX + n for n in shipped)}"
                    " (lch reference list)")


__all__ = ["REFERENCE_DIR", "REFERENCE_PREFIX", "reference_models", "shipped_model_dir"]
