"""The one atomic write: write a temp file beside the target, fsync, rename. Readers never see half a file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through `write(tmp_path)`, then rename onto `path` (the temp name carries the pid)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Atomically write `text` (fsynced)."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def write_json(path: Path, obj, **dump_kw) -> None:
    """Atomically write `obj` as JSON (non-JSON values through str unless `default` is given)."""
    dump_kw.setdefault("default", str)
    write_text(path, json.dumps(obj, **dump_kw))


def is_temp_file(path: Path) -> bool:
    """True for a temp file of atomic_write (`.NAME.PID.tmp`)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(".tmp")


def temp_owner(path: Path) -> int | None:
    """The pid in a temp file's name, or None."""
    try:
        return int(Path(path).name.split(".")[-2])
    except (ValueError, IndexError):
        return None
