"""Exact per-position next-token NLL of one long sequence, in bounded memory.

One full-context forward (the loss at position p conditions on all p earlier tokens); the LM head
and cross-entropy run in chunks along the sequence so the (L x vocab) logits never exist at once.
With `prefill_chunk`, the decoder body itself runs in chunks through a KV cache, so per-layer
activations are bounded too (each chunk's queries see every cached key).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.errors import UserError

HEAD_CHUNK = 256
"""Positions per LM-head + cross-entropy chunk. Small on purpose: a [256 x 32k] fp32 block (32 MiB) keeps
cross-entropy's passes near the cache (head + CE over 16k positions on 2 CPU threads: 3.5 s at 256 rows,
4.3 s at 1024 rows or in one full-logits pass), and the matmul still has enough rows to run at full speed."""


def per_position_nll(
    model, input_ids, *, chunk: int = HEAD_CHUNK, prefill_chunk: int | None = None
) -> torch.Tensor:
    """NLL (fp32, returned on CPU after one copy) of every next token of one sequence: [L-1], entry i is -log p(x[i+1] | x[:i+1])."""
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 2:
        if ids.shape[0] != 1:
            raise UserError(f"per_position_nll takes one sequence, got a batch of {ids.shape[0]}")
        ids = ids[0]
    if ids.dim() != 1 or ids.numel() < 2:
        raise UserError(f"per_position_nll needs a 1-D sequence of >= 2 tokens, got shape {tuple(ids.shape)}")
    if chunk < 1:
        raise UserError(f"chunk must be >= 1, got {chunk}")
    if prefill_chunk is not None and prefill_chunk < 0:
        raise UserError(f"prefill_chunk must be >= 0 (0 or None = one pass), got {prefill_chunk}")

    body = model.get_decoder()
    head = model.get_output_embeddings()
    softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    device = body.get_input_embeddings().weight.device  # inputs go where the embeddings are
    ids = ids.to(device=device, dtype=torch.long)[None]  # [1, L]
    length = ids.shape[1]
    parts: list[torch.Tensor] = []  # fp32 NLL chunks on the head's device; one host copy at the end

    def score(hidden: torch.Tensor, start: int) -> None:
        # hidden: [1, T, d] for positions start .. start+T-1; position p predicts token p+1
        stop = min(start + hidden.shape[1], length - 1)
        for s in range(start, stop, chunk):
            e = min(s + chunk, stop)
            logits = head(hidden[0, s - start : e - start])  # [c, V] in the model's dtype
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            # under --device-map the head may sit on another device than the embeddings: targets follow the logits
            target = ids[0, s + 1 : e + 1].to(logits.device, non_blocking=True)
            parts.append(F.cross_entropy(logits.float(), target, reduction="none"))

    with torch.inference_mode():
        if not prefill_chunk or prefill_chunk >= length:
            hidden = body(input_ids=ids, use_cache=False).last_hidden_state
            score(hidden, 0)
        else:
            from transformers import DynamicCache

            from harness.inference.decode import cache_kwarg

            cache = DynamicCache(config=model.config)  # sliding layers keep only their window: exact, and small
            name = cache_kwarg(type(body).forward)
            for s in range(0, length, prefill_chunk):
                e = min(s + prefill_chunk, length)
                positions = torch.arange(s, e, device=device)[None]
                hidden = body(
                    input_ids=ids[:, s:e], position_ids=positions, use_cache=True, **{name: cache}
                ).last_hidden_state
                score(hidden, s)
                del hidden
    return torch.cat(parts).cpu()
