"""A published cache in an ensemble beside local teachers (teachers=[{source: published, path: ...}, {...}]): the
local teachers label the published views, from their recorded parameters, so every teacher's record of a replayed
sample is of the same pixels."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import cache_overrides, random_teacher, run_here
from distill.store import softlabels

MIXED = {"cache__mix__cutmix_alpha": 1.0, "cache__mix__prob": 0.8}
STUDENT = ["stage=student", "student.epochs=1", "student.batch_size=16"]
_PUBLISHED: dict = {}


def _published(shared, tmp_path_factory, seed: int = 0, **kw) -> Path:
    """A cache of the shared teacher (its views drawn with `seed`) published once per test run: its folder."""
    key = (seed, tuple(sorted(kw.items())))
    if key not in _PUBLISHED:
        tmp = tmp_path_factory.mktemp("published")
        args = cache_overrides(shared.data, tmp, shared.teacher_file, **kw) + [f"seed={seed}"]
        for stage in ("stage=cache", "stage=publish"):
            r = run_here(*args, stage)
            assert r.returncode == 0, r.stderr
        _PUBLISHED[key] = tmp / "runs" / "tiny" / "published"
    return _PUBLISHED[key]


def _ensemble_args(shared, where: Path, local: Path, *published: tuple[str, Path], **kw) -> list[str]:
    """The same recipe with a local teacher `s0` (the checkpoint `local`) first, then the published caches (name,
    folder), and another global seed than the publisher's: views drawn by this run would be other views."""
    kept = [a for a in cache_overrides(shared.data, where, shared.teacher_file, **kw)
            if not a.startswith(("teacher.source=", "teacher.checkpoint=", "stage="))]
    entries = [f"{{name: s0, source: timm, checkpoint: '{local}'}}"]
    entries += [f"{{name: {name}, source: published, path: '{folder}'}}" for name, folder in published]
    return kept + ["seed=7", "teachers=[" + ", ".join(entries) + "]"]


def _cache(where: Path, name: str) -> softlabels.SoftLabels:
    record = json.loads((where / "runs" / "tiny" / f"cache-{name}.json").read_text())
    return softlabels.SoftLabels(record["folder"])


def _all(cache: softlabels.SoftLabels) -> np.ndarray:
    return cache.rows(np.arange(len(cache)))


@pytest.mark.parametrize("kw", [{}, MIXED], ids=["plain", "mixed"])
def test_local_teacher_labels_the_published_views_and_the_student_trains(shared, tmp_path, tmp_path_factory, kw):
    """The local teacher's cache holds the published cache's very view parameters (crop, flip; partner, its view,
    lambda and box), left out where it is, and a student trains from both."""
    folder = _published(shared, tmp_path_factory, **kw)
    local = random_teacher(tmp_path / "s0.safetensors", seed=1)
    r = run_here(*_ensemble_args(shared, tmp_path, local, ("pub", folder), **kw), *STUDENT)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "runs" / "tiny" / "student" / "model.safetensors").is_file()
    pub, s0 = _cache(tmp_path, "pub"), _cache(tmp_path, "s0")
    assert pub.folder != s0.folder
    assert s0.view_fields() == pub.view_fields() == (("view", *softlabels.MIX_FIELDS) if kw else ("view",))
    mine, theirs = _all(s0), _all(pub)
    for name in s0.view_fields():
        assert np.array_equal(mine[name], theirs[name]), name
    assert s0.skipped == pub.skipped == set()
    assert not np.array_equal(_drawn_views(shared, 7, s0.views), theirs["view"])  # this run's own: other views
    import pyarrow.parquet as pq

    from distill.data import views
    table = pq.read_table(sorted((folder / "data").glob("train-*.parquet")))
    for j, field in enumerate(views.FIELDS):  # the published columns themselves (the same row order here)
        assert np.array_equal(np.stack(table.column(field).to_pylist()), mine["view"][..., j]), field


def _data(shared):
    """The data settings of cache_overrides: (config, data bundle, batch -> input)."""
    from distill import config, data
    from distill.data import transforms

    cfg = config.validate({"data": {"source": "auto", "path": str(shared.data), "val_size": 12, "image_size": 12,
                                    "mean": [0.5] * 3, "std": [0.25] * 3, "flip": True, "padding": 2}})
    return cfg, data.load(cfg.data), transforms.ToInput(cfg.data, [0.5] * 3, [0.25] * 3)


def _drawn_views(shared, seed: int, num_views: int) -> np.ndarray:
    """The view parameters the cache stage draws for this data with `seed` (what a local teacher labels alone)."""
    from distill.stages import cache

    cfg, bundle, _ = _data(shared)
    items = cache.ViewItems(bundle.images["train"], cfg.data, num_views, True, seed)
    return np.stack([items.draw(i, (12, 12), lambda j: (12, 12))["view"] for i in range(len(items))])


def test_the_combined_target_is_both_records_and_the_local_record_is_the_published_pixels(
        shared, tmp_path, tmp_path_factory):
    """A replayed batch (the published cache first: its records say which pixels): the ensemble's target equals the
    combination written here from the two records (both dense: the same stored values, float32 against float64
    arithmetic, 1e-6), and the local teacher's record is its own forward on those pixels within fp16 storage
    (2^-10 relative)."""
    from distill.stages import student
    from distill.store import artifacts
    from distill.training import models, targets
    from test_student import _batch

    folder = _published(shared, tmp_path_factory)
    local = random_teacher(tmp_path / "s0.safetensors", seed=1)
    r = run_here(*_ensemble_args(shared, tmp_path, local, ("pub", folder)), "stage=cache")
    assert r.returncode == 0, r.stderr
    s0, pub = _cache(tmp_path, "s0"), _cache(tmp_path, "pub")
    cfg, bundle, to_input = _data(shared)
    replay = student.ReplayItems(bundle.images["train"], cfg.data, [pub.folder, s0.folder], "cycle", 7)
    replay.set_epoch(1)
    batch = _batch(replay, range(16))
    weights, temperature = [1.0, 3.0], 4.0
    cached = [targets.CachedTeacher(3, True, 1.0, j) for j in range(2)]
    got = targets.Ensemble(cached, weights, "mean_probs").log_probs(batch, None, temperature, False)
    probs = []
    for cache in (pub, s0):
        rows = cache.rows(batch.index.numpy())
        v = batch.view_id.numpy()
        z = torch.zeros(16, 3, dtype=torch.float64)
        z.scatter_(1, torch.from_numpy(rows["classes"][np.arange(16), v].astype(np.int64)),
                   torch.from_numpy(rows["logits"][np.arange(16), v].astype(np.float64)))
        probs.append(torch.softmax(z / temperature, 1))
    want = torch.log((weights[0] * probs[0] + weights[1] * probs[1]) / sum(weights))
    assert torch.allclose(got.double(), want, rtol=0, atol=1e-6)
    net = models.create("resnet8", 3)
    net.load_state_dict(artifacts.load_weights(tmp_path / "runs" / "tiny" / "teachers" / "s0"))
    with torch.no_grad():
        forward = net.eval()(to_input(batch))
    stored = torch.zeros(16, 3).scatter_(1, batch.teachers[1].classes, batch.teachers[1].logits)
    assert torch.allclose(stored, forward, rtol=2 ** -10, atol=1e-5)


@pytest.mark.parametrize("extra,line", [
    (["data.image_size=16"], "data.image_size: 16 renders other views than the published cache's 12"),
    (["cache.views=2"], "cache.views: 2, but the published cache teachers.pub ("),
    (["cache.mix.cutmix_alpha=1.0"], "cache.mix: the published cache teachers.pub ("),
], ids=["image size", "views", "mixing"])
def test_views_the_local_teacher_cannot_label_are_refused_before_work(shared, tmp_path, tmp_path_factory, extra,
                                                                      line):
    folder = _published(shared, tmp_path_factory)
    local = random_teacher(tmp_path / "s0.safetensors", seed=1)
    r = run_here(*_ensemble_args(shared, tmp_path, local, ("pub", folder)), *extra, *STUDENT)
    assert r.returncode == 2, r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and line in errors[0], r.stderr
    assert not (tmp_path / "runs" / "tiny" / "teachers").exists()  # before any teacher, cache or student
    assert not list((tmp_path / "cache").glob("*/manifest.json"))


def test_two_published_caches_share_their_views_or_are_refused_naming_both(shared, tmp_path, tmp_path_factory):
    """Two published caches of the same views (here one folder twice) beside a local teacher: all three share them;
    two of other views (drawn with another seed): one line naming both, before the local teacher labels."""
    folder, other = _published(shared, tmp_path_factory), _published(shared, tmp_path_factory, seed=1)
    local = random_teacher(tmp_path / "s0.safetensors", seed=1)
    args = _ensemble_args(shared, tmp_path, local, ("p1", folder), ("p2", folder))
    r = run_here(*args, "stage=cache")
    assert r.returncode == 0, r.stderr
    for name in ("p1", "p2"):
        assert np.array_equal(_all(_cache(tmp_path, "s0"))["view"], _all(_cache(tmp_path, name))["view"])
    where = tmp_path / "other"
    r = run_here(*_ensemble_args(shared, where, local, ("p1", folder), ("p2", other)), "stage=cache")
    assert r.returncode == 2, r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "the published caches teachers.p1 and teachers.p2 cannot" in errors[0], r.stderr
    assert "their recorded views differ" in errors[0]
    assert not (where / "runs" / "tiny" / "cache-s0.json").exists()  # the local teacher labelled nothing


def test_covered_only_leaves_the_same_images_out_of_every_teachers_cache(shared, tmp_path, tmp_path_factory):
    """teacher.covered_only=true: the images the published cache does not cover are left out of the local
    teacher's cache too (listed as skipped, records cleared, never labelled), so the student trains on the covered
    images from every teacher. (Plain views: a larger data set carves its validation split anew, so a mixed view's
    partner may land there, which the published teacher alone refuses.)"""
    from conftest import tiny_dataset

    folder = _published(shared, tmp_path_factory)
    more = tmp_path / "more.parquet"
    tiny_dataset(n=72).to_parquet(str(more))  # the published images and 12 more
    local = random_teacher(tmp_path / "s0.safetensors", seed=1)
    args = _ensemble_args(shared, tmp_path, local, ("pub", folder)) + [f"data.path={more}",
                                                                       "teacher.covered_only=true"]
    r = run_here(*args, *STUDENT)
    assert r.returncode == 0, r.stderr
    s0, pub = _cache(tmp_path, "s0"), _cache(tmp_path, "pub")
    assert s0.skipped == pub.skipped and len(s0.skipped) > 0
    left = sorted(s0.skipped)
    kept = np.setdiff1d(np.arange(len(s0)), left)
    mine, theirs = _all(s0), _all(pub)
    for name in s0.view_fields():
        assert np.array_equal(mine[name], theirs[name]), name
    assert not mine["logits"][left].any() and not mine["lse"][left].any()  # cleared: never the teacher's
    assert mine["lse"][kept].all()  # labelled
    assert (tmp_path / "runs" / "tiny" / "student" / "model.safetensors").is_file()
