"""End-to-end runs of the teacher stage through the real entry point, on tiny data."""
import json
import os
import shutil

import pytest
import timm
import torch
from safetensors.torch import save_file

from conftest import cache_overrides, run_cli, run_here, tiny_overrides
from distill.store import artifacts


def test_teacher_trains_saves_and_is_reused(parquet_file, tmp_path):
    args = tiny_overrides(parquet_file, tmp_path / "runs") + ["stage=teacher"]
    r = run_here(*args)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "runs" / "tiny" / "teacher"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model"] == "resnet8" and meta["class_names"] == ["red", "green", "blue"]
    assert meta["metrics"]["val_count"] == 12 and meta["metrics"]["top1"] >= 75.0  # colour is easy to learn
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2] and lines[-1]["step"] == 2 * (48 // 16)
    assert f"teacher: val top-1 {meta['metrics']['top1']:.2f}%" in r.stderr + r.stdout
    assert not (out / "checkpoints").exists()
    meta_bytes = (out / "meta.json").read_bytes()
    assert (tmp_path / "runs" / "tiny" / "config.yaml").exists()
    weights = artifacts.load_weights(out)

    again = run_cli(*args, cwd=tmp_path, module=True)  # python -m distill.run: same run folder, nothing to do
    assert again.returncode == 0, again.stderr
    assert "teacher: reusing" in again.stderr + again.stdout and (out / "meta.json").read_bytes() == meta_bytes
    assert all(torch.equal(v, artifacts.load_weights(out)[k]) for k, v in weights.items())

    changed = run_here(*args, "teacher.label_smoothing=0.1")  # a teacher setting changed: retrain
    assert changed.returncode == 0 and (out / "meta.json").read_bytes() != meta_bytes


def test_loaded_teacher_is_finetuned_through_the_recipe(parquet_file, tmp_path):
    ckpt = tmp_path / "other.safetensors"
    save_file(timm.create_model("resnet8", num_classes=5).state_dict(), str(ckpt))
    args = tiny_overrides(parquet_file, tmp_path / "runs") + [
        "stage=teacher", "teacher.source=timm", f"teacher.checkpoint={ckpt}", "teacher.finetune.epochs=1"]
    r = run_here(*args)
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "runs" / "tiny" / "teacher" / "meta.json").read_text())
    assert meta["num_classes"] == 3 and meta["metrics"]["epoch"] == 1


def test_bad_data_stops_with_one_line(parquet_file, tmp_path):
    r = run_here(*tiny_overrides(parquet_file, tmp_path / "runs"), "data.label_column=target")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == \
        "error: data.label_column: no column 'target' in split 'train'; columns: image, label"
    assert not (tmp_path / "runs" / "tiny" / "teacher").exists()


def test_a_shared_teacher_dir_is_never_trained_over_by_other_settings(parquet_file, tmp_path):
    """Two runs naming one teacher.dir in turn: the second, with another teacher setting, stops in one line and the
    first run's teacher is left as it was (its student and card still describe the weights on disk)."""
    shared_dir = tmp_path / "shared-teacher"
    args = tiny_overrides(parquet_file, tmp_path / "runs") + ["stage=teacher", f"teacher.dir={shared_dir}"]
    first = run_here(*args, "name=one")
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in shared_dir.iterdir() if p.is_file()}
    same = run_here(*args, "name=two")  # same settings: shared, reused
    assert same.returncode == 0 and "teacher: reusing" in same.stderr
    other = run_here(*args, "name=three", "teacher.label_smoothing=0.1")
    assert other.returncode == 2, other.stderr
    last = other.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: teacher.dir: {shared_dir} holds a teacher made with other teacher settings")
    assert {p.name: p.read_bytes() for p in shared_dir.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("folder", ["teacher.dir", "cache"])
def test_a_shared_folder_another_run_is_writing_stops_this_run_in_one_line(shared, tmp_path, folder):
    """Two runs sharing a teacher.dir (or one cache) never write it at once: the second stops naming the holder."""
    teacher_dir, cache_root = tmp_path / "shared-teacher", tmp_path / "cache"
    args = [*cache_overrides(shared.data, tmp_path, shared.teacher_file), f"teacher.dir={teacher_dir}"]
    if folder == "teacher.dir":
        target, lock = teacher_dir, None
    else:  # the cache this run would label, held beside its folder
        first = run_here(*args)
        assert first.returncode == 0, first.stderr
        cache = next(p for p in cache_root.iterdir() if p.is_dir())
        shutil.rmtree(cache)  # not complete any more: this run would write it
        target, lock = cache, cache.with_name(f".{cache.name}.lock")
    with artifacts.exclusive(target, lock=lock):  # another live run holds it
        r = run_here(*args)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == f"error: {target}: in use by a running distill (pid {os.getpid()}); " \
                                                "wait for it to finish"


def test_fp16_on_a_cpu_says_so_once_and_trains_what_precision_no_trains(shared, tmp_path):
    """precision=fp16 cannot act without a GPU: said once, and fingerprinted as what runs (fp32), so the teacher
    trained with precision=no is reused rather than trained again for nothing."""
    args = [*cache_overrides(shared.data, tmp_path, shared.teacher_file), "stage=teacher"]
    first = run_here(*[a for a in args if not a.startswith("precision=")], "precision=fp16")
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("precision=fp16: not available here (no GPU); this run trains with precision=no") == 1
    again = run_here(*[a for a in args if not a.startswith("precision=")], "precision=no")
    assert again.returncode == 0 and "teacher: reusing" in again.stderr


def test_a_folder_lock_is_not_kept_by_a_forked_worker_after_its_holder_lets_go(tmp_path):
    """A stage's DataLoader workers are forked while it holds its folder and may outlive the stage (persistent
    workers): the lock must end with the holder's block, or the next sweep point in this process stops."""
    folder = tmp_path / "teacher"
    read, write = os.pipe()
    with artifacts.exclusive(folder):
        child = os.fork()
        if child == 0:  # a worker: alive until the test lets it go (no clock involved)
            os.close(write)
            os.read(read, 1)
            os._exit(0)
    try:
        with artifacts.exclusive(folder):  # taken again while the forked child still lives
            pass
        with artifacts.exclusive(folder):
            with pytest.raises(Exception, match=f"in use by a running distill \\(pid {os.getpid()}\\)"):
                with artifacts.exclusive(folder):  # the same process twice: still refused
                    pass
    finally:
        os.close(write)
        os.waitpid(child, 0)
        os.close(read)
