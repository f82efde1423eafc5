"""Text sources as deterministic documents: the built-in stdlib corpus, local files, HF datasets."""

from __future__ import annotations

import functools
import hashlib
import json
import sysconfig
import warnings
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError

BUILTIN_STDLIB = "builtin:stdlib"
SPLITS = ("train", "heldout", "all")
HELDOUT_PERCENT = 10
"""Share of stdlib files (by a stable hash of the relative path) that training never sees."""

_TEST_DIRS = {"test", "tests", "idle_test"}
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


@dataclass(frozen=True)
class Document:
    """One document: a stable id (relative path, file name or row index) and its text."""

    doc_id: str
    text: str


@dataclass(frozen=True)
class Corpus:
    """Documents of one source and split, in a fixed order, with a fingerprint of their text."""

    spec: str
    """The source spec as given (builtin:stdlib, a path, or hf:NAME[:CONFIG][:SPLIT])."""
    split: str
    """train | heldout | all; only builtin:stdlib is split, other sources are used whole."""
    fingerprint: str
    """sha256 hex of the selected documents' ids and texts."""
    documents: tuple[Document, ...]
    """The documents in a fixed order (sorted by relative path for the stdlib)."""

    def __len__(self) -> int:
        return len(self.documents)


def is_heldout(rel_path: str) -> bool:
    """Whether a stdlib file (relative posix path) belongs to the held-out split (stable sha256 hash)."""
    digest = hashlib.sha256(rel_path.encode("utf-8")).hexdigest()
    return int(digest[:8], 16) % 100 < HELDOUT_PERCENT


def fingerprint(documents: tuple[Document, ...]) -> str:
    """sha256 hex over the documents' ids and texts, in order."""
    h = hashlib.sha256()
    for doc in documents:
        h.update(doc.doc_id.encode("utf-8") + b"\0")
        h.update(doc.text.encode("utf-8") + b"\0")
    return h.hexdigest()


def load_corpus(spec: str = BUILTIN_STDLIB, split: str = "heldout") -> Corpus:
    """Load a corpus: builtin:stdlib | a text file (any suffix), .jsonl or .parquet | a folder of text files | hf:NAME[:CONFIG][:SPLIT]."""
    if split not in SPLITS:
        raise UserError(f"unknown corpus split {split!r}; allowed: {', '.join(SPLITS)}")
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"empty corpus spec {spec!r}; use builtin:stdlib, a file/folder path or hf:NAME")
    spec = spec.strip()
    if spec == BUILTIN_STDLIB:
        return _stdlib_corpus(split)
    if spec.startswith("builtin:"):
        raise UserError(f"unknown built-in corpus {spec!r}; allowed: {BUILTIN_STDLIB}")
    if spec.startswith("hf:"):
        docs = _hf_documents(spec)
    else:
        docs = _local_documents(spec)
    if not docs:
        raise UserError(f"corpus {spec!r} has no non-empty documents")
    return Corpus(spec=spec, split=split, fingerprint=fingerprint(docs), documents=docs)


def stdlib_root() -> Path:
    """Directory of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def _is_stdlib_source(rel: str) -> bool:
    parts = rel.split("/")
    if not parts[-1].endswith(".py") or parts[-1].startswith("test_"):
        return False
    dirs = set(parts[:-1])
    return not (dirs & _TEST_DIRS or dirs & _SKIP_DIRS)


@functools.lru_cache(maxsize=None)
def _stdlib_documents() -> tuple[Document, ...]:
    root = stdlib_root()
    rels = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py") if p.is_file())
    docs = []
    for rel in rels:
        if not _is_stdlib_source(rel):
            continue
        text = (root / rel).read_text(encoding="utf-8", errors="replace")
        if text.strip():
            docs.append(Document(rel, text))
    return tuple(docs)


@functools.lru_cache(maxsize=None)
def _stdlib_corpus(split: str) -> Corpus:
    docs = _stdlib_documents()
    if split != "all":
        want_heldout = split == "heldout"
        docs = tuple(d for d in docs if is_heldout(d.doc_id) == want_heldout)
    return Corpus(spec=BUILTIN_STDLIB, split=split, fingerprint=fingerprint(docs), documents=docs)


STRUCTURED = (".jsonl", ".parquet")  # one document per record; every other file is one document of UTF-8 text


def _decode(data: bytes) -> str:
    """UTF-8 text of a file's bytes; UnicodeDecodeError when binary (a NUL byte) or not UTF-8."""
    if b"\0" in data:
        raise UnicodeDecodeError("utf-8", data, data.index(b"\0"), data.index(b"\0") + 1, "NUL byte")
    return data.decode("utf-8")


def _text_of(path: Path, spec: str) -> str:
    """A file's UTF-8 text, or UserError naming the file when it is binary or not UTF-8."""
    try:
        return _decode(path.read_bytes())
    except UnicodeDecodeError as e:
        raise UserError(f"corpus file {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start}); "
                        f"corpus {spec!r} takes text files (any suffix), .jsonl or .parquet") from None


def _is_skipped_dir(part: str) -> bool:
    return part.startswith(".") or part == "__pycache__"


def _folder_documents(path: Path, spec: str) -> tuple[Document, ...]:
    """Text files under a folder, sorted; hidden and cache folders/files and binary files skipped with one warning."""
    files = sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise UserError(f"corpus folder {spec!r} has no files")
    docs, hidden, binary = [], 0, 0
    for p in files:
        if any(_is_skipped_dir(part) for part in p.relative_to(path).parts):
            hidden += 1
            continue
        try:
            text = _decode(p.read_bytes())
        except UnicodeDecodeError:
            binary += 1
            continue
        if text.strip():
            docs.append(Document(p.relative_to(path).as_posix(), text))
    if hidden or binary:
        warnings.warn(f"corpus folder {spec!r}: skipped {hidden + binary} file(s) ({hidden} hidden or in __pycache__, "
                      f"{binary} binary or not UTF-8); kept {len(docs)} text file(s)", stacklevel=4)
    return tuple(docs)


def _local_documents(spec: str) -> tuple[Document, ...]:
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"corpus path {spec!r} does not exist; use builtin:stdlib, a file/folder path or hf:NAME")
    if path.is_dir():
        return _folder_documents(path, spec)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_documents(path)
    if suffix == ".parquet":
        return _parquet_documents(path)
    text = _text_of(path, spec)
    return (Document(path.name, text),) if text.strip() else ()


def _jsonl_documents(path: Path) -> tuple[Document, ...]:
    docs = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"corpus {str(path)!r} line {i + 1} is not JSON: {e.msg}") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise UserError(f"corpus {str(path)!r} line {i + 1} has no string field 'text'")
            if row["text"].strip():
                docs.append(Document(str(row.get("id", i)), row["text"]))
    return tuple(docs)


def _parquet_documents(path: Path) -> tuple[Document, ...]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if "text" not in table.column_names:
        raise UserError(f"corpus {str(path)!r} has no column 'text'; columns: {', '.join(table.column_names)}")
    texts = table.column("text").to_pylist()
    return tuple(Document(str(i), t) for i, t in enumerate(texts) if isinstance(t, str) and t.strip())


def _hf_documents(spec: str) -> tuple[Document, ...]:
    parts = spec[len("hf:"):].split(":")
    if not parts[0] or len(parts) > 3:
        raise UserError(f"bad corpus spec {spec!r}; use hf:NAME[:CONFIG][:SPLIT]")
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    hf_split = parts[2] if len(parts) > 2 and parts[2] else "test"
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=hf_split)
    except Exception as e:  # network, unknown dataset or split: one line for the user
        raise UserError(f"cannot load corpus {spec!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if "text" not in ds.column_names:
        raise UserError(f"corpus {spec!r} has no column 'text'; columns: {', '.join(ds.column_names)}")
    return tuple(Document(str(i), t) for i, t in enumerate(ds["text"]) if isinstance(t, str) and t.strip())
