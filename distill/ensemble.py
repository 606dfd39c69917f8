"""An ensemble's own scores (teachers=[...]): its teachers' outputs combined by the rule the student learns from
(kd.ensemble, kd.teacher_weights, at kd.temperature), on the validation split and, when there is one, the test
split. Kept in <run>/ensemble.json, keyed by the teachers' weights, the rule and the splits' identities: a rerun
reads it back, and a changed teacher or rule is scored again."""
from __future__ import annotations

import logging

from distill import data, files
from distill.training import engine, models
from distill.training.context import RunContext

log = logging.getLogger("distill")

RECORD = "ensemble.json"


def score(ctx: RunContext) -> dict | None:
    """{top1, top5, val_count[, test_top1, test_top5, test_count]} of the combined teachers; None for one teacher
    (its own row is the ensemble)."""
    cfg, acc, bundle = ctx.cfg, ctx.acc, ctx.data
    teachers = ctx.teachers()
    if len(teachers) < 2:
        return None
    metas = [files.read_json(teacher_ctx.teacher_dir / "meta.json") for teacher_ctx in teachers]
    if any(m is None for m in metas):
        return None
    kd = cfg.kd
    key = {"weights_sha256": [m.get("weights_sha256") for m in metas], "rule": kd.ensemble,
           "teacher_weights": kd.teacher_weights, "temperature": kd.temperature,
           "standardized": kd.logit_standardization, "data": bundle.identity.to_json(), "test": bundle.test_identity}
    saved = files.read_sealed(ctx.run_dir / RECORD, "ensemble", "delete it to score the ensemble again")
    if saved and saved.get("key") == key:
        return saved["metrics"]
    nets = [models.load_trained(teacher_ctx.teacher_dir, bundle.num_classes, "report", "teacher")[0]
            for teacher_ctx in teachers]
    net = models.Ensemble(nets, kd.teacher_weights, kd.ensemble, kd.temperature, kd.logit_standardization)
    _, val_loader = data.loaders(bundle, cfg.data, 256, cfg.seed)
    splits = {"": val_loader}
    if bundle.test is not None:
        ds = data.ImageDataset(bundle.images["test"], cfg.data, train=False, skip_bad=cfg.data.on_bad_image == "skip")
        splits["test_"] = data.make_loader(ds, 256, False, data.workers(cfg.data, bundle.images["test"]), cfg.seed)
    metrics = {}
    acc.free_memory()
    for prefix, loader in splits.items():
        prepared, loader = acc.prepare(net, loader)
        s = engine.evaluate(prepared, loader, acc, ctx.to_input, channels_last=False)
        metrics |= {f"{prefix}top1": s["top1"], f"{prefix}top5": s["top5"], f"{prefix or 'val_'}count": s["val_count"]}
    metrics |= {"model": f"{len(nets)} teachers", "params": sum(m["params"] for m in metas), "rule": kd.ensemble}
    if acc.is_main_process:
        files.write_sealed(ctx.run_dir / RECORD, {"key": key, "metrics": metrics})
    log.info(f"ensemble ({kd.ensemble} of {len(nets)} teachers): val top-1 {metrics['top1']:.2f}%"
             + (f", test top-1 {metrics['test_top1']:.2f}%" if "test_top1" in metrics else ""))
    return metrics
