"""RULER's scoring: the generation cleaned as RULER cleans it, then string_match_all / string_match_part.

Semantics from NVIDIA/RULER scripts/eval/synthetic/constants.py and lm-evaluation-harness
lm_eval/tasks/ruler/common_utils.py (Apache-2.0): a reference counts when it occurs, case-insensitively,
anywhere in the prediction. `all`: the fraction of references found (niah, vt, cwe, fwe); `part`: 1 if any
reference is found (qa, whose references are alternative answers; RULER's own max over references; the
lm-evaluation-harness port computes the fraction instead). Imports no torch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess(prediction: str) -> str:
    """RULER's cleaning: strip, control characters to newlines, strip again."""
    return _CONTROL.sub("\n", prediction.strip()).strip()


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """Fraction of `references` that occur in the prediction (case-insensitive); 0 without references."""
    pred = postprocess(prediction).lower()
    refs = list(references)
    return sum(1.0 for r in refs if r.lower() in pred) / len(refs) if refs else 0.0


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    """1.0 if any of `references` occurs in the prediction (case-insensitive), else 0.0."""
    pred = postprocess(prediction).lower()
    return 1.0 if any(r.lower() in pred for r in references) else 0.0


METRICS = {"all": string_match_all, "part": string_match_part}
"""RULER's two metrics by name."""
