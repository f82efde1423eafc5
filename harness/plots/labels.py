"""Panel titles that fit: shorten what every panel shares (said once, in the suptitle or legend title), wrap
the rest to the panel's width, and size figures to their panel count. Imports no torch."""

from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass

from harness.results.tables import missing

SEPARATOR = re.compile(r"([-_/.@ ])")
"""Where a model name may be cut: between the tokens of `SmolLM2-135M-Instruct`, `org/name`, `name@fingerprint`."""

MAX_FIGURE_WIDTH = 12.5
"""Inches: at 120 dpi about 1500 px, shown near full size on a 1400 px report page."""

TITLE_SIZE = 10
"""Font size (points) of panel titles."""


def theta_label(theta) -> str:
    """'θ=500000', or 'θ=checkpoint' when the run kept the checkpoint's RoPE base."""
    return "θ=checkpoint" if missing(theta) else f"θ={float(theta):g}"


def panel_title(model=None, attention=None, rope_theta=None) -> str:
    """'model · attention · θ=...' for a panel."""
    return " · ".join(p for p in (str(model) if model is not None else None,
                                   str(attention) if attention is not None else None,
                                   theta_label(rope_theta)) if p)


@dataclass(frozen=True)
class PanelNames:
    """Short titles for a figure's panels and the line naming what they all share."""

    titles: list
    """one short title per panel key, in order"""
    shared: str
    """what the titles leave out ('' if nothing), for the suptitle or a legend title"""


def _cut(name: str) -> list[str]:
    return [t for t in SEPARATOR.split(str(name)) if t != ""]


def common_affixes(names: list[str]) -> tuple[str, str]:
    """The longest prefix and suffix, cut between name tokens, that every name shares with something left over.

    'SmolLM2-135M-Instruct' and 'SmolLM2-360M-Instruct' share ('SmolLM2-', '-Instruct').
    """
    tokens = [_cut(n) for n in names]
    shortest = min(len(t) for t in tokens)
    start = 0
    while start < shortest - 1 and len({t[start] for t in tokens}) == 1:
        start += 1
    while start and not SEPARATOR.fullmatch(tokens[0][start - 1]):  # end the prefix on a separator
        start -= 1
    end = 0
    while end < shortest - start - 1 and len({t[-1 - end] for t in tokens}) == 1:
        end += 1
    while end and not SEPARATOR.fullmatch(tokens[0][-end]):  # start the suffix on a separator
        end -= 1
    prefix = "".join(tokens[0][:start])
    suffix = "".join(tokens[0][len(tokens[0]) - end:]) if end else ""
    return prefix, suffix


def _model_titles(models: list[str]) -> tuple[list[str], str]:
    """Model names without their shared prefix/suffix (when that saves 6+ characters) and the pattern removed."""
    prefix, suffix = common_affixes(models)
    if len(prefix) + len(suffix) < 6:
        return models, ""
    short = [m[len(prefix):len(m) - len(suffix)] for m in models]
    return short, f"models {prefix}…{suffix}"


def panel_names(keys) -> PanelNames:
    """Short titles for (model, attention, rope_theta) panel keys: a part every panel shares is left out of the
    titles and named once in `shared`; model names lose their shared prefix and suffix (said once, with …)."""
    keys = [tuple(k) + (None,) * (3 - len(k)) for k in keys]
    if len(keys) <= 1:
        return PanelNames([panel_title(*k) for k in keys], "")
    columns = [[None if missing(k[0]) else str(k[0]) for k in keys], [None if missing(k[1]) else str(k[1]) for k in keys],
               [theta_label(k[2]) for k in keys]]
    shared, kept = [], []
    for i, values in enumerate(columns):
        if len(set(values)) == 1:
            if values[0] is not None:
                shared.append(f"model {values[0]}" if i == 0 else values[0])
            continue
        if i == 0 and None not in values:
            values, pattern = _model_titles(values)
            if pattern:
                shared.append(pattern)
        kept.append(values)
    titles = [" · ".join(v for v in parts if v) for parts in zip(*kept)] if kept else [""] * len(keys)
    return PanelNames(titles, " · ".join(shared))


def shared_line(shared: str, width_in: float, what: str = "panels", fontsize: float = 11) -> str:
    """'all panels: <shared>' wrapped to `width_in` inches ('' when nothing is shared)."""
    return wrap_title(f"all {what}: {shared}", chars_per_line(width_in, fontsize)) if shared else ""


def chars_per_line(width_in: float, fontsize: float = TITLE_SIZE) -> int:
    """How many characters of text at `fontsize` fit in `width_in` inches (a generous average glyph width)."""
    return max(8, int(width_in * 72 / (fontsize * 0.62)))


def wrap_title(text: str, width: int) -> str:
    """`text` in lines of at most `width` characters, broken at ' · ' first, then at spaces and hyphens."""
    lines: list[str] = []
    for part in str(text).split(" · "):
        if lines and len(lines[-1]) + 3 + len(part) <= width:
            lines[-1] += " · " + part
        else:
            lines += textwrap.wrap(part, width, break_on_hyphens=True) or [""]
    return "\n".join(lines)


def figure_title(*lines) -> str:
    """The non-empty lines, one under the other (for a suptitle)."""
    return "\n".join(str(line) for line in lines if line)


def grid_shape(n_panels: int, panel_width: float, max_width: float = MAX_FIGURE_WIDTH,
               ncols: int | None = None) -> tuple[int, int]:
    """(ncols, nrows) for `n_panels` panels of `panel_width` inches in a figure at most `max_width` wide."""
    if not ncols:
        fit = max(1, int(max_width // panel_width))
        ncols = math.ceil(n_panels / math.ceil(n_panels / fit))  # balanced: 4 panels as 2 x 2, not 3 + 1
    ncols = max(1, min(n_panels, ncols))
    return ncols, math.ceil(n_panels / ncols)
