"""The `lch` command line: `app` (typer) and its sub-commands (run configs, demo, lm-eval, reference)."""

from harness.cli.app import app

__all__ = ["app"]
