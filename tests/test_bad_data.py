"""Bad data files, each stopped at data load, before any training, with one line that names the file and says what
to do: a label beyond its ClassLabel's names, an empty or non-parquet file, a test split of other classes; and a
damaged features file of the cache named as the file it is."""
import json

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import cache_overrides, run_here, tiny_dataset, tiny_images, tiny_overrides
from distill import config, data
from distill.errors import DataError

TEN = [f"c{i}" for i in range(10)]


def _parquet(path, n: int, names: list[str], labels: list[int] | None = None, seed: int = 0, plain: bool = False):
    """n tiny images labelled `labels` (default: cycling over the classes), with a ClassLabel of `names` (a plain
    int64 column when `plain`), written as parquet without `datasets` checking the labels."""
    images, _ = tiny_images(n, seed=seed)
    label = datasets.Value("int64") if plain else datasets.ClassLabel(names=names)
    ds = datasets.Dataset.from_dict({"image": images, "label": [i % len(names) for i in range(n)]},
                                    features=datasets.Features({"image": datasets.Image(), "label": label}))
    ds.to_parquet(str(path))
    if labels is not None:
        table = pq.read_table(path)
        i = table.schema.get_field_index("label")
        pq.write_table(table.set_column(i, table.schema.field(i), pa.array(labels, table.schema.field(i).type)), path)
    return path


def _load(path, **kw):
    return data.load(config.validate({"data": {"path": str(path), "val_size": 10, **kw}}).data)


@pytest.mark.parametrize("bad", [12, 10, -1])
def test_a_class_label_beyond_its_names_is_named_with_its_row_value_class_count_and_file(tmp_path, bad):
    labels = [i % 10 for i in range(40)]
    labels[7] = bad
    path = _parquet(tmp_path / "bad.parquet", 40, TEN, labels)
    want = (f"data: label {bad} at row 7 of split 'train' in {path} (train sample 7) is outside [0, 10), the ids of "
            "the 10 classes (1 such sample(s)); correct or remove those rows")
    with pytest.raises(DataError) as e:
        _load(path)
    assert str(e.value) == want
    with pytest.raises(DataError) as e:  # also when the training split is the first 20 rows
        _load(path, train_size=20)
    assert str(e.value) == want


def test_a_bad_label_stops_the_command_line_before_any_training(tmp_path):
    labels = [i % 10 for i in range(40)]
    labels[7] = 12
    path = _parquet(tmp_path / "bad.parquet", 40, TEN, labels)
    r = run_here(*tiny_overrides(path, tmp_path / "runs"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: data: label 12 at row 7 of split 'train' in {path}")
    assert not (tmp_path / "runs" / "tiny" / "teacher").exists()


def test_a_plain_int_test_label_beyond_the_training_classes_is_named(tmp_path):
    train = _parquet(tmp_path / "train.parquet", 30, TEN[:3])
    test = _parquet(tmp_path / "test.parquet", 6, TEN[:3], labels=[0, 1, 2, 0, 5, 1], seed=1, plain=True)
    with pytest.raises(DataError) as e:
        _load(train, test_split="test")
    assert str(e.value) == (f"data: label 5 at row 4 of split 'test' in {test} (test sample 4) is outside [0, 3), the "
                            "ids of the 3 classes (1 such sample(s)); correct or remove those rows")


def _empty(path, kind: str):
    """A parquet file with the right columns and 0 rows: no row group (`datasets`), or one empty row group."""
    tiny_dataset(6).to_parquet(str(path))
    if kind == "empty row group":
        pq.write_table(pq.read_table(path).slice(0, 0), path)
    else:
        tiny_dataset(6).select([]).to_parquet(str(path))
    assert pq.ParquetFile(path).metadata.num_rows == 0
    return path


@pytest.mark.parametrize("kind", ["no row group", "empty row group"])
def test_an_empty_parquet_file_is_named_with_its_0_rows(tmp_path, kind):
    path = _empty(tmp_path / "train.parquet", kind)
    with pytest.raises(DataError) as e:
        _load(path)
    assert str(e.value) == f"data.path: {path} has 0 rows; give a parquet file that holds images"
    folder = tmp_path / "shards"
    folder.mkdir()
    tiny_dataset(30).to_parquet(str(folder / "train-00000.parquet"))
    _empty(folder / "train-00001.parquet", kind)
    with pytest.raises(DataError) as e:
        _load(folder)
    assert str(e.value) == (f"data.path: {folder / 'train-00001.parquet'} has 0 rows; give a parquet file that holds "
                            "images (or remove it from the folder)")


def test_a_file_that_is_not_parquet_is_named(tmp_path):
    path = tmp_path / "train.parquet"
    path.write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(DataError, match=rf"^data.path: {path} is not a parquet file \(.*magic bytes.*\); give a "
                                        r"parquet file$"):
        _load(path)


@pytest.mark.parametrize("kind", ["empty", "not parquet"])
def test_a_bad_sibling_test_split_file_is_named_under_data_test_split(tmp_path, kind):
    train = tiny_dataset(30)
    train.to_parquet(str(tmp_path / "train.parquet"))
    test = tmp_path / "test.parquet"
    if kind == "empty":
        _empty(test, "no row group")
        want = rf"^data.test_split: {test} has 0 rows; give a parquet file that holds images$"
    else:
        test.write_bytes(b"PAR1" + bytes(300))
        want = rf"^data.test_split: {test} is not a parquet file \(.*\); give a parquet file$"
    with pytest.raises(DataError, match=want):
        _load(tmp_path / "train.parquet", test_split="test")


@pytest.mark.parametrize("test_names, want", [
    ([f"c{i}" for i in range(12)], "has 12 classes, training 10; the first that differs is class 10: 'c10' in the "
                                   "test split, none in training"),
    (TEN[:9], "has 9 classes, training 10; the first that differs is class 9: none in the test split, 'c9' in "
              "training"),
    (TEN[:3] + ["dog"] + TEN[4:], "has training's 10 classes under other names or in another order; the first that "
                                  "differs is class 3: 'dog' in the test split, 'c3' in training"),
])
def test_a_test_split_of_other_classes_says_the_counts_and_the_first_class_that_differs(tmp_path, test_names, want):
    train = _parquet(tmp_path / "train.parquet", 40, TEN)
    test = _parquet(tmp_path / "test.parquet", 12, test_names, seed=1)
    with pytest.raises(DataError) as e:
        _load(train, test_split="test")
    assert str(e.value) == (f"data.test_split: the test split ({test}) {want}; give a test split with the training "
                            "split's classes, in the same order")


FEATURES = {"cache__features": "true"}


def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def test_a_truncated_features_file_is_named_and_rebuilt(shared, tmp_path):
    folder = shared.copy_cache(tmp_path, **FEATURES)
    clean = {p.name: p.read_bytes() for p in folder.iterdir()}
    args = cache_overrides(shared.data, tmp_path, shared.teacher_file, **FEATURES)
    for s, complete in ((0, True), (1, False)):  # checked against the manifest, or shard by shard without one
        _truncate(folder / f"features-0000{s}.npy")
        if not complete:
            (folder / "manifest.json").unlink()
        r = run_here(*args)
        assert r.returncode == 0, r.stderr
        said = "recomputing it" if complete else f"recomputing shard {s}"
        assert f"cache: {folder / f'features-0000{s}.npy'} fails its checksum; {said}" in r.stderr
        assert "shard-0000" not in r.stderr
        assert json.loads((tmp_path / "runs" / "tiny" / "cache.json").read_text())["images"] == 16  # that shard
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == clean


def _shards(folder, n: int = 3, rows: int = 10):
    """A hub-style sharded layout: data/train-0000i-of-0000n.parquet, written by `datasets`."""
    folder.mkdir(parents=True)
    for i in range(n):
        tiny_dataset(rows, seed=i).to_parquet(str(folder / f"train-{i:05d}-of-{n:05d}.parquet"))
    return folder


def test_an_image_column_written_by_pyarrow_as_a_bytes_and_path_struct_loads_as_images(tmp_path):
    """Many tools write an image column as struct<bytes, path> without `datasets`' schema metadata: images all
    the same, to training and to the checks."""
    ds = tiny_dataset(40).cast_column("image", datasets.Image(decode=False))
    plain = pa.table({"image": pa.array(ds["image"], pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                      "label": pa.array(ds["label"], pa.int64())})
    assert plain.schema.metadata is None
    path = tmp_path / "plain.parquet"
    pq.write_table(plain, path)
    bundle = _load(path)
    assert isinstance(bundle.train.features["image"], datasets.Image) and bundle.num_classes == 3
    hub = tmp_path / "hub.parquet"  # the same rows as `datasets` writes them, with its metadata
    tiny_dataset(40).cast_column("label", datasets.Value("int64")).to_parquet(str(hub))
    reference = _load(hub)
    for split in ("train", "val"):
        a, b = bundle.images[split], reference.images[split]
        assert np.array_equal(a.pixels, b.pixels) and np.array_equal(a.labels, b.labels), split


def test_a_missing_shard_is_named_before_any_row_is_read(tmp_path):
    folder = _shards(tmp_path / "data", n=4)
    (folder / "train-00002-of-00004.parquet").unlink()
    with pytest.raises(DataError) as e:
        _load(folder)
    assert str(e.value) == (f"data.path: {folder / 'train-00002-of-00004.parquet'} is missing: 3 of the 4 shards of "
                            "'train' are there; restore the missing file")


def test_one_shard_named_as_data_path_is_read_alone_and_said(tmp_path, caplog):
    """A file named on purpose is that file, even one shard of a set (no 'shard missing' for its present siblings);
    its folder reads every shard."""
    folder = _shards(tmp_path / "data", n=2, rows=20)
    with caplog.at_level("INFO", logger="distill"):
        one = _load(folder / "train-00000-of-00002.parquet")
    assert len(one.train) + len(one.val) == 20
    assert ("data.path: train-00000-of-00002.parquet is one of the 2 shards of 'train': training on that file alone; "
            "give its folder to read every shard") in caplog.messages
    every = _load(folder)
    assert len(every.train) + len(every.val) == 40


def test_shards_that_disagree_on_columns_or_classes_are_named(tmp_path):
    folder = _shards(tmp_path / "columns")
    table = pq.read_table(folder / "train-00001-of-00003.parquet")
    pq.write_table(table.rename_columns(["img", "label"]), folder / "train-00001-of-00003.parquet")
    with pytest.raises(DataError, match=rf"^data.path: {folder / 'train-00001-of-00003.parquet'} has other columns "
                                        r"than train-00000-of-00003.parquet \(column 'image': absent here, "):
        _load(folder)
    folder = _shards(tmp_path / "classes", n=2)
    _parquet(folder / "train-00001-of-00002.parquet", 10, TEN)
    with pytest.raises(DataError) as e:
        _load(folder)
    assert str(e.value) == (f"data.path: {folder / 'train-00001-of-00002.parquet'} names other classes in column "
                            "'label' than train-00000-of-00002.parquet (10 and 3 classes); every file of a split must "
                            "have the same")
