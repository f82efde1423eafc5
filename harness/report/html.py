"""report.html: one self-contained page (images embedded as base64 PNG), readable at 1400 px wide. No torch."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import pandas as pd

from harness.columns import ROPE_THETA
from harness.results.headline import multiple
from harness.plots import NIAH_CMAP, theta_label

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1400px;margin:1.5em auto;padding:0 1em;
     color:#222;line-height:1.4}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
p.note,figcaption,caption{color:#444;font-size:.92em}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f3f3f3;white-space:normal;max-width:8em;text-align:center;font-weight:600}td.text{text-align:left}
caption{caption-side:bottom;text-align:left;padding-top:.3em;white-space:normal}
figure{margin:1.2em 0 2em 0}figure img{max-width:100%;height:auto;display:block}
figcaption{margin-top:.3em;max-width:1100px}
"""

HEADLINE_NOTE = (
    "One row per model variant. L: the training length, from each run's manifest (see Models). “acc @k×”: accuracy at "
    "k times L (at the length in tokens when L is unknown); needle: every digit right, retrieval: the mean over the "
    "presets that ran of every-asked-value-exact accuracy (RULER-style). Effective length: the longest length at which "
    "accuracy, and that at every shorter length, is ≥ 0.8 (0: none), with its 90% interval over resampled trials. "
    "Accuracy cells: estimate [95% interval] (Wilson, prompts of one trial sharing a haystack counted as one "
    "cluster; retrieval: trials resampled within each preset). Answer NLL beyond L: mean teacher-forced NLL of "
    "the answer (nats/token) over prompts longer than L. NLL inside / beyond L: mean per-position test loss "
    "(nats/token) of the position_loss run.")


HEADERS = {ROPE_THETA: "RoPE θ", "training length": "training length L"}
"""Column names shown differently in the page (the CSV keeps the table's own)."""


def header_text(column: str) -> str:
    """A column's header: 'L' for the training length, the table's name otherwise."""
    return HEADERS.get(column, column.replace(" training length", " L"))


def _is_accuracy(column: str) -> bool:
    return column.startswith("acc @") or " acc @" in column


def _leading_number(text: str) -> float | None:
    try:
        return float(text.split(" ", 1)[0])
    except ValueError:
        return None


def _shade(value: float) -> str:
    r, g, b, _ = NIAH_CMAP(value)
    return f" style='background:rgba({r * 255:.0f},{g * 255:.0f},{b * 255:.0f},0.35)'"


def _cell(column: str, value, row) -> tuple[str, str]:
    """(text, extra td attributes) of one table cell: accuracy shaded on the heatmaps' palette."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ("checkpoint" if column == ROPE_THETA else "–"), ""
    if column == ROPE_THETA:
        return theta_label(value)[2:], ""
    if isinstance(value, str) and _is_accuracy(column) and (number := _leading_number(value)) is not None:
        return value, _shade(number)  # '0.50 [0.08-0.92]': shaded on its estimate
    if isinstance(value, str):
        return value, " class='text'"
    if _is_accuracy(column):
        return f"{float(value):.2f}", _shade(float(value))
    train = row.get("training length")
    if column.endswith("effective length") and train is not None and not pd.isna(train):
        return f"{int(value)} ({multiple(value, train)})", ""
    if isinstance(value, float):
        return f"{value:.4g}", ""
    return str(value), ""


def _header(columns) -> str:
    """Header rows: 'needle acc @1×', 'needle acc @2×' share a 'needle acc' cell over '1×', '2×'."""
    if not any(" @" in c for c in columns):
        return "<thead><tr>" + "".join(f"<th>{html.escape(header_text(c))}</th>" for c in columns) + "</tr></thead>"
    top, bottom, i = [], [], 0
    while i < len(columns):
        group, _, at = columns[i].partition(" @")
        if not at:
            top.append(f"<th rowspan='2'>{html.escape(header_text(columns[i]))}</th>")
            i += 1
            continue
        span = 0
        while i + span < len(columns) and columns[i + span].partition(" @")[0] == group and " @" in columns[i + span]:
            bottom.append(f"<th>{html.escape(columns[i + span].partition(' @')[2])}</th>")
            span += 1
        top.append(f"<th colspan='{span}'>{html.escape(header_text(group))}</th>")
        i += span
    return f"<thead><tr>{''.join(top)}</tr><tr>{''.join(bottom)}</tr></thead>"


def table_html(df: pd.DataFrame, caption: str = "") -> str:
    """A DataFrame as an HTML table with grouped '... @k×' headers and readable cells, in a scrolling box."""
    if df is None or df.empty:
        return ""
    columns = [str(c) for c in df.columns]
    body = []
    for row in df.to_dict(orient="records"):
        cells = [_cell(c, row[c], row) for c in columns]
        body.append("<tr>" + "".join(f"<td{attrs}>{html.escape(text)}</td>" for text, attrs in cells) + "</tr>")
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<div class='scroll'><table>{cap}{_header(columns)}<tbody>{''.join(body)}</tbody></table></div>"


def figure_html(path, caption: str) -> str:
    """An embedded PNG with its one-line caption."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    name = html.escape(Path(path).name)
    return (f"<figure id='{name}'><img alt='{name}' src='data:image/png;base64,{data}'>"
            f"<figcaption><b>{name}</b>: {html.escape(caption)}</figcaption></figure>")


def render_html(headline: pd.DataFrame, sections, runs: pd.DataFrame, models: pd.DataFrame | None = None) -> str:
    """The whole page: runs, models, the headline table, then one section per task with captioned figures."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<title>lch comparison</title><style>{STYLE}</style></head><body>", "<h1>Long-context comparison</h1>",
             table_html(runs, "The runs compared (folder, task, status, finished cells / all cells, model variants)."),
             "<h2>Headline numbers</h2>",
             table_html(headline, HEADLINE_NOTE) if headline is not None and not headline.empty else
             "<p class='note'>No needle, retrieval or position_loss runs: nothing to tabulate.</p>"]
    if models is not None and not models.empty:
        parts += ["<h2>Models</h2>", table_html(models, "Per variant: the training length and where it came from "
                                                "(--training-length, the config's training_length, or its context "
                                                "length), and the attention the checkpoint was trained with.")]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.intro:
            parts.append(f"<p class='note'>{html.escape(section.intro)}</p>")
        parts += [table_html(df, caption) for caption, df in section.tables]
        parts += [figure_html(path, caption) for path, caption in section.figures]
    parts.append("</body></html>")
    return "\n".join(parts)
