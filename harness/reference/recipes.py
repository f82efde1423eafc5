"""Named training recipes of reference pairs: a model shape and a curriculum, shared by both models of a pair.

A pair of recipe NAME is `reference/NAME-softmax` and `reference/NAME-ssmax` (the original recipe
`base` keeps its names `reference/softmax` and `reference/ssmax`). Both models of a pair are built
from the same recipe and differ only in the attention variant. Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.errors import UserError
from harness.reference.shapes import ModelShape, TrainConfig


@dataclass(frozen=True)
class Recipe:
    """A named reference-pair recipe."""

    name: str
    """recipe name (the prefix of its models' names)"""
    about: str
    """one line: what the recipe is and why it exists"""
    shape: ModelShape = field(default_factory=ModelShape)
    """model size and positional encoding"""
    train: TrainConfig = field(default_factory=TrainConfig)
    """curriculum and optimiser"""
    min_retrieval: float = 0.75
    """needle accuracy at the training length a shipped pair of this recipe must reach (tests check it)"""
    eval_theta_factor: float = 50.0
    """how much `lch demo` raises the RoPE base at evaluation (50x, as in the paper; 1: positions up to 16x were
    trained on, so the base stays)"""

    def model_name(self, variant: str) -> str:
        """The reference model name of this recipe's `variant` (without the `reference/` prefix)."""
        return variant if self.name == "base" else f"{self.name}-{variant}"


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("base", "4 layers, d_model 128, 4 heads of dim 32, RoPE base 10k, training length 256 (the first pair)"),
        Recipe("nope", "as base, but no positional encoding in any layer (SmolLM3 with every layer NoPE): "
                       "length generalisation rests on the attention normalisation alone",
               shape=ModelShape(positions="nope"), train=TrainConfig(steps=4000)),
        Recipe("rope64", "RoPE as in the paper with 2 heads of dim 64 (d_model 128), training length 512",
               shape=ModelShape(heads=2), train=TrainConfig(steps=3000, training_length=512, ramp_start=128)),
        Recipe("theta500k", "as base, but trained with RoPE base 500k, so evaluation at 500k is no raise "
                            "(tests whether a large training base lets retrieval reach past the training length)",
               shape=ModelShape(rope_theta=500_000.0)),
        Recipe("randpos", "as base, but each training row gets sorted random position ids from [0, 16 x 256): "
                          "RoPE meets every position up to 16x in training while n stays <= 256, so at 1x-16x "
                          "the only new thing is n, the number of keys (a positive control for SSMax)",
               train=TrainConfig(position_span=16), eval_theta_factor=1.0),
        Recipe("randpos2", "as randpos, but each row draws its own span log-uniformly from [1, 16] x 256, so "
                           "neighbouring tokens sit 1 to 16 positions apart (randpos's fixed spacing of ~16 left "
                           "contiguous test text out of distribution even at 1x)",
               train=TrainConfig(position_span=16, position_span_draw="loguniform"), eval_theta_factor=1.0,
               # its softmax model locates the needle at 1x (first digit 0.93) but copies all 7 digits in 17%
               min_retrieval=0.15),
    )
}


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`; UserError naming the known recipes otherwise."""
    if name not in RECIPES:
        raise UserError(f"unknown reference recipe {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name]


__all__ = ["RECIPES", "Recipe", "get_recipe"]
