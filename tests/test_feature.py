"""Feature distillation (kd.feature_weight, kd.feature_loss; timm's feature task) online and from the cache
(cache.features): the losses against their formulas, the student's projection, cached features against the live
teacher's, crash safety, process-count independence, growth, and the bad inputs."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from timm.models import register_model

from conftest import ROOT, cache_overrides, config_from, labelled, random_teacher, run_here
from distill import losses, run
from distill.config import KDCfg
from distill import data
from distill.data import views
from distill.errors import DataError
from distill.store import artifacts, softlabels
from distill.training import models, objectives, tricks

FEATURES = {"cache__features": "true"}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("width", [1, 64, 2048])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 300.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_the_feature_losses_equal_their_formulas(width, scale, dtype):
    g = torch.Generator().manual_seed(width)
    s = (torch.randn(5, width, generator=g, dtype=torch.float64) * scale).to(dtype)
    t = (torch.randn(5, width, generator=g, dtype=torch.float64) * scale + 0.5 * scale).to(dtype)
    a, b = s.double().numpy(), t.double().numpy()  # the formulas, in float64, on the values as stored
    mse = sum((a[i, j] - b[i, j]) ** 2 for i in range(5) for j in range(width)) / (5 * width)
    cos = np.mean([1 - a[i] @ b[i] / (np.sqrt(a[i] @ a[i]) * np.sqrt(b[i] @ b[i])) for i in range(5)])
    assert losses.feature_mse(s, t).item() == pytest.approx(mse, rel=1e-5)
    assert losses.feature_cosine(s, t).item() == pytest.approx(cos, rel=1e-4, abs=1e-6)
    assert losses.feature_cosine(s, 3.0 * s).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert losses.feature_mse(s, s).item() == 0.0


class _Teacher:
    """Fixed teacher answers: log-probabilities and pooled features."""
    sees_mixed_input = False

    def __init__(self, q, f):
        self.q, self.f, self.feature_dim = q, f, f.shape[1]

    def log_probs(self, batch, x, temperature, standardized):
        return self.q.log()

    def feature(self, batch, x):
        return self.f


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_the_objective_adds_the_weighted_feature_loss_to_any_method(kind):
    torch.manual_seed(0)
    logits, t, own, taught = torch.randn(6, 5), torch.randn(6, 5), torch.randn(6, 8), torch.randn(6, 8)
    batch = labelled([0, 1, 2, 3, 4, 0])
    teacher = _Teacher(torch.softmax(t / 4.0, 1), taught)
    for loss in ("kd", "dist", "hard"):
        plain = objectives.objective_for(KDCfg(loss=loss), 5, 0.1, teacher)(logits, batch, None, None,
                                                                            objectives.Progress(0, 0))
        cfg = KDCfg(loss=loss, feature_weight=2.5, feature_loss=kind)
        got = objectives.objective_for(cfg, 5, 0.1, teacher)({"logits": logits, "feature": own}, batch, None, None,
                                                            objectives.Progress(0, 0))
        a, b = own.double(), taught.double()
        want = (((a - b) ** 2).mean() if kind == "mse"
                else (1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean()).item()
        assert got["feature"].item() == pytest.approx(want, rel=1e-5)
        assert got["loss"].item() == pytest.approx(plain["loss"].item() + 2.5 * want, rel=1e-5)
    # the student's own mixing folds into cached features as into cached distributions
    perm, lam = torch.tensor([3, 2, 1, 0, 5, 4]), 0.3
    mixed = objectives.objective_for(KDCfg(feature_weight=1.0), 5, 0.0, teacher)._teacher_feature(
        batch, tricks.Mix(perm=perm, lam=lam), None)
    assert torch.allclose(mixed, lam * taught + (1 - lam) * taught[perm])


def test_the_feature_student_projects_only_when_widths_differ_and_evaluates_as_the_model():
    x = torch.randn(4, 3, 12, 12)
    for name, teacher_width, project in (("resnet8", 64, nn.Identity), ("resnet8x4", 64, nn.Linear)):
        torch.manual_seed(0)
        net = models.create(name, 3)
        wrapped = models.FeatureStudent(net, teacher_width)
        assert isinstance(wrapped.project, project)
        wrapped.eval()
        assert torch.equal(wrapped(x), net(x))  # evaluation and export: the model's own logits
        wrapped.train()
        out = wrapped(x)
        pooled = net.forward_head(net.forward_features(x), pre_logits=True)
        assert out["feature"].shape == (4, teacher_width)
        assert torch.allclose(out["feature"], wrapped.project(pooled), atol=1e-6)


def test_cached_features_are_the_live_teachers_pooled_features_on_the_same_views(shared):
    folder = shared.cache(**FEATURES)
    labels = softlabels.SoftLabels(folder, verify=True, features=True)
    assert labels.manifest.to_json()["features"] == {"dim": 64, "dtype": "<f2", "bytes_per_view": 128}
    plain = shared.cache()
    assert folder != plain  # its own folder, and the same records: the logits do not depend on the features
    assert {n: b for n, b in _files(folder).items() if n.startswith("shard-") and n.endswith(".npy")} == \
        {n: b for n, b in _files(plain).items() if n.startswith("shard-") and n.endswith(".npy")}
    from test_cache import _teacher, _tiny_data
    cfg, bundle, to_input = _tiny_data(shared)
    images, teacher = bundle.images["train"], _teacher(shared)
    idx = np.array([0, 9, 16, 31, 47])
    rows = labels.rows(idx)
    for v in range(labels.views):
        x = to_input(data.Views(image=torch.stack([views.apply(images.image(i), rows["view"][j, v], cfg.data)
                                                   for j, i in enumerate(idx)])))
        with torch.no_grad():
            live = teacher.forward_head(teacher.forward_features(x), pre_logits=True)
        stored = torch.stack([labels.feature(i, v) for i in idx])
        # fp16 storage: half a unit in the last place is 2^-11 relative; the cache's teacher has its BatchNorm
        # folded into the convolutions (float rounding)
        assert torch.allclose(stored, live, rtol=2e-3, atol=1e-3), (stored - live).abs().max()
    with pytest.raises(DataError, match="stores no features"):
        softlabels.SoftLabels(plain, features=True)


def test_each_replayed_sample_brings_the_teachers_feature_of_the_very_view_it_replays(shared):
    from test_cache import _teacher, _tiny_data
    from distill.stages import student
    folder = shared.cache(**FEATURES)
    cfg, bundle, to_input = _tiny_data(shared)
    teacher = _teacher(shared)
    replay = student.ReplayItems(bundle.images["train"], cfg.data, [folder], "cycle", seed=0, features=True)
    for epoch in range(3):  # each sample's view changes with the epoch; its feature must follow it
        replay.set_epoch(epoch)
        batch = data.collate_replay([replay[i] for i in (0, 7, 30, 47)])
        assert len(set(((batch.index + epoch) % 3).tolist())) > 1 and torch.equal(batch.view_id,
                                                                                  (batch.index + epoch) % 3)
        with torch.no_grad():
            x = to_input(batch)
            live = teacher.forward_head(teacher.forward_features(x), pre_logits=True)
        assert torch.allclose(batch.teachers[0].feature, live, rtol=2e-3, atol=1e-3)  # fp16 storage, folded BN
    without = data.collate_replay([student.ReplayItems(bundle.images["train"], cfg.data, [folder], "cycle", 0)[0]])
    assert without.teachers[0].feature is None


def test_a_kill_during_feature_labelling_resumes_to_identical_bytes(shared, tmp_path):
    reference = _files(shared.cache(**FEATURES))
    args = cache_overrides(shared.data, tmp_path, shared.teacher_file, **FEATURES)
    env = dict(os.environ, PYTHONPATH=str(ROOT), DISTILL_FAULT="cache_features:2:KILL")
    proc = subprocess.run([sys.executable, str(ROOT / "distill" / "run.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, timeout=1800)  # a hang guard, not a budget
    assert proc.returncode == -signal.SIGKILL
    (folder,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    left = _files(folder)
    assert "features-00001.npy" in left and "shard-00001.json" not in left and "manifest.json" not in left
    r = run_here(*args)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "runs" / "tiny" / "cache.json").read_text())["images"] == 32  # shards 1 and 2
    assert _files(folder) == reference


def test_two_processes_write_the_feature_cache_one_process_writes(shared, tmp_path):
    args = cache_overrides(shared.data, tmp_path, shared.teacher_file, **FEATURES)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "distill" / "run.py"),
           *args]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1800,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    assert "(0 of this process's 2 already done)" in r.stderr  # 48 images, 3 shards: rank 0 labels two of them
    (folder,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert _files(folder) == _files(shared.cache(**FEATURES))


def test_a_grown_feature_cache_equals_a_fresh_one(shared, tmp_path):
    def build(root: Path, v: int) -> Path:
        run.execute(config_from(cache_overrides(shared.data, root, shared.teacher_file, cache__views=v,
                                                cache__batch_size=5, **FEATURES)))
        return Path(json.loads((root / "runs" / "tiny" / "cache.json").read_text())["folder"])
    build(tmp_path / "grown", 2)
    grown = build(tmp_path / "grown", 4)
    assert json.loads((tmp_path / "grown" / "runs" / "tiny" / "cache.json").read_text())["images"] == 48
    assert _files(grown) == _files(build(tmp_path / "fresh", 4))


def test_a_student_learns_the_cached_feature_through_a_projection_that_is_not_exported(shared, tmp_path, monkeypatch):
    args = cache_overrides(shared.data, tmp_path, shared.teacher_file, **FEATURES) + [
        "stage=student", "student.model=resnet8x4", "student.epochs=1", "student.batch_size=16",
        "student.baseline=true", "kd.feature_weight=1"]
    r = run_here(*args)
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "runs" / "tiny"
    epoch = json.loads((run_dir / "student" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "feature" in epoch["terms"] and epoch["feature"] > 0
    student, baseline = (artifacts.load_weights(run_dir / n) for n in ("student", "baseline"))
    assert set(student) == set(baseline)  # the 256 -> 64 projection trained with it and stayed behind
    meta = json.loads((run_dir / "student" / "meta.json").read_text())
    assert meta["params"] == json.loads((run_dir / "baseline" / "meta.json").read_text())["params"]
    # online: the live teacher's pooled feature of the student's very input, one teacher forward per step
    forwards, frozen = [], models.frozen

    def counting(model, device):
        m = frozen(model, device)
        m.register_forward_hook(lambda mod, inputs, out: forwards.append(type(out)))
        return m
    monkeypatch.setattr(models, "frozen", counting)
    r = run_here(*args, "kd.teacher=online", "name=online", "student.baseline=false", "kd.feature_loss=cosine")
    assert r.returncode == 0, r.stderr
    steps = json.loads((tmp_path / "runs" / "online" / "student" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "feature" in steps["terms"] and len(forwards) == steps["step"] and set(forwards) == {tuple}


class Featureless(nn.Module):
    """A model timm builds but whose pooled feature it cannot give: no forward_features / forward_head."""

    def __init__(self, num_classes: int = 10, **kwargs):
        super().__init__()
        self.fc = nn.Linear(3, num_classes)

    def forward(self, x):
        return self.fc(x.mean((2, 3)))


@register_model
def featureless_test_net(pretrained=False, **kwargs):
    return Featureless(**kwargs)


@pytest.mark.parametrize("extra, message", [
    (["teachers=[{name: a}, {name: b}]"], "kd.feature_weight: feature distillation learns one teacher's feature"),
    ([], "kd.feature_weight: with kd.teacher=cached the teacher's features come from the cache; set "
         "cache.features=true"),
    (["kd.teacher=online", "student.model=featureless_test_net"],
     "kd.feature_weight: timm cannot give the pooled pre-logit feature of student.model=featureless_test_net (it "
     "has no forward_features/forward_head)"),
    (["cache.features=true", "teacher.model=featureless_test_net"],
     "timm cannot give the pooled pre-logit feature of teacher.model=featureless_test_net"),
])
def test_bad_feature_settings_stop_in_one_line_before_any_work(shared, tmp_path, extra, message):
    r = run_here(*cache_overrides(shared.data, tmp_path, shared.teacher_file), "kd.feature_weight=1", *extra)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0 and not (tmp_path / "runs" / "tiny" / "teacher").exists()


def test_a_cache_over_max_gb_is_refused_before_the_teacher(parquet_file, tmp_path):
    from conftest import tiny_overrides
    r = run_here(*tiny_overrides(parquet_file, tmp_path / "runs"), "cache.features=true", "cache.views=4",
                 "cache.max_gb=0.00001")
    # 48 images: 4 views x (the record) + 4 views x 64 x 2 B of features each
    assert r.returncode == 2, r.stderr
    assert "cache.max_gb: the cache would take 0.0 GB (48 images x 4 views:" in r.stderr
    assert "+ 128 B of features per view), more than cache.max_gb=1e-05" in r.stderr
    assert not (tmp_path / "runs" / "tiny" / "teacher").exists()


def test_a_teacher_of_another_feature_width_gets_a_new_cache_and_the_old_one_is_untouched(shared, tmp_path):
    old = shared.copy_cache(tmp_path, **FEATURES)
    before = _files(old)
    wide = random_teacher(tmp_path / "wide.safetensors", model="resnet8x4")
    r = run_here(*cache_overrides(shared.data, tmp_path, wide, **FEATURES), "teacher.model=resnet8x4")
    assert r.returncode == 0, r.stderr
    new = Path(json.loads((tmp_path / "runs" / "tiny" / "cache.json").read_text())["folder"])
    assert new != old and _files(old) == before
    assert softlabels.SoftLabels(new, features=True).feature_dim == 256
    # a features file that does not hold what the manifest says is refused, never misread
    manifest = json.loads((new / "manifest.json").read_text())
    sh = manifest["shards"][0]
    np.save(new / sh["features_file"], np.zeros((sh["rows"], 3, 64), np.float16))
    with pytest.raises(DataError, match=r"holds features of shape \(16, 3, 64\), the manifest says \(16, 3, 256\)"):
        softlabels.SoftLabels(new, features=True)
    with pytest.raises(DataError, match="shard-00000.npy or features-00000.npy fails its checksum"):
        softlabels.SoftLabels(new, verify=True, features=True)
