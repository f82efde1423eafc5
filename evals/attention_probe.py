"""Task `attention_probe`: needle score per (layer, head) and attention fading vs n (the paper's Figures 7-8).

The prompts are the needle task's prompts for the same parameters (same builder, same seeds), so
probes explain heatmaps; `-T prompts=<retrieval preset>` probes that preset's prompts instead (the
needle is then the asked needle's value tokens), `-T prompts=<vt|cwe|fwe|qa_1|qa_2>` a RULER task's (the
needle is the evidence span holding the first reference; one cell per length and trial at depth 0.5).
Per cell: one prefill of the prompt and the teacher-forced gold answer under `harness.attention.probe.capture`,
which records only the query rows needed (memory grows with n, not n^2), then greedy decoding from the same cache (-> `correct`):
- needle_score(layer, head): attention mass that the rows predicting an answer digit put on the
  needle's number tokens, averaged over those rows;
- attention_fading: for the query row at n keys (row n - 1), n = 1, 2, 4, ... and the prompt length,
  the largest weight and the entropy per (layer, head).
With prefix_cache the prompts of one trial share the haystack's prefill (harness.inference.prefix_cache):
fading rows inside the shared prefix see the same tokens, so their statistics are kept from the
previous prompt with the cache; the rows after it are captured again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from harness.columns import CONTEXT_LENGTH, DEPTH, TRIAL
from evals._probe_targets import ProbeTarget, prompt_source, target
from evals.needle import NeedleParams, NeedleTask
from harness.inference.prefix_cache import PrefixCache
from harness.task import register_task

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ProbeParams(NeedleParams):
    """Parameters of attention_probe: the needle task's, and whose prompts to probe."""

    prompts: str = "needle"
    """needle (the needle task's prompts), a retrieval preset (e.g. niah_multikey_1: its prompts, attention on the asked value's tokens; max_new_tokens at least the preset's) or a RULER task (vt, cwe, fwe, qa_1, qa_2: attention on the evidence that holds the first answer; no depth, cells at depth 0.5)."""
    data: str = ""
    """qa_1 / qa_2 prompts: their local question file (JSON, JSONL or parquet)."""
    icl: bool = True
    """vt / cwe prompts: with RULER's solved example first (false: without)."""


RULER_DEPTH = 0.5
"""the nominal depth coordinate of a RULER prompt's probe cell (its evidence sits where the task puts it)"""


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

    from harness.attention.probe import CHUNK_ELEMENTS, capture

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


def probe_and_decode(model, t: ProbeTarget, n_new: int, *, eos_token_id=None, stop=None, prefix: PrefixCache,
                     group=None, chunk_elements: int | None = None) -> tuple[PromptProbe, list[int]]:
    """(probe statistics, greedy tokens) from one prefill of prompt + answer under capture, reusing `prefix`.

    The prompt after the shared prefix and the answer tokens the rows need are fed under the probe; fading
    rows inside the prefix come from `prefix.memo` (they see the same tokens); the cache is then rewound to
    the prompt for greedy decoding and kept for the next prompt of the group.
    """
    import torch

    from harness.inference.decode import forward, greedy, prefill, rewind
    from harness.attention.probe import CHUNK_ELEMENTS, capture

    ids, length = list(t.input_ids), len(t.input_ids)
    digits, points = answer_rows(length, t.answer_digit_span), fading_points(length)
    fading = [n - 1 for n in points]
    with torch.inference_mode():
        cache, start = prefix.start(group, ids, needed=fading)
        rows = sorted(set(digits) | {r for r in fading if r >= start})
        fed = max(rows) - length + 1  # answer tokens to feed so that every row is computed
        with capture(model, rows, spans={"needle": tuple(t.needle_span)},
                     chunk_elements=chunk_elements or CHUNK_ELEMENTS) as probe:
            logits, cache = forward(model, ids[start:], cache, logits_to_keep=1)
            if fed > 0:
                forward(model, list(t.answer_ids[:fed]), cache)
        if probe.missing_rows():
            raise RuntimeError(f"the probe missed rows {probe.missing_rows()[:5]}")
        last = logits[-1]
        if fed > 0 and not rewind(cache, fed, length):
            prefix.fail(f"{type(cache).__name__} cannot rewind the answer")
            last, cache = prefill(model, ids)
        generated = greedy(model, last, cache, n_new, eos_token_id, stop)
        prefix.keep(group, ids, cache)
    slot = {r: i for i, r in enumerate(probe.rows)}
    weight, entropy = probe.get("max_weight")[:, 0].cpu(), probe.get("entropy")[:, 0].cpu()  # (layers, H, rows)
    for r in fading:
        if r in slot:
            prefix.memo[r] = (weight[:, :, slot[r]], entropy[:, :, slot[r]])
    needle = probe.get("mass:needle")[:, 0].cpu()[:, :, [slot[r] for r in digits]]  # (layers, H, answer digits)
    return PromptProbe(needle_score=needle.mean(-1), first_digit_score=needle[..., 0], points=tuple(points),
                       max_weight=torch.stack([prefix.memo[r][0] for r in fading], -1),
                       entropy=torch.stack([prefix.memo[r][1] for r in fading], -1)), generated


def probe_rows(stats: PromptProbe, where: dict, scored: dict, t: ProbeTarget) -> dict[str, list[dict]]:
    """The needle_score and attention_fading rows of one prompt."""
    layers, heads = stats.needle_score.shape
    needle_rows = [
        {**where, "layer": layer, "head": head, "needle_score": float(stats.needle_score[layer, head]),
         "first_digit_score": float(stats.first_digit_score[layer, head]), **scored, "answer": t.answer,
         "needle_start": t.needle_span[0], "needle_end": t.needle_span[1]}
        for layer in range(layers) for head in range(heads)]
    fading_rows = [
        {**where, "n": n, "layer": layer, "head": head, "max_weight": float(stats.max_weight[layer, head, i]),
         "entropy": float(stats.entropy[layer, head, i])}
        for i, n in enumerate(stats.points) for layer in range(layers) for head in range(heads)]
    return {"needle_score": needle_rows, "attention_fading": fading_rows}


@dataclass(frozen=True)
class ProbeState:
    """What a model's cells share: the prompt task, its params and state, and the shared-prefix cache."""

    task: object
    """the task whose prompts are probed (needle or a retrieval preset)"""
    params: object
    """that task's parameters"""
    state: object
    """that task's per-model state (haystack source, frame)"""
    prefix: PrefixCache
    """the model's shared-prefix KV cache and the fading rows it still holds (memo)"""


@register_task("attention_probe")
class AttentionProbeTask(NeedleTask):
    """Needle score per (layer, head) and attention fading vs n, on the needle task's (or a preset's) prompts."""

    Params = ProbeParams
    tables = ("needle_score", "attention_fading", "prompts")
    tensor_parallel = False  # its tables are per head, and --device-map tp leaves each process some of them
    added_params = {**NeedleTask.added_params, "prompts": "needle", "data": "", "icl": True}

    def cells(self, params: ProbeParams) -> list[dict]:
        """The needle grid; a RULER task's prompts have no depth: one cell per (length, trial) at depth 0.5."""
        from evals.ruler import TASKS

        if params.prompts not in TASKS:
            return super().cells(params)
        return [{CONTEXT_LENGTH: int(length), DEPTH: RULER_DEPTH, TRIAL: trial}
                for length in sorted(set(params.lengths)) for trial in range(params.trials)]

    def validate(self, params: ProbeParams) -> None:
        """The needle task's checks; with a retrieval preset's prompts also that preset's."""
        super().validate(params)
        task, source_params = prompt_source(params.prompts, params)
        if task.name != "needle":
            task.validate(source_params)

    def data_fingerprint(self, params: ProbeParams) -> str:
        """The fingerprint of the prompt task's data (its corpus, or its filler text)."""
        task, source_params = prompt_source(params.prompts, params)
        return NeedleTask.data_fingerprint(self, params) if task.name == "needle" else task.data_fingerprint(source_params)

    def prepare(self, params: ProbeParams, loaded) -> ProbeState:
        """The prompt task's state for this tokenizer (it checks the extreme lengths) and a prefix cache."""
        task, source_params = prompt_source(params.prompts, params)
        return ProbeState(task, source_params, task.prepare(source_params, loaded), PrefixCache(params.prefix_cache))

    def run_cell(self, params: ProbeParams, loaded, cell: dict, state, seed: int) -> dict[str, list[dict]]:
        """One probed prefill of prompt + answer (-> needle scores, fading) and greedy decoding (-> correct)."""
        t0 = time.perf_counter()
        model, tok = loaded.model, loaded.tokenizer
        state = state if state is not None else self.prepare(params, loaded)
        t = target(state.task, state.params, tok, state.state, cell[CONTEXT_LENGTH], cell[DEPTH], cell[TRIAL])
        stats, generated = probe_and_decode(model, t, len(t.answer_ids) + state.params.max_new_tokens,
                                            eos_token_id=tok.eos_token_id, stop=t.stop(tok), prefix=state.prefix,
                                            group=self.group(params, cell))
        scored = t.score(generated, tok.decode(generated))
        where = {CONTEXT_LENGTH: t.context_length, DEPTH: t.depth, TRIAL: int(cell[TRIAL])}
        out = {**probe_rows(stats, where, scored, t), "telemetry": {
            "tokens": len(t.input_ids) + len(t.answer_ids), "probe_seconds": time.perf_counter() - t0,
            **state.prefix.last}}
        if params.save_prompts:
            out["prompts"] = [t.record(int(cell[TRIAL]))]
        return out

    def summarize(self, tables: dict, params: NeedleParams) -> dict:
        """head_ranking: mean needle score per (model, attention, theta, layer, head), best first."""
        from harness.results.tables import head_ranking

        df = tables.get("needle_score")
        if df is None or df.empty:
            return {}
        return {"head_ranking": head_ranking(df)}

    def figures(self, tables: dict, manifest: dict, out_dir: Path) -> list[Path]:
        """needle_score_top_heads.png, needle_score_best_head.png, attention_fading.png."""
        from functools import partial

        from harness.plots import attention_fading_figure, best_head_figure, top_heads_figure, training_lengths

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        drawn = []
        scores, fading = tables.get("needle_score"), tables.get("attention_fading")
        jobs = []
        if scores is not None and not scores.empty:
            jobs += [("needle_score_top_heads.png", top_heads_figure, scores),
                     ("needle_score_best_head.png", best_head_figure, scores)]
        if fading is not None and not fading.empty:
            lengths = training_lengths(manifest) or None
            jobs.append(("attention_fading.png", partial(attention_fading_figure, train_lengths=lengths), fading))
        for name, draw, df in jobs:
            path = out_dir / name
            draw(df).savefig(path, dpi=120, bbox_inches="tight")
            drawn.append(path)
        return drawn
