"""`python -m harness.reference --variant ssmax --out DIR`: train one reference model (background builds)."""

import argparse
import json
from pathlib import Path

from harness.reference import VARIANTS, build_reference
from harness.reference.recipes import RECIPES


def main() -> None:
    """Parse arguments and run build_reference."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--variant", choices=VARIANTS, required=True)
    ap.add_argument("--recipe", choices=list(RECIPES), default="base")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tokenizer-dir", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep-checkpoints", action="store_true", help="save OUT/checkpoints/step_N at each check")
    ap.add_argument("--resume", action="store_true", help="continue from the latest kept checkpoint in OUT/checkpoints")
    ap.add_argument("--branch-from", type=Path, default=None,
                    help="ssmax-late: start from the softmax run in this directory at its switch step")
    ap.add_argument("--set", default="{}", help="JSON dict of TrainConfig overrides")
    args = ap.parse_args()
    out = build_reference(args.variant, args.out, recipe=args.recipe, steps=args.steps, quick=args.quick, progress=False,
                          tokenizer_dir=args.tokenizer_dir, threads=args.threads,
                          overrides=json.loads(args.set), keep_checkpoints=args.keep_checkpoints,
                          resume=args.resume, branch_from=args.branch_from, echo=lambda m: print(m, flush=True))
    print(f"saved {out}", flush=True)


if __name__ == "__main__":
    main()
