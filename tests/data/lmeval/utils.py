"""Local datasets of the lm-eval test tasks (read from this folder; no hub)."""

import json
from pathlib import Path

HERE = Path(__file__).parent


def _rows(name):
    return [json.loads(line) for line in (HERE / name).read_text().splitlines() if line.strip()]


def load_docs(**_metadata):
    """lch_tiny_ppl: a few short documents (lm-eval passes model_args as metadata: ignored)."""
    from datasets import Dataset, DatasetDict

    return DatasetDict({"test": Dataset.from_list(_rows("docs.jsonl"))})


def load_prompts(**_metadata):
    """lch_tiny_gen: short prompts with a one-line answer."""
    from datasets import Dataset, DatasetDict

    return DatasetDict({"test": Dataset.from_list(_rows("prompts.jsonl"))})
