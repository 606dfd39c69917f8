"""data.source=hub: a Hugging Face Hub data set named by data.path (with data.hub_config), through `datasets`."""
from __future__ import annotations

from pathlib import Path

import datasets

from distill.config import DataCfg
from distill.data.sources import Source
from distill.registry import SOURCES


@SOURCES.register("hub", help="a Hugging Face Hub data set, by name (data.hub_config: its configuration)")
class Hub(Source):
    rank = 40  # the last: a name that is no local file or folder
    hint = ("; offline? point data.path at local files (a parquet file or folder, an imagefolder, or a save_to_disk "
            "folder)")

    def detects(self, path: str | None) -> bool:
        """A name, not a path: no such file or folder here, not written as a path (./, /, ~, or more than one /)."""
        return bool(path) and not Path(path).is_file() and not Path(path).is_dir() and not (
            path.startswith((".", "/", "~")) or path.count("/") > 1)

    def load(self, cfg: DataCfg, path: str | None, data_content: str | None) -> datasets.DatasetDict:
        return datasets.load_dataset(path, cfg.hub_config)
