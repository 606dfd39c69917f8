"""data.source=disk: a folder written by `datasets`' save_to_disk (a DatasetDict, or one Dataset: the training
split)."""
from __future__ import annotations

from pathlib import Path

import datasets

from distill.config import DataCfg
from distill.data.sources import Source
from distill.registry import SOURCES


@SOURCES.register("disk", help="a save_to_disk folder")
class Disk(Source):
    local, folder = True, True
    rank = 10  # before parquet and imagefolder: its folder may hold other files too

    def detects(self, path: str | None) -> bool:
        """A folder with save_to_disk's dataset_dict.json (several splits) or state.json (one)."""
        p = Path(path)
        return p.is_dir() and ((p / "dataset_dict.json").exists() or (p / "state.json").exists())

    def load(self, cfg: DataCfg, path: str | None, data_content: str | None) -> datasets.DatasetDict:
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.Dataset):
            return datasets.DatasetDict({cfg.train_split: loaded})
        return loaded
