"""Statistics (issue 28): published worked examples, simulated coverage, paired tests on planted differences,
refusal of unpaired prompts, and old runs (no new columns) through lch compare."""

import numpy as np
import pandas as pd
import pytest

from harness.results import stats
from harness.errors import UserError
from harness.results.intervals import (add_effective_length_intervals, add_intervals, cell_summary, headline_with_intervals,
                               retrieval_average_intervals, trials_needed)
from harness.results.paired import UnpairedPrompts, pair, parse_baseline, prompt_fingerprint, versus_baseline
from harness.report import compare_runs
from tests.synthetic_runs import REFERENCE, grid_rows, write_run


@pytest.mark.parametrize("k, n, low, high", [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605),
                                             (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)])
def test_wilson_equals_newcombe_1998(k, n, low, high):
    """Newcombe (1998) Stat Med 17:857, Table I, method 3 (Wilson score without continuity correction)."""
    got = stats.wilson(k, n)
    assert got == pytest.approx((low, high), abs=6e-5)


def test_exact_mcnemar_equals_fagerland_2013():
    """Fagerland, Lydersen, Laake (2013) BMC Med Res Methodol 13:91: discordant pairs 1 and 7, exact p = 0.0703."""
    assert round(stats.mcnemar_exact(1, 7), 4) == 0.0703
    assert stats.mcnemar_exact(7, 1) == stats.mcnemar_exact(1, 7)
    assert stats.mcnemar_exact(0, 0) == 1.0


def test_holm_matches_hand_worked_steps():
    # sorted p: 0.01*4=0.04, 0.02*3=0.06, 0.03*2=0.06 (monotone), 0.5*1=0.5
    assert stats.holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])


def test_wilson_coverage_is_near_95_percent():
    rng = np.random.default_rng(28)
    p, n, draws = 0.3, 40, 4000
    hits = sum(lo <= p <= hi for lo, hi in (stats.wilson(int(k), n) for k in rng.binomial(n, p, size=draws)))
    assert 0.93 <= hits / draws <= 0.97


def test_clustered_interval_coverage_is_near_95_percent_and_plain_wilson_is_not():
    """Trials share a haystack: each trial has its own success rate (Beta(2, 3), mean 0.4)."""
    rng = np.random.default_rng(7)
    trials, depths, draws, hits, naive = 30, 5, 3000, 0, 0
    clusters = np.repeat(np.arange(trials), depths)
    for _ in range(draws):
        rate = rng.beta(2, 3, size=trials)
        correct = (rng.random((trials, depths)) < rate[:, None]).ravel()
        got = stats.proportion_interval(correct, clusters)
        hits += got["acc_low"] <= 0.4 <= got["acc_high"]
        lo, hi = stats.wilson(int(correct.sum()), len(correct))
        naive += lo <= 0.4 <= hi
    assert 0.93 <= hits / draws <= 0.97
    assert naive / draws < 0.92  # ignoring the clustering is overconfident: the design effect matters


def _paired_draw(rng, trials, depths, p_a, p_b):
    """Two variants on the same prompts; a shared per-prompt difficulty makes them correlated."""
    difficulty = rng.random((trials, depths))
    return (difficulty < p_a).ravel(), (difficulty < p_b).ravel(), np.repeat(np.arange(trials), depths)


def test_planted_difference_is_found_and_zero_difference_is_not():
    rng = np.random.default_rng(3)
    found = 0
    for _ in range(200):
        a, b, clusters = _paired_draw(rng, 8, 5, 0.3, 0.7)
        got = stats.paired_difference(a, b, clusters)
        found += got["diff_low"] > 0 and got["p_value"] < 0.05
    assert found / 200 > 0.9
    false = 0
    for _ in range(1000):
        a, b, clusters = rng.random(40) < 0.5, rng.random(40) < 0.5, np.repeat(np.arange(8), 5)
        got = stats.paired_difference(a, b, clusters)
        false += (got["diff_low"] > 0) or (got["diff_high"] < 0)
    assert false / 1000 <= 0.07  # 5% nominal


def test_mean_interval_and_paired_mean_difference():
    mean, low, high = stats.mean_interval([1.0, 2.0, 3.0, 4.0], clusters=[0, 0, 1, 1])
    assert mean == 2.5 and low < 2.5 < high  # t over the two trial means 1.5 and 3.5
    assert np.isnan(stats.mean_interval([1.0, 2.0], clusters=[0, 0])[1])  # one trial: no interval
    mean, low, high = stats.paired_mean_difference([2.0] * 6, [1.0, 1.1, 0.9, 1.0, 1.2, 0.8], clusters=[0, 0, 1, 1, 2, 2])
    assert high < 0 and mean == pytest.approx(-1.0)


def test_effective_length_interval_resamples_trials():
    lengths = [256, 512, 1024]
    sure = [np.array([[5, 5, 0]] * 6, float), np.full((6, 3), 5.0)]  # every trial passes 512, fails 1024
    assert stats.effective_length_interval(lengths, [sure], 0.8) == {"median": 512, "low": 512, "high": 512}
    right = np.array([[5, 5, 5], [5, 4, 0], [5, 3, 5], [5, 5, 1]], float)
    got = stats.effective_length_interval(lengths, [(right, np.full((4, 3), 5.0))], 0.8)
    assert got["low"] <= got["median"] <= got["high"] and got["low"] < got["high"]


def test_prompts_and_trials_needed():
    assert stats.prompts_needed(0.5) in range(90, 100)  # about 1.96^2 * 0.25 / 0.01 = 96
    assert stats.prompts_needed(0.95) < stats.prompts_needed(0.5)
    assert stats.trials_needed(0.5, 5) == -(-stats.prompts_needed(0.5) // 5)
    row = trials_needed("needle", grid_rows(REFERENCE, good=[256, 1024], trials=2))
    assert row["trials now"] == 2 and row["trials for ±0.1"] > 2


def test_summary_tables_gain_interval_columns():
    df = grid_rows(REFERENCE, good=[256, 1024], trials=3)
    keys = ["model", "attention", "rope_theta"]
    summary = (df.groupby(keys + ["context_length"], dropna=False)
               .agg(accuracy=("correct", "mean"), answer_nll=("answer_nll", "mean"), n=("correct", "size"))
               .reset_index())
    out = add_intervals(summary, df, keys + ["context_length"])
    assert {"acc_low", "acc_high", "n_eff", "nll_low", "nll_high"} <= set(out.columns)
    assert ((out["acc_low"] <= out["accuracy"]) & (out["accuracy"] <= out["acc_high"])).all()
    cells = cell_summary(df)
    assert set(cells["n"]) == {3} and (cells["acc_high"] > 0).all()
    eff = add_effective_length_intervals(pd.DataFrame({"x": [0, 1]}), df, keys, 0.8)
    assert eff["effective_length_median"].tolist() == [256, 1024]
    avg = retrieval_average_intervals(grid_rows(REFERENCE, trials=3, preset="passkey"))
    assert (avg["acc_low"] <= avg["accuracy"]).all() and (avg["accuracy"] <= avg["acc_high"]).all()


def test_headline_cells_show_intervals():
    from harness.results.headline import headline_table

    tables = {"needle": grid_rows(REFERENCE, good=[256, 1024], trials=2)}
    train = {"reference/softmax": 256, "reference/ssmax": 256}
    shown = headline_with_intervals(headline_table(tables, train), tables, train).set_index("model")
    assert shown.loc["reference/ssmax", "needle acc @4×"].startswith("1.00 [")
    assert shown.loc["reference/ssmax", "needle effective length"] == "1024 (4×), 90%: 1024-1024"


def _with_fingerprints(df, salt=""):
    return df.assign(prompt_fingerprint=[prompt_fingerprint([int(r.context_length), r.depth, r.trial], [salt])
                                         for r in df.itertuples()])


def test_versus_baseline_finds_the_planted_difference_and_marks_it():
    df = _with_fingerprints(grid_rows(REFERENCE, good=[256, 1024], depths=(0.0, 0.25, 0.5, 0.75, 1.0), trials=4))
    table, notes = versus_baseline(df)
    assert not notes and set(table["paired_by"]) == {"fingerprint"}
    at = table.set_index("context_length")
    assert at.loc[512, "diff"] == 1.0 and at.loc[512, "excludes_0"] and at.loc[512, "p_holm"] < 0.05
    assert at.loc[256, "diff"] == 0.0 and not at.loc[256, "excludes_0"] and at.loc[256, "p_mcnemar"] == 1.0
    assert at.loc[2048, "nll_diff"] < 0  # ssmax's answer NLL is lower past its failure point of softmax
    flipped, _ = versus_baseline(df, baseline="reference/ssmax|ssmax|500000")
    assert flipped.set_index("context_length").loc[512, "diff"] == -1.0


def test_unpaired_prompts_are_refused_with_a_cause():
    df = _with_fingerprints(grid_rows(REFERENCE, trials=2))
    other = df["model"] == "reference/ssmax"
    df.loc[other, "prompt_fingerprint"] = _with_fingerprints(df[other], salt="x")["prompt_fingerprint"]
    df["run"] = np.where(other, "run_b", "run_a")
    a, b = df[~other], df[other]
    with pytest.raises(UnpairedPrompts, match="another seed \\(0 vs 1\\)"):
        pair(a, b, {"run_a": {"seed": 0}, "run_b": {"seed": 1}})
    with pytest.raises(UnpairedPrompts, match="another tokenizer"):
        pair(a, b, {})
    table, notes = versus_baseline(df)
    assert table.empty and len(notes) == 1 and "not the same tokens" in notes[0]


def test_baseline_must_name_one_variant():
    keys = [("m", "softmax", None), ("m", "ssmax", None), ("n", "softmax", 1e4)]
    assert parse_baseline("m|ssmax", keys) == ("m", "ssmax", None)
    assert parse_baseline("n|softmax|10000", keys) == ("n", "softmax", 1e4)
    assert parse_baseline("m|softmax|checkpoint", keys) == ("m", "softmax", None)
    with pytest.raises(UserError, match="matches 2 variants"):
        parse_baseline("m", keys)
    with pytest.raises(UserError, match="matches 0"):
        parse_baseline("x|softmax", keys)


def test_old_run_without_new_columns_loads_compares_and_draws(tmp_path):
    run = write_run(tmp_path / "runs", "needle", "needle", {"needle": grid_rows(REFERENCE, good=[256, 1024], trials=2)})
    report = compare_runs([run], tmp_path / "cmp", baseline="reference/softmax")
    text = report.read_text()
    assert "Versus baseline and precision" in text and "paired by coordinates" in text
    versus = pd.read_csv(tmp_path / "cmp" / "versus_baseline.csv")
    assert set(versus["paired_by"]) == {"coordinates"} and len(versus) == 4
    shown = pd.read_csv(tmp_path / "cmp" / "headline_intervals.csv")
    assert shown["needle acc @1×"].str.contains(r"\[").all()
    assert (tmp_path / "cmp" / "figures" / "needle_heatmap.png").is_file()
    with pytest.raises(UserError, match="--baseline"):
        compare_runs([run], tmp_path / "cmp2", baseline="nobody")


def test_position_loss_bands_get_an_interval_over_documents():
    from harness.task import get_task

    rows = [{"model": "m", "attention": "softmax", "rope_theta": None, "doc": d, "doc_id": d, "position": p,
             "nll": 2.0 + 0.1 * d + 0.01 * p} for d in range(4) for p in range(1, 65)]
    buckets = get_task("position_loss").summarize({"position_nll": pd.DataFrame(rows)}, None)["position_loss_buckets"]
    assert ((buckets["nll_low"] < buckets["mean_nll"]) & (buckets["mean_nll"] < buckets["nll_high"])).all()


def test_wilson_on_an_effective_n_equals_scipy_at_integer_n():
    for k, n in [(81, 263), (0, 20), (7, 9)]:
        assert stats.wilson_effective(k / n, n) == pytest.approx(stats.wilson(k, n), abs=1e-9)
