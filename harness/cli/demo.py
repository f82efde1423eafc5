"""`lch demo`: the paper's three evaluations on a reference pair, offline, then one comparison report.

Models: the pair's softmax model (a), its SSMax model (b), and the softmax model switched post hoc to
ssmax(s=auto) (e); RoPE theta raised at evaluation as the pair's recipe says (50x as in the paper for
pairs trained on positions 0..L-1; not at all for pairs trained on positions up to 16x); context lengths
up to 16x the training length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_PAIR = "randpos2"
"""the pair `lch demo` runs: the first whose retrieval shows attention fading past the training length"""
THETA_FACTOR = 50
"""the paper's raise of the RoPE base at evaluation (a pair's recipe may say otherwise)"""
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class DemoPlan:
    """The demo's grid, derived from the reference pair's training length and RoPE theta."""

    models: tuple
    """ModelRequest per evaluated variant"""
    position_loss: dict
    """parameters of the position_loss run"""
    needle: dict
    """parameters of the needle run"""
    attention_probe: dict
    """parameters of the attention_probe run"""


def demo_plan(quick: bool = False, softmax: str = "reference/softmax", ssmax: str = "reference/ssmax",
              theta_factor: float = THETA_FACTOR) -> DemoPlan:
    """The demo's models and task parameters; `quick` is a small grid (tests, notebooks) of the same form."""
    from harness.models.checkpoint import describe_model
    from harness.runner import ModelRequest

    info = describe_model(softmax)
    # RoPE models: the base raised 50x at evaluation, as in the paper; NoPE models have none to raise
    train, theta = info.training_length or 256, info.rope_theta * theta_factor if info.rope_theta else None
    models = (ModelRequest(softmax, "softmax", theta), ModelRequest(ssmax, None, theta),
              ModelRequest(softmax, "ssmax(s=auto)", theta))
    factors = (1, 4) if quick else (1, 2, 4, 8, 16)
    lengths = tuple(train * f for f in factors)
    return DemoPlan(
        models=models,
        position_loss={"length": lengths[-1], "docs": 2 if quick else 6},
        needle={"lengths": lengths, "depths": (0.0, 0.5, 1.0) if quick else DEPTHS, "trials": 1 if quick else 4},
        attention_probe={"lengths": (train, lengths[-1]) if quick else (train, 4 * train, 16 * train),
                         "depths": (0.5,), "trials": 2 if quick else 8},
    )


def pair_models(recipe: str) -> dict:
    """The reference/... names of a recipe's shipped pair, as demo_plan's keyword arguments."""
    from harness.reference.recipes import get_recipe

    chosen = get_recipe(recipe)
    return {v: f"reference/{chosen.model_name(v)}" for v in ("softmax", "ssmax")}


def run_demo(out_root="results", *, quick: bool = False, progress: bool = True, pair: str = DEFAULT_PAIR,
             **models) -> Path:
    """Run the three tasks on a reference pair (resuming finished cells) and write the comparison; returns report.html."""
    from harness.report import compare_runs
    from harness.runner import run_task

    from harness.reference.recipes import get_recipe

    plan = demo_plan(quick, **{**pair_models(pair), "theta_factor": get_recipe(pair).eval_theta_factor, **models})
    name = "demo" if pair == DEFAULT_PAIR else f"demo-{pair}"
    demo_dir = Path(out_root) / (f"{name}-quick" if quick else name)
    runs = [run_task(task, list(plan.models), getattr(plan, task), out_root=demo_dir, progress=progress)
            for task in ("position_loss", "needle", "attention_probe")]
    return compare_runs(runs, demo_dir / "compare")
