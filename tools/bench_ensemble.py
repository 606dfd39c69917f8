"""Benchmark of an ensemble student (not a test): student training images/s from the caches of 1, 3 and 5 teachers
(the loader reads each teacher's records of a batch at once, student.ReplayItems.__getitems__, and the target
combines K distributions), beside CE-only, in one run on the same data, through the real stages (one student epoch
each, the rate counting only the training loop; the best of `--rounds` rounds, taken in turn, so that a slow moment
of the machine does not fall on one K alone); prints each K's rate and its ratio to one teacher's and to CE-only's.

    python tools/bench_ensemble.py --data ../shared/data/cifar10/train.parquet [--images 5000] [--teachers 1 3 5]
        [--json out.json]
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bench_args  # noqa: E402  (tools/, beside this file)
from distill import config, data, report  # noqa: E402
from distill.store import layout  # noqa: E402
from distill.training import engine, models  # noqa: E402
from distill.stages import cache, student, teacher  # noqa: E402
from distill.training.context import RunContext  # noqa: E402


def main() -> None:
    p = bench_args.parser(__doc__, teacher="resnet20", student="resnet8", views=3,
                          teacher_help="each teacher's architecture (seeded random weights: the student's step does "
                                       "not depend on what they learned)")
    p.add_argument("--teachers", type=int, nargs="+", default=[1, 3, 5])
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the result here (tools/gpu_check.sh collects it)")
    args = p.parse_args()

    acc = engine.make_accelerator("auto")
    tmp = Path(tempfile.mkdtemp(prefix="bench_ensemble_"))
    raw = {"name": "bench", "run_root": str(tmp), "seed": 0,
           "data": bench_args.cifar_data(args),
           "teacher": {"model": args.teacher, "source": "timm"},
           "cache": {"root": str(tmp / "cache"), "views": args.views, "topk": args.topk},
           "student": {"model": args.student, "epochs": 1, "batch_size": args.batch, "baseline": False,
                       "sched": {"warmup_epochs": 0}}}
    files = []
    for k in range(max(args.teachers)):
        torch.manual_seed(k)
        files.append(tmp / f"teacher{k}.safetensors")
        save_file(models.create(args.teacher, 10).state_dict(), str(files[-1]))
    cfgs = {k: config.validate(raw | {"name": f"k{k}", "teachers": [{"name": f"t{j}", "checkpoint": str(files[j]),
                                                                      "dir": str(tmp / "teachers" / f"t{j}")}
                                                                     for j in range(k)]}) for k in args.teachers}
    cfgs[0] = config.validate(raw | {"name": "ce", "kd": {"alpha": 0.0}, "teacher": raw["teacher"] |
                                     {"checkpoint": str(files[0]), "dir": str(tmp / "teachers" / "t0")}})  # kd.alpha 0: CE alone, no teacher read
    bundle = data.load(cfgs[0].data)
    norm = layout.normalization(cfgs[0].data, bundle)
    for k, cfg in cfgs.items():  # teachers loaded from their files and their caches labelled, once
        ctx = RunContext.make(cfg, acc, bundle, norm, tmp / cfg.name)
        teacher.run(ctx)
        cache.run(ctx)  # CE's (k = 0) is teacher 0's cache, reused
    best: dict[int, float] = {}
    for r in range(args.rounds):
        for k, cfg in cfgs.items():
            print(f"round {r + 1} of {args.rounds}: {k} teacher(s)", file=sys.stderr, flush=True)
            folder = tmp / f"{cfg.name}-round{r}"
            meta = student.run(RunContext.make(cfg, acc, bundle, norm, folder))["student"]
            best[k] = max(best.get(k, 0.0), meta.metrics.images_per_s)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}"
    result = {"device": device, "images": len(bundle.train), "teacher": args.teacher, "student": args.student,
              "batch": args.batch, "topk": args.topk, "rounds": args.rounds,
              "ce_only_images_per_s": round(best[0], 1),
              **{f"teachers_{k}_images_per_s": round(best[k], 1) for k in args.teachers},
              **{f"teachers_{k}_vs_1": round(best[k] / best[args.teachers[0]], 3) for k in args.teachers[1:]},
              **{f"teachers_{k}_vs_ce_only": round(best[k] / best[0], 3) for k in args.teachers}}
    report.print_fields(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)  # the caches and runs of every K


if __name__ == "__main__":
    main()
