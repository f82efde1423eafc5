"""The corpus module: built-in stdlib split, local files, errors."""

import json
from pathlib import Path

import pytest

from harness.data.corpus import Document, fingerprint, is_heldout, load_corpus
from harness.errors import UserError


def test_stdlib_split_is_disjoint_complete_and_sorted():
    train = load_corpus("builtin:stdlib", "train")
    heldout = load_corpus("builtin:stdlib", "heldout")
    every = load_corpus("builtin:stdlib", "all")
    train_ids = {d.doc_id for d in train.documents}
    heldout_ids = {d.doc_id for d in heldout.documents}
    assert train_ids and heldout_ids
    assert not train_ids & heldout_ids
    assert train_ids | heldout_ids == {d.doc_id for d in every.documents}
    assert [d.doc_id for d in every.documents] == sorted(d.doc_id for d in every.documents)
    assert 0.03 < len(heldout_ids) / len(every.documents) < 0.2


def test_stdlib_excludes_tests_and_non_sources():
    for doc in load_corpus("builtin:stdlib", "all").documents:
        parts = doc.doc_id.split("/")
        assert parts[-1].endswith(".py") and not parts[-1].startswith("test_")
        assert not {"test", "tests", "idle_test", "site-packages"} & set(parts[:-1])


def test_split_is_stable():
    # A sha256 of the path: the same in every process, whatever PYTHONHASHSEED (Python's hash() is not).
    import subprocess
    import sys

    paths = ["json/decoder.py", "email/parser.py", "asyncio/tasks.py", "os.py", "typing.py", "zipfile/__init__.py"]
    code = f"from harness.data.corpus import is_heldout; print([is_heldout(p) for p in {paths!r}])"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={"PYTHONHASHSEED": seed, "PATH": ""}, cwd=Path(__file__).parents[1]).stdout
            for seed in ("1", "2")}
    assert outs == {str([is_heldout(p) for p in paths]) + "\n"}


def test_fingerprint_is_sha256_of_ids_and_texts_read_from_disk():
    import hashlib

    from harness.data.corpus import stdlib_root

    # computed here from the files themselves, not from the corpus's Documents
    heldout = load_corpus("builtin:stdlib", "heldout")
    h = hashlib.sha256()
    for rel in (d.doc_id for d in heldout.documents):
        h.update(rel.encode() + b"\0" + (stdlib_root() / rel).read_bytes() + b"\0")
    assert heldout.fingerprint == h.hexdigest()


def test_fingerprint_of_a_small_folder_is_pinned(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    # sha256(b"a.txt\0first\0b.txt\0second\0"): ids and texts in sorted order, each closed by a NUL
    assert load_corpus(str(tmp_path)).fingerprint == "7f0c71c2a32723addd68a5b72356ceaf33d769efa7f482c1308d759fcbd7cc9b"


def test_fingerprint_depends_on_text():
    a = (Document("x", "hello"),)
    assert fingerprint(a) != fingerprint((Document("x", "hello!"),))
    assert fingerprint(a) != fingerprint((Document("y", "hello"),))


def test_local_sources(tmp_path):
    (tmp_path / "one.txt").write_text("alpha beta")
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "b.txt").write_text("second")
    (folder / "a.txt").write_text("first")
    (folder / "empty.txt").write_text("  ")
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text(json.dumps({"text": "r0"}) + "\n\n" + json.dumps({"text": "r1"}) + "\n")
    pd = pytest.importorskip("pandas")
    parquet = tmp_path / "rows.parquet"
    pd.DataFrame({"text": ["p0", "p1", "p2"]}).to_parquet(parquet)

    assert [d.text for d in load_corpus(str(tmp_path / "one.txt")).documents] == ["alpha beta"]
    assert [d.text for d in load_corpus(str(folder)).documents] == ["first", "second"]
    assert [d.text for d in load_corpus(str(jsonl)).documents] == ["r0", "r1"]
    assert [d.text for d in load_corpus(str(parquet)).documents] == ["p0", "p1", "p2"]


@pytest.mark.parametrize("spec", ["builtin:nope", "/no/such/file.txt", "hf:", "hf:a:b:c:d", ""])
def test_bad_specs_raise_user_error(spec):
    with pytest.raises(UserError):
        load_corpus(spec)


def test_bad_split_and_bad_jsonl(tmp_path):
    with pytest.raises(UserError, match="split"):
        load_corpus("builtin:stdlib", "validation")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "no text field"}\n')
    with pytest.raises(UserError, match="text"):
        load_corpus(str(bad))
    latin1 = tmp_path / "notes.md"
    latin1.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match="notes.md.*not UTF-8"):
        load_corpus(str(latin1))


def test_source_tree_folder_skips_cache_hidden_and_binary_with_one_warning(tmp_path):
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\x00\x01text")
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / ".env").write_text("SECRET=1\n")
    (tmp_path / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (tmp_path / "old.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "README").write_text("read me")
    with pytest.warns(UserWarning) as caught:
        corpus = load_corpus(str(tmp_path))
    assert [d.doc_id for d in corpus.documents] == ["README", "pkg/mod.py"]
    assert len(caught) == 1
    assert "skipped 5 file(s) (3 hidden or in __pycache__, 2 binary or not UTF-8); kept 2" in str(caught[0].message)


def test_clean_folder_warns_nothing_and_named_binary_file_is_one_error(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_corpus(str(tmp_path))) == 1
    pyc = tmp_path / "mod.pyc"
    pyc.write_bytes(b"\x00\x01")
    with pytest.raises(UserError, match=r"mod\.pyc.*not UTF-8 text \(NUL byte at byte 0\)"):
        load_corpus(str(pyc))
