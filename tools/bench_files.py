"""Benchmark of the image-file check before any work (not a test): distill/data/wholefiles.py on an imagefolder of
small JPEG files, written first when the folder does not exist. Prints microseconds per file for the walk (listing
the image files) and for the head-and-tail read of each, best of 3, and the extrapolation to ImageNet's 1,281,167
training files.

    python tools/bench_files.py /tmp/files [--files 20000]

The files are in the page cache when measured (just written or just read): a cold disk adds its seeks.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from distill.data import wholefiles  # noqa: E402

IMAGENET_TRAIN = 1_281_167


def write(root: Path, n: int) -> None:
    """n 32x32 JPEG files of random pixels in 100 class folders under root/train."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / "train" / f"c{i % 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--files", type=int, default=20000)
    args = parser.parse_args()
    if not args.folder.exists():
        write(args.folder, args.files)
    walks, reads = [], []
    for _ in range(3):
        start = time.perf_counter()
        found = wholefiles.image_files(args.folder)
        walks.append(time.perf_counter() - start)
        start = time.perf_counter()
        flagged = [f for f in found if wholefiles.problem(f)]
        reads.append(time.perf_counter() - start)
    walk, read = min(walks) / len(found) * 1e6, min(reads) / len(found) * 1e6
    print(f"{len(found)} files, {len(flagged)} flagged: walk {walk:.1f} us/file, head and tail {read:.1f} us/file; "
          f"x {IMAGENET_TRAIN:,} files: {(walk + read) * IMAGENET_TRAIN / 1e6:.0f} s")


if __name__ == "__main__":
    main()
