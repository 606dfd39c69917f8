"""Stage 3, student: train with the distillation objective `kd.loss` (kd, dkd or dist; objectives.Distillation).

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
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from distill import data
from distill.data import transforms, views
from distill.store import artifacts, fingerprints, layout, softlabels
from distill.training import engine, models, objectives, targets
from distill.config import Config, DataCfg
from distill.errors import ConfigError, DataError

log = logging.getLogger("distill")


def view_for(index: int, epoch: int, num_views: int, schedule: str, seed: int) -> int:
    """Which cached view sample `index` trains on at `epoch`: cycling (shifted per sample) or drawn."""
    if schedule == "cycle":
        return (index + epoch) % num_views
    return int(np.random.default_rng([seed, epoch, index]).integers(num_views))


class ReplayItems(data.EpochItems):
    """Item i at the current epoch: its cached view re-applied (uint8; the batch becomes the network input on the
    device, transforms.ToInput), with the view id and that view's soft label (top-k logits, classes, logsumexp at
    T), read from the memory-mapped record the view comes from. A mixed view brings its partner's view, label,
    lambda and box."""

    def __init__(self, images: data.Images, cfg: DataCfg, folder: Path, schedule: str, seed: int):
        super().__init__()
        self.images, self.cfg, self.folder, self.schedule, self.seed = images, cfg, folder, schedule, seed
        self.skip_bad = cfg.on_bad_image == "skip"
        self._labels = None

    @property
    def labels(self) -> softlabels.SoftLabels:  # opened lazily: each DataLoader worker maps the shards itself
        if self._labels is None:
            self._labels = softlabels.SoftLabels(self.folder)
        return self._labels

    def __getstate__(self):
        return self.__dict__ | {"_labels": None}

    def __getitem__(self, i: int) -> dict | None:
        if i in self.labels.skipped:  # failed to decode, left out of the cache (on_bad_image=skip): collate drops it
            return None
        v = view_for(i, self.epoch.get(), self.labels.views, self.schedule, self.seed)
        rec, label = self.labels.row(i), int(self.images.labels[i])
        # the view's parameters and its soft label travel with the sample: the training step reads no cache
        out = {"view": torch.from_numpy(rec["view"][v].astype(np.int64)), "label": label, "index": i,
               "view_id": v, "split": 0, **self.labels.view_label(rec, v)}
        p = int(rec["partner"][v]) if "partner" in rec.dtype.names else None
        if p is not None:  # a mixed view: its partner too, and the hard labels mixed alike
            out |= {"partner": p, "partner_view": torch.from_numpy(rec["partner_view"][v].astype(np.int64)),
                    "partner_label": int(self.images.labels[p]) if p >= 0 else label,
                    "lam": float(rec["lam"][v]), "box": torch.from_numpy(rec["box"][v].copy())}
        if self.cfg.renderer == "device":  # rendered per batch on the device (a JPEG file travels if not decoded)
            return out if self.images.pixels is not None else out | {"jpeg": self.images.encoded(i)[0]}
        out["image"] = views.apply(self.images.fetch(i, self.skip_bad), rec["view"][v], self.cfg)
        if p is not None:
            partner = self.images.fetch(p, self.skip_bad) if p >= 0 else None
            out["partner_image"] = views.apply(partner, rec["partner_view"][v], self.cfg) if partner is not None \
                else torch.zeros_like(out["image"])
        return out


def seed_of(cfg: Config) -> int:
    return cfg.student.seed if cfg.student.seed is not None else cfg.seed


def _train(cfg: Config, acc: Accelerator, bundle: data.DataBundle, norm: dict, out: Path, name: str, fp: str,
           objective, train_loader) -> dict:
    s, seed = cfg.student, seed_of(cfg)
    start = time.perf_counter()
    set_seed(seed)
    model = models.create(s.model, bundle.num_classes, s.drop_rate)
    models.init_weights(model, s.init, s.zero_gamma)
    _, val_loader = data.loaders(bundle, cfg.data, s.batch_size, seed)
    job = engine.Fit(cfg=s, epochs=s.epochs, lr_per_256=s.optim.lr, out_dir=out, name=name, seed=seed,
                     to_input=transforms.ToInput(cfg.data, norm, data.device_views(cfg.data, bundle, acc.device)),
                     **engine.guards(cfg, fp))
    model, metrics = engine.fit(model, train_loader, val_loader, job, objective, acc)
    return engine.publish(acc, out, model, name, metrics, fingerprint=fp, model=s.model,
                          num_classes=bundle.num_classes, class_names=bundle.class_names,
                          image_size=cfg.data.image_size, normalization=norm, seed=seed,
                          config={"student": dataclasses.asdict(s), "kd": dataclasses.asdict(cfg.kd)},
                          wall_s=time.perf_counter() - start)


def run(cfg: Config, acc: Accelerator, bundle: data.DataBundle, norm: dict, run_dir: Path) -> dict:
    s, kd, seed = cfg.student, cfg.kd, seed_of(cfg)
    if kd.focal_alpha is not None and len(kd.focal_alpha) != bundle.num_classes:
        raise ConfigError(f"kd.focal_alpha: {len(kd.focal_alpha)} weights for {bundle.num_classes} classes")
    tdir = layout.teacher_dir(cfg, run_dir)
    if kd.teacher == "cached":
        folder = layout.cache_dir(cfg, layout.cache_identity(cfg, bundle, norm, run_dir, acc.mixed_precision))
        labels = softlabels.SoftLabels(folder)
        source = labels.manifest["fingerprint"]
    else:
        tmeta = artifacts.read_json(tdir / "meta.json")
        if tmeta is None:
            raise DataError(f"student: no teacher in {tdir}; run stage=teacher first")
        source = artifacts.sha256(tdir / "model.safetensors")
    out = layout.student_dir(run_dir)
    fp = fingerprints.student(cfg, bundle.identity, norm, source, baseline=False)
    meta = artifacts.reusable(out, fp, "student")
    if meta is None:
        if kd.teacher == "cached":
            warning = softlabels.replay_warning(s.epochs, labels.views, len(labels))
            if warning:
                log.warning(warning)
            replay = ReplayItems(bundle.images["train"], cfg.data, folder, kd.views, seed)
            train_loader = DataLoader(replay, batch_size=s.batch_size, shuffle=True, drop_last=True,
                                      num_workers=data.workers(cfg.data, replay.images),
                                      pin_memory=torch.cuda.is_available(), collate_fn=data.collate,
                                      persistent_workers=data.workers(cfg.data, replay.images) > 0,
                                      generator=torch.Generator().manual_seed(seed))  # the epoch: SharedEpoch
            teacher = targets.CachedTeacher(labels.num_classes, labels.dense, labels.temperature)
        else:
            tmodel = models.create(tmeta["model"], bundle.num_classes)
            tmodel.load_state_dict(artifacts.load_weights(tdir))
            tmodel = models.frozen(tmodel, acc.device)
            train_loader, _ = data.loaders(bundle, cfg.data, s.batch_size, seed)
            teacher = targets.LiveTeacher(tmodel, acc.autocast)
        objective = objectives.Distillation(kd, bundle.num_classes, s.label_smoothing, teacher)
        meta = _train(cfg, acc, bundle, norm, out, "student", fp, objective, train_loader)
    results = {"student": meta}
    if s.baseline:
        out_b = layout.student_dir(run_dir, baseline=True)
        fp_b = fingerprints.student(cfg, bundle.identity, norm, "", baseline=True)
        meta_b = artifacts.reusable(out_b, fp_b, "baseline")
        if meta_b is None:
            train_loader, _ = data.loaders(bundle, cfg.data, s.batch_size, seed)
            meta_b = _train(cfg, acc, bundle, norm, out_b, "baseline", fp_b,
                            objectives.CrossEntropy(bundle.num_classes, s.label_smoothing), train_loader)
        results["baseline"] = meta_b
    return results
