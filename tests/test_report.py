"""lch compare on synthetic run directories: headline numbers, the retrieval average, figures, one
self-contained report.html with a caption under every figure."""

import re
import subprocess
import sys

import pandas as pd
import pytest

from harness.results.headline import headline_table, multiple
from harness.report import caption_for, compare_runs
from harness.results.tables import retrieval_average, training_lengths
from tests.synthetic_runs import REFERENCE, grid_rows, loss_rows, write_run


def needle_rows():
    return grid_rows(REFERENCE, good=[256, 1024])


def test_headline_numbers():
    tables = {"needle": needle_rows(), "position_loss": loss_rows()}
    table = headline_table(tables, {"reference/softmax": 256, "reference/ssmax": 256}).set_index("model")
    assert table.loc["reference/softmax", "needle effective length"] == 256
    assert table.loc["reference/ssmax", "needle effective length"] == 1024
    assert table.loc["reference/ssmax", "needle acc @8×"] == 0.0 and table.loc["reference/ssmax", "needle acc @4×"] == 1.0
    assert table.loc["reference/softmax", "NLL inside training length"] == 2.0
    assert table.loc["reference/softmax", "NLL beyond training length"] == 3.0
    # answer NLL over prompts longer than L: softmax fails from 512 on (0.1 + log2(n / 256): 1.1, 2.1, 3.1)
    assert table.loc["reference/softmax", "needle answer NLL beyond training length"] == pytest.approx(2.1)
    assert list(table.columns[:3]) == ["attention", "rope_theta", "training length"]
    assert str(table["needle effective length"].dtype) == "Int64"


def test_headline_columns_in_tokens_without_a_training_length():
    table = headline_table({"needle": needle_rows()}, {})
    assert "needle acc @2048" in table.columns and table["training length"].isna().all()
    assert not any("beyond" in c for c in table.columns)


def test_unset_theta_is_one_variant_across_tables():
    """needle keeps None, position_loss's parquet gives NaN: one headline row per variant, not two."""
    variants = [("real-model", "softmax", None)]
    loss = loss_rows(variants).assign(rope_theta=float("nan"))
    table = headline_table({"needle": grid_rows(variants), "position_loss": loss}, {"real-model": 256})
    assert len(table) == 1 and table.loc[0, "needle acc @1×"] == 1.0 and table.loc[0, "NLL beyond training length"] == 3.0


def test_training_length_from_the_manifest_under_both_model_labels():
    manifest = {"models": [{"name": "SmolLM2-135M", "fingerprint": "ab12cd34ef", "training_length": 8192},
                           {"name": "other", "training_length": None}]}
    assert training_lengths(manifest) == {"SmolLM2-135M": 8192, "SmolLM2-135M@ab12cd34": 8192}
    assert multiple(16384, 8192) == "2×" and multiple(1024, 8192) == "0.125×" and multiple(384, 256) == "1.5×"


def test_retrieval_average_weighs_each_preset_equally():
    one = grid_rows(REFERENCE, good=[512, 512], preset="passkey")
    other = grid_rows(REFERENCE, good=[256, 256], preset="niah_single_1", trials=3)  # more rows must not weigh more
    avg = retrieval_average(pd.concat([one, other])).set_index(["model", "context_length"])
    assert avg.loc[("reference/softmax", 512), "accuracy"] == 0.5
    assert avg.loc[("reference/softmax", 256), "accuracy"] == 1.0
    assert avg.loc[("reference/softmax", 512), "presets"] == 2
    assert avg.loc[("reference/softmax", 512), "preset_names"] == "niah_single_1, passkey"
    table = headline_table({"retrieval": pd.concat([one, other])}, {"reference/softmax": 256}).set_index("model")
    assert table.loc["reference/softmax", "retrieval acc @2×"] == 0.5
    assert table.loc["reference/softmax", "retrieval effective length"] == 256


def test_compare_writes_report(tmp_path):
    runs = [write_run(tmp_path / "runs", "needle", "needle", {"needle": needle_rows()}),
            write_run(tmp_path / "runs", "loss", "position_loss", {"position_loss": loss_rows()})]
    report = compare_runs(runs, tmp_path / "cmp")
    text = report.read_text()
    assert text.count("data:image/png;base64,") == 3  # heatmaps, difference, loss curves
    assert text.count("<figcaption>") == 3 and "Dashed line: the model&#x27;s training length" in text
    assert "needle effective length" in text and "<th colspan='4'>needle acc</th>" in text
    assert not re.search(r"(src|href)=['\"](?!data:)", text)  # self-contained: nothing loaded from elsewhere
    assert (tmp_path / "cmp" / "figures" / "needle_difference.png").is_file()
    headline = pd.read_csv(tmp_path / "cmp" / "headline.csv")
    assert list(headline["training length"]) == [256, 256]  # from the manifests, not None
    assert text.index("<h2>Needle in a haystack</h2>") < text.index("<h2>Per-position test loss</h2>")


def test_compare_handles_retrieval_runs(tmp_path):
    runs = [write_run(tmp_path / "runs", preset, preset, {"retrieval": grid_rows(REFERENCE, good=good, preset=preset)})
            for preset, good in (("passkey", [512, 1024]), ("niah_multikey_1", [256, 512]))]
    report = compare_runs(runs, tmp_path / "cmp")
    figures = sorted(p.name for p in (tmp_path / "cmp" / "figures").iterdir())
    assert figures == ["retrieval_average.png", "retrieval_difference_niah_multikey_1.png",
                       "retrieval_difference_passkey.png", "retrieval_heatmap_niah_multikey_1.png",
                       "retrieval_heatmap_passkey.png"]
    text = report.read_text()
    assert "<h2>Retrieval presets (RULER-style needles, passkey)</h2>" in text and text.count("<figcaption>") == 5
    assert text.index("retrieval_average.png") < text.index("retrieval_heatmap_niah_multikey_1.png") < text.index(
        "retrieval_difference_niah_multikey_1.png") < text.index("retrieval_heatmap_passkey.png")
    presets = pd.read_csv(tmp_path / "cmp" / "retrieval_presets.csv")
    assert set(presets["preset"]) == {"passkey", "niah_multikey_1"} and "acc @2×" in presets.columns
    average = pd.read_csv(tmp_path / "cmp" / "retrieval_average.csv")
    assert set(average["presets"]) == {2}
    headline = pd.read_csv(tmp_path / "cmp" / "headline.csv").set_index("model")
    assert headline.loc["reference/ssmax", "retrieval acc @2×"] == 1.0  # (1 + 1) / 2
    assert headline.loc["reference/softmax", "retrieval acc @2×"] == 0.5  # passkey 1, multikey 0


def test_captions_name_the_preset_and_the_reference():
    section, caption = caption_for("x/retrieval_difference_niah_multivalue.png", reference="m · softmax")
    assert section == "retrieval" and caption.startswith("niah_multivalue: each variant minus A (m · softmax)")
    assert caption_for("x/my_custom_plot.png") == ("other", "my custom plot")


def test_results_and_plots_import_no_torch():
    code = ("import sys, harness.results, harness.plots, harness.report, harness.results.tables, harness.results.headline, "
            "harness.report.html; print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
