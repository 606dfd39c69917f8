"""Stage 1, teacher: train from scratch, or load a timm model (hub weights or a local checkpoint) and optionally
fine-tune it. Output: <run>/teacher/{model.safetensors, meta.json, metrics.jsonl}."""
from __future__ import annotations

import dataclasses
import logging
import time

from accelerate.utils import set_seed

from distill import data
from distill.config import Config
from distill.errors import ConfigError
from distill.store import artifacts, fingerprints
from distill.training import engine, models, objectives
from distill.training.context import RunContext

log = logging.getLogger("distill")


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


def run(ctx: RunContext) -> dict:
    cfg, acc, bundle, norm = ctx.cfg, ctx.acc, ctx.data, ctx.norm
    out = ctx.teacher_dir
    fp = fingerprints.teacher(cfg, bundle.identity, norm)
    meta = artifacts.reusable(out, fp, "teacher")
    if meta is not None:
        return meta
    set_seed(cfg.seed)
    start = time.perf_counter()
    t = cfg.teacher
    model, epochs, lr = build(cfg, bundle.num_classes)
    train_loader, val_loader = data.loaders(bundle, cfg.data, t.batch_size, cfg.seed)
    if epochs:
        job = engine.Fit(cfg=t, epochs=epochs, lr_per_256=lr, out_dir=out, name="teacher", seed=cfg.seed,
                         to_input=ctx.to_input, **engine.guards(cfg, fp))
        model, metrics = engine.fit(model, train_loader, val_loader, job,
                                    objectives.CrossEntropy(bundle.num_classes, t.label_smoothing), acc)
    else:
        prepared, val_loader = acc.prepare(model, val_loader)
        metrics = engine.evaluate(prepared, val_loader, acc, ctx.to_input, channels_last=False)
    return engine.publish(acc, out, model, "teacher", metrics, fingerprint=fp, model=t.model,
                          num_classes=bundle.num_classes, class_names=bundle.class_names,
                          image_size=cfg.data.image_size, normalization=norm, config=dataclasses.asdict(t),
                          wall_s=time.perf_counter() - start)
