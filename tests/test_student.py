"""The student stage: the KD objective, view replay, mixing of soft labels, online vs cached, and stage reuse."""
import json

import numpy as np
import pytest
import torch

from conftest import cache_overrides, random_teacher, run_cli
from distill import artifacts, cache, config, data, losses, models, student, tricks
from distill.config import KDCfg, MixCfg


def _soft(q):
    return lambda batch, mix, x: tricks.mix_targets(q, mix)


def test_alpha_zero_is_ce_and_alpha_one_is_kd():
    torch.manual_seed(0)
    logits, t = torch.randn(6, 5), torch.randn(6, 5)
    batch = {"label": torch.tensor([0, 1, 2, 3, 4, 0])}
    q = torch.softmax(t / 3.0, 1)
    ce = losses.soft_cross_entropy(logits, tricks.smooth_one_hot(batch["label"], 5, 0.1))
    kd = losses.kl_dense(logits, t, 3.0) * 9.0
    never = lambda b, m: False  # noqa: E731

    def obj(alpha):
        return student.kd_objective(KDCfg(alpha=alpha), 3.0, 5, 0.1, _soft(q), never)(logits, batch, None, None)
    assert obj(0.0).item() == pytest.approx(ce.item(), rel=1e-6)
    assert obj(1.0).item() == pytest.approx(kd.item(), rel=1e-5)
    assert obj(0.7).item() == pytest.approx(0.7 * kd.item() + 0.3 * ce.item(), rel=1e-5)


def test_focal_and_scale_balance():
    torch.manual_seed(0)
    logits, target = torch.randn(4, 3), torch.softmax(torch.randn(4, 3), 1)
    assert losses.focal(logits, target, 0.0).item() == pytest.approx(losses.soft_cross_entropy(logits, target).item())
    assert losses.focal(logits, target, 2.0).item() < losses.soft_cross_entropy(logits, target).item()
    a, b = torch.tensor(3.0, requires_grad=True), torch.tensor(0.5, requires_grad=True)
    out = losses.combine(a * 2, b * 4, 0.9, "scale")
    out.backward()
    assert out.item() == pytest.approx(1.0) and a.grad.item() == pytest.approx(0.9 / 3) and \
        b.grad.item() == pytest.approx(0.1 / 0.5)


@pytest.fixture
def dense_cache(parquet_file, tmp_path):
    teacher_file = random_teacher(tmp_path / "teacher.safetensors")
    r = run_cli(*cache_overrides(parquet_file, tmp_path, teacher_file, cache__topk=99), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = config.validate({"data": {"source": "auto", "path": str(parquet_file), "val_size": 12, "image_size": 12,
                                    "mean": [0.5] * 3, "std": [0.25] * 3, "flip": True, "padding": 2}})
    bundle = data.load(cfg.data)
    norm = {"per_image": False, "mean": [0.5] * 3, "std": [0.25] * 3}
    (folder,) = list((tmp_path / "cache").iterdir())
    items = cache.ViewItems(bundle, cfg.data, norm, 3, True, 0)
    teacher = models.create("resnet8", 3)
    teacher.load_state_dict(artifacts.load_weights(tmp_path / "runs" / "tiny" / "teacher"))
    return items, folder, teacher.eval()


def _batch(replay, idx):
    return torch.utils.data.default_collate([replay[i] for i in idx])


def test_student_sample_replays_the_view_the_teacher_labelled(dense_cache):
    items, folder, _ = dense_cache
    replay = student.ReplayItems(items, folder, "cycle", seed=0)
    seen = set()
    for epoch in range(4):
        replay.set_epoch(epoch)
        for i in (0, 5, 31, 47):
            got = replay[i]
            v = student.view_for(i, epoch, 3, "cycle", 0)
            assert got["view_id"] == v
            seen.add(v)
            at_cache_time = items.to_input(items[i]["images"])[v]
            assert torch.equal(items.to_input(got["image"][None])[0], at_cache_time)
    assert seen == {0, 1, 2}


def test_mixed_soft_labels_sum_to_one_and_equal_the_lambda_mix(dense_cache):
    items, folder, _ = dense_cache
    labels = cache.SoftLabels(folder)
    batch = _batch(student.ReplayItems(items, folder, "cycle", 0), range(8))
    soft, use_topk = student._cached_target(labels, 4.0)
    plain = soft(batch, None, None)
    assert use_topk(batch, None) and len(plain) == 3  # unmixed: the exact sparse form
    mix = tricks.draw_mix(np.random.default_rng(1), MixCfg(mixup_alpha=1.0), 8, 12, 12)
    q = soft(batch, mix, None)
    got = labels.gather(batch["index"].numpy(), batch["view_id"].numpy())
    dense = torch.softmax(torch.zeros(8, 3).scatter_(1, got["classes"], got["logits"]) / 4.0, 1)
    assert torch.allclose(q.sum(1), torch.ones(8), atol=1e-6)
    assert torch.allclose(q, mix.lam * dense + (1 - mix.lam) * dense[mix.perm], atol=1e-6)


def test_online_and_cached_give_the_same_loss_on_the_same_batch(dense_cache):
    items, folder, teacher = dense_cache
    labels = cache.SoftLabels(folder)
    batch = _batch(student.ReplayItems(items, folder, "cycle", 0), range(12))
    x = items.to_input(batch["image"])
    torch.manual_seed(0)
    logits = models.create("resnet8", 3)(x)
    from accelerate import Accelerator
    kd = KDCfg(alpha=0.9)
    cached = student.kd_objective(kd, 4.0, 3, 0.0, *student._cached_target(labels, 4.0))
    online = student.kd_objective(kd, 4.0, 3, 0.0, *student._online_target(teacher, 4.0, Accelerator(cpu=True)))
    a, b = cached(logits, batch, None, x), online(logits, batch, None, x)
    assert a.item() == pytest.approx(b.item(), rel=2e-3)  # fp16 storage of the logits is the only difference


def test_rerun_skips_finished_stages_and_a_student_change_reruns_only_the_student(parquet_file, tmp_path):
    teacher_file = random_teacher(tmp_path / "teacher.safetensors")
    args = cache_overrides(parquet_file, tmp_path, teacher_file) + [
        "stage=all", "student.epochs=1", "student.batch_size=16", "student.baseline=true"]
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    assert set(summary["models"]) == {"teacher", "student", "baseline"} and "kd_gain_top1" in summary
    assert (tmp_path / "runs" / "tiny" / "curves.png").stat().st_size > 10000
    assert "KD gain over the CE baseline" in first.stderr
    again = run_cli(*args, cwd=tmp_path)
    for stage in ("teacher", "cache", "student", "baseline"):
        assert f"{stage}: reusing" in again.stderr, stage
    changed = run_cli(*args, "student.optim.lr=0.05", cwd=tmp_path)
    assert changed.returncode == 0, changed.stderr
    assert "teacher: reusing" in changed.stderr and "cache: reusing" in changed.stderr
    assert "student: reusing" not in changed.stderr and "student: 1 epochs" in changed.stderr
    assert "baseline: reusing" not in changed.stderr  # same recipe and budget as the student: retrained too


def test_online_mode_needs_no_cache(parquet_file, tmp_path):
    teacher_file = random_teacher(tmp_path / "teacher.safetensors")
    args = cache_overrides(parquet_file, tmp_path, teacher_file) + [
        "stage=student", "student.epochs=1", "student.batch_size=16", "kd.teacher=online"]
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "cache: skipped" in r.stderr and not (tmp_path / "cache").exists()
    assert json.loads((tmp_path / "runs" / "tiny" / "student" / "meta.json").read_text())["metrics"]["epoch"] == 1


def test_another_temperature_needs_all_logits(parquet_file, tmp_path):
    teacher_file = random_teacher(tmp_path / "teacher.safetensors")
    args = cache_overrides(parquet_file, tmp_path, teacher_file, cache__topk=2) + [
        "stage=student", "student.epochs=1", "student.batch_size=16", "kd.temperature=2"]
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: kd.temperature: 2.0 differs from cache.temperature=4.0")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs" / "tiny" / "teacher").exists()  # before work


def test_replay_warning_past_the_views_rule_only():
    rule, v = cache.MAX_USES_PER_VIEW, 4
    at = int(rule * v)  # each view replayed exactly `rule` times: within the rule
    assert cache.replay_warning(at, v, 1000) is None
    warning = cache.replay_warning(at + 1, v, 1000)
    need = cache.views_for(at + 1)
    assert need > v and (at + 1) / need <= rule < (at + 1) / (need - 1)  # the fewest views that meet the rule
    assert f"cache.views={need}" in warning and f"{(need - v) * 1000:,} teacher forwards" in warning


@pytest.mark.parametrize("past", [False, True])
def test_student_run_warns_when_views_are_replayed_past_the_rule(parquet_file, tmp_path, capfd, past):
    from conftest import config_from
    from distill import run
    teacher_file = random_teacher(tmp_path / "teacher.safetensors")
    epochs = int(cache.MAX_USES_PER_VIEW * 2) + past  # over a 2-view cache
    cfg = config_from(cache_overrides(parquet_file, tmp_path, teacher_file, cache__views=2) + [
        "stage=student", f"student.epochs={epochs}", "student.batch_size=16"])
    run.execute(cfg)  # logs to stderr, as on the command line
    assert capfd.readouterr().err.count("cached views replay each view") == past
