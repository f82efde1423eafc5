"""Shared fixtures: offline, tiny random checkpoints in temporary directories."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """Factory: tiny_checkpoint(family="llama", ssmax=False, tokenizer="bpe", name="tiny", **kw) -> Path."""
    from tests.tiny import save_checkpoint

    counter = iter(range(10_000))

    def make(family="llama", *, name=None, **kwargs):
        path = tmp_path / (name or f"{family}-{next(counter)}")
        return save_checkpoint(path, family=family, **kwargs)

    return make
