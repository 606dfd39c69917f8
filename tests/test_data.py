import datasets
import numpy as np
import pytest
import torch

from conftest import CLASSES, tiny_dataset
from distill import data, transforms
from distill.config import DataCfg
from distill.errors import DataError


def cfg(**kw) -> DataCfg:
    base = dict(source="auto", val_size=12, image_size=12, num_workers=0)
    return DataCfg(**(base | kw))


def test_parquet_file(parquet_file):
    bundle = data.load(cfg(path=str(parquet_file)))
    assert bundle.identity["source"] == "parquet"
    assert (len(bundle.train), len(bundle.val)) == (48, 12)
    assert bundle.class_names == CLASSES
    again = data.load(cfg(path=str(parquet_file)))
    assert again.identity == bundle.identity  # fingerprints are stable: stages can key on them
    other = data.load(cfg(path=str(parquet_file), split_seed=1))
    assert other.identity["train_fingerprint"] != bundle.identity["train_fingerprint"]


def test_imagefolder(imagefolder):
    bundle = data.load(cfg(path=str(imagefolder), val_size=0.2))
    assert bundle.identity["source"] == "imagefolder"
    assert bundle.class_names == sorted(CLASSES) and (len(bundle.train), len(bundle.val)) == (24, 6)


def test_save_to_disk_with_validation_split(tmp_path):
    d = datasets.DatasetDict({"train": tiny_dataset(30), "test": tiny_dataset(9, seed=1)})
    d.save_to_disk(str(tmp_path / "saved"))
    bundle = data.load(cfg(path=str(tmp_path / "saved"), val_split="test"))
    assert bundle.identity["source"] == "disk" and (len(bundle.train), len(bundle.val)) == (30, 9)
    with pytest.raises(DataError, match="data.val_split: no split 'validation'; splits: train, test"):
        data.load(cfg(path=str(tmp_path / "saved"), val_split="validation"))


def test_in_memory_demo_and_train_size():
    bundle = data.load(DataCfg(source="demo", val_size=0.2, train_size=500))
    assert bundle.num_classes == 10 and len(bundle.train) == 500 and len(bundle.val) == 360
    labels = np.asarray(bundle.val.with_format("numpy")["label"])
    assert np.bincount(labels, minlength=10).min() >= 30  # stratified carve


def test_items_carry_their_index(parquet_file):
    bundle = data.load(cfg(path=str(parquet_file)))
    ds = data.ImageDataset(bundle.train, "image", "label", transforms.build(cfg(), False, None, None), "train")
    item = ds[7]
    assert item["index"] == 7 and item["label"] == bundle.train[7]["label"] and item["image"].shape == (3, 12, 12)


def test_missing_column_lists_columns(parquet_file):
    with pytest.raises(DataError, match="data.image_column: no column 'img' in split 'train'; columns: image, label"):
        data.load(cfg(path=str(parquet_file), image_column="img"))


def test_missing_path_and_offline_hub(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        data.load(cfg(path=str(tmp_path / "nothing")))
    with pytest.raises(DataError, match="offline\\? point data.path at local files"):
        data.load(cfg(path="nobody/no-such-dataset"))


def test_labels_outside_range_are_caught_before_training(tmp_path):
    train = datasets.Dataset.from_dict({"image": tiny_dataset(6)["image"], "label": [0, 1, 2, 0, 1, 2]})
    val = datasets.Dataset.from_dict({"image": tiny_dataset(3)["image"], "label": [1, 7, 0]})
    datasets.DatasetDict({"train": train, "val": val}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(DataError, match=r"label 7 of sample 1 in split 'validation' is outside \[0, 3\)"):
        data.load(cfg(path=str(tmp_path / "d"), val_split="val"))


def test_undecodable_image_is_named_or_skipped():
    ds = tiny_dataset(4).cast_column("image", datasets.Image(decode=False))
    rows = ds.to_dict()
    rows["image"][2] = {"bytes": b"not an image", "path": None}
    broken = datasets.Dataset.from_dict(rows, features=ds.features).cast_column("image", datasets.Image())
    tf = transforms.build(cfg(), False, None, None)
    with pytest.raises(DataError, match="image 2 of split 'train' could not be decoded"):
        data.ImageDataset(broken, "image", "label", tf, "train")[2]
    skipping = data.ImageDataset(broken, "image", "label", tf, "train", skip_bad=True)
    batch = data.collate([skipping[i] for i in range(4)])
    assert batch["index"].tolist() == [0, 1, 3] and int(batch["skipped"]) == 1


def test_transforms_shapes_and_norms():
    img = tiny_dataset(1)["image"][0]
    for kind, train in [("cifar", True), ("cifar", False), ("imagenet", True), ("imagenet", False)]:
        out = transforms.build(cfg(transform=kind, image_size=8), train, [0.5] * 3, [0.2] * 3)(img)
        assert out.shape == (3, 8, 8) and out.dtype == torch.float32
    out = transforms.build(cfg(per_image_norm=True), False, None, None)(img)
    assert torch.allclose(out.mean(dim=(1, 2)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(out.std(dim=(1, 2)), torch.ones(3), atol=1e-4)


def test_computed_normalization_matches_numpy(parquet_file, tmp_path):
    c = cfg(path=str(parquet_file))
    bundle = data.load(c)
    norm = data.normalization(c, bundle, tmp_path / "stats.json")
    pixels = np.stack([np.asarray(r["image"].convert("RGB"), dtype=np.float64) / 255 for r in bundle.train])
    assert norm["mean"] == pytest.approx(pixels.mean(axis=(0, 1, 2)).tolist(), abs=1e-5)
    assert norm["std"] == pytest.approx(pixels.std(axis=(0, 1, 2)).tolist(), abs=1e-5)
    assert data.normalization(c, bundle, tmp_path / "stats.json") == norm  # read back, recorded once


def test_batched_normalization_equals_the_per_sample_pipeline(parquet_file):
    c = cfg(path=str(parquet_file), padding=2)
    bundle = data.load(c)
    norm = {"per_image": False, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
    train_loader, _ = data.loaders(bundle, c, batch_size=8, seed=0)
    torch.manual_seed(5)
    batch = next(iter(train_loader))
    assert batch["image"].dtype == torch.uint8
    per_sample = data.ImageDataset(bundle.train, "image", "label", transforms.build(c, True, norm["mean"],
                                                                                      norm["std"]), "train")
    torch.manual_seed(5)
    reference = next(iter(data.make_loader(per_sample, 8, True, 0, 0)))
    assert torch.equal(data.normalizer(c, norm)(batch), reference["image"])  # same draws, same values
