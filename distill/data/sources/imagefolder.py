"""data.source=imagefolder: a folder of images in one folder per class (or labelled by a metadata file), split by
`datasets`' folder-name rules (train/, validation/, test/ ...); its class folders checked before loading, and with
data.on_bad_image=error every image file whole (data/wholefiles.py) before any work."""
from __future__ import annotations

from pathlib import Path

import datasets
from datasets.data_files import SPLIT_KEYWORDS

from distill.config import DataCfg
from distill.data import content, wholefiles
from distill.data.images import SKIP_HINT
from distill.data.sources import Source
from distill.errors import DataError
from distill.registry import SOURCES

METADATA = ("metadata.csv", "metadata.jsonl", "metadata.parquet")  # an imagefolder's labels from a file, not folders


@SOURCES.register("imagefolder", help="a folder of class folders of images")
class ImageFolder(Source):
    local, folder = True, True
    rank = 30  # any other folder

    def detects(self, path: str | None) -> bool:
        return Path(path).is_dir()

    def check(self, path: str, key: str) -> None:
        _check_class_folders(Path(path), key)

    def load(self, cfg: DataCfg, path: str | None, data_content: str | None) -> datasets.DatasetDict:
        """Through `datasets`, its cache in a folder named by the content (data/content.py)."""
        loaded = datasets.load_dataset("imagefolder", data_dir=path, cache_dir=content.cache_dir(data_content))
        content.drop_stale_builds(loaded)
        return loaded

    def check_files(self, path: str, data_content: str) -> None:
        """DataError naming the first image file that is not whole (data/wholefiles.py)."""
        broken = wholefiles.first_broken(Path(path), data_content)
        if broken:
            file, why = broken
            raise DataError(f"data.path: {file} is {why}; {SKIP_HINT}")


def _split_folders(root: Path) -> dict[Path, str]:
    """An imagefolder's split folders and the split `datasets` reads each as, by its own keywords (`train/`;
    `validation/`, `val/`, `valid/`, `dev/`; `test/`, `eval/`, ...): {root: 'train'} when it has none."""
    names = {word: str(split) for split, words in SPLIT_KEYWORDS.items() for word in words}
    found = {p: names[p.name] for p in sorted(root.iterdir()) if p.is_dir() and p.name in names}
    return found or {root: "train"}


def _check_class_folders(root: Path, key: str) -> None:
    """An imagefolder's class folders, before any work (DataError naming the folder): none empty (to `datasets`
    no class at all: the class count and every class id after it would shift), at least two in training (a
    classifier needs two classes), and none in a held-out split (validation/, test/) that training lacks (a
    class the model could never learn, counted in its score). Not the class rules where a metadata file labels."""
    splits = _split_folders(root)
    classes = {base: sorted(p for p in base.iterdir() if p.is_dir()) for base in splits}
    for folder in (f for folders in classes.values() for f in folders):
        if not any(f.is_file() for f in folder.rglob("*")):
            raise DataError(f"{key}: class folder {folder} holds no images; add its images or remove the folder")
    train = [base for base, split in splits.items() if split == "train"]
    if not train or any((base / name).exists() for base in [root, *splits] for name in METADATA):
        return
    trained = {f.name for base in train for f in classes[base]}
    if len(trained) < 2:
        raise DataError(f"{key}: {train[0]} holds {len(trained)} class folder(s) "
                        f"({', '.join(sorted(trained)) or 'images without one'}); a classifier needs at least two "
                        "classes: put each class's images in a folder named after the class")
    stray = next((f for folders in classes.values() for f in folders if f.name not in trained), None)
    if stray is not None:
        raise DataError(f"{key}: class folder {stray} has no folder of that name in {train[0]}: a class the model "
                        "could never learn, counted in its score; add its training images or remove the folder")
