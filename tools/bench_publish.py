"""Bytes per view of a published cache (parquet, store/published.py) against the native record, and the time to
publish an image against the cache stage's time to label one.

    python tools/bench_publish.py                        # synthetic caches of the demo, CIFAR-10 and ImageNet shapes
    python tools/bench_publish.py --run runs/demo        # also the run's real cache (its cache.json), timed

Synthetic records: fp16 logits drawn normal (incompressible, as real logits are), views drawn by views.draw; the
native size is the record's (softlabels.record_dtype), the published one the shards' column data (zstd).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from distill.config import DataCfg  # noqa: E402
from distill.data import views  # noqa: E402
from distill.store import published, softlabels  # noqa: E402

SHAPES = {  # name: images, views, classes, k, transform, mixed
    "demo": (1437, 2, 10, 10, "cifar", False),
    "CIFAR-10 recipe (cifar10_resnet20_to_resnet8)": (20000, 3, 10, 10, "cifar", False),
    "CIFAR-10 recipe, mixed views (cache.mix)": (20000, 3, 10, 10, "cifar", True),
    "ImageNet recipe (20,000-image sample)": (20000, 20, 1000, 10, "imagenet", False),
}


def synthetic(n: int, v: int, c: int, k: int, transform: str, mixed: bool) -> np.ndarray:
    """Records of a cache of this shape, filled as a teacher's would be (mixed: 4 views in 5 mixed)."""
    rng = np.random.default_rng(0)
    rec = np.zeros(n, softlabels.record_dtype(v, k, c, mixed))
    cfg = DataCfg(image_size=32 if transform == "cifar" else 224, transform=transform)
    rec["view"] = [[views.draw(cfg, views.rng_for(0, i, j), (375, 500)) for j in range(v)] for i in range(n)]
    if mixed:
        rec["partner"] = np.where(rng.random((n, v)) < 0.8, rng.integers(0, n, (n, v)), -1)
        rec["partner_view"], rec["lam"] = rec["view"][rng.permutation(n)], rng.random((n, v))
        rec["box"], rec["partner_target"] = rng.integers(0, 32, (n, v, 4)), rng.normal(0, 3, (n, v))
    rec["logits"] = rng.normal(0, 3, (n, v, k))
    rec["classes"] = np.argsort(rng.random((n, v, c)), -1)[..., :k]
    for name in ("lse", "target", "mean", "std", "lse_rest", "lse_std_rest"):
        rec[name] = rng.normal(0, 3, (n, v))
    rec["top1"], rec["correct"] = rec["classes"][..., 0], rng.random((n, v)) < 0.8
    return rec


def measure(records: np.ndarray, v: int) -> tuple[float, float, float]:
    """(published bytes per view, native bytes per view, microseconds to publish an image)."""
    keys = [np.random.default_rng(i).bytes(16) for i in range(len(records))]
    labels = np.zeros(len(records), np.int32)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        shards = published.write_shards(Path(tmp), published.to_table(records, keys, labels), 10000)
        seconds = time.perf_counter() - start
        card = published.PublishedCard(**{f: None for f in published.PublishedCard.__dataclass_fields__}
                                       | {"shards": shards})
        payload = published.payload_bytes(Path(tmp), card)
    return payload / (len(records) * v), records.dtype.itemsize / v, 1e6 * seconds / len(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run folder whose cache (cache.json) to publish and time")
    args = parser.parse_args()
    measure(synthetic(100, 2, 10, 10, "cifar", False), 2)  # warm-up: pyarrow's first write
    print(f"{'cache':48} {'published B/view':>17} {'native B/view':>14} {'ratio':>6} {'publish us/img':>15}")
    for name, (n, v, c, k, transform, mixed) in SHAPES.items():
        pub, native, us = measure(synthetic(n, v, c, k, transform, mixed), v)
        print(f"{name:48} {pub:17.1f} {native:14.1f} {pub / native:6.2f} {us:15.1f}")
    if args.run:
        record = json.loads((Path(args.run) / "cache.json").read_text())
        cache = softlabels.SoftLabels(record["folder"])
        pub, native, us = measure(cache.rows(np.arange(len(cache))), cache.views)
        print(f"{'real cache of ' + args.run:48} {pub:17.1f} {native:14.1f} {pub / native:6.2f} {us:15.1f}")
        label_us = 1e6 / record["images_per_s"] if record.get("images_per_s") else float("nan")
        print(f"labelling (the cache stage, {record.get('images')} images): {label_us:.0f} us per image; "
              f"publishing: {us:.0f} us per image ({us / label_us:.2%} of it)")


if __name__ == "__main__":
    main()
