"""Data through Hugging Face `datasets`: data.path -> its source's splits (data/sources/: hub, parquet, imagefolder,
save_to_disk, the demo digits), the validation carve, the test split, and the label and class checks; `load` returns
a DataBundle. Nothing here depends on which source the splits came from but what the source says of itself."""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
from tqdm.auto import tqdm

from distill import files
from distill.config import DataCfg
from distill.data import content, pixels
from distill.data.identity import DataIdentity
from distill.data.images import Images, Rows, bad_image, labels_of
from distill.data.sources import detect, load_splits, local_path
from distill.errors import DataError
from distill.registry import SOURCES

log = logging.getLogger("distill")


@dataclass
class DataBundle:
    train: datasets.Dataset
    val: datasets.Dataset
    class_names: list[str]
    image_column: str
    label_column: str
    identity: DataIdentity  # what identifies these splits, for stage fingerprints
    images: dict = field(default_factory=dict)  # "train"/"val"/"test" -> Images (decoded once when they fit)
    test: datasets.Dataset | None = None  # the held-out test split (data.test_split), scored at the end only
    test_identity: dict | None = None  # what identifies it (not part of any stage's fingerprint: nothing trains on it)
    on_device: dict = field(default_factory=dict, repr=False)  # device -> device_views(), made once per run

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ---------------------------------------------------------------- checks

def _check_columns(ds: datasets.Dataset, cfg: DataCfg, split: str) -> None:
    for key in ("image_column", "label_column"):
        col = getattr(cfg, key)
        if col not in ds.column_names:
            raise DataError(f"data.{key}: no column '{col}' in split '{split}'; columns: {', '.join(ds.column_names)}")
    if not isinstance(ds.features[cfg.image_column], datasets.Image):
        raise DataError(f"data.image_column: column '{cfg.image_column}' holds {ds.features[cfg.image_column]}, "
                        "not images")


def _class_names(ds: datasets.Dataset, cfg: DataCfg) -> list[str]:
    feature = ds.features[cfg.label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    labels = labels_of(ds, cfg.label_column)
    if labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"data.label_column: column '{cfg.label_column}' holds {feature}, not integer class ids "
                        "or a ClassLabel")
    return [str(i) for i in range(int(labels.max()) + 1)]


def check_labels(ds: datasets.Dataset, column: str, num_classes: int, split: str, rows: Rows) -> None:
    """Every label must lie in [0, num_classes); checked on the host before any training."""
    labels = labels_of(ds, column)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"data: label {labels[i]} at {rows.where(i)} ({split} sample {i}) is outside "
                        f"[0, {num_classes}), the ids of the {num_classes} classes ({bad.size} such sample(s)); "
                        "correct or remove those rows")


def _carve(n: int, size, seed: int, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(train rows, validation rows, the reason stratifying failed or None): `datasets`' seeded split of n rows
    (`train_test_split`'s own index generator, so the same rows), stratified by `labels` when given and possible.
    Computed from the labels array: `train_test_split` reads a column row by row (minutes at ImageNet's size)."""
    from datasets.arrow_dataset import stratified_shuffle_split_generate_indices

    n_val = math.ceil(size * n) if isinstance(size, float) else int(size)
    if labels is not None:
        try:
            train, val = next(stratified_shuffle_split_generate_indices(labels, n - n_val, n_val,
                                                                        rng=np.random.default_rng(seed)))
            return np.asarray(train), np.asarray(val), None
        except ValueError as e:  # too few images per class to stratify (or fewer validation images than classes)
            why = str(e).strip().splitlines()[0]
            reason = ("the least populated class has only 1 member, which is too few"
                      if why == "Minimum class count error" else why)
    else:
        reason = None
    order = np.random.default_rng(seed).permutation(n)
    return order[n_val:], order[:n_val], reason


def _warn_empty_classes(names: list[str], present: list[int], feature, split: str) -> None:
    have = set(present)
    empty = [n for i, n in enumerate(names) if i not in have]
    if empty:
        why = ("" if isinstance(feature, datasets.ClassLabel) else
               f" (integer labels: the class count comes from the largest label, {len(names) - 1}; a stray label?)")
        log.warning(f"data: {len(empty)} of {len(names)} classes have no image in split '{split}': "
                    f"{', '.join(empty[:8])}{', ...' if len(empty) > 8 else ''}{why}")


def _load_test(cfg: DataCfg, source: str, splits: datasets.DatasetDict, path: str | None
               ) -> tuple[datasets.Dataset, Rows]:
    """The held-out split `data.test_split` names: one of the loaded splits, the sibling <name>.parquet of a
    parquet data.path, or local data at that path. Never the training or validation split."""
    name = cfg.test_split
    for key, other in (("train_split", cfg.train_split), ("val_split", cfg.val_split)):
        if name == other:
            raise DataError(f"data.test_split: '{name}' is also data.{key}; the test split must be held out")
    if name in splits:
        return splits[name], Rows(np.arange(len(splits[name])), name, path)
    sibling = SOURCES.lookup(source).sibling(path, name) if path else None  # a parquet file's <name>.parquet
    if sibling is not None and sibling.is_file():
        one = dataclasses.replace(cfg, source=source, path=str(sibling), train_split=name, hub_config=None)
        loaded = load_splits(one, source, str(sibling), content.content_hash(sibling), "data.test_split")
        return loaded[name], Rows(np.arange(0), name, str(sibling))
    local = Path(name).expanduser()
    if local.exists():
        if path and local.resolve() == Path(path).resolve():
            raise DataError(f"data.test_split: {name} is data.path itself; the test split must be held out")
        other = dataclasses.replace(cfg, source="auto", path=str(local.resolve()), hub_config=None)
        other_source = detect(other)
        other_path = local_path(other, other_source)
        loaded = load_splits(other, other_source, other_path, _content(other_source, other_path), "data.test_split")
        ds = loaded[next(iter(loaded))]
        return ds, Rows(np.arange(len(ds)), next(iter(loaded)), str(local.resolve()))
    where = f"{path} " if path else ""
    raise DataError(f"data.test_split: no split '{name}' in {where}(splits: {', '.join(splits)})"
                    + (f", and no {sibling}" if sibling else "") + "; give a split name, a path to local data, or "
                    "data.test_split=null")


def load(cfg: DataCfg) -> DataBundle:
    """Load the train and validation splits (validation carved from train when there is none), check their labels
    and classes, and the held-out test split when one is named."""
    source = detect(cfg)
    path = local_path(cfg, source)  # None for the demo
    data_content = _content(source, path)  # hashed once: a walk and a stat of every file of a folder
    splits = load_splits(cfg, source, path, data_content)
    if cfg.on_bad_image == "error":  # an imagefolder's every file's head and tail, before any work
        SOURCES.lookup(source).check_files(path, data_content)
    data_content = data_content or _loaded_content(splits)
    train = _named_split(cfg, splits, "train_split")
    label = train.features[cfg.label_column]
    if not isinstance(label, datasets.ClassLabel) and label.dtype == "string":
        train = train.class_encode_column(cfg.label_column)
    train, val, train_rows, val_rows = _validation(cfg, splits, train, path)
    if cfg.train_size is not None and cfg.train_size < len(train):
        train = train.select(range(cfg.train_size))
        train_rows.rows = train_rows.rows[:cfg.train_size]
    names = _checked_classes(cfg, train, val, train_rows, val_rows)
    test, test_rows, test_identity = (_test_split(cfg, source, splits, path, data_content, names, train, val,
                                                                  train_rows, val_rows)
                                      if cfg.test_split else (None,) * 3)
    by_name = None if SOURCES.lookup(source).local else path  # the hub's data set name (None for the demo)
    identity = DataIdentity(source, by_name, cfg.hub_config, data_content, train_rows.key(), val_rows.key(), names)
    keys = {"train": identity.train, "val": identity.val, "test": test_identity}
    store = Path(content.cache_dir(data_content)) / "pixels"  # decoded once, for good
    images = {split: Images(ds, cfg.image_column, cfg.label_column, split,
                            pixels.decode(ds, cfg.image_column, split, cfg.decode_mb,
                                          store / f"{files.fingerprint(keys[split])}-{cfg.image_column}"), rows)
              for split, ds, rows in (("train", train, train_rows), ("val", val, val_rows), ("test", test, test_rows))
              if ds is not None}
    _say_sizes(images)
    if cfg.on_bad_image == "error":  # found now, not mid-epoch or after training
        _check_decoded(images["train"])
        _check_decoded(images["val"])
        if "test" in images:
            _check_decodes(images["test"], test_identity)
    return DataBundle(train, val, names, cfg.image_column, cfg.label_column, identity, images, test, test_identity)


def _content(source: str, path: str | None) -> str | None:
    """Local data is identified by its bytes (data/content.py), before it is loaded (its hash names `datasets`'
    cache of it); the hub's and the demo's once loaded (_loaded_content)."""
    return content.content_hash(path) if SOURCES.lookup(source).local else None


def _loaded_content(splits: datasets.DatasetDict) -> str:
    """The bytes of the loaded splits: the hub's Arrow files in `datasets`' cache (hashed once, remembered by their
    stat), or the in-memory table of the demo; never `datasets`' fingerprint (it keys local files by path and mtime)."""
    cached = [f["filename"] for ds in splits.values() for f in ds.cache_files]
    return content.files_hash(cached) if cached else content.table_hash(splits[next(iter(splits))])


def _check_decoded(split: Images) -> None:
    """A split decoded into memory at load: the first image that failed to decode, named now (DataError)."""
    if split.pixels is not None and split.bad:
        _named(split, min(split.bad))


def _check_decodes(test: Images, identity: dict) -> None:
    """Every test image decodes, checked before any work (DataError naming the first that does not): read off the
    load's decoding when the split was decoded into memory; otherwise each image decoded once and the verdict
    remembered by the split's identity, so a large test split costs one decoding pass per data set, not per run."""
    if test.pixels is not None:
        _check_decoded(test)
        return
    key = files.fingerprint(identity)
    if content.known("decodes", key):
        return
    for i in tqdm(range(len(test)), desc="check test images", unit="img", disable=len(test) < 1000):
        _named(test, i)
    content.remember("decodes", key)


def _named(split: Images, i: int) -> None:
    """Image i decodes, or DataError naming its row (and file), before any work."""
    try:
        split.image(i)
    except DataError as e:
        raise bad_image(e, running=False) from None


def _labels_by_name(test: datasets.Dataset, column: str, names: list[str]) -> datasets.Dataset:
    """A test split labelled with class names (strings) gets the training split's class ids; a name training does
    not have stops the run naming it."""
    if isinstance(test.features[column], datasets.ClassLabel) or test.features[column].dtype != "string":
        return test
    given = test[column]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise DataError(f"data.test_split: labels {', '.join(map(repr, unknown[:5]))} are no class of the training "
                        f"split ({', '.join(names[:10])})")
    ids = [names.index(label) for label in given]
    return test.remove_columns(column).add_column(column, ids)


def _say_sizes(images: dict) -> None:
    """A test split whose images differ in size from training's is brought to the input size by the eval view:
    said once, since its scores then measure resized images."""
    test, train = images.get("test"), images["train"]
    if test is not None and len(test) and len(train):
        hw, want = tuple(test.image(0).shape[-2:]), tuple(train.image(0).shape[-2:])
        if hw != want:
            log.warning(f"data.test_split: its images are {hw[0]}x{hw[1]}, the training split's {want[0]}x{want[1]}; "
                        "the eval view resizes them to the network's input")


def _named_split(cfg: DataCfg, splits, key: str) -> datasets.Dataset:
    """The split that data.<key> names, its columns checked."""
    name = getattr(cfg, key)
    if name not in splits:
        raise DataError(f"data.{key}: no split '{name}'; splits: {', '.join(splits)}")
    _check_columns(splits[name], cfg, name)
    return splits[name]


def _validation(cfg: DataCfg, splits, train: datasets.Dataset, path: str | None):
    """(train, validation, their Rows): data.val_split, or a stratified carve of data.val_size from train, whose
    rows are mapped back to the user's file."""
    if cfg.val_split is not None:
        val = _named_split(cfg, splits, "val_split")
        return train, val, Rows(np.arange(len(train)), cfg.train_split, path), Rows(np.arange(len(val)),
                                                                                   cfg.val_split, path)
    size = int(cfg.val_size) if cfg.val_size >= 1 else cfg.val_size
    carved = size if isinstance(size, int) else int(size * len(train))
    if carved < 1 or carved >= len(train):
        raise DataError(f"data.val_size: {cfg.val_size:g} does not fit a training split of {len(train)} images")
    label = train.features[cfg.label_column]
    if isinstance(label, datasets.ClassLabel):  # the carve re-encodes the labels: one beyond the names is named first
        check_labels(train, cfg.label_column, label.num_classes, "train", Rows(np.arange(len(train)),
                                                                               cfg.train_split, path))
    stratify = isinstance(label, datasets.ClassLabel)
    train_idx, val_idx, unstratified = _carve(len(train), size, cfg.split_seed,
                                              labels_of(train, cfg.label_column) if stratify else None)
    if unstratified:
        log.warning(f"data: validation carve not stratified by class ({unstratified})")
    return (train.select(train_idx), train.select(val_idx), Rows(train_idx, cfg.train_split, path),
            Rows(val_idx, cfg.train_split, path))


def _checked_classes(cfg: DataCfg, train, val, train_rows: Rows, val_rows: Rows) -> list[str]:
    """The class names; at least two present in train, every label of train and validation in range."""
    names = _class_names(train, cfg)
    present = np.unique(labels_of(train, cfg.label_column)).tolist()
    if len(present) < 2:
        found = ", ".join(names[i] if 0 <= i < len(names) else str(i) for i in present) or "none"
        raise DataError(f"data: split '{cfg.train_split}' holds {len(present)} class(es) ({found}); classification "
                        "needs at least two")
    check_labels(train, cfg.label_column, len(names), "train", train_rows)
    check_labels(val, cfg.label_column, len(names), "validation", val_rows)
    _warn_empty_classes(names, present, train.features[cfg.label_column], cfg.train_split)
    return names


def _class_difference(test: list[str], train: list[str], where: str | None) -> str:
    """How the test split's class names differ from training's: the counts, and the first position that differs."""
    i = next((i for i, (a, b) in enumerate(zip(test, train)) if a != b), min(len(test), len(train)))
    theirs, ours = (repr(c[i]) if i < len(c) else "none" for c in (test, train))
    split = f"the test split ({where})" if where else "the test split"
    counts = (f"{split} has {len(test)} classes, training {len(train)}" if len(test) != len(train) else
              f"{split} has training's {len(train)} classes under other names or in another order")
    return f"{counts}; the first that differs is class {i}: {theirs} in the test split, {ours} in training"


def _test_split(cfg: DataCfg, source: str, splits, path: str | None, data_content: str | None, names: list[str],
                train, val, train_rows: Rows, val_rows: Rows):
    """(test split, its Rows, its identity): the same columns and classes as training, every label in range, and
    no image shared with the training or validation split (compared by the images' bytes)."""
    test, test_rows = _load_test(cfg, source, splits, path)
    _check_columns(test, cfg, cfg.test_split)
    test = _labels_by_name(test, cfg.label_column, names)
    feature = test.features[cfg.label_column]
    if isinstance(feature, datasets.ClassLabel) and list(feature.names) != names:
        raise DataError(f"data.test_split: {_class_difference(list(feature.names), names, test_rows.path)}; give "
                        "a test split with the training split's classes, in the same order")
    test_rows.rows = np.arange(len(test))
    check_labels(test, cfg.label_column, len(names), "test", test_rows)
    file = test_rows.path if test_rows.path and Path(test_rows.path).exists() else None
    test_content = data_content if file in (None, path) else content.content_hash(file)
    identity = {**test_rows.key(), "content": test_content}
    key = files.fingerprint([identity, train_rows.key(), val_rows.key(), data_content])
    shared = content.shared_images(test, {"train": train, "validation": val}, cfg.image_column, key)
    if shared is not None:
        i, split, j = shared
        where = (train_rows if split == "train" else val_rows).where(j)
        raise DataError(f"data.test_split: its image at {test_rows.where(i)} is also the {split} image at {where}; "
                        "the test split must share no image with training or validation")
    return test, test_rows, identity
