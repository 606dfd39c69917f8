"""Stage 3, student: train with the distillation objective `kd.loss` (a method of distill/methods/;
objectives.objective_for).

`kd.teacher=cached` replays, for sample i at epoch e, one of its cached views (the very pixels the teacher
labelled) with that view's soft label; `kd.teacher=online` runs the teacher on the student's exact (mixed) batch
every step. `student.baseline=true` also trains the same student with CE only. Outputs:
<run>/student/ and <run>/baseline/, each {model.safetensors, meta.json, metrics.jsonl}.

With plain cached views and the student's own mixup/cutmix on, the teacher distributions of the two images are
mixed with the images' lambda and pairing: an approximation of the teacher's answer on the mixed image (exact with
online KD, or with mixed views in the cache).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import set_seed

from distill import data, files, methods
from distill.config import Config, DataCfg
from distill.data import views
from distill.errors import ConfigError, DataError
from distill.registry import STAGES
from distill.store import artifacts, fingerprints, layout, softlabels
from distill.store.records import Meta
from distill.training import engine, models, objectives, targets
from distill.training.context import RunContext

log = logging.getLogger("distill")

# The most uses per cached view (student epochs / V) at which cached KD measured 0.1 points below online KD's
# top-1: tools/views_experiment.sh, docs/benchmarks.md "How many cached views".
MAX_USES_PER_VIEW = 5.0


def views_needed(epochs: int) -> int:
    """The fewest cached views that keep `epochs` of student training within the rule (MAX_USES_PER_VIEW); at
    least 2, the fewest measured (view 0 is the un-augmented eval view)."""
    return max(2, math.ceil(epochs / MAX_USES_PER_VIEW))


def replay_warning(epochs: int, num_views: int, images: int) -> str | None:
    """One line when a student replays each cached view more often than the rule allows: the V that meets it and
    what labelling the missing views costs (the cache grows: only the new views are labelled)."""
    if epochs / num_views <= MAX_USES_PER_VIEW:
        return None
    need = views_needed(epochs)
    return (f"cache: {epochs} epochs over {num_views} cached views replay each view {epochs / num_views:g} times, "
            f"more than the {MAX_USES_PER_VIEW:g} at which cached KD measured 0.1 points below online KD; "
            f"cache.views={need} meets it, labelling {need - num_views} more views per image "
            f"({(need - num_views) * images:,} teacher forwards, once)")


def view_of(index: int, epoch: int, num_views: int, schedule: str, seed: int) -> int:
    """Which cached view sample `index` trains on at `epoch`: cycling (shifted per sample) or drawn."""
    if schedule == "cycle":
        return (index + epoch) % num_views
    return int(np.random.default_rng([seed, epoch, index]).integers(num_views))


class ReplayItems(data.EpochItems):
    """Item i at the current epoch: its cached view re-applied (uint8; the batch becomes the network input on the
    device, transforms.ToInput), with the view id and that view's soft label (top-k logits, classes, logsumexp at
    T), read from the memory-mapped record the view comes from: the fields of a data.ReplayBatch (collated by
    data.collate_replay). A mixed view brings its partner's view, label, lambda and box (`mixed`). With several caches
    (an ensemble's teachers, over the same views) each teacher's soft label for the view comes along, in the
    teachers' order (`teachers`)."""

    def __init__(self, images: data.Images, cfg: DataCfg, folders: list[Path], schedule: str, seed: int,
                 features: bool = False):
        super().__init__()
        self.folders = list(folders)  # each teacher's cache, in the teachers' order
        self.images, self.cfg, self.schedule, self.seed = images, cfg, schedule, seed
        self.skip_bad = cfg.on_bad_image == "skip"
        self.features = features  # the teacher's pooled feature of the view comes along too (its feature)
        self._caches = None

    @property
    def caches(self) -> list[softlabels.SoftLabels]:  # opened lazily: each DataLoader worker maps the shards itself
        if self._caches is None:
            self._caches = [softlabels.SoftLabels(f, features=self.features) for f in self.folders]
        return self._caches

    @property
    def labels(self) -> softlabels.SoftLabels:
        """The first cache: the view records (every teacher's are the same) and the first teacher's labels."""
        return self.caches[0]

    def __getstate__(self):
        return self.__dict__ | {"_caches": None}

    def __getitem__(self, i: int) -> dict | None:
        """Sample i, its teachers' soft labels read one record per teacher (the loader reads a batch's at once:
        `__getitems__`)."""
        if i in self.labels.skipped:  # failed to decode, left out of the cache (on_bad_image=skip): collate drops it
            return None
        v = self._view_id(i)
        out = self._sample(i, self.labels.row(i), v)
        out["teachers"] = [c.view_label(c.row(i), v) for c in self.caches]  # the teachers' labels of the same view
        if self.features:
            out["teachers"][0]["feature"] = self.labels.feature(i, v)
        return out

    def __getitems__(self, indices: list[int]) -> data.GatheredItems:
        """The items of a batch (what torch's DataLoader asks for when a dataset defines it): every teacher's
        records of the batch read at once (one gather per shard) and their soft labels picked vectorized, handed to
        data.collate_replay beside the items: the same batch, bit for bit, as the items read one by one."""
        kept = [i for i in indices if i not in self.labels.skipped]
        view_ids = [self._view_id(i) for i in kept]
        records = [c.rows(kept) for c in self.caches]
        samples = iter([self._sample(i, rec, v) for i, rec, v in zip(kept, records[0], view_ids)])
        teachers = [c.view_labels(rec, view_ids) for c, rec in zip(self.caches, records)]
        if self.features:  # the first teacher's pooled features of the views
            teachers[0] = teachers[0] | {"feature": self.labels.features_of(kept, view_ids)}
        return data.GatheredItems([None if i in self.labels.skipped else next(samples) for i in indices], teachers)

    def _view_id(self, i: int) -> int:
        return view_of(i, self.epoch.get(), self.labels.views, self.schedule, self.seed)

    def _sample(self, i: int, rec: np.void, v: int) -> dict:
        """Sample i's fields but the soft labels: view v of its record `rec` (the first cache's: every teacher's
        views are the same), its image and, for a mixed view, its partner's."""
        label = int(self.images.labels[i])
        # the view's parameters and its soft labels travel with the sample: the training step reads no cache
        out = {"view": torch.from_numpy(rec["view"][v].astype(np.int64)), "label": label, "index": i,
               "view_id": v, "split": 0}
        device = self.cfg.renderer == "device"  # rendered per batch on the device
        image = None if device else views.apply(self.images.fetch(i, self.skip_bad), rec["view"][v], self.cfg)
        if "partner" in rec.dtype.names:  # a mixed view: its partner too, and the hard labels mixed alike
            out |= {"mixed": self._partner(rec, v, label, image)}
        if device:  # a JPEG file travels if the split is not decoded
            return out if self.images.pixels is not None else out | {"jpeg": self.images.encoded(i)[0]}
        return out | {"image": image}

    def _partner(self, rec: np.void, v: int, label: int, image: torch.Tensor | None) -> dict:
        """View v's partner (a mixed view): its index (-1: none), view, class (the image's own `label` when none),
        lambda and box, and beside the image's pixels (`image`; None: rendered on the device) its pixels (zeros
        when none)."""
        p = int(rec["partner"][v])
        out = {"index": p, "view": torch.from_numpy(rec["partner_view"][v].astype(np.int64)),
               "label": int(self.images.labels[p]) if p >= 0 else label,
               "lam": float(rec["lam"][v]), "box": torch.from_numpy(rec["box"][v].copy())}
        if image is None:
            return out
        partner = self.images.fetch(p, self.skip_bad) if p >= 0 else None
        return out | {"image": views.apply(partner, rec["partner_view"][v], self.cfg) if partner is not None
                      else torch.zeros_like(image)}


def seed_of(cfg: Config) -> int:
    return cfg.student.seed if cfg.student.seed is not None else cfg.seed


def _train(ctx: RunContext, out: Path, name: str, inputs: dict, objective, train_loader) -> Meta:
    """Train and publish the student (or baseline) whose fingerprint hashes `inputs`."""
    cfg, acc, bundle = ctx.cfg, ctx.acc, ctx.data
    fp = files.fingerprint(inputs)
    s, seed = cfg.student, seed_of(cfg)
    start = time.perf_counter()
    set_seed(seed)
    model = models.create(s.model, bundle.num_classes, s.drop_rate, model_args=s.model_args)
    models.init_weights(model, s.init, s.zero_gamma)
    if cfg.kd.token and name == "student":  # training returns (class head, distillation head); eval their mean
        model.set_distilled_training(True)
    if methods.reads_features(cfg.kd) and name == "student":  # + its pooled feature, projected to the teacher's width
        model = models.FeatureStudent(model, objective.teacher.feature_dim)
    _, val_loader = data.loaders(bundle, cfg.data, s.batch_size, seed)
    job = engine.TrainingJob(cfg=s, out_dir=out, name=name, seed=seed, to_input=ctx.to_input,
                             **engine.resume_and_nonfinite(cfg, fp))
    model, metrics = engine.fit(model, train_loader, val_loader, job, objective, acc)
    if isinstance(model, models.FeatureStudent):  # the projection served the training only: never exported
        model = model.model
    return engine.publish(acc, out, model, name, metrics, fingerprint=fp, inputs=fingerprints.parts(inputs),
                          model=s.model, num_classes=bundle.num_classes, class_names=bundle.class_names,
                          model_args=s.model_args, image_size=cfg.data.image_size, normalization=ctx.norm, seed=seed,
                          config={"student": dataclasses.asdict(s), "kd": dataclasses.asdict(cfg.kd)},
                          wall_s=time.perf_counter() - start + metrics.earlier_wall_s)  # every part


@STAGES.register("student", help="train the student from the cache (or a live teacher), and its CE-only baseline")
def run(ctx: RunContext) -> dict[str, Meta]:
    """The KD student (reused while its fingerprint holds) and, with student.baseline, its CE-only twin."""
    cfg, kd = ctx.cfg, ctx.cfg.kd
    caches = _soft_labels(ctx) if kd.teacher == "cached" else None
    if caches is None:
        for teacher_ctx in ctx.teachers():
            layout.require_trained(teacher_ctx.teacher_dir, "student", "teacher")
    inputs = fingerprints.student_inputs(cfg, ctx.data.identity, ctx.norm, source(ctx), False)
    out = layout.student_dir(ctx.run_dir)
    fp = files.fingerprint(inputs)
    meta = artifacts.reusable(out, fp, "student")
    if meta is None:
        teacher, train_loader = _teacher_and_loader(ctx, caches)
        objective = objectives.objective_for(kd, ctx.num_classes, cfg.student.label_smoothing, teacher)
        for line in objective.method.warnings(cfg):
            log.warning(f"student: {line}")
        meta = _train(ctx, out, "student", inputs, objective, train_loader)
    results = {"student": meta}
    if cfg.student.baseline:
        results["baseline"] = _baseline(ctx)
    return results


def source(ctx: RunContext) -> str:
    """What a KD student is made from, as its fingerprint records it (fingerprints.student_source): each teacher's
    cache folder (cached KD) or weights (online KD), from the identities its context computed once a run. Needs every
    teacher's weights on disk."""
    cached = ctx.cfg.kd.teacher == "cached"
    return fingerprints.student_source([teacher_ctx.cache_dir.name if cached else teacher_ctx.teacher_sha256
                                        for teacher_ctx in ctx.teachers()])


def _soft_labels(ctx: RunContext) -> list[softlabels.SoftLabels]:
    """Each teacher's complete cache for this run's settings; an ensemble's must hold the same views of the same
    images and classes (one line naming both caches otherwise)."""
    caches = [softlabels.SoftLabels(teacher_ctx.cache_dir, fingerprint=teacher_ctx.cache_dir.name)
              for teacher_ctx in ctx.teachers()]
    for other in caches[1:]:
        problem = softlabels.ensemble_problem(caches[0], other, ctx.cfg.kd.temperature)
        if problem:
            raise DataError(f"kd: the caches {caches[0].folder} and {other.folder} cannot be combined: {problem}; "
                            "the teachers of an ensemble label the same views (one cache section, seed and data)")
    return caches


def _teacher_and_loader(ctx: RunContext, caches: list[softlabels.SoftLabels] | None
                        ) -> tuple[targets.Ensemble, torch.utils.data.DataLoader]:
    """The soft targets and the training loader: the caches' views replayed with their soft labels, or the live
    teachers on the student's own training views; the teachers combined (kd.ensemble; one passes through)."""
    cfg, s, seed = ctx.cfg, ctx.cfg.student, seed_of(ctx.cfg)
    if caches is not None:
        labels = caches[0]
        warning = replay_warning(s.epochs, labels.views, len(labels))
        if warning:
            log.warning(warning)
        replay = ReplayItems(ctx.data.images["train"], cfg.data, [c.folder for c in caches], cfg.kd.views, seed,
                             features=methods.reads_features(cfg.kd))  # cache.features=true: validated with the config
        loader = data.make_loader(replay, s.batch_size, True, data.workers(cfg.data, replay.images), seed,
                                  collate_fn=data.collate_replay)
        teachers = [targets.CachedTeacher(c.num_classes, c.dense, c.temperature, j, c.feature_dim)
                    for j, c in enumerate(caches)]
    else:
        teachers = []
        for teacher_ctx in ctx.teachers():
            model, _ = models.load_trained(teacher_ctx.teacher_dir, ctx.num_classes, "student", "teacher")
            width = None
            if methods.reads_features(cfg.kd):  # the live teacher answers (logits, pooled feature) in one forward
                problem = models.feature_problem(model)
                if problem:
                    raise ConfigError(f"kd.feature_weight: timm cannot give the pooled feature of the teacher "
                                      f"{teacher_ctx.cfg.teacher.model}: {problem}")
                model, width = models.PooledTeacher(model), models.feature_width(model)
            live = models.compiled(models.frozen(model, ctx.acc.device), cfg.kd.compile_teacher)
            teachers.append(targets.LiveTeacher(live, ctx.acc.autocast, width))
        loader, _ = data.loaders(ctx.data, cfg.data, s.batch_size, seed)
    return targets.Ensemble(teachers, cfg.kd.teacher_weights, cfg.kd.ensemble), loader


def _baseline(ctx: RunContext) -> Meta:
    """The same student, recipe, budget and seed with CE only."""
    cfg = ctx.cfg
    out = layout.student_dir(ctx.run_dir, baseline=True)
    inputs = fingerprints.student_inputs(cfg, ctx.data.identity, ctx.norm, "", baseline=True)
    meta = artifacts.reusable(out, files.fingerprint(inputs), "baseline")
    if meta is None:
        train_loader, _ = data.loaders(ctx.data, cfg.data, cfg.student.batch_size, seed_of(cfg))
        meta = _train(ctx, out, "baseline", inputs,
                      objectives.CrossEntropy(ctx.num_classes, cfg.student.label_smoothing), train_loader)
    return meta
