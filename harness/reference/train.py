"""Trainer of the reference softmax/SSMax pair: a small Llama, a copy-then-retrieval curriculum, CSV log."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.reference.data import Mixture, RowMaker, TokenStream
from harness.reference.shapes import ModelShape, TrainConfig


def model_config(shape: ModelShape, tokenizer, training_length: int):
    """A transformers config for the shape, with the reference pair's conventions (training_length, tied embeddings).

    positions="rope" is a LlamaConfig; positions="nope" a SmolLM3Config whose every layer is NoPE
    (SmolLM3 is Llama with a per-layer switch for RoPE), so loading needs no custom code.
    """
    from transformers import LlamaConfig, SmolLM3Config

    common = dict(
        vocab_size=len(tokenizer), hidden_size=shape.d_model, intermediate_size=shape.ffn,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.heads,
        max_position_embeddings=65_536, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": float(shape.rope_theta)},
    )
    if shape.positions == "nope":
        config = SmolLM3Config(**common, no_rope_layers=[0] * shape.layers, use_sliding_window=False)
    else:
        config = LlamaConfig(**common)
    config.training_length = int(training_length)
    return config


def build_model(variant: str, shape: ModelShape, tokenizer, cfg: TrainConfig):
    """A freshly initialised model (seeded) with the variant's attention applied."""
    from transformers import AutoModelForCausalLM

    from harness.attention import add_ssmax_parameters, apply_attention

    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(model_config(shape, tokenizer, cfg.training_length))
    if variant in ("ssmax", "ssmax-bias"):
        add_ssmax_parameters(model, cfg.init_s, bias=variant == "ssmax-bias")
        apply_attention(model, "ssmax")
    elif variant == "ssmax-fixed":
        add_ssmax_parameters(model, 1.0)
        for n, p in model.named_parameters():
            if n.endswith("ssmax_s"):
                p.requires_grad_(False)
        apply_attention(model, "ssmax")
    else:  # softmax, and ssmax-late until its switch
        apply_attention(model, "softmax")
    return model


def _is_ssmax(name: str) -> bool:
    return name.endswith(("ssmax_s", "ssmax_b"))


def _optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.dim() >= 2]
    no_decay = [p for n, p in named if p.dim() < 2 and not _is_ssmax(n)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]
    ssmax = [p for n, p in named if _is_ssmax(n)]
    if ssmax:
        groups.append({"params": ssmax, "weight_decay": 0.0, "lr_scale": cfg.ssmax_lr_scale})
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def _switch_to_ssmax(model, opt, cfg: TrainConfig) -> None:
    from harness.attention import add_ssmax_parameters, apply_attention

    add_ssmax_parameters(model, cfg.init_s)
    apply_attention(model, "ssmax")
    new = [p for n, p in model.named_parameters() if n.endswith("ssmax_s")]
    opt.add_param_group({"params": new, "weight_decay": 0.0, "lr": opt.param_groups[0]["lr"],
                         "lr_scale": cfg.ssmax_lr_scale})


def random_positions(rng: np.random.Generator, rows: int, length: int, span) -> np.ndarray:
    """Sorted position ids [rows, length]: row r holds `length` distinct draws from [0, span) (randomised positions);
    `span` is one int for every row or one per row."""
    spans = np.broadcast_to(np.asarray(span, dtype=np.int64), (rows,))
    return np.stack([np.sort(rng.choice(int(s), size=length, replace=False)) for s in spans]).astype(np.int64)


def row_spans(rng: np.random.Generator, rows: int, cfg: TrainConfig) -> np.ndarray | int:
    """The position span of each training row under cfg.position_span_draw (fixed: one int, no draw)."""
    if cfg.position_span_draw == "fixed":
        return cfg.position_span * cfg.training_length
    factors = np.exp(rng.uniform(0.0, np.log(cfg.position_span), size=rows))  # log-uniform in [1, position_span]
    return np.maximum(cfg.seq_len, np.round(factors * cfg.training_length)).astype(np.int64)


def weighted_loss(model, ids: torch.Tensor, w: torch.Tensor, position_ids: torch.Tensor | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weighted mean loss, NLL and weight of each supervised token) for rows `ids` [B, T] with weights `w`.

    `position_ids` [B, T] replace 0..T-1 (randomised positions); attention stays plain causal over the row.
    """
    # An explicit all-ones mask: without one, transformers reads position ids that do not step by 1 as packed
    # sequences and would let each token attend to itself only.
    mask = None if position_ids is None else torch.ones_like(ids)
    hidden = model.model(input_ids=ids, attention_mask=mask, position_ids=position_ids).last_hidden_state[:, :-1]
    wt = w[:, 1:]  # (B, T-1): weight of predicting ids[:, 1:]
    keep = wt > 0
    # The LM head only where there is a loss (copy prompts and padding are skipped).
    logits = model.lm_head(hidden[keep])  # (N, V)
    nll = F.cross_entropy(logits, ids[:, 1:][keep], reduction="none")
    weights = wt[keep]
    return (nll * weights).sum() / weights.sum().clamp(min=1e-6), nll, weights


def _needle_scores(model, heldout: RowMaker, prompt_len: int, trials: int, seed: int) -> tuple[float, float]:
    """(exact, digit accuracy) of the teacher-forced argmax (== greedy) answer over `trials` needles of `prompt_len`."""
    rng = np.random.default_rng(seed)
    rows, answers = [], []
    for t in range(trials):
        ids, _, pos = heldout.needle_example(rng, prompt_len, (t + 0.5) / trials, 0, weights=False)
        rows.append(ids)
        answers.append(pos)
    exact, digits = [], []
    per_batch = max(1, 16 * heldout.prompt_len // prompt_len)
    for i in range(0, trials, per_batch):
        chunk = rows[i:i + per_batch]
        ids = torch.as_tensor(np.stack(chunk))
        pred = model(input_ids=ids).logits.argmax(-1)
        for j, pos in enumerate(answers[i:i + per_batch]):
            ok = (pred[j, pos - 1] == ids[j, pos]).numpy()
            exact.append(bool(ok.all()))
            digits.append(float(ok[1:].mean()))
    return float(np.mean(exact)), float(np.mean(digits))


@torch.no_grad()
def evaluate(model, heldout: RowMaker, cfg: TrainConfig, trials: int | None = None, seed: int = 12345) -> dict:
    """Held-out checks: needle (teacher-forced argmax == greedy exact match) at the training length and at
    cfg.eval_multiples of it (consecutive positions), text NLL."""
    model.eval()
    exact, digits = _needle_scores(model, heldout, cfg.training_length, trials or cfg.eval_trials, seed)
    scores = {"needle_exact": exact, "digit_acc": digits}
    for k in cfg.eval_multiples:
        scores[f"needle_{k}x"] = _needle_scores(model, heldout, k * cfg.training_length, cfg.eval_long_trials,
                                                seed + k)[0]
    text_rng = np.random.default_rng(seed + 1)
    nlls = []
    for _ in range(2):
        batch = np.stack([heldout.text_row(text_rng)[0] for _ in range(8)])
        _, nll, _ = weighted_loss(model, torch.as_tensor(batch), torch.ones(batch.shape))
        nlls.append(float(nll.mean()))
    model.train()
    return {**scores, "heldout_nll": float(np.mean(nlls))}


LOG_FIELDS = ("step", "loss", "tokens", "seconds", "lr", "stage", "answer_loss", "needle_exact", "digit_acc",
              "heldout_nll")


def log_fields(cfg: TrainConfig) -> tuple[str, ...]:
    """The CSV log's columns: LOG_FIELDS, then the needle at each of cfg.eval_multiples."""
    return LOG_FIELDS + tuple(f"needle_{k}x" for k in cfg.eval_multiples)


def late_switch_step(cfg: TrainConfig) -> int:
    """The last softmax step of an ssmax-late run (SSMax from the next step on)."""
    return int(round(cfg.steps * (1 - cfg.late_fraction)))


@dataclass(frozen=True)
class TrainState:
    """Where a stopped run resumes: the last finished step, its optimizer state and its log so far."""

    step: int
    tokens: int
    seconds: float
    optimizer: dict
    log: tuple[dict, ...]


def train(model, variant: str, train_rows: RowMaker, heldout_rows: RowMaker, cfg: TrainConfig, log_path: Path,
          progress: bool = True, log_every: int = 10, echo=print, on_eval=None,
          resume: TrainState | None = None) -> list[dict]:
    """Run the curriculum (copy stage, then the mixture); write the CSV log; return the log rows.

    `on_eval(step, model, state)` is called after each held-out check with the TrainState to resume
    from (used to keep intermediate checkpoints). `resume` continues a run from such a state (the
    model must hold that step's weights): batches depend only on (seed, step) and nothing else is
    random, so the continued run equals an uninterrupted one step for step.
    """
    switch_at = late_switch_step(cfg) if variant == "ssmax-late" else None
    opt = _optimizer(model, cfg)
    first, tokens, log = 1, 0, []
    start = time.time()
    if resume is not None:
        opt.load_state_dict(resume.optimizer)  # restore_weights gave a late switcher its s: groups match
        first, tokens, log = resume.step + 1, resume.tokens, [dict(r) for r in resume.log]
        start -= resume.seconds
    model.train()
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=first - 1, desc=f"train {variant}", unit="step")
    with log_path.open("w", newline="") as f:
        fieldnames = log_fields(cfg)
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows({k: row.get(k, "") for k in fieldnames} for row in log)
        for step in range(first, cfg.steps + 1):
            if switch_at is not None and step == switch_at + 1:
                _switch_to_ssmax(model, opt, cfg)
            stage = "copy" if step <= cfg.copy_steps else "mix"
            mix = Mixture(needle=0.0, copy=1.0, text=0.0, copy_kinds=(1.0, 0.0, 0.0)) if stage == "copy" else cfg.mix
            rng = np.random.default_rng([cfg.seed, step])
            if stage == "copy":
                ids_np, w_np = train_rows.batch(rng, cfg.batch_size, mix, copy_k_max=cfg.copy_k_short)
            else:
                frac = min(1.0, (step - cfg.copy_steps) / max(1, cfg.ramp_steps))
                longest = int(cfg.ramp_start + frac * (cfg.training_length - cfg.ramp_start))
                copy_k = int(cfg.copy_k_short + frac * (cfg.seq_len // 2 - cfg.copy_k_short))
                ids_np, w_np = train_rows.batch(rng, cfg.batch_size, mix, copy_k_max=copy_k, needle_max=longest)
            ids, w = torch.as_tensor(ids_np), torch.as_tensor(w_np)
            positions = None
            if cfg.position_span > 1:  # drawn after the batch from the same (seed, step) generator
                positions = torch.as_tensor(random_positions(rng, *ids_np.shape, row_spans(rng, len(ids_np), cfg)))
            lr = cfg.lr * min(1.0, step / max(1, cfg.warmup))
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            loss, nll, weights = weighted_loss(model, ids, w, positions)
            nll = nll.detach()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            tokens += ids.numel()
            if bar is not None:
                bar.update(1)
            is_eval = step % cfg.eval_every == 0 or step == cfg.steps
            if step % log_every == 0 or is_eval or step == 1:
                answer = weights > 1.0
                row = {"step": step, "loss": round(float(nll.mean()), 4), "tokens": tokens,
                       "seconds": round(time.time() - start, 1), "lr": lr, "stage": stage,
                       "answer_loss": round(float(nll[answer].mean()), 4) if answer.any() else ""}
                if is_eval:
                    row.update({k: round(v, 4) for k, v in evaluate(model, heldout_rows, cfg).items()})
                    longer = " ".join(f"{k}x {row[f'needle_{k}x']}" for k in cfg.eval_multiples)
                    echo(f"step {step} loss {row['loss']} answer {row['answer_loss']} needle {row['needle_exact']} "
                         f"({longer}) digits {row['digit_acc']} heldout_nll {row['heldout_nll']} t {row['seconds']}s")
                writer.writerow({k: row.get(k, "") for k in fieldnames})
                f.flush()
                log.append(row)
                if is_eval and on_eval is not None:
                    on_eval(step, model, TrainState(step, tokens, round(time.time() - start, 1), opt.state_dict(),
                                                    tuple(log)))
    if bar is not None:
        bar.close()
    model.eval()
    return log


def save_checkpoint(model, tokenizer, out_dir: Path, recipe: dict) -> None:
    """Write config.json, model.safetensors, tokenizer files and train_recipe.json into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / "train_recipe.json").write_text(json.dumps(recipe, indent=2, default=str) + "\n")


def restore_weights(model, variant: str, cfg: TrainConfig, checkpoint: Path, step: int) -> None:
    """Load a kept checkpoint's weights into a freshly built model of the same recipe (for `train(resume=...)`)."""
    from safetensors.torch import load_file

    from harness.attention import add_ssmax_parameters, apply_attention

    if variant == "ssmax-late" and step > late_switch_step(cfg):
        add_ssmax_parameters(model, cfg.init_s)  # past its switch the model has s (the file holds its values)
        apply_attention(model, "ssmax")
    missing, unexpected = model.load_state_dict(load_file(Path(checkpoint) / "model.safetensors"), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # the head is tied to the embeddings
        raise ValueError(f"checkpoint {checkpoint} does not fit the recipe: missing {missing}, unexpected {unexpected}")
    model.tie_weights()


def save_train_state(state: TrainState, out_dir: Path) -> None:
    """Write OUT_DIR/train_state.pt (tensors and plain values only: loads with torch.load(weights_only=True))."""
    # a shallow dict: dataclasses.asdict would deep-copy every optimizer tensor first
    torch.save({f.name: getattr(state, f.name) for f in fields(state)}, Path(out_dir) / "train_state.pt")


def load_train_state(out_dir: Path) -> TrainState:
    """The TrainState saved in OUT_DIR/train_state.pt (no pickled code is executed)."""
    d = torch.load(Path(out_dir) / "train_state.pt", weights_only=True)
    return TrainState(int(d["step"]), int(d["tokens"]), float(d["seconds"]), d["optimizer"], tuple(d["log"]))


def recipe(variant: str, shape: ModelShape, cfg: TrainConfig, corpus_fingerprint: str, name: str = "base") -> dict:
    """The JSON record of how a checkpoint was trained."""
    return {"recipe": name, "variant": variant, "shape": asdict(shape), "train": {**asdict(cfg), "seq_len": cfg.seq_len},
            "corpus": "builtin:stdlib", "split": "train", "corpus_fingerprint": corpus_fingerprint}


__all__ = ["ModelShape", "TrainConfig", "TrainState", "build_model", "train", "evaluate", "save_checkpoint",
           "save_train_state", "load_train_state", "restore_weights",
           "recipe", "weighted_loss", "random_positions", "row_spans", "log_fields", "model_config", "TokenStream", "replace"]
