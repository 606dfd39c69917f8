"""torch.compile (student.compile, teacher.compile, cache.compile, kd.compile_teacher): off by default; compiled
training and teacher inference equal eager's within float rounding, and a compiled cache has an identity of its own.

Each compile takes seconds to tens of seconds on a CPU (inductor writes and builds C++; its on-disk cache makes a
second run faster), so the tests are few and the models and batches tiny.

The bounds. float32 results of one function computed in another order (inductor fuses and reorders the
convolutions' epilogues and the reductions) differ by rounding only: torch.testing's own float32 tolerances
(rtol 1.3e-6, atol 1e-5: what PyTorch allows between two correct float32 computations of one result) bound them.
The cache stores its top-k logits in fp16: there a value may also round to the neighbouring fp16 number, one step
of 2^-10 of its magnitude, so those are compared with rtol 2^-10 on top of the float32 atol.
"""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import cache_overrides, needs_cxx, random_teacher, run_here, tiny_dataset
from distill import config
from distill.errors import ConfigError
from distill.store import fingerprints, softlabels
from distill.training import models

FLOAT32 = {"rtol": 1.3e-6, "atol": 1e-5}  # torch.testing.assert_close's defaults for float32
FP16_STORED = {"rtol": 2.0 ** -10, "atol": 1e-5}  # + one fp16 rounding step of the stored value


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compile")
    tiny_dataset(size=32).to_parquet(str(tmp / "d.parquet"))  # at 32 pixels inductor's logits differ from eager's
    return tmp / "d.parquet", random_teacher(tmp / "teacher.safetensors")


@needs_cxx
def test_a_compiled_student_step_has_eager_loss_and_gradients():
    torch.manual_seed(0)
    eager = models.create("resnet8", 3).to(memory_format=torch.channels_last)
    twin = models.create("resnet8", 3).to(memory_format=torch.channels_last)
    twin.load_state_dict(eager.state_dict())
    step = models.compiled(twin, True)
    assert step is not twin and models.compiled(eager, False) is eager  # off: the model itself
    x = torch.randn(16, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    y = torch.arange(16) % 3
    losses = []
    for net in (eager, step):
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], **FLOAT32)
    for (name, p), q in zip(eager.named_parameters(), twin.parameters()):
        torch.testing.assert_close(q.grad, p.grad, **FLOAT32, msg=name)


@needs_cxx
def test_compiled_training_and_online_teacher_write_plain_weights_under_their_own_fingerprint(shared, tmp_path,
                                                                                              monkeypatch):
    data_path, teacher_file = shared
    args = cache_overrides(data_path, tmp_path, teacher_file) + [
        "stage=student", "student.epochs=1", "student.batch_size=16", "student.baseline=true", "kd.teacher=online"]
    real, asked = models.compiled, []
    monkeypatch.setattr(models, "compiled", lambda model, on: asked.append(on) or real(model, on))
    r = run_here(*args, "student.compile=true", "kd.compile_teacher=true")
    assert r.returncode == 0, r.stderr
    assert asked == [True, True, True]  # the online teacher's forward, the student's and the baseline's training
    student = tmp_path / "runs" / "tiny" / "student"
    weights = load_file(str(student / "model.safetensors"))
    assert sorted(weights) == sorted(models.create("resnet8", 3).state_dict())  # no torch.compile wrapper's names
    settings = json.loads((student / "meta.json").read_text())["config"]
    assert settings["student"]["compile"] is True and settings["kd"]["compile_teacher"] is True
    cfg = config.validate({})
    on = config.validate({"student": {"compile": True}, "kd": {"compile_teacher": True}})
    assert "student.compile" not in fingerprints.settings(cfg, "student")  # off: every fingerprint as before
    assert fingerprints.settings(on, "student") == fingerprints.settings(cfg, "student") | {
        "student.compile": True, "kd.compile_teacher": True}
    assert fingerprints.settings(on, "baseline") == fingerprints.settings(cfg, "baseline") | {"student.compile": True}


@needs_cxx
def test_a_compiled_teacher_labels_the_cache_as_eager_does_in_a_folder_of_its_own(shared, tmp_path, monkeypatch):
    """The rule: the cache identity holds cache.compile only when true, because the bytes can differ: inductor's
    float32 logits differ from eager's in the last bits (here, resnet8 at 32 pixels: every shard's bytes differ,
    within the bounds; at 12 pixels they happen to be equal), and the cache stores float32 logsumexps, means and
    stds. So a compiled run never reuses the eager cache, nor the eager run a compiled one, and with compile off
    every cache keeps the folder it had."""
    data_path, teacher_file = shared
    args = cache_overrides(data_path, tmp_path, teacher_file, cache__topk=3, data__image_size=32)  # every logit kept
    assert run_here(*args).returncode == 0
    real, asked = models.compiled, []
    monkeypatch.setattr(models, "compiled", lambda model, on: asked.append(on) or real(model, on))
    r = run_here(*args, "cache.compile=true")
    assert r.returncode == 0, r.stderr
    assert asked == [True] and "cache: reusing" not in r.stderr
    folders = sorted((p for p in (tmp_path / "cache").iterdir() if p.is_dir()),
                     key=lambda p: "cache.compile" in _identity(p))
    assert len(folders) == 2  # the eager cache, then the compiled one
    assert "cache.compile" not in _identity(folders[0]) and _identity(folders[1])["cache.compile"] is True
    eager, compiled = (softlabels.SoftLabels(f) for f in folders)
    assert len(eager) == len(compiled) == 48
    for i in range(len(eager)):
        a, b = eager.row(i), compiled.row(i)
        for name in ("view", "classes", "top1", "correct"):
            np.testing.assert_array_equal(b[name], a[name], err_msg=name)
        torch.testing.assert_close(torch.tensor(b["logits"]).float(), torch.tensor(a["logits"]).float(), **FP16_STORED)
        for name in ("lse", "target", "mean", "std", "lse_rest", "lse_std_rest"):
            torch.testing.assert_close(torch.tensor(b[name]), torch.tensor(a[name]), **FLOAT32, msg=name)


def _identity(folder) -> dict:
    return softlabels.read_manifest(folder).inputs


@pytest.mark.parametrize("key", ["teacher.compile", "student.compile", "cache.compile", "kd.compile_teacher"])
def test_a_bad_compile_value_is_one_line_naming_the_key(key):
    section, leaf = key.split(".")
    with pytest.raises(ConfigError) as e:
        config.validate({section: {leaf: "fast"}})
    assert str(e.value) == f"{key}: Value 'fast' is not a valid bool (type str)"  # a setting that exists, a bool


def test_a_compile_switch_the_run_never_reads_is_said_at_the_start():
    timm_teacher = {"source": "timm", "checkpoint": "t.safetensors", "compile": True}
    lines = config.inert(config.validate({"teacher": timm_teacher, "kd": {"compile_teacher": True}}))
    assert [line.split(" ", 1)[0] for line in lines] == ["teacher.compile=true", "kd.compile_teacher=true"]
    online = config.validate({"cache": {"compile": True}, "kd": {"teacher": "online", "compile_teacher": True},
                              "student": {"compile": True}, "teacher": {"compile": True}})
    assert [line.split(" ", 1)[0] for line in config.inert(online)] == ["cache.compile=true:"]
