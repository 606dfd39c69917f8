"""The student stage: the KD objective, view replay, mixing of soft labels, online vs cached, and stage reuse."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import cache_overrides, config_from, dense_kl, labelled, run_here
from distill import config, data, losses, methods, registry, report
from distill.data import transforms, views
from distill.store import artifacts, softlabels
from distill.training import models, objectives, targets, tricks
from distill.config import KDCfg, MixCfg
from distill.methods.dkd import DKDSettings
from distill.stages import student

MIXED = {"cache__topk": 99, "cache__mix__mixup_alpha": 1.0, "cache__mix__cutmix_alpha": 1.0, "cache__mix__prob": 0.8}


class _Fixed:
    """A teacher that answers with fixed distributions (given as probabilities, handed over as their logs)."""
    sees_mixed_input = False

    def __init__(self, q):
        self.q = q

    def log_probs(self, batch, x, temperature, standardized):
        return self.q.log()


START = objectives.Progress(epoch=0, step=0)


def test_alpha_zero_is_ce_and_alpha_one_is_kd():
    torch.manual_seed(0)
    logits, t = torch.randn(6, 5), torch.randn(6, 5)
    batch = labelled([0, 1, 2, 3, 4, 0])
    ce = losses.soft_cross_entropy(logits, tricks.smooth_one_hot(batch.label, 5, 0.1))
    kd = dense_kl(logits, t, 3.0) * 9.0

    def obj(alpha):
        objective = objectives.objective_for(KDCfg(alpha=alpha, temperature=3.0), 5, 0.1,
                                            _Fixed(torch.softmax(t / 3.0, 1)))
        return objective(logits, batch, None, None, START)
    assert obj(0.0)["loss"].item() == pytest.approx(ce.item(), rel=1e-6)
    assert obj(1.0)["loss"].item() == pytest.approx(kd.item(), rel=1e-5)
    terms = obj(0.7)
    assert terms["loss"].item() == pytest.approx(0.7 * kd.item() + 0.3 * ce.item(), rel=1e-5)
    assert terms["kd"].item() == pytest.approx(kd.item(), rel=1e-5) and terms["ce"].item() == pytest.approx(ce.item())


def test_dkd_objective_warms_up_and_dist_objective_weighs_its_relations():
    torch.manual_seed(0)
    logits, t = torch.randn(6, 5), torch.randn(6, 5)
    batch = labelled([0, 1, 2, 3, 4, 0])
    q = torch.softmax(t / 4.0, 1)
    ce = losses.soft_cross_entropy(logits, tricks.smooth_one_hot(batch.label, 5, 0.0))
    terms = losses.dkd(logits, t, batch.label, 4.0, 1.0, 8.0)  # the public function, on the same teacher
    kd = KDCfg(loss="dkd", dkd=DKDSettings(alpha=1.0, beta=8.0, warmup=20))
    dkd = objectives.objective_for(kd, 5, 0.0, _Fixed(q))
    for epoch, warm in ((0, 1 / 20), (9, 10 / 20), (30, 1.0)):
        got = dkd(logits, batch, None, None, objectives.Progress(epoch=epoch, step=0))["loss"]
        want = ce + warm * (terms["tckd"] + 8.0 * terms["nckd"])
        assert got.item() == pytest.approx(want.item(), rel=1e-5)
    relations = losses.dist(logits, t, 4.0, 2.0, 2.0)
    got = objectives.objective_for(KDCfg(loss="dist"), 5, 0.0, _Fixed(q))(logits, batch, None, None, START)
    assert got["loss"].item() == pytest.approx((ce + relations["loss"]).item(), rel=1e-5)
    assert got["inter"].item() == pytest.approx(relations["inter"].item(), rel=1e-5)
    assert set(got) == {"loss", "ce", "inter", "intra"}


def _setting(shared, **cache):
    cfg = config.validate({"data": {"source": "auto", "path": str(shared.data), "val_size": 12, "image_size": 12,
                                    "mean": [0.5] * 3, "std": [0.25] * 3, "flip": True, "padding": 2},
                           "cache": cache})
    bundle = data.load(cfg.data)
    teacher = models.create("resnet8", 3)
    teacher.load_state_dict(artifacts.load_weights(shared.teacher_dir))
    return cfg, bundle, transforms.ToInput(cfg.data, [0.5] * 3, [0.25] * 3), teacher.eval()


def _batch(replay, idx):
    return data.collate_replay([replay[i] for i in idx])


def test_student_sample_replays_the_view_the_teacher_labelled(shared):
    from distill.stages import cache
    folder = shared.cache(cache__topk=99)
    cfg, bundle, to_input, _ = _setting(shared)
    items = cache.ViewItems(bundle.images["train"], cfg.data, 3, True, 0)
    replay = student.ReplayItems(bundle.images["train"], cfg.data, [folder], "cycle", seed=0)
    seen = set()
    for epoch in range(4):
        replay.set_epoch(epoch)
        for i in (0, 5, 31, 47):
            got = replay[i]
            v = student.view_of(i, epoch, 3, "cycle", 0)
            assert got["view_id"] == v
            seen.add(v)
            assert torch.equal(got["image"], items[i]["image"][v])  # the uint8 pixels the teacher labelled
    assert seen == {0, 1, 2}


def test_mixed_soft_labels_sum_to_one_and_equal_the_lambda_mix(shared):
    folder = shared.cache(cache__topk=99)
    cfg, bundle, _, _ = _setting(shared)
    labels = softlabels.SoftLabels(folder)
    batch = _batch(student.ReplayItems(bundle.images["train"], cfg.data, [folder], "cycle", 0), range(8))
    teacher = targets.CachedTeacher(labels.num_classes, labels.dense, labels.temperature)
    assert labels.dense and labels.temperature == 1.0  # every logit kept: stored at T = 1, serves any T
    mix = tricks.draw_mix(np.random.default_rng(1), MixCfg(mixup_alpha=1.0), 8, 12, 12)
    q = objectives.objective_for(KDCfg(temperature=4.0), 3, 0.0, teacher)._teacher(batch, mix, None).exp()
    rows = labels.rows(batch.index.numpy())
    r, v = np.arange(8), batch.view_id.numpy()
    logits = torch.zeros(8, 3).scatter_(1, torch.from_numpy(rows["classes"][r, v].astype(np.int64)),
                                        torch.from_numpy(rows["logits"][r, v].astype(np.float32)))
    dense = torch.softmax(logits / 4.0, 1)
    assert torch.allclose(q.sum(1), torch.ones(8), atol=1e-6)
    assert torch.allclose(q, mix.lam * dense + (1 - mix.lam) * dense[mix.perm], atol=1e-6)


METHODS = [{"loss": "kd"}, {"loss": "dkd"}, {"loss": "dist"}, {"loss": "kd", "logit_standardization": True},
           {"loss": "dkd", "logit_standardization": True}]


@pytest.mark.parametrize("topk", [99, 2])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: "+".join(str(v) for v in m.values()))
def test_online_and_cached_give_the_same_loss_on_the_same_batch(shared, topk, method):
    """Every method from the cache equals the live teacher on the same views. With top-2 of 3 classes the cache
    holds the top 2 and the true class, so it is exact too (the rest, at most one class, is the residual)."""
    folder = shared.cache(cache__topk=topk)
    cfg, bundle, to_input, teacher = _setting(shared)
    labels = softlabels.SoftLabels(folder)
    batch = _batch(student.ReplayItems(bundle.images["train"], cfg.data, [folder], "cycle", 0), range(12))
    x = to_input(batch)
    torch.manual_seed(0)
    logits = models.create("resnet8", 3)(x)
    from accelerate import Accelerator
    kd = KDCfg(temperature=4.0, dkd=DKDSettings(warmup=0), **method)
    cached = objectives.objective_for(kd, 3, 0.0, targets.CachedTeacher(3, labels.dense, labels.temperature))
    online = objectives.objective_for(kd, 3, 0.0, targets.LiveTeacher(teacher, Accelerator(cpu=True).autocast))
    a, b = cached(logits, batch, None, x, START), online(logits, batch, None, x, START)
    assert a.keys() == b.keys()
    for name in a:  # fp16 storage of the logits is the only difference
        assert a[name].item() == pytest.approx(b[name].item(), rel=2e-3, abs=1e-5), name


def test_a_student_step_on_mixed_cached_views_equals_the_step_by_hand(shared):
    """ReplayItems' partner branch, the mixed hard labels and the blended input, through the stage's own pieces,
    against the formula computed here from the cache's records."""
    folder = shared.cache(**MIXED)
    cfg, bundle, to_input, _ = _setting(shared, mix={"mixup_alpha": 1.0, "cutmix_alpha": 1.0, "prob": 0.8})
    images, labels = bundle.images["train"], softlabels.SoftLabels(folder)
    replay = student.ReplayItems(images, cfg.data, [folder], "cycle", seed=0)
    replay.set_epoch(1)
    idx = list(range(16))
    batch = data.collate_replay([replay[i] for i in idx])
    kd = KDCfg(alpha=0.7, temperature=4.0)
    objective = objectives.objective_for(kd, 3, 0.1, targets.CachedTeacher(3, labels.dense, labels.temperature))
    torch.manual_seed(0)
    net = models.create("resnet8", 3)
    loss = objective(net(to_input(batch)), batch, None, None, START)["loss"]
    loss.backward()
    got = [p.grad.clone() for p in net.parameters()]

    rows = labels.rows(idx)
    xs, hard, soft, mixed = [], [], [], 0
    for r, i in enumerate(idx):
        v = (i + 1) % 3  # cycle schedule, epoch 1
        rec = rows[r]
        x = (views.apply(images.image(i), rec["view"][v], cfg.data).float() / 255 - 0.5) / 0.25
        y = torch.full((3,), 0.1 / 3)
        y[images.labels[i]] += 0.9
        p = int(rec["partner"][v])
        if p >= 0:
            mixed += 1
            xp = (views.apply(images.image(p), rec["partner_view"][v], cfg.data).float() / 255 - 0.5) / 0.25
            lam, (top, left, h, w) = float(rec["lam"][v]), rec["box"][v].tolist()
            if h * w:
                x = x.clone()
                x[:, top:top + h, left:left + w] = xp[:, top:top + h, left:left + w]
            else:
                x = lam * x + (1 - lam) * xp
            yp = torch.full((3,), 0.1 / 3)
            yp[images.labels[p]] += 0.9
            y = lam * y + (1 - lam) * yp
        xs.append(x)
        hard.append(y)
        t = torch.zeros(3).scatter_(0, torch.from_numpy(rec["classes"][v].astype(np.int64)),
                                    torch.from_numpy(rec["logits"][v].astype(np.float32)))
        soft.append(t)
    assert 0 < mixed < len(idx)  # both branches are exercised
    torch.manual_seed(0)
    net2 = models.create("resnet8", 3)
    out = net2(torch.stack(xs))
    log_p = torch.log_softmax(out, 1)
    ce = -(torch.stack(hard) * log_p).sum(1).mean()
    q = torch.softmax(torch.stack(soft) / 4.0, 1)
    kl = (q * (q.log() - torch.log_softmax(out / 4.0, 1))).sum(1).mean()
    want = 0.7 * kl * 16 + 0.3 * ce
    want.backward()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert all(torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6) for g, p in zip(got, net2.parameters()))


def test_a_student_trains_from_a_mixed_view_cache(shared, tmp_path):
    shared.copy_cache(tmp_path, **MIXED)  # its settings, under this test's cache root: reused, not relabelled
    r = run_here(*cache_overrides(shared.data, tmp_path, shared.teacher_file, **MIXED), "stage=student",
                 "student.epochs=1", "student.batch_size=16")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    assert summary["caches"]["teacher"]["reused"] and summary["models"]["student"]["epochs"] == 1


def _meta(run, stage):
    return (run / stage / "meta.json").read_bytes()


def test_rerun_skips_finished_stages_and_a_student_change_reruns_only_the_student(shared, tmp_path):
    shared.copy_cache(tmp_path)
    args = cache_overrides(shared.data, tmp_path, shared.teacher_file) + [
        "stage=all", "student.epochs=1", "student.batch_size=16", "student.baseline=true"]
    first = run_here(*args)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "runs" / "tiny"
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["models"]) == {"teacher", "student", "baseline"} and "kd_gain_top1" in summary
    assert (run / "curves.png").stat().st_size > 10000
    before = {stage: _meta(run, stage) for stage in ("teacher", "student", "baseline")}
    again = run_here(*args)
    assert again.returncode == 0, again.stderr
    assert {stage: _meta(run, stage) for stage in before} == before  # nothing retrained
    assert json.loads((run / "cache.json").read_text())["reused"]
    changed = run_here(*args, "student.optim.lr=0.05")
    assert changed.returncode == 0, changed.stderr
    assert _meta(run, "teacher") == before["teacher"] and json.loads((run / "cache.json").read_text())["reused"]
    assert _meta(run, "student") != before["student"]
    assert _meta(run, "baseline") != before["baseline"]  # same recipe and budget as the student: retrained too


def test_the_teachers_weights_are_hashed_once_a_run(shared, tmp_path, monkeypatch):
    """The run's identities (the cache's, the student's source, what the report checks) come from the run context,
    computed once: the teacher's weights are hashed once a run, by the teacher stage that writes or verifies them,
    whether the run makes its teacher or reuses everything."""
    from distill import files
    hashed, sha256 = [], files.sha256

    def counting(path):
        hashed.append(Path(path))
        return sha256(path)

    monkeypatch.setattr(files, "sha256", counting)
    monkeypatch.setattr(artifacts, "sha256", counting)  # imported by name there
    shared.copy_cache(tmp_path)
    args = cache_overrides(shared.data, tmp_path, shared.teacher_file) + [
        "stage=student", "student.epochs=1", "student.batch_size=16", "student.baseline=false"]
    weights = tmp_path / "runs" / "tiny" / "teacher" / "model.safetensors"
    for run in ("made", "reused"):
        hashed.clear()
        r = run_here(*args)
        assert r.returncode == 0, r.stderr
        assert hashed.count(weights) == 1, (run, hashed)


def test_online_mode_needs_no_cache(shared, tmp_path):
    args = cache_overrides(shared.data, tmp_path, shared.teacher_file) + [
        "stage=student", "student.epochs=1", "student.batch_size=16", "kd.teacher=online"]
    r = run_here(*args)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs" / "tiny" / "cache.json").exists()
    assert json.loads((tmp_path / "runs" / "tiny" / "student" / "meta.json").read_text())["metrics"]["epoch"] == 1


def test_a_top_k_cache_holds_one_temperature_and_another_gets_its_own_cache(shared, tmp_path):
    four = shared.copy_cache(tmp_path, cache__topk=2)  # soft labels at T = 4 (the default kd.temperature)
    args = cache_overrides(shared.data, tmp_path, shared.teacher_file, cache__topk=2) + [
        "student.epochs=1", "student.batch_size=16", "kd.temperature=2"]
    r = run_here(*args, "stage=student")  # runs the stages before it: the cache stage labels a T = 2 cache
    assert r.returncode == 0, r.stderr
    two = Path(json.loads((tmp_path / "runs" / "tiny" / "cache.json").read_text())["folder"])
    assert two != four and softlabels.SoftLabels(two).temperature == 2.0


def test_replay_warning_past_the_views_rule_only():
    rule, v = student.MAX_USES_PER_VIEW, 4
    at = int(rule * v)  # each view replayed exactly `rule` times: within the rule
    assert student.replay_warning(at, v, 1000) is None
    warning = student.replay_warning(at + 1, v, 1000)
    need = student.views_needed(at + 1)
    assert need > v and (at + 1) / need <= rule < (at + 1) / (need - 1)  # the fewest views that meet the rule
    assert f"cache.views={need}" in warning and f"{(need - v) * 1000:,} teacher forwards" in warning


@pytest.mark.parametrize("past", [False, True])
def test_student_run_warns_when_views_are_replayed_past_the_rule(shared, tmp_path, capfd, past):
    from distill import run
    shared.copy_cache(tmp_path, cache__views=2)
    epochs = int(student.MAX_USES_PER_VIEW * 2) + past  # over a 2-view cache
    cfg = config_from(cache_overrides(shared.data, tmp_path, shared.teacher_file, cache__views=2) + [
        "stage=student", f"student.epochs={epochs}", "student.batch_size=16"])
    run.execute(cfg)  # logs to stderr, as on the command line
    assert capfd.readouterr().err.count("cached views replay each view") == past


@pytest.mark.parametrize("method", ["dkd", "dist"])
def test_each_method_trains_a_student_and_logs_its_terms(shared, tmp_path, method):
    shared.copy_cache(tmp_path)
    r = run_here(*cache_overrides(shared.data, tmp_path, shared.teacher_file), "stage=student", "student.epochs=2",
                 "student.batch_size=16", "student.log_every=1", f"kd.loss={method}", "kd.dkd.warmup=1")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "tiny"
    terms = {"dkd": {"ce", "tckd", "nckd"}, "dist": {"ce", "inter", "intra"}}[method]
    epochs = [json.loads(line) for line in (run / "student" / "metrics.jsonl").read_text().splitlines()]
    assert all(terms | {"loss"} <= set(e) and set(e["terms"]) == terms | {"loss"} for e in epochs)
    steps = (run / "student" / "steps.jsonl").read_text().splitlines()
    assert steps and terms <= set(json.loads(steps[0]))
    drawn = report.curves({"teacher": shared.teacher_dir, "student": run / "student"}, tmp_path / "c.png")
    assert set(drawn["student loss terms"]) == terms and (run / "curves.png").exists()


@pytest.fixture
def throwaway():
    """A method defined in this test file alone (squared error between the two distributions at T), registered for
    this test only."""
    @registry.METHODS.register("throwaway_l2")
    class Throwaway(methods.Method, help="sum of squared differences of the distributions (a test's method)"):
        def __call__(self, student_logits, log_q, batch, kd_cfg, epoch):
            p = torch.softmax(student_logits.float() / kd_cfg.temperature, 1)
            l2 = ((p - log_q.exp()) ** 2).sum(1).mean()
            return {"l2": l2, "loss": 3.0 * l2}
    yield Throwaway
    registry.METHODS.unregister(Throwaway.name)


def test_a_method_registered_from_a_test_file_alone_trains_a_student(shared, tmp_path, throwaway):
    """Adding a method is one file: registered here, it is a valid kd.loss, its help line is in --help, and the
    student stage trains with it and logs its term."""
    assert throwaway.name in config.schema_keys()["kd.loss"] and throwaway.help in config.schema_keys()["kd.loss"]
    shared.copy_cache(tmp_path)
    r = run_here(*cache_overrides(shared.data, tmp_path, shared.teacher_file), "stage=student", "student.epochs=1",
                 "student.batch_size=16", f"kd.loss={throwaway.name}")
    assert r.returncode == 0, r.stderr
    epochs = [json.loads(line) for line in (tmp_path / "runs" / "tiny" / "student" / "metrics.jsonl").read_text()
              .splitlines()]
    assert set(epochs[0]["terms"]) == {"loss", "ce", "l2"} and 0 < epochs[0]["l2"] < 2
    # the objective is CE (weight 1: the method's default) plus the method's own loss, on a real batch
    batch = labelled([0, 1, 2])
    logits, q = torch.randn(3, 3), torch.softmax(torch.randn(3, 3), 1)
    teacher = type("Fixed", (), {"sees_mixed_input": False, "log_probs": lambda self, *a: q.log()})()
    got = objectives.objective_for(KDCfg(loss=throwaway.name), 3, 0.0, teacher)(logits, batch, None, None, START)
    want = losses.soft_cross_entropy(logits, tricks.smooth_one_hot(batch.label, 3, 0.0)) + \
        3.0 * ((torch.softmax(logits / 4.0, 1) - q) ** 2).sum(1).mean()
    assert got["loss"].item() == pytest.approx(want.item(), rel=1e-6)


def test_dkd_at_t1_on_the_demo_logs_the_exact_nckd(demo, tmp_path, monkeypatch):
    """`python distill/run.py kd.loss=dkd kd.temperature=1` (one student epoch, every step logged): the first
    step's logged nckd is the value the method computed, and equals the float64 paper formula on that batch's
    cached teacher logits and the student's logits. (The demo teacher gives its labels 0.90 to 0.99 on these views;
    the confident teachers, up to a target logit 40 above the rest, are test_losses' grid.)"""
    from test_losses import ref_dkd
    dkd_cls, seen = type(registry.METHODS.lookup("dkd")), []
    real = dkd_cls.__call__

    def spy(self, student_logits, log_q, batch, kd_cfg, epoch):
        out = real(self, student_logits, log_q, batch, kd_cfg, epoch)
        if not seen:
            record = batch.teachers[0]
            seen.append((student_logits.detach().double(), record.logits.double(), record.classes, batch.label,
                         out["nckd"].item()))
        return out
    monkeypatch.setattr(dkd_cls, "__call__", spy)
    where, _ = demo  # its teacher and its cache of every logit (any T) are reused: only the student trains
    r = run_here(f"run_root={tmp_path / 'runs'}", f"cache.root={where / 'cache'}",
                 f"teacher.dir={where / 'runs' / 'demo' / 'teacher'}", "kd.loss=dkd", "kd.temperature=1",
                 "stage=student", "student.baseline=false", "student.epochs=1", "student.log_every=1")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "runs" / "demo" / "cache.json").read_text())["reused"]
    logged = json.loads((tmp_path / "runs" / "demo" / "student" / "steps.jsonl").read_text().splitlines()[0])
    student_logits, values, classes, labels, computed = seen[0]
    teacher = torch.zeros_like(student_logits).scatter_(1, classes, values)  # the demo cache keeps every logit
    _, nckd = ref_dkd(student_logits, torch.softmax(teacher, 1), labels, 1.0)
    assert np.isfinite(logged["nckd"]) and logged["nckd"] == pytest.approx(computed, rel=1e-6)
    assert computed == pytest.approx(nckd.item(), rel=1e-5)


def test_a_dkd_warmup_longer_than_the_schedule_is_said_once(shared, tmp_path):
    shared.copy_cache(tmp_path)
    r = run_here(*cache_overrides(shared.data, tmp_path, shared.teacher_file), "stage=student", "student.epochs=2",
                 "student.batch_size=16", "student.baseline=false", "kd.loss=dkd", "kd.dkd.warmup=20")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("student: kd.dkd.warmup=20 is longer than student.epochs=2: the DKD term reaches only 2/20 "
                          "of its weight; set kd.dkd.warmup to at most 2 for the full weight") == 1


def test_hard_label_distillation_trains_from_the_cache_end_to_end(shared, tmp_path):
    """kd.loss=hard through the entry point on a top-2 cache (the teacher's class is exact at any k): the student
    trains, logs its `hard` term and the model card names the method."""
    args = [a for a in shared.args(cache__topk=2) if a != "stage=cache"]
    args = [a if not a.startswith("cache.root=") else f"cache.root={shared.root / 'cache'}" for a in args]
    r = run_here(*args, f"run_root={tmp_path / 'runs'}", "kd.loss=hard", "student.epochs=1", "student.batch_size=16",
                 "student.baseline=false")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "tiny"
    last = json.loads((run / "student" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"hard", "ce"} <= set(last["terms"]) and last["hard"] > 0
    assert "hard-label distillation (DeiT, Touvron et al. 2021), alpha 0.9" in (run / "export" / "README.md").read_text()
