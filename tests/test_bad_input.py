"""A new user's bad input and stale files: each gives one line (exit status 2 on the command line) or a correct run,
never a result built on something other than what was asked for."""
import re
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import (CLASSES, ROOT, cache_overrides, compose_recipe, config_from, random_teacher, run_cli, run_here,
                      tiny_images, tiny_overrides)
from distill import config, data, preflight, run
from distill.store import artifacts, fingerprints, softlabels
from distill.store.records import Normalization
from distill.training import models
from distill.errors import CheckpointError, ConfigError, DataError


def test_a_data_path_given_to_the_demo_recipe_is_used(parquet_file):
    cfg = config.validate(compose_recipe("demo", [f"data.path={parquet_file}"]))
    bundle = data.load(cfg.data)
    assert bundle.identity.source == "parquet" and bundle.class_names == CLASSES
    assert config.validate(compose_recipe("demo")).data.path is None  # no path: the digits
    with pytest.raises(ConfigError, match="data.path: .* data.source=demo"):
        config.validate({"data": {"source": "demo", "path": str(parquet_file)}})


def test_a_mistyped_data_path_stops_with_one_line(tmp_path):
    r = run_cli(f"data.path={tmp_path}/no/such/train.parquet", cwd=tmp_path)  # the command line's own error path
    assert r.returncode == 2
    want = f"error: data.path: no such file or directory: {tmp_path}/no/such/train.parquet"
    assert r.stderr.strip().splitlines()[-1] == want
    assert not (tmp_path / "runs").exists()


def test_one_class_is_refused(tmp_path):
    images, _ = tiny_images(20)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    path = tmp_path / "one.parquet"
    datasets.Dataset.from_dict({"image": images, "label": [1] * 20}, features=features).to_parquet(str(path))
    with pytest.raises(DataError, match=r"split 'train' holds 1 class\(es\) \(green\); classification needs at least"):
        data.load(config.validate({"data": {"path": str(path), "val_size": 4}}).data)


def test_teacher_fingerprint_follows_the_checkpoint_file_content(parquet_file, tmp_path):
    file = random_teacher(tmp_path / "t.safetensors", seed=0)
    cfg = config_from(cache_overrides(parquet_file, tmp_path, file))
    bundle, norm = data.load(cfg.data), Normalization((0.5,) * 3, (0.25,) * 3)
    before = fingerprints.teacher(cfg, bundle.identity, norm)
    moved = tmp_path / "elsewhere.safetensors"
    moved.write_bytes(file.read_bytes())
    assert fingerprints.teacher(config_from(cache_overrides(parquet_file, tmp_path, moved)), bundle.identity,
                                norm) == before
    random_teacher(file, seed=1)  # other weights at the same path
    assert fingerprints.teacher(cfg, bundle.identity, norm) != before


def test_weights_changed_after_a_stage_finished_stop_the_next_run(shared, tmp_path):
    shared.copy_cache(tmp_path)
    cfg = config_from(cache_overrides(shared.data, tmp_path, shared.teacher_file) + [
        "stage=student", "student.epochs=1", "student.batch_size=16"])
    run.execute(cfg)
    run_dir = tmp_path / "runs" / "tiny"
    weights = run_dir / "teacher" / "model.safetensors"
    state = load_file(str(weights))
    state["fc.weight"] = -state["fc.weight"]  # edited by hand
    save_file(state, str(weights))
    student_before = {p.name: p.read_bytes() for p in (run_dir / "student").iterdir() if p.is_file()}
    summary_before = (run_dir / "summary.json").read_bytes()
    with pytest.raises(DataError, match=f"teacher: {weights} is not the file .*meta.json scored"):
        run.execute(cfg)
    assert {p.name: p.read_bytes() for p in (run_dir / "student").iterdir() if p.is_file()} == student_before
    assert (run_dir / "summary.json").read_bytes() == summary_before


@pytest.mark.parametrize("override, message", [
    ("student.model=not_a_model", "error: student.model: 'not_a_model' is not a timm model name"),
    ("teacher.model=resnet2O", "error: teacher.model: 'resnet2O' is not a timm model name (did you mean"),
    ("teacher.source=timm", "error: teacher.model: timm has no pretrained weights for 'resnet20'"),
    ("log_with=nosuchtracker", "error: log_with: 'nosuchtracker' is not an accelerate tracker"),
])
def test_names_are_checked_before_any_work(tmp_path, override, message):
    r = run_here(override, f"run_root={tmp_path / 'runs'}")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(message), r.stderr
    assert not (tmp_path / "runs").exists()


def test_a_tracker_that_is_not_installed_stops_the_run(monkeypatch):
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    with pytest.raises(ConfigError, match=r"log_with: the tensorboard tracker is not installed; pip install tensorb"):
        preflight.check_tracker("tensorboard")


def test_weights_of_other_shapes_name_the_first_mismatched_key(tmp_path):
    file = random_teacher(tmp_path / "resnet8.safetensors", model="resnet8")
    with pytest.raises(CheckpointError) as e:
        models.load_file("resnet8x4", file, len(CLASSES))
    key, theirs, ours = re.search(r"does not fit resnet8x4: (\S+) is (\(.*\)) in the file, (\(.*\)) in the "
                                                r"model$", str(e.value)).groups()
    assert theirs == str(tuple(load_file(str(file))[key].shape)) and theirs != ours and "\n" not in str(e.value)


HOLD = """
import sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from distill.store import artifacts
with artifacts.exclusive(Path(sys.argv[2])):
    print("held", flush=True)
    time.sleep(3600)  # until the test kills it: the lock never lapses while the test runs
"""


def test_a_run_folder_in_use_is_refused_and_a_dead_runs_lock_is_not(parquet_file, tmp_path):
    folder = tmp_path / "runs" / "demo"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(ROOT), str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = run_here(f"run_root={tmp_path / 'runs'}")
        assert r.returncode == 2
        assert r.stderr.strip().splitlines()[-1] == (f"error: {folder}: in use by a running distill (pid "
                                                     f"{holder.pid}); wait for it to finish, or give this run another "
                                                     "name=")
    finally:
        holder.kill()  # dies holding the lock, as a kill -9 leaves it
        holder.wait()
    assert (folder / ".lock").read_text().strip() == str(holder.pid)
    with artifacts.exclusive(folder):  # the dead run's lock file does not block
        assert (folder / ".lock").read_text().strip() != str(holder.pid)


def test_inspect_cache_names_a_truncated_shard_in_one_line(shared, tmp_path):
    folder = shared.copy_cache(tmp_path)
    shard = folder / "shard-00001.npy"
    shard.write_bytes(shard.read_bytes()[:100])
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "inspect_cache.py"), str(folder)], capture_output=True,
                       text=True, timeout=1800)  # a hang guard
    (line,) = r.stderr.strip().splitlines()  # one line, no traceback
    assert r.returncode == 2 and line.startswith(f"error: cache: {shard} cannot be read (")
    assert line.endswith("); rerun stage=cache to recompute it")


def test_empty_classes_are_named(tmp_path, caplog):
    images, _ = tiny_images(24)
    path = tmp_path / "stray.parquet"
    labels = [i % 4 for i in range(23)] + [99]
    datasets.Dataset.from_dict({"image": images, "label": labels},
                               features=datasets.Features({"image": datasets.Image(),
                                                           "label": datasets.Value("int64")})).to_parquet(str(path))
    with caplog.at_level("WARNING", logger="distill"):
        bundle = data.load(config.validate({"data": {"path": str(path), "val_size": 4, "split_seed": 1}}).data)
    assert bundle.num_classes == 100
    (line,) = [r.message for r in caplog.records if "have no image" in r.message]
    assert line == ("data: 95 of 100 classes have no image in split 'train': 4, 5, 6, 7, 8, 9, 10, 11, ... (integer "
                    "labels: the class count comes from the largest label, 99; a stray label?)")  # 99 stays in train


def test_an_empty_class_folder_is_named_before_the_data_is_read(imagefolder):
    """An empty class folder would be no class at all to `datasets`, every class id after it shifted."""
    (imagefolder / "train" / "purple").mkdir()
    with pytest.raises(DataError) as e:
        data.load(config.validate({"data": {"path": str(imagefolder), "val_size": 6}}).data)
    assert str(e.value) == (f"data.path: class folder {imagefolder / 'train' / 'purple'} holds no images; add its "
                            "images or remove the folder")


def _write_split(root, split: str, classes: list[str], per_class: int = 3, seed: int = 0) -> None:
    images, _ = tiny_images(per_class * len(classes), seed=seed)
    for i, img in enumerate(images):
        (root / split / classes[i % len(classes)]).mkdir(parents=True, exist_ok=True)
        img.save(root / split / classes[i % len(classes)] / f"{i}.png")


def test_a_class_folder_only_in_the_test_split_is_refused_in_one_line_naming_it(imagefolder, tmp_path):
    """A class the model never sees in training would be counted in its test score: refused before any work."""
    _write_split(imagefolder, "test", CLASSES + ["purple"])
    r = run_here(f"data.path={imagefolder}", "data.val_size=6", "data.test_split=test", f"run_root={tmp_path}/runs")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: data.path: class folder {imagefolder / 'test' / 'purple'} has no folder of that name in "
        f"{imagefolder / 'train'}: a class the model could never learn, counted in its score; add its training "
        "images or remove the folder")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("layout", ["train/", "no split folder"])
def test_an_imagefolder_of_one_class_folder_says_a_classifier_needs_two(tmp_path, layout):
    root = tmp_path / "folder"
    _write_split(root, "train", ["cat"], per_class=8)
    base = root / "train"
    if layout == "no split folder":  # folder/cat/*.png
        (base / "cat").rename(root / "cat")
        base.rmdir()
        base = root
    with pytest.raises(DataError) as e:
        data.load(config.validate({"data": {"path": str(root), "val_size": 2}}).data)
    assert str(e.value) == (f"data.path: {base} holds 1 class folder(s) (cat); "
                            "a classifier needs at least two classes: put each class's images in a folder named "
                            "after the class")


def _jpeg_folder(root, n: int = 24):
    """An imagefolder of n tiny JPEG files (train/CLASS/i.jpg); the files in path order."""
    images, labels = tiny_images(n)
    for i, (img, label) in enumerate(zip(images, labels)):
        (root / "train" / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        img.save(root / "train" / CLASSES[label] / f"{i:02d}.jpg", quality=90)
    return sorted((root / "train").rglob("*.jpg"))


@pytest.mark.parametrize("decode_mb", [0, 64])  # kept encoded (only the file check sees it) or decoded at load
def test_a_truncated_training_jpeg_is_refused_before_any_work_naming_the_file(tmp_path, decode_mb):
    root = tmp_path / "folder"
    cut = _jpeg_folder(root)[5]
    cut.write_bytes(cut.read_bytes()[:-40])  # cut short: no end marker
    r = run_here(*tiny_overrides(root, tmp_path / "runs"), "data.val_size=6", f"data.decode_mb={decode_mb}")
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert str(cut) in line and "set data.on_bad_image=skip to leave it out of every stage" in line, line
    assert "resume=never" not in line and not (tmp_path / "runs" / "tiny" / "teacher").exists()


def test_whole_image_files_pass_the_file_check_and_a_damaged_one_mid_stage_is_named_with_what_a_rerun_does(tmp_path):
    """Bytes after a JPEG's end marker are no false alarm (the file decodes); a file whose head and tail look whole
    but that does not decode is found when a stage reads it: named, with what a rerun after fixing it does."""
    root = tmp_path / "folder"
    files = _jpeg_folder(root)
    files[3].write_bytes(files[3].read_bytes() + b"\0" * 100)  # padding after FF D9: whole
    files[7].write_bytes(b"\xff\xd8" + b"not a jpeg" * 50 + b"\xff\xd9")
    bundle = data.load(config.validate({"data": {"path": str(root), "val_size": 6, "decode_mb": 0}}).data)
    images, i = next((split, i) for split in (bundle.images["train"], bundle.images["val"])
                     for i in range(len(split)) if split.file(i) == str(files[7]))
    with pytest.raises(DataError) as e:
        images.fetch(i, skip_bad=False)
    assert f", file {files[7]}) could not be decoded" in str(e.value)
    assert str(e.value).endswith("; set data.on_bad_image=skip to leave it out of every stage, or replace or remove "
                                 "the file; either changes the data, so the stage it stopped starts over (a training "
                                 "stage's checkpoints are of the old data: rerun with resume=never)")


class _Unreadable(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        raise DataError(f"data: the image at row {i} could not be decoded")


def test_a_data_error_raised_in_a_loader_worker_is_its_own_one_line():
    """torch raises a worker's exception again as "Caught DataError in DataLoader worker process 0." plus the
    worker's traceback: the user still gets the one line the worker raised."""
    with pytest.raises(DataError) as e:
        next(iter(torch.utils.data.DataLoader(_Unreadable(), num_workers=1)))
    assert str(e.value) == "data: the image at row 0 could not be decoded"


@pytest.mark.parametrize("folder", ["validation", "val"])
def test_an_imagefolder_in_imagenets_layout_gives_its_validation_folder_as_the_held_out_split(tmp_path, folder):
    """ImageNet's layout on disk: train/ and validation/ (or val/) with a folder per class; the ImageNet group's
    data.test_split=validation names the held-out folder, and validation is carved from train."""
    root = tmp_path / "imagenet"
    _write_split(root, "train", CLASSES, per_class=8)
    _write_split(root, folder, CLASSES, per_class=2, seed=1)
    bundle = data.load(config.validate({"data": {"path": str(root), "val_size": 6, "test_split": "validation"}}).data)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (18, 6, 6)


@pytest.mark.parametrize("decode_mb", [0, 64])
def test_errors_name_the_source_row_not_the_index_after_the_carve(tmp_path, decode_mb):
    from conftest import tiny_dataset
    ds = tiny_dataset(60).cast_column("image", datasets.Image(decode=False))
    rows = ds.to_dict()
    rows["image"][37] = {"bytes": b"not an image", "path": None}
    path = tmp_path / "broken.parquet"
    datasets.Dataset.from_dict(rows, features=ds.features).cast_column("image", datasets.Image()).to_parquet(str(path))
    bundle = data.load(config.validate({"data": {"path": str(path), "val_size": 12, "decode_mb": decode_mb,
                                                 "train_size": 40, "on_bad_image": "skip"}}).data)
    source = tiny_dataset(60)  # (skip: with error, a split decoded at load stops there, naming the same row)
    hits = 0
    for split in ("train", "val"):
        images = bundle.images[split]
        for i, row in enumerate(images.rows.rows.tolist()):
            if row == 37:
                with pytest.raises(DataError, match=f"the image at row 37 of split 'train' in {path} "):
                    images.image(i)
                hits += 1
            else:  # every other sample is the source row it names
                assert (images.image(i).permute(1, 2, 0).numpy() == np.asarray(source[row]["image"])).all()
    assert hits == 1


def test_a_skipped_image_is_left_out_by_every_stage_and_counted(tmp_path, capfd):
    from conftest import parquet_with_a_broken_image
    path = tmp_path / "broken.parquet"
    args = [a for a in cache_overrides(path, tmp_path, random_teacher(tmp_path / "t.safetensors"))
            if not a.startswith("teacher.checkpoint=")] + [  # the teacher trains: no file to read
        "stage=all", "student.epochs=1", "student.batch_size=16", "student.baseline=true", "data.on_bad_image=skip",
        "teacher.source=train", "teacher.epochs=1"]
    index = 3  # the training sample whose source row breaks
    parquet_with_a_broken_image(path, args, index)
    summary = run.execute(config_from(args))
    (folder,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]  # beside it: its lock file
    labels = softlabels.SoftLabels(folder)
    assert labels.skipped == {index} and (labels.row(index)["logits"] == 0).all()
    assert summary.caches["teacher"].skipped_images == 1
    assert {name: summary.models[name].skipped_images for name in ("teacher", "student", "baseline")} == \
        {"teacher": 1, "student": 1, "baseline": 1}
    assert "left out, failing to decode (data.on_bad_image=skip): teacher 1 images, student 1 images, baseline 1 " \
           "images, cache 1 images" in capfd.readouterr().err


def test_an_unknown_recipe_lists_the_recipes_in_one_line(tmp_path):
    r = run_cli("recipe=cifar10_resnet20_to_resnt8", cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1
    assert lines[0].startswith("error: recipe: no recipe 'cifar10_resnet20_to_resnt8' (did you mean "
                               "cifar10_resnet20_to_resnet8") and "; recipes: " in lines[0] and "demo" in lines[0]


def test_an_integer_setting_is_printed_as_given(parquet_file):
    with pytest.raises(DataError, match=r"^data.val_size: 5000 does not fit a training split of 60 images$"):
        data.load(config.validate({"data": {"path": str(parquet_file), "val_size": 5000}}).data)


def test_the_sibling_test_split_is_found_beside_the_link_the_user_gave(tmp_path):
    from conftest import tiny_dataset
    (tmp_path / "real").mkdir()
    (tmp_path / "mine").mkdir()
    tiny_dataset(30).to_parquet(str(tmp_path / "real" / "data.parquet"))
    (tmp_path / "mine" / "train.parquet").symlink_to(tmp_path / "real" / "data.parquet")
    tiny_dataset(12, seed=4).to_parquet(str(tmp_path / "mine" / "test.parquet"))  # beside the link
    cfg = config.validate({"data": {"path": str(tmp_path / "mine" / "train.parquet"), "val_size": 6,
                                    "test_split": "test"}}).data
    assert len(data.load(cfg).test) == 12


def test_a_sweeps_bad_value_is_refused_before_any_point_runs(tmp_path):
    r = run_cli("-m", "kd.temperature=2,-1", "student.epochs=1", cwd=tmp_path)
    assert r.returncode == 2 and not (tmp_path / "runs").exists()  # the first point did not train first
    assert r.stderr.strip().splitlines() == ["error: kd.temperature: -1.0 must be > 0 (sweep point 2 of 2: "
                                             "kd.temperature=-1 student.epochs=1; nothing was run)"]


def test_a_folder_source_given_a_file_says_so_in_one_line(parquet_file):
    """data.source=imagefolder with a parquet file: a NotADirectoryError traceback once."""
    for source in ("imagefolder", "disk"):
        with pytest.raises(DataError, match=rf"^data\.source={source} reads a folder, but data\.path "
                                            rf"{re.escape(str(parquet_file))} is a file; give its folder, or "
                                            r"data\.source=auto$"):
            data.load(config.validate({"data": {"source": source, "path": str(parquet_file)}}).data)
