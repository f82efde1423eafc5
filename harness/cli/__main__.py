"""`python -m harness.cli`: the same as `lch`."""

from harness.cli.app import app

app(prog_name="lch")
