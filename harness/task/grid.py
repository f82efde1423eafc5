"""The length x depth x trial grid of needle-style tasks, scheduled for shared-prefix prefill.

Every prompt of one trial is cut from the same haystack token stream, so with `prefix_cache` a trial is a group
whose cells run latest needle first and each prefills only what follows the previous prompt's needle
(harness.inference.prefix_cache does the sharing; this module only orders cells and prices them).
"""

from __future__ import annotations

from collections.abc import Sequence

from harness.columns import CONTEXT_LENGTH, DEPTH, TRIAL

MIN_SHARE = 0.05
"""cost floor of a cell whose prompt is almost entirely shared (it still decodes the answer)"""


class DepthGrid:
    """Task mixin for grids of (context_length, depth, trial) cells with a `prefix_cache` parameter.

    Cells and keys are one per prompt; with prefix_cache a trial is a group whose cells run latest
    needle first, and a cell's cost is the part of its prompt it prefills.
    """

    def cells(self, params) -> list[dict]:
        """One cell per (context_length, depth, trial)."""
        return [{CONTEXT_LENGTH: int(length), DEPTH: float(depth), TRIAL: trial}
                for length in sorted(set(params.lengths)) for depth in sorted(set(params.depths))
                for trial in range(params.trials)]

    def cost(self, params, cell: dict) -> float:
        """Proportional to the context length, times the share of the prompt prefilled with prefix_cache."""
        share = shared_fraction(cell, params.lengths, params.depths) if params.prefix_cache else 1.0
        return cell[CONTEXT_LENGTH] / min(params.lengths) * share

    def group(self, params, cell: dict):
        """With prefix_cache: a trial (its prompts are cut from one haystack stream), else no group."""
        return (TRIAL, cell[TRIAL]) if params.prefix_cache else None

    def order(self, params, cell: dict) -> float:
        """Latest needle first (depth x length, descending): each prompt then shares all before its needle."""
        return -float(cell[DEPTH]) * cell[CONTEXT_LENGTH]


def shared_fraction(cell: dict, lengths: Sequence[int], depths: Sequence[float]) -> float:
    """Share of its prompt a cell prefills in DepthGrid order: all for the trial's first, ~1 - depth for the others."""
    if cell[CONTEXT_LENGTH] >= max(lengths) and cell[DEPTH] >= max(depths):
        return 1.0
    return max(1.0 - float(cell[DEPTH]), MIN_SHARE)


__all__ = ["DepthGrid", "MIN_SHARE", "shared_fraction"]
