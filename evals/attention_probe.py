"""Task `attention_probe`: needle score per (layer, head) and attention fading vs n (the paper's Figures 7-8).

The prompts are the needle task's prompts for the same parameters (same builder, same seeds), so
probes explain heatmaps. Per cell: one teacher-forced forward over prompt + gold answer under
`harness.probe.capture`, which records only the query rows needed (memory grows with n, not n^2):
- needle_score(layer, head): attention mass that the rows predicting an answer digit put on the
  needle's number tokens, averaged over those rows;
- attention_fading: for the query row at n keys (row n - 1), n = 1, 2, 4, ... and the prompt length,
  the largest weight and the entropy per (layer, head).
`correct` comes from the needle task's greedy decoding of the same prompt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from evals.needle import NeedleParams, NeedleTask, prompt_record, score
from harness.decode import digits_settled, greedy_answer
from harness.task import register_task

if TYPE_CHECKING:
    import torch


def fading_points(length: int) -> list[int]:
    """Key counts n probed for fading: powers of two up to `length`, and `length` itself."""
    points, n = [], 1
    while n < length:
        points.append(n)
        n *= 2
    return points + [int(length)]


def answer_rows(prompt_length: int, answer_digit_span: tuple[int, int]) -> list[int]:
    """Query positions whose next token is an answer digit, in prompt + answer (row i predicts token i + 1)."""
    start, end = answer_digit_span
    return [prompt_length + k - 1 for k in range(start, end)]


@dataclass(frozen=True)
class PromptProbe:
    """Probe statistics of one prompt; layer axes follow the model's attention layers in order."""

    needle_score: "torch.Tensor"
    """[layers, heads]: needle mass averaged over the rows predicting an answer digit."""
    first_digit_score: "torch.Tensor"
    """[layers, heads]: needle mass of the row predicting the first answer digit."""
    points: tuple[int, ...]
    """Key counts n of the fading rows (row n - 1)."""
    max_weight: "torch.Tensor"
    """[layers, heads, len(points)]: largest weight of the row at n keys."""
    entropy: "torch.Tensor"
    """[layers, heads, len(points)]: entropy (nats) of the row at n keys."""


def probe_prompt(model, input_ids: Sequence[int], answer_ids: Sequence[int], needle_span: tuple[int, int],
                 answer_digit_span: tuple[int, int], *, chunk_elements: int | None = None) -> PromptProbe:
    """One teacher-forced forward over prompt + answer, capturing the answer-digit rows and the fading rows."""
    import torch

    from harness.probe import CHUNK_ELEMENTS, capture

    length = len(input_ids)
    digits = answer_rows(length, answer_digit_span)
    points = fading_points(length)
    rows = sorted(set(digits) | {n - 1 for n in points})
    ids = torch.tensor([list(input_ids) + list(answer_ids)], dtype=torch.long, device=model.device)
    with torch.inference_mode(), capture(model, rows, spans={"needle": tuple(needle_span)},
                                         chunk_elements=chunk_elements or CHUNK_ELEMENTS) as probe:
        model(input_ids=ids, use_cache=False, logits_to_keep=1)  # logits of one position only
    if probe.missing_rows():
        raise RuntimeError(f"the probe missed rows {probe.missing_rows()[:5]}")
    slot = {r: i for i, r in enumerate(probe.rows)}
    mass = probe.get("mass:needle")[:, 0].cpu()  # (layers, H, rows)
    needle = mass[:, :, [slot[r] for r in digits]]  # (layers, H, answer digits)
    fading = [slot[n - 1] for n in points]
    return PromptProbe(needle_score=needle.mean(-1), first_digit_score=needle[..., 0], points=tuple(points),
                       max_weight=probe.get("max_weight")[:, 0, :, fading].cpu(),
                       entropy=probe.get("entropy")[:, 0, :, fading].cpu())


@register_task("attention_probe")
class AttentionProbeTask(NeedleTask):
    """Needle score per (layer, head) and attention fading vs n, on the needle task's prompts."""

    Params = NeedleParams
    tables = ("needle_score", "attention_fading", "prompts")

    def run_cell(self, params: NeedleParams, loaded, cell: dict, state, seed: int) -> dict[str, list[dict]]:
        """Greedy answer (-> correct) and one probed teacher-forced forward (-> needle scores, fading)."""
        t0 = time.perf_counter()
        model, tok = loaded.model, loaded.tokenizer
        state = state if state is not None else self.prepare(params, loaded)
        p = self.prompt(params, tok, state, cell["context_length"], cell["depth"], cell["trial"])
        length = len(p.input_ids)
        generated = greedy_answer(model, p.input_ids, len(p.answer_ids) + params.max_new_tokens,
                                  eos_token_id=tok.eos_token_id, stop=digits_settled(tok))
        scored = score(p, tok.decode(generated))

        stats = probe_prompt(model, p.input_ids, p.answer_ids, p.needle_span, p.answer_digit_span)
        layers, heads = stats.needle_score.shape

        where = {"context_length": p.context_length, "depth": p.depth, "trial": int(cell["trial"])}
        needle_rows = [
            {**where, "layer": layer, "head": head, "needle_score": float(stats.needle_score[layer, head]),
             "first_digit_score": float(stats.first_digit_score[layer, head]), **scored, "answer": p.number,
             "needle_start": p.needle_span[0], "needle_end": p.needle_span[1]}
            for layer in range(layers) for head in range(heads)]
        fading_rows = [
            {**where, "n": n, "layer": layer, "head": head, "max_weight": float(stats.max_weight[layer, head, i]),
             "entropy": float(stats.entropy[layer, head, i])}
            for i, n in enumerate(stats.points) for layer in range(layers) for head in range(heads)]
        out = {"needle_score": needle_rows, "attention_fading": fading_rows,
               "telemetry": {"tokens": length + len(p.answer_ids), "probe_seconds": time.perf_counter() - t0}}
        if params.save_prompts:
            out["prompts"] = [prompt_record(p, int(cell["trial"]))]
        return out

    def summarize(self, tables: dict, params: NeedleParams) -> dict:
        """head_ranking: mean needle score per (model, attention, theta, layer, head), best first."""
        from harness.tables import head_ranking

        df = tables.get("needle_score")
        if df is None or df.empty:
            return {}
        return {"head_ranking": head_ranking(df)}

    def figures(self, tables: dict, manifest: dict, out_dir: Path) -> list[Path]:
        """needle_score_top_heads.png, needle_score_best_head.png, attention_fading.png."""
        from harness.plots import attention_fading_figure, best_head_figure, top_heads_figure

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        drawn = []
        scores, fading = tables.get("needle_score"), tables.get("attention_fading")
        jobs = []
        if scores is not None and not scores.empty:
            jobs += [("needle_score_top_heads.png", top_heads_figure, scores),
                     ("needle_score_best_head.png", best_head_figure, scores)]
        if fading is not None and not fading.empty:
            jobs.append(("attention_fading.png", attention_fading_figure, fading))
        for name, draw, df in jobs:
            path = out_dir / name
            draw(df).savefig(path, dpi=120, bbox_inches="tight")
            drawn.append(path)
        return drawn
