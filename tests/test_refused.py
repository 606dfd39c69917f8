"""Settings refused before any work, in one line naming the key: non-finite or absurd numbers, lists of the wrong
length, a student that would train 0 epochs, a bad DISTILL_FAULT, and a model that cannot take the data's images."""
import math
import re
import signal

import pytest

from conftest import run_cli, run_here, tiny_overrides
from distill import config, faults, preflight
from distill.errors import ConfigError


def _nested(key: str, value) -> dict:
    raw: dict = {}
    node = raw
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return raw


FLOAT_KEYS = [key for key, f, _ in config.leaves() if "float" in str(f.type)]


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_every_float_setting_refuses_a_non_finite_value(key, bad):
    """Every float field, and every float of a list field, of the schema: inf, -inf and nan stop validation."""
    field = next(f for k, f, _ in config.leaves() if k == key)
    value = [bad] + [0.5] * ((field.metadata.get("count") or 2) - 1) if "List" in str(field.type) else bad
    with pytest.raises(ConfigError) as err:
        config.validate(_nested(key, value))
    assert str(err.value).startswith(f"{key}: ") and "finite" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("raw, message", [
    ({"teachers": [{"name": "a"}, {"name": "b"}], "kd": {"teacher_weights": [math.nan, 1.0]}},
     "kd.teacher_weights: [nan, 1.0] holds nan; every value must be a finite number"),
    ({"kd": {"feature_weight": math.inf}}, "kd.feature_weight: inf is not a finite number"),
    ({"kd": {"feature_weight": 1e38}}, "kd.feature_weight: 1e+38 must be <= 1000000"),
    ({"kd": {"alpha": 2e6, "ce_weight": 0.1}}, "kd.alpha: 2000000.0 must be <= 1000000"),
    ({"kd": {"temperature": 1e4}}, "kd.temperature: 10000.0 must be <= 1000"),
    ({"teachers": [{"name": "a"}, {"name": "b"}], "kd": {"teacher_weights": [1e7, 1.0]}},
     "kd.teacher_weights: every value must be <= 1000000, got [10000000.0, 1.0]"),
    ({"kd": {"focal_alpha": [1.0, -1.0]}}, "kd.focal_alpha: every value must be >= 0, got [1.0, -1.0]"),
    ({"data": {"val_size": math.inf}}, "data.val_size: inf is not a finite number"),
    ({"teachers": [{"name": "a", "optim": {"momentum": math.nan}}]}, "teachers.a.optim.momentum: nan is not a "
                                                                     "finite number"),
    ({"student": {"optim": {"betas": [0.9]}}}, "student.optim.betas: needs 2 values, got 1 ([0.9])"),
    ({"teacher": {"optim": {"betas": [0.9, 1.0]}}}, "teacher.optim.betas: every value must be < 1, got [0.9, 1.0]"),
    ({"student": {"optim": {"betas": [-0.1, 0.9]}}}, "student.optim.betas: every value must be >= 0, got [-0.1, 0.9]"),
    ({"data": {"mean": [0.5, 0.5], "std": [0.2, 0.2, 0.2]}}, "data.mean: needs 3 values, got 2 ([0.5, 0.5])"),
    ({"data": {"mean": [125.3, 123.0, 113.9], "std": [0.2, 0.2, 0.2]}},
     "data.mean: every value must be <= 1, got [125.3, 123.0, 113.9]"),
    ({"data": {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.0, 0.2]}}, "data.std: every value must be > 0, got [0.2, 0.0, "
                                                                  "0.2]"),
    ({"student": {"epochs": 0}}, "student.epochs: 0 must be >= 1"),
    ({"teacher": {"epochs": 0}}, "teacher.epochs: must be >= 1 when teacher.source=train"),
    ({"teachers": [{"name": "a", "epochs": 0}]}, "teachers.a.epochs: must be >= 1 when teachers.a.source=train"),
])
def test_bad_numbers_and_lists_stop_in_one_line(raw, message):
    with pytest.raises(ConfigError) as err:
        config.validate(raw)
    assert str(err.value) == message


def test_the_bounds_leave_the_usual_settings_alone():
    cfg = config.validate({"kd": {"alpha": 9.0, "ce_weight": 0.1, "temperature": 1000.0, "feature_weight": 1e6},
                           "cache": {"features": True},
                           "teacher": {"source": "timm", "model": "resnet50", "epochs": 0},
                           "data": {"mean": [0.0, 0.5, 1.0], "std": [1.0, 0.5, 0.01]}})
    assert cfg.kd.temperature == 1000.0 and cfg.student.epochs == 10  # a loaded teacher may train 0 epochs


# ---------------------------------------------------------------- DISTILL_FAULT

@pytest.mark.parametrize("spec", ["student:5:SIGKILL", "student:5:KILL", "cache:1:term", "teacher big:3:SIGTERM"])
def test_a_fault_takes_the_signal_with_or_without_sig(monkeypatch, spec):
    monkeypatch.setenv("DISTILL_FAULT", spec)
    faults.check()
    config.validate({})
    where, at, sig = spec.split(":")
    sent = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, s: sent.append(s))
    faults.point(where, int(at) - 1)
    faults.point("export", int(at))
    assert sent == []
    faults.point(where, int(at))
    assert sent == [signal.Signals["SIG" + sig.upper().removeprefix("SIG")]]


@pytest.mark.parametrize("spec", ["student:5", "studnet:5:KILL", "student:0:KILL", "student:x:KILL",
                                  "student:5:SIGSIGKILL", "student:5:NOPE", "student:-1:TERM", "teacher :1:KILL"])
def test_a_bad_fault_spec_stops_validation_in_one_line(monkeypatch, spec):
    monkeypatch.setenv("DISTILL_FAULT", spec)
    with pytest.raises(ConfigError) as err:
        config.validate({})
    msg = str(err.value)
    assert msg.startswith(f"DISTILL_FAULT: '{spec}' is not WHERE:N:SIGNAL with WHERE one of teacher, student, ")
    assert "unset DISTILL_FAULT" in msg and "\n" not in msg


# ---------------------------------------------------------------- every model against the data

def _after_data(raw: dict, image_size: int = 32, num_classes: int = 10) -> None:
    raw = {**raw, "data": {**raw.get("data", {}), "image_size": image_size}}
    preflight.after_data(config.validate(raw), 1000, num_classes)


@pytest.mark.parametrize("raw, size, message", [
    ({"student": {"model": "deit_tiny_distilled_patch16_224"}}, 32,
     "student.model: deit_tiny_distilled_patch16_224 cannot take 32 px images (AssertionError: Input height (32) "
     "doesn't match model (224)); set student.model_args.img_size=32 or data.image_size=224"),
    ({"student": {"model": "deit_tiny_distilled_patch16_224", "model_args": {"img_size": 64}}}, 32,
     "student.model: deit_tiny_distilled_patch16_224 cannot take 32 px images (AssertionError: Input height (32) "
     "doesn't match model (64)); set student.model_args.img_size=32 or data.image_size=64"),
    ({"teacher": {"source": "timm", "model": "vit_tiny_patch16_224", "checkpoint": "t.safetensors"}}, 32,
     "teacher.model: vit_tiny_patch16_224 cannot take 32 px images (AssertionError: Input height (32) doesn't match "
     "model (224)); set data.image_size=224"),
    ({"teachers": [{"name": "a"}, {"name": "b", "model": "vit_tiny_patch16_224"}]}, 32,
     "teachers.b.model: vit_tiny_patch16_224 cannot take 32 px images (AssertionError: Input height (32) doesn't "
     "match model (224)); set data.image_size=224"),
    ({"student": {"model": "resnet18", "model_args": {"global_pool": ""}}}, 32,
     "student.model_args: resnet18 with {'global_pool': ''} fails on 2 images of 32 px (RuntimeError: "),
    ({"student": {"model": "resnet8", "model_args": {"depth": 3}}}, 32,
     "student.model_args: resnet8 cannot be built with {'depth': 3} (TypeError: "),
    ({"kd": {"focal_alpha": [1.0, 2.0]}}, 32,
     "kd.focal_alpha: 2 weights for 10 classes; give one per class, in the order of the data's class ids"),
])
def test_a_model_that_cannot_take_the_data_stops_in_one_line(raw, size, message):
    with pytest.raises(ConfigError) as err:
        _after_data(raw, size)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize("raw, size", [
    ({}, 32),  # the demo's CIFAR ResNets
    ({"student": {"model": "deit_tiny_distilled_patch16_224", "model_args": {"img_size": 32, "patch_size": 4}},
      "kd": {"token": "soft"}}, 32),
    ({"student": {"model": "deit_tiny_distilled_patch16_224"}}, 224),
    ({"teacher": {"model": "hf-hub:someone/vit", "source": "timm"}}, 32),  # resolved only when loaded: left to it
    ({"stage": "teacher", "kd": {"focal_alpha": [1.0] * 10}}, 12),
])
def test_models_that_take_the_data_pass(raw, size):
    _after_data(raw, size)


def test_cli_refuses_a_student_that_would_train_no_epoch_before_any_work(parquet_file, tmp_path):
    r = run_cli(*tiny_overrides(parquet_file, tmp_path / "runs"), "student.epochs=0", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == "error: student.epochs: 0 must be >= 1"
    assert not (tmp_path / "runs").exists()


def test_a_run_refuses_a_student_that_cannot_take_the_images_before_any_work(parquet_file, tmp_path):
    """The whole run, in process: the data loads (12 px images), then the check stops it; no teacher was trained."""
    r = run_here(*tiny_overrides(parquet_file, tmp_path / "runs"), "student.model=deit_tiny_distilled_patch16_224")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "error: student.model: deit_tiny_distilled_patch16_224 cannot take 12 px images (AssertionError: Input "
        "height (12) doesn't match model (224)); set student.model_args.img_size=12 or data.image_size=224")
    assert "Traceback" not in r.stderr and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- teachers whose source would ignore a setting

@pytest.mark.parametrize("raw, message", [
    ({"teacher": {"checkpoint": "t.safetensors"}},
     "teacher.checkpoint: read only with teacher.source=timm (source=train trains the teacher from scratch and would "
     "ignore t.safetensors); set teacher.source=timm, or drop teacher.checkpoint"),
    ({"teachers": [{"name": "a", "checkpoint": "a.safetensors"}, {"name": "b", "checkpoint": "b.safetensors"}]},
     "teachers.a.checkpoint: read only with teachers.a.source=timm (source=train trains the teacher from scratch and "
     "would ignore a.safetensors); set teachers.a.source=timm, or drop teachers.a.checkpoint"),
    ({"teacher": {"finetune": {"epochs": 1}}},
     "teacher.finetune.epochs: fine-tunes a loaded teacher (teacher.source=timm); a teacher trained from scratch "
     "takes teacher.epochs"),
    ({"teacher": {"source": "timm", "pretrained": False}},
     "teacher.pretrained: false with no teacher.checkpoint loads no weights, so the teacher would be untrained; set "
     "teacher.checkpoint=FILE, teacher.pretrained=true, or teacher.source=train"),
])
def test_a_teacher_setting_its_source_would_ignore_stops_in_one_line(raw, message):
    """The probe's silent wrong result: an ensemble of two checkpoints under source=train was one teacher trained
    twice from scratch, both files unread."""
    with pytest.raises(ConfigError) as err:
        config.validate(raw)
    assert str(err.value) == message


def test_an_ensemble_teachers_missing_checkpoint_is_found_before_the_first_teacher_is_built(tmp_path):
    from conftest import random_teacher

    a = random_teacher(tmp_path / "a.safetensors")  # a resnet8
    cfg = config.validate({"teacher": {"source": "timm", "model": "resnet8", "checkpoint": str(a)},
                           "teachers": [{"name": "a"}, {"name": "b", "checkpoint": str(tmp_path / "b.safetensors")}]})
    with pytest.raises(ConfigError, match=r"^teachers\.b\.checkpoint: .*b\.safetensors: no such file$"):
        preflight.before_data(cfg)


def test_settings_this_run_never_reads_are_said():
    cfg = config.validate({"kd": {"loss": "kd", "hard": {"smoothing": 0.1}, "dkd": {"beta": 2.0},
                                  "feature_loss": "cosine", "ensemble": "mean_logits", "teacher": "online"},
                           "cache": {"features": True}})
    assert config.inert(cfg) == [
        "kd.dkd.beta=2.0 is read by kd.loss=dkd only; this run (kd.loss=kd) ignores it",
        "kd.hard.smoothing=0.1 is read by kd.loss=hard only; this run (kd.loss=kd) ignores it",
        "kd.feature_loss=cosine is read only with kd.feature_weight > 0; this run ignores it",
        "cache.features=true: kd.teacher=online builds no cache; this run ignores it",
        "kd.ensemble=mean_logits combines several teachers (teachers=[...]); this run has one and ignores it"]
    assert config.inert(config.validate({"kd": {"loss": "hard", "hard": {"smoothing": 0.1}}})) == []


def test_a_dict_given_on_the_command_line_replaces_the_recipes():
    """Hydra would merge {img_size: 32, drop_path_rate: 0.1} into the token recipe's model_args, and refuse the key
    the recipe lacks (exit 1, no error line); the command line's dict replaces it."""
    from conftest import compose_recipe
    from distill import cli

    given = ["student.model_args={img_size: 32, drop_path_rate: 0.1}", "kd.alpha=0.5"]
    args = cli.replace_dicts(given)
    assert args == ["student.model_args=null", *given]
    cfg = config.validate(compose_recipe("cifar10_resnet20_to_deit_token", args))
    assert cfg.student.model_args == {"img_size": 32, "drop_path_rate": 0.1} and cfg.kd.alpha == 0.5


def test_an_unknown_key_in_an_ensemble_teacher_names_the_close_ones():
    with pytest.raises(ConfigError) as err:
        config.validate({"teachers": [{"name": "a", "lr": 0.1}]})
    assert str(err.value) == ("teachers.a.lr: no such setting (did you mean teachers.a.optim.lr, "
                              "teachers.a.finetune.lr?)")


def test_an_ensemble_teachers_checkpoint_of_another_model_is_found_before_the_first_teacher_is_built(tmp_path):
    from conftest import random_teacher
    from distill.errors import CheckpointError

    a, b = random_teacher(tmp_path / "a.safetensors"), random_teacher(tmp_path / "b.safetensors")
    cfg = config.validate({"teacher": {"source": "timm", "model": "resnet8", "checkpoint": str(a)},
                           "teachers": [{"name": "a"}, {"name": "b", "model": "resnet14", "checkpoint": str(b)}]})
    with pytest.raises(CheckpointError, match=rf"^teachers\.b\.checkpoint: {b} does not fit resnet14: missing keys "):
        preflight.before_data(cfg)


# ---------------------------------------------------------------- folders, batches and settings found before any work

@pytest.mark.parametrize("key, place, message", [
    ("run_root", "{file}", "run_root: {file} is a file, so {file}/tiny cannot be a folder"),
    ("run_root", "/proc/distill-check", r"run_root: cannot make /proc/distill-check \(/proc: No such file "),
    ("cache.root", "{file}", "cache.root: {file} is a file, not a folder"),
    ("cache.root", "{file}/cache", "cache.root: {file} is a file, so {file}/cache cannot be a folder"),
    ("teacher.dir", "{file}", "teacher.dir: {file} is a file, not a folder"),
])
def test_a_folder_the_run_cannot_write_stops_it_before_any_work(parquet_file, tmp_path, key, place, message):
    """Each folder a run writes into (run_root, cache.root, teacher.dir) is a folder, or can be made, and takes new
    files; else one line naming its key, before the data is read (a traceback once a stage wrote there)."""
    file, runs = tmp_path / "afile", tmp_path / "runs"
    file.write_text("a file where the run would make a folder")
    args = [a for a in tiny_overrides(parquet_file, runs) if not a.startswith(key + "=")]
    r = run_here(*args, f"{key}={place.format(file=file)}", "cache.views=1")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert re.match("error: " + message.format(file=re.escape(str(file))), lines[0]), lines[0]
    assert lines[0].endswith(f"give {key}= a folder this user can write (checked before any work)")
    assert not runs.exists() and not list(tmp_path.glob(".distill-*"))


def test_a_cache_root_without_permission_is_named_before_any_work(parquet_file, tmp_path):
    """The line a stage gives on meeting a permission problem (cli.file_problem), naming cache.root, whose parent
    cannot be made: before, the teacher was done first."""
    from test_sweep_errors import _unwritable

    root, failing = _unwritable(tmp_path)
    r = run_here(*tiny_overrides(parquet_file, tmp_path / "runs"), f"cache.root={root}/cache")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"error: {failing}: permission denied (")
    assert "give cache.root= another place" in r.stderr
    assert not (tmp_path / "runs").exists()


def test_a_cache_root_that_no_stage_of_the_run_writes_is_left_alone(parquet_file, tmp_path):
    cfg = config.validate({"stage": "teacher", "cache": {"root": str(parquet_file)}})
    preflight.check_folders(cfg, tmp_path / "runs" / "x")
    with pytest.raises(ConfigError, match="^cache.root: "):
        preflight.check_folders(config.validate({"cache": {"root": str(parquet_file)}}), tmp_path / "runs" / "x")


def test_a_batch_larger_than_the_data_names_its_key_before_any_work(parquet_file, tmp_path):
    """It stopped once the teacher and the cache were done, naming `student` only."""
    r = run_here(*tiny_overrides(parquet_file, tmp_path / "runs"), "student.batch_size=1000", "data.train_size=1000")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "error: student.batch_size: 1000 x 1 process(es) x grad_accum 1 is more than the 48 training images (no step "
        "an epoch); lower student.batch_size (checked before any work)")
    assert "data.train_size=1000: the training split has 48 images; this run uses all of them" in r.stderr
    assert not (tmp_path / "runs").exists()


def test_each_trained_model_has_at_least_one_step_an_epoch():
    big = {"batch_size": 40, "grad_accum": 2}
    with pytest.raises(ConfigError, match=r"^teacher\.batch_size: 40 x 1 process\(es\) x grad_accum 2 is more than "):
        preflight.check_batches(config.validate({"teacher": big, "student": {"batch_size": 16}}), 48, 1)
    with pytest.raises(ConfigError, match=r"^teachers\.b\.batch_size: 40 x 1 process\(es\) x grad_accum 2 "):
        preflight.check_batches(config.validate({"teacher": {"batch_size": 16}, "student": {"batch_size": 16},
                                                   "teachers": [{"name": "a"}, {"name": "b", **big}]}), 48, 1)
    with pytest.raises(ConfigError, match=r"^student\.batch_size: 16 x 4 process\(es\) x grad_accum 1 "):
        preflight.check_batches(config.validate({"teacher": {"batch_size": 8}, "student": {"batch_size": 16}}), 48, 4)
    preflight.check_batches(config.validate({"student": {"batch_size": 16}, "teacher": {"batch_size": 16}}), 48, 3)
    loaded = {"source": "timm", "checkpoint": "t.safetensors", **big}  # a loaded teacher takes no training step
    preflight.check_batches(config.validate({"teacher": loaded, "student": {"batch_size": 16}}), 48, 1)
    preflight.check_batches(config.validate({"stage": "teacher", "teacher": {"batch_size": 8}}), 48, 1)


def test_a_warmup_as_long_as_the_training_is_said():
    said = config.inert(config.validate({"student": {"epochs": 1, "sched": {"warmup_epochs": 5}},
                                         "teacher": {"epochs": 3, "sched": {"warmup_epochs": 3.5}}}))
    assert said == [f"{k}.sched.warmup_epochs={w} is longer than {k}.epochs={e}: the learning rate never reaches its "
                    f"peak, and {k}.sched.name=cosine never acts"
                    for k, w, e in (("teacher", 3.5, 3), ("student", 5.0, 1))]
    assert config.inert(config.validate({"student": {"epochs": 2, "sched": {"warmup_epochs": 2}}})) == []  # it ends
    loaded = {"source": "timm", "checkpoint": "t.safetensors", "epochs": 1, "sched": {"warmup_epochs": 5}}
    assert config.inert(config.validate({"teacher": loaded})) == []  # not trained: its schedule is never read


def test_an_onnx_opset_this_pytorch_cannot_write_stops_before_any_work():
    """It stopped with torch's traceback after the teacher, the cache and the student were done."""
    with pytest.raises(ConfigError, match=r"^export\.opset: PyTorch \S+ writes ONNX opsets up to \d+, not 99; set "
                                          r"export\.opset lower, or export\.onnx=false$"):
        preflight.before_data(config.validate({"stage": "export", "export": {"opset": 99}}))
    preflight.before_data(config.validate({"stage": "student", "export": {"opset": 99}}))
    preflight.before_data(config.validate({"stage": "all", "export": {"opset": 99, "onnx": False}}))
    preflight.before_data(config.validate({"stage": "all", "export": {"opset": 17}}))


@pytest.mark.parametrize("arg, line", [
    ("recipe=../data/demo", "error: recipe: '../data/demo' is a path, not a recipe name (a file of recipes/recipe/, "
                            "named without its folder or .yaml); recipes: "),
    ("hydra.run.dir=elsewhere", "error: hydra.run.dir: not read by distill; a run writes into <run_root>/<name>/: set "
                                "run_root= and name= instead"),
])
def test_a_recipe_path_or_hydras_run_folder_is_refused_in_one_line(tmp_path, arg, line):
    """recipe=../data/demo read a data file as the recipe (Hydra: "Key 'recipe' not in 'ConfigBase'"), and
    hydra.run.dir was silently ignored."""
    r = run_cli(arg, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(line), r.stderr
    assert not (tmp_path / "runs").exists()
@pytest.mark.parametrize("args, line", [
    (["name=../../escape"], "name: the run's name is a folder name (letters, digits, _ . -), not '../../escape'; the "
                            "run writes to <run_root>/<name> (to write elsewhere, set run_root=)"),
    (["name=/tmp/x"], "name: the run's name is a folder name (letters, digits, _ . -), not '/tmp/x'; the run writes "
                      "to <run_root>/<name> (to write elsewhere, set run_root=)"),
    (["-m", "name=ok,../up", "stage=teacher"], "name: the run's name is a folder name (letters, digits, _ . -), not "
                                               "'../up'; the run writes to <run_root>/<name> (to write elsewhere, set "
                                               "run_root=) (sweep point 2 of 2: name=../up stage=teacher "
                                               "run_root=runs teacher.epochs=1 student.epochs=1; nothing was run)"),
])
def test_a_name_that_would_leave_its_folder_is_refused_before_any_work(tmp_path, args, line):
    """The run's name is one folder inside run_root (as an ensemble teacher's is inside the run): a name with a
    path in it wrote outside run_root."""
    where = tmp_path / "a" / "b"
    where.mkdir(parents=True)
    r = run_cli(*args, "run_root=runs", "teacher.epochs=1", "student.epochs=1", cwd=where)
    assert (r.returncode, r.stderr.strip()) == (2, f"error: {line}"), r.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b"]  # nothing written, in run_root or above it


def test_a_recipe_name_with_a_path_is_no_recipe(tmp_path):
    r = run_cli("recipe=../config", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: recipe: '../config' is a path, not a recipe name"), r.stderr
