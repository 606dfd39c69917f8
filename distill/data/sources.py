"""Data through Hugging Face `datasets`: data.path -> the splits (hub, parquet, imagefolder, save_to_disk, the demo
digits), the validation carve, the test split, and the label and class checks; `load` returns a DataBundle."""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
from datasets.data_files import SPLIT_KEYWORDS
from tqdm.auto import tqdm

from distill import files
from distill.config import DataCfg
from distill.data import content, parquet, pixels, wholefiles
from distill.data.identity import DataIdentity
from distill.data.images import SKIP_HINT, Images, Rows, bad_image, labels_of
from distill.errors import DataError

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


# ---------------------------------------------------------------- sources

def demo_dataset() -> datasets.Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 real scans, shipped inside the package: no download)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[str(d) for d in range(10)])})
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p, mode="L") for p in pixels], "label": digits.target.tolist()},
        features=features)


def detect_source(cfg: DataCfg) -> str:
    """data.source, or the source data.path holds (auto); DataError when a source given reads a folder and data.path
    is a file."""
    if cfg.source != "auto":
        if cfg.source in ("imagefolder", "disk") and cfg.path and Path(cfg.path).expanduser().is_file():
            raise DataError(f"data.source={cfg.source} reads a folder, but data.path {cfg.path} is a file; give its "
                            "folder, or data.source=auto")
        return cfg.source
    if not cfg.path:  # nothing given: the demo digits
        return "demo"
    p = Path(cfg.path)
    if p.is_file():
        if p.suffix == ".parquet":
            return "parquet"
        raise DataError(f"data.path: {p} is a file but not .parquet; give a parquet file, an imagefolder, "
                        "a save_to_disk folder or a hub name")
    if p.is_dir():
        if (p / "dataset_dict.json").exists() or (p / "state.json").exists():
            return "disk"
        if any(p.glob("*.parquet")) or any(p.glob("*/*.parquet")):
            return "parquet"
        return "imagefolder"
    if cfg.path.startswith((".", "/", "~")) or cfg.path.count("/") > 1:
        raise DataError(f"data.path: no such file or directory: {cfg.path}")
    return "hub"


def local_path(cfg: DataCfg, source: str) -> str | None:
    """Local data as an absolute path, links kept as the user gave them (a sibling test split is looked up beside
    the link, not its target); what identifies the data is its content (data/content.py), not this path."""
    return os.path.abspath(os.path.expanduser(cfg.path)) if source in ("parquet", "imagefolder", "disk") else cfg.path


def _load_splits(cfg: DataCfg, source: str, path: str | None, data_content: str | None,
                 key: str = "data.path") -> datasets.DatasetDict:
    """Every split of the source; `path`: local_path's (data.path itself for the hub); `data_content`: its
    content hash (_content), which names `datasets`' cache of local files; `key`: the setting errors name."""
    if source == "demo":
        return datasets.DatasetDict({"train": demo_dataset()})
    if source in ("parquet", "imagefolder", "disk") and not Path(path).exists():
        raise DataError(f"{key}: no such file or directory: {path}")
    if source == "parquet":
        parquet.check(path, key)
    if source == "imagefolder":
        _check_class_folders(Path(path), key)
    try:
        if source in ("parquet", "imagefolder"):  # datasets' cache of local files: one folder per content
            loaded = _load_local(cfg, source, path, content.cache_dir(data_content))
            content.drop_stale_builds(loaded)
            return loaded
        if source == "disk":
            loaded = datasets.load_from_disk(path)
            if isinstance(loaded, datasets.Dataset):
                return datasets.DatasetDict({cfg.train_split: loaded})
            return loaded
        return datasets.load_dataset(path, cfg.hub_config)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - one line for the user, whatever the library raised
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        hint = ("; offline? point data.path at local files (a parquet file or folder, an imagefolder, or a "
                "save_to_disk folder)") if source == "hub" else ""
        raise DataError(f"{key}: could not load '{path}' as {source}: {first}{hint}") from None


def _load_local(cfg: DataCfg, source: str, path: str, where: str) -> datasets.DatasetDict:
    """A parquet file or folder, or an imagefolder, through `datasets`, its cache in `where` (data/content.py)."""
    if source == "imagefolder":
        return datasets.load_dataset("imagefolder", data_dir=path, cache_dir=where)
    types = parquet.features(path)
    if Path(path).is_file():
        return datasets.load_dataset("parquet", data_files={cfg.train_split: path}, cache_dir=where, features=types)
    return datasets.load_dataset("parquet", data_dir=path, cache_dir=where, features=types)


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


METADATA = ("metadata.csv", "metadata.jsonl", "metadata.parquet")  # an imagefolder's labels from a file, not folders


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
    parquet_file = source == "parquet" and path and Path(path).is_file()
    plain = Path(name).name == name  # a name, not a path: its sibling file is <name>.parquet (or <name> itself)
    sibling = None
    if parquet_file and plain:
        sibling = Path(path).with_name(name if name.endswith(".parquet") else f"{name}.parquet")
    if sibling is not None and sibling.is_file():
        one = dataclasses.replace(cfg, source="parquet", path=str(sibling), train_split=name, hub_config=None)
        loaded = _load_splits(one, "parquet", str(sibling), content.content_hash(sibling), "data.test_split")
        return loaded[name], Rows(np.arange(0), name, str(sibling))
    local = Path(name).expanduser()
    if local.exists():
        if path and local.resolve() == Path(path).resolve():
            raise DataError(f"data.test_split: {name} is data.path itself; the test split must be held out")
        other = dataclasses.replace(cfg, source="auto", path=str(local.resolve()), hub_config=None)
        other_source = detect_source(other)
        other_path = local_path(other, other_source)
        loaded = _load_splits(other, other_source, other_path, _content(other_source, other_path), "data.test_split")
        ds = loaded[next(iter(loaded))]
        return ds, Rows(np.arange(len(ds)), next(iter(loaded)), str(local.resolve()))
    where = f"{path} " if path else ""
    raise DataError(f"data.test_split: no split '{name}' in {where}(splits: {', '.join(splits)})"
                    + (f", and no {sibling}" if sibling else "") + "; give a split name, a path to local data, or "
                    "data.test_split=null")


def load(cfg: DataCfg) -> DataBundle:
    """Load the train and validation splits (validation carved from train when there is none), check their labels
    and classes, and the held-out test split when one is named."""
    source = detect_source(cfg)
    path = local_path(cfg, source) if source != "demo" else None
    data_content = _content(source, path)  # hashed once: a walk and a stat of every file of a folder
    splits = _load_splits(cfg, source, path, data_content)
    if source == "imagefolder" and cfg.on_bad_image == "error":  # every file's head and tail, before any work
        _check_whole_files(Path(path), data_content)
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
    identity = DataIdentity(source, path if source == "hub" else None, cfg.hub_config, data_content, train_rows.key(),
                            val_rows.key(), names)
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
    return content.content_hash(path) if source in ("parquet", "imagefolder", "disk") else None


def _loaded_content(splits: datasets.DatasetDict) -> str:
    """The bytes of the loaded splits: the hub's Arrow files in `datasets`' cache (hashed once, remembered by their
    stat), or the in-memory table of the demo; never `datasets`' fingerprint (it keys local files by path and mtime)."""
    cached = [f["filename"] for ds in splits.values() for f in ds.cache_files]
    return content.files_hash(cached) if cached else content.table_hash(splits[next(iter(splits))])


def _check_whole_files(root: Path, data_content: str) -> None:
    """DataError naming the first image file of an imagefolder that is not whole (data/wholefiles.py)."""
    broken = wholefiles.first_broken(root, data_content)
    if broken:
        file, why = broken
        raise DataError(f"data.path: {file} is {why}; {SKIP_HINT}")


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
