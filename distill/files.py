"""Files written atomically and identified by their bytes: the helpers every part of distill may use.

JSON written to a temporary name, fsynced and renamed; a file's sha256; a short stable hash of a JSON-able object;
sealed JSON, the one rule for every JSON file a run reads back and acts on (checkpoint progress, the cache's shard
sidecars and manifest, meta.json, the records beside a run): the file holds the hash of its other fields, so one
changed by hand since it was written is refused in one line naming it, never acted on. A seal only says that the
file is as distill wrote it; each reader also checks that it names the identity it expects (a fingerprint, a
record layout), so a file moved from another folder is not trusted for matching itself.
Imports only distill.errors.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from distill.errors import DataError, UserError


def _plain(obj):
    """What JSON holds of an object it has no type for: a record's own JSON (its `to_json()`: a record hashes and is
    written exactly as the dict it serializes to), else its str (a Path)."""
    return obj.to_json() if hasattr(obj, "to_json") else str(obj)


def as_json(obj):
    """`obj` as JSON reads it back: tuples as lists, a record as its JSON (`to_json`), a Path as its str."""
    return json.loads(json.dumps(obj, default=_plain))


def fingerprint(obj) -> str:
    """A short stable hash of a JSON-able object (config slices, data identity, ...)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_plain).encode()).hexdigest()[:16]


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
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_plain) + "\n")
    _fsync_rename(tmp, path)


def read_json(path: Path):
    """The JSON at `path`, or None when it is missing or unreadable (a file never half-written: see write_json)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


SEAL = "seal"  # a sealed file's hash of its other fields (meta.json names it meta_sha256: written so since format 1)


def seal(obj: dict, key: str = SEAL) -> dict:
    """`obj` as JSON reads it back, with its seal under `key`."""
    plain = as_json({k: v for k, v in obj.items() if k != key})
    return plain | {key: fingerprint(plain)}


def is_sealed(obj, key: str = SEAL) -> bool:
    """Whether a dict read back from a sealed file is as `seal` wrote it (not changed since)."""
    return isinstance(obj, dict) and key in obj and seal(obj, key)[key] == obj[key]


def write_sealed(path: Path, obj: dict, key: str = SEAL) -> dict:
    """`obj` sealed and written atomically (write_json) at `path`; returns what was written."""
    out = seal(obj, key)
    write_json(path, out)
    return out


def changed(what: str, path: Path, advice: str, why: str = "") -> str:
    """The one line that refuses a sealed file changed since it was written: `what` (the stage or part), the file,
    `why` it matters (optional, in parentheses) and what to do: "restore it, or `advice`"."""
    return f"{what}: {path} was changed after it was written{f' ({why})' if why else ''}; restore it, or {advice}"


def read_sealed(path: Path, what: str, advice: str, error: type[UserError] = DataError, key: str = SEAL):
    """The sealed JSON at `path`, or None when it is missing or unreadable; one changed since it was written (or
    never sealed) raises `error` with `changed`'s line."""
    obj = read_json(path)
    if obj is not None and not is_sealed(obj, key):
        raise error(changed(what, Path(path), advice))
    return obj
