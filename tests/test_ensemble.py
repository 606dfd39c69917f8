"""Ensembles of cached teachers (teachers=[...]): each labels its own cache over the same views; the student learns
from their combination (kd.ensemble, kd.teacher_weights)."""
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import cache_overrides, random_teacher, run_here
from distill import config, files
from distill.methods.common import logspace
from distill.store import artifacts, softlabels
from distill.training import models, targets

from test_student import _batch, _setting


def _reference(logits: list[torch.Tensor], weights: list[float], rule: str, temperature: float) -> torch.Tensor:
    """The combination written out in float64: log sum_k w_k softmax(z_k / T), or log softmax(sum_k w_k z_k / T)."""
    w = [x / sum(weights) for x in weights]
    z = [t.double() for t in logits]
    if rule == "mean_probs":
        return torch.log(sum(wk * torch.softmax(zk / temperature, 1) for wk, zk in zip(w, z)))
    return torch.log_softmax(sum(wk * zk for wk, zk in zip(w, z)) / temperature, 1)


@pytest.mark.parametrize("rule", ["mean_probs", "mean_logits"])
@pytest.mark.parametrize("classes,gap,temperature", [(2, 0.0, 1.0), (10, 40.0, 1.0), (1000, 18.0, 4.0),
                                                     (100, 5.0, 2.0)])
def test_the_combination_equals_the_formula_at_any_confidence(rule, classes, gap, temperature):
    """logspace.ensemble against the float64 formula, from confident teachers (gap: the label logit's lead) to
    uniform ones, with unequal weights and a teacher of weight 0."""
    g = torch.Generator().manual_seed(classes)
    logits = [torch.randn(6, classes, generator=g) for _ in range(3)]
    for k, z in enumerate(logits):
        z[:, k % classes] += gap
    weights = [1.0, 3.0, 0.0]
    log_qs = torch.stack([logspace.log_softmax_at(z, temperature) for z in logits])
    got = logspace.ensemble(log_qs, torch.tensor(weights, dtype=torch.float64), rule)
    want = _reference(logits, weights, rule, temperature)
    assert torch.allclose(got.double().exp(), want.exp(), rtol=1e-5, atol=1e-7)
    finite = want > -30  # where the probabilities are not far below float32's resolution: log space too
    assert torch.allclose(got.double()[finite], want[finite], rtol=1e-5, atol=1e-5)
    assert torch.allclose(got.exp().sum(1), torch.ones(6), atol=1e-5)
    one = logspace.ensemble(log_qs[:1], torch.tensor([2.0]), rule)
    assert torch.equal(one, log_qs[0])  # one teacher: passed through, bit for bit


def _teachers(tmp, seeds: dict[str, int]) -> str:
    """teachers=[...] naming one seeded random checkpoint file per teacher."""
    entries = []
    for name, seed in seeds.items():
        path = random_teacher(tmp / f"teacher-{name}.safetensors", seed=seed)
        entries.append(f"{{name: {name}, checkpoint: '{path}'}}")
    return "teachers=[" + ", ".join(entries) + "]"


def _cache_of(run: Path, name: str) -> Path:
    return Path(json.loads((run / f"cache-{name}.json").read_text())["folder"])


@pytest.mark.parametrize("rule", ["mean_probs", "mean_logits"])
def test_the_ensemble_target_is_the_teachers_own_average_on_the_same_views(shared, tmp_path, rule):
    """Two dense caches read together: the student's target for each sample equals the combination, written here,
    of the two teachers' own logits on that sample's replayed view (fp16 storage: 2e-3 relative)."""
    from distill.stages import student

    teachers = _teachers(tmp_path, {"a": 1, "b": 2})
    r = run_here(*cache_overrides(shared.data, tmp_path, shared.teacher_file, cache__topk=99), teachers)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "tiny"
    folders = [_cache_of(run, "a"), _cache_of(run, "b")]
    assert folders[0] != folders[1]
    shared.cache()  # the shared teacher folder _setting reads
    cfg, bundle, to_input, _ = _setting(shared)
    replay = student.ReplayItems(bundle.images["train"], cfg.data, folders, "cycle", 0)
    replay.set_epoch(1)
    batch = _batch(replay, range(16))
    nets = []
    for name in ("a", "b"):
        net = models.create("resnet8", 3)
        net.load_state_dict(artifacts.load_weights(run / "teachers" / name))
        nets.append(net.eval())
    with torch.no_grad():
        logits = [net(to_input(batch)) for net in nets]
    weights = [1.0, 3.0]
    cached = [targets.CachedTeacher(3, True, 1.0, j) for j in range(2)]
    got = targets.Ensemble(cached, weights, rule).log_probs(batch, None, 4.0, False)
    want = _reference(logits, weights, rule, 4.0)
    assert torch.allclose(got.double().exp(), want.exp(), rtol=2e-3, atol=1e-4)
    equal = targets.Ensemble(cached, None, rule).log_probs(batch, None, 4.0, False)
    assert torch.allclose(equal.double().exp(), _reference(logits, [1, 1], rule, 4.0).exp(), rtol=2e-3, atol=1e-4)
    from accelerate import Accelerator
    live = [targets.LiveTeacher(net, Accelerator(cpu=True).autocast) for net in nets]  # online: on the input itself
    online = targets.Ensemble(live, weights, rule).log_probs(batch, to_input(batch), 4.0, False)
    assert torch.allclose(online.double().exp(), want.exp(), rtol=1e-5, atol=1e-6)


def test_adding_a_teacher_labels_with_it_only_and_dropping_one_relabels_nothing(shared, tmp_path, monkeypatch):
    """Two teachers labelled; a third added: only its images go through a teacher (counted at the forward), the
    other caches' bytes stay as they were; then one dropped: no teacher runs at all. The report shows each teacher
    and the ensemble's own score."""
    from distill.stages import cache

    forwards = []
    frozen = models.frozen

    def counting(model, device):
        net = frozen(model, device)

        def forward(x, net=net):
            forwards.append(len(x))
            return net(x)
        return forward
    monkeypatch.setattr(cache.models, "frozen", counting)
    base = cache_overrides(shared.data, tmp_path, shared.teacher_file)
    r = run_here(*base, _teachers(tmp_path, {"a": 1, "b": 2}))
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "tiny"
    images, views = 48, 3
    assert sum(forwards) == 2 * images * views
    before = {name: {p.name: p.read_bytes() for p in _cache_of(run, name).iterdir()} for name in ("a", "b")}

    forwards.clear()
    r = run_here(*base, _teachers(tmp_path, {"a": 1, "b": 2, "c": 3}))
    assert r.returncode == 0, r.stderr
    assert sum(forwards) == images * views  # the new teacher's views only
    assert r.stderr.count("cache: labelled") == 1
    for name in ("a", "b"):
        assert {p.name: p.read_bytes() for p in _cache_of(run, name).iterdir()} == before[name]
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["models"]) == {"teacher-a", "teacher-b", "teacher-c", "ensemble"}  # stage=cache: no student
    assert "\nensemble   3 teachers" in r.stderr  # the table: the ensemble's row below its teachers
    assert summary["models"]["ensemble"]["model"] == "3 teachers"
    assert set(summary["caches"]) == {"a", "b", "c"}

    forwards.clear()
    r = run_here(*base, _teachers(tmp_path, {"a": 1, "c": 3}))
    assert r.returncode == 0, r.stderr
    assert forwards == [] and "cache: labelled" not in r.stderr
    assert set(json.loads((run / "summary.json").read_text())["models"]) == {"teacher-a", "teacher-c", "ensemble"}

    forwards.clear()  # teacher c's checkpoint file now holds other weights: its cache alone is labelled again
    r = run_here(*base, _teachers(tmp_path, {"a": 1, "c": 4}))
    assert r.returncode == 0, r.stderr
    assert sum(forwards) == images * views and r.stderr.count("cache: labelled") == 1
    assert {p.name: p.read_bytes() for p in _cache_of(run, "a").iterdir()} == before["a"]


def test_a_one_teacher_ensemble_trains_the_single_teachers_student_bit_for_bit(shared, tmp_path):
    args = [*cache_overrides(shared.data, tmp_path, shared.teacher_file), "stage=student", "student.epochs=1",
            "student.baseline=false", "student.batch_size=16"]
    single = run_here(*args)
    assert single.returncode == 0, single.stderr
    one = run_here(*args, "name=one", "teachers=[{name: only}]")  # the teacher section's checkpoint, named
    assert one.returncode == 0, one.stderr
    a = artifacts.load_weights(tmp_path / "runs" / "tiny" / "student")
    b = artifacts.load_weights(tmp_path / "runs" / "one" / "student")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "runs" / "one" / "teachers" / "only" / "meta.json").exists()  # the ensemble's own path
    assert "cache only: reusing" in one.stderr  # the same teacher's weights: the same cache


@pytest.mark.parametrize("teachers,weights,message", [
    ("[{name: a}, {name: a, seed: 1}]", None, "teachers.a: the name is used by two teachers"),
    ("[{name: a}, {name: b}]", "[1.0]", "kd.teacher_weights: 1 weights for 2 teacher(s)"),
    ("[{name: a}, {name: b}]", "[1.0,-1.0]", "kd.teacher_weights: [1.0, -1.0] must be >= 0 and not all 0"),
    ("[{name: a}, {name: b}]", "[0.0,0.0]", "kd.teacher_weights: [0.0, 0.0] must be >= 0 and not all 0"),
    ("[{name: a, epochs: -1}]", None, "teachers.a.epochs: -1 must be >= 0"),
    ("[{name: teacher}]", None, "teachers.teacher: a teacher's name is a folder name (letters, digits, _ . -), "
                                "other than 'teacher' (the one teacher's)"),
    ("[{model: resnet8}]", None, "teachers[0]: needs a name, e.g. {name: big, model: resnet56}; got "
                                 "{'model': 'resnet8'}"),
])
def test_bad_ensembles_stop_in_one_line_before_any_work(parquet_file, tmp_path, teachers, weights, message):
    from conftest import tiny_overrides
    args = [*tiny_overrides(parquet_file, tmp_path / "runs"), f"teachers={teachers}"]
    r = run_here(*args, *([f"kd.teacher_weights={weights}"] if weights else []))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == f"error: {message}"
    assert not (tmp_path / "runs").exists()


def test_caches_over_other_views_classes_or_temperature_are_never_combined(shared, tmp_path):
    same = softlabels.SoftLabels(shared.cache())
    other_views = softlabels.SoftLabels(shared.cache(seed=1))  # the same teacher, views drawn from another seed
    assert softlabels.ensemble_problem(same, same, 4.0) is None
    assert softlabels.ensemble_problem(same, other_views, 4.0) == \
        "their recorded views differ (field 'view' in shard 0)"
    renamed = tmp_path / "renamed"  # a teacher of other classes: its cache names other ones
    shutil.copytree(shared.cache(), renamed)
    manifest = json.loads((renamed / "manifest.json").read_text())
    files.write_sealed(renamed / "manifest.json", manifest | {"class_names": ["cat", "dog", "owl"]})
    assert softlabels.ensemble_problem(same, softlabels.SoftLabels(renamed), 4.0) == \
        "their class names differ (class 0: 'red' and 'cat')"
    top2 = softlabels.SoftLabels(shared.cache(cache__topk=2))  # top 2 of 3 classes, stored at T = 4
    assert softlabels.ensemble_problem(top2, top2, 2.0) == \
        f"{top2.folder} keeps the top 2 logits at T=4 and cannot serve kd.temperature=2"


def test_a_damaged_cache_of_one_teacher_is_finished_before_the_student_reads_it(shared, tmp_path):
    teachers = _teachers(tmp_path, {"a": 1, "b": 2})
    base = cache_overrides(shared.data, tmp_path, shared.teacher_file)
    assert run_here(*base, teachers).returncode == 0
    run = tmp_path / "runs" / "tiny"
    damaged = _cache_of(run, "b")
    (damaged / "shard-00001.npy").write_bytes(b"not a shard")
    r = run_here(*[a for a in base if a != "stage=cache"], "stage=student", "student.epochs=1",
                 "student.baseline=false", "student.batch_size=16", teachers)
    assert r.returncode == 0, r.stderr
    assert f"{damaged / 'shard-00001.npy'} fails its checksum; recomputing it" in r.stderr
    assert softlabels.failing(softlabels.read_manifest(damaged).shards, damaged) == []


def test_teachers_is_one_teacher_section_each_over_the_shared_one():
    cfg = config.validate({"teacher": {"epochs": 7, "dir": "shared", "model": "resnet20"},
                           "teachers": [{"name": "big", "model": "resnet32"}, {"name": "seeded", "seed": 3}]})
    sections = config.teacher_sections(cfg)
    assert list(sections) == ["teachers.big", "teachers.seeded"]
    assert [(t.model, t.epochs, t.seed, t.dir) for t in sections.values()] == \
        [("resnet32", 7, None, None), ("resnet20", 7, 3, None)]  # `dir` is never inherited
    single = config.validate({"teacher": {"epochs": 7}})
    assert config.teacher_sections(single) == {"teacher": single.teacher}  # no ensemble: the one section, as it is


def test_an_online_ensemble_runs_its_teachers_live_and_labels_no_cache(shared, tmp_path):
    teachers = _teachers(tmp_path, {"a": 1, "b": 2})
    base = [a for a in cache_overrides(shared.data, tmp_path, shared.teacher_file) if a != "stage=cache"]
    r = run_here(*base, teachers, "kd.teacher=online", "stage=student", "student.epochs=1", "student.baseline=false",
                 "student.batch_size=16")
    assert r.returncode == 0, r.stderr
    assert "cache: skipped (kd.teacher=online" in r.stderr and not (tmp_path / "cache").exists()
    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    assert {"teacher-a", "teacher-b", "ensemble", "student"} <= set(summary["models"])


def _other_teacher(src: Path, dst: Path, shift: int) -> Path:
    """A copy of the cache `src` whose teacher fields (and features) are moved `shift` images along in each shard:
    another teacher over the same views, whose every record differs from its neighbours' and from `src`'s."""
    shutil.copytree(src, dst)
    for path in [*dst.glob("shard-*.npy"), *dst.glob("features-*.npy")]:
        array = np.load(path)
        if array.dtype.names is None:
            array = np.roll(array, shift, axis=0)
        for name in set(softlabels.TEACHER_FIELDS) & set(array.dtype.names or ()):
            array[name] = np.roll(array[name], shift, axis=0)
        np.save(path, array)
    return dst


def _same(a, b, where="batch") -> None:
    """Two batches (or parts, lists, tensors) equal bit for bit: the same fields, dtypes, shapes and values."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for j, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{j}]")
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            _same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    else:
        assert a == b, where


@pytest.mark.parametrize("settings", [{"cache__topk": 99, "cache__mix__mixup_alpha": 1.0,
                                       "cache__mix__cutmix_alpha": 1.0, "cache__mix__prob": 0.8},
                                      {"cache__topk": 2, "cache__features": "true"}], ids=["mixed", "topk-features"])
def test_a_batch_read_at_once_equals_its_samples_read_one_by_one(shared, tmp_path, monkeypatch, settings):
    """ReplayItems.__getitems__ (every teacher's records of the batch in one gather per shard, the views picked
    vectorized) gives the batch its samples read one by one give, bit for bit: three teachers whose records differ
    per image and per teacher, a mixed-view cache and a top-k one with features, an image left out, two epochs;
    the training loader reads batches that way (no record read per sample), in worker processes too."""
    from distill import data
    from distill.stages import student
    first = shared.cache(**settings)
    folders = [first, _other_teacher(first, tmp_path / "b", 1), _other_teacher(first, tmp_path / "c", 2)]
    cfg, bundle, _, _ = _setting(shared)
    features = "cache__features" in settings
    replay = student.ReplayItems(bundle.images["train"], cfg.data, folders, "cycle", 0, features=features)
    replay.labels.skipped = {9}  # as if image 9 had failed to decode
    for epoch in (1, 2):
        replay.set_epoch(epoch)
        idx = [31, 9, 0, 17, 5, 46, 12, 3]
        batched = data.collate_replay(replay.__getitems__(idx))
        _same(batched, _batch(replay, idx))
        assert int(batched.skipped) == 1 and len(batched.teachers) == 3
        assert not torch.equal(batched.teachers[0].logits, batched.teachers[1].logits)
        assert (batched.teachers[0].feature is not None) == features
    _same(data.collate_replay(replay.__getitems__([9])), _batch(replay, [9]))  # every image left out

    def per_sample(*args):
        raise AssertionError("the loader read a record per sample")
    replay = student.ReplayItems(bundle.images["train"], cfg.data, folders, "cycle", 0, features=features)
    with monkeypatch.context() as m:
        m.setattr(softlabels.SoftLabels, "row", per_sample)
        batches = [next(iter(data.make_loader(replay, 8, True, workers, 0, collate_fn=data.collate_replay)))
                   for workers in (0, 1)]
    _same(batches[0], batches[1])
    _same(batches[0], _batch(replay, batches[0].index.tolist()))
