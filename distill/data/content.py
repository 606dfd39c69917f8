"""What identifies local data: the sha256 of its bytes, remembered by a key that a copy or a restore cannot keep.

`datasets` keys its cache of a local file by the file's path and modification time, and `cp -p`, `rsync -a` or
`tar x` keep both for a file with other bytes. So a local data path (a file, or every file under a folder) is
identified by its content: hashed once, and remembered by each file's size, inode, mtime and ctime (writing a file
always sets its ctime to now, and nothing but the kernel sets a ctime), so unchanged data is not read again. The
`datasets` cache of that data lives in a folder named by the hash (`cache_dir`), so data with other bytes is always
read anew, never served from the cache of the old bytes. Written by hand: `datasets` has no content-keyed cache.

Cost: the bytes read once, then one stat per file on each run (measured: docs/benchmarks.md).
"""
from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import shutil
from pathlib import Path

import datasets
from tqdm.auto import tqdm

from distill import files

log = logging.getLogger("distill")

LARGE = 1 << 28  # bytes above which the hashing shows a progress bar
SEP = "::"  # an index key of several files: their common folder, SEP, a hash of their paths


def _index() -> Path:
    """Where the hashes are remembered: beside `datasets`' own cache."""
    return Path(datasets.config.HF_DATASETS_CACHE) / "distill_content.json"


def _load() -> dict:
    """The remembered hashes and verdicts. The file is sealed, and it is only a memo: one changed since it was
    written (by hand, or by an older distill, which wrote it unsealed) is set aside with a warning and every hash
    is computed again from the bytes, so an entry that names other bytes as this data's is never used."""
    index = files.read_json(_index())
    if index is None:
        return {}
    if not files.is_sealed(index):
        log.warning(f"data: {_index()} was changed after it was written; hashing the data again")
        return {}
    return {k: v for k, v in index.items() if k != files.SEAL}


def _save(index: dict) -> None:
    files.write_sealed(_index(), index)


def _files(root: Path) -> list[Path]:
    """The data files at `root`: the file, or every file under the folder but `datasets`' own cache files, which
    it writes beside a save_to_disk folder's data (a `map` of it: cache-HASH.arrow), not data of the user's."""
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and not fnmatch.fnmatch(p.name, "cache-*.arrow"))


def content_hash(path: str | Path) -> str:
    """The sha256 of the data at `path`: a file's bytes, or every file under a folder with its relative path."""
    root = Path(path).resolve()
    return _hashed(str(root), [(str(f.relative_to(root)) if f != root else "", f) for f in _files(root)])


def files_hash(paths: list[str | Path]) -> str:
    """The sha256 of these files' bytes, in this order (each named by its file name): the data of a source that
    is no one folder of its own, such as the hub's files in `datasets`' cache."""
    found = [Path(p).resolve() for p in paths]
    key = f"{os.path.commonpath([str(f) for f in found])}{SEP}{files.fingerprint([str(f) for f in found])}"
    return _hashed(key, [(f.name, f) for f in found])


def table_hash(ds: datasets.Dataset) -> str:
    """The sha256 of an in-memory data set's Arrow table (the demo's: built in memory, no file to hash)."""
    digest = hashlib.sha256()
    for batch in ds.data.table.to_batches():
        for column in batch.columns:
            for buffer in column.buffers():
                digest.update(b"" if buffer is None else memoryview(buffer))
    return digest.hexdigest()


def _hashed(key: str, named: list[tuple[str, Path]]) -> str:
    """The sha256 of the `named` files (name, path), remembered under `key` by each file's stat."""
    stats = [(name, os.stat(f)) for name, f in named]
    stat = files.fingerprint([(name, s.st_size, s.st_ino, s.st_mtime_ns, s.st_ctime_ns) for name, s in stats])
    index = _load()
    known = index.get(key)
    if known and known.get("stat") == stat:
        return known["sha256"]
    total = sum(s.st_size for _, s in stats)
    digest = hashlib.sha256()
    desc = f"hash {Path(key.split(SEP)[0]).name}"
    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=total < LARGE) as bar:
        for (name, s), (_, f) in zip(stats, named):
            digest.update(f"{name}\0{s.st_size}\0".encode())
            with open(f, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
                    bar.update(len(block))
    index[key] = {"stat": stat, "sha256": digest.hexdigest()}
    _save(_existing(index))
    return digest.hexdigest()


def _existing(index: dict) -> dict:
    """The index without the entries of paths that no longer exist (it grows with data sets, not with history);
    verdicts (`remember`) are keyed by name, not by path, and stay."""
    return {k: v for k, v in index.items() if not os.path.isabs(k) or os.path.exists(k.split(SEP)[0])}


def cache_dir(content: str) -> str:
    """`datasets`' cache folder for the data with this content (so other bytes are never served the old cache)."""
    return str(Path(datasets.config.HF_DATASETS_CACHE) / "distill" / content[:16])


def drop_stale_builds(splits: datasets.DatasetDict) -> None:
    """Delete `datasets`' other Arrow copies of these bytes, beside the one `splits` read, in their content's cache
    folder (cache_dir): `datasets` keys a local file by its path and mtime, so a `touch` makes it prepare the same
    bytes again in a new folder, and each would stay (the data's size on disk again). A copy being prepared
    (*.incomplete) is left alone."""
    root = Path(datasets.config.HF_DATASETS_CACHE) / "distill"
    used = {Path(f["filename"]).parents[2] for ds in splits.values() for f in ds.cache_files}
    for builds in {u.parent for u in used if u.parent.parent.parent == root}:  # distill/CONTENT/parquet
        for other in builds.iterdir():
            if other.is_dir() and other not in used and not any(other.rglob("*.incomplete")):
                shutil.rmtree(other, ignore_errors=True)


def image_digests(ds: datasets.Dataset, column: str) -> list[bytes]:
    """A 16-byte digest of each image's encoded bytes (the file as stored, not decoded), in row order."""
    raw = ds.select_columns([column]).cast_column(column, datasets.Image(decode=False))
    out = []
    for batch in raw.iter(batch_size=1024):
        for value in batch[column]:
            data = value["bytes"] if value["bytes"] is not None else Path(value["path"]).read_bytes()
            out.append(hashlib.blake2b(data, digest_size=16).digest())
    return out


def known(verdict: str, key: str) -> bool:
    """Whether a check of the data (`verdict`: its name) has passed before for data identified by `key`."""
    return bool(_load().get(verdict, {}).get(key))


def remember(verdict: str, key: str) -> None:
    """Record that the check `verdict` passed for the data identified by `key` (it is not run again for it)."""
    index = _load()
    index.setdefault(verdict, {})[key] = True
    _save(index)


def shared_images(test: datasets.Dataset, others: dict[str, datasets.Dataset], column: str, key: str):
    """The first image the test split shares with another split, as (test row, split name, its row), or None.
    Every image's bytes are hashed once; the verdict is remembered by `key` (the splits' identities), so a large
    data set is read for it once, not on every run."""
    if known("disjoint", key):
        return None
    test_rows = {d: i for i, d in reversed(list(enumerate(image_digests(test, column))))}
    for name, ds in others.items():
        for j, d in enumerate(image_digests(ds, column)):
            if d in test_rows:
                return test_rows[d], name, j
    remember("disjoint", key)
    return None
