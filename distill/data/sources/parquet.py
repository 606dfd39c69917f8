"""data.source=parquet: a parquet file (the training split; a sibling <name>.parquet may hold the test split) or a
folder of them (split by `datasets`' file-name rules), checked first from their footers (data/parquet.py)."""
from __future__ import annotations

from pathlib import Path

import datasets

from distill.config import DataCfg
from distill.data import content, parquet
from distill.data.sources import Source
from distill.registry import SOURCES


@SOURCES.register("parquet", help="a parquet file or folder")
class Parquet(Source):
    local = True
    rank = 20

    def detects(self, path: str | None) -> bool:
        """A .parquet file, or a folder with parquet files (in it, or one folder down)."""
        p = Path(path)
        if p.is_file():
            return p.suffix == ".parquet"
        return p.is_dir() and (any(p.glob("*.parquet")) or any(p.glob("*/*.parquet")))

    def check(self, path: str, key: str) -> None:
        parquet.check(path, key)

    def load(self, cfg: DataCfg, path: str | None, data_content: str | None) -> datasets.DatasetDict:
        """Through `datasets`, its cache in a folder named by the content (data/content.py)."""
        where, types = content.cache_dir(data_content), parquet.features(path)
        if Path(path).is_file():
            loaded = datasets.load_dataset("parquet", data_files={cfg.train_split: path}, cache_dir=where,
                                           features=types)
        else:
            loaded = datasets.load_dataset("parquet", data_dir=path, cache_dir=where, features=types)
        content.drop_stale_builds(loaded)
        return loaded

    def sibling(self, path: str, name: str) -> Path | None:
        """A parquet file's test split by name (not a path): <name>.parquet beside it (or <name> itself)."""
        if not Path(path).is_file() or Path(name).name != name:
            return None
        return Path(path).with_name(name if name.endswith(".parquet") else f"{name}.parquet")
