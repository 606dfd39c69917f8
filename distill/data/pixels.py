"""Decode a split once into one uint8 array (N, H, W, 3) when every image has the same size and it fits a memory
budget, so that each epoch slices memory instead of decoding PNG/JPEG per sample; for local data, once for good
into a memory-mapped file of the data's cache.

Written by hand because `datasets` decodes per row on every access and has no fixed-shape pixel store; on CIFAR-10
that per-row access was about 3/4 of the loader's time, and on 2 cores the loader workers slowed training by a
third by competing with the compute threads.
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import datasets
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from distill import files

log = logging.getLogger("distill")


def _source(value):
    """Where a `datasets.Image(decode=False)` value ({'bytes', 'path'}) keeps its file."""
    return io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]


def _open_rgb(value) -> Image.Image:
    with Image.open(_source(value)) as img:
        return img.convert("RGB")


def _first_size(raw: datasets.Dataset, column: str) -> tuple[int, int] | None:
    """(width, height) of the first image whose header reads (a bad row 0 is left to the decode loop)."""
    for row in range(len(raw)):
        try:
            with Image.open(_source(raw[row][column])) as img:
                return img.size  # read from the header: no pixels decoded yet
        except Exception:  # noqa: BLE001 - reported by the decode loop with its row
            continue
    return None


def decode(ds: datasets.Dataset, column: str, split: str, max_mb: float,
           stem: Path | None = None) -> tuple[np.ndarray, dict] | None:
    """(pixels uint8 [N, H, W, 3], {row: error message} for rows that failed to decode), or None when the images
    differ in size or the array would exceed max_mb (then samples are decoded one by one, as before).

    With `stem` (in the data's content-keyed cache, data/content.py, named by the split's identity: its content
    and rows) the pixels are decoded once into `stem`.npy, and memory-mapped on every later start: no re-decoding,
    and loader workers share the file's pages instead of each holding a copy."""
    n = len(ds)
    if n == 0 or max_mb <= 0:
        return None
    known = files.read_json(stem.with_suffix(".json")) if stem is not None else None
    if known is not None and (known.get("per_sample") or stem.with_suffix(".npy").is_file()):
        if known.get("per_sample") or known["mb"] > max_mb:
            return None
        pixels = np.load(stem.with_suffix(".npy"), mmap_mode="c")  # copy-on-write: writable, never written
        return pixels, {int(row): why for row, why in known["bad"].items()}
    decoded = _decode(ds, column, split, max_mb, stem)
    if stem is not None and decoded is DIFFERENT:  # found by decoding: remembered (over budget is not: a larger
        files.write_json(stem.with_suffix(".json"), {"per_sample": True})  # data.decode_mb may fit it next time)
    elif stem is not None and decoded is not None:
        decoded[0].flush()
        os.replace(f"{stem}.{os.getpid()}.npy", stem.with_suffix(".npy"))
        files.write_json(stem.with_suffix(".json"), {"mb": decoded[0].nbytes / 2**20,
                                                     "bad": {str(k): v for k, v in decoded[1].items()}})
    return None if decoded is DIFFERENT else decoded


def _drop_leftovers(stem: Path) -> None:
    """Delete `stem`.PID.npy files of processes that died while decoding (a split's size each, never read)."""
    for tmp in stem.parent.glob(f"{stem.name}.*.npy"):
        pid = tmp.suffixes[-2][1:] if len(tmp.suffixes) >= 2 else ""
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            tmp.unlink(missing_ok=True)


DIFFERENT = "images of different sizes"  # `_decode`'s answer when they cannot share one array


def _decode(ds: datasets.Dataset, column: str, split: str, max_mb: float, stem: Path | None):
    """`decode`'s work: every image decoded in order, into memory, or into `stem`.PID.npy when given; None when
    not one image opens or the array would exceed max_mb, DIFFERENT when the images differ in size."""
    n = len(ds)
    raw = ds.select_columns([column]).cast_column(column, datasets.Image(decode=False))
    size = _first_size(raw, column)
    if size is None:  # not one image opens: the per-sample path reports (or skips) each
        return None
    w, h = size
    if n * h * w * 3 > max_mb * 2**20:
        log.info(f"data: {split} would take {n * h * w * 3 / 2**20:.0f} MB decoded (> data.decode_mb={max_mb}); "
                 "decoding per sample")
        return None
    if stem is not None:
        stem.parent.mkdir(parents=True, exist_ok=True)
        _drop_leftovers(stem)
        pixels = np.lib.format.open_memmap(f"{stem}.{os.getpid()}.npy", mode="w+", dtype=np.uint8, shape=(n, h, w, 3))
    else:
        pixels = np.zeros((n, h, w, 3), dtype=np.uint8)
    bad, row = {}, 0
    with tqdm(total=n, desc=f"decode {split}", unit="img", leave=False, dynamic_ncols=True) as bar:
        for chunk in raw.iter(batch_size=1024):
            for value in chunk[column]:
                try:
                    img = _open_rgb(value)
                except Exception as e:  # noqa: BLE001 - decoding errors come in many types
                    bad[row] = f"{type(e).__name__}: {e}"
                else:
                    if img.size != (w, h):
                        log.info(f"data: {split} images differ in size ({img.size} at row {row}, {(w, h)} at row "
                                 "0); decoding per sample")
                        if stem is not None:
                            del pixels
                            os.unlink(f"{stem}.{os.getpid()}.npy")
                        return DIFFERENT
                    pixels[row] = np.asarray(img)
                row += 1
            bar.update(len(chunk[column]))
    return pixels, bad
