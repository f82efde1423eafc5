"""lch compare on synthetic run directories: headline numbers, figures, one self-contained report.html."""

import json
import sys
import subprocess

import pandas as pd

from harness.report import compare_runs, headline_table

VARIANTS = [("reference/softmax", "softmax", 5e5), ("reference/ssmax", "ssmax", 5e5)]


def write_run(root, task, tables, train_length=256):
    run = root / task
    (run / "tables").mkdir(parents=True)
    models = [{"name": m, "attention": a, "rope_theta": t, "training_length": train_length} for m, a, t in VARIANTS]
    (run / "manifest.json").write_text(json.dumps({"task": task, "models": models, "params": {}}))
    for name, df in tables.items():
        df.to_parquet(run / "tables" / f"{name}.parquet")
    return run


def needle_rows():
    rows = []
    for (model, attention, theta), good in zip(VARIANTS, (256, 1024)):
        for length in (256, 512, 1024, 2048):
            for depth in (0.0, 0.5, 1.0):
                rows.append(dict(model=model, attention=attention, rope_theta=theta, context_length=length,
                                 depth=depth, trial=0, correct=length <= good, first_digit_correct=True))
    return pd.DataFrame(rows)


def loss_rows():
    rows = [dict(model=m, attention=a, rope_theta=t, position=p, mean_nll=2.0 + (p >= 256) * (i + 1), n_docs=2)
            for i, (m, a, t) in enumerate(VARIANTS) for p in range(1, 1024)]
    return pd.DataFrame(rows)


def test_headline_numbers():
    tables = {"needle": needle_rows(), "position_loss": loss_rows()}
    table = headline_table(tables, {"reference/softmax": 256, "reference/ssmax": 256}).set_index("model")
    assert table.loc["reference/softmax", "effective length"] == 256
    assert table.loc["reference/ssmax", "effective length"] == 1024
    assert table.loc["reference/ssmax", "needle acc @2048"] == 0.0
    assert table.loc["reference/softmax", "NLL inside training length"] == 2.0
    assert table.loc["reference/softmax", "NLL beyond training length"] == 3.0


def test_compare_writes_report(tmp_path):
    runs = [write_run(tmp_path / "runs", "needle", {"needle": needle_rows()}),
            write_run(tmp_path / "runs", "position_loss", {"position_loss": loss_rows()})]
    report = compare_runs(runs, tmp_path / "cmp")
    text = report.read_text()
    assert text.count("data:image/png;base64,") >= 3  # heatmaps, difference, loss curves
    assert "effective length" in text
    assert (tmp_path / "cmp" / "figures" / "needle_difference.png").is_file()
    assert (tmp_path / "cmp" / "headline.csv").is_file()


def test_results_and_plots_import_no_torch():
    code = "import sys, harness.results, harness.plots, harness.report; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
