"""Stage 1, teacher: train from scratch, or load a timm model (hub weights or a local checkpoint) and optionally
fine-tune it. Output: <run>/teacher/{model.safetensors, meta.json, metrics.jsonl}."""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import set_seed

from distill import artifacts, data, engine, models, tricks
from distill.config import Config
from distill.errors import ConfigError
from distill.losses import soft_cross_entropy

log = logging.getLogger("distill")


def ce_objective(num_classes: int, label_smoothing: float) -> engine.Objective:
    """Cross-entropy against label-smoothed one-hot targets, mixed like the images."""
    def objective(logits, batch, mix, x):
        target = tricks.smooth_one_hot(batch["label"], num_classes, label_smoothing)
        return soft_cross_entropy(logits, tricks.mix_targets(target, mix))
    return objective


def folder(cfg: Config, run_dir: Path) -> Path:
    """Where the teacher stage writes and later stages read: <run>/teacher, or teacher.dir when shared."""
    return Path(cfg.teacher.dir) if cfg.teacher.dir else run_dir / "teacher"


def fingerprint(cfg: Config, bundle: data.DataBundle, norm: dict) -> str:
    what = {k: v for k, v in dataclasses.asdict(cfg.teacher).items() if k != "dir"}  # where, not what
    if cfg.teacher.checkpoint and Path(cfg.teacher.checkpoint).is_file():  # what the file holds, not its path
        what["checkpoint"] = artifacts.sha256(Path(cfg.teacher.checkpoint))
    return artifacts.fingerprint({"teacher": what, "data": bundle.identity,
                                  "data_cfg": data.settings_identity(cfg.data),
                                  "norm": norm, "seed": cfg.seed, "precision": cfg.precision})


def build(cfg: Config, num_classes: int):
    """The teacher model before any training, and (epochs, lr per 256) of the training it still needs."""
    t = cfg.teacher
    if t.source == "train":
        model = models.create(t.model, num_classes, t.drop_rate)
        models.init_weights(model, t.init, t.zero_gamma)
        return model, t.epochs, t.optim.lr
    if t.checkpoint:
        model, reset = models.load_file(t.model, t.checkpoint, num_classes, t.drop_rate)
        origin = t.checkpoint
    else:
        model = models.create(t.model, num_classes, t.drop_rate, pretrained=t.pretrained)
        reset, origin = model.pretrained_cfg.get("num_classes") != num_classes, f"timm hub ({t.model})"
    if reset and t.finetune.epochs == 0:
        raise ConfigError(f"teacher.finetune.epochs: the teacher from {origin} has another class count than the "
                          f"data ({num_classes}); its new classifier needs fine-tuning (set teacher.finetune.epochs)")
    log.info(f"teacher: loaded {t.model} from {origin}")
    return model, t.finetune.epochs, t.finetune.lr


def run(cfg: Config, acc: Accelerator, bundle: data.DataBundle, norm: dict, run_dir: Path) -> dict:
    out = folder(cfg, run_dir)
    fp = fingerprint(cfg, bundle, norm)
    meta = artifacts.reusable(out, fp, "teacher")
    if meta is not None:
        return meta
    set_seed(cfg.seed)
    start = time.perf_counter()
    t = cfg.teacher
    model, epochs, lr = build(cfg, bundle.num_classes)
    train_loader, val_loader = data.loaders(bundle, cfg.data, t.batch_size, cfg.seed)
    inputs = data.normalizer(cfg.data, norm)
    if epochs:
        job = engine.Fit(t, epochs, lr, out, "teacher", cfg.seed, inputs, inputs, **engine.guards(cfg, fp))
        model, metrics = engine.fit(model, train_loader, val_loader, job,
                                    ce_objective(bundle.num_classes, t.label_smoothing), acc)
    else:
        prepared, val_loader = acc.prepare(model, val_loader)
        metrics = engine.evaluate(prepared, val_loader, acc, channels_last=False, make=inputs)
    return engine.publish(acc, out, model, "teacher", metrics, fingerprint=fp, model=t.model,
                          num_classes=bundle.num_classes, class_names=bundle.class_names,
                          image_size=cfg.data.image_size, normalization=norm, config=dataclasses.asdict(t),
                          wall_s=time.perf_counter() - start)
