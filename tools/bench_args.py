"""What the student benchmarks (bench_student.py, bench_ensemble.py, bench_feature.py) share: their command line
and the data section of their run, on a parquet file in the hub's CIFAR layout."""
from __future__ import annotations

import argparse


def parser(doc: str, *, teacher: str, student: str, views: int, teacher_help: str | None = None
           ) -> argparse.ArgumentParser:
    """The arguments every student bench takes; a bench adds its own."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="parquet file in the hub's CIFAR layout (columns img, label)")
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--val", type=int, default=1000, help="validation images carved off (not timed)")
    p.add_argument("--teacher", default=teacher, help=teacher_help)
    p.add_argument("--student", default=student)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--views", type=int, default=views)
    p.add_argument("--workers", type=int, default=2)
    return p


def cifar_data(args: argparse.Namespace) -> dict:
    """The run's data section: --images training images of --data, --val carved off, CIFAR-10's statistics."""
    return {"source": "parquet", "path": args.data, "image_column": "img", "val_size": args.val,
            "train_size": args.images, "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616],
            "num_workers": args.workers}
