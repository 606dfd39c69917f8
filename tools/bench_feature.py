"""Benchmark of feature distillation (not a test): images/s of training the same student on the same data, in one
run: CE only, cached KD, cached KD + feature (cache.features: the teacher's pooled features read with the soft
labels), online KD + feature (the live teacher every step), all through the real student stage (one epoch each; the
rate counts the training loop); and timm's own FeatureDistillationTask (timm.task: the live teacher's pooled
feature, MSE through its projection) driven by a plain loop over the same loader, optimizer and batch, timed the
same way. Prints the rates and their ratios.

    python tools/bench_feature.py --data ../shared/data/cifar10/train.parquet [--images 5000]
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bench_args  # noqa: E402  (tools/, beside this file)
from distill import config, data, report  # noqa: E402
from distill.store import artifacts, layout  # noqa: E402
from distill.store.records import Meta  # noqa: E402
from distill.training import engine, models, tricks  # noqa: E402
from distill.stages import cache, student  # noqa: E402
from distill.training.context import RunContext  # noqa: E402


def timm_feature_task(cfg, ctx: RunContext, teacher_dir: Path) -> float:
    """Images/s of one epoch of timm's FeatureDistillationTask over the student stage's own training loader."""
    from timm.task import FeatureDistillationTask

    s = cfg.student
    torch.manual_seed(0)
    net = models.create(s.model, ctx.num_classes)
    models.init_weights(net, s.init, s.zero_gamma)
    teacher, _ = models.load_trained(teacher_dir, ctx.num_classes, "bench", "teacher")
    task = FeatureDistillationTask(net, teacher, criterion=torch.nn.CrossEntropyLoss(), device=ctx.acc.device,
                                   verbose=False)
    optimizer = tricks.build_optimizer(task.trainable_module, s.optim, tricks.scaled_lr(s.optim.lr, s.batch_size))
    loader, _ = data.loaders(ctx.data, cfg.data, s.batch_size, 0)
    task.train()
    seen, start = 0, time.perf_counter()
    for batch in loader:
        x = ctx.to_input(batch).contiguous(memory_format=torch.channels_last)
        out = task(x, batch.label)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        seen += x.shape[0]
    return seen / (time.perf_counter() - start)


def main() -> None:
    args = bench_args.parser(__doc__, teacher="resnet56", student="resnet20", views=4).parse_args()

    acc = engine.make_accelerator("auto")
    tmp = Path(tempfile.mkdtemp(prefix="bench_feature_"))
    raw = {"name": "bench", "run_root": str(tmp), "seed": 0,
           "data": bench_args.cifar_data(args),
           "teacher": {"model": args.teacher, "dir": str(tmp / "teacher")},
           "cache": {"root": str(tmp / "cache"), "views": args.views, "topk": 10, "features": True},
           "student": {"model": args.student, "epochs": 1, "batch_size": args.batch, "baseline": True,
                       "sched": {"warmup_epochs": 0}}}
    cfg = config.validate(raw)
    bundle = data.load(cfg.data)
    norm = layout.normalization(cfg.data, bundle)
    torch.manual_seed(0)
    artifacts.save_model(tmp / "teacher", models.create(args.teacher, bundle.num_classes), Meta(model=args.teacher))
    ctx = RunContext.make(cfg, acc, bundle, norm, tmp / "bench")
    cache.run(ctx)
    rate = {}

    def student_rate(name: str, kd: dict, baseline: bool = False) -> dict:
        one = config.validate(raw | {"name": name, "kd": kd, "student": raw["student"] | {"baseline": baseline}})
        return student.run(RunContext.make(one, acc, bundle, norm, tmp / name))

    plain = student_rate("cached_kd", {}, baseline=True)  # cached KD, then the CE-only baseline
    rate["ce_only"], rate["cached_kd"] = (plain[k].metrics.images_per_s for k in ("baseline", "student"))
    rate["cached_feature_kd"] = student_rate("cached_feature_kd", {"feature_weight": 1.0})[
        "student"].metrics.images_per_s
    rate["online_feature_kd"] = student_rate("online_feature_kd", {"feature_weight": 1.0, "teacher": "online"})[
        "student"].metrics.images_per_s
    rate["timm_feature_task"] = timm_feature_task(cfg, ctx, tmp / "teacher")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}"
    result = {"device": device, "images": len(bundle.train), "teacher": args.teacher, "student": args.student,
              "batch": args.batch, **{f"{k}_images_per_s": round(v, 1) for k, v in rate.items()}}
    for a, b in (("cached_feature_kd", "ce_only"), ("cached_feature_kd", "cached_kd"),
                 ("cached_feature_kd", "timm_feature_task"), ("online_feature_kd", "timm_feature_task")):
        result[f"{a}_vs_{b}"] = round(rate[a] / rate[b], 3)
    report.print_fields(result)


if __name__ == "__main__":
    main()
