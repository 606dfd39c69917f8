"""Files written atomically and identified by their bytes: the helpers every part of distill may use.

JSON written to a temporary name, fsynced and renamed; a file's sha256; a short stable hash of a JSON-able object.
Imports nothing of distill's.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def fingerprint(obj) -> str:
    """A short stable hash of a JSON-able object (config slices, data identity, ...)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sha256(path: Path) -> str:
    """A file's sha256, read in 4 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_rename(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def write_json(path: Path, obj) -> None:
    """`obj` as JSON at `path`: written to a temporary name of this process's, fsynced and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # one per process: two may write the same file at once
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    _fsync_rename(tmp, path)


def read_json(path: Path):
    """The JSON at `path`, or None when it is missing or unreadable (a file never half-written: see write_json)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
