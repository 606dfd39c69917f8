"""Stage 1, teacher: train from scratch, or load a timm model (hub weights or a local checkpoint) and optionally
fine-tune it. Output: <run>/teacher/{model.safetensors, meta.json, metrics.jsonl}."""
from __future__ import annotations

import dataclasses
import logging
import time

from accelerate.utils import set_seed

from distill import data, files
from distill.config import Config
from distill.errors import ConfigError
from distill.store import artifacts, fingerprints, layout
from distill.store.records import Meta, Metrics
from distill.training import engine, models, objectives
from distill.training.context import RunContext

log = logging.getLogger("distill")


def build(cfg: Config, num_classes: int, key: str = "teacher"):
    """The teacher model before any training, and (epochs, lr per 256) of the training it still needs; errors name
    the teacher's section `key` (teacher, or teachers.NAME)."""
    teacher = cfg.teacher
    if teacher.source == "train":
        model = models.create(teacher.model, num_classes, teacher.drop_rate)
        models.init_weights(model, teacher.init, teacher.zero_gamma)
        return model, teacher.epochs, teacher.optim.lr
    if teacher.checkpoint:
        model, reset = models.load_file(teacher.model, teacher.checkpoint, num_classes, teacher.drop_rate,
                                        f"{key}.checkpoint")
        origin = teacher.checkpoint
    else:
        model = models.create(teacher.model, num_classes, teacher.drop_rate, pretrained=teacher.pretrained)
        reset, origin = model.pretrained_cfg.get("num_classes") != num_classes, f"timm hub ({teacher.model})"
    if reset and teacher.finetune.epochs == 0:
        raise ConfigError(f"{key}.finetune.epochs: the teacher from {origin} has another class count than the "
                          f"data ({num_classes}); its new classifier needs fine-tuning (set teacher.finetune.epochs)")
    log.info(f"teacher: loaded {teacher.model} from {origin}")
    return model, teacher.finetune.epochs, teacher.finetune.lr


def run(ctx: RunContext) -> dict[str, Meta]:
    """Each teacher (RunContext.teachers) in its folder, held by one run at a time and reused while up to date.
    {teacher name: its meta}."""
    done = {}
    for teacher_ctx in ctx.teachers():
        with artifacts.held(teacher_ctx.acc, teacher_ctx.teacher_dir):
            done[teacher_ctx.teacher_name] = _train_or_load(teacher_ctx)
    return done


def _refuse_other_teacher(folder, fp: str) -> None:
    """A shared teacher.dir holds one teacher: runs with other teacher settings (or data) never train into it, since
    the runs that share it would then report next to weights they were not made from."""
    held = Meta.in_folder(folder)
    if held and held.fingerprint != fp:
        raise ConfigError(f"teacher.dir: {folder} holds a teacher made with other teacher settings or data "
                          f"(fingerprint {(held.fingerprint or '?')[:12]}, this run's {fp[:12]}), which the runs "
                          f"sharing it use; give this run its own teacher.dir, or delete {folder} to retrain it there")


def _train_or_load(ctx: RunContext) -> Meta:
    """The teacher of `ctx` (a teacher's context), trained or loaded, published in its folder: its meta."""
    cfg, acc, bundle, norm = ctx.cfg, ctx.acc, ctx.data, ctx.norm
    out = ctx.teacher_dir
    inputs = fingerprints.teacher_inputs(cfg, bundle.identity, norm)
    fp = files.fingerprint(inputs)
    meta = artifacts.reusable(out, fp, "teacher")
    if meta is not None:
        return meta
    if ctx.shares_teacher_dir:
        _refuse_other_teacher(out, fp)
    teacher = cfg.teacher
    seed = teacher.seed if teacher.seed is not None else cfg.seed
    set_seed(seed)
    start = time.perf_counter()
    model, epochs, lr = build(cfg, bundle.num_classes, ctx.teacher_key)
    train_loader, val_loader = data.loaders(bundle, cfg.data, teacher.batch_size, seed)
    name = layout.named("teacher", ctx.teacher_name, " ")
    if epochs:
        trained = dataclasses.replace(teacher, epochs=epochs, optim=dataclasses.replace(teacher.optim, lr=lr))
        job = engine.TrainingJob(cfg=trained, out_dir=out, name=name, seed=seed, to_input=ctx.to_input,
                                 **engine.resume_and_nonfinite(cfg, fp))
        model, metrics = engine.fit(model, train_loader, val_loader, job,
                                    objectives.CrossEntropy(bundle.num_classes, teacher.label_smoothing), acc)
    else:
        prepared, val_loader = acc.prepare(model, val_loader)
        metrics = Metrics(engine.evaluate(prepared, val_loader, acc, ctx.to_input, channels_last=False))
    return engine.publish(acc, out, model, name, metrics, fingerprint=fp, inputs=fingerprints.parts(inputs),
                          model=teacher.model, num_classes=bundle.num_classes, class_names=bundle.class_names,
                          image_size=cfg.data.image_size, normalization=norm, config=dataclasses.asdict(teacher),
                          wall_s=time.perf_counter() - start + metrics.earlier_wall_s)  # every part
