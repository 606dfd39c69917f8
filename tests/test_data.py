import hashlib
import json
import logging
import os
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from conftest import CLASSES, ROOT, extension_file, run_cli, run_here, tiny_dataset, tiny_images, tiny_overrides
from distill import config, data, files
from distill.store import layout
from distill.store.records import Normalization
from distill.data import pixels, transforms, views
from distill.config import DataCfg
from distill.errors import DataError


def cfg(**kw) -> DataCfg:
    base = dict(source="auto", val_size=12, image_size=12, num_workers=0)
    return DataCfg(**(base | kw))


def test_parquet_file(parquet_file):
    bundle = data.load(cfg(path=str(parquet_file)))
    assert bundle.identity.source == "parquet"
    assert (len(bundle.train), len(bundle.val)) == (48, 12)
    assert bundle.class_names == CLASSES
    again = data.load(cfg(path=str(parquet_file)))
    assert again.identity == bundle.identity  # fingerprints are stable: stages can key on them
    other = data.load(cfg(path=str(parquet_file), split_seed=1))
    assert other.identity.train != bundle.identity.train


def test_imagefolder(imagefolder):
    bundle = data.load(cfg(path=str(imagefolder), val_size=0.2))
    assert bundle.identity.source == "imagefolder"
    assert bundle.class_names == sorted(CLASSES) and (len(bundle.train), len(bundle.val)) == (24, 6)


def test_save_to_disk_with_validation_split(tmp_path):
    d = datasets.DatasetDict({"train": tiny_dataset(30), "test": tiny_dataset(9, seed=1)})
    d.save_to_disk(str(tmp_path / "saved"))
    bundle = data.load(cfg(path=str(tmp_path / "saved"), val_split="test"))
    assert bundle.identity.source == "disk" and (len(bundle.train), len(bundle.val)) == (30, 9)
    with pytest.raises(DataError, match="data.val_split: no split 'validation'; splits: train, test"):
        data.load(cfg(path=str(tmp_path / "saved"), val_split="validation"))


def test_in_memory_demo_and_train_size():
    bundle = data.load(DataCfg(source="demo", val_size=0.2, train_size=500))
    assert bundle.num_classes == 10 and len(bundle.train) == 500 and len(bundle.val) == 360
    labels = np.asarray(bundle.val.with_format("numpy")["label"])
    assert np.bincount(labels, minlength=10).min() >= 30  # stratified carve


def test_items_carry_their_index(parquet_file):
    bundle = data.load(cfg(path=str(parquet_file)))
    ds = data.ImageDataset(bundle.images["train"], cfg(), train=False)
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
    with pytest.raises(DataError, match=r"label 7 at row 1 of split 'val' in .*/d \(validation sample 1\) is outside "
                                        r"\[0, 3\)"):
        data.load(cfg(path=str(tmp_path / "d"), val_split="val"))


def _broken_dataset(bad: int = 2) -> datasets.Dataset:
    ds = tiny_dataset(4).cast_column("image", datasets.Image(decode=False))
    rows = ds.to_dict()
    rows["image"][bad] = {"bytes": b"not an image", "path": None}
    return datasets.Dataset.from_dict(rows, features=ds.features).cast_column("image", datasets.Image())


@pytest.mark.parametrize("decode_mb", [0, 64])
@pytest.mark.parametrize("bad", [0, 2])  # row 0 is where the decoder reads the split's image size
def test_undecodable_image_is_named_or_skipped(decode_mb, bad):
    broken = _broken_dataset(bad)
    decoded = pixels.decode(broken, "image", "train", decode_mb)
    assert (decoded is None) == (decode_mb == 0)
    images = data.Images(broken, "image", "label", "train", decoded)
    with pytest.raises(DataError, match=f"image at row {bad} of split 'train' \\(train sample {bad}\\) could not be "
                                        "decoded .*on_bad_image=skip"):
        data.ImageDataset(images, cfg(), train=True)[bad]
    skipping = data.ImageDataset(images, cfg(), train=True, skip_bad=True)
    batch = data.collate([skipping[i] for i in range(4)])
    assert batch.index.tolist() == [i for i in range(4) if i != bad] and int(batch.skipped) == 1


def test_decoded_pixels_equal_per_sample_decoding(parquet_file):
    bundle = data.load(cfg(path=str(parquet_file)))
    images = bundle.images["train"]
    assert images.pixels is not None and images.pixels.shape == (len(bundle.train), 12, 12, 3)
    per_sample = data.Images(bundle.train, "image", "label", "train", None)
    for i in range(len(bundle.train)):
        assert torch.equal(images.image(i), per_sample.image(i))
    assert np.array_equal(images.labels, np.asarray(bundle.train["label"]))


def test_images_of_different_sizes_are_decoded_per_sample():
    mixed = datasets.concatenate_datasets([tiny_dataset(3, size=12), tiny_dataset(3, size=10)])
    assert pixels.decode(mixed, "image", "train", 64) is None
    assert pixels.decode(tiny_dataset(3), "image", "train", 0.0001) is None  # over the memory budget


def test_views_shapes_and_norms():
    img = data.Images(tiny_dataset(1), "image", "label", "train").image(0)
    for kind, train in [("cifar", True), ("cifar", False), ("imagenet", True), ("imagenet", False)]:
        c = cfg(transform=kind, image_size=8)
        p = views.draw(c, views.train_rng(0, 0, 0), (12, 12)) if train else views.EVAL_VIEW
        out = transforms.ToInput(c, [0.5] * 3, [0.2] * 3)(data.Views(image=views.apply(img, p, c)))
        assert out.shape == (3, 8, 8) and out.dtype == torch.float32
    out = transforms.ToInput(cfg(per_image_norm=True), None, None)(data.Views(image=img))
    assert torch.allclose(out.mean(dim=(1, 2)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(out.std(dim=(1, 2)), torch.ones(3), atol=1e-4)


def test_computed_normalization_matches_numpy(parquet_file, tmp_path):
    c = cfg(path=str(parquet_file))
    bundle = data.load(c)
    norm = layout.normalization(c, bundle, tmp_path / "stats.json")
    pixels = np.stack([np.asarray(r["image"].convert("RGB"), dtype=np.float64) / 255 for r in bundle.train])
    assert list(norm.mean) == pytest.approx(pixels.mean(axis=(0, 1, 2)).tolist(), abs=1e-5)
    assert list(norm.std) == pytest.approx(pixels.std(axis=(0, 1, 2)).tolist(), abs=1e-5)
    assert layout.normalization(c, bundle, tmp_path / "stats.json") == norm  # read back, recorded once


def test_training_views_are_a_pure_function_of_seed_epoch_and_index(parquet_file):
    c = cfg(path=str(parquet_file), padding=2)
    bundle = data.load(c)
    ds = data.ImageDataset(bundle.images["train"], c, train=True, seed=3)
    norm = Normalization((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    ds.set_epoch(4)
    batch = next(iter(data.make_loader(ds, 8, True, 2, 0)))  # drawn in worker processes
    x = transforms.ToInput(c, norm.mean, norm.std)(batch)
    for row, i in enumerate(batch.index.tolist()):
        p = views.draw(c, views.train_rng(3, 4, i), (12, 12))
        want = transforms.ToInput(c, norm.mean, norm.std)(
            data.Views(image=views.apply(bundle.images["train"].image(i), p, c)))
        assert torch.equal(x[row], want)
    ds.set_epoch(5)
    assert not all(torch.equal(ds[i]["image"], batch.image[r]) for r, i in enumerate(batch.index.tolist()))


def test_persistent_workers_see_each_epochs_views(parquet_file):
    """Workers started once serve every epoch with that epoch's views (the epoch reaches them in shared memory)."""
    c = cfg(path=str(parquet_file))
    bundle = data.load(c)
    ds = data.ImageDataset(bundle.images["train"], c, train=True, seed=3)
    loader = data.make_loader(ds, 8, True, 2, 0)
    assert loader.persistent_workers
    workers = None
    for epoch in range(3):
        ds.set_epoch(epoch)
        for batch in loader:
            for j, i in enumerate(batch.index.tolist()):
                assert torch.equal(batch.image[j], ds[i]["image"]), (epoch, i)  # this epoch's view of image i
        if workers is None:
            workers = loader._iterator._workers
        assert loader._iterator._workers is workers  # the same processes, not restarted
    views_by_epoch = {e: (ds.set_epoch(e), ds[0]["image"])[1] for e in range(3)}
    assert not all(torch.equal(views_by_epoch[0], v) for v in views_by_epoch.values())  # views do change


@pytest.mark.parametrize("form", ["split name", "file name", "absolute path", "relative path"])
def test_every_documented_form_of_the_test_split_loads_it(tmp_path, monkeypatch, form):
    """data.test_split takes a split name, the sibling <name>.parquet of a parquet data.path, or a path to local
    data; a path to a .parquet file used to stop with a traceback (Invalid name '.../test.parquet.parquet')."""
    train = tmp_path / "d" / "train.parquet"
    train.parent.mkdir()
    tiny_dataset(30).to_parquet(str(train))
    tiny_dataset(12, seed=3).to_parquet(str(train.with_name("test.parquet")))
    monkeypatch.chdir(tmp_path)
    value = {"split name": "test", "file name": "test.parquet", "absolute path": str(train.with_name("test.parquet")),
             "relative path": "d/test.parquet"}[form]
    cfg = config.validate({"data": {"path": str(train), "val_size": 6, "test_split": value}}).data
    assert len(data.load(cfg).test) == 12


def _restore_mtime(path, stat):
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_replaced_image_file_with_the_same_size_and_mtime_is_read_anew_and_changes_the_identity(tmp_path):
    """`cp -p`, `rsync -a` and `tar x` keep a file's size and mtime, which is all `datasets`' cache looks at: a
    replaced file must be read anew (the new pixels) and change the data's identity (so the stages retrain)."""
    root = tmp_path / "folder"
    images, labels = tiny_images(12)
    for i, (img, label) in enumerate(zip(images, labels)):
        (root / "train" / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        img.save(root / "train" / CLASSES[label] / f"{i}.bmp")  # uncompressed: other pixels, same size
    cfg = config.validate({"data": {"path": str(root), "val_size": 3, "decode_mb": 0}}).data
    before = data.load(cfg)
    old_pixels = [before.images["train"].image(i) for i in range(len(before.train))]
    first = next((root / "train").rglob("*.bmp"))
    stat = first.stat()
    raw = bytearray(first.read_bytes())
    raw[-300:] = bytes(255 - b for b in raw[-300:])  # other pixels, in place
    first.write_bytes(bytes(raw))
    _restore_mtime(first, stat)
    assert first.stat().st_size == stat.st_size and first.stat().st_mtime_ns == stat.st_mtime_ns
    after = data.load(cfg)
    assert after.identity != before.identity  # what every stage's fingerprint takes
    changed = [i for i in range(len(after.train)) if not torch.equal(after.images["train"].image(i), old_pixels[i])]
    assert len(changed) == 1  # the new pixels of that one image


def test_a_replaced_parquet_file_with_the_same_mtime_changes_the_data_and_the_test_split(tmp_path):
    train, test = tmp_path / "train.parquet", tmp_path / "test.parquet"
    tiny_dataset(30, seed=0).to_parquet(str(train))
    tiny_dataset(12, seed=1).to_parquet(str(test))
    cfg = config.validate({"data": {"path": str(train), "val_size": 6, "test_split": "test", "decode_mb": 0}}).data
    before = data.load(cfg)
    old_first = before.images["train"].image(0)
    for path, seed in ((train, 5), (test, 6)):
        stat = path.stat()
        tiny_dataset(30 if path == train else 12, seed=seed).to_parquet(str(path))
        _restore_mtime(path, stat)
    after = data.load(cfg)
    assert after.identity != before.identity
    assert after.test_identity != before.test_identity  # a test.json keyed by the old one is scored again
    assert not torch.equal(after.images["train"].image(0), old_first)  # read anew, not datasets' old cache
    assert data.load(cfg).identity == after.identity  # unchanged data: the same identity (hashed once, remembered)


def test_a_save_to_disk_folder_with_string_labels_keeps_its_identity_across_runs(tmp_path):
    """Encoding string labels makes `datasets` write a cache-HASH.arrow into the saved folder: not the user's data,
    so the second run's identity is the first's (no stage retrained for it)."""
    images, labels = tiny_images(30)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    datasets.Dataset.from_dict({"image": images, "label": [CLASSES[i] for i in labels]},
                               features=features).save_to_disk(str(tmp_path / "saved"))
    first = data.load(cfg(path=str(tmp_path / "saved")))
    assert any(tmp_path.glob("saved/cache-*.arrow"))
    assert data.load(cfg(path=str(tmp_path / "saved"))).identity == first.identity


def test_the_image_file_check_finds_a_truncated_png_and_reads_an_unchanged_folder_once(tmp_path):
    from distill.data import content, wholefiles
    root = tmp_path / "folder"
    (root / "a").mkdir(parents=True)
    for i, img in enumerate(tiny_images(3)[0]):
        img.save(root / "a" / f"{i}.png")
    whole = content.content_hash(root)
    assert wholefiles.first_broken(root, whole) is None
    cut = root / "a" / "1.png"
    cut.write_bytes(cut.read_bytes()[:-100])
    assert wholefiles.first_broken(root, whole) is None  # the verdict of that content: the files are not read again
    file, why = wholefiles.first_broken(root, content.content_hash(root))
    assert file == cut and why.startswith("a PNG without its IEND chunk (truncated?), and it does not decode (")


def test_a_touched_data_file_keeps_every_stage_reused(tmp_path):
    """The data's identity is its bytes: a new mtime on the same bytes (`touch`) retrains no model and relabels no
    cache (`datasets`' fingerprint, which keys a file by its path and mtime, is in no identity)."""
    path = tmp_path / "tiny.parquet"
    tiny_dataset().to_parquet(str(path))
    args = tiny_overrides(path, tmp_path / "runs", epochs=1) + [
        f"cache.root={tmp_path / 'cache'}", "stage=all", "cache.views=1", "student.epochs=1",
        "student.batch_size=16", "student.baseline=true"]
    first = run_here(*args)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "runs" / "tiny"
    metas = {stage: (run / stage / "meta.json").read_bytes() for stage in ("teacher", "student", "baseline")}
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 3600 * 10**9))
    again = run_here(*args)
    assert again.returncode == 0, again.stderr
    assert {stage: (run / stage / "meta.json").read_bytes() for stage in metas} == metas  # nothing retrained
    assert json.loads((run / "cache.json").read_text())["reused"]
    from distill.data import content
    builds = Path(content.cache_dir(content.content_hash(path))) / "parquet"
    assert len(list(builds.iterdir())) == 1  # datasets' copy prepared for the old mtime is gone, not kept beside


@pytest.mark.parametrize("form", ["byte copy", "the training file by its path"])
def test_a_test_split_sharing_images_with_training_is_refused_naming_both(tmp_path, form):
    """Held out means disjoint by content: a sibling split that is a copy of the training file, or the training file
    itself reached through another form of path, would publish a 'test' top-1 measured on training images."""
    folder = tmp_path / "d"
    folder.mkdir()
    tiny_dataset(30, seed=0).to_parquet(str(folder / "train.parquet"))
    if form == "byte copy":
        (folder / "test.parquet").write_bytes((folder / "train.parquet").read_bytes())
        raw = {"path": str(folder / "train.parquet"), "test_split": "test"}
    else:
        raw = {"path": str(folder), "test_split": str(folder / "train.parquet")}
    cfg = config.validate({"data": {**raw, "val_size": 6}}).data
    with pytest.raises(DataError, match=r"data.test_split: its image at row \d+ of split '\w+' in .* is also the "
                                        r"(train|validation) image at row \d+ of split 'train' in .*; the test split "
                                        "must share no image with training or validation"):
        data.load(cfg)


def test_a_test_split_labelled_by_name_gets_the_training_ids_and_an_unknown_name_is_named(tmp_path):
    train, test = tmp_path / "train.parquet", tmp_path / "test.parquet"
    tiny_dataset(30).to_parquet(str(train))
    images, labels = tiny_images(6, seed=2)
    datasets.Dataset.from_dict({"image": images, "label": [CLASSES[y] for y in labels]},
                               features=datasets.Features({"image": datasets.Image(),
                                                           "label": datasets.Value("string")})).to_parquet(str(test))
    cfg = config.validate({"data": {"path": str(train), "val_size": 6, "test_split": "test"}}).data
    bundle = data.load(cfg)
    assert bundle.images["test"].labels.tolist() == labels  # by name, in the training split's order
    datasets.Dataset.from_dict({"image": images[:1], "label": ["purple"]}).to_parquet(str(test))
    with pytest.raises(DataError, match=r"data.test_split: labels 'purple' are no class of the training split"):
        data.load(cfg)


def test_a_test_split_of_another_image_size_is_said_once(tmp_path, caplog):
    train, test = tmp_path / "train.parquet", tmp_path / "test.parquet"
    tiny_dataset(30, size=12).to_parquet(str(train))
    tiny_dataset(6, size=24, seed=2).to_parquet(str(test))
    cfg = config.validate({"data": {"path": str(train), "val_size": 6, "test_split": "test", "image_size": 12}}).data
    with caplog.at_level("WARNING", logger="distill"):
        data.load(cfg)
    assert [r.message for r in caplog.records].count("data.test_split: its images are 24x24, the training split's "
                                                     "12x12; the eval view resizes them to the network's input") == 1


@pytest.mark.parametrize("decode_mb", [4096, 0])  # decoded into memory at load, or kept encoded (too large)
def test_an_undecodable_test_image_stops_the_run_at_load_not_after_training(tmp_path, decode_mb):
    train, test = tmp_path / "train.parquet", tmp_path / "test.parquet"
    tiny_dataset(30, seed=9).to_parquet(str(train))  # other images than the test split's
    _broken_dataset(bad=2).to_parquet(str(test))
    cfg = config.validate({"data": {"path": str(train), "val_size": 6, "test_split": "test",
                                    "decode_mb": decode_mb}}).data
    with pytest.raises(DataError, match=r"data: the image at row 2 of split 'test' in .*test.parquet \(test sample 2\) "
                                        r"could not be decoded .*; set data.on_bad_image=skip to leave it out"):
        data.load(cfg)


def test_the_content_index_forgets_a_path_that_no_longer_exists(tmp_path, monkeypatch):
    """The index of data hashes grows with the data sets that exist, not with every path ever hashed; a verdict
    (keyed by name, not path) stays."""
    import json

    from distill.data import content
    index = tmp_path / "index.json"
    monkeypatch.setattr(content, "_index", lambda: index)
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    a.write_bytes(b"first")
    b.write_bytes(b"second")
    content.content_hash(a)
    content.remember("disjoint", "some-key")
    content.content_hash(b)
    assert {str(a), str(b), "disjoint"} <= set(json.loads(index.read_text()))
    a.unlink()
    b.write_bytes(b"second, changed")  # hashed anew: the index is written again
    content.content_hash(b)
    kept = json.loads(index.read_text())
    assert str(a) not in kept and str(b) in kept and kept["disjoint"] == {"some-key": True}


def test_a_split_is_decoded_once_for_good_and_memory_mapped_on_the_next_start(parquet_file, monkeypatch):
    """Local data's decoded pixels live in its content-keyed cache: the second load reads no image."""
    from distill.data import pixels
    cfg = config.validate({"data": {"path": str(parquet_file), "val_size": 6}}).data
    first = data.load(cfg)
    monkeypatch.setattr(pixels, "_decode", lambda *a: pytest.fail("decoded again"))
    second = data.load(cfg)
    for split in ("train", "val"):
        a, b = first.images[split].pixels, second.images[split].pixels
        assert isinstance(b, np.memmap) and np.array_equal(a, b), split


def test_a_split_over_the_decode_budget_is_decoded_once_the_budget_is_raised(tmp_path):
    """Over data.decode_mb is no verdict kept for good: a larger budget decodes the split (into the store)."""
    path = tmp_path / "fresh.parquet"  # bytes no other test has: nothing of it in the store yet
    tiny_dataset(40, seed=4242).to_parquet(str(path))
    tight = config.validate({"data": {"path": str(path), "val_size": 6, "decode_mb": 0.0001}}).data
    assert data.load(tight).images["train"].pixels is None
    roomy = config.validate({"data": {"path": str(path), "val_size": 6}}).data
    assert isinstance(data.load(roomy).images["train"].pixels, np.memmap)


def test_a_decode_killed_midway_leaves_no_file_behind_for_good(tmp_path):
    """The half-written pixel file of a process that died is deleted by the next decode of that split."""
    from distill.data import pixels
    ds = tiny_dataset(20, seed=77)
    leftover = tmp_path / "key-image.999999999.npy"  # no such process
    leftover.write_bytes(b"half a decode")
    got, bad = pixels.decode(ds, "image", "train", 64, tmp_path / "key-image")
    assert not leftover.exists() and got.shape == (20, 12, 12, 3) and not bad


def test_the_remembered_data_hashes_are_sealed(tmp_path, monkeypatch, caplog):
    """The index of content hashes (a file's bytes remembered by its stat) names the data's identity: an entry
    changed by hand would have named other bytes as this file's, silently (it was plain JSON). A changed index is
    only a memo: it is set aside with a warning and the bytes are hashed again."""
    from distill.data import content

    monkeypatch.setattr(content, "_index", lambda: tmp_path / "index.json")
    data = tmp_path / "data.bin"
    data.write_bytes(b"some bytes")
    right = content.content_hash(data)
    assert right == hashlib.sha256(b"\0" + str(len(b"some bytes")).encode() + b"\0some bytes").hexdigest()
    assert content.content_hash(data) == right  # remembered, and read back
    index = json.loads((tmp_path / "index.json").read_text())
    index[str(data.resolve())]["sha256"] = "0" * 64
    (tmp_path / "index.json").write_text(json.dumps(index))
    with caplog.at_level(logging.WARNING, logger="distill"):
        assert content.content_hash(data) == right
    assert "index.json was changed after it was written; hashing the data again" in caplog.text
    assert files.is_sealed(json.loads((tmp_path / "index.json").read_text()))  # written afresh, sealed


TOY_SOURCE = ROOT / "distill" / "data" / "sources" / "toysource.py"
TOY_SOURCE_TEXT = '''"""data.source=toysource: written by tests/test_data.py (removed after it). A .toy file holds one
class id a line; each is drawn as a flat 12x12 image of that class's colour."""
from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from distill.data.sources import Source
from distill.registry import SOURCES


@SOURCES.register("toysource", help="a .toy file: one class id a line, each a flat image of its class's colour")
class Toy(Source):
    local = True  # a local file: made absolute, must exist, identified by its bytes
    rank = 5  # data.source=auto asks it before parquet, imagefolder and the hub

    def detects(self, path):
        return bool(path) and Path(path).suffix == ".toy" and Path(path).is_file()

    def load(self, cfg, path, data_content):
        labels = [int(word) for word in Path(path).read_text().split()]
        images = [Image.fromarray(np.full((12, 12, 3), 60 * label + i % 5, np.uint8)) for i, label in enumerate(labels)]
        features = datasets.Features({"image": datasets.Image(),
                                     "label": datasets.ClassLabel(names=["red", "green", "blue"])})
        split = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
        return datasets.DatasetDict({cfg.train_split: split})
'''


def test_a_data_source_added_as_one_file_is_detected_loaded_identified_by_its_bytes_and_listed(tmp_path):
    """Adding a data source is one file in distill/data/sources/ (as a method is one file in distill/methods/): a
    Source registered by name is a data.source choice, data.source=auto detects its files, its splits get every
    check the built-in sources' get, local data is identified by its bytes, and --help lists it."""
    from distill.data import content
    from distill.registry import SOURCES

    toy = tmp_path / "digits.toy"
    toy.write_text("\n".join(str(i % 3) for i in range(30)))
    with extension_file(TOY_SOURCE, TOY_SOURCE_TEXT, SOURCES):
        assert "toysource" in SOURCES.names()
        for source in ("auto", "toysource"):
            bundle = data.load(config.validate({"data": {"source": source, "path": str(toy), "val_size": 6}}).data)
            assert (len(bundle.train), len(bundle.val), bundle.class_names) == (24, 6, ["red", "green", "blue"])
            assert bundle.identity.source == "toysource" and bundle.identity.content == content.content_hash(toy)
            assert bundle.images["train"].image(0).shape[-2:] == (12, 12)
        with pytest.raises(DataError, match=r"^data\.path: no such file or directory: .*gone\.toy$"):
            data.load(cfg(source="toysource", path=str(tmp_path / "gone.toy")))
        helptext = run_cli("--help", cwd=ROOT).stdout
        assert ("| toysource: a .toy file: one class id a line, each a flat image of its class's colour" in
                helptext.split("data.source", 1)[1].splitlines()[0])
    assert "toysource" not in SOURCES.names()
    with pytest.raises(Exception, match=r"^data\.source: 'toysource' is not one of auto, demo, hub, parquet, "):
        config.validate({"data": {"source": "toysource", "path": str(toy)}})
