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
from typing import ClassVar

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


def fsync_rename(tmp: Path, final: Path) -> None:
    """A file written in full at `tmp` put in place as `final`: its bytes flushed to disk, then renamed over `final`
    (a reader sees the old file or the new one, never half of one, even after a crash)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def write_json(path: Path, obj) -> None:
    """`obj` as JSON at `path`: written to a temporary name of this process's, fsynced and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # one per process: two may write the same file at once
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_plain) + "\n")
    fsync_rename(tmp, path)


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


class Sealed:
    """A record kept in a sealed JSON file (distill/store/records.py's and checkpoint.py's): the one place where a
    record is written sealed, read back with its seal checked, and its format version compared. A subclass gives
    `to_json()` (exactly the dict the file holds), `from_json(obj)`, and, when not the default, `SEAL` (the key of
    its seal) and `FORMAT_VERSION` (None: the file holds no version)."""
    SEAL: ClassVar[str] = SEAL
    FORMAT_VERSION: ClassVar[int | None] = None

    def to_json(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_json(cls, obj: dict):
        raise NotImplementedError

    def write(self, path: Path) -> dict:
        """The record sealed and written atomically at `path` (write_sealed); returns what was written."""
        return write_sealed(path, self.to_json(), self.SEAL)

    def sealed_json(self) -> dict:
        """The record as its file holds it, seal included (its fields give the seal: the same every time)."""
        return seal(self.to_json(), self.SEAL)

    @classmethod
    def read(cls, path: Path, what: str, advice: str, error: type[UserError] = DataError):
        """The record at `path`, or None when it is missing or unreadable; one changed since it was written raises
        `error` with `changed`'s line (read_sealed)."""
        obj = read_sealed(path, what, advice, error, cls.SEAL)
        return None if obj is None else cls.from_json(obj)

    @classmethod
    def other_version(cls, obj: dict) -> int | None:
        """The format version of a file this distill does not read (an older or newer layout: 1 when it names
        none), or None when it is this distill's."""
        version = obj.get("format_version", 1)
        return None if cls.FORMAT_VERSION is None or version == cls.FORMAT_VERSION else version
