"""Interval estimates and paired tests for the result tables (numpy + scipy.stats only; no torch, no pandas).

Prompts of one needle trial share a haystack, so they are not independent draws: intervals over a length count
trials as clusters (a design effect shrinks n to the information the prompts really hold), and resampling is over
trials, never over prompts.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
"""Level of every interval unless stated (effective length: 90%)."""


def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion (scipy.stats.binomtest); (nan, nan) for n = 0."""
    return _wilson(int(successes), int(n), float(confidence))


@functools.lru_cache(maxsize=65536)
def _wilson(successes: int, n: int, confidence: float) -> tuple[float, float]:
    if n <= 0:
        return math.nan, math.nan
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def wilson_effective(p: float, n_eff: float, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval at proportion p on a real-valued effective sample size (Kish); equals `wilson` at
    integer n (scipy's binomtest takes integer counts only)."""
    z2 = stats.norm.ppf(0.5 + confidence / 2) ** 2
    centre = (p + z2 / (2 * n_eff)) / (1 + z2 / n_eff)
    half = math.sqrt(z2) / (1 + z2 / n_eff) * math.sqrt(p * (1 - p) / n_eff + z2 / (4 * n_eff ** 2))
    return max(0.0, centre - half), min(1.0, centre + half)


def design_effect(values, clusters, confidence: float = CONFIDENCE, small_sample: bool = True) -> float:
    """Variance of the mean of `values` over clusters (cluster-robust, CR1) / its variance for independent values,
    times (t_{k-1} / z)^2 for k clusters with small_sample (the reference of a variance estimated from k clusters;
    off when projecting to many trials), at least 1.

    1 when there are fewer than two clusters or no spread (nothing to estimate it from).
    """
    values, clusters = np.asarray(values, float), np.asarray(clusters)
    n = len(values)
    labels, index = np.unique(clusters, return_inverse=True)
    k = len(labels)
    if k < 2 or n < 2:
        return 1.0
    resid = values - values.mean()
    iid = float(np.sum(resid ** 2)) / n ** 2
    if iid <= 0:
        return 1.0
    per_cluster = np.bincount(index, weights=resid, minlength=k)
    clustered = k / (k - 1) * float(np.sum(per_cluster ** 2)) / n ** 2
    small = (stats.t.ppf(0.5 + confidence / 2, k - 1) / stats.norm.ppf(0.5 + confidence / 2)) ** 2 if small_sample else 1.0
    return max(1.0, clustered / iid * small)


def proportion_interval(correct, clusters=None, confidence: float = CONFIDENCE) -> dict:
    """Share of true values with a Wilson interval on the effective n (n / design effect over `clusters`).

    Returns {accuracy, acc_low, acc_high, n, n_eff}.
    """
    correct = np.asarray(correct, float)
    n = len(correct)
    if n == 0:
        return {"accuracy": math.nan, "acc_low": math.nan, "acc_high": math.nan, "n": 0, "n_eff": 0.0}
    p = float(correct.mean())
    deff = 1.0 if clusters is None else design_effect(correct, clusters, confidence)
    low, high = wilson(int(correct.sum()), n, confidence) if deff == 1.0 else wilson_effective(p, n / deff, confidence)
    return {"accuracy": p, "acc_low": low, "acc_high": high, "n": n, "n_eff": n / deff}


def mean_interval(values, clusters=None, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high): t interval over cluster means (each cluster one value); nan bounds with < 2 clusters."""
    values = np.asarray(values, float)
    ok = ~np.isnan(values)
    values = values[ok]
    if not len(values):
        return math.nan, math.nan, math.nan
    if clusters is not None:
        clusters = np.asarray(clusters)[ok]
        labels, index = np.unique(clusters, return_inverse=True)
        units = np.bincount(index, weights=values) / np.bincount(index)
    else:
        units = values
    mean = float(values.mean())
    if len(units) < 2 or np.all(units == units[0]):
        return (mean, mean, mean) if len(units) >= 2 else (mean, math.nan, math.nan)
    ci = stats.ttest_1samp(units, 0.0).confidence_interval(confidence)
    shift = mean - float(units.mean())  # unequal cluster sizes: centre on the prompt mean
    return mean, float(ci.low) + shift, float(ci.high) + shift


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: the discordant pairs b (only A right) vs c (only B right) ~ Bin(b + c, 1/2)."""
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(int(b), int(b + c), 0.5).pvalue)


def paired_difference(a, b, clusters=None, confidence: float = CONFIDENCE) -> dict:
    """Accuracy of B minus A on the same prompts: Agresti-Min interval (variance times the design effect over
    `clusters`), exact McNemar p. Returns {diff, diff_low, diff_high, only_a, only_b, n, p_value}."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    n = len(a)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    out = {"diff": math.nan, "diff_low": math.nan, "diff_high": math.nan, "only_a": only_a, "only_b": only_b,
           "n": n, "p_value": mcnemar_exact(only_a, only_b)}
    if n == 0:
        return out
    # Agresti & Min (2005): add 1/2 to every cell of the 2x2 table, then the Wald interval
    n2, ba, bb = n + 2.0, only_a + 0.5, only_b + 0.5
    centre = (bb - ba) / n2
    var = ((ba + bb) - (bb - ba) ** 2 / n2) / n2 ** 2
    d = b.astype(float) - a.astype(float)
    var *= 1.0 if clusters is None else design_effect(d, clusters, confidence)
    z = stats.norm.ppf(0.5 + confidence / 2)
    half = z * math.sqrt(max(var, 0.0))
    out.update(diff=float(d.mean()), diff_low=max(-1.0, centre - half), diff_high=min(1.0, centre + half))
    return out


def paired_mean_difference(a, b, clusters=None, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high) of b - a on the same prompts: t interval over cluster means of the differences."""
    return mean_interval(np.asarray(b, float) - np.asarray(a, float), clusters, confidence)


def holm(p_values) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order; nan stays nan."""
    p = np.asarray(p_values, float)
    out = np.full(len(p), math.nan)
    idx = [i for i in np.argsort(p, kind="stable") if not math.isnan(p[i])]
    m, running = len(idx), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def resample_accuracy(blocks, resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """Accuracy per length over `resamples` resamples of trials (with replacement, within each block), averaged
    over the blocks (e.g. retrieval presets, each weighing the same). Returns [resamples, lengths].

    A block is (right, asked): arrays [trials, lengths] of prompts right / asked per trial and length.
    """
    rng = np.random.default_rng(seed)
    out = []
    for right, asked in blocks:
        right, asked = np.asarray(right, float), np.asarray(asked, float)
        pick = rng.integers(0, len(right), size=(resamples, len(right)))  # [resamples, trials]
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(right[pick].sum(1) / asked[pick].sum(1))  # [resamples, lengths]
    return np.mean(out, axis=0)


def effective_lengths_of(accuracy: np.ndarray, lengths, threshold: float) -> np.ndarray:
    """Effective length of every row of `accuracy` [rows, lengths]: the longest length whose accuracy, and that
    of every shorter length, is >= threshold (0 if none); a missing accuracy (nan) fails."""
    lengths = np.asarray(lengths)
    passing = np.cumprod(np.nan_to_num(accuracy, nan=-1.0) >= threshold, axis=1)
    reached = passing.sum(1)  # lengths passed in a row from the shortest
    return np.where(reached > 0, lengths[np.maximum(reached - 1, 0)], 0)


def effective_length_interval(lengths, blocks, threshold: float, *, level: float = 0.90, resamples: int = 2000,
                              seed: int = 0) -> dict:
    """Effective length resampled over trials (see resample_accuracy): {median, low, high}, the central `level`
    interval; `lengths` ascending, matching the blocks' columns."""
    eff = effective_lengths_of(resample_accuracy(blocks, resamples, seed), lengths, threshold)
    low, median, high = np.quantile(eff, [(1 - level) / 2, 0.5, (1 + level) / 2], method="inverted_cdf")
    return {"median": int(median), "low": int(low), "high": int(high)}


def prompts_needed(accuracy: float, half_width: float = 0.1, confidence: float = CONFIDENCE, limit: int = 100_000) -> int:
    """Smallest n whose Wilson interval at `accuracy` is at most +-half_width wide (each side)."""
    p = min(max(float(accuracy), 0.0), 1.0)
    z = stats.norm.ppf(0.5 + confidence / 2)
    n = max(1, int(z * z * p * (1 - p) / half_width ** 2) - 2)  # the Wald estimate, a little under the answer
    while n < limit:
        low, high = wilson(int(round(p * n)), n, confidence)
        if (high - low) / 2 <= half_width:
            return n
        n += 1
    return limit


def trials_needed(accuracy: float, prompts_per_trial: int, deff: float = 1.0, half_width: float = 0.1) -> int:
    """Trials for a +-half_width interval at `accuracy`, each trial adding `prompts_per_trial` prompts."""
    return max(1, math.ceil(prompts_needed(accuracy, half_width) * max(deff, 1.0) / max(prompts_per_trial, 1)))
