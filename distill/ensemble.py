"""An ensemble's own scores (teachers=[...]): its teachers' outputs combined by the rule the student learns from
(kd.ensemble, kd.teacher_weights, at kd.temperature), on the validation split and, when there is one, the test
split. Kept in <run>/ensemble.json, keyed by the teachers' weights, the rule and the splits' identities: a rerun
reads it back, and a changed teacher or rule is scored again."""
from __future__ import annotations

import logging

from distill import data
from distill.store.records import EnsembleScore, HeldOutScore, Meta, Scores
from distill.training import engine, models
from distill.training.context import RunContext

log = logging.getLogger("distill")

RECORD = "ensemble.json"


def score(ctx: RunContext) -> EnsembleScore | None:
    """The combined teachers' own scores (validation, and test when there is a test split); None for one teacher
    (its own row is the ensemble)."""
    cfg, acc, bundle = ctx.cfg, ctx.acc, ctx.data
    teachers = ctx.teachers()
    if len(teachers) < 2:
        return None
    metas = [Meta.in_folder(teacher_ctx.teacher_dir) for teacher_ctx in teachers]
    if any(m is None for m in metas):
        return None
    kd = cfg.kd
    key = {"weights_sha256": [m.weights_sha256 for m in metas], "rule": kd.ensemble,
           "teacher_weights": kd.teacher_weights, "temperature": kd.temperature,
           "standardized": kd.logit_standardization, "data": bundle.identity.to_json(), "test": bundle.test_identity}
    saved = EnsembleScore.kept(ctx.run_dir / RECORD, key, "ensemble", "delete it to score the ensemble again")
    if saved is not None:
        return saved
    nets = [models.load_trained(teacher_ctx.teacher_dir, bundle.num_classes, "report", "teacher")[0]
            for teacher_ctx in teachers]
    net = models.Ensemble(nets, kd.teacher_weights, kd.ensemble, kd.temperature, kd.logit_standardization)
    _, val_loader = data.loaders(bundle, cfg.data, 256, cfg.seed)
    test_loader = None
    if bundle.test is not None:
        ds = data.ImageDataset(bundle.images["test"], cfg.data, train=False, skip_bad=cfg.data.on_bad_image == "skip")
        test_loader = data.make_loader(ds, 256, False, data.workers(cfg.data, bundle.images["test"]), cfg.seed)
    acc.free_memory()
    val = _evaluate(ctx, net, val_loader)
    test = HeldOutScore.of(_evaluate(ctx, net, test_loader)) if test_loader is not None else None
    combined = EnsembleScore(f"{len(nets)} teachers", sum(m.params for m in metas), kd.ensemble, val.top1, val.top5,
                             val.val_count, test)
    if acc.is_main_process:
        combined.keep(ctx.run_dir / RECORD, key)
    log.info(f"ensemble ({kd.ensemble} of {len(nets)} teachers): val top-1 {combined.top1:.2f}%"
             + (f", test top-1 {test.top1:.2f}%" if test else ""))
    return combined


def _evaluate(ctx: RunContext, net: models.Ensemble, loader) -> Scores:
    prepared, loader = ctx.acc.prepare(net, loader)
    return engine.evaluate(prepared, loader, ctx.acc, ctx.to_input, channels_last=False)
