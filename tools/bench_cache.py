"""Benchmark of the cache stage (not a test): prints, from one run on the same data and teacher,
  - raw teacher inference images/s over the data loader (eval view, one forward per image),
  - cache generation images/s and views/s (our cache stage, V views per image), and their ratio per forward,
  - bytes per cached view for C = 1000 at k = 10 against dense fp32 logits,
  - the time to gather one batch of soft labels from the memory-mapped cache, as a fraction of a student step.

    python tools/bench_cache.py --data ../shared/data/cifar10/train.parquet [--images 5000] [--views 4]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from distill import config, data, report  # noqa: E402
from distill.data import transforms  # noqa: E402
from distill.store import artifacts, layout, softlabels  # noqa: E402
from distill.store.records import Meta  # noqa: E402
from distill.training import engine, models  # noqa: E402
from distill.stages import cache  # noqa: E402
from distill.training.context import RunContext  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="parquet file in the hub's CIFAR layout (columns img, label)")
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--teacher", default="resnet56")
    p.add_argument("--student", default="resnet20")
    p.add_argument("--batch", type=int, default=256, help="teacher batch in forwards, for both passes")
    p.add_argument("--student-batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()

    acc = engine.make_accelerator("auto")
    tmp = Path(tempfile.mkdtemp(prefix="bench_cache_"))
    cfg = config.validate({
        "data": {"source": "parquet", "path": args.data, "image_column": "img", "val_size": 1000,
                 "train_size": args.images, "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616],
                 "num_workers": args.workers},
        "cache": {"root": str(tmp / "cache"), "views": args.views, "topk": 10,
                  "batch_size": args.batch,  # the same teacher batch (in forwards) as the raw pass
                  "shard_size": 10000}})
    bundle = data.load(cfg.data)
    norm = layout.normalization(cfg.data, bundle)
    torch.manual_seed(0)
    teacher = models.create(args.teacher, bundle.num_classes)
    run_dir = tmp / "run"
    artifacts.save_model(run_dir / "teacher", teacher, Meta(model=args.teacher))
    n = len(bundle.train)

    # (1) raw teacher inference over the loader
    ds = data.ImageDataset(bundle.images["train"], cfg.data, train=False)
    loader = data.make_loader(ds, args.batch, False, args.workers, 0)
    to_input = transforms.ToInput(cfg.data, norm.mean, norm.std)
    model = teacher.to(acc.device, memory_format=torch.channels_last).eval()
    start = time.perf_counter()
    with torch.inference_mode(), acc.autocast():
        for batch in loader:
            x = to_input(data.Views(image=batch.image.to(acc.device, non_blocking=True)))
            model(x.contiguous(memory_format=torch.channels_last))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    raw = n / (time.perf_counter() - start)

    # (2) cache generation through the real stage
    start = time.perf_counter()
    manifest = cache.run(RunContext.make(cfg, acc, bundle, norm, run_dir))["teacher"]
    gen_s = time.perf_counter() - start
    gen_images, gen_views = n / gen_s, n * args.views / gen_s

    # (3) bytes per view, ImageNet-sized classes
    per_view = softlabels.record_dtype(1, 10, 1000).itemsize

    # (4) one batch of soft labels vs one student step
    labels = softlabels.SoftLabels(Path(cfg.cache.root) / manifest.fingerprint)
    rng = np.random.default_rng(0)
    reps = 200
    start = time.perf_counter()
    for _ in range(reps):
        rows = labels.rows(rng.integers(0, n, args.student_batch))  # one batch's records, then its views' labels
        v = rng.integers(0, args.views, args.student_batch)
        torch.from_numpy(rows["logits"][np.arange(len(rows)), v].astype(np.float32))
    read_s = (time.perf_counter() - start) / reps
    student = models.create(args.student, bundle.num_classes).to(acc.device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(args.student_batch, 3, 32, 32, device=acc.device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, bundle.num_classes, (args.student_batch,), device=acc.device)
    for i in range(13):
        if i == 3:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
        with acc.autocast():
            loss = torch.nn.functional.cross_entropy(student(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - start) / 10

    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}",
        "images": n, "views": args.views, "teacher": args.teacher,
        "raw_teacher_images_per_s": round(raw, 1),
        "cache_images_per_s": round(gen_images, 1), "cache_views_per_s": round(gen_views, 1),
        "cache_vs_raw_per_forward": round(gen_views / raw, 3),
        "bytes_per_view_c1000_k10": per_view, "dense_fp32_bytes_per_view": 4000,
        "bytes_fraction_of_dense": round(per_view / 4000, 4),
        "soft_label_batch_read_ms": round(read_s * 1e3, 3), "student_step_ms": round(step_s * 1e3, 2),
        "read_fraction_of_student_step": round(read_s / step_s, 4),
    }
    report.print_fields(result)


if __name__ == "__main__":
    main()
