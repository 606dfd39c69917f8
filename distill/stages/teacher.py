"""Stage 1, teacher: train from scratch, or load a timm model (hub weights or a local checkpoint) and optionally
fine-tune it; each source (teacher.source) is one file of distill/training/teachers/. Output:
<run>/teacher/{model.safetensors, meta.json, metrics.jsonl}."""
from __future__ import annotations

import dataclasses
import time

from accelerate.utils import set_seed

from distill import data, files
from distill.config import Config
from distill.errors import ConfigError
from distill.registry import STAGES, TEACHER_SOURCES
from distill.store import artifacts, fingerprints, layout
from distill.store.records import Meta, Metrics
from distill.training import engine, objectives
from distill.training.context import RunContext
from distill.training.teachers import published as published_teacher


def build(cfg: Config, num_classes: int, key: str = "teacher"):
    """The teacher model before any training, and (epochs, lr per 256) of the training it still needs, from its
    source (teacher.source: registry.TEACHER_SOURCES, distill/training/teachers/); errors name the teacher's section
    `key` (teacher, or teachers.NAME)."""
    return TEACHER_SOURCES.lookup(cfg.teacher.source)(cfg.teacher, num_classes, key)


@STAGES.register("teacher", help="train the teacher, or load it (timm hub weights or a checkpoint) and fine-tune it")
def run(ctx: RunContext) -> dict[str, Meta]:
    """Each teacher (RunContext.teachers) in its folder, held by one run at a time and reused while up to date.
    {teacher name: its meta}. Published caches beside local teachers are checked first, before any trains."""
    if ctx.cfg.stage != "teacher":  # the cache is made: can the local teachers label the published views?
        published_teacher.check_ensemble({t.teacher_key: t.cfg for t in ctx.teachers()}, ctx.norm,
                                         ctx.data.class_names)
    done = {}
    for teacher_ctx in ctx.teachers():
        if teacher_ctx.cfg.teacher.source == "published":  # no model: the cache stage reads its published cache
            done[teacher_ctx.teacher_name] = {"published": teacher_ctx.cfg.teacher.path}
            continue
        with artifacts.held(teacher_ctx.acc, teacher_ctx.teacher_dir):
            done[teacher_ctx.teacher_name] = _train_or_load(teacher_ctx)
        # the weights' sha256 this stage just verified or wrote (meta.json's): the run's identities take it from here
        teacher_ctx.weights_checked(layout.require_trained(teacher_ctx.teacher_dir, "teacher", "teacher")
                                    .weights_sha256)
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
    inputs = ctx.teacher_inputs  # computed once a run (RunContext)
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
