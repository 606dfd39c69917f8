"""Data sources (data.source), one file each, registered with `@SOURCES.register(NAME)` (distill/registry.py, the
idiom of every extension point): what data.path names and how its splits load. data.source=auto asks each source, by
`rank`, whether it `detects` data.path. Adding a source is one file here (a `Source` subclass); the checks every
source's splits then get (columns, labels, classes, the validation carve, the test split) are data/splits.py's.

    demo.py         scikit-learn's 8x8 handwritten digits, shipped in the package (no data.path)
    hub.py          a Hugging Face Hub data set, by name
    parquet.py      a parquet file, or a folder of them
    imagefolder.py  a folder of images, in one folder per class (or labelled by a metadata file)
    disk.py         a folder written by `datasets`' save_to_disk

May import: what distill/data/ may.
"""
from __future__ import annotations

import os
from pathlib import Path

import datasets

from distill.config import DataCfg
from distill.errors import DataError
from distill.registry import SOURCES


class Source:
    """A kind of data that data.path holds, registered as data.source=NAME:

        @SOURCES.register("mine", help="what data.path names")   # help: its line in data.source's --help
        class Mine(Source):
            rank = 25                             # asked by data.source=auto before the higher ranks

            def detects(self, path): ...          # data.path (None: none given) is this source's
            def load(self, cfg, path, data_content): ...   # -> datasets.DatasetDict, every split
    """

    name: str = ""  # set by SOURCES.register
    local: bool = False  # data.path is local files: made absolute, must exist, identified by their bytes
    folder: bool = False  # it reads a folder: a file given as data.path with data.source=NAME is refused
    rank: int = 50  # data.source=auto asks the sources in this order (the lowest first)
    hint: str = ""  # added to the one line of a load that failed

    def detects(self, path: str | None) -> bool:
        """Whether data.source=auto reads data.path (as given; None or empty when none is given) as this source."""
        return False

    def check(self, path: str, key: str) -> None:
        """Before loading: a problem of the files that loading would hide or garble, as a DataError naming `key`."""

    def load(self, cfg: DataCfg, path: str | None, data_content: str | None) -> datasets.DatasetDict:
        """Every split of the data. `path`: local_path's; `data_content`: a local source's content hash (it names
        `datasets`' cache of the files, data/content.py), else None."""
        raise NotImplementedError

    def check_files(self, path: str, data_content: str) -> None:
        """With data.on_bad_image=error, once loaded: every image file whole, else DataError naming the first."""

    def sibling(self, path: str, name: str) -> Path | None:
        """The file beside data.path that would hold the test split `name` (a parquet file's <name>.parquet);
        None: this source has none."""
        return None


def detect(cfg: DataCfg) -> str:
    """data.source, or the source data.path holds (auto: the first source, by rank, that detects it); DataError when
    a source given reads a folder and data.path is a file, or when none detects data.path."""
    if cfg.source != "auto":
        if SOURCES.lookup(cfg.source).folder and cfg.path and Path(cfg.path).expanduser().is_file():
            raise DataError(f"data.source={cfg.source} reads a folder, but data.path {cfg.path} is a file; give its "
                            "folder, or data.source=auto")
        return cfg.source
    for name, source in sorted(SOURCES.entries().items(), key=lambda item: item[1].rank):
        if source.detects(cfg.path):
            return name
    if Path(cfg.path).is_file():
        raise DataError(f"data.path: {cfg.path} is a file but not .parquet; give a parquet file, an imagefolder, "
                        "a save_to_disk folder or a hub name")
    raise DataError(f"data.path: no such file or directory: {cfg.path}")


def local_path(cfg: DataCfg, source: str) -> str | None:
    """data.path as the source reads it: local data as an absolute path, links kept as the user gave them (a sibling
    test split is looked up beside the link, not its target), anything else as given, None when none is given;
    what identifies local data is its content (data/content.py), not this path."""
    if not cfg.path:
        return None
    return os.path.abspath(os.path.expanduser(cfg.path)) if SOURCES.lookup(source).local else cfg.path


def load_splits(cfg: DataCfg, source: str, path: str | None, data_content: str | None,
                key: str = "data.path") -> datasets.DatasetDict:
    """Every split of the source; `path`: local_path's; `data_content`: a local source's content hash, which names
    `datasets`' cache of its files; `key`: the setting errors name. A failure is one line naming `key`."""
    reader = SOURCES.lookup(source)
    if reader.local and not Path(path).exists():
        raise DataError(f"{key}: no such file or directory: {path}")
    if path is not None:
        reader.check(path, key)
    try:
        return reader.load(cfg, path, data_content)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - one line for the user, whatever the library raised
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"{key}: could not load '{path}' as {source}: {first}{reader.hint}") from None
