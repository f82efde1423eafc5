"""Shared decoding: prefill with a KV cache, greedy continuation, teacher-forced answer NLL, cache rewind.

Every prefill starts a `DynamicCache()` built without the model config, so every layer keeps all its
keys, sliding-window layers included (transformers' default sliding layers drop keys past the
window and cannot rewind). The masks still come from the model config, so a sliding layer attends
only inside its window: results equal a plain full forward. The cost is memory: a sliding layer
caches the whole prompt, as a full-attention layer does. `score_prompt(..., prefix=PrefixCache)`
reuses the previous prompt's cache for a shared prefix (harness.inference.prefix_cache).
"""

from __future__ import annotations

import inspect
import re
from functools import lru_cache
from typing import Callable, Sequence

import torch
import torch.nn.functional as F


@lru_cache(maxsize=None)
def cache_kwarg(forward) -> str:
    """The forward's name for the KV cache: `cache` (transformers >= 5.2x) or the older `past_key_values`."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def new_cache():
    """An empty KV cache that keeps every key of every layer (rewindable on sliding layers too)."""
    from transformers import DynamicCache

    return DynamicCache()


def forward(model, token_ids: Sequence[int], cache, *, logits_to_keep: int = 0):
    """Feed tokens after `cache` (filled in place); (logits [len or logits_to_keep, V] float32, cache)."""
    x = torch.tensor([list(token_ids)], dtype=torch.long, device=model.device)
    kwargs = {cache_kwarg(type(model).forward): cache}
    out = model(input_ids=x, use_cache=True, logits_to_keep=logits_to_keep, **kwargs)
    return out.logits[0].float(), _cache_of(out)


def prefill(model, ids: Sequence[int], rewind: int | None = None):
    """One forward over the prompt with a fresh cache: (logits of the last position [V], cache).

    With `rewind` (the most tokens the caller will drop again), sliding-window layers keep only window - 1 + rewind
    keys (harness.inference.window_cache); without it every key is kept, so the cache can be cropped anywhere (what a
    shared prefix needs).
    """
    from harness.inference.window_cache import bounded_cache

    config = getattr(model, "config", None)  # stand-in models in tests have none
    cache = (bounded_cache(config, rewind) if rewind is not None and config is not None else None) or new_cache()
    logits, cache = forward(model, ids, cache, logits_to_keep=1)
    return logits[-1], cache


def greedy(model, last_logits, cache, n_new: int, eos_token_id=None, stop=None) -> list[int]:
    """Greedy tokens after a prefill (`last_logits` predicts the first); at most n_new, stopping at EOS or stop(tokens)."""
    out: list[int] = []
    logits = last_logits
    while len(out) < n_new:
        token = int(logits.argmax())
        out.append(token)
        if token == eos_token_id or len(out) == n_new or (stop is not None and stop(out)):
            break
        step_logits, cache = forward(model, [token], cache)
        logits = step_logits[-1]
    return out


def teacher_forced_nll(model, last_logits, cache, answer_ids: Sequence[int]) -> float:
    """Mean NLL (nats) of `answer_ids` after a prefill; feeds all but the last answer token into `cache`."""
    logits = last_logits[None]  # [1, V]: predicts answer_ids[0]
    if len(answer_ids) > 1:
        fed, cache = forward(model, answer_ids[:-1], cache)  # [A-1, V]: predict answer_ids[1:]
        logits = torch.cat([logits, fed], dim=0)
    target = torch.tensor(list(answer_ids), dtype=torch.long, device=logits.device)
    return float(F.cross_entropy(logits, target))


def rewind(cache, n_tokens: int, prompt_length: int) -> bool:
    """Drop the last n_tokens from a KV cache in place; False if this cache cannot."""
    try:
        cache.crop(-n_tokens)  # negative: remove that many tokens
        return cache.get_seq_length() == prompt_length
    except (AttributeError, NotImplementedError, ValueError, TypeError, RuntimeError):
        return False


def crop_to(cache, length: int) -> bool:
    """Keep the first `length` tokens of a KV cache in place; False if this cache cannot (or holds fewer)."""
    try:
        held = cache.get_seq_length()
    except (AttributeError, NotImplementedError, TypeError, RuntimeError):
        return False
    if held < length:
        return False
    return held == length or rewind(cache, held - length, length)


def greedy_answer(model, ids: Sequence[int], n_new: int, *, eos_token_id: int | None = None,
                  stop: Callable[[list[int]], bool] | None = None) -> list[int]:
    """Greedy continuation of `ids` (at most `n_new` tokens) with the KV cache, no `generate`."""
    with torch.inference_mode():
        last, cache = prefill(model, ids, rewind=0)
        return greedy(model, last, cache, n_new, eos_token_id, stop)


def answer_nll(model, ids: Sequence[int], answer_ids: Sequence[int]) -> float:
    """Teacher-forced mean NLL (nats) of `answer_ids` following the prompt `ids`."""
    with torch.inference_mode():
        last, cache = prefill(model, ids, rewind=0)
        return teacher_forced_nll(model, last, cache, answer_ids)


def score_prompt(model, ids: Sequence[int], answer_ids: Sequence[int], n_new: int, *,
                 eos_token_id: int | None = None, stop=None, prefix=None, group=None) -> tuple[list[int], float]:
    """(greedy tokens, answer NLL) from one prefill: the answer is fed, the cache rewound, then decoded.

    With `prefix` (a harness.inference.prefix_cache.PrefixCache) the prefill reuses the previous prompt's cache of
    the same `group` for the tokens both prompts share, and the cache is kept for the next prompt.
    """
    with torch.inference_mode():
        budget = max(0, len(answer_ids) - 1)  # without a shared prefix, window layers keep only what this rewind needs
        last, cache = prefill(model, ids, budget) if prefix is None else prefix.prefill(model, ids, group)
        nll = teacher_forced_nll(model, last, cache, answer_ids)
        if len(answer_ids) > 1 and not rewind(cache, len(answer_ids) - 1, len(ids)):
            if prefix is not None:
                prefix.fail(f"{type(cache).__name__} cannot rewind the answer")
            last, cache = prefill(model, ids, rewind=0)  # a cache that cannot be cropped: prefill again
        generated = greedy(model, last, cache, n_new, eos_token_id, stop)
        if prefix is not None:
            prefix.keep(group, ids, cache)
        return generated, nll


_LEADING_DIGITS = re.compile(r"\s*(\d*)")


def parse_digits(text: str) -> str:
    """The digits the answer starts with (after optional whitespace); '' if it starts otherwise."""
    return _LEADING_DIGITS.match(text).group(1)


def digits_settled(tokenizer) -> Callable[[list[int]], bool]:
    """Stop rule for greedy decoding: the text has left its leading digits, so the parse cannot change."""
    def stop(tokens: list[int]) -> bool:
        text = tokenizer.decode(tokens)
        return len(parse_digits(text)) < len(text.lstrip())
    return stop


__all__ = ["new_cache", "forward", "prefill", "greedy", "teacher_forced_nll", "rewind", "crop_to", "greedy_answer",
           "answer_nll", "score_prompt", "parse_digits", "digits_settled"]
