"""The retrieval family's named presets (RULER's needle variants and passkey): the retrieval task with other defaults.

Each preset is its own task name (`lch run passkey ...`); its Params subclass RetrievalParams and change
only defaults, so every parameter stays settable with -T and keeps RetrievalParams' documentation.
"""

from __future__ import annotations

import dataclasses

from evals.retrieval import RetrievalParams, RetrievalTask
from harness.task import register_task

UUID_ROOM = {"max_new_tokens": 8}  # a uuid answer may need more tokens than its gold tokenisation
RULER = {"wording": "ruler"}  # RULER's strings; the essay haystack stays the offline corpus (give -T corpus=FILE)

PRESET_TABLE: tuple[tuple[str, str, dict], ...] = (
    ("niah_single_1", "RULER niah_single_1: one keyed 7-digit number in RULER's repeated noise sentences.",
     {"haystack": "filler", **RULER}),
    ("niah_single_2", "RULER niah_single_2: one keyed 7-digit number in corpus text (RULER: essays; default: "
                      "the offline corpus).", RULER),
    ("niah_single_3", "RULER niah_single_3: one keyed uuid in corpus text.", {"value_kind": "uuid", **UUID_ROOM, **RULER}),
    ("niah_multikey_1", "RULER niah_multikey_1: the asked needle among distractor needles with other keys, in "
                        "corpus text.", {"keys": 4, **RULER}),
    ("niah_multikey_2", "RULER niah_multikey_2: a haystack made only of distractor needles (word keys, number "
                        "values).", {"haystack": "needles", **RULER}),
    ("niah_multikey_3", "RULER niah_multikey_3: uuid keys and uuid values, a haystack of distractor needles only.",
     {"haystack": "needles", "key_kind": "uuid", "value_kind": "uuid", **UUID_ROOM, **RULER}),
    ("niah_multivalue", "RULER niah_multivalue: one key with 4 values in corpus text; every value must come back.",
     {"values": 4, **RULER}),
    ("niah_multiquery", "RULER niah_multiquery: 4 keys asked at once in corpus text; every value must come back.",
     {"keys": 4, "queries": 4, **RULER}),
    ("passkey", "Passkey retrieval (Mohtashami & Jaggi 2023): one pass key line in repeated filler text.",
     {"style": "passkey", "haystack": "filler"}),
)
"""(task name, one-line description, defaults that differ from RetrievalParams) per preset."""


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def preset_params(name: str, defaults: dict) -> type:
    """A frozen RetrievalParams subclass whose fields in `defaults` default to the given values."""
    fields = {f.name: f for f in dataclasses.fields(RetrievalParams)}
    unknown = set(defaults) - set(fields)
    if unknown:
        raise TypeError(f"preset {name}: RetrievalParams has no field(s) {sorted(unknown)}")
    return dataclasses.make_dataclass(
        f"{_camel(name)}Params", [(k, fields[k].type, dataclasses.field(default=v)) for k, v in defaults.items()],
        bases=(RetrievalParams,), frozen=True, namespace={"__doc__": f"{name} defaults.", "__module__": __name__})


def _register(name: str, about: str, defaults: dict) -> type:
    """Register task `name`: RetrievalTask with the preset's Params."""
    task = type(_camel(name), (RetrievalTask,), {"__doc__": about, "__module__": __name__,
                                          "Params": preset_params(name, defaults)})
    return register_task(name)(task)


for _name, _about, _defaults in PRESET_TABLE:
    _register(_name, _about, _defaults)

PRESETS = tuple(name for name, _, _ in PRESET_TABLE)
"""The named presets, each its own task name."""
