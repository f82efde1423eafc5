"""Regenerate the notebooks from this script (keeps them reviewable as code): python notebooks/build_notebooks.py"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    ("md", """# Softmax vs Scalable-Softmax on the reference pair

This notebook reads the tables of `lch demo` (the reference softmax model, the reference SSMax model,
and the softmax model switched post hoc to `ssmax(s=auto)`, all with RoPE theta raised 50x) and
compares them with pandas and the harness's plot functions. It needs no model code: `harness.results`
and `harness.plots` never import torch. If there are no demo results yet, it runs a small demo first
(`run_demo(quick=True)`, a minute or two on a CPU)."""),
    ("code", """%matplotlib inline
import os
from pathlib import Path

import pandas as pd
from IPython.display import display
from matplotlib.figure import Figure

from harness import plots, results
from harness.report import headline_table, merged_manifest

DEMO = Path(os.environ.get("LCH_DEMO_DIR", "../results/demo"))
if not any(DEMO.glob("*/manifest.json")):
    from harness.cli.demo import run_demo

    report = run_demo(DEMO.parent, quick=True, progress=False)  # writes DEMO.parent/demo-quick
    DEMO = report.parent.parent
tables = results.load(DEMO)
manifest = merged_manifest([DEMO])
train_lengths = plots.training_lengths(manifest)
print("tables:", ", ".join(sorted(tables)))
print("training lengths:", train_lengths)"""),
    ("md", """## Headline numbers

One row per evaluated variant: the effective needle length (the longest context whose retrieval
accuracy, and that of every shorter context, stays at or above 0.8), accuracy at each length, and
the mean per-token loss inside and beyond the training length."""),
    ("code", """headline = headline_table(tables, train_lengths)
headline"""),
    ("md", """## Needle in a haystack (the paper's Figure 6)

Each panel is one model variant: x is the context length, y the depth of the needle. The upper block's
colour is the share of trials whose greedy answer had all 7 digits right (0..1, the same scale for every
panel); the lower block's is the teacher-forced answer NLL (nats per token, one shared scale), which stays
graded where every greedy answer fails. The dashed line marks the training length: cells to its right are
extrapolation. SSMax is expected to keep retrieving well past the line; softmax's accuracy is expected to
fall off once n outgrows training."""),
    ("code", """needle = tables["needle"]
display(needle.pivot_table(index=["model", "attention"], columns="context_length", values="correct", aggfunc="mean").round(2))
plots.needle_heatmap_figure(needle, train_lengths=train_lengths)"""),
    ("md", """## Per-position test loss (the paper's Figure 5)

Mean next-token loss at every position of held-out documents, smoothed over log-spaced buckets, on
a log x axis. The dotted line is the training length. A model that generalises in length keeps its
loss flat (or falling) to the right of the line; one whose attention fades sees its loss rise."""),
    ("code", """fig = Figure(figsize=(8, 4.5), layout="constrained")
plots.position_loss_curves(fig.subplots(), tables["position_loss"], train_length=train_lengths or None)
fig"""),
    ("md", """## Where the answer looks: needle scores per head (Figures 7 and 8)

The needle score of a (layer, head) is the attention mass that the positions predicting the answer's
digits put on the needle's number tokens, averaged over those positions. The bars show the 25 best
heads of each variant; retrieval lives in a few heads whose score is close to 1 when the model answers
correctly."""),
    ("code", """scores = tables["needle_score"]
display(plots.head_ranking(scores).head(10))
plots.top_heads_figure(scores)"""),
    ("code", """plots.best_head_figure(scores)"""),
    ("md", """## Attention fading

For query rows that see n keys, the largest attention weight per head (median over heads, with the
inter-quartile band). Softmax spreads its attention thinner as n grows, so the largest weight falls;
SSMax's s·ln(n) scaling is meant to hold it up."""),
    ("code", """plots.attention_fading_figure(tables["attention_fading"])"""),
    ("md", """## Reading the comparison

- The headline table and the heatmaps give the retrieval story: compare the effective lengths and the
  accuracy to the right of the training-length line.
- The loss curves say whether the model still *uses* long context: a curve that keeps falling past the
  line conditions on far-away tokens; one that rises has lost them.
- The probe figures explain the heatmaps: a correct answer goes with a head that puts most of its
  attention on the needle, and the fading curve shows how much weight any one key can still get as n grows.

`lch compare RUN_DIR ...` draws all of this into one `report.html`."""),
]


def build(path: Path) -> None:
    """Write the comparison notebook (outputs empty; CI executes it)."""
    cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS]
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, path)


if __name__ == "__main__":
    build(Path(__file__).with_name("compare_models.ipynb"))
