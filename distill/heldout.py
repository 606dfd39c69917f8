"""Score every trained model once on the held-out test split (`data.test_split`), after the stages.

Each model's score goes to <model folder>/test.json, keyed by the weights it scored (their sha256) and the test
split's identity: a rerun reuses it, and new weights or another test split are scored again. Nothing here trains,
validates or caches on the test split.
"""
from __future__ import annotations

import logging
from pathlib import Path

from distill import data, faults
from distill.store.records import HeldOutScore, Meta
from distill.training import engine, models
from distill.training.context import RunContext

log = logging.getLogger("distill")


def key(meta: Meta, bundle: data.DataBundle) -> dict:
    """What a model's test score is computed from: its weights and the test split."""
    return HeldOutScore.key(meta, bundle.test_identity)


def score(ctx: RunContext, folders: dict[str, Path]) -> dict[str, HeldOutScore]:
    """Each trained model's score on the test split, for the models in `folders` (by name), computed or read back."""
    cfg, acc, bundle, out = ctx.cfg, ctx.acc, ctx.data, {}
    for name, folder in folders.items():
        meta = Meta.in_folder(folder)
        if meta is None:
            continue
        want = key(meta, bundle)
        saved = HeldOutScore.kept(folder / HeldOutScore.FILE, want, name, f"delete it to score the {name} again")
        if saved is not None:
            out[name] = saved
            continue
        net, _ = models.load_trained(folder, bundle.num_classes, "test", name)
        ds = data.ImageDataset(bundle.images["test"], cfg.data, train=False,
                               skip_bad=cfg.data.on_bad_image == "skip")
        loader = data.make_loader(ds, 256, False, data.workers(cfg.data, bundle.images["test"]), cfg.seed)
        acc.free_memory()
        prepared, loader = acc.prepare(net, loader)
        test = HeldOutScore.of(engine.evaluate(prepared, loader, acc, ctx.to_input, channels_last=False))
        if acc.is_main_process:
            test.keep(folder / HeldOutScore.FILE, want)
        faults.point("test", len(out) + 1)  # tests and chaos runs: an interruption after this model's score
        log.info(f"{name}: test top-1 {test.top1:.2f}% top-5 {test.top5:.2f}% on {test.count} "
                 f"images of split '{cfg.data.test_split}'")
        out[name] = test
    acc.wait_for_everyone()
    return out
