"""`lch lm-eval ARGS...`: lm-evaluation-harness's own command line with the `lch` model backend registered.

    lch lm-eval --model lch --model_args pretrained=reference/softmax,attention=ssmax(s=auto),rope_theta=500000 \
        --tasks wikitext --device cpu --output_path results/lm-eval

Every argument goes to lm-eval unchanged (`lch lm-eval --help` is lm-eval's help). lm-eval 0.4.13 loads no
model plug-ins, so this command imports harness.lmeval (which registers `lch`) before running lm-eval's CLI;
`python -m harness.cli.lmeval ARGS...` does the same. Bad lch model_args end with one line, exit 2.
"""

from __future__ import annotations

import sys

import typer

from harness.errors import UserError


def main(args: list[str]) -> int:
    """Run lm-eval's CLI on `args` with the lch backend registered; its exit code (0 on success)."""
    try:
        import lm_eval.__main__ as lm_eval_main
    except ImportError as e:
        raise UserError("`lch lm-eval` needs lm-evaluation-harness: pip install 'long-context-harness[lmeval]' "
                        f"({e})") from None
    import harness.lmeval  # noqa: F401  (registers the `lch` model)

    preflight(args)
    saved = sys.argv
    sys.argv = ["lm-eval", *args]  # lm-eval's parser reads sys.argv (and inserts `run` for the legacy form)
    try:
        lm_eval_main.cli_evaluate()
    except SystemExit as e:  # argparse errors and --help
        code = e.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved
    return 0


def lch_model_args(args: list[str]) -> dict | None:
    """The model_args of an `--model lch` command line as lm-eval will parse them; None for another model."""
    import argparse

    from lm_eval._cli.utils import MergeDictAction

    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("--model", "-M", default=None)
    parser.add_argument("--model_args", "-a", nargs="+", action=MergeDictAction, default=None)
    parser.add_argument("--device", default=None)
    try:
        known, _ = parser.parse_known_args(args)
    except (argparse.ArgumentError, SystemExit):
        return None  # lm-eval's own parser reports it
    if known.model != "lch":
        return None
    return {"model_args": dict(known.model_args or {}), "device": known.device}


def preflight(args: list[str]) -> None:
    """Check an lch model's model_args (keys, checkpoint, attention spec, RoPE base) before lm-eval starts: UserError."""
    from harness.lmeval import describe

    found = lch_model_args(args)
    if found is not None:
        model_args = {k: v for k, v in found["model_args"].items() if k not in ("max_length", "max_gen_toks", "batch_size", "max_batch_size")}
        describe(model_args, found["device"])


def register(app) -> None:
    """Add the `lm-eval` command to the lch typer app."""
    @app.command("lm-eval", add_help_option=False,
                 context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def lm_eval_command(ctx: typer.Context):
        """Run lm-evaluation-harness with the `lch` backend: lch lm-eval --model lch --model_args pretrained=M,attention=A ..."""
        code = main(list(ctx.args))
        if code:
            raise typer.Exit(code)


def cli() -> None:
    """`python -m harness.cli.lmeval ARGS...`: bad input as one line, exit 2."""
    try:
        sys.exit(main(sys.argv[1:]))
    except UserError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
