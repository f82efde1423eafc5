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
from pathlib import Path

from evals import register_task
from evals.needle import NeedleParams, NeedleTask, answer_settled, greedy_answer, score


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


@register_task("attention_probe")
class AttentionProbeTask(NeedleTask):
    """Needle score per (layer, head) and attention fading vs n, on the needle task's prompts."""

    Params = NeedleParams
    tables = ("needle_score", "attention_fading", "prompts")

    def run_cell(self, params: NeedleParams, loaded, cell: dict, state, seed: int) -> dict[str, list[dict]]:
        """Greedy answer (-> correct) and one probed teacher-forced forward (-> needle scores, fading)."""
        import torch

        from harness.probe import capture

        t0 = time.perf_counter()
        model, tok = loaded.model, loaded.tokenizer
        source = state if state is not None else self.prepare(params, loaded)
        p = self.prompt(params, tok, source, cell["context_length"], cell["depth"], cell["trial"])
        length = len(p.input_ids)
        generated = greedy_answer(model, p.input_ids, len(p.answer_ids) + params.max_new_tokens,
                                  eos_token_id=tok.eos_token_id, stop=answer_settled(tok))
        scored = score(p, tok.decode(generated))

        digits = answer_rows(length, p.answer_digit_span)
        points = fading_points(length)
        rows = sorted(set(digits) | {n - 1 for n in points})
        ids = torch.tensor([list(p.input_ids) + list(p.answer_ids)], dtype=torch.long, device=model.device)
        with torch.inference_mode(), capture(model, rows, spans={"needle": p.needle_span}) as probe:
            model(input_ids=ids, use_cache=False, logits_to_keep=1)  # logits of one position only
        if probe.missing_rows():
            raise RuntimeError(f"probe missed rows {probe.missing_rows()[:5]}")
        slot = {r: i for i, r in enumerate(probe.rows)}
        layers = sorted(probe.stats)
        mass = probe.get("mass:needle")[:, 0].cpu()  # (layers, H, rows)
        needle = mass[:, :, [slot[r] for r in digits]]  # (layers, H, answer digits)
        score_lh, first_lh = needle.mean(-1), needle[..., 0]
        peak = probe.get("max_weight")[:, 0].cpu()
        ent = probe.get("entropy")[:, 0].cpu()

        where = {"context_length": p.context_length, "depth": p.depth, "trial": int(cell["trial"])}
        needle_rows = [
            {**where, "layer": layer, "head": head, "needle_score": float(score_lh[li, head]),
             "first_digit_score": float(first_lh[li, head]), **scored, "answer": p.number,
             "needle_start": p.needle_span[0], "needle_end": p.needle_span[1]}
            for li, layer in enumerate(layers) for head in range(score_lh.shape[1])]
        fading_rows = [
            {**where, "n": n, "layer": layer, "head": head, "max_weight": float(peak[li, head, slot[n - 1]]),
             "entropy": float(ent[li, head, slot[n - 1]])}
            for n in points for li, layer in enumerate(layers) for head in range(peak.shape[1])]
        out = {"needle_score": needle_rows, "attention_fading": fading_rows,
               "telemetry": {"tokens": ids.shape[1], "probe_seconds": time.perf_counter() - t0}}
        if params.save_prompts:
            out["prompts"] = [{**where, "city": p.city, "number": p.number, "input_ids": list(p.input_ids),
                               "needle_span": list(p.needle_span), "answer_ids": list(p.answer_ids)}]
        return out

    def summarize(self, tables: dict, params: NeedleParams) -> dict:
        """head_ranking: mean needle score per (model, attention, theta, layer, head), best first."""
        from harness.plots import head_ranking

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
