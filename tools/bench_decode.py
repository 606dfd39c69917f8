"""Benchmark of JPEG decoding (not a test): photographs decoded per batch by each backend of distill/data/jpeg.py on
a device, beside PIL (libjpeg-turbo, one image at a time on one CPU core, as a loader worker decodes). Prints
images/s per backend and the ratio to PIL; --json writes them.

    python tools/bench_decode.py --device cuda [--images 1024] [--batch 256] [--json decode.json]

The photographs are tests/conftest.py's `photo_jpegs`: CIFAR-10 images (when ../shared/data is here; scikit-learn's
digits otherwise) enlarged to about 500 x 375, JPEG quality 90, 4:2:0.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from conftest import photo_jpegs  # noqa: E402
from distill.data import jpeg  # noqa: E402


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def rate(decode, files: list, batch: int, device: str, rounds: int) -> float:
    """Images/s of `decode` over `files` in batches, after one warm-up batch; the best of `rounds` passes."""
    decode(files[:batch])
    _sync(device)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(0, len(files), batch):
            decode(files[i:i + batch])
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return len(files) / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=1024, help="photographs decoded per pass")
    p.add_argument("--batch", type=int, default=256, help="files decoded together in one call")
    p.add_argument("--rounds", type=int, default=3, help="passes; the fastest counts")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args()
    unique = photo_jpegs(min(args.images, 256))
    raw = [unique[i % len(unique)] for i in range(args.images)]
    files = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in raw]

    def pil(chunk):
        for f in chunk:
            with Image.open(io.BytesIO(f)) as img:
                img.convert("RGB").load()

    result = {"device": args.device, "images": args.images, "batch": args.batch,
              "bytes_per_file": sum(map(len, raw)) / len(raw),
              "pil_cpu_1_core_img_per_s": rate(pil, raw, args.batch, "cpu", args.rounds)}
    for backend in jpeg.available():
        r = rate(lambda chunk: jpeg.decode(chunk, args.device, backend), files, args.batch, args.device, args.rounds)
        result[f"{backend}_img_per_s"] = r
        result[f"{backend}_over_pil"] = r / result["pil_cpu_1_core_img_per_s"]
    for k, v in result.items():
        print(f"{k:32s} {v:,.1f}" if isinstance(v, float) else f"{k:32s} {v}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
