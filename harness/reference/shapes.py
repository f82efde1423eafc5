"""The size of a reference model and everything that decides its training run (frozen specs; no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.reference.data import Mixture

POSITIONS = ("rope", "nope")
SPAN_DRAWS = ("fixed", "loguniform")


@dataclass(frozen=True)
class ModelShape:
    """Llama-style decoder size."""

    layers: int = 4
    """decoder layers"""
    d_model: int = 128
    """hidden size"""
    heads: int = 4
    """attention heads (no grouped KV)"""
    ffn: int = 384
    """SwiGLU inner size"""
    rope_theta: float = 10_000.0
    """RoPE base during training (unused with positions="nope")"""
    positions: str = "rope"
    """positional encoding: rope (LlamaForCausalLM) or nope (SmolLM3ForCausalLM, every layer without RoPE)"""

    def __post_init__(self):
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; identical for the two models of the pair."""

    steps: int = 6000
    """optimizer steps"""
    batch_size: int = 16
    """rows per step"""
    training_length: int = 256
    """longest prompt (haystack + needle + question) and the length recorded in config.json"""
    answer_room: int = 10
    """extra positions after a prompt for the answer (space, 7 digits, '.', EOS): rows are training_length + this"""
    lr: float = 2e-3
    """peak learning rate (constant after warm-up, as in the paper)"""
    warmup: int = 100
    """linear warm-up steps"""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices (not on norms or s)"""
    clip: float = 1.0
    """gradient-norm clip"""
    seed: int = 0
    """model init and data order"""
    copy_steps: int = 600
    """stage 1: pure copy of short random-token sequences (forms induction heads)"""
    copy_k_short: int = 40
    """stage 1 copies are at most this long (long copies delay induction heads past the budget)"""
    ramp_steps: int = 500
    """stage 2: the longest needle prompt (and copy) grows from ramp_start (copy_k_short) to full over these steps"""
    ramp_start: int = 96
    """stage 2: the longest needle prompt at its start"""
    mix: Mixture = field(default_factory=lambda: Mixture(needle=0.5, copy=0.3, text=0.2))
    """stage 2 shares of needle / copy / plain-text rows"""
    answer_weight: float = 8.0
    """loss weight of the answer tokens (space and digits) relative to other tokens"""
    distractor_p: float = 0.1
    """probability of a distractor needle (another city) in a needle row"""
    init_s: float = 0.25
    """initial SSMax s (learned per layer and head): scale s*ln(n) is 1 at n = e^4 = 55, 1.1 at the copy
    stage's longest rows (81), 1.39 at 256. 1/ln(256) = 0.18 (== softmax at n = 256) is softer than
    softmax over the whole short-copy stage, where the induction circuit must form."""
    ssmax_lr_scale: float = 0.05
    """lr multiplier of s (and b): Adam moves every parameter by ~lr per step, which is large for s ~ 0.2;
    at the full lr, s in layers 2-3 grew to 0.7-0.9 within 300 steps (attention saturated) and the
    SSMax model never learned retrieval"""
    late_fraction: float = 0.2
    """ssmax-late: the final share of steps trained with SSMax"""
    eval_every: int = 150
    """steps between held-out checks (needle at the training length, text NLL)"""
    eval_trials: int = 64
    """held-out needle trials per check"""
    eval_multiples: tuple[int, ...] = (2, 4)
    """the held-out check also scores the needle at these multiples of the training length (consecutive
    positions, as the harness evaluates): a run's extrapolation shows while it trains"""
    eval_long_trials: int = 16
    """held-out needle trials per check at each of eval_multiples"""
    position_span: int = 1
    """1: a row's positions are 0..T-1. k > 1: each training row gets sorted random position ids drawn without
    replacement from [0, k x training_length) (randomised positions): RoPE sees every position up to k x the
    training length while a row still holds T tokens, so n, the number of keys, stays <= T in training"""
    position_span_draw: str = "fixed"
    """fixed: every row's span is position_span x training_length. loguniform: each row draws its own factor f
    log-uniformly from [1, position_span] and its span is max(T, f x training_length), so neighbouring tokens sit
    about f apart: contiguous rows (f near 1, spacing 1 as in every test prompt) are as frequent as rows spread
    over 8-16x (RoPE's long offsets); every factor-of-2 band of spacing gets the same share of rows"""

    def __post_init__(self):
        if self.position_span_draw not in SPAN_DRAWS:
            raise ValueError(f"position_span_draw must be one of {SPAN_DRAWS}, got {self.position_span_draw!r}")

    @property
    def seq_len(self) -> int:
        """Row length in tokens."""
        return self.training_length + self.answer_room
