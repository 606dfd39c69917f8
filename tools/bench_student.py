"""Benchmark of student training (not a test): images/s of CE-only, cached-KD and online-KD training of the same
student on the same data, in one run, through the real student stage (one epoch each; the rate counts only the
training loop). Targets: cached KD >= 0.95 x CE-only; online KD is reported as the ratio it costs.

    python tools/bench_student.py --data ../shared/data/cifar10/train.parquet [--images 5000]
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bench_args  # noqa: E402  (tools/, beside this file)
from distill import config, data, report  # noqa: E402
from distill.store import artifacts, layout  # noqa: E402
from distill.store.records import Meta  # noqa: E402
from distill.training import engine, models  # noqa: E402
from distill.stages import cache, student  # noqa: E402
from distill.training.context import RunContext  # noqa: E402


def main() -> None:
    args = bench_args.parser(__doc__, teacher="resnet56", student="resnet20", views=4).parse_args()

    acc = engine.make_accelerator("auto")
    tmp = Path(tempfile.mkdtemp(prefix="bench_student_"))
    raw = {"name": "bench", "run_root": str(tmp), "seed": 0,
           "data": bench_args.cifar_data(args),
           "teacher": {"model": args.teacher, "dir": str(tmp / "teacher")},
           "cache": {"root": str(tmp / "cache"), "views": args.views, "topk": 10},
           "student": {"model": args.student, "epochs": 1, "batch_size": args.batch, "baseline": True,
                       "sched": {"warmup_epochs": 0}}}
    cfg = config.validate(raw)
    bundle = data.load(cfg.data)
    norm = layout.normalization(cfg.data, bundle)
    torch.manual_seed(0)
    artifacts.save_model(tmp / "teacher", models.create(args.teacher, bundle.num_classes), Meta(model=args.teacher))
    cache.run(RunContext.make(cfg, acc, bundle, norm, tmp / "bench"))
    cached = student.run(RunContext.make(cfg, acc, bundle, norm, tmp / "bench"))  # cached KD, then the CE-only baseline
    online_cfg = config.validate(raw | {"name": "online", "kd": {"teacher": "online"},
                                        "student": raw["student"] | {"baseline": False}})
    online = student.run(RunContext.make(online_cfg, acc, bundle, norm, tmp / "online"))
    rate = {name: meta.metrics.images_per_s for name, meta in
            (("ce_only", cached["baseline"]), ("cached_kd", cached["student"]), ("online_kd", online["student"]))}
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}"
    result = {"device": device,
              "images": len(bundle.train), "teacher": args.teacher, "student": args.student, "batch": args.batch,
              **{f"{k}_images_per_s": round(v, 1) for k, v in rate.items()},
              "cached_kd_vs_ce_only": round(rate["cached_kd"] / rate["ce_only"], 3),
              "online_kd_vs_ce_only": round(rate["online_kd"] / rate["ce_only"], 3),
              "cached_kd_vs_online_kd": round(rate["cached_kd"] / rate["online_kd"], 3)}
    report.print_fields(result)


if __name__ == "__main__":
    main()
