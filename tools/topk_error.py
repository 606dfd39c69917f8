"""What a top-k cache costs in accuracy of the loss (not a test): KD, DKD and DIST from top-k soft labels against
the same teacher's every logit, on a trained run's real training views.

The run's cache must keep every logit (cache.topk >= classes); it is the reference. For each k, the top-k records are
built from those very stored logits (softlabels.teacher_fields, as the cache stage writes them) and read back through
the top-k reconstruction (targets.CachedTeacher), so the figures are the truncation's alone, not fp16's. The student
logits come from the student stage's loader (each cached view replayed) through two students: the run's trained KD
student and the same architecture at its initialisation. Per batch of --batch views: the relative error of each
method's loss and the cosine between its gradients with respect to the student logits; the table gives the mean
and the worst batch.

    python tools/topk_error.py runs/cifar10_resnet20_to_resnet8 [--ks 1 2 3 5] [--temperatures 1 4] [--md out.md]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from distill import config, data  # noqa: E402
from distill.data import transforms  # noqa: E402
from distill.store import artifacts, layout, softlabels  # noqa: E402
from distill.training import models, targets  # noqa: E402
from distill.config import KDCfg  # noqa: E402
from distill.methods.dkd import DKDSettings  # noqa: E402
from distill import registry  # noqa: E402
from distill.stages import student  # noqa: E402

METHODS = {"kd": {}, "dkd": {"dkd": DKDSettings(warmup=0)}, "dist": {}}  # each method's CIFAR defaults otherwise


def _students(run: Path, cfg: config.Config, num_classes: int) -> dict[str, torch.nn.Module]:
    trained = models.create(cfg.student.model, num_classes)
    trained.load_state_dict(artifacts.load_weights(run / "student"))
    torch.manual_seed(cfg.seed)
    fresh = models.create(cfg.student.model, num_classes)
    models.init_weights(fresh, cfg.student.init, cfg.student.zero_gamma)
    return {"trained KD student": trained.eval(), "student at init": fresh.eval()}


def _loss_and_grad(method: str, logits: torch.Tensor, log_q: torch.Tensor, batch: dict, kd_cfg: KDCfg):
    s = logits.detach().clone().requires_grad_(True)
    loss = registry.METHODS.lookup(method)(s, log_q, batch, kd_cfg, 10 ** 6)["loss"]
    loss.backward()
    return loss.item(), s.grad.flatten()


def measure(run: Path, ks: list[int], temperatures: list[float], batch_size: int, max_batches: int | None) -> list:
    cfg = config.validate(OmegaConf.load(run / "config.yaml"))
    cache_folder = Path(json.loads((run / "cache.json").read_text())["folder"])
    labels = softlabels.SoftLabels(cache_folder)
    if not labels.dense:
        raise SystemExit(f"{cache_folder}: keeps the top {labels.topk} of {labels.num_classes} logits; the reference "
                         "needs every logit (cache.topk >= classes)")
    bundle = data.load(cfg.data)
    norm = layout.normalization(cfg.data, bundle, run / "data_stats.json")  # as the stages found it
    to_input = transforms.ToInput(cfg.data, norm.mean, norm.std)
    nets = _students(run, cfg, labels.num_classes)
    rows: dict[tuple, list] = {}
    for epoch in range(labels.views):  # every cached view once: sample i at epoch e replays view (i + e) mod V
        replay = student.ReplayItems(bundle.images["train"], cfg.data, [cache_folder], "cycle", cfg.seed)
        replay.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(replay, batch_size=batch_size, shuffle=False, num_workers=2,
                                             collate_fn=data.collate_replay)
        for b, batch in enumerate(loader):
            if max_batches is not None and b >= max_batches:
                break
            x = to_input(batch)
            record = batch.teachers[0]
            stored = torch.zeros(len(x), labels.num_classes).scatter_(1, record.classes, record.logits)
            with torch.no_grad():
                outputs = {name: net(x) for name, net in nets.items()}
            for t in temperatures:
                full = targets.CachedTeacher(labels.num_classes, True, 1.0).log_probs(batch, None, t, False)
                approx = {}
                for k in ks:
                    fields = softlabels.teacher_fields(stored, batch.label, None, k, t)
                    top = dataclasses.replace(batch, teachers=[data.TeacherRecord(
                        logits=fields["logits"].float(), classes=fields["classes"],
                        **{n: fields[n] for n in ("target", "mean", "std", "lse_rest", "lse_std_rest")})])
                    approx[k] = targets.CachedTeacher(labels.num_classes, False, t).log_probs(top, None, t, False)
                for method, extra in METHODS.items():
                    kd_cfg = KDCfg(loss=method, temperature=t, alpha=1.0, **extra)
                    for who, logits in outputs.items():
                        ref, g_ref = _loss_and_grad(method, logits, full, batch, kd_cfg)
                        for k in ks:
                            val, g = _loss_and_grad(method, logits, approx[k], batch, kd_cfg)
                            cos = torch.nn.functional.cosine_similarity(g, g_ref, dim=0).item()
                            rows.setdefault((who, t, method, k), []).append((abs(val - ref) / abs(ref), cos))
        print(f"topk_error: view pass {epoch + 1}/{labels.views} done", file=sys.stderr, flush=True)
    out = []
    for (who, t, method, k), got in rows.items():
        err, cos = np.array(got).T
        out.append({"student": who, "T": t, "method": method, "k": k, "batches": len(got),
                    "rel_error_mean": float(err.mean()), "rel_error_max": float(err.max()),
                    "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())})
    return out


def table(rows: list) -> str:
    lines = ["| student | T | method | k | loss rel. error, mean (worst batch) | gradient cosine, mean (worst) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: (r["student"], r["T"], list(METHODS).index(r["method"]), r["k"])):
        lines.append(f"| {r['student']} | {r['T']:g} | {r['method']} | {r['k']} | {r['rel_error_mean']:.2e} "
                     f"({r['rel_error_max']:.2e}) | {r['cosine_mean']:.5f} ({r['cosine_min']:.5f}) |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished run folder whose cache keeps every logit")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 5])
    ap.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 4.0])
    ap.add_argument("--batch", type=int, default=256, help="views per batch (one loss value per batch)")
    ap.add_argument("--max-batches", type=int, default=None, help="per view pass (default: every image)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    a = ap.parse_args()
    rows = measure(a.run, a.ks, a.temperatures, a.batch, a.max_batches)
    text = table(rows)
    print(text)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    if a.md:
        a.md.write_text(text + "\n")


if __name__ == "__main__":
    main()
