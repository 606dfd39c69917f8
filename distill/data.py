"""Data through Hugging Face `datasets`: sources, the validation carve, label checks, and index-carrying items."""
from __future__ import annotations

import copy
import dataclasses
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image as PILImage
from torch.utils.data import DataLoader, Dataset, default_collate

from distill import artifacts, pixels, transforms, views
from distill.config import DataCfg
from distill.errors import ConfigError, DataError

log = logging.getLogger("distill")


@dataclass
class DataBundle:
    train: datasets.Dataset
    val: datasets.Dataset
    class_names: list[str]
    image_column: str
    label_column: str
    identity: dict = field(default_factory=dict)  # what identifies these splits, for stage fingerprints
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
    if cfg.source != "auto":
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
    """Local data as an absolute path: `datasets` fingerprints a relative path together with the working directory,
    so the same files reached from another folder would otherwise look like other data (and retrain the stages)."""
    return str(Path(cfg.path).resolve()) if source in ("parquet", "imagefolder", "disk") else cfg.path


def _load_splits(cfg: DataCfg, source: str) -> datasets.DatasetDict:
    if source == "demo":
        return datasets.DatasetDict({"train": demo_dataset()})
    path = local_path(cfg, source)
    if source in ("parquet", "imagefolder", "disk") and not Path(path).exists():
        raise DataError(f"data.path: no such file or directory: {path}")
    try:
        if source == "parquet":
            if Path(path).is_file():
                return datasets.load_dataset("parquet", data_files={cfg.train_split: path})
            return datasets.load_dataset("parquet", data_dir=path)
        if source == "imagefolder":
            return datasets.load_dataset("imagefolder", data_dir=path)
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
        raise DataError(f"data.path: could not load '{path}' as {source}: {first}{hint}") from None


# ---------------------------------------------------------------- checks

def _check_columns(ds: datasets.Dataset, cfg: DataCfg, split: str) -> None:
    for key in ("image_column", "label_column"):
        col = getattr(cfg, key)
        if col not in ds.column_names:
            raise DataError(f"data.{key}: no column '{col}' in split '{split}'; columns: {', '.join(ds.column_names)}")
    if not isinstance(ds.features[cfg.image_column], datasets.Image):
        raise DataError(f"data.image_column: column '{cfg.image_column}' holds {ds.features[cfg.image_column]}, "
                        "not images")


def _labels(ds: datasets.Dataset, column: str) -> np.ndarray:
    return np.asarray(ds.with_format("numpy", columns=[column])[column])


def _class_names(ds: datasets.Dataset, cfg: DataCfg) -> list[str]:
    feature = ds.features[cfg.label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    labels = _labels(ds, cfg.label_column)
    if labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"data.label_column: column '{cfg.label_column}' holds {feature}, not integer class ids "
                        "or a ClassLabel")
    return [str(i) for i in range(int(labels.max()) + 1)]


@dataclass
class Rows:
    """Where each sample of a split came from: its row in a split of the source (the file or folder the user has),
    so that an error names a row the user can find, not an index after the validation carve."""
    rows: np.ndarray
    split: str
    path: str | None = None

    def where(self, i: int) -> str:
        return f"row {int(self.rows[i])} of split '{self.split}'" + (f" in {self.path}" if self.path else "")


def check_labels(ds: datasets.Dataset, column: str, num_classes: int, split: str, rows: Rows) -> None:
    """Every label must lie in [0, num_classes); checked on the host before any training."""
    labels = _labels(ds, column)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"data: label {labels[i]} at {rows.where(i)} ({split} sample {i}) is outside "
                        f"[0, {num_classes}) ({bad.size} such samples)")


def _carve(ds: datasets.Dataset, size, seed: int, stratify: str | None) -> tuple[datasets.DatasetDict, str | None]:
    """`datasets`' seeded split (stratified by class when it can be); the reason when stratifying failed."""
    try:
        return ds.train_test_split(test_size=size, seed=seed, stratify_by_column=stratify), None
    except ValueError as e:  # too few images per class to stratify (or fewer validation images than classes)
        if stratify is None:
            raise
        return ds.train_test_split(test_size=size, seed=seed), str(e).strip().splitlines()[0]


def _warn_empty_classes(names: list[str], present: list[int], feature, split: str) -> None:
    have = set(present)
    empty = [n for i, n in enumerate(names) if i not in have]
    if empty:
        why = "" if isinstance(feature, datasets.ClassLabel) else \
            f" (integer labels: the class count comes from the largest label, {len(names) - 1}; a stray label?)"
        log.warning(f"data: {len(empty)} of {len(names)} classes have no image in split '{split}': "
                    f"{', '.join(empty[:8])}{', ...' if len(empty) > 8 else ''}{why}")


def _warn_empty_folders(root: Path, split: str) -> None:
    """An imagefolder class folder without images is no class at all to `datasets`: say so."""
    base = root / split if (root / split).is_dir() else root
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        if not any(f.is_file() for f in folder.rglob("*")):
            log.warning(f"data: {folder} holds no images, so '{folder.name}' is not one of the classes")


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
    sibling = Path(path).with_name(f"{name}.parquet") if source == "parquet" and path and Path(path).is_file() \
        else None
    if sibling is not None and sibling.is_file():
        return datasets.load_dataset("parquet", data_files={name: str(sibling)})[name], Rows(
            np.arange(0), name, str(sibling))
    local = Path(name).expanduser()
    if local.exists():
        if path and local.resolve() == Path(path).resolve():
            raise DataError(f"data.test_split: {name} is data.path itself; the test split must be held out")
        other = dataclasses.replace(cfg, source="auto", path=str(local.resolve()), hub_config=None)
        loaded = _load_splits(other, detect_source(other))
        ds = loaded[next(iter(loaded))]
        return ds, Rows(np.arange(len(ds)), next(iter(loaded)), str(local.resolve()))
    where = f"{path} " if path else ""
    raise DataError(f"data.test_split: no split '{name}' in {where}(splits: {', '.join(splits)})"
                    + (f", and no {sibling}" if sibling else "") + "; give a split name, a path to local data, or "
                    "data.test_split=null")


def load(cfg: DataCfg) -> DataBundle:
    """Load the train and validation splits; carve validation from train when there is none."""
    source = detect_source(cfg)
    splits = _load_splits(cfg, source)
    if cfg.train_split not in splits:
        raise DataError(f"data.train_split: no split '{cfg.train_split}'; splits: {', '.join(splits)}")
    train = splits[cfg.train_split]
    _check_columns(train, cfg, cfg.train_split)
    if not isinstance(train.features[cfg.label_column], datasets.ClassLabel) and \
            train.features[cfg.label_column].dtype == "string":
        train = train.class_encode_column(cfg.label_column)
    path = local_path(cfg, source) if source != "demo" else None
    train_rows = Rows(np.arange(len(train)), cfg.train_split, path)
    if cfg.val_split is not None:
        if cfg.val_split not in splits:
            raise DataError(f"data.val_split: no split '{cfg.val_split}'; splits: {', '.join(splits)}")
        val = splits[cfg.val_split]
        _check_columns(val, cfg, cfg.val_split)
        val_rows = Rows(np.arange(len(val)), cfg.val_split, path)
    else:
        size = int(cfg.val_size) if cfg.val_size >= 1 else cfg.val_size
        if (size if isinstance(size, int) else int(size * len(train))) < 1 or \
                (isinstance(size, int) and size >= len(train)):
            raise DataError(f"data.val_size: {cfg.val_size} does not fit a training split of {len(train)} images")
        label = train.features[cfg.label_column]
        stratify = cfg.label_column if isinstance(label, datasets.ClassLabel) else None
        parts, unstratified = _carve(train, size, cfg.split_seed, stratify)
        if unstratified:
            log.warning(f"data: validation carve not stratified by class ({unstratified})")
        # the same carve of the row numbers alone (it depends only on the count, labels and seed): source rows
        index = datasets.Dataset.from_dict(
            {"row": np.arange(len(train)), cfg.label_column: _labels(train, cfg.label_column)},
            features=datasets.Features({"row": datasets.Value("int64"), cfg.label_column: label}))
        rows, _ = _carve(index, size, cfg.split_seed, stratify if not unstratified else None)
        train, val = parts["train"], parts["test"]
        train_rows, val_rows = (Rows(np.asarray(rows[k]["row"]), cfg.train_split, path) for k in ("train", "test"))
    if cfg.train_size is not None and cfg.train_size < len(train):
        train = train.select(range(cfg.train_size))
        train_rows.rows = train_rows.rows[:cfg.train_size]
    names = _class_names(train, cfg)
    present = np.unique(_labels(train, cfg.label_column)).tolist()
    if len(present) < 2:
        found = ", ".join(names[i] if 0 <= i < len(names) else str(i) for i in present) or "none"
        raise DataError(f"data: split '{cfg.train_split}' holds {len(present)} class(es) ({found}); classification "
                        "needs at least two")
    check_labels(train, cfg.label_column, len(names), "train", train_rows)
    check_labels(val, cfg.label_column, len(names), "validation", val_rows)
    _warn_empty_classes(names, present, train.features[cfg.label_column], cfg.train_split)
    if source == "imagefolder":
        _warn_empty_folders(Path(local_path(cfg, source)), cfg.train_split)
    test, test_identity = None, None
    if cfg.test_split:
        test, test_rows = _load_test(cfg, source, splits, path)
        _check_columns(test, cfg, cfg.test_split)
        feature = test.features[cfg.label_column]
        if isinstance(feature, datasets.ClassLabel) and list(feature.names) != names:
            raise DataError(f"data.test_split: its classes ({', '.join(feature.names[:5])}, ...) are not the training "
                            f"split's ({', '.join(names[:5])}, ...)")
        test_rows.rows = np.arange(len(test))
        check_labels(test, cfg.label_column, len(names), "test", test_rows)
        test_identity = {"split": cfg.test_split, "fingerprint": test._fingerprint, "rows": len(test)}
    identity = {"source": source, "path": local_path(cfg, source), "hub_config": cfg.hub_config,
                "train_fingerprint": train._fingerprint, "val_fingerprint": val._fingerprint,
                "train_rows": len(train), "val_rows": len(val), "classes": names}
    images = {split: Images(ds, cfg.image_column, cfg.label_column, split,
                            pixels.decode(ds, cfg.image_column, split, cfg.decode_mb), rows)
              for split, ds, rows in (("train", train, train_rows), ("val", val, val_rows), ("test", test, None))
              if ds is not None}
    if test is not None:
        images["test"].rows = test_rows
    return DataBundle(train, val, names, cfg.image_column, cfg.label_column, identity, images, test, test_identity)


def settings_identity(cfg: DataCfg) -> dict:
    """The data settings that change what a model sees (for stage fingerprints): not workers or decoding."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("num_workers", "decode_mb")}


# ---------------------------------------------------------------- torch side

class Images:
    """Image i of one split as a uint8 CHW tensor, and its label: sliced from the pixel array when the split was
    decoded at load time (pixels.py), else decoded from its row."""

    def __init__(self, ds: datasets.Dataset, image_column: str, label_column: str, split: str,
                 decoded: tuple[np.ndarray, dict] | None = None, rows: Rows | None = None):
        self.ds, self.column, self.split = ds, image_column, split
        self.rows = rows or Rows(np.arange(len(ds)), split)
        self.labels = _labels(ds, label_column).astype(np.int64)
        self.pixels, self.bad = decoded if decoded is not None else (None, {})

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> torch.Tensor:
        why = self.bad.get(i)
        if self.pixels is not None and why is None:
            return torch.from_numpy(self.pixels[i]).permute(2, 0, 1)
        if why is None:
            try:
                return torch.from_numpy(np.array(self.ds[i][self.column].convert("RGB"))).permute(2, 0, 1)
            except Exception as e:  # noqa: BLE001 - decoding errors come in many types
                why = f"{type(e).__name__}: {e}"
        raise DataError(f"data: the image at {self.rows.where(i)} ({self.split} sample {i}) could not be decoded "
                        f"({why})")

    def encoded(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        """The image's JPEG file bytes and its (height, width) from the header, not decoded: what
        data.renderer=device decodes on the device for a split too large to keep decoded there."""
        if getattr(self, "_raw", None) is None:
            self._raw = self.ds.select_columns([self.column]).cast_column(self.column, datasets.Image(decode=False))
        value = self._raw[i][self.column]
        raw = value["bytes"] or Path(value["path"]).read_bytes()
        try:
            with PILImage.open(io.BytesIO(raw)) as img:
                (w, h), fmt = img.size, img.format
        except Exception as e:  # noqa: BLE001 - unreadable files come in many types
            raise DataError(f"data: the image at {self.rows.where(i)} ({self.split} sample {i}) could not be "
                            f"read ({type(e).__name__}: {e})") from None
        if fmt != "JPEG":  # a setting that cannot work, not a bad image: data.on_bad_image=skip must not drop it
            raise ConfigError(f"data.renderer: device decodes JPEG on the device, and the image at "
                              f"{self.rows.where(i)} is {fmt}; let the split be decoded into memory (data.decode_mb) "
                              "or use data.renderer=cpu")
        return np.frombuffer(raw, dtype=np.uint8), (h, w)

    def view_source(self, i: int) -> tuple[tuple[int, int], np.ndarray | None]:
        """What data.renderer=device needs of image i, without decoding it here: its (height, width), and its JPEG
        file when the split is not kept decoded. DataError, naming the row, for an image that failed to decode."""
        if i in self.bad:
            self.image(i)  # raises, naming the row
        if self.pixels is not None:
            return tuple(self.pixels.shape[1:3]), None
        jpeg, hw = self.encoded(i)
        return hw, jpeg

    def fetch(self, i: int, skip_bad: bool) -> torch.Tensor | None:
        """`image(i)`, or None for an image that fails to decode when `skip_bad` (data.on_bad_image=skip)."""
        try:
            return self.image(i)
        except DataError as e:
            if skip_bad:
                return None
            raise DataError(f"{e}; set data.on_bad_image=skip to leave it out of every stage") from None

    def subset(self, n: int) -> "Images":
        """The first n images (for statistics)."""
        out = copy.copy(self)  # shares the pixels; rows beyond n are simply never asked for
        out.labels = self.labels[:n]
        return out


class SharedEpoch:
    """The training epoch in shared memory: loader workers that persist across epochs read the epoch the main
    process set, instead of the copy they were started with (written by hand: DataLoader has no epoch hook)."""

    def __init__(self):
        self._value = torch.zeros((), dtype=torch.int64).share_memory_()

    def set(self, epoch: int) -> None:
        self._value.fill_(epoch)

    def get(self) -> int:
        return int(self._value)


class ImageDataset(Dataset):
    """Items {'image' (uint8 CHW), 'label', 'index'}; `index` is the row in the split (the cache keys soft labels
    by it). Training items get a random view drawn from (seed, epoch, index), a pure function, so that a resumed run
    sees the views an uninterrupted one would; evaluation items get the eval view. With skip_bad, an image that
    fails to decode yields None, which `collate` drops and counts."""

    def __init__(self, images: Images, cfg: DataCfg, train: bool, seed: int = 0, skip_bad: bool = False,
                 pixels: bool | None = None):
        self.images, self.cfg, self.train, self.seed, self.skip_bad = images, cfg, train, seed, skip_bad
        self.epoch = SharedEpoch()
        # data.renderer=device: items carry the view's parameters, rendered per batch on the device (DeviceViews)
        self.pixels = cfg.renderer == "cpu" if pixels is None else pixels

    def set_epoch(self, epoch: int) -> None:
        self.epoch.set(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        if not self.pixels:
            return self._params_only(i)
        img = self.images.fetch(i, self.skip_bad)
        if img is None:
            return None
        params = views.draw(self.cfg, views.train_rng(self.seed, self.epoch.get(), i), tuple(img.shape[-2:])) \
            if self.train else views.EVAL_VIEW
        return {"image": views.apply(img, params, self.cfg), "label": int(self.images.labels[i]), "index": i}

    def _params_only(self, i: int) -> dict | None:
        try:
            hw, jpeg = self.images.view_source(i)
        except DataError as e:
            if self.skip_bad:
                return None
            raise DataError(f"{e}; set data.on_bad_image=skip to leave it out of every stage") from None
        params = views.draw(self.cfg, views.train_rng(self.seed, self.epoch.get(), i), hw) if self.train \
            else views.EVAL_VIEW
        item = {"view": torch.from_numpy(params), "label": int(self.images.labels[i]), "index": i,
                "split": SPLITS.index(self.images.split)}
        return item if jpeg is None else item | {"jpeg": jpeg}  # not decoded at load time: decoded on the device


SPLITS = ("train", "val", "test")  # a params-only batch names its split, so the renderer knows which pixels


def device_views(cfg: DataCfg, bundle: DataBundle, device) -> dict | None:
    """data.renderer=device, by SPLITS index: a split decoded into memory is kept on the device (views.DeviceViews);
    any other is decoded there per batch from its JPEG files (views.JpegViews). None for the cpu renderer."""
    if cfg.renderer != "device":
        return None
    if str(device) not in bundle.on_device:  # each split copied to the device once per run, not once per stage
        bundle.on_device[str(device)] = {
            SPLITS.index(name): views.DeviceViews(images.pixels, cfg, device) if images.pixels is not None
            else views.JpegViews(cfg, device) for name, images in bundle.images.items()}
    return bundle.on_device[str(device)]


def collate(items: list) -> dict:
    """default_collate, dropping (and counting) the None of a skipped image; JPEG files stay a list."""
    kept = [it for it in items if it is not None]
    jpeg = [it.pop("jpeg") for it in kept] if kept and "jpeg" in kept[0] else None
    batch = default_collate(kept) if kept else {"image": torch.empty(0), "label": torch.empty(0, dtype=torch.long),
                                                "index": torch.empty(0, dtype=torch.long)}
    batch["skipped"] = torch.tensor(len(items) - len(kept))
    if jpeg is not None:
        batch["jpeg"] = jpeg  # numpy arrays: accelerate leaves them on the host, where the decoder reads them
    return batch


def make_loader(dataset: Dataset, batch_size: int, train: bool, num_workers: int, seed: int) -> DataLoader:
    """Workers persist across epochs; a training dataset's epoch reaches them through shared memory (SharedEpoch)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train, num_workers=num_workers,
                      collate_fn=collate, persistent_workers=num_workers > 0,
                      pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(seed))


def normalization(cfg: DataCfg, bundle: DataBundle, record: Path | None = None) -> dict:
    """Mean/std from the recipe, or computed once from the training split (eval view, first `stats_images`
    images) and recorded in `record`, keyed by the split's fingerprint so a later run reads it back."""
    if cfg.per_image_norm:
        return {"per_image": True, "mean": None, "std": None}
    if cfg.mean is not None:
        return {"per_image": False, "mean": list(cfg.mean), "std": list(cfg.std)}
    key = artifacts.fingerprint([bundle.identity["train_fingerprint"], cfg.image_size, cfg.transform,
                                 cfg.crop_pct, cfg.stats_images])
    saved = artifacts.read_json(record) if record else None
    if saved and saved.get("key") == key:
        return saved["normalization"]
    subset = bundle.images["train"].subset(min(cfg.stats_images, len(bundle.train)))
    ds = ImageDataset(subset, cfg, train=False, skip_bad=True, pixels=True)
    mean, std = transforms.channel_stats(make_loader(ds, 256, False, cfg.num_workers, 0))
    norm = {"per_image": False, "mean": mean, "std": std}
    log.info(f"data: computed mean {mean} std {std} from {len(subset)} training images")
    if record:
        record.parent.mkdir(parents=True, exist_ok=True)
        artifacts.write_json(record, {"key": key, "normalization": norm})
    return norm


def loaders(bundle: DataBundle, cfg: DataCfg, batch_size: int, seed: int,
            eval_batch_size: int | None = None) -> tuple[DataLoader, DataLoader]:
    """Train loader (random views, shuffled, drop_last) and validation loader (eval view, in order), both
    yielding uint8 images: each batch becomes the network input on the device (transforms.ToInput)."""
    skip = cfg.on_bad_image == "skip"
    train = ImageDataset(bundle.images["train"], cfg, train=True, seed=seed, skip_bad=skip)
    val = ImageDataset(bundle.images["val"], cfg, train=False, skip_bad=skip)
    return (make_loader(train, batch_size, True, workers(cfg, bundle.images["train"]), seed),
            make_loader(val, eval_batch_size or batch_size, False, workers(cfg, bundle.images["val"]), seed))


def workers(cfg: DataCfg, images: Images | None = None) -> int:
    """Loader workers: data.num_workers, or none when a decoded split's views are rendered on the device (its items
    are a few numbers; items that carry JPEG files keep the workers)."""
    return 0 if cfg.renderer == "device" and (images is None or images.pixels is not None) else cfg.num_workers

