"""A new user's bad input and stale files: each gives one line (exit status 2 on the command line) or a correct run,
never a result built on something other than what was asked for."""
import datasets
import pytest
from safetensors.torch import load_file, save_file

from conftest import CLASSES, cache_overrides, compose_recipe, config_from, random_teacher, run_cli, tiny_images
from distill import config, data, run, teacher
from distill.errors import ConfigError, DataError


def test_a_data_path_given_to_the_demo_recipe_is_used(parquet_file):
    cfg = config.validate(compose_recipe("demo", [f"data.path={parquet_file}"]))
    bundle = data.load(cfg.data)
    assert bundle.identity["source"] == "parquet" and bundle.class_names == CLASSES
    assert config.validate(compose_recipe("demo")).data.path is None  # no path: the digits
    with pytest.raises(ConfigError, match="data.path: .* data.source=demo"):
        config.validate({"data": {"source": "demo", "path": str(parquet_file)}})


def test_a_mistyped_data_path_stops_with_one_line(tmp_path):
    r = run_cli(f"data.path={tmp_path}/no/such/train.parquet", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == f"error: data.path: no such file or directory: {tmp_path}/no/such/train.parquet"
    assert not (tmp_path / "runs").exists()


def test_one_class_is_refused(tmp_path):
    images, _ = tiny_images(20)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    path = tmp_path / "one.parquet"
    datasets.Dataset.from_dict({"image": images, "label": [1] * 20}, features=features).to_parquet(str(path))
    with pytest.raises(DataError, match=r"split 'train' holds 1 class\(es\) \(green\); classification needs at least two"):
        data.load(config.validate({"data": {"path": str(path), "val_size": 4}}).data)


def test_teacher_fingerprint_follows_the_checkpoint_file_content(parquet_file, tmp_path):
    file = random_teacher(tmp_path / "t.safetensors", seed=0)
    cfg = config_from(cache_overrides(parquet_file, tmp_path, file))
    bundle, norm = data.load(cfg.data), {"mean": [0.5] * 3, "std": [0.25] * 3, "per_image": False}
    before = teacher.fingerprint(cfg, bundle, norm)
    moved = tmp_path / "elsewhere.safetensors"
    moved.write_bytes(file.read_bytes())
    assert teacher.fingerprint(config_from(cache_overrides(parquet_file, tmp_path, moved)), bundle, norm) == before
    random_teacher(file, seed=1)  # other weights at the same path
    assert teacher.fingerprint(cfg, bundle, norm) != before


def test_weights_changed_after_a_stage_finished_stop_the_next_run(parquet_file, tmp_path):
    teacher_file = random_teacher(tmp_path / "teacher.safetensors")
    cfg = config_from(cache_overrides(parquet_file, tmp_path, teacher_file) + [
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
    r = run_cli(override, f"run_root={tmp_path / 'runs'}", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(message), r.stderr
    assert not (tmp_path / "runs").exists()


def test_a_tracker_that_is_not_installed_stops_the_run(monkeypatch):
    import accelerate.tracking

    from distill import preflight
    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    with pytest.raises(ConfigError, match=r"log_with: the tensorboard tracker is not installed; pip install tensorboard"):
        preflight.check_tracker("tensorboard")
