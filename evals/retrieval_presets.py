"""The retrieval family's named presets (RULER's needle variants and passkey): Params that change defaults."""

from __future__ import annotations

from dataclasses import dataclass

from evals.retrieval import RetrievalParams, RetrievalTask
from harness.task import register_task


@dataclass(frozen=True)
class NiahSingle1Params(RetrievalParams):
    """niah_single_1 defaults."""

    haystack: str = "filler"
    """What surrounds the needles: corpus, filler (repeated filler sentences: this preset) or needles."""


@register_task("niah_single_1")
class NiahSingle1(RetrievalTask):
    """RULER niah_single_1: one keyed 7-digit number in repeated filler sentences."""

    Params = NiahSingle1Params


@register_task("niah_single_2")
class NiahSingle2(RetrievalTask):
    """RULER niah_single_2: one keyed 7-digit number in corpus text (essay-style haystack)."""

    Params = RetrievalParams


@dataclass(frozen=True)
class NiahSingle3Params(RetrievalParams):
    """niah_single_3 defaults."""

    value_kind: str = "uuid"
    """Kind of the values: word, number or uuid (this preset)."""
    max_new_tokens: int = 8
    """Tokens greedy decoding may generate beyond the gold answer's length."""


@register_task("niah_single_3")
class NiahSingle3(RetrievalTask):
    """RULER niah_single_3: one keyed uuid in corpus text."""

    Params = NiahSingle3Params


@dataclass(frozen=True)
class NiahMultikey1Params(RetrievalParams):
    """niah_multikey_1 defaults."""

    keys: int = 4
    """Keys with needles in the prompt: the asked one plus 3 distractors with other keys."""


@register_task("niah_multikey_1")
class NiahMultikey1(RetrievalTask):
    """RULER niah_multikey_1: the asked needle among distractor needles with other keys, in corpus text."""

    Params = NiahMultikey1Params


@dataclass(frozen=True)
class NiahMultikey2Params(RetrievalParams):
    """niah_multikey_2 defaults."""

    haystack: str = "needles"
    """What surrounds the needles: corpus, filler or needles (distractor needles only: this preset)."""


@register_task("niah_multikey_2")
class NiahMultikey2(RetrievalTask):
    """RULER niah_multikey_2: a haystack made only of distractor needles (word keys, number values)."""

    Params = NiahMultikey2Params


@dataclass(frozen=True)
class NiahMultikey3Params(RetrievalParams):
    """niah_multikey_3 defaults."""

    haystack: str = "needles"
    """What surrounds the needles: corpus, filler or needles (distractor needles only: this preset)."""
    key_kind: str = "uuid"
    """Kind of the keys: word, number or uuid (this preset)."""
    value_kind: str = "uuid"
    """Kind of the values: word, number or uuid (this preset)."""
    max_new_tokens: int = 8
    """Tokens greedy decoding may generate beyond the gold answer's length."""


@register_task("niah_multikey_3")
class NiahMultikey3(RetrievalTask):
    """RULER niah_multikey_3: uuid keys and uuid values, a haystack of distractor needles only."""

    Params = NiahMultikey3Params


@dataclass(frozen=True)
class NiahMultivalueParams(RetrievalParams):
    """niah_multivalue defaults."""

    values: int = 4
    """Values (needles) per key; all 4 must come back."""


@register_task("niah_multivalue")
class NiahMultivalue(RetrievalTask):
    """RULER niah_multivalue: one key with 4 values in corpus text; every value must come back."""

    Params = NiahMultivalueParams


@dataclass(frozen=True)
class NiahMultiqueryParams(RetrievalParams):
    """niah_multiquery defaults."""

    keys: int = 4
    """Keys with needles in the prompt (all of them asked here)."""
    queries: int = 4
    """Keys asked at once; at most `keys`."""


@register_task("niah_multiquery")
class NiahMultiquery(RetrievalTask):
    """RULER niah_multiquery: 4 keys asked at once in corpus text; every value must come back."""

    Params = NiahMultiqueryParams


@dataclass(frozen=True)
class PasskeyParams(RetrievalParams):
    """passkey defaults."""

    style: str = "passkey"
    """passkey: one "The pass key is V." line (this preset); niah: keyed needles."""
    haystack: str = "filler"
    """What surrounds the pass key: filler (repeated filler sentences: this preset), corpus or needles."""


@register_task("passkey")
class Passkey(RetrievalTask):
    """Passkey retrieval (Mohtashami & Jaggi 2023): one pass key line in repeated filler text."""

    Params = PasskeyParams


PRESETS = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
           "niah_multikey_3", "niah_multivalue", "niah_multiquery", "passkey")
"""The named presets, each its own task name."""
