"""Score every trained model once on the held-out test split (`data.test_split`), after the stages.

Each model's score goes to <model folder>/test.json, keyed by the weights it scored (their sha256) and the test
split's identity: a rerun reuses it, and new weights or another test split are scored again. Nothing here trains,
validates or caches on the test split.
"""
from __future__ import annotations

import logging
from pathlib import Path

from accelerate import Accelerator

from distill import data
from distill.data import transforms
from distill.store import artifacts, layout
from distill.training import engine, models
from distill.config import Config

log = logging.getLogger("distill")


def key(meta: dict, bundle: data.DataBundle) -> dict:
    return {"weights_sha256": meta.get("weights_sha256"), "test": bundle.test_identity}


def folders(cfg: Config, run_dir: Path) -> dict[str, Path]:
    return {"teacher": layout.teacher_dir(cfg, run_dir), "student": layout.student_dir(run_dir),
            "baseline": layout.student_dir(run_dir, baseline=True)}


def score(cfg: Config, acc: Accelerator, bundle: data.DataBundle, norm: dict, run_dir: Path) -> dict[str, dict]:
    """{model: {top1, top5, count}} for every trained model of the run, computed or read back."""
    out = {}
    to_input = transforms.ToInput(cfg.data, norm, data.device_views(cfg.data, bundle, acc.device))
    for name, folder in folders(cfg, run_dir).items():
        meta = artifacts.read_json(folder / "meta.json")
        if meta is None:
            continue
        want = key(meta, bundle)
        saved = artifacts.read_json(folder / "test.json")
        if saved and saved.get("key") == want:
            out[name] = saved["metrics"]
            continue
        net = models.create(meta["model"], bundle.num_classes)
        net.load_state_dict(artifacts.load_weights(folder))
        ds = data.ImageDataset(bundle.images["test"], cfg.data, train=False,
                               skip_bad=cfg.data.on_bad_image == "skip")
        loader = data.make_loader(ds, 256, False, data.workers(cfg.data, bundle.images["test"]), cfg.seed)
        acc.free_memory()
        prepared, loader = acc.prepare(net, loader)
        m = engine.evaluate(prepared, loader, acc, to_input, channels_last=False)
        metrics = {"top1": m["top1"], "top5": m["top5"], "count": m["val_count"]}
        if acc.is_main_process:
            artifacts.write_json(folder / "test.json", {"key": want, "metrics": metrics})
        log.info(f"{name}: test top-1 {metrics['top1']:.2f}% top-5 {metrics['top5']:.2f}% on {metrics['count']} "
                 f"images of split '{cfg.data.test_split}'")
        out[name] = metrics
    acc.wait_for_everyone()
    return out
