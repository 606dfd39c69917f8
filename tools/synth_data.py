"""A synthetic image-classification data set of any size, deterministic from a seed, in the layouts users have (not a
test): N training images of S x S pixels in C classes as JPEG files, and a held-out split of its own.

Each class has its own pattern (a few random colours on a coarse grid, enlarged to S px); an image is its class's
pattern shifted by up to S/4 px, dimmed or brightened, plus noise: learnable, not trivially, so a student's accuracy
says something (at 8 px, the nearest class mean of 20 training images a class labels held-out images 48% right in
10 classes and 21% in 1,000, against chance at 10% and 0.1%).

Layouts (--layout):
  hub          data/train-00000-of-000NN.parquet and data/test-...: the hub's parquet shards, an `image` column of
               {bytes, path} and a ClassLabel `label`, with `datasets`' schema metadata, as the hub serves ImageNet
  plain        the same files written by pyarrow alone: the image column a struct<bytes, path>, labels int64, no
               `datasets` metadata (as many other tools write them)
  imagefolder  train/<class>/<n>.jpg and test/<class>/<n>.jpg

    python tools/synth_data.py                                      # 12,800 images, 8 px, 1,000 classes, hub
    python tools/synth_data.py --out /tmp/synth --layout imagefolder
    python tools/synth_data.py --out /tmp/in1k --images 1281167 --size 8 --layout plain
"""
from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def class_patterns(classes: int, size: int, seed: int, grid: int = 4) -> np.ndarray:
    """Each class's pattern, float32 [C, S, S, 3] in 0..255: grid x grid random colours, enlarged (nearest)."""
    rng = np.random.default_rng([seed, 0])
    coarse = rng.uniform(0, 255, size=(classes, grid, grid, 3)).astype(np.float32)
    reps = math.ceil(size / grid)
    return np.repeat(np.repeat(coarse, reps, 1), reps, 2)[:, :size, :size]


def images(patterns: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [n, S, S, 3]: each label's pattern, rolled by up to S/4 px, scaled by 0.7..1.3, plus N(0, 40) noise."""
    size = patterns.shape[1]
    shift = max(1, size // 4)
    out = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    dy, dx = rng.integers(-shift, shift + 1, size=(2, len(labels)))
    gain = rng.uniform(0.7, 1.3, size=len(labels)).astype(np.float32)
    noise = rng.normal(0, 40, size=out.shape).astype(np.float32)
    for i, c in enumerate(labels):
        x = np.roll(patterns[c], (dy[i], dx[i]), axis=(0, 1)) * gain[i] + noise[i]
        out[i] = np.clip(x, 0, 255)
    return out


def jpeg(pixels: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def hub_metadata(classes: int) -> dict:
    """`datasets`' schema metadata for {image: Image, label: ClassLabel(c0000, ...)}: what it reads the files by."""
    names = [f"c{i:04d}" for i in range(classes)]
    return {b"huggingface": json.dumps({"info": {"features": {
        "image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": names}}}}).encode()}


def write_split(out: Path, split: str, n: int, args, patterns: np.ndarray, salt: int) -> None:
    """Split `split` of n images: labels cycle over the classes (balanced), shuffled within each shard."""
    shards = max(1, math.ceil(n / args.shard_images)) if args.layout != "imagefolder" else 1
    bounds = np.linspace(0, n, shards + 1).astype(np.int64)
    start = time.time()
    for s in range(shards):
        rng = np.random.default_rng([args.seed, salt, s])
        idx = np.arange(bounds[s], bounds[s + 1])
        labels = rng.permutation(idx % args.classes)
        files, done = [], 0
        for c in range(0, len(labels), 4096):  # a chunk of images in memory at a time
            chunk = labels[c:c + 4096]
            pixels = images(patterns, chunk, rng)
            if args.layout == "imagefolder":
                for j, (img, label) in enumerate(zip(pixels, chunk)):
                    folder = out / split / f"c{label:04d}"
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / f"{bounds[s] + c + j}.jpg").write_bytes(jpeg(img, args.quality))
            else:
                files.extend(jpeg(img, args.quality) for img in pixels)
            done += len(chunk)
        if args.layout != "imagefolder":
            column = pa.array([{"bytes": f, "path": None} for f in files], IMAGE)
            table = pa.table({"image": column, "label": pa.array(labels, pa.int64())})
            if args.layout == "hub":
                table = table.replace_schema_metadata(hub_metadata(args.classes))
            (out / "data").mkdir(parents=True, exist_ok=True)
            pq.write_table(table, out / "data" / f"{split}-{s:05d}-of-{shards:05d}.parquet")
        print(f"{split}: shard {s + 1}/{shards}, {bounds[s + 1]:,} images, {time.time() - start:.0f} s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="folder to write (must not exist; default: one in the temporary folder "
                   "named by the settings, reused when complete)")
    p.add_argument("--images", type=int, default=12_800, help="training images")
    p.add_argument("--test", type=int, default=None, help="held-out images (default: 10 per class)")
    p.add_argument("--size", type=int, default=8, help="image side in pixels")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--layout", choices=("hub", "plain", "imagefolder"), default="hub")
    p.add_argument("--shard-images", type=int, default=10_000, help="images per parquet shard")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / (f"distill_synth-{args.images}-{args.size}px-{args.classes}c-"
                                                  f"{args.layout}-seed{args.seed}")
        if (args.out / "done").exists():
            print(f"synth_data: {args.out} is already there")
            return
        shutil.rmtree(args.out, ignore_errors=True)  # an interrupted earlier run of the same settings
    elif args.out.exists():
        p.error(f"--out {args.out} exists; give a new folder")
    patterns = class_patterns(args.classes, args.size, args.seed)
    start = time.time()
    write_split(args.out, "train", args.images, args, patterns, salt=1)
    write_split(args.out, "test", args.test if args.test is not None else 10 * args.classes, args, patterns, salt=2)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    (args.out / "done").write_text("")
    print(f"synth_data: {args.out} ({args.layout}): {args.images:,} + test images of {args.size} px in "
          f"{args.classes:,} classes, {size / 2**20:.0f} MB, {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
