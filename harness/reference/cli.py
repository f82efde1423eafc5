"""`lch reference list | recipes | build`: the shipped reference pairs and their recipes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

reference_app = typer.Typer(no_args_is_help=True, help="The committed reference softmax/SSMax pairs.")


@reference_app.command("list")
def reference_list():
    """Every shipped reference model, one per line: name, recipe, training length, attention."""
    import json

    from harness.reference.shipped import REFERENCE_DIR, REFERENCE_PREFIX, reference_models

    for name in reference_models():
        config = json.loads((REFERENCE_DIR / name / "config.json").read_text())
        recipe_file = REFERENCE_DIR / name / "train_recipe.json"
        recipe = json.loads(recipe_file.read_text()).get("recipe", "base") if recipe_file.is_file() else "?"
        attention = (config.get("attention_variant") or {}).get("name", "softmax")
        typer.echo(f"{REFERENCE_PREFIX}{name}\trecipe={recipe}\ttraining_length={config.get('training_length')}"
                   f"\tattention={attention}")


@reference_app.command("recipes")
def reference_recipes():
    """The training recipes `lch reference build --recipe NAME` knows."""
    from harness.reference.recipes import RECIPES

    for recipe in RECIPES.values():
        typer.echo(f"{recipe.name}\t{recipe.about}")


@reference_app.command("build")
def reference_build(
    recipe: Annotated[str, typer.Option(help="training recipe (lch reference recipes)")] = "base",
    variant: Annotated[Optional[list[str]], typer.Option(help="variant to train (repeatable; default softmax and ssmax)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="models go to OUT/<model name> (default: the package's models/)")] = None,
    steps: Annotated[Optional[int], typer.Option(help="training steps (default: the recipe's)")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="a tiny model, a few steps: a smoke test")] = False,
    threads: Annotated[Optional[int], typer.Option(help="torch threads (e.g. 1 per model when training two at once)")] = None,
    keep_checkpoints: Annotated[bool, typer.Option("--keep-checkpoints", help="also save OUT/<model>/checkpoints/step_N at every held-out check")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="continue each model from its latest kept checkpoint (a stopped --keep-checkpoints run)")] = False,
    branch_from: Annotated[Optional[Path], typer.Option(help="ssmax-late: start from this softmax run's kept checkpoint at the switch step (trains only the SSMax phase)")] = None,
):
    """Train a reference pair of a recipe (both models step for step as committed)."""
    from harness.reference import build_reference
    from harness.reference.recipes import get_recipe

    chosen = get_recipe(recipe)
    for v in variant or ["softmax", "ssmax"]:
        path = build_reference(v, out / chosen.model_name(v) if out else None, recipe=recipe, steps=steps, quick=quick,
                               threads=threads, keep_checkpoints=keep_checkpoints, resume=resume,
                               branch_from=branch_from)
        typer.echo(f"{chosen.model_name(v)}: {path}")
