"""Figures that read well: panel titles never overlap (matplotlib text extents), even with long real model
names; shared name parts are said once; answer-NLL heatmaps sit beside the accuracy heatmaps."""

import itertools

import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness import plots
from harness.report import compare_runs
from tests.synthetic_runs import LONG, LONG_NAME, TWO_MODELS, UNRELATED, all_runs, grid_rows


def title_boxes(fig):
    """[(text, window extent)] of every visible panel title and the suptitle, after a full draw."""
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for ax in fig.axes if ax.get_visible() for t in (ax.title, ax._left_title, ax._right_title)]
    texts += [fig._suptitle] if fig._suptitle is not None else []
    return [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_text() and t.get_visible()]


def overlaps(fig) -> list:
    """Pairs of titles whose extents overlap, and titles that run into another panel's axes."""
    boxes = title_boxes(fig)
    bad = [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)]
    renderer = fig.canvas.get_renderer()
    for ax in (a for a in fig.axes if a.get_visible()):
        title = ax.title.get_window_extent(renderer) if ax.title.get_text() else None
        for other in (o for o in fig.axes if o is not ax and o.get_visible()):
            if title is not None and title.overlaps(other.get_window_extent(renderer)):
                bad.append((ax.title.get_text(), f"axes of {other.get_title() or other.get_ylabel()!r}"))
    return bad


def test_the_overlap_check_catches_overlapping_titles():
    fig = Figure(figsize=(9, 3), layout="constrained")
    for ax in fig.subplots(1, 3):
        ax.set_title(f"{LONG_NAME} · ssmax(s=0.111) · θ=100000")
    assert overlaps(fig)


EVERY_FIGURE = ["needle_heatmap.png", "needle_difference.png", "retrieval_average.png",
                "retrieval_heatmap_niah_single_1.png", "retrieval_heatmap_passkey.png",
                "retrieval_difference_niah_single_1.png", "retrieval_difference_passkey.png", "position_loss.png",
                "needle_score_top_heads.png", "needle_score_best_head.png", "attention_fading.png"]
NEEDLE_AND_PROBE = ["needle_heatmap.png", "needle_difference.png", "needle_score_top_heads.png",
                    "needle_score_best_head.png", "attention_fading.png"]


def compare_recording(tmp_path, variants, presets=("niah_single_1", "passkey")):
    """compare_runs over synthetic runs of `variants`: (report path, figure file names, saved Figures)."""
    saved, original = [], Figure.savefig

    def record(self, *args, **kwargs):  # layout is what is checked: write the PNGs at a low dpi
        saved.append(self)
        return original(self, *args, **{**kwargs, "dpi": 30})

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Figure, "savefig", record)
        runs = all_runs(tmp_path / "runs", variants, train_length=8192, lengths=(1024, 4096, 8192, 16384),
                        presets=presets, loss=bool(presets))
        report = compare_runs(runs, tmp_path / "cmp")
    return report, sorted(p.name for p in (tmp_path / "cmp" / "figures").iterdir()), saved


@pytest.fixture(scope="module")
def long_names(tmp_path_factory):
    """The issue's case: one checkpoint with a long name, two attentions, two RoPE bases, every task."""
    return compare_recording(tmp_path_factory.mktemp("long"), LONG)


def check_report(report, names, saved, expected):
    assert names == sorted(expected) and len(saved) == len(names)
    for fig in saved:
        assert overlaps(fig) == [], fig.get_suptitle()
    html = report.read_text()
    assert html.count("data:image/png;base64,") == len(names) and html.count("<figcaption>") == len(names)


def test_long_model_names_no_overlapping_titles(long_names):
    check_report(*long_names, EVERY_FIGURE)


@pytest.mark.parametrize("variants, presets, expected", [(UNRELATED, ("niah_single_1", "passkey"), EVERY_FIGURE),
                                                         (TWO_MODELS, (), NEEDLE_AND_PROBE)],
                         ids=["unrelated-long-names", "two-models-8-variants"])
def test_other_names_no_overlapping_titles(variants, presets, expected, tmp_path):
    check_report(*compare_recording(tmp_path, variants, presets), expected)


def nll_panels(fig):
    return [ax for ax in fig.axes if ax.images and ax.images[0].cmap is plots.NLL_CMAP]


def test_answer_nll_heatmaps_beside_accuracy(long_names):
    _, _, drawn = long_names
    heatmaps = [f for f in drawn if any(ax.images and ax.images[0].cmap is plots.NIAH_CMAP for ax in f.axes)]
    assert len(heatmaps) == 3  # needle, niah_single_1, passkey
    for fig in heatmaps:
        accuracy = [ax for ax in fig.axes if ax.images and ax.images[0].cmap is plots.NIAH_CMAP]
        nll = nll_panels(fig)
        assert len(accuracy) == len(nll) == 4
        assert accuracy[0].images[0].get_clim() == (0.0, 1.0)
        low, high = nll[0].images[0].get_clim()
        assert low == 0.0 and high == pytest.approx(0.1 + 4.0)  # one shared scale: the worst cell, log2(16k/1k)
        assert {ax.images[0].get_clim() for ax in nll} == {(low, high)}
        assert "answer NLL" in fig.axes[-2].get_ylabel() and "accuracy" in fig.axes[-1].get_ylabel()
    differences = [f for f in drawn if any(ax.images and ax.images[0].cmap.name == "RdBu_r" for ax in f.axes)]
    assert len(differences) == 3  # needle and each preset: an answer-NLL difference map under the accuracy one
    for fig in differences:
        assert sum(1 for ax in fig.axes if ax.images and ax.images[0].cmap.name == "RdBu_r") == 3


def test_titles_leave_out_the_shared_name_and_say_it_once():
    fig = plots.needle_heatmap_figure(grid_rows(LONG), train_lengths={LONG_NAME: 512})
    titles = {ax.get_title() for ax in fig.axes if ax.images and ax.get_title()}
    assert titles == {"softmax · θ=100000", "ssmax(s=0.111) · θ=100000", "softmax · θ=400000", "ssmax(s=0.111) · θ=400000"}
    assert LONG_NAME in fig.get_suptitle() and fig.get_suptitle().count(LONG_NAME) == 1
    names = plots.panel_names(TWO_MODELS)
    assert names.titles[0] == "135M · softmax · θ=100000" and names.titles[-1] == "360M · ssmax(s=0.111) · θ=400000"
    assert names.shared == "models SmolLM2-…-Instruct-Q4_1-dequant"
    assert plots.panel_names(TWO_MODELS[::2]).shared == "models SmolLM2-…-Instruct-Q4_1-dequant · θ=100000"
    assert plots.common_affixes(["reference/softmax", "reference/ssmax"]) == ("reference/", "")
    assert plots.panel_names([("m", "softmax", 5e5)]).titles == ["m · softmax · θ=500000"]  # one panel: all of it


def test_figure_width_follows_the_panel_count():
    small = plots.needle_heatmap_figure(grid_rows(LONG[:2]))
    large = plots.needle_heatmap_figure(grid_rows(TWO_MODELS))
    assert small.get_figwidth() < large.get_figwidth() <= plots.labels.MAX_FIGURE_WIDTH + 2
    assert large.get_figheight() > small.get_figheight()  # 8 panels wrap onto more rows


def test_legend_labels_are_short(tmp_path):
    from tests.synthetic_runs import loss_rows

    ax = Figure().subplots()
    plots.position_loss_curves(ax, loss_rows(LONG, train=64, stop=300), train_length={LONG_NAME: 64})
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "softmax · θ=100000" and LONG_NAME in ax.get_legend().get_title().get_text()


def _dotted_at(ax, x) -> int:
    return sum(1 for line in ax.get_lines() if list(line.get_xdata()) == [x, x] and line.get_linestyle() == ":")


def test_attention_fading_marks_the_training_length_of_plotted_models_only():
    from tests.synthetic_runs import REFERENCE, probe_rows

    _, fading = probe_rows()
    softmax, ssmax = (name for name, _, _ in REFERENCE)
    fig = plots.attention_fading_figure(fading, train_lengths={softmax: 64, ssmax: 64})
    assert [_dotted_at(ax, 64) for ax in fig.axes[:2]] == [1, 1]  # one line per distinct length
    fig = plots.attention_fading_figure(fading, train_lengths={softmax: 64, "not/plotted": 16})
    assert [(_dotted_at(ax, 64), _dotted_at(ax, 16)) for ax in fig.axes[:2]] == [(1, 0), (1, 0)]
    assert _dotted_at(plots.attention_fading_figure(fading, train_lengths={"not/plotted": 64}).axes[0], 64) == 0
    assert _dotted_at(plots.attention_fading_figure(fading).axes[0], 64) == 0


def test_loss_and_retrieval_average_mark_plotted_models_only():
    from tests.synthetic_runs import loss_rows

    ax = Figure().subplots()
    plots.position_loss_curves(ax, loss_rows(LONG, train=64, stop=300), train_length={LONG_NAME: 64, "other": 128})
    assert (_dotted_at(ax, 64), _dotted_at(ax, 128)) == (1, 0)
    average = pd.DataFrame({"model": [LONG_NAME] * 2, "attention": ["softmax"] * 2, "rope_theta": [1e5] * 2,
                            "context_length": [64, 128], "accuracy": [1.0, 0.5], "preset_names": ["passkey"] * 2})
    fig = plots.retrieval_average_figure(average, train_lengths={LONG_NAME: 64, "other": 128})
    assert (_dotted_at(fig.axes[0], 64), _dotted_at(fig.axes[0], 128)) == (1, 0)
