"""The reference softmax/SSMax pair: tokenizer, curriculum trainer, committed weights in ./models."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from harness.errors import UserError
from harness.reference.shipped import REFERENCE_DIR

VARIANTS = ("softmax", "ssmax", "ssmax-fixed", "ssmax-bias", "ssmax-late")
"""(a) softmax, (b) learnable s per head, (c) s fixed at 1, (d) learnable s and bias, (f) SSMax for the last 20%."""


def build_reference(variant: str, out_dir: Path | None = None, *, recipe: str = "base", steps: int | None = None,
                    quick: bool = False,
                    progress: bool = True, tokenizer_dir: Path | None = None, threads: int | None = None,
                    overrides: dict | None = None, keep_checkpoints: bool = False, resume: bool = False,
                    branch_from: Path | None = None, echo=print) -> Path:
    """Train one reference model of a recipe (tokenizer, curriculum, checkpoint + train_log.csv); return its directory.

    `resume` continues from the latest kept checkpoint in OUT/checkpoints (a run with keep_checkpoints
    that stopped); the result equals an uninterrupted run's. `branch_from` (ssmax-late only) starts from
    the softmax run in that directory at the latest kept checkpoint up to the switch step: before its
    switch an ssmax-late run is that softmax run step for step, so only the SSMax phase is trained
    (with `resume` too, the model's own kept checkpoints come first).
    """
    from harness.reference.recipes import get_recipe

    chosen = get_recipe(recipe)
    if variant not in VARIANTS:
        raise UserError(f"unknown reference variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    if steps is not None and steps < 1:
        raise UserError(f"--steps must be >= 1, got {steps}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    if branch_from is not None and variant != "ssmax-late":
        raise UserError(f"--branch-from needs --variant ssmax-late (the only variant that is a softmax run up to a "
                        f"step), got {variant!r}")
    out_dir = Path(out_dir) if out_dir is not None else REFERENCE_DIR / chosen.model_name(variant)
    import torch

    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _build(variant, chosen, out_dir, steps=steps, quick=quick, progress=progress, tokenizer_dir=tokenizer_dir,
                      overrides=overrides, keep_checkpoints=keep_checkpoints or resume or branch_from is not None,
                      resume=resume, branch_from=branch_from, echo=echo)
    finally:
        torch.set_num_threads(previous_threads)  # a library call leaves the process as it found it


def _build(variant: str, chosen, out_dir: Path, *, steps, quick, progress, tokenizer_dir, overrides, keep_checkpoints,
           resume, branch_from, echo) -> Path:
    """build_reference's work, with arguments already checked."""
    from harness.data.corpus import load_corpus
    from harness.reference import train as tr
    from harness.reference.data import RowMaker, token_stream
    from harness.reference.tokenizer import VOCAB_SIZE, save_tokenizer, train_tokenizer

    train_corpus = load_corpus("builtin:stdlib", "train")
    heldout_corpus = load_corpus("builtin:stdlib", "heldout")
    train_docs = [d.text for d in train_corpus.documents]
    heldout_docs = [d.text for d in heldout_corpus.documents]
    if quick:
        # Smoke-test size: a small slice of the corpus, a tiny model, a few steps.
        train_docs, heldout_docs = train_docs[:40], heldout_docs[:10]
        shape = tr.ModelShape(layers=2, d_model=64, heads=4, ffn=128, positions=chosen.shape.positions)
        cfg = tr.TrainConfig(steps=steps or 30, batch_size=4, training_length=128, copy_steps=10, warmup=5,
                             eval_every=max(steps or 30, 1), eval_trials=8,
                             eval_long_trials=4, position_span=chosen.train.position_span,
                             position_span_draw=chosen.train.position_span_draw)
        vocab = 512
    else:
        shape = chosen.shape
        cfg = chosen.train if steps is None else replace(chosen.train, steps=steps)
        vocab = VOCAB_SIZE
    if overrides:
        cfg = replace(cfg, **overrides)
    wanted = tr.recipe(variant, shape, cfg, train_corpus.fingerprint, chosen.name)
    start, verb = None, "resuming"
    if resume and (branch_from is None or _kept(out_dir)):
        start = _resume_point(out_dir, wanted)
    elif branch_from is not None:
        verb = "branching"
        start = _branch_point(Path(branch_from), {**wanted, "variant": "softmax"}, tr.late_switch_step(cfg))
    if start is not None:
        tokenizer_dir = start  # the run's own tokenizer
    if tokenizer_dir is not None and (Path(tokenizer_dir) / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    else:
        tokenizer = train_tokenizer(train_docs, vocab_size=vocab)
        if tokenizer_dir is not None:
            save_tokenizer(tokenizer, Path(tokenizer_dir))
    train_rows = RowMaker(tokenizer, token_stream(tokenizer, train_docs), cfg.seq_len, cfg.training_length,
                          cfg.answer_weight, cfg.distractor_p)
    heldout_rows = RowMaker(tokenizer, token_stream(tokenizer, heldout_docs), cfg.seq_len, cfg.training_length,
                            cfg.answer_weight, cfg.distractor_p)
    model = tr.build_model(variant, shape, tokenizer, cfg)
    state = None
    if start is not None:
        state = tr.load_train_state(start)
        tr.restore_weights(model, variant, cfg, start, state.step)
        echo(f"{verb} {variant} at step {state.step} from {start}")
    log_path = out_dir / "train_log.csv"

    def keep(step, model, resume_point):
        # Constant lr after warm-up: any checked step is a complete model; keep it with its log so far.
        import shutil

        ckpt = out_dir / "checkpoints" / f"step_{step:05d}"
        tr.save_checkpoint(model, tokenizer, ckpt, tr.recipe(variant, shape, replace(cfg, steps=step),
                                                             train_corpus.fingerprint, chosen.name))
        shutil.copyfile(log_path, ckpt / "train_log.csv")
        tr.save_train_state(resume_point, ckpt)  # last: a checkpoint without it is never resumed from

    tr.train(model, variant, train_rows, heldout_rows, cfg, log_path, progress=progress, echo=echo,
             on_eval=keep if keep_checkpoints else None, resume=state)
    tr.save_checkpoint(model, tokenizer, out_dir, tr.recipe(variant, shape, cfg, train_corpus.fingerprint, chosen.name))
    return out_dir


def _kept(run_dir: Path, last_step: int | None = None) -> list[Path]:
    """RUN_DIR's kept checkpoints that can be resumed from (they hold train_state.pt), oldest first."""
    found = [p.parent for p in sorted((run_dir / "checkpoints").glob("step_*/train_state.pt"))]
    return [c for c in found if last_step is None or int(c.name.split("_")[1]) <= last_step]


def _same_recipe(checkpoint: Path, wanted: dict) -> bool:
    return _comparable(json.loads((checkpoint / "train_recipe.json").read_text())) == _comparable(wanted)


def _branch_point(source: Path, wanted: dict, last_step: int) -> Path:
    """The latest checkpoint of the softmax run SOURCE kept at or before `last_step`; UserError otherwise."""
    found = _kept(source, last_step)
    if not found:
        raise UserError(f"nothing to branch from in {source / 'checkpoints'}: no kept checkpoint with train_state.pt "
                        f"at or before step {last_step} (the switch step)")
    if not _same_recipe(found[-1], wanted):
        raise UserError(f"{found[-1]} is not the softmax run of this recipe and settings; branch from a softmax run "
                        f"trained with the same --recipe and settings")
    return found[-1]


def _resume_point(out_dir: Path, wanted: dict) -> Path:
    """The latest kept checkpoint under OUT/checkpoints; UserError if there is none or it has another recipe."""
    found = _kept(out_dir)
    if not found:
        raise UserError(f"nothing to resume in {out_dir / 'checkpoints'}: no kept checkpoint with train_state.pt "
                        f"(train with --keep-checkpoints to make resume points)")
    if not _same_recipe(found[-1], wanted):
        raise UserError(f"{found[-1]} was trained with another recipe; resume with the same --recipe, --variant and "
                        f"settings, or train into a new --out")
    return found[-1]


_ADDED_TRAIN_FIELDS = {"position_span": 1, "position_span_draw": "fixed"}
"""TrainConfig fields added after checkpoints were kept, at the value that trains as before"""


def _comparable(recipe: dict) -> dict:
    """A recipe record as JSON without what does not decide the weights: its step count (a kept checkpoint
    records its own step, and more steps may follow at the constant learning rate; ssmax-late's switch step
    follows the resumed call's steps), the held-out checks, and added fields at their old value."""
    doc = json.loads(json.dumps(recipe, default=str))
    train = doc["train"]
    for name in ("steps", "eval_every", "eval_trials", "eval_multiples", "eval_long_trials"):
        train.pop(name, None)
    for name, old in _ADDED_TRAIN_FIELDS.items():
        if train.get(name, old) == old:
            train.pop(name, None)
    return doc


__all__ = ["REFERENCE_DIR", "VARIANTS", "build_reference"]
